//! `oe-text report`: find results, aggregate, add bootstrap intervals, plot, render.

use crate::error::{OeError, Result};
use crate::report::aggregate::{self, Aggregated, EvalRun, GroupKey};
use crate::report::bootstrap::{self, BootstrapConfig, EvalScores, Triple};
use crate::report::plots::{self, Chart, ChartKind, Line, PlotFile};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn pe<E: std::fmt::Display>(e: E) -> OeError {
    OeError::Data(format!("report: {e}"))
}

/// Output format of `oe-text report`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// A Markdown table (for papers and notes).
    Md,
    /// The full aggregated table as CSV.
    Csv,
    /// The full aggregated table as Parquet (needs an output path).
    Parquet,
    /// One self-contained HTML page: tables and plots (inline SVG), readable offline.
    Html,
    /// The near-OOD benchmark table (CLINC150): per model × training × detector over seeds, with
    /// AUPR-In and the operating point chosen on validation (Markdown; CSV with --output F.csv).
    NearOod,
}

/// A validated `oe-text report` request.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    /// Run directories (or model/eval directories), searched recursively for results.parquet.
    pub run_dirs: Vec<PathBuf>,
    /// Group keys (the OOD set is always one).
    pub by: Vec<GroupKey>,
    pub format: ReportFormat,
    /// Write the report here instead of returning it for standard output.
    pub output: Option<PathBuf>,
    /// Bootstrap resamples for confidence intervals (0: none).
    pub bootstrap: usize,
    pub seed: u64,
    /// Confidence level of the intervals.
    pub level: f64,
    /// Directory for ROC, PR and histogram plots.
    pub plots: Option<PathBuf>,
    /// Fail instead of flagging groups that mix settings.
    pub strict: bool,
}

/// What a report produced.
#[derive(Clone, Debug, Default)]
pub struct ReportOutput {
    /// Text for standard output (empty when written to a file).
    pub stdout: String,
    /// Files written (the report, plots).
    pub written: Vec<PathBuf>,
    /// One line per group with a warning.
    pub warnings: Vec<String>,
}

/// The whole report in memory: the aggregated table (with interval columns when bootstrapped).
#[derive(Clone, Debug)]
pub struct Report {
    pub agg: Aggregated,
    pub runs: Vec<EvalRun>,
    pub bootstrap: Option<BootstrapConfig>,
}

/// Loads every evaluation's per-example scores.
pub fn load_all_scores(runs: &[EvalRun]) -> Result<BTreeMap<String, EvalScores>> {
    runs.iter()
        .map(|r| {
            Ok((
                r.eval_dir.clone(),
                aggregate::load_scores(Path::new(&r.eval_dir))?,
            ))
        })
        .collect()
}

