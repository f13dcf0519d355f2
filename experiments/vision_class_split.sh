#!/usr/bin/env bash
# Outlier Exposure on real images, small enough for 2 CPU cores: a class split of the CIFAR-10
# test set as JPEG (../shared/data/cifar10-jpeg, 10,000 images, 1,000 per class).
#
#   in-distribution  airplane automobile bird cat ship truck  (6,000 images; a seed-0 fifth is the test split)
#   outliers (OE)    deer horse                               (2,000 images)
#   near-OOD test    dog frog                                 (2,000 images, never seen in training)
#   far-OOD test     gaussian, rademacher, blobs              (synthetic, generated)
#
# For each seed: a WRN baseline, then the paper's OE fine-tune (λ = 0.5), evaluated by the paper's
# vision protocol (MSP, FPR at 95% TPR, 10 draws at 1:5 OOD:ID); then one `oe-text report` over all
# runs with bootstrap intervals.
#
# Usage: experiments/vision_class_split.sh [OUT_DIR]   (default runs/class-split)
#   SEEDS="1 2 3" DEPTH=16 WIDEN=1 EPOCHS=25 OE_EPOCHS=5 OE_LR=0.01 THREADS=0 to change the grid.
#   OE_VISION / OE_TEXT: prebuilt binaries (default: cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/class-split}
DATA=${OE_SHARED_DATA:-../shared/data}
ARCHIVE=$DATA/cifar10-jpeg/cifar10-test-jpeg.tar.gz
SEEDS=${SEEDS:-1 2 3}
DEPTH=${DEPTH:-16}
WIDEN=${WIDEN:-1}
EPOCHS=${EPOCHS:-25}
OE_EPOCHS=${OE_EPOCHS:-5}
OE_LR=${OE_LR:-0.01}
THREADS=${THREADS:-0}
if [ ! -f "$ARCHIVE" ]; then
  echo "no $ARCHIVE: set OE_SHARED_DATA to the folder holding cifar10-jpeg/" >&2
  exit 2
fi
if [ -z "${OE_VISION:-}" ] || [ -z "${OE_TEXT:-}" ]; then
  cargo build --release --bin oe-vision --bin oe-text
  OE_VISION=${OE_VISION:-target/release/oe-vision}
  OE_TEXT=${OE_TEXT:-target/release/oe-text}
fi
ID="cifar6=$ARCHIVE#airplane+automobile+bird+cat+ship+truck"
OE="$ARCHIVE#deer+horse"
OOD="near-ood=$ARCHIVE#dog+frog,gaussian,rademacher,blobs"
mkdir -p "$OUT"
for seed in $SEEDS; do
  start=$(date +%s)
  "$OE_VISION" train --in "$ID" --oe "$OE" --ood "$OOD" \
    --depth "$DEPTH" --widen "$WIDEN" --epochs "$EPOCHS" --oe-epochs "$OE_EPOCHS" --oe-lr "$OE_LR" \
    --oe-batch-size 128 --pairing cycle --seed "$seed" --threads "$THREADS" --device cpu \
    --resume --out "$OUT/seed$seed" 2>&1 | tee "$OUT/seed$seed.log"
  echo "seed $seed: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"
done
"$OE_TEXT" report "$OUT" --format md -o "$OUT/report.md"
"$OE_TEXT" report "$OUT" --format html -o "$OUT/report.html"
"$OE_TEXT" report "$OUT"
