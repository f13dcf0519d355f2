//! The one results schema written per evaluation, by text and vision alike, and the terminal tables
//! that show it. Every evaluation directory (`<model dir>/eval-<score>-<protocol>/`) holds:
//!
//! - `results.csv` / `results.parquet`: one row per OOD set plus a `mean` row. Columns:
//!   `in_dataset, method, model, score, protocol, ood_per_id, ratio, draws, seed, ood_set, n_in,
//!   n_ood, in_accuracy`, the FPR as `<fpr column>_mean/_std` (e.g. `fpr90_closest_out_mean`),
//!   `auroc_mean/_std`, `aupr_out_mean/_std` (fractions; means and population standard deviations
//!   over draws), the paper's numbers `paper_fpr<L>_pct, paper_auroc_pct, paper_aupr_out_pct`
//!   (percent; `L` is the paper table's recall level: 90 for text, 95 for vision; null where the
//!   paper has no such row), calibration `calib_rms, calib_mad, calib_soft_f1` (null when not
//!   computed), and `model_dir`;
//! - `scores.parquet`: per-example anomaly scores (`set`, `draw`, `index`, `score`);
//! - `report.json`: the whole evaluation (settings, per-draw metrics, calibration).
//!
//! `oe-text report` reads these ([`crate::report`]).

use crate::error::{OeError, Result};
use crate::eval::{CalibrationSummary, EvalReport};
use crate::paper::{PaperRow, Table};
use crate::train::MethodLabel;
use polars::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What identifies an evaluation in a results table.
#[derive(Clone, Debug)]
pub struct RunMeta {
    pub in_dataset: String,
    pub method: MethodLabel,
    /// `gru`, `transformer`, `minilm`, `wrn-40-2`, ...
    pub model: String,
    pub seed: u64,
    pub model_dir: String,
    /// The paper's table for this wing (Table 8 for text, Table 7 for vision).
    pub paper: Table,
}

fn pe<E: std::fmt::Display>(e: E) -> OeError {
    OeError::Data(format!("results table: {e}"))
}

/// The paper's row for `set` (or the mean of its rows over `sets` when `set` is `mean`).
fn paper_row(meta: &RunMeta, set: &str, sets: &[String]) -> Option<PaperRow> {
    crate::paper::row_or_mean(
        meta.paper,
        &meta.in_dataset,
        set,
        meta.method.paper_method(),
        sets,
    )
}

