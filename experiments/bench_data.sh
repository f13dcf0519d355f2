#!/usr/bin/env bash
# Data-layer benchmark (issue 3): parsing + tokenising the IMDB test split (25,000 reviews read
# from the .tar.gz) and the WikiText-2 sentence extraction; target < 3 s each on 2 cores.
# Usage: experiments/bench_data.sh [DATA_ROOT] [REPEATS]
#   DATA_ROOT defaults to $OE_DATA_DIR, then ../shared/data next to the repository.
# The timing code is `oe-text data bench` (src/data/cli.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${1:-${OE_DATA_DIR:-$(pwd)/../shared/data}}"
REPEATS="${2:-3}"
cargo build --release --bin oe-text
exec target/release/oe-text data --data-dir "$ROOT" bench --repeats "$REPEATS"
