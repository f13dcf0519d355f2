#!/usr/bin/env bash
# oe against the same work in PyTorch, side by side on this machine, in one run (issue 15).
#
#   experiments/bench_torch.sh [DATASET ...]        # default: sst trec
#
# Builds oe (release), creates a virtual environment with the torch version .ci/setup takes
# libtorch from (plus numpy, scikit-learn, safetensors), and then, one after the other:
#   - training: `oe-text train --in DS --oe wikitext2` (the paper's 5 + 5 epochs) against
#     experiments/bench_torch.py train on the same token ids (`oe-text train --export-ids`);
#   - evaluation of the trained baseline with the paper's protocol (every default OOD set, 10
#     draws): `oe-text eval` against bench_torch.py eval, both timed inside the process from
#     loaded model and data to the metrics (oe's line "time: evaluation"), and also whole (oe's
#     process wall time with parsing the raw datasets; PyTorch's json.load of the token ids, not
#     counting `import torch`);
#   - scoring with the SST baseline: SCORE_LINES WikiText-2 sentences and as many WikiText-2
#     paragraph lines (cut at the model's longest training text): `oe-text score` against
#     bench_torch.py score (tokenising, bucketing by length, writing the same TSV). The scores
#     are compared (largest |difference|, class agreement).
#   - where the CPU has AVX512_BF16: the same scoring with `--precision bf16` (opt-in bfloat16
#     products), against the same PyTorch float32 loop, and how far its scores move from oe's
#     float32 scores; and each baseline's evaluation again with `--precision bf16`, with how far
#     each metric moves.
# Prints a Markdown table: seconds for each side, oe's time as a fraction of PyTorch's, and the
# speed-up. Both sides use every core by default (`torch.get_num_threads()` and oe's default).
# Environment: OE_DATA_DIR (default ../shared/data), BENCH_DIR (default target/bench-torch),
# SCORE_LINES (default 100000), OE_ARGS (extra flags for oe-text, e.g. "--threads 1").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath "${OE_DATA_DIR:-../shared/data}")
W=${BENCH_DIR:-target/bench-torch}
LINES=${SCORE_LINES:-100000}
if [ $# -eq 0 ]; then DATASETS=(sst trec); else DATASETS=("$@"); fi
mkdir -p "$W"
say() { echo "[bench_torch] $*" >&2; }

TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=//p' .ci/setup)
.ci/setup >&2
say "building oe-text (release)"
cargo build --release --bin oe-text >&2
BIN=target/release/oe-text
PY=$W/venv/bin/python
if ! "$PY" -c "import sys, torch, sklearn, safetensors; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  say "creating $W/venv with torch==$TORCH_VERSION (PyPI), numpy, scikit-learn, safetensors"
  rm -rf "$W/venv"
  python3 -m venv "$W/venv"
  "$W/venv/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy scikit-learn safetensors >&2
fi
say "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
say "torch $("$PY" -c 'import torch; print(torch.__version__, "threads", torch.get_num_threads())')"

# bfloat16 rows where the CPU has the instructions oe's bf16 product needs.
BF16=0
if grep -q avx512_bf16 /proc/cpuinfo; then BF16=1; fi

RES=$W/results.tsv
: > "$RES"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RES"; }
jget() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# wall OUT CMD...: runs CMD with its output to OUT and prints its wall-clock seconds.
wall() { local out=$1; shift; /usr/bin/time -f %e -o "$W/wall.txt" "$@" > "$out" 2>&1; cat "$W/wall.txt"; }

for ds in "${DATASETS[@]}"; do
  say "$ds: exporting the token ids"
  # shellcheck disable=SC2086
  "$BIN" train --in "$ds" --oe wikitext2 --data-dir "$ROOT" --device cpu --export-ids "$W/$ds.json" \
    --out "$W/unused" ${OE_ARGS:-} --quiet >/dev/null
  say "$ds: oe-text train (baseline + OE fine-tuning)"
  rm -rf "$W/oe-$ds"
  # shellcheck disable=SC2086
  "$BIN" train --in "$ds" --oe wikitext2 --data-dir "$ROOT" --device cpu --out "$W/oe-$ds" \
    ${OE_ARGS:-} --quiet > "$W/oe-train-$ds.txt"
  T=$W/oe-$ds/timings.json
  say "$ds: PyTorch train"
  "$PY" experiments/bench_torch.py train --ids "$W/$ds.json" > "$W/torch-train-$ds.json"
  row "$ds: baseline training" "$(jget "$T" '[p["seconds"] for p in d if p["phase"] == "baseline training"][0]')" \
    "$(jget "$W/torch-train-$ds.json" 'd["baseline training"]')"
  row "$ds: OE fine-tuning" "$(jget "$T" '[p["seconds"] for p in d if p["phase"] == "oe-finetune"][0]')" \
    "$(jget "$W/torch-train-$ds.json" 'd["oe-finetune"]')"
  say "$ds: evaluation of the baseline (paper protocol)"
  # shellcheck disable=SC2086
  oe_eval=$(wall "$W/oe-eval-$ds.txt" "$BIN" eval --model "$W/oe-$ds/baseline" --data-dir "$ROOT" --device cpu ${OE_ARGS:-})
  "$PY" experiments/bench_torch.py eval --ids "$W/$ds.json" --weights "$W/oe-$ds/baseline/model.safetensors" \
    > "$W/torch-eval-$ds.json"
  row "$ds: evaluation (paper protocol)" "$(sed -n 's/^time: evaluation \([0-9.]*\) s.*/\1/p' "$W/oe-eval-$ds.txt")" \
    "$(jget "$W/torch-eval-$ds.json" 'd["evaluation"]')"
  row "$ds: evaluation, whole process (oe: + loading, PyTorch: + json.load, not import torch)" "$oe_eval" \
    "$(jget "$W/torch-eval-$ds.json" 'd["evaluation"] + d["load"]')"
  if [ "$BF16" = 1 ]; then
    say "$ds: evaluation of the baseline with --precision bf16"
    # shellcheck disable=SC2086
    "$BIN" eval --model "$W/oe-$ds/baseline" --data-dir "$ROOT" --device cpu --precision bf16 ${OE_ARGS:-} \
      > "$W/oe-eval-$ds-bf16.txt" 2>&1
    row "$ds: evaluation (paper protocol), oe --precision bf16" \
      "$(sed -n 's/^time: evaluation \([0-9.]*\) s.*/\1/p' "$W/oe-eval-$ds-bf16.txt")" \
      "$(jget "$W/torch-eval-$ds.json" 'd["evaluation"]')"
    python3 experiments/metrics_moved.py "$W/oe-$ds/baseline/eval-msp-paper/report.json" \
      "$W/oe-$ds/baseline/eval-msp-paper-bf16/report.json" | sed 's/^/[bench_torch]   /' >&2
  fi
done

# Scoring inputs: WikiText-2 sentences and paragraph lines (experiments/wikitext_lines.sh).
WT=$ROOT/wikitext-2/wiki.train.tokens
for kind in sentences paragraphs; do
  IN=$W/$kind-$LINES.txt
  [ -s "$IN" ] || experiments/wikitext_lines.sh "$kind" "$LINES" "$WT" "$IN"
  M=$W/oe-sst/baseline
  [ -f "$M/model.safetensors" ] || { say "scoring needs the SST model (run with sst)"; break; }
  say "scoring $LINES $kind ($(wc -w < "$IN") words)"
  # shellcheck disable=SC2086
  oe_s=$(wall "$W/oe-score-$kind.txt" "$BIN" score --model "$M" --device cpu ${OE_ARGS:-} --output "$W/oe-score-$kind.tsv" "$IN")
  # Its wall time is the last line on stderr (after anything Python prints there).
  py_s=$({ /usr/bin/time -f %e "$PY" experiments/bench_torch.py score --run "$M" \
    --output "$W/torch-score-$kind.tsv" "$IN" > "$W/torch-score-$kind.json"; } 2>&1 | tail -1)
  row "scoring $LINES WikiText-2 $kind, whole processes (oe: libtorch's start-up included; PyTorch: import torch included)" \
    "$oe_s" "$py_s"
  row "scoring $LINES WikiText-2 $kind (oe: the whole process; PyTorch: from loading the model, not import torch)" \
    "$oe_s" "$(jget "$W/torch-score-$kind.json" 'd["scoring"]')"
  # Both after loading the model: reading, tokenising, scoring and writing the TSV (oe: its
  # summary's time).
  oe_in=$(sed -nE 's/^[0-9]+ sources, ([0-9.]+) s,.*/\1/p' "$W/oe-score-$kind.txt")
  row "scoring $LINES WikiText-2 $kind, in-process (both after loading the model)" \
    "$oe_in" "$(jget "$W/torch-score-$kind.json" 'd["scoring_after_load"]')"
  "$PY" experiments/scores_moved.py "scores, oe vs PyTorch" "$W/oe-score-$kind.tsv" "$W/torch-score-$kind.tsv" \
    | sed 's/^/[bench_torch]   /' >&2
  if [ "$BF16" = 1 ]; then
    # shellcheck disable=SC2086
    oe_b=$(wall "$W/oe-score-$kind-bf16.txt" "$BIN" score --model "$M" --device cpu --precision bf16 ${OE_ARGS:-} \
      --output "$W/oe-score-$kind-bf16.tsv" "$IN")
    row "scoring $LINES WikiText-2 $kind, oe --precision bf16" "$oe_b" "$(jget "$W/torch-score-$kind.json" 'd["scoring"]')"
    { grep '^precision' "$W/oe-score-$kind-bf16.txt" || true; } | sed 's/^/[bench_torch]   /' >&2
    "$PY" experiments/scores_moved.py "bf16 scores vs oe float32" "$W/oe-score-$kind-bf16.tsv" \
      "$W/oe-score-$kind.tsv" | sed 's/^/[bench_torch]   /' >&2
  fi
done

echo
echo "| phase | oe (s) | PyTorch (s) | oe time / PyTorch time | speed-up |"
echo "|---|---:|---:|---:|---:|"
while IFS=$'\t' read -r phase a b; do
  python3 -c "import sys; a, b = float(sys.argv[2]), float(sys.argv[3]); print(f'| {sys.argv[1]} | {a:.1f} | {b:.1f} | {a / b:.2f} | {b / a:.2f}x |')" "$phase" "$a" "$b"
done < "$RES"
