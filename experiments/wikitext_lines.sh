#!/usr/bin/env bash
# Benchmark input from WikiText-2: the training text without headings and blank lines, as
# sentences (split at " . ", each ending in " .") or as whole paragraph lines, repeated until
# LINES lines. Written to OUT.tmp and renamed, so OUT is never half-written.
# Usage: experiments/wikitext_lines.sh sentences|paragraphs LINES WIKI_TRAIN_TOKENS OUT
set -euo pipefail
kind=$1; lines=$2; src=$3; out=$4
case $kind in sentences|paragraphs) ;; *) echo "wikitext_lines.sh: unknown kind $kind" >&2; exit 2;; esac
[ -f "$src" ] || { echo "wikitext_lines.sh: $src not found" >&2; exit 2; }
# 100 passes over the file are more than enough; awk stops at LINES (the other `cat`s then fail on
# the closed pipe, hence `|| true`).
(for _ in $(seq 1 100); do cat "$src"; done) 2>/dev/null | awk -v n="$lines" -v kind="$kind" '
  /^ *$/ || /^ *= / { next }
  kind == "paragraphs" { t = $0; gsub(/^ +| +$/, "", t); print t; if (++c >= n) exit; next }
  { m = split($0, s, / \. /)
    for (i = 1; i <= m; i++) {
      t = s[i]; gsub(/^ +| +$/, "", t)
      if (t == "") continue
      if (t !~ / \.$/) t = t " ."
      print t
      if (++c >= n) exit
    } }' > "$out.tmp" || true
mv "$out.tmp" "$out"
