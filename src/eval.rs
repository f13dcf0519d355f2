//! Evaluation settings and results shared by the text and vision wings: the protocol choice, the
//! one [`Detector`] an evaluation scores with, the metrics' settings, per-set results with means
//! and standard deviations over draws, calibration results, and the one seeded draw formula.
//! The protocols themselves are per wing (`text::protocol`, `vision::protocol`).

use crate::detect::{Detector, Score};
use crate::error::{OeError, Result};
use crate::metrics::{DetectionMetrics, FprRule, MetricsConfig, Positive};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which evaluation protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The reference's protocol and quirks (the paper's numbers).
    #[default]
    Paper,
    /// Seeded uniform OOD draws, batch-independent scores.
    Clean,
    /// Every in-distribution test text against every OOD text, once (one "draw" of the whole
    /// set), with batch-independent scores: the convention of near-OOD benchmarks such as
    /// CLINC150, where the OOD test set is a fixed part of the benchmark.
    Full,
}

impl Protocol {
    /// `paper` or `clean`: the name in results tables and evaluation directories.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::Clean => "clean",
            Protocol::Full => "full",
        }
    }
}

/// Evaluation settings.
///
/// Serialised (in `report.json`) with the field names of earlier versions: the detector is written
/// as `score` (a logit score) plus `detector` (`null`, or a feature detector that replaces `score`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "EvalConfigRepr", into = "EvalConfigRepr")]
pub struct EvalConfig {
    pub protocol: Protocol,
    /// What turns model outputs into anomaly scores.
    pub detector: Detector,
    /// Number of OOD draws per set.
    pub repeats: usize,
    /// In-distribution test examples per OOD example (5 → the paper's 1:5 OOD:ID ratio).
    pub id_per_ood: usize,
    /// Recall level for FPR (0.9 for text, 0.95 for vision).
    pub tpr: f64,
    pub fpr_rule: FprRule,
    pub batch_size: usize,
    pub seed: u64,
    /// A validation OOD set (never a test set): the evaluation then also reports the operating
    /// point of a threshold chosen on it and the in-distribution dev split ([`OperatingPoint`]).
    pub val_ood: Option<String>,
}

/// [`EvalConfig`] as written to disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
struct EvalConfigRepr {
    protocol: Protocol,
    score: Score,
    repeats: usize,
    id_per_ood: usize,
    tpr: f64,
    fpr_rule: FprRule,
    batch_size: usize,
    seed: u64,
    detector: Option<crate::detect::FeatureDetector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_ood: Option<String>,
}

impl Default for EvalConfigRepr {
    fn default() -> Self {
        EvalConfig::default().into()
    }
}

impl From<EvalConfigRepr> for EvalConfig {
    fn from(r: EvalConfigRepr) -> Self {
        Self {
            protocol: r.protocol,
            detector: match r.detector {
                Some(f) => Detector::Feature(f),
                None => Detector::Logit(r.score),
            },
            repeats: r.repeats,
            id_per_ood: r.id_per_ood,
            tpr: r.tpr,
            fpr_rule: r.fpr_rule,
            batch_size: r.batch_size,
            seed: r.seed,
            val_ood: r.val_ood,
        }
    }
}

impl From<EvalConfig> for EvalConfigRepr {
    fn from(c: EvalConfig) -> Self {
        let (score, detector) = match c.detector {
            Detector::Logit(s) => (s, None),
            Detector::Feature(f) => (Score::Msp, Some(f)),
        };
        Self {
            protocol: c.protocol,
            score,
            repeats: c.repeats,
            id_per_ood: c.id_per_ood,
            tpr: c.tpr,
            fpr_rule: c.fpr_rule,
            batch_size: c.batch_size,
            seed: c.seed,
            detector,
            val_ood: c.val_ood,
        }
    }
}

impl EvalConfig {
    /// The metrics' settings (OOD is the positive class), after checking that draws, ratio and
    /// batch size are positive.
    pub fn metrics_config(&self) -> Result<MetricsConfig> {
        if self.repeats == 0 || self.id_per_ood == 0 || self.batch_size == 0 {
            return Err(OeError::Config(
                "repeats, ratio and batch size must be positive".into(),
            ));
        }
        Ok(MetricsConfig {
            positive: Positive::Ood,
            tpr: self.tpr,
            fpr_rule: self.fpr_rule,
        })
    }

