//! `oe-text compare`: detectors × training × model on one in-distribution dataset.
//!
//! For each model it trains (or keeps, when already trained in the output directory) a baseline, an
//! OE fine-tune with the paper's uniform loss and one with the energy-bounded loss, all from the same
//! baseline; then it evaluates every model directory with every detector on every OOD set. Each
//! evaluation is written into its model directory (`eval-<score>-<protocol>/`, which
//! `oe-text report` reads); the whole grid is written as `compare.csv` (one row per model, training,
//! detector and OOD set, plus a `mean` row per group) and `compare.md` (the means) in the output
//! directory. The network runs once per model directory: all detectors share its outputs.

use crate::detect::Detector;
use crate::error::{OeError, Result};
use crate::eval::{EvalConfig, EvalReport};
use crate::text::data;
use crate::text::model_dir::LoadedModel;
use crate::text::pipeline::{self, TrainRequest};
use crate::train::Observer;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One model of the grid: its trainings share a baseline.
#[derive(Clone, Debug)]
pub struct ModelRuns {
    /// `gru`, `transformer`, `minilm`.
    pub name: String,
    /// Baseline + OE with the uniform loss (its `out_dir` is the model's directory).
    pub oe: TrainRequest,
    /// Baseline + OE with the energy-bounded loss, in the same directory (`None`: not in the grid).
    pub energy_oe: Option<TrainRequest>,
}

/// One cell of the grid.
#[derive(Clone, Debug)]
pub struct CompareRow {
    pub model: String,
    /// `baseline`, `oe`, `energy-oe`.
    pub training: String,
    pub detector: String,
    /// An OOD set, or `mean` (the mean over the sets).
    pub ood_set: String,
    pub in_accuracy: f64,
    /// FPR at the evaluation's recall level of OOD (positive class: OOD; see `fpr_level`), mean
    /// over draws.
    pub fpr: f64,
    /// That recall level in percent (`90`, `95`).
    pub fpr_level: String,
    /// AUROC with OOD as the positive class.
    pub auroc: f64,
    /// AUPR with OOD as the positive class.
    pub aupr_out: f64,
}

/// The finished grid.
pub struct CompareOutcome {
    pub rows: Vec<CompareRow>,
    /// `compare.md`'s table.
    pub table: String,
    pub csv: PathBuf,
    pub markdown: PathBuf,
}

/// The validation OOD set of a grid: the evaluation's, else (when tuning) the dataset's own.
fn val_name_of(req: &TrainRequest, tune: bool) -> Option<String> {
    if tune {
        data::validation_ood_or_own(req.eval.val_ood.as_deref(), &req.in_dataset)
    } else {
        req.eval.val_ood.clone()
    }
}

/// The directory name of a training under a model's directory.
const ENERGY_DIR: &str = "energy-oe";

