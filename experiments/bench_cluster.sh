#!/usr/bin/env bash
# Wall time of the cluster features on a real one-node Slurm cluster (tests/slurm/cluster.sh, in a
# temporary state directory, stopped at the end), against the same work in one process:
#   1. a 4-point sweep (TREC baseline, seeds 1-4, 2 epochs, evaluated on SNLI) as a Slurm array
#      (4 tasks of 1 CPU) vs `oe-text sweep run` of the same points one after the other (1 thread);
#   2. scoring LINES WikiText-2 sentences with an SST model as 4 Slurm shards + the afterok merge vs one
#      `oe-text score` process (1 libtorch thread per shard, and the one process with 1 and 2), and a
#      check that the merged output is byte-identical to the unsharded one.
# The cluster advertises 4 CPUs on a 2-core machine, so 4 tasks share 2 cores.
#
# usage: experiments/bench_cluster.sh MODEL_DIR [BIN] [DATA_ROOT] [LINES]
#   MODEL_DIR: an SST model directory (e.g. runs/sst-wikitext2-gru-seed1/oe from the README's main
#   job); BIN: oe-text (default target/release/oe-text); DATA_ROOT default ../shared/data.
set -euo pipefail
model=$(realpath "$1"); bin=$(realpath "${2:-target/release/oe-text}")
data=$(realpath "${3:-../shared/data}"); lines=${4:-1000000}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/oe-bench-cluster.XXXXXX)
state=$work/slurm
export OE_SLURM_CTLD_PORT=16917 OE_SLURM_SLURMD_PORT=16918
eval "$("$here/tests/slurm/cluster.sh" start "$state")"
# Stop the daemons first, then remove the work directory (it holds their pid files).
trap '"$here/tests/slurm/cluster.sh" stop "$state" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
now() { date +%s.%N; }
wait_queue_empty() { while [ -n "$(squeue -h)" ]; do sleep 0.5; done; }
cd "$work"

# 1. Sweep.
sweep() { # $1 = out dir
cat <<TOML
name = "bench"
out = "$1"
[fixed]
data-dir = "$data"
ood = "snli"
epochs = 2
threads = 1
device = "cpu"
quiet = true
[grid]
in = ["trec"]
seed = [1, 2, 3, 4]
TOML
}
sweep "$work/sweep-slurm" > slurm.toml
sweep "$work/sweep-local" > local.toml
t0=$(now); "$bin" sweep slurm slurm.toml --cpus 1 --submit >/dev/null 2>&1; wait_queue_empty; t1=$(now)
"$bin" sweep status slurm.toml | head -1
t2=$(now); "$bin" sweep run local.toml >/dev/null 2>&1; t3=$(now)
"$bin" sweep status local.toml | head -1
for p in 1 2 3 4; do cmp -s sweep-slurm/in-trec_seed-$p/baseline/model.safetensors sweep-local/in-trec_seed-$p/baseline/model.safetensors || echo "seed $p: weights differ"; done
printf 'sweep,4 points,slurm_s,%.1f,sequential_s,%.1f,speedup,%.2f\n' "$(echo "$t1-$t0" | bc)" "$(echo "$t3-$t2" | bc)" "$(echo "($t3-$t2)/($t1-$t0)" | bc -l)"

# 2. Sharded scoring of LINES sentences (WikiText-2 train sentences, cycled).
python3 - "$data/wikitext-2/wiki.train.tokens" "$lines" > input.txt <<'PY'
import sys
src, n = sys.argv[1], int(sys.argv[2])
sents = []
for line in open(src, encoding="utf-8"):
    line = line.strip()
    if not line or line.startswith("="):
        continue
    sents += [s.strip() + " ." for s in line.split(" . ") if len(s.split()) >= 3]
out = sys.stdout
for i in range(n):
    out.write(sents[i % len(sents)] + "\n")
PY
wc -l < input.txt | xargs echo "input lines:"
t0=$(now); "$bin" score --model "$model" input.txt --device cpu --threads 1 --quiet -o one.tsv; t1=$(now)
t2=$(now); "$bin" score --model "$model" input.txt --device cpu --threads 2 --quiet -o one2.tsv; t3=$(now)
t4=$(now); "$bin" score --model "$model" input.txt --device cpu --threads 1 --quiet -o sharded.tsv --slurm 4 --cpus 1 --submit >/dev/null 2>&1; wait_queue_empty; t5=$(now)
cmp one.tsv sharded.tsv && echo "merged output byte-identical to the unsharded one"
cmp one.tsv one2.tsv && echo "(and to the 2-thread run)"
printf 'score,%s lines,one_process_1thread_s,%.1f,one_process_2threads_s,%.1f,slurm_4_shards_s,%.1f,speedup_vs_1thread,%.2f,speedup_vs_2threads,%.2f\n' "$lines" \
  "$(echo "$t1-$t0" | bc)" "$(echo "$t3-$t2" | bc)" "$(echo "$t5-$t4" | bc)" "$(echo "($t1-$t0)/($t5-$t4)" | bc -l)" "$(echo "($t3-$t2)/($t5-$t4)" | bc -l)"