/// The results rows of one evaluation (see the module docs for the columns).
pub fn summary_frame(
    report: &EvalReport,
    calibration: Option<&CalibrationSummary>,
    meta: &RunMeta,
) -> Result<DataFrame> {
    let mut rows: Vec<(String, usize, [f64; 8])> = report
        .sets
        .iter()
        .map(|s| {
            (
                s.ood_set.clone(),
                s.n_ood,
                [
                    s.fpr.mean,
                    s.fpr.std,
                    s.auroc.mean,
                    s.auroc.std,
                    s.aupr_out.mean,
                    s.aupr_out.std,
                    s.aupr_in.mean,
                    s.aupr_in.std,
                ],
            )
        })
        .collect();
    let names: Vec<String> = report.sets.iter().map(|s| s.ood_set.clone()).collect();
    if !report.sets.is_empty() {
        let (f, a, p) = report.mean_over_sets();
        let n = report.sets.iter().map(|s| s.n_ood).sum::<usize>() / report.sets.len();
        let pin =
            report.sets.iter().map(|s| s.aupr_in.mean).sum::<f64>() / report.sets.len() as f64;
        rows.push((
            "mean".into(),
            n,
            [f, f64::NAN, a, f64::NAN, p, f64::NAN, pin, f64::NAN],
        ));
    }
    let paper: Vec<Option<PaperRow>> = rows.iter().map(|r| paper_row(meta, &r.0, &names)).collect();
    let calib = |name: &str,
                 f: fn(&crate::eval::CalibrationSet) -> f64,
                 mean: fn(&CalibrationSummary) -> f64|
     -> Option<f64> {
        let c = calibration?;
        if name == "mean" {
            Some(mean(c))
        } else {
            c.sets.iter().find(|s| s.ood_set == name).map(f)
        }
    };
    let n = rows.len();
    let c = &report.config;
    let fcol = c.fpr_column();
    let col = |i: usize| -> Vec<f64> { rows.iter().map(|r| r.2[i]).collect() };
    let pcol = |f: fn(&PaperRow) -> f64| -> Vec<Option<f64>> {
        paper.iter().map(|p| p.as_ref().map(f)).collect()
    };
    let ccol = |f: fn(&crate::eval::CalibrationSet) -> f64,
                m: fn(&CalibrationSummary) -> f64|
     -> Vec<Option<f64>> { rows.iter().map(|r| calib(&r.0, f, m)).collect() };
    DataFrame::new_infer_height(vec![
        Column::new("in_dataset".into(), vec![meta.in_dataset.clone(); n]),
        Column::new("method".into(), vec![meta.method.name().to_string(); n]),
        Column::new("model".into(), vec![meta.model.clone(); n]),
        Column::new("score".into(), vec![c.score_name(); n]),
        Column::new("protocol".into(), vec![c.protocol.name().to_string(); n]),
        Column::new("ood_per_id".into(), vec![1.0 / c.id_per_ood as f64; n]),
        Column::new("ratio".into(), vec![c.ratio_name(); n]),
        Column::new("draws".into(), vec![c.repeats as u64; n]),
        Column::new("seed".into(), vec![meta.seed; n]),
        Column::new(
            "ood_set".into(),
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        ),
        Column::new("n_in".into(), vec![report.n_in as u64; n]),
        Column::new(
            "n_ood".into(),
            rows.iter().map(|r| r.1 as u64).collect::<Vec<_>>(),
        ),
        Column::new("in_accuracy".into(), vec![report.in_accuracy; n]),
        Column::new(format!("{fcol}_mean").into(), col(0)),
        Column::new(format!("{fcol}_std").into(), col(1)),
        Column::new("auroc_mean".into(), col(2)),
        Column::new("auroc_std".into(), col(3)),
        Column::new("aupr_out_mean".into(), col(4)),
        Column::new("aupr_out_std".into(), col(5)),
        Column::new("aupr_in_mean".into(), col(6)),
        Column::new("aupr_in_std".into(), col(7)),
        Column::new(paper_fpr_column(meta.paper).into(), pcol(|p| p.fpr)),
        Column::new("paper_auroc_pct".into(), pcol(|p| p.auroc)),
        Column::new("paper_aupr_out_pct".into(), pcol(|p| p.aupr_out)),
        Column::new("calib_rms".into(), ccol(|s| s.rms.mean, |c| c.rms)),
        Column::new("calib_mad".into(), ccol(|s| s.mad.mean, |c| c.mad)),
        Column::new(
            "calib_soft_f1".into(),
            ccol(|s| s.soft_f1.mean, |c| c.soft_f1),
        ),
        Column::new("model_dir".into(), vec![meta.model_dir.clone(); n]),
    ])
    .map_err(pe)
}

/// The name of the paper's FPR column for a table: `paper_fpr90_pct` (text), `paper_fpr95_pct`
/// (vision).
pub fn paper_fpr_column(table: Table) -> String {
    format!("paper_fpr{}_pct", table.fpr_level())
}

/// Per-example anomaly scores: `set` (`in` for the in-distribution test set), `draw` (-1 for `in`),
/// `index` (position in the set's file order) and `score`.
pub fn scores_frame(report: &EvalReport) -> Result<DataFrame> {
    let (mut set, mut draw, mut index, mut score) = (vec![], vec![], vec![], vec![]);
    for (i, s) in report.in_scores.iter().enumerate() {
        set.push("in".to_string());
        draw.push(-1i64);
        index.push(i as u64);
        score.push(*s);
    }
    for r in &report.sets {
        for (d, pairs) in r.scores.iter().enumerate() {
            for &(i, s) in pairs {
                set.push(r.ood_set.clone());
                draw.push(d as i64);
                index.push(i as u64);
                score.push(s);
            }
        }
    }
    DataFrame::new_infer_height(vec![
        Column::new("set".into(), set),
        Column::new("draw".into(), draw),
        Column::new("index".into(), index),
        Column::new("score".into(), score),
    ])
    .map_err(pe)
}

/// Writes a frame as CSV or Parquet (by extension), atomically.
pub fn write_frame(df: &mut DataFrame, path: &Path) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => CsvWriter::new(&mut buf).finish(df).map_err(pe)?,
        Some("parquet") => {
            ParquetWriter::new(&mut buf).finish(df).map_err(pe)?;
        }
        other => {
            return Err(OeError::Config(format!(
                "{}: unsupported results format {other:?} (csv or parquet)",
                path.display()
            )))
        }
    }
    crate::io::write_atomic(path, &buf)
}