/// Trains what is missing and evaluates the whole grid; results go under `out_dir`.
///
/// With `tune`, every model directory's stored detectors are first tuned on validation data
/// ([`crate::text::tune`]; the evaluation's `val_ood`, or the dataset's own validation OOD set).
pub fn run_compare(
    runs: &[ModelRuns],
    detectors: &[Detector],
    out_dir: &Path,
    tune: bool,
    obs: &mut dyn Observer,
) -> Result<CompareOutcome> {
    if runs.is_empty() || detectors.is_empty() {
        return Err(OeError::Config(
            "compare needs at least one model and one detector".into(),
        ));
    }
    let mut rows = Vec::new();
    // The evaluation data, loaded once for all models that share it (normally all of them).
    let mut data: Option<(
        DataKey,
        data::InDistribution,
        Vec<crate::text::protocol::OodInput>,
        Option<pipeline::ValidationData>,
    )> = None;
    for r in runs {
        obs.status(&format!("{}: baseline and OE", r.name));
        let oe_req = TrainRequest {
            resume: true,
            evaluate: false,
            ..r.oe.clone()
        };
        // The baseline (when the OE method fine-tunes one) and the OE model.
        let mut trained = pipeline::run_train(&oe_req, obs)?.dirs;
        if let Some(e) = &r.energy_oe {
            obs.status(&format!("{}: energy-bounded OE", r.name));
            let e_req = TrainRequest {
                resume: true,
                evaluate: false,
                oe_dir: Some(ENERGY_DIR.to_string()),
                out_dir: r.oe.out_dir.clone(),
                ..e.clone()
            };
            let out = pipeline::run_train(&e_req, obs)?;
            trained.extend(out.dirs.into_iter().filter(|(n, _)| n != "baseline"));
        }
        let req = &r.oe;
        let key = DataKey::of(req);
        if data.as_ref().is_none_or(|d| d.0 != key) {
            let ind = data::load_in_distribution(&req.in_dataset, &req.data_root, &req.text)?;
            let ood = pipeline::load_ood_inputs(
                req.ood_sets.as_deref(),
                &req.in_dataset,
                &req.data_root,
                &req.text,
            )?;
            let val_name = val_name_of(req, tune);
            if tune && val_name.is_none() {
                return Err(OeError::Config(format!(
                    "--tune needs a validation OOD set: {} has none of its own; pass --val-ood NAME or FILE",
                    req.in_dataset
                )));
            }
            let val =
                pipeline::load_validation(val_name.as_deref(), &ind, &req.data_root, &req.text)?;
            data = Some((key, ind, ood, val));
        }
        let (_, ind, ood, val) = data.as_ref().expect("loaded above");
        for (training, dir) in &trained {
            let mut m = LoadedModel::load(dir, req.device)?;
            if let (true, Some(v)) = (tune, val) {
                obs.status(&format!(
                    "{}/{training}: tuning detectors on {}",
                    r.name, v.ood.name
                ));
                let all = crate::detect::FeatureDetector::all();
                let files = crate::text::tune::tuning_files(
                    &req.in_dataset,
                    &req.data_root,
                    val_name_of(req, tune).as_deref().unwrap_or(""),
                )?;
                crate::text::tune::tune_loaded(&mut m, &ind.train, v, &all, files)?;
            } else if detectors.iter().any(|d| m.needs_fit(*d)) {
                obs.status(&format!("{}/{training}: fitting feature detectors", r.name));
                m.fit_detectors(&ind.train, None)?;
            }
            for d in detectors {
                obs.status(&format!("{}/{training}: evaluating {}", r.name, d.name()));
                let cfg = EvalConfig {
                    detector: *d,
                    ..req.eval.clone()
                };
                let method = m.config.method_label();
                let op_val = req.eval.val_ood.as_ref().and(val.as_ref());
                let (report, _) =
                    pipeline::evaluate_model_with(&m, &ind.test, ood, &cfg, method, op_val)?;
                rows.extend(rows_of(&r.name, training, &d.name(), &report));
            }
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| OeError::io(out_dir, e))?;
    let csv = out_dir.join("compare.csv");
    crate::io::write_atomic(&csv, to_csv(&rows).as_bytes())?;
    let table = to_markdown(&rows);
    let markdown = out_dir.join("compare.md");
    crate::io::write_atomic(&markdown, table.as_bytes())?;
    Ok(CompareOutcome {
        rows,
        table,
        csv,
        markdown,
    })
}

/// What determines a run's evaluation data.
#[derive(PartialEq)]
struct DataKey {
    in_dataset: String,
    data_root: PathBuf,
    text: data::TextOptions,
    ood_sets: Option<Vec<String>>,
}

impl DataKey {
    fn of(r: &TrainRequest) -> Self {
        Self {
            in_dataset: r.in_dataset.clone(),
            data_root: r.data_root.clone(),
            text: r.text.clone(),
            ood_sets: r.ood_sets.clone(),
        }
    }
}

/// Per-set rows and the mean row of one evaluation.
pub fn rows_of(model: &str, training: &str, detector: &str, r: &EvalReport) -> Vec<CompareRow> {
    let row = |set: &str, fpr: f64, auroc: f64, aupr: f64| CompareRow {
        model: model.to_string(),
        training: training.to_string(),
        detector: detector.to_string(),
        ood_set: set.to_string(),
        in_accuracy: r.in_accuracy,
        fpr,
        fpr_level: crate::metrics::level_name(r.config.tpr),
        auroc,
        aupr_out: aupr,
    };
    let mut out: Vec<CompareRow> = r
        .sets
        .iter()
        .map(|s| row(&s.ood_set, s.fpr.mean, s.auroc.mean, s.aupr_out.mean))
        .collect();
    if !r.sets.is_empty() {
        let n = r.sets.len() as f64;
        let mean = |f: fn(&crate::eval::SetResult) -> f64| r.sets.iter().map(f).sum::<f64>() / n;
        out.push(row(
            "mean",
            mean(|s| s.fpr.mean),
            mean(|s| s.auroc.mean),
            mean(|s| s.aupr_out.mean),
        ));
    }
    out
}

/// Long-form CSV, metrics as fractions.
pub fn to_csv(rows: &[CompareRow]) -> String {
    let level = rows
        .first()
        .map_or("90".to_string(), |r| r.fpr_level.clone());
    let mut s = format!("model,training,detector,ood_set,in_accuracy,fpr{level},auroc,aupr_out\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.6},{:.6},{:.6},{:.6}",
            r.model, r.training, r.detector, r.ood_set, r.in_accuracy, r.fpr, r.auroc, r.aupr_out
        );
    }
    s
}

