#!/usr/bin/env bash
# Throughput and latency of `oe-text serve` beside an equivalent Python service (PyTorch + Starlette
# on uvicorn, experiments/serve_torch.py) serving the same weights (GRU or MiniLM), on this machine
# with the same closed-loop client (experiments/serve_load.py), in six cells (1, 4 and 16 concurrent
# clients × 1 and 16 texts a request). Both services are warmed up in every cell (OE_BENCH_WARMUP
# seconds each, default 1, not counted), then take turns: OE_BENCH_ROUNDS rounds (default 4), each
# giving every cell in order a turn of SECONDS / rounds seconds per service; a cell's figures pool
# its turns, so they average over the whole run (about 12 × SECONDS s), and the last CSV column
# lists each round's texts/s; `rss_mb` is each service's peak resident memory over the run
# (VmHWM). Both services run throughout, idle when not loaded. For each thread setting in
# OE_BENCH_THREADS (default "all 1"):
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
# OE_BENCH_THREADS, the thread settings (above); OE_BENCH_CONNECTION, `keep` (default: each client
# keeps its connection open, as a caller's connection pool does) or `new` (a connection per
# request); OE_BENCH_ROUNDS, OE_BENCH_WARMUP (above).
set -euo pipefail
model=$1; texts=$2; bin=${3:-target/release/oe-text}; pyp=${4:-}; secs=${5:-8}
rounds=${OE_BENCH_ROUNDS:-4}; warmup=${OE_BENCH_WARMUP:-1}; conn=${OE_BENCH_CONNECTION:-keep}
here=$(cd "$(dirname "$0")" && pwd)
port_oe=18481; port_py=18482
# Peak resident memory (VmHWM) in MB.
rss() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.2; done; return 1; }

echo "threads,service,concurrency,texts_per_request,texts_per_s,p50_ms,p99_ms,errors,rss_mb,round_texts_per_s"
for threads in ${OE_BENCH_THREADS:-all 1}; do
  if [ "$threads" = all ]; then oe_threads=(); py_threads=0; else oe_threads=(--threads "$threads"); py_threads=$threads; fi
  # shellcheck disable=SC2086
  "$bin" serve --model "$model" --addr 127.0.0.1:$port_oe "${oe_threads[@]}" --device cpu ${OE_SERVE_ARGS:-} 2>/dev/null &
  oe_pid=$!
  PYTHONPATH=$pyp python3 "$here/serve_torch.py" "$model" $port_py "$py_threads" &
  py_pid=$!
  trap 'kill $oe_pid $py_pid 2>/dev/null || true' EXIT
  wait_port $port_oe; wait_port $port_py
  # Every cell, both services in turns: warm-ups, then $rounds rounds, each giving every cell's
  # turns in order, so that a slow spell of this machine weighs on both services alike and a
  # cell's turns are spread over the whole run.
  r=$(python3 "$here/serve_load.py" "http://127.0.0.1:$port_oe/v1/score,http://127.0.0.1:$port_py/v1/score" \
      "$texts" 1,4,16 1,16 "$secs" "$rounds" "$warmup" "$conn")
  echo "$r" | OE_RSS="$(rss $oe_pid) $(rss $py_pid)" python3 -c "
import json, os, sys
rss = dict(zip(['oe', 'py'], os.environ['OE_RSS'].split()))
for line in sys.stdin.read().splitlines():
    d = json.loads(line)
    svc = 'oe' if d['url'].startswith('http://127.0.0.1:$port_oe/') else 'py'
    rounds = ';'.join(str(x) for x in d['round_texts_per_s'])
    print(','.join(str(x) for x in ['$threads', svc, d['concurrency'], d['texts_per_request'], d['texts_per_s'], d['p50_ms'], d['p99_ms'], d['errors'], rss[svc], rounds]))"
  kill $oe_pid $py_pid 2>/dev/null || true
  wait $oe_pid $py_pid 2>/dev/null || true
done
