//! Deployment thresholds: the anomaly-score threshold that keeps a given fraction (the TPR of the
//! in-distribution class) of held-out in-distribution validation texts.
//!
//! A text is flagged OOD when `score > threshold`. The threshold is the smallest validation score
//! `t` with `#{validation scores <= t} / n >= tpr`, so at least `tpr` of the validation texts are
//! kept. Validation texts are scored exactly as `oe-text score` scores a file (same preprocessing and
//! batch shapes), so a validation text scored later is kept or flagged as it was here.
//!
//! The validation split is, in order of preference ([`SplitChoice::Auto`]): the held-out fraction of
//! the training data recorded in `run.json` (`oe-text train --holdout F`), the dataset's dev split
//! (SST), or nothing (an error that says what to do; `--split test` uses the test split, which is
//! then no longer independent of the evaluation). Files written into the model directory:
//! `calibration-<score>.json` (the threshold, the target and reached TPR, the split) and
//! `calibration-<score>.csv` (one row per distinct validation score: threshold, kept, flagged).

use crate::detect::score::Score;
use crate::error::{OeError, Result};
use crate::text::data::{InDistribution, Labelled};
use crate::text::model_dir::{Holdout, LoadedModel};
use crate::text::score::{score_texts, ScoreOptions};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Splits `ind.train` into training and a seeded held-out validation part (file order kept in both).
/// The vocabulary built from the result sees only the remaining training texts.
pub fn hold_out(
    mut ind: InDistribution,
    fraction: f64,
    seed: u64,
) -> Result<(InDistribution, Labelled, Holdout)> {
    let n = ind.train.len();
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(OeError::Config(format!(
            "--holdout must be in (0, 1), got {fraction}"
        )));
    }
    let k = ((fraction * n as f64).round() as usize).max(1);
    if k >= n {
        return Err(OeError::Config(format!(
            "--holdout {fraction} of {n} training examples leaves none to train on"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ 0x0068_6f6c_646f_7574,
    ));
    let mut held = vec![false; n];
    for &i in &idx[..k] {
        held[i] = true;
    }
    let split = |v: Vec<String>| -> (Vec<String>, Vec<String>) {
        let (mut keep, mut out) = (Vec::new(), Vec::new());
        for (i, x) in v.into_iter().enumerate() {
            if held[i] {
                out.push(x)
            } else {
                keep.push(x)
            }
        }
        (keep, out)
    };
    let (tt, vt) = split(std::mem::take(&mut ind.train.texts));
    let (tl, vl) = split(std::mem::take(&mut ind.train.labels));
    ind.train = Labelled {
        texts: tt,
        labels: tl,
    };
    if let Some(u) = ind.train_untruncated.take() {
        ind.train_untruncated = Some(split(u).0);
    }
    let val = Labelled {
        texts: vt,
        labels: vl,
    };
    Ok((
        ind,
        val,
        Holdout {
            fraction,
            seed,
            n_heldout: k,
            n_train_total: n,
        },
    ))
}

/// Which validation split `calibrate` uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitChoice {
    /// The recorded hold-out, else the dev split, else an error.
    #[default]
    Auto,
    Holdout,
    Dev,
    /// The test split (not independent of the evaluation; recorded as such).
    Test,
}

/// The validation texts of a model, and how they were chosen.
pub struct Validation {
    pub texts: Vec<String>,
    pub split: String,
    pub note: String,
}

/// Loads the validation split of a model directory's dataset.
pub fn validation_texts(
    m: &LoadedModel,
    data_root: Option<&Path>,
    choice: SplitChoice,
) -> Result<Validation> {
    let root = data_root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::rundir::resolve_recorded(&m.config.header.data_root, &m.dir));
    let ind = crate::text::data::load_in_distribution(
        &crate::rundir::resolve_recorded_dataset(&m.config.header.in_dataset, &m.dir),
        &root,
        &m.config.text,
    )?;
    let ds = &m.config.header.in_dataset;
    let holdout = |h: &Holdout| -> Result<Validation> {
        let (_, val, again) = hold_out(ind.clone(), h.fraction, h.seed)?;
        if again != *h {
            return Err(OeError::Data(format!(
                "{ds}: the training split changed since the model was trained (hold-out {again:?}, run.json {h:?})"
            )));
        }
        Ok(Validation {
            texts: val.texts,
            split: "holdout".into(),
            note: format!(
                "{} of {} training examples held out from training (fraction {}, seed {})",
                h.n_heldout, h.n_train_total, h.fraction, h.seed
            ),
        })
    };
    let dev = |d: Labelled| Validation {
        texts: d.texts,
        split: "dev".into(),
        note: format!("{ds} dev split, not used in training"),
    };
    match (choice, &m.config.holdout, ind.dev.clone()) {
        (SplitChoice::Auto | SplitChoice::Holdout, Some(h), _) => holdout(h),
        (SplitChoice::Auto | SplitChoice::Dev, _, Some(d)) => Ok(dev(d)),
        (SplitChoice::Test, _, _) => Ok(Validation {
            texts: ind.test.texts.clone(),
            split: "test".into(),
            note: format!("{ds} test split: also used for evaluation, so OOD metrics on it are no longer independent"),
        }),
        (SplitChoice::Holdout, None, _) => Err(OeError::Config(format!(
            "{}: no hold-out recorded in run.json; train with `oe-text train --holdout 0.1`",
            m.dir.display()
        ))),
        (_, _, None) => Err(OeError::Config(format!(
            "{ds} has no dev split and {} records no hold-out: train with `oe-text train --holdout 0.1` \
(a seeded fraction of train held out and recorded), or pass --split test",
            m.dir.display()
        ))),
    }
}

