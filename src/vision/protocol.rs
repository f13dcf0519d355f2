//! Vision evaluation (README, "The paper's protocol: vision"): MSP (or another score) of the in-distribution test set
//! against each OOD set at 1:5 OOD:ID, each OOD set re-drawn 10 times; FPR at 95% TPR (closest
//! rule), AUROC, AUPR-Out; mean over sets. Calibration (RMS / MAD error, soft F1) with the
//! temperature tuned on a held-out split, each OOD draw concatenated with the full test set and
//! counted as wrong.
//!
//! The model runs in eval mode, so each image's logits do not depend on its batch: the paper and
//! clean protocols differ only in how many OOD images a draw holds (paper: whole test batches of
//! 200, `200·⌊(n_in/5)/200⌋`, e.g. 5,200 for SVHN; clean: exactly `n_in/5`).

use super::augment::{make_batch, Augment, Normalize};
use super::data::{ImageSet, ImageSource};
use super::models::WideResNet;
use crate::error::{OeError, Result};
use crate::eval::{
    draw_rng, uniform_draws, CalibrationSet, CalibrationSummary, EvalConfig, EvalReport, MeanStd,
    Protocol, SetResult,
};
use crate::metrics::{
    calibration_error, soft_f1, tune_temperature, CalibrationConfig, DetectionMetrics,
};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The vision defaults: paper protocol, MSP, 10 draws, 1:5, FPR at 95% TPR, test batches of 200.
pub fn default_eval_config() -> EvalConfig {
    EvalConfig {
        tpr: 0.95,
        batch_size: 200,
        ..EvalConfig::default()
    }
}

/// What an OOD set holds.
pub enum OodData {
    /// u8 images, normalised with the in-distribution statistics.
    Images(Box<dyn ImageSource>),
    /// Network inputs `[n, 3, h, w]` used as they are (synthetic sets).
    Inputs(Tensor),
}

pub struct OodSet {
    pub name: String,
    pub data: OodData,
}

