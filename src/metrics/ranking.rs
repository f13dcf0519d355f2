//! Ranking metrics (AUROC, AUPR as average precision, FPR at a TPR level, detection error) from one sort.

use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};

/// Which class counts as "positive" for a ranking metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Positive {
    /// OOD examples are positives, ranked by anomaly score (the paper's convention; "AUPR-Out").
    #[default]
    Ood,
    /// In-distribution examples are positives, ranked by negated anomaly score ("AUPR-In").
    Id,
}

impl Positive {
    /// Short suffix used in column names: `out` for OOD-positive, `in` for ID-positive.
    pub fn suffix(self) -> &'static str {
        match self {
            Positive::Ood => "out",
            Positive::Id => "in",
        }
    }
}

/// A recall level as written in metric names, in percent to 0.1: `0.9` → `90`, `0.995` → `99.5`.
pub fn level_name(tpr: f64) -> String {
    let level = (tpr * 1000.0).round() / 10.0;
    if level.fract() == 0.0 {
        format!("{}", level as i64)
    } else {
        format!("{level}")
    }
}

/// How the threshold for "FPR at a TPR level" is chosen (README, "The paper's protocol: metrics").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FprRule {
    /// The reference code's rule: the threshold whose recall is *closest* to the level
    /// (`argmin |recall - level|`, ties to the higher recall). The paper's numbers use this.
    #[default]
    Closest,
    /// The usual rule: the highest threshold whose recall is *at least* the level.
    AtLeast,
}

/// Metric settings; defaults are the paper's NLP settings (OOD positive, TPR 0.90, closest rule).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    pub positive: Positive,
    /// Target true-positive rate (recall) for FPR, in (0, 1]. 0.90 for text, 0.95 for vision.
    pub tpr: f64,
    pub fpr_rule: FprRule,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            positive: Positive::Ood,
            tpr: 0.9,
            fpr_rule: FprRule::Closest,
        }
    }
}

/// FPR at a TPR level, with the threshold and recall actually used.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FprAtTpr {
    /// False-positive rate at the chosen threshold.
    pub fpr: f64,
    /// The recall (TPR) reached at that threshold (may differ from the level; see [`FprRule`]).
    pub tpr: f64,
    /// The threshold, in the ranking's orientation: examples with `score >= threshold` are flagged
    /// positive. For [`Positive::Id`] this is a *negated* anomaly score.
    pub threshold: f64,
}

/// All ranking metrics for one (in-distribution, OOD) pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    pub positive: Positive,
    pub n_in: usize,
    pub n_ood: usize,
    /// Area under the ROC curve; ties count half (sklearn `roc_auc_score`). Same for either positive class.
    pub auroc: f64,
    /// Average precision (sklearn `average_precision_score`) with [`Self::positive`] as positive class.
    pub aupr: f64,
    /// FPR at [`Self::tpr_level`] with [`Self::fpr_rule`].
    pub fpr: f64,
    pub tpr_level: f64,
    pub fpr_rule: FprRule,
    /// `min_t 0.5·(1 − TPR(t)) + 0.5·FPR(t)` over all thresholds (including flagging nothing).
    pub detection_error: f64,
}

impl DetectionMetrics {
    /// Computes every ranking metric from anomaly scores (higher = more anomalous).
    pub fn compute(in_scores: &[f64], ood_scores: &[f64], cfg: &MetricsConfig) -> Result<Self> {
        let r = Ranking::new(in_scores, ood_scores, cfg.positive)?;
        Ok(Self {
            positive: cfg.positive,
            n_in: in_scores.len(),
            n_ood: ood_scores.len(),
            auroc: r.auroc(),
            aupr: r.average_precision(),
            fpr: r.fpr_at_tpr(cfg.tpr, cfg.fpr_rule)?.fpr,
            tpr_level: cfg.tpr,
            fpr_rule: cfg.fpr_rule,
            detection_error: r.detection_error(),
        })
    }

    /// `(name, value)` pairs with names that state the positive class and the FPR rule,
    /// e.g. `fpr90_closest`, `auroc`, `aupr_out`.
    pub fn named(&self) -> Vec<(String, f64)> {
        let rule = match self.fpr_rule {
            FprRule::Closest => "closest",
            FprRule::AtLeast => "atleast",
        };
        let level = format_level(self.tpr_level);
        vec![
            (
                format!("fpr{level}_{rule}_{}", self.positive.suffix()),
                self.fpr,
            ),
            ("auroc".to_string(), self.auroc),
            (format!("aupr_{}", self.positive.suffix()), self.aupr),
            ("detection_error".to_string(), self.detection_error),
        ]
    }
}