/// One row of the per-threshold table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRow {
    pub threshold: f64,
    /// Validation texts with `score <= threshold` (kept as in-distribution).
    pub n_kept: usize,
    /// `n_kept / n`: the in-distribution TPR at this threshold.
    pub kept_fraction: f64,
    pub n_flagged: usize,
}

/// A stored calibration (`calibration-<score>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub score: Score,
    /// Target fraction of validation texts kept.
    pub tpr: f64,
    /// Flag as OOD when `score > threshold`.
    pub threshold: f64,
    /// Fraction of validation texts kept at the threshold (>= tpr).
    pub kept_fraction: f64,
    pub n_validation: usize,
    pub split: String,
    pub note: String,
    pub rule: String,
    pub tool: String,
    /// The validation scores themselves, ascending, for conformal p-values (empty in
    /// calibrations written before they were stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_scores: Vec<f64>,
}

impl Calibration {
    /// Conformal p-values against the stored validation scores; an error saying to recalibrate
    /// when the calibration predates them.
    pub fn conformal(&self, dir: &Path) -> Result<crate::detect::conformal::Conformal> {
        if self.validation_scores.is_empty() {
            return Err(OeError::Config(format!(
                "{}: this calibration stores no validation scores (written by an older version); \
                 run `oe-text calibrate --model {} --score {}` again",
                paths(dir, &self.score).0.display(),
                dir.display(),
                self.score
            )));
        }
        crate::detect::conformal::Conformal::new(self.validation_scores.clone())
    }
}

/// The per-threshold table (ascending thresholds, one per distinct score) of `scores`.
pub fn threshold_table(scores: &[f64]) -> Vec<ThresholdRow> {
    let mut s: Vec<f64> = scores.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let mut rows = Vec::new();
    for (i, &v) in s.iter().enumerate() {
        if i + 1 < n && s[i + 1] == v {
            continue;
        }
        rows.push(ThresholdRow {
            threshold: v,
            n_kept: i + 1,
            kept_fraction: (i + 1) as f64 / n as f64,
            n_flagged: n - i - 1,
        });
    }
    rows
}

/// The smallest threshold of `table` keeping at least `tpr` of the texts.
pub fn pick(table: &[ThresholdRow], tpr: f64) -> Option<&ThresholdRow> {
    let n = table.last()?.n_kept;
    let need = ((tpr * n as f64) - 1e-9).ceil().max(1.0) as usize;
    table.iter().find(|r| r.n_kept >= need)
}

/// File stem for a score (`energy:0.5` → `energy-T0.5`).
pub fn file_stem(score: &Score) -> String {
    format!("calibration-{}", score.to_string().replace(':', "-T"))
}

/// Paths of the calibration files of `score` in `dir`: (json, csv).
pub fn paths(dir: &Path, score: &Score) -> (PathBuf, PathBuf) {
    let stem = file_stem(score);
    (
        dir.join(format!("{stem}.json")),
        dir.join(format!("{stem}.csv")),
    )
}

/// Scores the validation texts, picks the threshold and writes both files into the model directory.
pub fn calibrate(m: &LoadedModel, val: &Validation, score: Score, tpr: f64) -> Result<Calibration> {
    if !(tpr > 0.0 && tpr <= 1.0) {
        return Err(OeError::Config(format!(
            "--tpr must be in (0, 1], got {tpr}"
        )));
    }
    if val.texts.is_empty() {
        return Err(OeError::Data(format!("the {} split is empty", val.split)));
    }
    let opts = ScoreOptions {
        score,
        ..Default::default()
    };
    let scores: Vec<f64> = score_texts(m, &val.texts, &opts)?
        .iter()
        .map(|s| f64::from(s.score))
        .collect();
    let table = threshold_table(&scores);
    let row = pick(&table, tpr).expect("non-empty table");
    let cal = Calibration {
        score,
        tpr,
        threshold: row.threshold,
        kept_fraction: row.kept_fraction,
        n_validation: scores.len(),
        split: val.split.clone(),
        note: val.note.clone(),
        rule: "smallest validation score t with #{score <= t}/n >= tpr; flag score > t".into(),
        tool: format!("oe {}", env!("CARGO_PKG_VERSION")),
        validation_scores: {
            let mut v = scores.clone();
            v.sort_by(f64::total_cmp);
            v
        },
    };
    let (jp, cp) = paths(&m.dir, &score);
    let mut csv = String::from("threshold,n_kept,kept_fraction,n_flagged\n");
    for r in &table {
        csv += &format!(
            "{},{},{},{}\n",
            r.threshold, r.n_kept, r.kept_fraction, r.n_flagged
        );
    }
    crate::io::write_atomic(&cp, csv.as_bytes())?;
    let json = serde_json::to_vec_pretty(&cal).map_err(|e| OeError::Data(e.to_string()))?;
    crate::io::write_atomic(&jp, &json)?;
    crate::checksum::record(&jp)?;
    Ok(cal)
}

