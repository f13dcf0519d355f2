#!/usr/bin/env python3
"""How far each detection metric moved between two `oe-text eval` reports (report.json), e.g.
float32 and `--precision bf16` of the same model, data and draws.

    experiments/metrics_moved.py A/report.json B/report.json
"""
import json
import sys


def main() -> None:
    a, b = (json.load(open(p)) for p in sys.argv[1:3])
    print(f"accuracy {100 * a['in_accuracy']:.2f} -> {100 * b['in_accuracy']:.2f} "
          f"({b.get('precision', 'float32')} vs {a.get('precision', 'float32')})")
    worst = 0.0
    for sa, sb in zip(a["sets"], b["sets"]):
        parts = []
        for k in ("fpr", "auroc", "aupr_out"):
            x, y = 100 * sa[k]["mean"], 100 * sb[k]["mean"]
            worst = max(worst, abs(x - y))
            parts.append(f"{k} {x:.2f} -> {y:.2f}")
        print(f"{sa['ood_set']}: " + ", ".join(parts))
    print(f"largest move of a mean metric: {worst:.2f} percentage points")


if __name__ == "__main__":
    main()
