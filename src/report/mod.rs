//! Machine-readable results (polars: CSV and Parquet) and human-readable tables.
//!
//! This is the only module that uses polars. `oe-text report` (aggregation over runs, bootstrap
//! intervals, plots, HTML) lives in the submodules; see [`command::run_report`].

pub mod aggregate;
pub mod bootstrap;
pub mod command;
pub mod html;
pub mod plots;
pub mod score_file;

pub use command::{run_report, ReportOutput};

use crate::error::{OeError, Result};
use crate::eval::{EvalReport, Protocol};
use crate::metrics::FprRule;
use polars::prelude::*;
use std::path::Path;

/// What identifies an evaluation in a results table.
#[derive(Clone, Debug)]
pub struct RunMeta {
    pub in_dataset: String,
    /// `baseline`, `oe`, ...
    pub method: String,
    /// `gru`, `transformer`, ...
    pub model: String,
    pub seed: u64,
    pub model_dir: String,
}

fn pe<E: std::fmt::Display>(e: E) -> OeError {
    OeError::Data(format!("results table: {e}"))
}

/// The FPR column name for a report, e.g. `fpr90_closest_out`.
pub fn fpr_column(report: &EvalReport) -> String {
    let level = (report.config.tpr * 1000.0).round() / 10.0;
    let level = if level.fract() == 0.0 {
        format!("{}", level as i64)
    } else {
        format!("{level}")
    };
    let rule = match report.config.fpr_rule {
        FprRule::Closest => "closest",
        FprRule::AtLeast => "atleast",
    };
    format!("fpr{level}_{rule}_out")
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Paper => "paper",
        Protocol::Clean => "clean",
    }
}

/// One row per OOD set plus a `mean` row: means and standard deviations over draws, the protocol,
/// the OOD:ID ratio, and the paper's Table 8 numbers where they exist (percent).
pub fn summary_frame(report: &EvalReport, meta: &RunMeta) -> Result<DataFrame> {
    let mut rows: Vec<(String, usize, [f64; 6])> = report
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
                ],
            )
        })
        .collect();
    if !report.sets.is_empty() {
        let (f, a, p) = report.mean_over_sets();
        let n = report.sets.iter().map(|s| s.n_ood).sum::<usize>() / report.sets.len();
        rows.push(("mean".into(), n, [f, f64::NAN, a, f64::NAN, p, f64::NAN]));
    }
    let paper_method = if meta.method == "baseline" {
        "baseline"
    } else {
        "oe"
    };
    let paper: Vec<Option<crate::paper::PaperRow>> = rows
        .iter()
        .map(|r| {
            if r.0 == "mean" {
                let sets: Vec<String> = report.sets.iter().map(|s| s.ood_set.clone()).collect();
                paper_mean_over(&meta.in_dataset, paper_method, &sets)
            } else {
                crate::paper::nlp_lookup(&meta.in_dataset, &r.0, paper_method)
            }
        })
        .collect();
    let n = rows.len();
    let fcol = fpr_column(report);
    let c = report.config.clone();
    let col = |i: usize| -> Vec<f64> { rows.iter().map(|r| r.2[i]).collect() };
    let pcol = |f: fn(&crate::paper::PaperRow) -> f64| -> Vec<Option<f64>> {
        paper.iter().map(|p| p.as_ref().map(f)).collect()
    };
    let df = DataFrame::new_infer_height(vec![
        Column::new("in_dataset".into(), vec![meta.in_dataset.clone(); n]),
        Column::new("method".into(), vec![meta.method.clone(); n]),
        Column::new("model".into(), vec![meta.model.clone(); n]),
        Column::new("score".into(), vec![c.score_name(); n]),
        Column::new(
            "protocol".into(),
            vec![protocol_name(c.protocol).to_string(); n],
        ),
        Column::new("ood_per_id".into(), vec![1.0 / c.id_per_ood as f64; n]),
        Column::new("ratio".into(), vec![format!("1:{}", c.id_per_ood); n]),
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
        Column::new("paper_fpr90_pct".into(), pcol(|p| p.fpr90)),
        Column::new("paper_auroc_pct".into(), pcol(|p| p.auroc)),
        Column::new("paper_aupr_out_pct".into(), pcol(|p| p.aupr_out)),
        Column::new("model_dir".into(), vec![meta.model_dir.clone(); n]),
    ])
    .map_err(pe)?;
    Ok(df)
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