/// `report.json`: the evaluation and, when computed, its calibration.
#[derive(Serialize)]
struct ReportJson<'a> {
    #[serde(flatten)]
    detection: &'a EvalReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    calibration: Option<&'a CalibrationSummary>,
}

/// The evaluation directory of a report under a model directory: `eval-<score>-<protocol>`.
pub fn eval_dir(dir: &Path, report: &EvalReport) -> PathBuf {
    let precision = match report.precision {
        crate::device::Precision::Float32 => String::new(),
        p => format!("-{}", p.name()),
    };
    dir.join(format!(
        "eval-{}-{}{precision}",
        report.config.score_name().replace(':', "_"),
        report.config.protocol.name()
    ))
}

/// Writes `results.csv`, `results.parquet`, `scores.parquet` and `report.json` into the evaluation
/// directory of `report` under `dir` ([`eval_dir`]); returns that directory.
pub fn write_eval(
    dir: &Path,
    report: &EvalReport,
    calibration: Option<&CalibrationSummary>,
    meta: &RunMeta,
) -> Result<PathBuf> {
    let sub = eval_dir(dir, report);
    let mut summary = summary_frame(report, calibration, meta)?;
    write_frame(&mut summary, &sub.join("results.csv"))?;
    write_frame(&mut summary, &sub.join("results.parquet"))?;
    let mut scores = scores_frame(report)?;
    write_frame(&mut scores, &sub.join("scores.parquet"))?;
    let json = serde_json::to_vec_pretty(&ReportJson {
        detection: report,
        calibration,
    })
    .map_err(pe)?;
    crate::io::write_atomic(&sub.join("report.json"), &json)?;
    Ok(sub)
}

/// The OOD sets of `runs`, in first-seen order.
pub fn ood_sets_of(runs: &[(&str, &EvalReport)]) -> Vec<String> {
    let mut sets: Vec<String> = Vec::new();
    for (_, r) in runs {
        for s in &r.sets {
            if !sets.contains(&s.ood_set) {
                sets.push(s.ood_set.clone());
            }
        }
    }
    sets
}

/// The body of a comparison table: a header line, then one line per set in `sets` and a `mean`
/// line, each with every run's FPR / AUROC / AUPR-Out in percent and, in brackets, the paper's
/// numbers from `paper(set, run name)` (percent; `set` is `mean` for the mean line). `set_width` is
/// the width of the first column.
pub fn per_set_rows(
    runs: &[(&str, &EvalReport)],
    sets: &[String],
    set_width: usize,
    paper: impl Fn(&str, &str) -> Option<[f64; 3]>,
) -> String {
    let mut out = format!("{:<set_width$}", "OOD set");
    for (name, _) in runs {
        out += &format!(" | {:^44}", name);
    }
    out += "\n";
    let fmt = |v: f64, p: Option<f64>| match p {
        Some(p) => format!("{:5.1} ({:5.1})", v * 100.0, p),
        None => format!("{:5.1} (  -  )", v * 100.0),
    };
    let mut rows: Vec<String> = sets.to_vec();
    rows.push("mean".into());
    for set in rows {
        out += &format!("{set:<set_width$}");
        for (name, r) in runs {
            let p = paper(&set, name);
            let vals = if set == "mean" {
                (!r.sets.is_empty()).then(|| r.mean_over_sets())
            } else {
                r.sets
                    .iter()
                    .find(|s| s.ood_set == set)
                    .map(|s| (s.fpr.mean, s.auroc.mean, s.aupr_out.mean))
            };
            match vals {
                Some((f, a, pr)) => {
                    out += &format!(
                        " | {} {} {}",
                        fmt(f, p.map(|x| x[0])),
                        fmt(a, p.map(|x| x[1])),
                        fmt(pr, p.map(|x| x[2]))
                    )
                }
                None => out += &format!(" | {:^44}", "-"),
            }
        }
        out += "\n";
    }
    out
}

/// The paper's numbers of a table row by run name (a name starting with `baseline` is the MSP
/// baseline, anything else OE), for [`per_set_rows`].
pub fn paper_cells<'a>(
    table: Table,
    in_dataset: &str,
    sets: &'a [String],
) -> impl Fn(&str, &str) -> Option<[f64; 3]> + 'a {
    let in_dataset = in_dataset.to_string();
    move |set: &str, name: &str| {
        let method = if name.starts_with("baseline") {
            "baseline"
        } else {
            "oe"
        };
        crate::paper::row_or_mean(table, &in_dataset, set, method, sets)
            .map(|x| [x.fpr, x.auroc, x.aupr_out])
    }
}