/// `0.9` → `"90"`, `0.955` → `"95.5"`.
fn format_level(level: f64) -> String {
    let pct = (level * 1000.0).round() / 10.0;
    if pct.fract() == 0.0 {
        format!("{}", pct as i64)
    } else {
        format!("{pct}")
    }
}

/// A sorted ranking of positives and negatives, reduced to cumulative counts at each distinct score.
///
/// Built by one sort per class and a merge, then shared by all ranking metrics. Points are in
/// descending score order; point `k` means "flag every example with score >= `thresholds[k]`".
#[derive(Clone, Debug)]
pub struct Ranking {
    thresholds: Vec<f64>,
    tps: Vec<u64>,
    fps: Vec<u64>,
    n_pos: u64,
    n_neg: u64,
}

/// Maps a finite `f64` to a `u64` whose unsigned order equals the numeric order (`-0.0` ≡ `0.0`).
#[inline]
fn order_key(x: f64) -> u64 {
    let bits = (x + 0.0).to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

#[inline]
fn key_value(k: u64) -> f64 {
    let bits = if k >> 63 == 1 { k & !(1 << 63) } else { !k };
    f64::from_bits(bits)
}

fn sorted_keys_desc(scores: &[f64], what: &str) -> Result<Vec<u64>> {
    let mut keys = Vec::with_capacity(scores.len());
    for (i, &s) in scores.iter().enumerate() {
        if !s.is_finite() {
            return Err(OeError::Metric(format!(
                "{what} score #{} is {s}; scores must be finite",
                i + 1
            )));
        }
        keys.push(order_key(s));
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
    Ok(keys)
}

impl Ranking {
    /// Ranks anomaly scores of in-distribution and OOD examples with the given positive class.
    ///
    /// Errors (never NaN) when either class is empty or a score is not finite.
    pub fn new(in_scores: &[f64], ood_scores: &[f64], positive: Positive) -> Result<Self> {
        if in_scores.is_empty() {
            return Err(OeError::Metric(
                "no in-distribution scores: both classes are needed".into(),
            ));
        }
        if ood_scores.is_empty() {
            return Err(OeError::Metric(
                "no OOD scores: both classes are needed".into(),
            ));
        }
        let (pos, neg) = match positive {
            Positive::Ood => (
                sorted_keys_desc(ood_scores, "OOD")?,
                sorted_keys_desc(in_scores, "in-distribution")?,
            ),
            Positive::Id => {
                // Negating a score reverses the order: take ascending keys of the negation.
                let neg_in: Vec<f64> = in_scores.iter().map(|s| -s).collect();
                let neg_ood: Vec<f64> = ood_scores.iter().map(|s| -s).collect();
                (
                    sorted_keys_desc(&neg_in, "in-distribution")?,
                    sorted_keys_desc(&neg_ood, "OOD")?,
                )
            }
        };
        Ok(Self::from_sorted(&pos, &neg))
    }

    /// Merges two descending key lists into cumulative counts per distinct value.
    fn from_sorted(pos: &[u64], neg: &[u64]) -> Self {
        let cap = pos.len() + neg.len();
        let mut thresholds = Vec::with_capacity(cap);
        let mut tps = Vec::with_capacity(cap);
        let mut fps = Vec::with_capacity(cap);
        let (mut i, mut j) = (0usize, 0usize);
        while i < pos.len() || j < neg.len() {
            let t = match (pos.get(i), neg.get(j)) {
                (Some(&p), Some(&n)) => p.max(n),
                (Some(&p), None) => p,
                (None, Some(&n)) => n,
                (None, None) => unreachable!(),
            };
            while i < pos.len() && pos[i] == t {
                i += 1;
            }
            while j < neg.len() && neg[j] == t {
                j += 1;
            }
            thresholds.push(key_value(t));
            tps.push(i as u64);
            fps.push(j as u64);
        }
        Self {
            thresholds,
            tps,
            fps,
            n_pos: pos.len() as u64,
            n_neg: neg.len() as u64,
        }
    }

    /// Number of distinct scores.
    pub fn len(&self) -> usize {
        self.thresholds.len()
    }

    /// Always false: a ranking has at least one positive and one negative.
    pub fn is_empty(&self) -> bool {
        self.thresholds.is_empty()
    }

    /// Area under the ROC curve by the trapezoid rule over distinct thresholds, which counts a tied
    /// positive/negative pair as one half (identical to sklearn's `roc_auc_score`).
    pub fn auroc(&self) -> f64 {
        // Exact integer accumulation of 2·area·n_pos·n_neg.
        let mut acc: u128 = 0;
        let (mut prev_tp, mut prev_fp) = (0u64, 0u64);
        for (&tp, &fp) in self.tps.iter().zip(&self.fps) {
            acc += (fp - prev_fp) as u128 * (tp + prev_tp) as u128;
            prev_tp = tp;
            prev_fp = fp;
        }
        acc as f64 / (2.0 * self.n_pos as f64 * self.n_neg as f64)
    }

    /// Average precision, `Σ_k (R_k − R_{k−1})·P_k` over distinct thresholds in descending order
    /// (sklearn's `average_precision_score`; no interpolation).
    pub fn average_precision(&self) -> f64 {
        let mut ap = 0.0;
        let mut prev_tp = 0u64;
        for (&tp, &fp) in self.tps.iter().zip(&self.fps) {
            if tp > prev_tp {
                let precision = tp as f64 / (tp + fp) as f64;
                ap += (tp - prev_tp) as f64 * precision;
            }
            prev_tp = tp;
        }
        ap / self.n_pos as f64
    }

    /// FPR at the given TPR (recall) level with the given rule.
    pub fn fpr_at_tpr(&self, level: f64, rule: FprRule) -> Result<FprAtTpr> {
        if !(level > 0.0 && level <= 1.0) {
            return Err(OeError::Metric(format!(
                "TPR level must be in (0, 1], got {level}"
            )));
        }
        let n_pos = self.n_pos as f64;
        let k = match rule {
            FprRule::Closest => {
                // Reference (display_results.fpr_and_fdr_at_recall): points up to the first that reaches
                // full recall, scanned from that point back to the highest threshold; first minimum wins.
                let last = self
                    .tps
                    .iter()
                    .position(|&tp| tp == self.n_pos)
                    .expect("last point has full recall");
                let mut best = last;
                let mut best_d = f64::INFINITY;
                for k in (0..=last).rev() {
                    let d = (self.tps[k] as f64 / n_pos - level).abs();
                    if d < best_d {
                        best_d = d;
                        best = k;
                    }
                }
                best
            }
            FprRule::AtLeast => self
                .tps
                .iter()
                .position(|&tp| tp as f64 / n_pos >= level)
                .expect("last point has full recall"),
        };
        Ok(FprAtTpr {
            fpr: self.fps[k] as f64 / self.n_neg as f64,
            tpr: self.tps[k] as f64 / n_pos,
            threshold: self.thresholds[k],
        })
    }

    /// Detection error `min_t 0.5·(1 − TPR) + 0.5·FPR`, including the threshold that flags nothing (0.5).
    pub fn detection_error(&self) -> f64 {
        let (p, n) = (self.n_pos as f64, self.n_neg as f64);
        self.tps
            .iter()
            .zip(&self.fps)
            .map(|(&tp, &fp)| 0.5 * (1.0 - tp as f64 / p) + 0.5 * fp as f64 / n)
            .fold(0.5, f64::min)
    }

    /// ROC curve points `(fpr, tpr, threshold)` from the highest threshold down, starting at (0, 0, +inf).
    pub fn roc_curve(&self) -> Vec<(f64, f64, f64)> {
        let (p, n) = (self.n_pos as f64, self.n_neg as f64);
        std::iter::once((0.0, 0.0, f64::INFINITY))
            .chain(
                self.tps
                    .iter()
                    .zip(&self.fps)
                    .zip(&self.thresholds)
                    .map(|((&tp, &fp), &t)| (fp as f64 / n, tp as f64 / p, t)),
            )
            .collect()
    }

    /// Precision-recall points `(recall, precision, threshold)` from the highest threshold down.
    pub fn pr_curve(&self) -> Vec<(f64, f64, f64)> {
        let p = self.n_pos as f64;
        self.tps
            .iter()
            .zip(&self.fps)
            .zip(&self.thresholds)
            .map(|((&tp, &fp), &t)| (tp as f64 / p, tp as f64 / (tp + fp) as f64, t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case: in-distribution scores, OOD scores, and reference values per positive class.
    struct Case {
        name: &'static str,
        ins: Vec<f64>,
        oods: Vec<f64>,
        /// [auroc, ap, fpr90_closest, fpr95_closest, fpr90_atleast, fpr50_closest, fpr50_atleast, deterr]
        ood_pos: [f64; 8],
        id_pos: [f64; 8],
    }

    // Reference values: scikit-learn 1.9.1 with numpy (float64). AUROC = roc_auc_score, AP =
    // average_precision_score, "atleast" = fpr[argmax(tpr >= level)] from roc_curve(drop_intermediate=
    // False), detection error = min(0.5(1 - tpr) + 0.5 fpr) over the same curve, and "closest" = the
    // reference repository's fpr_and_fdr_at_recall re-typed in numpy from the description in README, "The paper's protocol: metrics". Labels are
    // 1 = OOD for ood_pos; for id_pos labels are 1 = in-distribution and scores negated.
    // The script is reproduced in experiments/metrics_reference.py.
    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "ties between classes",
                ins: vec![0.1, 0.4, 0.35, 0.8, 0.2, 0.5, 0.3],
                oods: vec![0.9, 0.4, 0.7, 0.35, 0.95],
                ood_pos: [
                    0.8,
                    0.7753968253968253,
                    0.5714285714285714,
                    0.5714285714285714,
                    0.5714285714285714,
                    0.2857142857142857,
                    0.14285714285714285,
                    0.27142857142857146,
                ],
                id_pos: [
                    0.7999999999999999,
                    0.8520408163265305,
                    0.6,
                    0.6,
                    0.6,
                    0.2,
                    0.2,
                    0.27142857142857146,
                ],
            },
            Case {
                name: "all scores equal",
                ins: vec![1.0; 4],
                oods: vec![1.0; 2],
                ood_pos: [0.5, 0.3333333333333333, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5],
                id_pos: [0.5, 0.6666666666666666, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5],
            },
            Case {
                name: "single positive",
                ins: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                oods: vec![0.65],
                ood_pos: [
                    0.6666666666666667,
                    0.25,
                    0.3333333333333333,
                    0.3333333333333333,
                    0.3333333333333333,
                    0.3333333333333333,
                    0.3333333333333333,
                    0.16666666666666666,
                ],
                id_pos: [
                    0.6666666666666666,
                    0.9626543209876544,
                    1.0,
                    1.0,
                    1.0,
                    0.0,
                    0.0,
                    0.16666666666666669,
                ],
            },
            Case {
                name: "many ties within and between classes",
                ins: vec![
                    3., 1., 2., 2., 0., 1., 3., 2., 1., 0., 4., 2., 1., 1., 0., 2., 3., 1., 0., 2.,
                ],
                oods: vec![4., 3., 2., 4., 1., 3., 5., 2.],
                ood_pos: [0.79375, 0.5959967320261438, 0.5, 0.8, 0.8, 0.2, 0.2, 0.2875],
                id_pos: [
                    0.79375,
                    0.8811458887116781,
                    0.625,
                    0.625,
                    0.625,
                    0.125,
                    0.125,
                    0.2875,
                ],
            },
        ]
    }

    fn check(name: &str, what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() < 1e-12,
            "{name} / {what}: got {got}, reference {want}"
        );
    }

    #[test]
    fn matches_sklearn_and_reference_code() {
        for c in cases() {
            for (pos, want) in [(Positive::Ood, c.ood_pos), (Positive::Id, c.id_pos)] {
                let r = Ranking::new(&c.ins, &c.oods, pos).unwrap();
                let tag = format!("{} ({pos:?} positive)", c.name);
                check(&tag, "auroc", r.auroc(), want[0]);
                check(&tag, "ap", r.average_precision(), want[1]);
                check(
                    &tag,
                    "fpr90 closest",
                    r.fpr_at_tpr(0.9, FprRule::Closest).unwrap().fpr,
                    want[2],
                );
                check(
                    &tag,
                    "fpr95 closest",
                    r.fpr_at_tpr(0.95, FprRule::Closest).unwrap().fpr,
                    want[3],
                );
                check(
                    &tag,
                    "fpr90 at-least",
                    r.fpr_at_tpr(0.9, FprRule::AtLeast).unwrap().fpr,
                    want[4],
                );
                check(
                    &tag,
                    "fpr50 closest",
                    r.fpr_at_tpr(0.5, FprRule::Closest).unwrap().fpr,
                    want[5],
                );
                check(
                    &tag,
                    "fpr50 at-least",
                    r.fpr_at_tpr(0.5, FprRule::AtLeast).unwrap().fpr,
                    want[6],
                );
                check(&tag, "detection error", r.detection_error(), want[7]);
            }
        }
    }

    #[test]
    fn closest_and_at_least_rules_differ_where_they_should() {
        // "ties" case at 50%: recalls 0.4 and 0.6 are equally close; the reference takes the lowest
        // threshold with recall 0.6 (FPR 2/7), the usual rule the highest one (FPR 1/7).
        let c = &cases()[0];
        let r = Ranking::new(&c.ins, &c.oods, Positive::Ood).unwrap();
        let closest = r.fpr_at_tpr(0.5, FprRule::Closest).unwrap();
        let atleast = r.fpr_at_tpr(0.5, FprRule::AtLeast).unwrap();
        assert_eq!((closest.fpr, closest.tpr), (2.0 / 7.0, 0.6));
        assert_eq!((atleast.fpr, atleast.tpr), (1.0 / 7.0, 0.6));
        assert!(atleast.threshold > closest.threshold);
    }

    #[test]
    fn empty_class_is_a_clear_error() {
        let e = Ranking::new(&[], &[1.0], Positive::Ood)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no in-distribution scores"), "{e}");
        let e = Ranking::new(&[1.0], &[], Positive::Id)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no OOD scores"), "{e}");
        let e = DetectionMetrics::compute(&[1.0, f64::NAN], &[1.0], &MetricsConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("#2") && e.contains("NaN"), "{e}");
        let r = Ranking::new(&[0.0], &[1.0], Positive::Ood).unwrap();
        assert!(r.fpr_at_tpr(0.0, FprRule::Closest).is_err());
        assert!(r.fpr_at_tpr(1.5, FprRule::Closest).is_err());
    }

    #[test]
    fn perfect_and_inverted_separation() {
        let ins = [0.0, 0.1, 0.2];
        let oods = [1.0, 2.0];
        let m = DetectionMetrics::compute(&ins, &oods, &MetricsConfig::default()).unwrap();
        assert_eq!(
            (m.auroc, m.aupr, m.fpr, m.detection_error),
            (1.0, 1.0, 0.0, 0.0)
        );
        let m = DetectionMetrics::compute(&oods, &ins, &MetricsConfig::default()).unwrap();
        assert_eq!((m.auroc, m.fpr), (0.0, 1.0));
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        let r = Ranking::new(&[-0.0], &[0.0], Positive::Ood).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r.auroc(), 0.5);
    }

    #[test]
    fn order_key_preserves_order() {
        let xs = [
            f64::MIN,
            -1e300,
            -2.5,
            -1e-300,
            0.0,
            1e-300,
            3.0,
            1e300,
            f64::MAX,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} {}", w[0], w[1]);
            assert_eq!(key_value(order_key(w[0])), w[0]);
        }
    }

    #[test]
    fn auroc_is_invariant_to_positive_class_and_input_order() {
        let c = &cases()[3];
        let a = Ranking::new(&c.ins, &c.oods, Positive::Ood)
            .unwrap()
            .auroc();
        let mut ins = c.ins.clone();
        ins.reverse();
        let b = Ranking::new(&ins, &c.oods, Positive::Id).unwrap().auroc();
        assert!((a - b).abs() < 1e-12);
    }

    #[test]
    fn named_metrics_state_positive_class_and_rule() {
        let m = DetectionMetrics::compute(&[0.0, 1.0], &[2.0], &MetricsConfig::default()).unwrap();
        let names: Vec<String> = m.named().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["fpr90_closest_out", "auroc", "aupr_out", "detection_error"]
        );
        let cfg = MetricsConfig {
            positive: Positive::Id,
            tpr: 0.95,
            fpr_rule: FprRule::AtLeast,
        };
        let m = DetectionMetrics::compute(&[0.0, 1.0], &[2.0], &cfg).unwrap();
        assert_eq!(m.named()[0].0, "fpr95_atleast_in");
        assert_eq!(m.named()[2].0, "aupr_in");
    }
}
