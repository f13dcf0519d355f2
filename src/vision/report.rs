//! Vision results: the paper's Table 7 (per OOD set and mean; Table 1 rounds the means) beside
//! ours, written with the shared polars writers ([`crate::report::write_frame`],
//! [`crate::report::scores_frame`]).

use super::eval::VisionReport;
use crate::error::{OeError, Result};
use crate::report::{fpr_column, scores_frame, write_frame, RunMeta};
use polars::prelude::*;
use std::path::{Path, PathBuf};

const TABLE7: &str = include_str!("../../experiments/paper/vision_table7.csv");

/// A Table 7 row (percent).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionPaperRow {
    pub in_dataset: String,
    pub ood_set: String,
    pub method: String,
    pub fpr95: f64,
    pub auroc: f64,
    pub aupr_out: f64,
}

pub fn table7() -> Vec<VisionPaperRow> {
    TABLE7
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("in_dataset") && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some(VisionPaperRow {
                in_dataset: f.first()?.to_string(),
                ood_set: f.get(1)?.to_string(),
                method: f.get(2)?.to_string(),
                fpr95: f.get(3)?.parse().ok()?,
                auroc: f.get(4)?.parse().ok()?,
                aupr_out: f.get(5)?.parse().ok()?,
            })
        })
        .collect()
}

/// Table 7's row for (dataset, OOD set or `mean`, `baseline`|`oe`).
pub fn paper_lookup(in_dataset: &str, ood_set: &str, method: &str) -> Option<VisionPaperRow> {
    let method = if method == "baseline" {
        "baseline"
    } else {
        "oe"
    };
    table7()
        .into_iter()
        .find(|r| r.in_dataset == in_dataset && r.ood_set == ood_set && r.method == method)
}

/// Table 7 averaged over `sets` (all must be in it); the full set list gives Table 7's own mean.
pub fn paper_mean_over(in_dataset: &str, method: &str, sets: &[String]) -> Option<VisionPaperRow> {
    let rows: Option<Vec<_>> = sets
        .iter()
        .map(|s| paper_lookup(in_dataset, s, method))
        .collect();
    let rows = rows?;
    if rows.is_empty() {
        return None;
    }
    let n = rows.len() as f64;
    Some(VisionPaperRow {
        in_dataset: in_dataset.into(),
        ood_set: "mean".into(),
        method: method.into(),
        fpr95: rows.iter().map(|r| r.fpr95).sum::<f64>() / n,
        auroc: rows.iter().map(|r| r.auroc).sum::<f64>() / n,
        aupr_out: rows.iter().map(|r| r.aupr_out).sum::<f64>() / n,
    })
}

fn pe<E: std::fmt::Display>(e: E) -> OeError {
    OeError::Data(format!("results table: {e}"))
}

/// One row per OOD set plus `mean`, with Table 7's numbers and calibration where computed.
pub fn summary_frame(r: &VisionReport, meta: &RunMeta) -> Result<DataFrame> {
    let rep = &r.detection;
    let mut rows: Vec<(String, u64, [f64; 6])> = rep
        .sets
        .iter()
        .map(|s| {
            (
                s.ood_set.clone(),
                s.n_ood as u64,
                [
                    s.fpr.mean,
                    s.fpr.std,
                    s.auroc.mean,
                    s.auroc.std,
                    s.aupr_out.mean,
                    s.aupr_out.std,
                ],
            )
        })
        .collect();
    let names: Vec<String> = rep.sets.iter().map(|s| s.ood_set.clone()).collect();
    if !rep.sets.is_empty() {
        let (f, a, p) = rep.mean_over_sets();
        rows.push(("mean".into(), 0, [f, f64::NAN, a, f64::NAN, p, f64::NAN]));
    }
    let paper: Vec<Option<VisionPaperRow>> = rows
        .iter()
        .map(|x| {
            if x.0 == "mean" {
                paper_mean_over(&meta.in_dataset, &meta.method, &names)
            } else {
                paper_lookup(&meta.in_dataset, &x.0, &meta.method)
            }
        })
        .collect();
    let cal = |name: &str, f: fn(&super::eval::CalibrationSet) -> f64, mean: f64| -> Option<f64> {
        let c = r.calibration.as_ref()?;
        if name == "mean" {
            Some(mean)
        } else {
            c.sets.iter().find(|s| s.ood_set == name).map(f)
        }
    };
    let n = rows.len();
    let fcol = fpr_column(rep);
    let col = |i: usize| -> Vec<f64> { rows.iter().map(|x| x.2[i]).collect() };
    let pcol = |f: fn(&VisionPaperRow) -> f64| -> Vec<Option<f64>> {
        paper.iter().map(|p| p.as_ref().map(f)).collect()
    };
    let (cr, cm, cf) = r
        .calibration
        .as_ref()
        .map_or((f64::NAN, f64::NAN, f64::NAN), |c| {
            (c.rms, c.mad, c.soft_f1)
        });
    let c = &rep.config;
    DataFrame::new_infer_height(vec![
        Column::new("in_dataset".into(), vec![meta.in_dataset.clone(); n]),
        Column::new("method".into(), vec![meta.method.clone(); n]),
        Column::new("model".into(), vec![meta.model.clone(); n]),
        Column::new("score".into(), vec![c.score.to_string(); n]),
        Column::new("ratio".into(), vec![format!("1:{}", c.id_per_ood); n]),
        Column::new("draws".into(), vec![c.repeats as u64; n]),
        Column::new("seed".into(), vec![meta.seed; n]),
        Column::new(
            "ood_set".into(),
            rows.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        ),
        Column::new("n_in".into(), vec![rep.n_in as u64; n]),
        Column::new("n_ood".into(), rows.iter().map(|x| x.1).collect::<Vec<_>>()),
        Column::new("in_accuracy".into(), vec![rep.in_accuracy; n]),
        Column::new(format!("{fcol}_mean").into(), col(0)),
        Column::new(format!("{fcol}_std").into(), col(1)),
        Column::new("auroc_mean".into(), col(2)),
        Column::new("auroc_std".into(), col(3)),
        Column::new("aupr_out_mean".into(), col(4)),
        Column::new("aupr_out_std".into(), col(5)),
        Column::new("paper_fpr95_pct".into(), pcol(|p| p.fpr95)),
        Column::new("paper_auroc_pct".into(), pcol(|p| p.auroc)),
        Column::new("paper_aupr_out_pct".into(), pcol(|p| p.aupr_out)),
        Column::new(
            "calib_rms".into(),
            rows.iter()
                .map(|x| cal(&x.0, |s| s.rms.mean, cr))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "calib_mad".into(),
            rows.iter()
                .map(|x| cal(&x.0, |s| s.mad.mean, cm))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "calib_soft_f1".into(),
            rows.iter()
                .map(|x| cal(&x.0, |s| s.soft_f1.mean, cf))
                .collect::<Vec<_>>(),
        ),
        Column::new("model_dir".into(), vec![meta.model_dir.clone(); n]),
    ])
    .map_err(pe)
}

