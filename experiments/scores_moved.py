#!/usr/bin/env python3
"""How far two score files (TSV rows of `oe-text score` or bench_torch.py score: source, line,
score, class, prob) are apart, row by row: the largest and mean |score difference| and the share
of rows with the same class.

    experiments/scores_moved.py LABEL A.tsv B.tsv
"""
import sys

import numpy as np


def main() -> None:
    label, pa, pb = sys.argv[1:4]
    a = np.genfromtxt(pa, delimiter="\t", skip_header=1, usecols=(2, 4))
    b = np.genfromtxt(pb, delimiter="\t", skip_header=1, usecols=(2, 4))
    ca = [l.split("\t")[3] for l in open(pa).read().splitlines()[1:]]
    cb = [l.split("\t")[3] for l in open(pb).read().splitlines()[1:]]
    if len(a) != len(b):
        sys.exit(f"{pa}: {len(a)} rows, {pb}: {len(b)} rows")
    d = np.abs(a[:, 0] - b[:, 0])
    agree = np.mean([x == y for x, y in zip(ca, cb)])
    print(f"{label}: max |diff| {d.max():.2e}, mean {d.mean():.2e} over {len(a)} texts; "
          f"classes agree on {100 * agree:.3f}%")


if __name__ == "__main__":
    main()