    /// Name of the anomaly score in use (`msp`, `energy`, ..., or `mahalanobis` / `knn`).
    pub fn score_name(&self) -> String {
        self.detector.to_string()
    }

    /// The OOD:ID ratio as results tables name it: `1:5`, or `all` for [`Protocol::Full`].
    pub fn ratio_name(&self) -> String {
        match self.protocol {
            Protocol::Full => "all".to_string(),
            _ => format!("1:{}", self.id_per_ood),
        }
    }

    /// The FPR column name of results evaluated with these settings, e.g. `fpr90_closest_out`.
    pub fn fpr_column(&self) -> String {
        let level = crate::metrics::level_name(self.tpr);
        let rule = match self.fpr_rule {
            FprRule::Closest => "closest",
            FprRule::AtLeast => "atleast",
        };
        format!("fpr{level}_{rule}_out")
    }
}

impl Default for EvalConfig {
    /// The paper's text evaluation: MSP, 10 draws at 1:5 OOD:ID, FPR at 90% recall (closest rule).
    fn default() -> Self {
        Self {
            protocol: Protocol::Paper,
            detector: Detector::Logit(Score::Msp),
            repeats: 10,
            id_per_ood: 5,
            tpr: 0.9,
            fpr_rule: FprRule::Closest,
            batch_size: 64,
            seed: 1,
            val_ood: None,
        }
    }
}

/// Mean and (population) standard deviation over draws, as the reference's `np.std`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    pub fn of(xs: &[f64]) -> Self {
        if xs.is_empty() {
            return Self::default();
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            mean,
            std: var.sqrt(),
        }
    }
}

/// Results for one OOD set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetResult {
    pub ood_set: String,
    /// OOD examples per draw.
    pub n_ood: usize,
    pub n_available: usize,
    pub draws: Vec<DetectionMetrics>,
    pub fpr: MeanStd,
    pub auroc: MeanStd,
    pub aupr_out: MeanStd,
    /// Average precision with the in-distribution texts as positives, ranked by negated anomaly
    /// score ("AUPR-In"). Absent (zeros) in reports written before it.
    #[serde(default)]
    pub aupr_in: MeanStd,
    /// Per draw: (index into the set's texts, anomaly score).
    #[serde(skip)]
    pub scores: Vec<Vec<(usize, f64)>>,
}

/// A whole evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub config: EvalConfig,
    pub n_in: usize,
    pub in_accuracy: f64,
    pub sets: Vec<SetResult>,
    /// In-distribution anomaly scores, in test-file order.
    #[serde(skip)]
    pub in_scores: Vec<f64>,
    /// Per in-distribution test example, in file order: whether its predicted class is right.
    #[serde(skip)]
    pub in_correct: Vec<bool>,
    /// The decision threshold chosen on validation data, and what it does on the test data
    /// (evaluations given a validation OOD set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<OperatingPoint>,
    /// The arithmetic of the model's products (recorded only when not the default float32).
    #[serde(default, skip_serializing_if = "crate::device::Precision::is_default")]
    pub precision: crate::device::Precision,
}

/// A threshold chosen on validation data only (texts with a score above it are flagged as OOD),
/// and its effect on the test data, as near-OOD benchmarks report it (Larson et al. 2019:
/// in-scope accuracy and out-of-scope recall).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// How the threshold was chosen.
    pub rule: String,
    /// The validation OOD set and the sizes of both validation sets.
    pub val_ood_set: String,
    pub n_val_in: usize,
    pub n_val_ood: usize,
    pub threshold: f64,
    /// On validation: the share of in-distribution texts classified correctly and not flagged.
    pub val_in_accuracy: f64,
    /// On validation: the share of OOD texts flagged.
    pub val_ood_recall: f64,
    /// On the test set: the share of in-distribution texts classified correctly and not flagged
    /// (a flagged text counts as an error, as Larson et al.'s in-scope accuracy).
    pub test_in_accuracy: f64,
    /// On the test set: the share of in-distribution texts not flagged.
    pub test_in_accepted: f64,
    /// Per OOD test set: the share flagged (every text with `--protocol full`, else the first
    /// draw's).
    pub test_ood_recall: Vec<(String, f64)>,
}

/// The operating point's rule: [`choose_threshold`].
pub const OPERATING_RULE: &str =
    "maximises the mean of validation in-distribution accuracy (correct and not flagged) and validation OOD recall";