/// Writes `results.csv`, `results.parquet` and `scores.parquet` (per-example scores) into `dir`,
/// with a file-name prefix for the score and protocol (e.g. `eval-msp-paper/`).
pub fn write_eval(dir: &Path, report: &EvalReport, meta: &RunMeta) -> Result<std::path::PathBuf> {
    let sub = dir.join(format!(
        "eval-{}-{}",
        report.config.score_name().replace(':', "_"),
        protocol_name(report.config.protocol)
    ));
    let mut summary = summary_frame(report, meta)?;
    write_frame(&mut summary, &sub.join("results.csv"))?;
    write_frame(&mut summary, &sub.join("results.parquet"))?;
    let mut scores = scores_frame(report)?;
    write_frame(&mut scores, &sub.join("scores.parquet"))?;
    let json = serde_json::to_vec_pretty(report).map_err(pe)?;
    crate::io::write_atomic(&sub.join("report.json"), &json)?;
    Ok(sub)
}

/// A terminal table comparing methods per OOD set, with the paper's numbers beside ours (percent).
pub fn comparison_table(in_dataset: &str, runs: &[(&str, &EvalReport)]) -> String {
    let sets = ood_sets_of(runs);
    let fcol = runs
        .first()
        .map(|r| fpr_column(r.1))
        .unwrap_or_else(|| "fpr".into());
    // The paper's "mean" is over its 10 sets; ours is over the sets evaluated here, so the paper
    // column of our mean row averages Table 8 over the same sets.
    let mut out = String::new();
    out += &format!(
        "{in_dataset}: {fcol} / AUROC / AUPR-Out in %, ours (paper Table 8); means over draws; the mean row's paper column averages Table 8 over the same sets\n"
    );
    for (name, r) in runs {
        out += &format!(
            "  {name}: in-distribution test accuracy {:.1}% (n = {}), protocol {}, score {}, {} draws, OOD:ID 1:{}\n",
            r.in_accuracy * 100.0,
            r.n_in,
            protocol_name(r.config.protocol),
            r.config.score_name(),
            r.config.repeats,
            r.config.id_per_ood
        );
    }
    out += &per_set_rows(runs, &sets, 14, |set, name| {
        let method = if name.starts_with("baseline") {
            "baseline"
        } else {
            "oe"
        };
        let p = if set == "mean" {
            paper_mean_over(in_dataset, method, &sets)
        } else {
            crate::paper::nlp_lookup(in_dataset, set, method)
        };
        p.map(|x| [x.fpr90, x.auroc, x.aupr_out])
    });
    out
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

/// The mean of Table 8's rows over `sets` (all must be in Table 8), as fractions ×100 (percent).
pub fn paper_mean_over(
    in_dataset: &str,
    method: &str,
    sets: &[String],
) -> Option<crate::paper::PaperRow> {
    let rows: Option<Vec<_>> = sets
        .iter()
        .map(|s| crate::paper::nlp_lookup(in_dataset, s, method))
        .collect();
    let rows = rows?;
    if rows.is_empty() {
        return None;
    }
    let n = rows.len() as f64;
    Some(crate::paper::PaperRow {
        in_dataset: in_dataset.to_string(),
        ood_set: "mean".into(),
        method: method.to_string(),
        fpr90: rows.iter().map(|r| r.fpr90).sum::<f64>() / n,
        auroc: rows.iter().map(|r| r.auroc).sum::<f64>() / n,
        aupr_out: rows.iter().map(|r| r.aupr_out).sum::<f64>() / n,
        table: "table8",
    })
}
