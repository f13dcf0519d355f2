#!/usr/bin/env python3
"""Independent reference values for the unit tests in src/detect/feature.rs and src/detect/fitted.rs.

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

Section "fitted" (src/detect/fitted.rs), numpy only, on the same x, y, q and a head
    W[c, j] = sin(0.5 c + 0.3 j + 0.2) + [j == c],  b[c] = 0.1 c - 0.05,  c < 3  (float32)
and logits z = q W^T + b (float64):
  RMD (Ren et al. 2021): min_c MD_c(q) - MD_0(q), MD_c as above, MD_0 with the mean and the
      (1/N) covariance of all training rows, both with the same relative ridge;
  ViM (Wang et al. 2022), following the authors' formulas: o = -pinv(W) b; covariance of x - o
      about 0 (sklearn EmpiricalCovariance(assume_centered=True) = (x-o)^T (x-o) / N); NS = the
      eigenvectors outside the top D = 2 eigenvalues (np.linalg.eigh, descending order);
      alpha = mean_i max_c z_train[i] / mean_i ||(x_i - o) NS||; score = alpha ||(q - o) NS||
      - logsumexp(z);
  ReAct (Sun et al. 2021): c = np.percentile(x, 90) over all values; score = -logsumexp(min(q, c)
      W^T + b);
  ODIN, temperature only: -max softmax(z / 10).

    python3 experiments/detectors_reference.py          (scipy is needed for the first section)
(numpy 2.4.6, scipy 1.17.1)
"""

import numpy as np

N, D, C, M, K, RIDGE = 24, 5, 3, 6, 3, 1e-6


def inputs():
    i = np.arange(N)[:, None]
    j = np.arange(D)[None, :]
    x = np.sin(0.7 * i + 1.3 * j + 0.5) + 0.3 * np.cos(1.1 * i * j) + 2.0 * (j == i % 3)
    y = np.arange(N) % 3
    i = np.arange(M)[:, None]
    q = np.cos(0.9 * i - 0.4 * j) * (1 + 0.5 * i)
    return x.astype(np.float32).astype(np.float64), y, q.astype(np.float32).astype(np.float64)


def head():
    c = np.arange(C)[:, None]
    j = np.arange(D)[None, :]
    w = np.sin(0.5 * c + 0.3 * j + 0.2) + 1.0 * (j == c)
    b = 0.1 * np.arange(C) - 0.05
    return w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)


def sq_maha(v, mu, prec):
    d = v - mu
    return float(d @ prec @ d)


def logsumexp(z):
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def fitted():
    x, y, q = inputs()
    w, b = head()
    fmt = lambda a: "[" + ", ".join(f"{v:.10e}" for v in a) + "]"  # noqa: E731
    ridge = lambda cov: cov + RIDGE * np.trace(cov) / D * np.eye(D)  # noqa: E731
    # RMD
    means = np.stack([x[y == c].mean(0) for c in range(C)])
    centred = x - means[y]
    prec = np.linalg.inv(ridge(centred.T @ centred / N))
    mu0 = x.mean(0)
    prec0 = np.linalg.inv(ridge((x - mu0).T @ (x - mu0) / N))
    rmd = [min(sq_maha(v, means[c], prec) for c in range(C)) - sq_maha(v, mu0, prec0) for v in q]
    print("const RMD: [f64; 6] =", fmt(rmd) + ";")
    # ViM, D = 2
    o = -np.linalg.pinv(w) @ b
    xc = x - o
    cov = xc.T @ xc / N
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    ns = vecs[:, order[2:]]
    z_train = x @ w.T + b
    alpha = z_train.max(axis=1).mean() / np.linalg.norm(xc @ ns, axis=1).mean()
    zq = q @ w.T + b
    vim = alpha * np.linalg.norm((q - o) @ ns, axis=1) - logsumexp(zq)
    print(f"const VIM_ALPHA: f64 = {alpha:.12e};")
    print("const VIM: [f64; 6] =", fmt(vim) + ";")
    # ReAct, p = 90
    clip = np.percentile(x.astype(np.float32), 90)
    react = -logsumexp(np.minimum(q, clip) @ w.T + b)
    print(f"const REACT_CLIP: f64 = {clip:.10e};")
    print("const REACT: [f64; 6] =", fmt(react) + ";")
    # ODIN, T = 10
    e = np.exp(zq / 10 - (zq / 10).max(axis=1, keepdims=True))
    print("const ODIN_T10: [f64; 6] =", fmt(-(e / e.sum(axis=1, keepdims=True)).max(axis=1)) + ";")


def main():
    from scipy.spatial.distance import cdist, mahalanobis

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
    import sys

    if "fitted" in sys.argv[1:]:
        fitted()
    else:
        main()