/// The threshold `t` (flag when `score > t`) that maximises `(acc(t) + recall(t)) / 2` on
/// validation, where `acc(t)` is the share of in-distribution texts that are correct (`in_correct`)
/// and have `score <= t`, and `recall(t)` the share of OOD texts with `score > t`. Candidates are
/// every validation score (and +∞, flagging nothing); ties keep the lowest threshold. Returns
/// `(t, acc(t), recall(t))`. Errors on empty or non-finite input.
pub fn choose_threshold(
    in_scores: &[f64],
    in_correct: &[bool],
    ood_scores: &[f64],
) -> Result<(f64, f64, f64)> {
    if in_scores.is_empty() || ood_scores.is_empty() || in_scores.len() != in_correct.len() {
        return Err(OeError::Metric(format!(
            "a threshold needs in-distribution and OOD validation scores ({} / {} correctness flags / {})",
            in_scores.len(),
            in_correct.len(),
            ood_scores.len()
        )));
    }
    if in_scores.iter().chain(ood_scores).any(|s| !s.is_finite()) {
        return Err(OeError::Metric("a validation score is not finite".into()));
    }
    // (score, +1 correct in-distribution / 0 wrong in-distribution / -1 OOD), ascending.
    let mut ev: Vec<(f64, i8)> = in_scores
        .iter()
        .zip(in_correct)
        .map(|(&s, &c)| (s, i8::from(c)))
        .chain(ood_scores.iter().map(|&s| (s, -1)))
        .collect();
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (n_in, n_ood) = (in_scores.len() as f64, ood_scores.len() as f64);
    // t below every score: nothing accepted, every OOD text flagged.
    let (mut acc_n, mut ood_below) = (0usize, 0usize);
    let mut best = (f64::NEG_INFINITY, 0.0, 1.0);
    let mut best_obj = 0.5;
    let mut i = 0;
    while i < ev.len() {
        let t = ev[i].0;
        while i < ev.len() && ev[i].0 == t {
            match ev[i].1 {
                1 => acc_n += 1,
                -1 => ood_below += 1,
                _ => {}
            }
            i += 1;
        }
        let acc = acc_n as f64 / n_in;
        let rec = (ood_scores.len() - ood_below) as f64 / n_ood;
        let obj = 0.5 * (acc + rec);
        if obj > best_obj {
            best_obj = obj;
            best = (t, acc, rec);
        }
    }
    Ok(best)
}

impl EvalReport {
    /// Mean over sets of the per-set means: (FPR, AUROC, AUPR-Out).
    pub fn mean_over_sets(&self) -> (f64, f64, f64) {
        let n = self.sets.len().max(1) as f64;
        let f = |g: fn(&SetResult) -> f64| self.sets.iter().map(g).sum::<f64>() / n;
        (
            f(|s| s.fpr.mean),
            f(|s| s.auroc.mean),
            f(|s| s.aupr_out.mean),
        )
    }
}

/// Calibration of one OOD set (vision): RMS and MAD calibration error and soft F1, over draws.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationSet {
    pub ood_set: String,
    pub rms: MeanStd,
    pub mad: MeanStd,
    pub soft_f1: MeanStd,
}

/// Calibration results of an evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationSummary {
    pub temperature: f64,
    /// `false`: no held-out split was available, so T = 1.
    pub tuned: bool,
    pub n_validation: usize,
    pub sets: Vec<CalibrationSet>,
    /// Means over sets.
    pub rms: f64,
    pub mad: f64,
    pub soft_f1: f64,
}

/// The seed of a named set's stream under an evaluation seed (FNV-1a of the name).
pub fn set_seed(seed: u64, set: &str) -> u64 {
    crate::train::fnv1a(0x9e37_79b9_7f4a_7c15 ^ seed, set.as_bytes())
}

/// The one draw stream of both wings: draw `draw` of OOD set `set` under evaluation seed `seed`.
pub fn draw_rng(seed: u64, set: &str, draw: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(set_seed(seed, set).wrapping_add(draw as u64))
}

