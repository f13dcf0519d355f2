# Independent reference values for src/metrics (ranking) tests.
# Run: python3 -m pip install scikit-learn numpy && python3 experiments/metrics_reference.py
import numpy as np
from sklearn.metrics import roc_auc_score, average_precision_score, roc_curve

def fpr_closest(y, s, level):
    # the reference's display_results.fpr_and_fdr_at_recall, re-typed from the description in README, "The paper's protocol: metrics"
    y = np.asarray(y); s = np.asarray(s, dtype=float)
    desc = np.argsort(s, kind="mergesort")[::-1]
    s = s[desc]; y = y[desc]
    distinct = np.where(np.diff(s))[0]
    thr = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[thr]
    fps = 1 + thr - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall = np.r_[recall[sl], 1]; fps = np.r_[fps[sl], 0]
    cut = np.argmin(np.abs(recall - level))
    return fps[cut] / np.sum(np.logical_not(y))

def atleast(y, s, level):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.argmax(tpr >= level)]

def deterr(y, s):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return np.min(0.5 * (1 - tpr) + 0.5 * fpr)

cases = {
 "ties": ([0.1,0.4,0.35,0.8,0.2,0.5,0.3], [0.9,0.4,0.7,0.35,0.95]),
 "all_equal": ([1.0,1.0,1.0,1.0], [1.0,1.0]),
 "single_positive": ([0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9], [0.65]),
 "many_ties": ([3,1,2,2,0,1,3,2,1,0,4,2,1,1,0,2,3,1,0,2], [4,3,2,4,1,3,5,2]),
}
for name, (ins, oods) in cases.items():
    for pos in ["ood", "id"]:
        if pos == "ood":
            y = [0]*len(ins) + [1]*len(oods); s = list(ins) + list(oods)
        else:
            y = [1]*len(ins) + [0]*len(oods); s = [-v for v in ins] + [-v for v in oods]
        y = np.array(y); s = np.array(s, dtype=float)
        out = dict(auroc=roc_auc_score(y, s), ap=average_precision_score(y, s),
                   fpr90_closest=fpr_closest(y, s, 0.9), fpr95_closest=fpr_closest(y, s, 0.95),
                   fpr90_atleast=atleast(y, s, 0.9), fpr50_closest=fpr_closest(y,s,0.5), fpr50_atleast=atleast(y,s,0.5),
                   deterr=deterr(y, s))
        print(name, pos, {k: repr(float(v)) for k, v in out.items()})