/// Writes `eval-<score>-<protocol>/{results.csv, results.parquet, scores.parquet, report.json}`.
pub fn write_eval(dir: &Path, r: &VisionReport, meta: &RunMeta) -> Result<PathBuf> {
    let c = &r.detection.config;
    let proto = match c.protocol {
        crate::eval::Protocol::Paper => "paper",
        crate::eval::Protocol::Clean => "clean",
    };
    let sub = dir.join(format!(
        "eval-{}-{proto}",
        c.score.to_string().replace(':', "_")
    ));
    let mut summary = summary_frame(r, meta)?;
    write_frame(&mut summary, &sub.join("results.csv"))?;
    write_frame(&mut summary, &sub.join("results.parquet"))?;
    write_frame(
        &mut scores_frame(&r.detection)?,
        &sub.join("scores.parquet"),
    )?;
    let json = serde_json::to_vec_pretty(r).map_err(pe)?;
    crate::io::write_atomic(&sub.join("report.json"), &json)?;
    Ok(sub)
}

/// A terminal table: ours (paper Table 7) per set, FPR95 / AUROC / AUPR-Out in percent.
pub fn comparison_table(in_dataset: &str, runs: &[(&str, &VisionReport)]) -> String {
    let detection: Vec<(&str, &crate::eval::EvalReport)> =
        runs.iter().map(|(n, r)| (*n, &r.detection)).collect();
    let sets = crate::report::ood_sets_of(&detection);
    let mut out = format!(
        "{in_dataset}: FPR95 / AUROC / AUPR-Out in %, ours (paper Table 7); means over draws; the mean row's paper column averages Table 7 over the same sets\n"
    );
    for (name, r) in runs {
        let d = &r.detection;
        out += &format!(
            "  {name}: test accuracy {:.2}% (error {:.2}%, n = {}), score {}, {} draws, OOD:ID 1:{}\n",
            d.in_accuracy * 100.0,
            100.0 - d.in_accuracy * 100.0,
            d.n_in,
            d.config.score,
            d.config.repeats,
            d.config.id_per_ood
        );
        if let Some(c) = &r.calibration {
            out += &format!(
                "  {name}: calibration (T = {:.3}{}): RMS {:.1}%, MAD {:.1}%, soft F1 {:.1}% (mean over sets)\n",
                c.temperature,
                if c.tuned { format!(", tuned on {} held-out images", c.n_validation) } else { ", untuned: no held-out split".into() },
                c.rms * 100.0,
                c.mad * 100.0,
                c.soft_f1 * 100.0
            );
        }
    }
    out += &crate::report::per_set_rows(&detection, &sets, 12, |set, name| {
        let p = if set == "mean" {
            paper_mean_over(in_dataset, name, &sets)
        } else {
            paper_lookup(in_dataset, set, name)
        };
        p.map(|x| [x.fpr95, x.auroc, x.aupr_out])
    });
    out
}