impl OodSet {
    pub fn len(&self) -> usize {
        match &self.data {
            OodData::Images(s) => s.len(),
            OodData::Inputs(t) => t.size()[0] as usize,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs the model in eval mode over batches.
pub struct VisionScorer<'a> {
    pub model: &'a WideResNet,
    pub device: Device,
    pub norm: Normalize,
    pub batch_size: usize,
}

impl VisionScorer<'_> {
    /// Logits `[idx.len(), k]` (CPU) of images `idx` of `src`.
    pub fn logits_images(&self, src: &dyn ImageSource, idx: &[usize]) -> Result<Tensor> {
        let aug = Augment::test(self.norm);
        let mut parts = Vec::new();
        for c in idx.chunks(self.batch_size.max(1)) {
            let x = make_batch(src, c, &aug, 0)?.to_device(self.device);
            parts.push(tch::no_grad(|| self.model.logits(&x, false)).to_device(Device::Cpu));
        }
        cat(parts, self.model.config.num_classes)
    }

    /// Logits of rows `idx` of a network-input tensor.
    pub fn logits_inputs(&self, x: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let mut parts = Vec::new();
        for c in idx.chunks(self.batch_size.max(1)) {
            let sel = Tensor::from_slice(&c.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let xb = x.index_select(0, &sel).to_device(self.device);
            parts.push(tch::no_grad(|| self.model.logits(&xb, false)).to_device(Device::Cpu));
        }
        cat(parts, self.model.config.num_classes)
    }

    pub fn logits_set(&self, set: &ImageSet) -> Result<Tensor> {
        let idx: Vec<usize> = (0..set.len()).collect();
        self.logits_images(set, &idx)
    }
}

fn cat(parts: Vec<Tensor>, k: i64) -> Result<Tensor> {
    if parts.is_empty() {
        return Ok(Tensor::zeros([0, k], (Kind::Float, Device::Cpu)));
    }
    Ok(Tensor::cat(&parts, 0))
}

fn to_rows(logits: &Tensor) -> Result<(Vec<f64>, usize)> {
    let k = logits.size()[1] as usize;
    let v = Vec::<f64>::try_from(&logits.to_kind(Kind::Double).contiguous().view([-1]))
        .map_err(OeError::Torch)?;
    Ok((v, k))
}

/// Max softmax probability of `z / t` per row.
pub fn confidence(logits: &Tensor, t: f64) -> Result<Vec<f64>> {
    let c = (logits / t)
        .softmax(-1, Kind::Double)
        .amax([-1i64].as_slice(), false);
    Vec::<f64>::try_from(&c).map_err(OeError::Torch)
}

/// Calibration of one OOD set (means and stds over draws; fractions).
/// Detection report plus calibration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionReport {
    pub detection: EvalReport,
    pub calibration: Option<CalibrationSummary>,
    /// Why calibration was asked for and not computed (too few images for one bin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_skipped: Option<String>,
}

/// OOD images per draw for `n_in` test images and `avail` OOD images.
pub fn ood_count(cfg: &EvalConfig, n_in: usize, avail: usize) -> usize {
    let per = n_in / cfg.id_per_ood.max(1);
    let n = match cfg.protocol {
        // `for batch_idx ...: if batch_idx >= per // bs: break`: whole batches only.
        Protocol::Paper if per >= cfg.batch_size => cfg.batch_size * (per / cfg.batch_size),
        Protocol::Full => avail,
        _ => per.max(1),
    };
    n.min(avail)
}

/// Evaluates detection (and calibration when `calibrate`) on the test set and OOD sets.
/// `validation`: the held-out split used to tune the temperature.
pub fn evaluate(
    scorer: &VisionScorer,
    test: &ImageSet,
    ood: &[OodSet],
    cfg: &EvalConfig,
    validation: Option<&ImageSet>,
    calibrate: bool,
) -> Result<VisionReport> {
    if test.is_empty() || test.labels.len() != test.len() {
        return Err(OeError::Data(format!(
            "{}: the test set needs labelled images",
            test.name
        )));
    }
    let mcfg = cfg.metrics_config()?;
    let score = cfg.detector.logit().ok_or_else(|| {
        OeError::Config(format!(
            "vision evaluates logit scores only; `{}` is a feature-space detector (text only)",
            cfg.detector
        ))
    })?;
    let n_in = test.len();
    let in_logits = scorer.logits_set(test)?;
    let in_scores = score.compute_vec(&in_logits)?;
    let pred = Vec::<i64>::try_from(&in_logits.argmax(-1, false)).map_err(OeError::Torch)?;
    let in_correct: Vec<bool> = pred.iter().zip(&test.labels).map(|(p, y)| p == y).collect();
    let accuracy = in_correct.iter().filter(|&&c| c).count() as f64 / n_in as f64;

    // Calibration bins of 100: every draw (test images + OOD images) needs at least one full bin,
    // or calibration is skipped (and said so) rather than failing after the work is done.
    let bin = CalibrationConfig::default().bin_size;
    let smallest = ood
        .iter()
        .map(|s| n_in + ood_count(cfg, n_in, s.len()))
        .min()
        .unwrap_or(n_in);
    let calibration_skipped = (calibrate && smallest < bin).then(|| {
        format!(
            "calibration skipped: a draw has {smallest} images (test + OOD), fewer than one bin of {bin}"
        )
    });
    let calibrate = calibrate && calibration_skipped.is_none();
    let (temperature, tuned, n_val) = match (calibrate, validation) {
        (true, Some(v)) if !v.is_empty() => {
            let vl = scorer.logits_set(v)?;
            let (rows, k) = to_rows(&vl)?;
            let labels: Vec<usize> = v.labels.iter().map(|&y| y as usize).collect();
            (
                tune_temperature(&rows, k, &labels, 0.2, 5.0, 1e-4)?,
                true,
                v.len(),
            )
        }
        _ => (1.0, false, 0),
    };
    let in_conf = if calibrate {
        confidence(&in_logits, temperature)?
    } else {
        vec![]
    };

    let mut sets = Vec::new();
    let mut calib = Vec::new();
    for set in ood {
        let avail = set.len();
        if avail == 0 {
            return Err(OeError::Data(format!("OOD set `{}` is empty", set.name)));
        }
        let n_ood = ood_count(cfg, n_in, avail);
        let (picks, needed) = uniform_draws(cfg.repeats, avail, n_ood, |r| {
            draw_rng(cfg.seed, &set.name, r)
        });
        let logits = match &set.data {
            OodData::Images(s) => scorer.logits_images(s.as_ref(), &needed)?,
            OodData::Inputs(x) => scorer.logits_inputs(x, &needed)?,
        };
        let scores = score.compute_vec(&logits)?;
        let conf = if calibrate {
            confidence(&logits, temperature)?
        } else {
            vec![]
        };
        let pos: std::collections::HashMap<usize, usize> =
            needed.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        let mut draws = Vec::new();
        let mut drawn_scores = Vec::new();
        let mut aupr_in = Vec::new();
        let (mut rms, mut mad, mut f1) = (vec![], vec![], vec![]);
        for p in &picks {
            let s: Vec<f64> = p.iter().map(|i| scores[pos[i]]).collect();
            draws.push(DetectionMetrics::compute(&in_scores, &s, &mcfg)?);
            aupr_in.push(
                crate::metrics::ranking::Ranking::new(
                    &in_scores,
                    &s,
                    crate::metrics::Positive::Id,
                )?
                .average_precision(),
            );
            if calibrate {
                let mut c = in_conf.clone();
                let mut ok = in_correct.clone();
                c.extend(p.iter().map(|i| conf[pos[i]]));
                ok.extend(std::iter::repeat_n(false, p.len()));
                let e = calibration_error(&c, &ok, &CalibrationConfig::default())?;
                rms.push(e.rms);
                mad.push(e.mad);
                f1.push(soft_f1(&c, &ok)?);
            }
            drawn_scores.push(p.iter().copied().zip(s).collect::<Vec<_>>());
        }
        if calibrate {
            calib.push(CalibrationSet {
                ood_set: set.name.clone(),
                rms: MeanStd::of(&rms),
                mad: MeanStd::of(&mad),
                soft_f1: MeanStd::of(&f1),
            });
        }
        let col =
            |f: fn(&DetectionMetrics) -> f64| MeanStd::of(&draws.iter().map(f).collect::<Vec<_>>());
        sets.push(SetResult {
            ood_set: set.name.clone(),
            n_ood,
            n_available: avail,
            fpr: col(|m| m.fpr),
            auroc: col(|m| m.auroc),
            aupr_out: col(|m| m.aupr),
            aupr_in: MeanStd::of(&aupr_in),
            draws,
            scores: drawn_scores,
        });
    }
    let calibration = calibrate.then(|| {
        let n = calib.len().max(1) as f64;
        CalibrationSummary {
            temperature,
            tuned,
            n_validation: n_val,
            rms: calib.iter().map(|c| c.rms.mean).sum::<f64>() / n,
            mad: calib.iter().map(|c| c.mad.mean).sum::<f64>() / n,
            soft_f1: calib.iter().map(|c| c.soft_f1.mean).sum::<f64>() / n,
            sets: calib,
        }
    });
    Ok(VisionReport {
        detection: EvalReport {
            config: cfg.clone(),
            n_in,
            in_accuracy: accuracy,
            sets,
            in_scores,
            in_correct,
            operating_point: None,
            precision: Default::default(),
        },
        calibration,
        calibration_skipped,
    })
}