/// A terminal table comparing methods per OOD set, with the paper's Table 8 numbers beside ours
/// (percent): the text wing's `train` / `eval` output.
pub fn comparison_table(in_dataset: &str, runs: &[(&str, &EvalReport)]) -> String {
    let sets = ood_sets_of(runs);
    let fcol = runs
        .first()
        .map(|r| r.1.config.fpr_column())
        .unwrap_or_else(|| "fpr".into());
    // The paper's "mean" is over its 10 sets; ours is over the sets evaluated here, so the paper
    // column of our mean row averages Table 8 over the same sets.
    let has_paper = sets.iter().any(|set| {
        crate::paper::row_or_mean(Table::Table8, in_dataset, set, "baseline", &sets).is_some()
    });
    let mut out = String::new();
    if has_paper {
        out += &format!(
            "{in_dataset}: {fcol} / AUROC / AUPR-Out in %, ours (paper Table 8); means over draws; the mean row's paper column averages Table 8 over the same sets\n"
        );
    } else {
        let full = runs
            .iter()
            .all(|r| r.1.config.protocol == crate::eval::Protocol::Full);
        out += &format!(
            "{in_dataset}: {fcol} / AUROC / AUPR-Out in % (OOD positive); {} (the paper has no numbers for this dataset)\n",
            if full { "every test text once" } else { "means over draws" }
        );
    }
    let width = sets
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .clamp(14, 40);
    for (name, r) in runs {
        let draws = match r.config.protocol {
            crate::eval::Protocol::Full => "every OOD text once".to_string(),
            _ => format!(
                "{} draws, OOD:ID 1:{}",
                r.config.repeats, r.config.id_per_ood
            ),
        };
        out += &format!(
            "  {name}: in-distribution test accuracy {:.1}% (n = {}), protocol {}, score {}, {draws}\n",
            r.in_accuracy * 100.0,
            r.n_in,
            r.config.protocol.name(),
            r.config.score_name(),
        );
    }
    out += &per_set_rows(
        runs,
        &sets,
        width,
        paper_cells(Table::Table8, in_dataset, &sets),
    );
    for (name, r) in runs {
        let aupr_in: Vec<String> = r
            .sets
            .iter()
            .map(|s| format!("{} {:.1}", s.ood_set, s.aupr_in.mean * 100.0))
            .collect();
        out += &format!(
            "  {name}: AUPR-In % (in-distribution positive): {}\n",
            aupr_in.join(", ")
        );
        if let Some(op) = &r.operating_point {
            let rec: Vec<String> = op
                .test_ood_recall
                .iter()
                .map(|(s, v)| format!("{s} {:.1}%", v * 100.0))
                .collect();
            out += &format!(
                "  {name}: at the threshold chosen on dev + {} ({}): in-distribution accuracy {:.1}%, OOD recall {}\n",
                op.val_ood_set,
                crate::io::compact_number(op.threshold),
                op.test_in_accuracy * 100.0,
                rec.join(", ")
            );
        }
    }
    out
}

/// A terminal table: ours (paper Table 7) per set, FPR95 / AUROC / AUPR-Out in percent, with
/// calibration: the vision wing's `train` / `eval` output.
pub fn vision_comparison_table(
    in_dataset: &str,
    runs: &[(&str, &EvalReport, Option<&CalibrationSummary>)],
) -> String {
    let detection: Vec<(&str, &EvalReport)> = runs.iter().map(|(n, r, _)| (*n, *r)).collect();
    let sets = ood_sets_of(&detection);
    let mut out = format!(
        "{in_dataset}: FPR95 / AUROC / AUPR-Out in %, ours (paper Table 7); means over draws; the mean row's paper column averages Table 7 over the same sets\n"
    );
    for (name, d, calibration) in runs {
        out += &format!(
            "  {name}: test accuracy {:.2}% (error {:.2}%, n = {}), score {}, {} draws, OOD:ID 1:{}\n",
            d.in_accuracy * 100.0,
            100.0 - d.in_accuracy * 100.0,
            d.n_in,
            d.config.score_name(),
            d.config.repeats,
            d.config.id_per_ood
        );
        if let Some(c) = calibration {
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
    out += &per_set_rows(
        &detection,
        &sets,
        12,
        paper_cells(Table::Table7, in_dataset, &sets),
    );
    out
}
