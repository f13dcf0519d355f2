# Independent reference values for src/metrics/calibration.rs tests.
# Run: python3 -m pip install numpy scipy && python3 experiments/calibration_reference.py
import numpy as np, math
from scipy.optimize import minimize_scalar

def calib_err(confidence, correct, p='2', beta=100, skip_last=True):
    # utils/calibration_tools.calib_err of the reference (which skips the last bin); skip_last=False fixes it
    idxs = np.argsort(confidence, kind='stable')
    confidence = confidence[idxs]; correct = correct[idxs]
    bins = [[i * beta, (i + 1) * beta] for i in range(len(confidence) // beta)]
    bins[-1] = [bins[-1][0], len(confidence)]
    cerr = 0; n = len(confidence)
    rng = range(len(bins) - 1) if skip_last else range(len(bins))
    for i in rng:
        bc = confidence[bins[i][0]:bins[i][1]]; bk = correct[bins[i][0]:bins[i][1]]
        d = abs(np.nanmean(bc) - np.nanmean(bk))
        cerr += len(bc) / n * (d*d if p == '2' else d)
    return math.sqrt(cerr) if p == '2' else cerr

N = 250
conf = np.array([((i * 37) % 250) / 250 * 0.5 + 0.5 for i in range(N)])
corr = np.array([1.0 if (i * 13) % 7 < 5 else 0.0 for i in range(N)])
for skip in [False, True]:
    print('skip', skip, 'rms', repr(calib_err(conf, corr, '2', 100, skip)), 'mad', repr(calib_err(conf, corr, '1', 100, skip)))
print('softf1', repr(float(2*np.sum((1-conf)*(1-corr))/np.sum((1-conf)+(1-corr)))))

K = 5; M = 300
Z = np.array([[math.sin(i * 1.3 + c * 0.7) * 3 + (1.5 if c == i % K else 0.0) for c in range(K)] for i in range(M)])
y = np.array([i % K if i % 4 else (i + 1) % K for i in range(M)])
def nll(t):
    zt = Z / t; m = zt.max(1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(zt - m).sum(1)))
    return float(np.mean(lse - zt[np.arange(M), y]))
r = minimize_scalar(nll, bounds=(0.2, 5.0), method='bounded', options={'xatol': 1e-9})
print('T*', repr(r.x), 'nll', repr(r.fun), 'nll(1)', repr(nll(1.0)))
