#!/usr/bin/env bash
# Scoring benchmark (issue 5): `oe-text score` with the SST GRU on a file of WikiText-2 sentences;
# reports lines per second and peak RSS (/usr/bin/time -v). Target (release, 2 cores):
# >= 5,000 lines/s, peak RSS < 500 MB.
#
# Usage: experiments/bench_score.sh [LINES] [PROFILE]
#   LINES    lines in the input file (default 1000000)
#   PROFILE  release (default) or debug
# Environment: OE_DATA_DIR or ../shared/data (needs sst/ and wikitext-2/); BENCH_DIR (default
# target/bench-score) holds the input file, the trained SST model and the output; SCORE_ARGS adds
# flags to `oe-text score` (e.g. "--threads 1"); CARGO_TARGET_DIR is respected.
#
# The input: WikiText-2 training text without headings and blank lines, split into sentences at
# " . ", repeated until LINES lines. The model: `oe-text train --in sst` (baseline GRU, the paper's
# hyper-parameters), trained once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES="${1:-1000000}"
PROFILE="${2:-release}"
ROOT="${OE_DATA_DIR:-$(pwd)/../shared/data}"
WORK="${BENCH_DIR:-target/bench-score}"
mkdir -p "$WORK"

if [ "$PROFILE" = release ]; then
  cargo build --release --bin oe-text
else
  cargo build --bin oe-text
fi
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/oe-text"

INPUT="$WORK/wikitext2-$LINES.txt"
if [ ! -s "$INPUT" ] || [ "$(wc -l < "$INPUT")" -ne "$LINES" ]; then
  echo "building $INPUT from $ROOT/wikitext-2/wiki.train.tokens" >&2
  experiments/wikitext_lines.sh sentences "$LINES" "$ROOT/wikitext-2/wiki.train.tokens" "$INPUT"
fi
echo "input: $INPUT ($(wc -l < "$INPUT") lines, $(du -h "$INPUT" | cut -f1))" >&2

MODEL="$WORK/sst-gru/baseline"
if [ ! -f "$MODEL/model.safetensors" ]; then
  echo "training the SST GRU baseline into $WORK/sst-gru" >&2
  "$BIN" train --in sst --data-dir "$ROOT" --out "$WORK/sst-gru" --ood multi30k --repeats 1 \
    --device cpu --quiet > /dev/null
fi

OUT="$WORK/scores-$PROFILE.tsv"
# shellcheck disable=SC2086
echo "command: /usr/bin/time -v $BIN score --model $MODEL --device cpu ${SCORE_ARGS:-} --threshold auto --output $OUT $INPUT" >&2
# shellcheck disable=SC2086
/usr/bin/time -v "$BIN" score --model "$MODEL" --device cpu ${SCORE_ARGS:-} --threshold auto \
  --output "$OUT" "$INPUT" 2> "$WORK/time-$PROFILE.txt"
grep -E "lines/s|read [0-9]+ records|flagged" "$WORK/time-$PROFILE.txt"
RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time-$PROFILE.txt")
WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time-$PROFILE.txt")
echo "profile $PROFILE: $LINES lines, wall $WALL, peak RSS $((RSS_KB / 1024)) MB"
echo "output rows: $(($(wc -l < "$OUT") - 1))"