/// `repeats` seeded uniform draws of `n` of `avail` indices (draw `r` shuffles with `rng(r)` and
/// keeps the first `n`), and the sorted union of all draws, so each drawn example is scored once.
pub fn uniform_draws(
    repeats: usize,
    avail: usize,
    n: usize,
    rng: impl Fn(usize) -> ChaCha8Rng,
) -> (Vec<Vec<usize>>, Vec<usize>) {
    let picks: Vec<Vec<usize>> = (0..repeats)
        .map(|r| {
            let mut o: Vec<usize> = (0..avail).collect();
            o.shuffle(&mut rng(r));
            o.truncate(n);
            o
        })
        .collect();
    let mut needed: Vec<usize> = picks.iter().flatten().copied().collect();
    needed.sort_unstable();
    needed.dedup();
    (picks, needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_maximises_mean_of_accuracy_and_recall_by_brute_force() {
        // Hand case: in (score, correct) = (0.1, y) (0.2, y) (0.3, n) (0.9, y); OOD 0.25, 0.8, 0.95.
        // t = 0.2: acc 2/4, recall 3/3 -> 0.75; t = 0.3: 2/4, 2/3; t = 0.8: 2/4, 2/3 ... best 0.2.
        let (t, a, r) = choose_threshold(
            &[0.1, 0.2, 0.3, 0.9],
            &[true, true, false, true],
            &[0.25, 0.8, 0.95],
        )
        .unwrap();
        assert_eq!((t, a, r), (0.2, 0.5, 1.0));
        // Against brute force over every candidate on seeded random data.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let n = rng.gen_range(1..40);
            let m = rng.gen_range(1..20);
            let ins: Vec<f64> = (0..n)
                .map(|_| (rng.gen_range(0..30) as f64) / 10.0)
                .collect();
            let ok: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.8)).collect();
            let oods: Vec<f64> = (0..m)
                .map(|_| (rng.gen_range(10..40) as f64) / 10.0)
                .collect();
            let (t, a, r) = choose_threshold(&ins, &ok, &oods).unwrap();
            let obj = |t: f64| {
                let acc =
                    ins.iter().zip(&ok).filter(|(s, c)| **c && **s <= t).count() as f64 / n as f64;
                let rec = oods.iter().filter(|s| **s > t).count() as f64 / m as f64;
                (acc, rec, 0.5 * (acc + rec))
            };
            let best = ins
                .iter()
                .chain(&oods)
                .map(|&c| obj(c).2)
                .fold(obj(f64::NEG_INFINITY).2, f64::max);
            let (ea, er, eo) = obj(t);
            assert!((eo - best).abs() < 1e-12, "{eo} vs {best}");
            assert_eq!((a, r), (ea, er));
        }
        assert!(choose_threshold(&[], &[], &[1.0]).is_err());
        assert!(choose_threshold(&[f64::NAN], &[true], &[1.0]).is_err());
    }

    #[test]
    fn mean_std_is_population_std() {
        let m = MeanStd::of(&[1.0, 3.0]);
        assert_eq!((m.mean, m.std), (2.0, 1.0));
    }

    #[test]
    fn config_json_keeps_the_old_field_names() {
        // As written by earlier versions (report.json), with a field that no longer exists.
        let old = r#"{"protocol":"paper","score":{"type":"msp"},"repeats":10,"id_per_ood":5,
            "tpr":0.9,"fpr_rule":"closest","batch_size":64,"seed":1,"wmt16_comma_cut":false,
            "detector":"knn"}"#;
        let c: EvalConfig = serde_json::from_str(old).unwrap();
        assert_eq!(
            c.detector,
            Detector::Feature(crate::detect::FeatureDetector::Knn)
        );
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["score"]["type"], "msp");
        assert_eq!(back["detector"], "knn");
        let c2: EvalConfig = serde_json::from_value(back).unwrap();
        assert_eq!(c, c2);
        let logit: EvalConfig =
            serde_json::from_str(r#"{"score":{"type":"energy","temperature":2.0}}"#).unwrap();
        assert_eq!(
            logit.detector,
            Detector::Logit(Score::Energy { temperature: 2.0 })
        );
        assert_eq!(logit.repeats, 10);
    }

    #[test]
    fn fpr_column_names_level_and_rule() {
        let c = EvalConfig::default();
        assert_eq!(c.fpr_column(), "fpr90_closest_out");
        let c = EvalConfig {
            tpr: 0.95,
            fpr_rule: FprRule::AtLeast,
            ..c
        };
        assert_eq!(c.fpr_column(), "fpr95_atleast_out");
    }
}
