#!/usr/bin/env bash
# Times each phase of the SST protocol (data preparation, baseline training, OE fine-tune,
# evaluation) with a release build and reports examples per second.
# Usage: experiments/bench_text.sh [DATA_ROOT] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../shared/data}
OUT=${2:-/tmp/oe-bench-sst}
.ci/setup
cargo build --release --bin oe-text
rm -rf "$OUT"
/usr/bin/time -v ./target/release/oe-text train --in sst --oe wikitext2 --data-dir "$ROOT" \
    --device cpu --out "$OUT" 2> >(grep -E "^time:|Maximum resident|Elapsed|Percent of CPU" >&2) >/dev/null
echo "phase timings (also in $OUT/timings.json):"
cat "$OUT/timings.json"