/// Adds `<metric>_ci_lo`/`_ci_hi` columns: per row, percentile intervals of the mean over the
/// group's runs of each run's bootstrap replicate (the `mean` row: mean over the run's OOD sets).
pub fn add_intervals(
    agg: &mut Aggregated,
    scores: &BTreeMap<String, EvalScores>,
    cfg: &BootstrapConfig,
) -> Result<()> {
    let mut reps: BTreeMap<&str, Vec<Vec<Triple>>> = BTreeMap::new();
    for (dir, s) in scores {
        reps.insert(dir.as_str(), bootstrap::eval_replicates(s, cfg)?);
    }
    let ood: Vec<String> = agg
        .frame
        .column("ood_set")
        .map_err(pe)?
        .str()
        .map_err(pe)?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect();
    let n = agg.frame.height();
    let mut cols = vec![vec![f64::NAN; n]; 6];
    for i in 0..n {
        let dirs = &agg.eval_dirs[i];
        let mut per_rep: Vec<Triple> = Vec::with_capacity(cfg.resamples);
        for r in 0..cfg.resamples {
            let mut acc = [0.0; 3];
            let mut ok = !dirs.is_empty();
            for d in dirs {
                let (Some(s), Some(rp)) = (scores.get(d), reps.get(d.as_str())) else {
                    ok = false;
                    break;
                };
                let t: Option<Triple> = if ood[i] == "mean" {
                    let k = rp[r].len();
                    (k > 0).then(|| {
                        let mut m = [0.0; 3];
                        for t in &rp[r] {
                            for j in 0..3 {
                                m[j] += t[j] / k as f64;
                            }
                        }
                        m
                    })
                } else {
                    s.sets
                        .iter()
                        .position(|p| p.name == ood[i])
                        .map(|k| rp[r][k])
                };
                match t {
                    Some(t) => (0..3).for_each(|j| acc[j] += t[j] / dirs.len() as f64),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                break;
            }
            per_rep.push(acc);
        }
        if per_rep.len() == cfg.resamples {
            let iv = bootstrap::intervals([f64::NAN; 3], &per_rep, cfg.level);
            for (j, x) in [iv.fpr, iv.auroc, iv.aupr_out].iter().enumerate() {
                cols[2 * j][i] = x.lo;
                cols[2 * j + 1][i] = x.hi;
            }
        }
    }
    let names = [
        format!("{}_ci_lo", agg.fpr.name),
        format!("{}_ci_hi", agg.fpr.name),
        "auroc_ci_lo".into(),
        "auroc_ci_hi".into(),
        "aupr_out_ci_lo".into(),
        "aupr_out_ci_hi".into(),
    ];
    for (name, v) in names.iter().zip(cols) {
        let v: Vec<Option<f64>> = v.into_iter().map(|x| x.is_finite().then_some(x)).collect();
        agg.frame
            .with_column(Column::new(name.as_str().into(), v))
            .map_err(pe)?;
    }
    Ok(())
}

/// Plots for all evaluations: per (dataset, model, score, protocol, ratio) and OOD set, ROC and PR
/// curves with every run as a line (draw 0's OOD sample, at the evaluated ratio); per evaluation and
/// OOD set, histograms of ID scores vs the OOD set's scored examples.
pub fn make_plots(
    runs: &[EvalRun],
    scores: &BTreeMap<String, EvalScores>,
    dir: &Path,
) -> Result<Vec<PlotFile>> {
    let mut groups: BTreeMap<(String, String, String, String, String), Vec<&EvalRun>> =
        BTreeMap::new();
    for r in runs {
        groups
            .entry((
                r.in_dataset.clone(),
                r.model.clone(),
                r.score.clone(),
                r.protocol.clone(),
                r.ratio.clone(),
            ))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((ds, model, score, proto, ratio), members) in &groups {
        let group = format!("{ds} / {model} / {score} / {proto} {ratio}");
        let gslug = plots::slug(&format!("{ds}-{model}-{score}-{proto}"));
        // Colours by method, labels unique within the group.
        let mut methods: Vec<&str> = members.iter().map(|r| r.method.as_str()).collect();
        methods.sort_by_key(|m| (*m != "baseline", *m != "oe", m.to_string()));
        methods.dedup();
        let colour = |m: &str| methods.iter().position(|x| *x == m).unwrap_or(0);
        let mut ms: Vec<(&str, u64)> = members
            .iter()
            .map(|r| (r.method.as_str(), r.seed))
            .collect();
        ms.sort();
        let dup = ms.windows(2).any(|w| w[0] == w[1]);
        let label = |r: &EvalRun| {
            if dup {
                format!("{} ({})", r.method, r.run_name())
            } else {
                format!("{} (seed {})", r.method, r.seed)
            }
        };
        let mut ordered = members.clone();
        ordered.sort_by_key(|r| (colour(&r.method), r.seed, r.eval_dir.clone()));
        let mut sets: Vec<String> = ordered
            .iter()
            .filter_map(|r| scores.get(&r.eval_dir))
            .flat_map(|s| s.sets.iter().map(|p| p.name.clone()))
            .collect();
        sets.sort();
        sets.dedup();
        for set in &sets {
            let mut roc = Vec::new();
            let mut pr = Vec::new();
            let mut chance = Vec::new();
            for r in &ordered {
                let Some(s) = scores.get(&r.eval_dir) else {
                    continue;
                };
                let Some(p) = s.sets.iter().find(|p| &p.name == set) else {
                    continue;
                };
                let rk = crate::metrics::Ranking::new(
                    &s.in_scores,
                    &p.first_draw,
                    crate::metrics::Positive::Ood,
                )?;
                let c = colour(&r.method);
                roc.push(Line {
                    label: format!("{}: AUROC {:.1}%", label(r), rk.auroc() * 100.0),
                    points: plots::roc_points(&s.in_scores, &p.first_draw)?,
                    color: c,
                });
                pr.push(Line {
                    label: format!("{}: AUPR {:.1}%", label(r), rk.average_precision() * 100.0),
                    points: plots::pr_points(&s.in_scores, &p.first_draw)?,
                    color: c,
                });
                let prev =
                    p.first_draw.len() as f64 / (p.first_draw.len() + s.in_scores.len()) as f64;
                if !chance
                    .iter()
                    .any(|&(x, _): &(f64, usize)| (x - prev).abs() < 1e-12)
                {
                    chance.push((prev, 7));
                }
                // Histogram of this run: ID vs the OOD set.
                let lo = s
                    .in_scores
                    .iter()
                    .chain(&p.scores)
                    .copied()
                    .fold(f64::INFINITY, f64::min);
                let hi = s
                    .in_scores
                    .iter()
                    .chain(&p.scores)
                    .copied()
                    .fold(f64::NEG_INFINITY, f64::max);
                let chart = Chart {
                    title: format!("{ds} {} vs {set}: anomaly scores", label(r)),
                    x_label: format!("{score} anomaly score (higher = more anomalous)"),
                    y_label: "density".into(),
                    kind: ChartKind::Hist(vec![
                        (
                            format!("in-distribution (n = {})", s.in_scores.len()),
                            plots::density_bins(&s.in_scores, lo, hi, 40),
                            0,
                        ),
                        (
                            format!("{set} (n = {})", p.scores.len()),
                            plots::density_bins(&p.scores, lo, hi, 40),
                            4,
                        ),
                    ]),
                };
                let stem = plots::slug(&format!(
                    "hist-{gslug}-{}-{}-{set}",
                    r.method,
                    if dup {
                        r.run_name()
                    } else {
                        format!("s{}", r.seed)
                    }
                ));
                let (sp, pp, svg) = plots::write_chart(&chart, dir, &stem)?;
                out.push(PlotFile {
                    title: chart.title.clone(),
                    kind: "hist",
                    group: group.clone(),
                    ood_set: set.clone(),
                    svg_path: sp,
                    png_path: pp,
                    svg,
                });
            }
            if roc.is_empty() {
                continue;
            }
            for (kind, chart) in [
                (
                    "roc",
                    Chart {
                        title: format!("{ds} vs {set}: ROC (OOD positive)"),
                        x_label: "false positive rate (ID flagged)".into(),
                        y_label: "true positive rate (OOD flagged)".into(),
                        kind: ChartKind::Roc(roc),
                    },
                ),
                (
                    "pr",
                    Chart {
                        title: format!("{ds} vs {set}: precision-recall (OOD positive)"),
                        x_label: "recall (OOD)".into(),
                        y_label: "precision".into(),
                        kind: ChartKind::Pr(pr, chance),
                    },
                ),
            ] {
                let stem = plots::slug(&format!("{kind}-{gslug}-{set}"));
                let (sp, pp, svg) = plots::write_chart(&chart, dir, &stem)?;
                out.push(PlotFile {
                    title: chart.title.clone(),
                    kind,
                    group: group.clone(),
                    ood_set: set.clone(),
                    svg_path: sp,
                    png_path: pp,
                    svg,
                });
            }
        }
    }
    // Curves first, then histograms, each in group and set order.
    out.sort_by_key(|p| (p.group.clone(), p.kind == "hist", p.ood_set.clone()));
    Ok(out)
}

/// Builds the aggregated report (with intervals when `bootstrap > 0`).
pub fn build(args: &ReportRequest) -> Result<(Report, Option<BTreeMap<String, EvalScores>>)> {
    let files = aggregate::find_results(&args.run_dirs)?;
    let mut agg = aggregate::aggregate(&files, &args.by)?;
    if args.strict {
        let bad: Vec<String> = agg
            .warnings
            .iter()
            .filter(|w| !w.is_empty())
            .cloned()
            .collect();
        if !bad.is_empty() {
            return Err(OeError::Data(format!(
                "report --strict: groups mix incompatible results: {}",
                bad.join(" | ")
            )));
        }
    }
    let runs = aggregate::eval_runs(&files)?;
    let need_scores =
        args.bootstrap > 0 || args.plots.is_some() || args.format == ReportFormat::Html;
    let scores = if need_scores {
        Some(load_all_scores(&runs)?)
    } else {
        None
    };
    let bootstrap = if args.bootstrap > 0 {
        let cfg = BootstrapConfig {
            resamples: args.bootstrap,
            seed: args.seed,
            level: args.level,
            tpr: agg.fpr.tpr,
            fpr_rule: agg.fpr.rule,
        };
        add_intervals(&mut agg, scores.as_ref().expect("loaded"), &cfg)?;
        Some(cfg)
    } else {
        None
    };
    Ok((
        Report {
            agg,
            runs,
            bootstrap,
        },
        scores,
    ))
}

fn get_f64(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    match df.column(name).and_then(|c| c.f64().cloned()) {
        Ok(ca) => ca.iter().map(|x| x.filter(|v| v.is_finite())).collect(),
        Err(_) => vec![None; df.height()],
    }
}

fn get_str(df: &DataFrame, name: &str) -> Vec<String> {
    match df.column(name).and_then(|c| c.cast(&DataType::String)) {
        Ok(c) => c
            .str()
            .map(|ca| {
                ca.iter()
                    .map(|s| s.unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => vec![String::new(); df.height()],
    }
}

/// Header and rows of the human-readable table (percent).
pub fn display_rows(report: &Report) -> (Vec<String>, Vec<Vec<String>>) {
    let df = &report.agg.frame;
    let f = &report.agg.fpr;
    let mut header: Vec<String> = report
        .agg
        .keys
        .iter()
        .map(|k| match k.as_str() {
            "in_dataset" => "dataset".to_string(),
            "ood_set" => "OOD set".to_string(),
            other => other.to_string(),
        })
        .collect();
    header.push("runs".into());
    let metrics = [
        (
            f.name.clone(),
            format!("{} %", f.label()),
            f.paper_column(),
            f.delta_column(),
        ),
        (
            "auroc".to_string(),
            "AUROC %".to_string(),
            "paper_auroc_pct".to_string(),
            "delta_auroc_pp".to_string(),
        ),
        (
            "aupr_out".to_string(),
            "AUPR-Out %".to_string(),
            "paper_aupr_out_pct".to_string(),
            "delta_aupr_out_pp".to_string(),
        ),
    ];
    let ci = report.bootstrap.is_some();
    for (_, label, _, _) in &metrics {
        header.push(if ci {
            format!(
                "{label} (± sd) [{:.0}% CI]",
                report.bootstrap.map(|b| b.level * 100.0).unwrap_or(95.0)
            )
        } else {
            format!("{label} (± sd)")
        });
        header.push("paper (Δ)".into());
    }
    let warnings = &report.agg.warnings;
    let any_warning = warnings.iter().any(|w| !w.is_empty());
    if any_warning {
        header.push("warning".into());
    }
    let keys: Vec<Vec<String>> = report.agg.keys.iter().map(|k| get_str(df, k)).collect();
    let runs = get_str(df, "runs");
    let comparable: Vec<bool> = df
        .column("paper_comparable")
        .ok()
        .and_then(|c| {
            c.bool()
                .ok()
                .map(|b| b.iter().map(|x| x.unwrap_or(false)).collect())
        })
        .unwrap_or_else(|| vec![false; df.height()]);
    let cols: Vec<[Vec<Option<f64>>; 6]> = metrics
        .iter()
        .map(|(m, _, p, d)| {
            [
                get_f64(df, &format!("{m}_mean")),
                get_f64(df, &format!("{m}_std")),
                get_f64(df, &format!("{m}_ci_lo")),
                get_f64(df, &format!("{m}_ci_hi")),
                get_f64(df, p),
                get_f64(df, d),
            ]
        })
        .collect();
    let mut rows = Vec::new();
    for i in 0..df.height() {
        let mut row: Vec<String> = keys.iter().map(|k| k[i].clone()).collect();
        row.push(runs[i].clone());
        for c in &cols {
            let mut cell = match c[0][i] {
                Some(m) => format!("{:.1}", m * 100.0),
                None => "-".into(),
            };
            if let Some(s) = c[1][i] {
                cell += &format!(" ± {:.1}", s * 100.0);
            }
            if let (Some(lo), Some(hi)) = (c[2][i], c[3][i]) {
                cell += &format!(" [{:.1}, {:.1}]", lo * 100.0, hi * 100.0);
            }
            row.push(cell);
            row.push(match (c[4][i], c[5][i]) {
                (Some(p), Some(d)) => {
                    let d = if d.abs() < 0.05 { 0.0 } else { d };
                    format!("{p:.1} ({d:+.1}){}", if comparable[i] { "" } else { "*" })
                }
                _ => "-".into(),
            });
        }
        if any_warning {
            row.push(warnings[i].clone());
        }
        rows.push(row);
    }
    (header, rows)
}

fn notes(report: &Report) -> Vec<String> {
    let f = &report.agg.fpr;
    let mut v = vec![
        format!(
            "Percent; OOD is the positive class. {} = FPR at {}% recall of OOD ({} rule). mean ± sd over all draws of all runs (runs = evaluations aggregated); the `mean` rows average the OOD sets per run.",
            f.label(),
            f.tpr * 100.0,
            match f.rule {
                crate::metrics::FprRule::Closest => "closest",
                crate::metrics::FprRule::AtLeast => "at-least",
            }
        ),
        // The FPR level tells the wings apart: the paper's text tables use FPR90, vision FPR95.
        if (f.tpr - 0.95).abs() < 1e-9 {
            "paper (Δ): the paper's Table 7 number (vision; the mean row: Table 7 averaged over the same sets) and ours minus it in percentage points; - = a dataset or OOD set the paper has no number for; * = not made or evaluated like the paper (its WRN with MSP, baseline or uniform OE; paper protocol, 1:5 OOD:ID, FPR95 closest rule).".into()
        } else {
            "paper (Δ): the paper's Table 8 number (the mean row: Table 8 averaged over the same sets) and ours minus it in percentage points; * = not made or evaluated like the paper (its GRU with MSP, baseline or uniform OE; paper protocol, 1:5 OOD:ID, FPR90 closest rule).".into()
        },
    ];
    if let Some(b) = report.bootstrap {
        v.push(format!(
            "CI: {:.0}% percentile bootstrap, {} resamples, seed {}; each resample redraws all ID test scores and one draw's worth of OOD scores (from the distinct OOD examples scored) with replacement, and averages over the group's runs. It covers sampling of test examples for fixed models, not training seeds (see the sd and the *_seed_std columns).",
            b.level * 100.0,
            b.resamples,
            b.seed
        ));
    }
    v
}

fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (j, c) in r.iter().enumerate().take(n) {
            w[j] = w[j].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(j, c)| format!("{c:<width$}", width = w[j]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut s = line(header);
    s += &(w
        .iter()
        .map(|&k| "-".repeat(k))
        .collect::<Vec<_>>()
        .join("  ")
        + "\n");
    for r in rows {
        s += &line(r);
    }
    s
}

fn md_table(header: &[String], rows: &[Vec<String>]) -> String {
    let esc = |c: &String| c.replace('|', "\\|");
    let mut s = format!(
        "| {} |\n",
        header.iter().map(esc).collect::<Vec<_>>().join(" | ")
    );
    s += &format!("|{}\n", header.iter().map(|_| "---|").collect::<String>());
    for r in rows {
        s += &format!(
            "| {} |\n",
            r.iter().map(esc).collect::<Vec<_>>().join(" | ")
        );
    }
    s
}

fn write_out(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).map_err(|e| OeError::io(p, e))?;
    }
    crate::io::write_atomic(path, bytes)
}

/// Runs `oe-text report`.
pub fn run_report(args: &ReportRequest) -> Result<ReportOutput> {
    if matches!(args.format, ReportFormat::Parquet | ReportFormat::Html) && args.output.is_none() {
        return Err(OeError::Config(format!(
            "--format {} needs --output PATH",
            if args.format == ReportFormat::Html {
                "html"
            } else {
                "parquet"
            }
        )));
    }
    if args.format == ReportFormat::NearOod {
        let rows = crate::report::near_ood::rows(&args.run_dirs, None)?;
        let mut out = ReportOutput::default();
        match &args.output {
            Some(p) => {
                let body = if p.extension().is_some_and(|e| e == "csv") {
                    crate::report::near_ood::csv(&rows)
                } else {
                    crate::report::near_ood::markdown(&rows)
                };
                crate::io::write_atomic(p, body.as_bytes())?;
                out.written.push(p.clone());
            }
            None => out.stdout = crate::report::near_ood::markdown(&rows),
        }
        return Ok(out);
    }
    let (report, scores) = build(args)?;
    let mut out = ReportOutput::default();
    for (i, w) in report.agg.warnings.iter().enumerate() {
        if !w.is_empty() {
            let keys: Vec<String> = report
                .agg
                .keys
                .iter()
                .map(|k| get_str(&report.agg.frame, k)[i].clone())
                .collect();
            out.warnings.push(format!("{}: {w}", keys.join(" / ")));
        }
    }
    let plots_dir = match (&args.plots, args.format, &args.output) {
        (Some(d), _, _) => Some(d.clone()),
        (None, ReportFormat::Html, Some(o)) => {
            let stem = o
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or("report".into());
            Some(o.with_file_name(format!("{stem}-plots")))
        }
        _ => None,
    };
    let plot_files = match (&plots_dir, &scores) {
        (Some(d), Some(s)) => make_plots(&report.runs, s, d)?,
        _ => Vec::new(),
    };
    for p in &plot_files {
        out.written.push(p.png_path.clone());
        out.written.push(p.svg_path.clone());
    }
    let (header, rows) = display_rows(&report);
    let text: Option<Vec<u8>> = match args.format {
        ReportFormat::Table => {
            let mut s = text_table(&header, &rows);
            for n in notes(&report) {
                s += &format!("{n}\n");
            }
            Some(s.into_bytes())
        }
        ReportFormat::Md => {
            let mut s = md_table(&header, &rows);
            s += "\n";
            for n in notes(&report) {
                s += &format!("{n}\n\n");
            }
            Some(s.into_bytes())
        }
        ReportFormat::Csv => {
            let mut buf = Vec::new();
            let mut df = report.agg.frame.clone();
            CsvWriter::new(&mut buf).finish(&mut df).map_err(pe)?;
            Some(buf)
        }
        ReportFormat::Parquet => {
            let mut buf = Vec::new();
            let mut df = report.agg.frame.clone();
            ParquetWriter::new(&mut buf).finish(&mut df).map_err(pe)?;
            Some(buf)
        }
        ReportFormat::Html => {
            let page = crate::report::html::page(
                &report,
                &header,
                &rows,
                &notes(&report),
                &plot_files,
                &args.run_dirs,
                args.output.as_deref(),
            );
            Some(page.into_bytes())
        }
        ReportFormat::NearOod => unreachable!("handled at the start"),
    };
    if let Some(bytes) = text {
        match &args.output {
            Some(p) => {
                write_out(p, &bytes)?;
                out.written.insert(0, p.clone());
            }
            None => out.stdout = String::from_utf8_lossy(&bytes).to_string(),
        }
    }
    Ok(out)
}
