#!/usr/bin/env python3
"""Independent reference values for the unit tests in src/detectors.rs.

Inputs are defined by formula so both sides build the same arrays (computed in float64, then rounded
to float32 as model features would be; everything after that is float64 here):

    train x[i, j] = sin(0.7 i + 1.3 j + 0.5) + 0.3 cos(1.1 i j) + 2 [j == i mod 3],  i < 24, j < 5
    labels y[i]   = i mod 3
    query q[i, j] = cos(0.9 i - 0.4 j) (1 + 0.5 i),                                   i < 6,  j < 5

Mahalanobis (Lee et al. 2018): class means, tied covariance S = (1/N) sum_i (x_i - mu_{y_i})(...)^T
(maximum likelihood, as sklearn's EmpiricalCovariance on class-centred features), regularised
S + ridge * (trace(S) / d) * I with ridge = 1e-6; score = min_c of the squared distance, computed with
scipy.spatial.distance.mahalanobis (which returns the square root; squared here).

kNN (Sun et al. 2022): rows L2-normalised; score = Euclidean distance to the k-th nearest training row
(k = 3), from scipy.spatial.distance.cdist and a sort.

    /tmp/oe-venv/bin/python experiments/detectors_reference.py
(numpy 2.4.6, scipy 1.17.1)
"""

import numpy as np
from scipy.spatial.distance import cdist, mahalanobis

N, D, C, M, K, RIDGE = 24, 5, 3, 6, 3, 1e-6


def inputs():
    i = np.arange(N)[:, None]
    j = np.arange(D)[None, :]
    x = np.sin(0.7 * i + 1.3 * j + 0.5) + 0.3 * np.cos(1.1 * i * j) + 2.0 * (j == i % 3)
    y = np.arange(N) % 3
    i = np.arange(M)[:, None]
    q = np.cos(0.9 * i - 0.4 * j) * (1 + 0.5 * i)
    return x.astype(np.float32).astype(np.float64), y, q.astype(np.float32).astype(np.float64)


def main():
    x, y, q = inputs()
    means = np.stack([x[y == c].mean(0) for c in range(C)])
    centred = x - means[y]
    cov = centred.T @ centred / N
    prec = np.linalg.inv(cov + RIDGE * np.trace(cov) / D * np.eye(D))
    maha = [min(mahalanobis(v, means[c], prec) ** 2 for c in range(C)) for v in q]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    knn = np.sort(cdist(qn, xn), axis=1)[:, K - 1]
    fmt = lambda a: "[" + ", ".join(f"{v:.8e}" for v in a) + "]"  # noqa: E731
    print("means[0] =", fmt(means[0]))
    print("cov[0] =", fmt(cov[0]))  # before the ridge
    print("mahalanobis =", fmt(maha))
    print("knn_k3 =", fmt(knn))


if __name__ == "__main__":
    main()
