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
}

impl Protocol {
    /// `paper` or `clean`: the name in results tables and evaluation directories.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::Clean => "clean",
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
