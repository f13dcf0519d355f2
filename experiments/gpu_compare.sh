#!/usr/bin/env bash
# The detector x training x model grid (`oe-text compare`) on a CUDA machine, for several seeds.
# Usage: experiments/gpu_compare.sh BIN DATA_ROOT OUT [MODELS] [SEEDS] [IN]
#   BIN        an oe-text binary (built here: `cargo build --bin oe-text`)
#   DATA_ROOT  a data root with sst/, wikitext-2/ and the OOD sets (snli, imdb, multi30k, wmt16)
#   OUT        where the runs go; OUT/summary-<models>.txt collects the tables
#   MODELS     comma-separated (default gru,transformer,minilm); minilm needs $OE_MODELS_DIR
#   SEEDS      space-separated (default "1 2 3")
#   IN         in-distribution dataset (default sst)
# Finds libtorch (with CUDA) in python3's torch, as the device machines have it. Stops starting new
# seeds after $BUDGET_S seconds (default 330) so the whole run fits a lease.
set -uo pipefail
BIN=$1; ROOT=$2; OUT=$3; MODELS=${4:-gru,transformer,minilm}; SEEDS=${5:-1 2 3}; IN=${6:-sst}
BUDGET_S=${BUDGET_S:-330}
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OE_LIBTORCH_CUDA="$TORCH_LIB/libtorch_cuda.so"
mkdir -p "$OUT"
SUMMARY="$OUT/summary-${MODELS//,/-}.txt"
"$BIN" device --device cuda | tee -a "$SUMMARY" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
start=$(date +%s)
for seed in $SEEDS; do
  if [ $(( $(date +%s) - start )) -gt "$BUDGET_S" ]; then
    echo "budget of ${BUDGET_S}s spent: seed $seed not started" | tee -a "$SUMMARY"; break
  fi
  t0=$(date +%s)
  echo "## $IN seed $seed, models $MODELS" | tee -a "$SUMMARY"
  "$BIN" compare --in "$IN" --oe wikitext2 --models "$MODELS" --seed "$seed" --device cuda \
    --data-dir "$ROOT" --out "$OUT/$IN-seed$seed" --quiet >> "$SUMMARY" 2> "$OUT/$IN-seed$seed.log" \
    || { echo "seed $seed failed:"; tail -20 "$OUT/$IN-seed$seed.log"; } | tee -a "$SUMMARY"
  echo "seed $seed: $(( $(date +%s) - t0 )) s" | tee -a "$SUMMARY"
  for m in ${MODELS//,/ }; do
    for f in "$OUT/$IN-seed$seed/$m"/timings*.json; do
      [ -f "$f" ] && { echo "$m $(basename "$f"):"; cat "$f"; } >> "$SUMMARY"
    done
  done
done
cat "$SUMMARY"
