//! Calibration error with adaptive bins, soft F1 and temperature tuning (README, "The paper's protocol: metrics"; the paper's Appendix G).

use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};

/// Settings for [`calibration_error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationConfig {
    /// Examples per bin after sorting by confidence; the last bin takes the remainder (β..2β−1 items).
    pub bin_size: usize,
    /// Reproduce the reference code's bug: its loop skips the last (most confident) bin while still
    /// dividing by the total count. Off by default.
    pub skip_last_bin: bool,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            bin_size: 100,
            skip_last_bin: false,
        }
    }
}

/// RMS and MAD calibration error, as fractions (multiply by 100 for the paper's percentages).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationError {
    /// `sqrt(Σ_b |B|/n · (mean conf_b − mean correct_b)²)`.
    pub rms: f64,
    /// `Σ_b |B|/n · |mean conf_b − mean correct_b|`.
    pub mad: f64,
    pub bins: usize,
}

/// Calibration error of confidences against 0/1 correctness (OOD examples count as incorrect).
///
/// Examples are sorted by confidence (stable sort, so equal confidences keep input order) and cut into
/// bins of `bin_size`; needs at least `bin_size` examples.
pub fn calibration_error(
    confidence: &[f64],
    correct: &[bool],
    cfg: &CalibrationConfig,
) -> Result<CalibrationError> {
    let n = confidence.len();
    if n != correct.len() {
        return Err(OeError::Metric(format!(
            "{n} confidences but {} correctness flags",
            correct.len()
        )));
    }
    if cfg.bin_size == 0 {
        return Err(OeError::Metric("bin size must be positive".into()));
    }
    if n < cfg.bin_size {
        return Err(OeError::Metric(format!(
            "calibration needs at least one full bin: {n} examples < bin size {}",
            cfg.bin_size
        )));
    }
    if let Some(i) = confidence.iter().position(|c| !c.is_finite()) {
        return Err(OeError::Metric(format!(
            "confidence #{} is {}",
            i + 1,
            confidence[i]
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| confidence[a].total_cmp(&confidence[b]));
    let n_bins = n / cfg.bin_size;
    let used_bins = if cfg.skip_last_bin {
        n_bins - 1
    } else {
        n_bins
    };
    let (mut sq, mut abs) = (0.0, 0.0);
    for b in 0..used_bins {
        let start = b * cfg.bin_size;
        let end = if b + 1 == n_bins {
            n
        } else {
            start + cfg.bin_size
        };
        let m = (end - start) as f64;
        let conf: f64 = idx[start..end].iter().map(|&i| confidence[i]).sum::<f64>() / m;
        let acc = idx[start..end].iter().filter(|&&i| correct[i]).count() as f64 / m;
        let d = (conf - acc).abs();
        sq += m / n as f64 * d * d;
        abs += m / n as f64 * d;
    }
    Ok(CalibrationError {
        rms: sq.sqrt(),
        mad: abs,
        bins: n_bins,
    })
}

/// Soft F1 of the reference (`2·Σ(1−c)·wrong / Σ((1−c) + wrong)`): how well low confidence marks errors.
pub fn soft_f1(confidence: &[f64], correct: &[bool]) -> Result<f64> {
    if confidence.len() != correct.len() || confidence.is_empty() {
        return Err(OeError::Metric(
            "soft F1 needs equally many, non-zero confidences and correctness flags".into(),
        ));
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (&c, &ok) in confidence.iter().zip(correct) {
        let wrong = if ok { 0.0 } else { 1.0 };
        num += (1.0 - c) * wrong;
        den += (1.0 - c) + wrong;
    }
    Ok(2.0 * num / den)
}

/// Mean negative log-likelihood of `labels` under `softmax(logits / t)`.
///
/// `logits`: row-major `[n, k]`; `labels`: `[n]` with values `< k`.
pub fn nll_at_temperature(logits: &[f64], k: usize, labels: &[usize], t: f64) -> f64 {
    let mut total = 0.0;
    for (row, &y) in logits.chunks_exact(k).zip(labels) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z / t));
        let lse = max + row.iter().map(|&z| (z / t - max).exp()).sum::<f64>().ln();
        total += lse - row[y] / t;
    }
    total / labels.len() as f64
}

/// Sign-determining part of dNLL/dT: `mean_i (z_{i,y} − E_{softmax(z_i/T)}[z_i])` (dNLL/dT is this / T²).
fn nll_slope(logits: &[f64], k: usize, labels: &[usize], t: f64) -> f64 {
    let mut total = 0.0;
    for (row, &y) in logits.chunks_exact(k).zip(labels) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z / t));
        let (mut s, mut sz) = (0.0, 0.0);
        for &z in row {
            let e = (z / t - max).exp();
            s += e;
            sz += e * z;
        }
        total += row[y] - sz / s;
    }
    total / labels.len() as f64
}

