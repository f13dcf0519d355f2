#!/usr/bin/env bash
# Throughput and latency of `oe-text serve` beside an equivalent Python service (PyTorch + Starlette
# on uvicorn, experiments/serve_torch.py) serving the same weights (GRU or MiniLM), on this machine
# with the same closed-loop client (experiments/serve_load.py), at several concurrency levels. In
# each cell both services are warmed up (OE_BENCH_WARMUP seconds each, default 1, not counted),
# then take turns: OE_BENCH_ROUNDS rounds (default 4) of SECONDS / rounds seconds each, their
# figures pooled over their turns. Both services run throughout, idle when not loaded. For each
# thread setting in OE_BENCH_THREADS (default "all 1"):
#   all: each service at its own default, every core (`oe-text serve` without --threads, PyTorch's
#        torch.get_num_threads() default), which is what a user who runs either as written gets;
#   N:   N libtorch threads each (`--threads N`, torch.set_num_threads(N)).
#
# usage: experiments/bench_serve.sh MODEL_DIR TEXTS_FILE [BIN] [PYTHONPATH] [SECONDS]
#   MODEL_DIR: an oe GRU model directory (e.g. made by `oe-text eval --weights .../sst-baseline.safetensors
#              --in sst --method baseline --out DIR`); TEXTS_FILE: one text per line;
#   BIN: the oe-text binary (default target/release/oe-text); PYTHONPATH: where torch, uvicorn,
#   starlette and safetensors (and tokenizers, for a MiniLM directory) are importable (default: the
#   system's); SECONDS: each service's measured time per cell (default 8).
# Environment: OE_SERVE_ARGS, extra flags for `oe-text serve` (e.g. "--precision bf16");
# OE_BENCH_THREADS, the thread settings (above).
set -euo pipefail
model=$1; texts=$2; bin=${3:-target/release/oe-text}; pyp=${4:-}; secs=${5:-8}
rounds=${OE_BENCH_ROUNDS:-4}; warmup=${OE_BENCH_WARMUP:-1}
here=$(cd "$(dirname "$0")" && pwd)
port_oe=18481; port_py=18482
rss() { ps -o rss= -p "$1" | awk '{printf "%.0f", $1/1024}'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.2; done; return 1; }

echo "threads,service,concurrency,texts_per_request,texts_per_s,p50_ms,p99_ms,errors,rss_mb"
for threads in ${OE_BENCH_THREADS:-all 1}; do
  if [ "$threads" = all ]; then oe_threads=(); py_threads=0; else oe_threads=(--threads "$threads"); py_threads=$threads; fi
  # shellcheck disable=SC2086
  "$bin" serve --model "$model" --addr 127.0.0.1:$port_oe "${oe_threads[@]}" --device cpu ${OE_SERVE_ARGS:-} 2>/dev/null &
  oe_pid=$!
  PYTHONPATH=$pyp python3 "$here/serve_torch.py" "$model" $port_py "$py_threads" &
  py_pid=$!
  trap 'kill $oe_pid $py_pid 2>/dev/null || true' EXIT
  wait_port $port_oe; wait_port $port_py
  for c in 1 4 16; do
    for k in 1 16; do
      # Both services in turns within the cell (warm-up, then $rounds rounds of each), so that a
      # slow spell of this machine weighs on both alike.
      r=$(python3 "$here/serve_load.py" "http://127.0.0.1:$port_oe/v1/score,http://127.0.0.1:$port_py/v1/score" \
            "$texts" $c $k "$secs" "$rounds" "$warmup")
      echo "$r" | OE_RSS="$(rss $oe_pid) $(rss $py_pid)" python3 -c "
import json, os, sys
rss = os.environ['OE_RSS'].split()
for svc, line, mb in zip(['oe', 'py'], sys.stdin.read().splitlines(), rss):
    d = json.loads(line)
    print(','.join(str(x) for x in ['$threads', svc, d['concurrency'], d['texts_per_request'], d['texts_per_s'], d['p50_ms'], d['p99_ms'], d['errors'], mb]))"
    done
  done
  kill $oe_pid $py_pid 2>/dev/null || true
  wait $oe_pid $py_pid 2>/dev/null || true
done