/// Reads the stored calibration of `score` (for `score --threshold auto`).
pub fn load(dir: &Path, score: &Score) -> Result<Calibration> {
    let (jp, _) = paths(dir, score);
    if jp.is_file() {
        crate::checksum::verify(&jp)?;
    }
    let bytes = std::fs::read(&jp).map_err(|e| {
        OeError::Config(format!(
            "{}: no stored threshold for score `{score}` ({e}); run `oe-text calibrate --model {} --score {score}`",
            jp.display(),
            dir.display()
        ))
    })?;
    let cal: Calibration =
        serde_json::from_slice(&bytes).map_err(|e| OeError::parse(&jp, e.line(), e.to_string()))?;
    if cal.score != *score {
        return Err(OeError::Data(format!(
            "{}: holds score {} not {score}",
            jp.display(),
            cal.score
        )));
    }
    Ok(cal)
}

/// A validated `oe-text calibrate` request.
#[derive(Clone, Debug)]
pub struct CalibrateRequest {
    pub model_dir: PathBuf,
    /// Fraction of validation texts to keep (not flag).
    pub tpr: f64,
    pub score: Score,
    pub split: SplitChoice,
    /// Data root (default: the one recorded in run.json).
    pub data_dir: Option<PathBuf>,
    pub device: tch::Device,
}

/// `oe-text calibrate`: stores the threshold in the model directory; returns the calibration and
/// a description of what was written.
pub fn run_calibrate(req: &CalibrateRequest) -> Result<(Calibration, String)> {
    let m = LoadedModel::load(&req.model_dir, req.device)?;
    let val = validation_texts(&m, req.data_dir.as_deref(), req.split)?;
    let c = calibrate(&m, &val, req.score, req.tpr)?;
    let (j, t) = paths(&m.dir, &req.score);
    let line = format!(
        "{}: threshold {} keeps {:.2}% of {} validation texts ({}; target {:.2}%); flag score > threshold\nwrote {} and {}",
        c.score,
        crate::io::compact_number(c.threshold),
        c.kept_fraction * 100.0,
        c.n_validation,
        c.note,
        c.tpr * 100.0,
        j.display(),
        t.display()
    );
    Ok((c, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_pick() {
        let t = threshold_table(&[0.3, 0.1, 0.2, 0.2, 0.9]);
        assert_eq!(
            t.iter().map(|r| r.threshold).collect::<Vec<_>>(),
            [0.1, 0.2, 0.3, 0.9]
        );
        assert_eq!(t.iter().map(|r| r.n_kept).collect::<Vec<_>>(), [1, 3, 4, 5]);
        assert_eq!(pick(&t, 0.6).unwrap().threshold, 0.2);
        assert_eq!(pick(&t, 0.61).unwrap().threshold, 0.3);
        assert_eq!(pick(&t, 0.8).unwrap().threshold, 0.3);
        assert_eq!(pick(&t, 1.0).unwrap().threshold, 0.9);
        assert_eq!(pick(&t, 0.01).unwrap().threshold, 0.1);
        // 95% of 20 is 19, whatever the rounding of 0.95 * 20 in floating point.
        let s: Vec<f64> = (0..20).map(f64::from).collect();
        assert_eq!(pick(&threshold_table(&s), 0.95).unwrap().n_kept, 19);
    }

    #[test]
    fn holdout_is_seeded_and_disjoint() {
        let ind = InDistribution {
            name: "x".into(),
            train: Labelled {
                texts: (0..100).map(|i| format!("t{i}")).collect(),
                labels: (0..100).map(|i| format!("{}", i % 2)).collect(),
            },
            dev: None,
            test: Labelled::default(),
            train_untruncated: None,
        };
        let (a, va, h) = hold_out(ind.clone(), 0.1, 7).unwrap();
        let (_, vb, _) = hold_out(ind.clone(), 0.1, 7).unwrap();
        let (_, vc, _) = hold_out(ind.clone(), 0.1, 8).unwrap();
        assert_eq!((a.train.len(), va.len(), h.n_heldout), (90, 10, 10));
        assert_eq!(va.texts, vb.texts);
        assert_ne!(va.texts, vc.texts);
        assert!(va.texts.iter().all(|t| !a.train.texts.contains(t)));
        // labels follow their texts
        for (t, l) in va.texts.iter().zip(&va.labels) {
            let i: usize = t[1..].parse().unwrap();
            assert_eq!(l, &format!("{}", i % 2));
        }
        assert!(hold_out(ind, 1.0, 1).is_err());
    }
}
