#!/usr/bin/env bash
# Release benchmark: all ranking metrics on 10 million scores, on one core (taskset).
set -euo pipefail
cd "$(dirname "$0")/metrics-bench"
cargo build --release -q
taskset -c 0 ./target/release/oe-metrics-bench "${1:-10000000}"