/// Temperature tuning as the reference's `tune_temp`: bisection on the sign of dNLL/dT in
/// `[lower, upper]` (defaults 0.2, 5.0) down to width `eps` (1e-4), then the best of the final
/// `lower`, midpoint and `upper` by NLL.
///
/// `logits`: row-major `[n, k]` held-out logits; `labels`: `[n]`.
pub fn tune_temperature(
    logits: &[f64],
    k: usize,
    labels: &[usize],
    lower: f64,
    upper: f64,
    eps: f64,
) -> Result<f64> {
    if k == 0 || logits.len() != labels.len() * k || labels.is_empty() {
        return Err(OeError::Metric(format!(
            "temperature tuning needs [n, k] logits for n labels: {} logits, {} labels, k = {k}",
            logits.len(),
            labels.len()
        )));
    }
    if let Some(&y) = labels.iter().find(|&&y| y >= k) {
        return Err(OeError::Metric(format!(
            "label {y} out of range for {k} classes"
        )));
    }
    if !(0.0 < lower && lower < upper && eps > 0.0) {
        return Err(OeError::Metric(format!(
            "bad search interval [{lower}, {upper}] / eps {eps}"
        )));
    }
    let (mut lo, mut hi) = (lower, upper);
    while hi - lo > eps {
        let mid = 0.5 * (lo + hi);
        if nll_slope(logits, k, labels, mid) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let candidates = [lo, 0.5 * (lo + hi), hi];
    let mut best = candidates[0];
    let mut best_nll = f64::INFINITY;
    for t in candidates {
        let nll = nll_at_temperature(logits, k, labels, t);
        if nll < best_nll {
            best_nll = nll;
            best = t;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Inputs defined by formula so the reference script (experiments/calibration_reference.py) builds
    // the same arrays. Reference values: numpy 2 re-typing of the reference's calib_err (with and
    // without its skipped last bin); temperature: scipy.optimize.minimize_scalar (bounded, xatol 1e-9)
    // on the same NLL, an independent optimiser.
    fn calib_inputs() -> (Vec<f64>, Vec<bool>) {
        let conf = (0..250)
            .map(|i| ((i * 37) % 250) as f64 / 250.0 * 0.5 + 0.5)
            .collect();
        let corr = (0..250).map(|i| (i * 13) % 7 < 5).collect();
        (conf, corr)
    }

    #[test]
    fn calibration_error_matches_reference() {
        let (conf, corr) = calib_inputs();
        let e = calibration_error(&conf, &corr, &CalibrationConfig::default()).unwrap();
        assert!((e.rms - 0.10320691191323703).abs() < 1e-12, "{}", e.rms);
        assert!((e.mad - 0.1018).abs() < 1e-12, "{}", e.mad);
        assert_eq!(e.bins, 2);
        let cfg = CalibrationConfig {
            skip_last_bin: true,
            ..Default::default()
        };
        let e = calibration_error(&conf, &corr, &cfg).unwrap();
        assert!((e.rms - 0.05122889809472772).abs() < 1e-12, "{}", e.rms);
        assert!((e.mad - 0.032399999999999984).abs() < 1e-12, "{}", e.mad);
    }

    #[test]
    fn soft_f1_matches_reference() {
        let (conf, corr) = calib_inputs();
        assert!((soft_f1(&conf, &corr).unwrap() - 0.28687198515769946).abs() < 1e-12);
    }

    #[test]
    fn calibration_rejects_bad_input() {
        let cfg = CalibrationConfig::default();
        assert!(calibration_error(&[0.5; 99], &[true; 99], &cfg).is_err());
        assert!(calibration_error(&[0.5; 100], &[true; 99], &cfg).is_err());
        let mut c = vec![0.5; 100];
        c[3] = f64::NAN;
        let e = calibration_error(&c, &[true; 100], &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("#4"), "{e}");
    }

    #[test]
    fn perfectly_calibrated_bins_have_zero_error() {
        // Two bins of 100 whose mean confidence equals their accuracy (0.3 and 0.8).
        let conf: Vec<f64> = (0..200).map(|i| if i < 100 { 0.3 } else { 0.8 }).collect();
        let corr: Vec<bool> = (0..200)
            .map(|i| if i < 100 { i % 10 < 3 } else { i % 10 < 8 })
            .collect();
        let e = calibration_error(&conf, &corr, &CalibrationConfig::default()).unwrap();
        assert!(e.rms < 1e-12 && e.mad < 1e-12, "{e:?}");
    }

    #[test]
    fn temperature_matches_independent_optimiser() {
        let k = 5;
        let m = 300;
        let mut logits = Vec::with_capacity(m * k);
        for i in 0..m {
            for c in 0..k {
                let bonus = if c == i % k { 1.5 } else { 0.0 };
                logits.push((i as f64 * 1.3 + c as f64 * 0.7).sin() * 3.0 + bonus);
            }
        }
        let labels: Vec<usize> = (0..m)
            .map(|i| if i % 4 != 0 { i % k } else { (i + 1) % k })
            .collect();
        assert!((nll_at_temperature(&logits, k, &labels, 1.0) - 2.0432879424269936).abs() < 1e-12);
        let t = tune_temperature(&logits, k, &labels, 0.2, 5.0, 1e-4).unwrap();
        assert!((t - 3.866712180962278).abs() < 1e-3, "T = {t}");
        assert!((nll_at_temperature(&logits, k, &labels, t) - 1.5042127387157007).abs() < 1e-7);
        assert!(tune_temperature(&logits, k, &labels[..10], 0.2, 5.0, 1e-4).is_err());
    }
}
