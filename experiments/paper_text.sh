#!/usr/bin/env bash
# The paper's text experiments end to end: for each in-distribution set and seed, baseline + OE
# fine-tune on WikiText-2 + evaluation on every OOD set under the data root (paper protocol).
# Usage: experiments/paper_text.sh [DATA_ROOT] [OUT_ROOT] [SEEDS...]
#   e.g. experiments/paper_text.sh ../shared/data runs 1 2 3
# Afterwards: oe-text report OUT_ROOT/* (aggregates over seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../shared/data}
OUT=${2:-runs}
shift 2 || true
SEEDS=${*:-1 2 3}
BIN=${OE_TEXT:-target/debug/oe-text}
[[ -x "$BIN" ]] || { .ci/setup && cargo build --bin oe-text; }
for ds in ${DATASETS:-sst trec 20ng}; do
    for seed in $SEEDS; do
        dir="$OUT/$ds-wikitext2-gru-seed$seed"
        echo "== $ds seed $seed -> $dir"
        "$BIN" train --in "$ds" --oe wikitext2 --data-dir "$ROOT" --seed "$seed" --out "$dir" --resume --device cpu
    done
done
