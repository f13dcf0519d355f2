//! Bootstrap confidence intervals for AUROC, AUPR and FPR at a recall level.
//!
//! Stratified percentile bootstrap: each replicate resamples the in-distribution scores (all `n_in`,
//! with replacement) and, independently, the OOD scores (`n_ood` with replacement), then recomputes the
//! metrics with [`Ranking`] — the same code as the evaluation, so there is one AUROC in the crate.
//!
//! Replicate `r` draws from a ChaCha8 stream `(seed, r)`, so results do not depend on thread
//! scheduling, and two runs resampled with the same seed and sizes get the same indices (a paired
//! bootstrap when, e.g., a baseline and an OE model were scored on the same test set).

use crate::error::{OeError, Result};
use crate::metrics::{FprRule, Positive, Ranking};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// What to resample and at which level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootstrapConfig {
    /// Number of replicates.
    pub resamples: usize,
    pub seed: u64,
    /// Two-sided confidence level, e.g. 0.95.
    pub level: f64,
    /// Recall level of the FPR metric (0.9 for the paper's FPR90).
    pub tpr: f64,
    pub fpr_rule: FprRule,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: 1000,
            seed: 0,
            level: 0.95,
            tpr: 0.9,
            fpr_rule: FprRule::Closest,
        }
    }
}

/// One replicate's metrics, OOD-positive: (FPR at the recall level, AUROC, AUPR-Out).
pub type Triple = [f64; 3];

/// A percentile interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }
}

/// Point estimates on the original sample and percentile intervals for FPR, AUROC and AUPR-Out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricIntervals {
    pub point: Triple,
    pub fpr: Interval,
    pub auroc: Interval,
    pub aupr_out: Interval,
}

/// The metrics of one (in, OOD) sample.
pub fn metrics_of(in_scores: &[f64], ood_scores: &[f64], cfg: &BootstrapConfig) -> Result<Triple> {
    let r = Ranking::new(in_scores, ood_scores, Positive::Ood)?;
    Ok([
        r.fpr_at_tpr(cfg.tpr, cfg.fpr_rule)?.fpr,
        r.auroc(),
        r.average_precision(),
    ])
}

/// The RNG of replicate `r`.
pub fn replicate_rng(seed: u64, r: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(r as u64);
    rng
}

/// `n` indices into `0..len`, with replacement.
pub fn resample_indices(rng: &mut ChaCha8Rng, len: usize, n: usize) -> Vec<usize> {
    (0..n).map(|_| rng.gen_range(0..len)).collect()
}

/// Picks `idx` from `xs`.
pub fn pick(xs: &[f64], idx: &[usize]) -> Vec<f64> {
    idx.iter().map(|&i| xs[i]).collect()
}

/// Percentile (linear interpolation between order statistics, "type 7") of sorted values.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The central `level` percentile interval of replicate values (NaNs ignored).
pub fn percentile_interval(values: &[f64], level: f64) -> Interval {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let a = (1.0 - level) / 2.0;
    Interval {
        lo: quantile_sorted(&v, a),
        hi: quantile_sorted(&v, 1.0 - a),
    }
}

/// Intervals from replicate triples.
pub fn intervals(point: Triple, reps: &[Triple], level: f64) -> MetricIntervals {
    let col = |k: usize| -> Vec<f64> { reps.iter().map(|t| t[k]).collect() };
    MetricIntervals {
        point,
        fpr: percentile_interval(&col(0), level),
        auroc: percentile_interval(&col(1), level),
        aupr_out: percentile_interval(&col(2), level),
    }
}

fn check(cfg: &BootstrapConfig) -> Result<()> {
    if cfg.resamples == 0 {
        return Err(OeError::Config(
            "bootstrap needs at least one resample".into(),
        ));
    }
    if !(cfg.level > 0.0 && cfg.level < 1.0) {
        return Err(OeError::Config(format!(
            "confidence level must be in (0, 1), got {}",
            cfg.level
        )));
    }
    Ok(())
}

/// Replicate metrics of one (in, OOD) sample: ID and OOD resampled at their own sizes.
pub fn replicates(
    in_scores: &[f64],
    ood_scores: &[f64],
    cfg: &BootstrapConfig,
) -> Result<Vec<Triple>> {
    check(cfg)?;
    (0..cfg.resamples)
        .into_par_iter()
        .map(|r| {
            let mut rng = replicate_rng(cfg.seed, r);
            let ii = resample_indices(&mut rng, in_scores.len(), in_scores.len());
            let oi = resample_indices(&mut rng, ood_scores.len(), ood_scores.len());
            metrics_of(&pick(in_scores, &ii), &pick(ood_scores, &oi), cfg)
        })
        .collect()
}

/// Point estimates and percentile intervals for one (in, OOD) sample.
pub fn bootstrap_intervals(
    in_scores: &[f64],
    ood_scores: &[f64],
    cfg: &BootstrapConfig,
) -> Result<MetricIntervals> {
    let point = metrics_of(in_scores, ood_scores, cfg)?;
    let reps = replicates(in_scores, ood_scores, cfg)?;
    Ok(intervals(point, &reps, cfg.level))
}

/// The scores of one evaluation, as stored in `scores.parquet`.
#[derive(Clone, Debug)]
pub struct EvalScores {
    pub in_scores: Vec<f64>,
    /// Per OOD set (sorted by name): the distinct OOD examples scored over all draws (by index,
    /// ascending) and the number of OOD examples per draw.
    pub sets: Vec<OodPool>,
}

#[derive(Clone, Debug)]
pub struct OodPool {
    pub name: String,
    pub scores: Vec<f64>,
    pub per_draw: usize,
    /// Draw 0's scores in stored order (for curves at the evaluated ratio).
    pub first_draw: Vec<f64>,
}

/// Replicates of one evaluation: per replicate, one ID resample shared by all OOD sets, and per set
/// `per_draw` OOD scores resampled from the distinct OOD examples the evaluation scored (so the
/// interval is that of one evaluation at the stored OOD:ID ratio). Returns, per replicate, one triple
/// per set in `scores.sets` order.
pub fn eval_replicates(scores: &EvalScores, cfg: &BootstrapConfig) -> Result<Vec<Vec<Triple>>> {
    check(cfg)?;
    let n_in = scores.in_scores.len();
    (0..cfg.resamples)
        .into_par_iter()
        .map(|r| {
            let mut rng = replicate_rng(cfg.seed, r);
            let ii = resample_indices(&mut rng, n_in, n_in);
            let ins = pick(&scores.in_scores, &ii);
            scores
                .sets
                .iter()
                .map(|s| {
                    let oi = resample_indices(&mut rng, s.scores.len(), s.per_draw);
                    metrics_of(&ins, &pick(&s.scores, &oi), cfg)
                })
                .collect()
        })
        .collect()
}
