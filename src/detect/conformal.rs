//! Calibrated decisions from anomaly scores (higher = more anomalous): conformal p-values against
//! held-out in-distribution validation scores, and the Benjamini–Hochberg procedure over many
//! p-values.
//!
//! - p-value of a score `s` against `n` validation scores: `(1 + #{v >= s}) / (n + 1)`. When the
//!   scored text and the validation texts are exchangeable (the text is in-distribution),
//!   `P(p <= α) <= α` for every α: flagging `p <= α` keeps the in-distribution false-alarm rate
//!   at most α.
//! - Benjamini–Hochberg at level `q` over `m` p-values: with `p_(1) <= ... <= p_(m)`, the largest
//!   `k` with `p_(k) <= k·q/m`; every p-value `<= p_(k)` is flagged. Conformal p-values sharing one
//!   validation set are positively dependent (PRDS), so the false-discovery rate among flagged
//!   texts is at most `q·m0/m` (`m0`: the in-distribution texts among the `m`).

use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};

/// Validation scores, sorted, for p-values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conformal {
    sorted: Vec<f64>,
}

impl Conformal {
    /// From in-distribution validation scores (any order); they must be finite and not empty.
    pub fn new(mut scores: Vec<f64>) -> Result<Self> {
        if scores.is_empty() {
            return Err(OeError::Data(
                "conformal p-values need at least one validation score".into(),
            ));
        }
        if let Some(v) = scores.iter().find(|v| !v.is_finite()) {
            return Err(OeError::Data(format!("validation score {v} is not finite")));
        }
        scores.sort_by(f64::total_cmp);
        Ok(Self { sorted: scores })
    }

    /// Number of validation scores.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// `(1 + #{validation scores >= s}) / (n + 1)`, in `(0, 1]`. A NaN score gets 1 (never
    /// flagged).
    pub fn p_value(&self, s: f64) -> f64 {
        let n = self.sorted.len();
        if s.is_nan() {
            return 1.0;
        }
        let below = self.sorted.partition_point(|&v| v < s);
        (1 + n - below) as f64 / (n + 1) as f64
    }
}

/// Benjamini–Hochberg at level `q`: which of `p` are flagged (`true`), in the order given.
pub fn benjamini_hochberg(p: &[f64], q: f64) -> Vec<bool> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut cut: Option<f64> = None;
    for (k, &i) in order.iter().enumerate() {
        if p[i] <= (k + 1) as f64 * q / m as f64 {
            cut = Some(p[i]);
        }
    }
    match cut {
        Some(c) => p.iter().map(|&x| x <= c).collect(),
        None => vec![false; m],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_count_validation_scores_at_or_above() {
        // By hand: n = 4, p(s) = (1 + #{v >= s}) / 5.
        let c = Conformal::new(vec![3.0, 1.0, 4.0, 2.0]).unwrap();
        assert_eq!(c.p_value(2.5), 3.0 / 5.0); // 3 and 4 are >= 2.5
        assert_eq!(c.p_value(2.0), 4.0 / 5.0); // ties count as >=
        assert_eq!(c.p_value(5.0), 1.0 / 5.0); // above every validation score: the smallest p
        assert_eq!(c.p_value(0.0), 1.0);
        assert_eq!(c.p_value(f64::NAN), 1.0);
        assert!(Conformal::new(vec![]).is_err());
        assert!(Conformal::new(vec![1.0, f64::INFINITY]).is_err());
    }

    #[test]
    fn benjamini_hochberg_matches_statsmodels() {
        // statsmodels.stats.multitest.multipletests(p, alpha=0.1, method="fdr_bh")[0] gives
        // [True, True, True, False] (thresholds k·q/m = .025, .05, .075, .1; p_(3) = .04 <= .075).
        let p = [0.01, 0.04, 0.03, 0.2];
        assert_eq!(benjamini_hochberg(&p, 0.1), [true, true, true, false]);
        // A p-value above its own threshold is still flagged when a larger k passes (step-up).
        let p = [0.02, 0.06, 0.07, 0.08];
        // k·q/m at q = 0.1: .025, .05, .075, .1 → the largest passing k is 4 (0.08 <= 0.1).
        assert_eq!(benjamini_hochberg(&p, 0.1), [true, true, true, true]);
        assert_eq!(benjamini_hochberg(&[0.5, 0.9], 0.1), [false, false]);
        assert!(benjamini_hochberg(&[], 0.1).is_empty());
    }
}