/// The means as a Markdown table (percent), one line per model × training × detector.
pub fn to_markdown(rows: &[CompareRow]) -> String {
    let level = rows
        .first()
        .map_or("90".to_string(), |r| r.fpr_level.clone());
    let mut s = format!(
        "Mean over OOD sets (OOD = positive class; FPR{level}: false-positive rate on in-distribution \
         texts at {level}% OOD recall; lower is better; AUROC, AUPR: higher is better).\n\n\
         | model | training | detector | ID acc. | FPR{level} | AUROC | AUPR |\n\
         |---|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows.iter().filter(|r| r.ood_set == "mean") {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.model,
            r.training,
            r.detector,
            100.0 * r.in_accuracy,
            100.0 * r.fpr,
            100.0 * r.auroc,
            100.0 * r.aupr_out
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{MeanStd, SetResult};

    fn set(name: &str, fpr: f64, auroc: f64, aupr: f64) -> SetResult {
        let ms = |m| MeanStd { mean: m, std: 0.0 };
        SetResult {
            ood_set: name.into(),
            n_ood: 10,
            n_available: 10,
            draws: vec![],
            fpr: ms(fpr),
            auroc: ms(auroc),
            aupr_out: ms(aupr),
            aupr_in: ms(0.0),
            scores: vec![],
        }
    }

    #[test]
    fn rows_have_a_mean_over_sets_and_render() {
        let r = EvalReport {
            config: EvalConfig::default(),
            n_in: 100,
            in_accuracy: 0.8,
            sets: vec![set("snli", 0.2, 0.9, 0.6), set("imdb", 0.4, 0.7, 0.2)],
            in_scores: vec![],
            in_correct: vec![],
            operating_point: None,
            precision: Default::default(),
        };
        let rows = rows_of("gru", "oe", "msp", &r);
        assert_eq!(rows.len(), 3);
        let m = &rows[2];
        assert_eq!(m.ood_set, "mean");
        assert!((m.fpr - 0.3).abs() < 1e-12);
        assert!((m.auroc - 0.8).abs() < 1e-12);
        assert!((m.aupr_out - 0.4).abs() < 1e-12);
        let md = to_markdown(&rows);
        assert!(
            md.contains("| gru | oe | msp | 80.0 | 30.0 | 80.0 | 40.0 |"),
            "{md}"
        );
        let csv = to_csv(&rows);
        assert_eq!(csv.lines().count(), 4);
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("gru,oe,msp,snli,0.800000,0.200000"));
    }
}
