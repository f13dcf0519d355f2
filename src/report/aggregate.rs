//! Reading the results of many runs (polars lazy scans) and aggregating them over seeds and draws.
//!
//! Every `results.parquet` under the given directories is scanned; the rows (one per OOD set plus a
//! `mean` row, each already a mean and population standard deviation over the evaluation's draws)
//! are grouped by the chosen keys and the OOD set, and aggregated:
//!
//! - `*_mean`: the mean over all draws of all runs in the group (runs weighted by their draws);
//! - `*_std`: the population standard deviation over all draws of all runs (pooled from each run's
//!   mean and standard deviation; null for `mean` rows, whose draws are not stored per set);
//! - `*_seed_std`: the sample standard deviation of the runs' means (null with one run);
//! - `paper_*_pct` and `delta_*_pp`: the paper's number when the group has one, and ours minus it, in
//!   percentage points. `paper_comparable` says whether the group was made and evaluated like the
//!   paper (its GRU scored with MSP, baseline or uniform OE; paper protocol, 1:5 OOD:ID, FPR at 90%
//!   recall with the closest rule); other groups keep the paper's number as a reference point.
//!
//! A group that mixes protocols, OOD:ID ratios, models, scores, datasets or methods (the columns not
//! grouped by) gets a `warning`; a group whose `mean` rows average different OOD sets does too.

use crate::error::{OeError, Result};
use polars::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn pe<E: std::fmt::Display>(e: E) -> OeError {
    OeError::Data(format!("report: {e}"))
}

/// What `--by` can group on (besides the OOD set, always a key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum GroupKey {
    /// The in-distribution dataset.
    Dataset,
    /// baseline / oe / ...
    Method,
    /// The anomaly score (msp, ...).
    Score,
    /// The architecture (gru, transformer).
    Model,
    /// The evaluation protocol (paper, clean).
    Protocol,
    /// The OOD:ID ratio.
    Ratio,
    /// The training seed (no aggregation over seeds).
    Seed,
}

impl GroupKey {
    /// The results column it groups on.
    pub fn column(self) -> &'static str {
        match self {
            GroupKey::Dataset => "in_dataset",
            GroupKey::Method => "method",
            GroupKey::Score => "score",
            GroupKey::Model => "model",
            GroupKey::Protocol => "protocol",
            GroupKey::Ratio => "ratio",
            GroupKey::Seed => "seed",
        }
    }
}

/// Columns that must not vary silently inside a group.
const MIX_CHECKED: [&str; 6] = [
    "in_dataset",
    "method",
    "model",
    "score",
    "protocol",
    "ratio",
];

/// Every `results.parquet` under each directory (recursively), in sorted order, without duplicates.
/// A directory (or file argument) that yields none is an error naming it.
pub fn find_results(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(&p, out)?;
            } else if ft.is_file() && p.file_name().is_some_and(|n| n == "results.parquet") {
                out.push(p);
            }
        }
        Ok(())
    }
    if dirs.is_empty() {
        return Err(OeError::Config(
            "report: give at least one run directory".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    for d in dirs {
        let mut found = Vec::new();
        if d.is_file() && d.file_name().is_some_and(|n| n == "results.parquet") {
            found.push(d.clone());
        } else if d.is_dir() {
            walk(d, &mut found).map_err(|e| OeError::Io {
                path: d.clone(),
                source: e,
            })?;
        } else {
            return Err(OeError::Config(format!(
                "report: {}: no such run directory",
                d.display()
            )));
        }
        if found.is_empty() {
            return Err(OeError::Data(format!(
                "report: {}: no results found (expected */eval-<score>-<protocol>/results.parquet, \
                 as written by `oe-text train` or `oe-text eval`); was the run finished?",
                d.display()
            )));
        }
        for f in found {
            let canon = f.canonicalize().unwrap_or_else(|_| f.clone());
            if seen.insert(canon) {
                all.push(f);
            }
        }
    }
    Ok(all)
}

/// The FPR definition of a results table, parsed from its column name (`fpr90_closest_out_mean`).
#[derive(Clone, Debug, PartialEq)]
pub struct FprColumn {
    /// Without `_mean`: `fpr90_closest_out`.
    pub name: String,
    pub tpr: f64,
    pub rule: crate::metrics::FprRule,
}

impl FprColumn {
    pub fn parse(col: &str) -> Option<Self> {
        let name = col.strip_suffix("_mean")?;
        let rest = name.strip_prefix("fpr")?.strip_suffix("_out")?;
        let (level, rule) = rest.split_once('_')?;
        let tpr = level.parse::<f64>().ok()? / 100.0;
        let rule = match rule {
            "closest" => crate::metrics::FprRule::Closest,
            "atleast" => crate::metrics::FprRule::AtLeast,
            _ => return None,
        };
        Some(Self {
            name: name.to_string(),
            tpr,
            rule,
        })
    }

    /// Short label for tables: `FPR90`.
    pub fn label(&self) -> String {
        let level = self.tpr * 100.0;
        if level.fract() == 0.0 {
            format!("FPR{}", level as i64)
        } else {
            format!("FPR{level}")
        }
    }

    /// Whether this is one of the paper's FPR definitions: FPR90 (text) or FPR95 (vision), with
    /// the closest-recall rule.
    pub fn is_papers(&self) -> bool {
        self.name == "fpr90_closest_out" || self.name == "fpr95_closest_out"
    }

    /// The recall level in percent as written in column names (`90`, `95`, `99.5`).
    fn level(&self) -> String {
        crate::metrics::level_name(self.tpr)
    }

    /// The results column with the paper's FPR at this recall level (`paper_fpr90_pct`).
    pub fn paper_column(&self) -> String {
        format!("paper_fpr{}_pct", self.level())
    }

    /// The aggregated column with ours minus the paper's FPR (`delta_fpr90_pp`).
    pub fn delta_column(&self) -> String {
        format!("delta_fpr{}_pp", self.level())
    }
}

const REQUIRED: [&str; 16] = [
    "in_dataset",
    "method",
    "model",
    "score",
    "protocol",
    "ratio",
    "draws",
    "seed",
    "ood_set",
    "n_in",
    "n_ood",
    "in_accuracy",
    "auroc_mean",
    "auroc_std",
    "aupr_out_mean",
    "aupr_out_std",
];

fn scan(path: &Path) -> Result<LazyFrame> {
    let s = path
        .to_str()
        .ok_or_else(|| OeError::Config(format!("{}: path is not valid UTF-8", path.display())))?;
    LazyFrame::scan_parquet(PlRefPath::new(s), ScanArgsParquet::default())
        .map_err(|e| OeError::Data(format!("{}: {e}", path.display())))
}

/// Lazily scans results files into one frame with normalised columns: the FPR columns are renamed to
/// `fpr_mean`/`fpr_std`, numbers are `f64`, and `eval_dir` (the directory of the results file) is
/// added. Files with different FPR definitions cannot be mixed: that is an error naming them.
pub fn scan_results(files: &[PathBuf]) -> Result<(LazyFrame, FprColumn)> {
    let mut lfs = Vec::new();
    let mut fpr: Option<(FprColumn, PathBuf)> = None;
    for f in files {
        let mut lf = scan(f)?;
        let schema = lf
            .collect_schema()
            .map_err(|e| OeError::Data(format!("{}: {e}", f.display())))?;
        for c in REQUIRED {
            if schema.get(c).is_none() {
                return Err(OeError::Data(format!(
                    "{}: not a results table (no column `{c}`)",
                    f.display()
                )));
            }
        }
        let fc = schema
            .iter_names()
            .find_map(|n| FprColumn::parse(n.as_str()))
            .ok_or_else(|| OeError::Data(format!("{}: no fpr*_out_mean column", f.display())))?;
        match &fpr {
            None => fpr = Some((fc.clone(), f.clone())),
            Some((first, first_file)) if first.name != fc.name => {
                return Err(OeError::Data(format!(
                    "results with different FPR definitions cannot be aggregated together: {} has {}, {} has {}; report them separately",
                    first_file.display(),
                    first.name,
                    f.display(),
                    fc.name
                )))
            }
            _ => {}
        }
        let eval_dir = f.parent().unwrap_or(Path::new(".")).display().to_string();
        let paper = |c: &str| -> Expr {
            if schema.get(c).is_some() {
                col(c).cast(DataType::Float64)
            } else {
                lit(NULL).cast(DataType::Float64).alias(c)
            }
        };
        // The paper's FPR at the same recall level as ours (`paper_fpr90_pct` for text results,
        // `paper_fpr95_pct` for vision), and only for the paper's closest-recall rule.
        let paper_col = fc.paper_column();
        let paper_fpr =
            if fc.rule == crate::metrics::FprRule::Closest && schema.get(&paper_col).is_some() {
                col(paper_col.as_str())
                    .cast(DataType::Float64)
                    .alias("paper_fpr_pct")
            } else {
                lit(NULL).cast(DataType::Float64).alias("paper_fpr_pct")
            };
        let fm = format!("{}_mean", fc.name);
        let fs = format!("{}_std", fc.name);
        let selected = lf.select([
            col("in_dataset").cast(DataType::String),
            col("method").cast(DataType::String),
            col("model").cast(DataType::String),
            col("score").cast(DataType::String),
            col("protocol").cast(DataType::String),
            col("ratio").cast(DataType::String),
            col("draws").cast(DataType::Float64),
            col("seed").cast(DataType::UInt64),
            col("ood_set").cast(DataType::String),
            col("n_in").cast(DataType::UInt64),
            col("n_ood").cast(DataType::UInt64),
            col("in_accuracy").cast(DataType::Float64),
            col(fm.as_str()).cast(DataType::Float64).alias("fpr_mean"),
            col(fs.as_str()).cast(DataType::Float64).alias("fpr_std"),
            col("auroc_mean").cast(DataType::Float64),
            col("auroc_std").cast(DataType::Float64),
            col("aupr_out_mean").cast(DataType::Float64),
            col("aupr_out_std").cast(DataType::Float64),
            paper_fpr,
            paper("paper_auroc_pct"),
            paper("paper_aupr_out_pct"),
            lit(eval_dir).alias("eval_dir"),
        ]);
        // Read here, file by file (a results table is one row per OOD set), so that a corrupted
        // page is an error naming its file, not one of the concatenation.
        let df = selected
            .collect()
            .map_err(|e| OeError::Data(format!("{}: {e}", f.display())))?;
        lfs.push(df.lazy());
    }
    let (fc, _) = fpr.ok_or_else(|| OeError::Data("report: no results files".into()))?;
    let lf = concat(lfs, UnionArgs::default()).map_err(pe)?;
    Ok((lf, fc))
}

/// The aggregated table and what is needed to annotate it.
#[derive(Clone, Debug)]
pub struct Aggregated {
    /// One row per group and OOD set (the `mean` row last in each group).
    pub frame: DataFrame,
    /// Key columns, in `--by` order, then `ood_set`.
    pub keys: Vec<String>,
    pub fpr: FprColumn,
    /// Per row: the evaluation directories aggregated.
    pub eval_dirs: Vec<Vec<String>>,
    /// Per row: warnings (empty when none).
    pub warnings: Vec<String>,
}

fn metric_aggs(m: &str) -> Vec<Expr> {
    let d = || col("draws");
    let mean = format!("{m}_mean");
    let std = format!("{m}_std");
    let grand = (col(mean.as_str()) * d()).sum() / d().sum();
    let second =
        ((col(std.as_str()) * col(std.as_str()) + col(mean.as_str()) * col(mean.as_str())) * d())
            .sum()
            / d().sum();
    let var = second - grand.clone() * grand.clone();
    let var = when(var.clone().lt(lit(0.0))).then(lit(0.0)).otherwise(var);
    vec![
        grand.alias(mean.as_str()),
        var.sqrt().alias(std.as_str()),
        col(mean.as_str()).std(1).alias(format!("{m}_seed_std")),
    ]
}

fn paper_agg(c: &str) -> Expr {
    when(col(c).min().eq(col(c).max()))
        .then(col(c).min())
        .otherwise(lit(NULL).cast(DataType::Float64))
        .alias(c)
}

fn str_list(df: &DataFrame, name: &str) -> Result<Vec<Vec<String>>> {
    let ca = df.column(name).map_err(pe)?.list().map_err(pe)?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..ca.len() {
        let mut v = Vec::new();
        if let Some(s) = ca.get_as_series(i) {
            let s = s.cast(&DataType::String).map_err(pe)?;
            for x in s.str().map_err(pe)?.iter().flatten() {
                v.push(x.to_string());
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// Scans and aggregates `files` grouped by `by` (and the OOD set).
pub fn aggregate(files: &[PathBuf], by: &[GroupKey]) -> Result<Aggregated> {
    let (lf, fpr) = scan_results(files)?;
    let mut keys: Vec<String> = Vec::new();
    for k in by {
        let c = k.column().to_string();
        if !keys.contains(&c) {
            keys.push(c);
        }
    }
    keys.push("ood_set".into());
    let key_exprs: Vec<Expr> = keys.iter().map(|k| col(k.as_str())).collect();

    // Per evaluation: its OOD sets (for the `mean` rows), protocol and ratio.
    let info_df = lf
        .clone()
        .group_by([col("eval_dir")])
        .agg([
            col("ood_set")
                .filter(col("ood_set").neq(lit("mean")))
                .unique()
                .sort(Default::default())
                .alias("sets"),
            col("protocol").first(),
            col("ratio").first(),
            col("method").first(),
            col("score").first(),
            col("model").first(),
        ])
        .collect()
        .map_err(pe)?;
    let info_dirs = str_col(&info_df, "eval_dir")?;
    let info_sets = str_list(&info_df, "sets")?;
    let info_proto = str_col(&info_df, "protocol")?;
    let info_ratio = str_col(&info_df, "ratio")?;
    let info_method = str_col(&info_df, "method")?;
    let info_score = str_col(&info_df, "score")?;
    let info_model = str_col(&info_df, "model")?;
    let info: BTreeMap<String, EvalInfo> = (0..info_dirs.len())
        .map(|i| {
            (
                info_dirs[i].clone(),
                EvalInfo {
                    sets: info_sets[i].clone(),
                    protocol: info_proto[i].clone(),
                    ratio: info_ratio[i].clone(),
                    like_paper_model: (info_model[i] == "gru" || info_model[i].starts_with("wrn-"))
                        && info_score[i] == "msp"
                        && matches!(info_method[i].as_str(), "baseline" | "oe"),
                },
            )
        })
        .collect();

    let mut aggs: Vec<Expr> = vec![
        len().cast(DataType::UInt64).alias("runs"),
        col("seed")
            .n_unique()
            .cast(DataType::UInt64)
            .alias("distinct_seeds"),
        col("draws").sum().alias("draws_total"),
        col("n_in").mean().alias("n_in"),
        col("n_ood").mean().alias("n_ood"),
        col("in_accuracy").mean().alias("in_accuracy"),
    ];
    for m in ["fpr", "auroc", "aupr_out"] {
        aggs.extend(metric_aggs(m));
    }
    for p in ["paper_fpr_pct", "paper_auroc_pct", "paper_aupr_out_pct"] {
        aggs.push(paper_agg(p));
    }
    aggs.push(
        col("seed")
            .unique()
            .sort(Default::default())
            .alias("seeds_list"),
    );
    aggs.push(
        col("eval_dir")
            .unique()
            .sort(Default::default())
            .alias("eval_dirs_list"),
    );
    for c in MIX_CHECKED {
        if !keys.iter().any(|k| k == c) {
            aggs.push(
                col(c)
                    .unique()
                    .sort(Default::default())
                    .alias(format!("{c}_values")),
            );
        }
    }
    let mut sort_by = key_exprs.clone();
    sort_by.pop();
    sort_by.push(col("ood_set").eq(lit("mean")));
    sort_by.push(col("ood_set"));
    let is_mean = col("ood_set").eq(lit("mean"));
    let null_if_mean = |c: &str| {
        when(is_mean.clone())
            .then(lit(NULL).cast(DataType::Float64))
            .otherwise(col(c))
            .alias(c)
    };
    let mut df = lf
        .group_by(key_exprs)
        .agg(aggs)
        .with_columns([
            null_if_mean("fpr_std"),
            null_if_mean("auroc_std"),
            null_if_mean("aupr_out_std"),
        ])
        .sort_by_exprs(sort_by, SortMultipleOptions::default())
        .collect()
        .map_err(pe)?;

    // Warnings: mixed values of columns not grouped on, mean rows over different sets, repeated seeds.
    let n = df.height();
    let mut warnings = vec![Vec::<String>::new(); n];
    for c in MIX_CHECKED {
        let name = format!("{c}_values");
        if df.column(&name).is_ok() {
            for (i, vals) in str_list(&df, &name)?.into_iter().enumerate() {
                if vals.len() > 1 {
                    warnings[i].push(format!("mixes {c}: {}", vals.join(", ")));
                }
            }
            df = df.drop(&name).map_err(pe)?;
        }
    }
    let eval_dirs = str_list(&df, "eval_dirs_list")?;
    let seeds = str_list(&df, "seeds_list")?;
    let ood = str_col(&df, "ood_set")?;
    let runs: Vec<u64> = df
        .column("runs")
        .map_err(pe)?
        .u64()
        .map_err(pe)?
        .iter()
        .map(|x| x.unwrap_or(0))
        .collect();
    for i in 0..n {
        if ood[i] == "mean" {
            let lists: BTreeSet<&Vec<String>> = eval_dirs[i]
                .iter()
                .filter_map(|d| info.get(d).map(|e| &e.sets))
                .collect();
            if lists.len() > 1 {
                warnings[i].push("mean rows average different OOD sets".into());
            }
        }
        if runs[i] as usize > seeds[i].len() && !keys.iter().any(|k| k == "seed") {
            warnings[i].push(format!(
                "{} runs but {} distinct seeds",
                runs[i],
                seeds[i].len()
            ));
        }
    }
    let warnings: Vec<String> = warnings.into_iter().map(|w| w.join("; ")).collect();
    // Comparable with the paper: every evaluation in the group used its protocol, ratio and FPR.
    let comparable: Vec<bool> = eval_dirs
        .iter()
        .map(|ds| {
            fpr.is_papers()
                && ds.iter().all(|d| {
                    info.get(d).is_some_and(|e| {
                        e.protocol == "paper" && e.ratio == "1:5" && e.like_paper_model
                    })
                })
        })
        .collect();

    let seeds_str: Vec<String> = seeds.iter().map(|s| s.join(",")).collect();
    let dirs_str: Vec<String> = eval_dirs.iter().map(|s| s.join(";")).collect();
    df = df
        .drop("seeds_list")
        .map_err(pe)?
        .drop("eval_dirs_list")
        .map_err(pe)?;
    df.with_column(Column::new("seeds".into(), seeds_str))
        .map_err(pe)?;
    df.with_column(Column::new("paper_comparable".into(), comparable))
        .map_err(pe)?;
    df.with_column(Column::new("warning".into(), warnings.clone()))
        .map_err(pe)?;
    df.with_column(Column::new("eval_dirs".into(), dirs_str))
        .map_err(pe)?;
    let mut df = df
        .lazy()
        .with_columns([
            (col("fpr_mean") * lit(100.0) - col("paper_fpr_pct")).alias("delta_fpr_pp"),
            (col("auroc_mean") * lit(100.0) - col("paper_auroc_pct")).alias("delta_auroc_pp"),
            (col("aupr_out_mean") * lit(100.0) - col("paper_aupr_out_pct"))
                .alias("delta_aupr_out_pp"),
        ])
        .collect()
        .map_err(pe)?;
    // Name the paper's FPR and its delta after the recall level (`paper_fpr90_pct`,
    // `delta_fpr90_pp`), and the FPR columns after their definition, as in the per-run results.
    df.rename("paper_fpr_pct", fpr.paper_column().into())
        .map_err(pe)?;
    df.rename("delta_fpr_pp", fpr.delta_column().into())
        .map_err(pe)?;
    let fname = fpr.name.clone();
    for suffix in ["mean", "std", "seed_std"] {
        df.rename(&format!("fpr_{suffix}"), format!("{fname}_{suffix}").into())
            .map_err(pe)?;
    }
    Ok(Aggregated {
        frame: df,
        keys,
        fpr,
        eval_dirs,
        warnings,
    })
}

struct EvalInfo {
    sets: Vec<String>,
    protocol: String,
    ratio: String,
    /// The paper's setting: its GRU (text) or a Wide ResNet (vision), scored with MSP, as a
    /// baseline or with the uniform OE loss.
    like_paper_model: bool,
}

fn str_col(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(df
        .column(name)
        .map_err(pe)?
        .str()
        .map_err(pe)?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

/// One evaluation found by [`find_results`]: where it is and what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRun {
    pub eval_dir: String,
    pub in_dataset: String,
    pub method: String,
    pub model: String,
    pub score: String,
    pub protocol: String,
    pub ratio: String,
    pub seed: u64,
}

impl EvalRun {
    /// The run's directory name (the parent of `eval-*`), e.g. `baseline` or `ref-sst-oe`.
    pub fn run_name(&self) -> String {
        let p = Path::new(&self.eval_dir);
        p.parent()
            .and_then(|q| q.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| self.eval_dir.clone())
    }
}

/// The evaluations in `files`, in `eval_dir` order.
pub fn eval_runs(files: &[PathBuf]) -> Result<Vec<EvalRun>> {
    let (lf, _) = scan_results(files)?;
    let cols = [
        "in_dataset",
        "method",
        "model",
        "score",
        "protocol",
        "ratio",
    ];
    let mut aggs: Vec<Expr> = cols.iter().map(|c| col(*c).first()).collect();
    aggs.push(col("seed").first());
    let df = lf
        .group_by([col("eval_dir")])
        .agg(aggs)
        .sort(["eval_dir"], SortMultipleOptions::default())
        .collect()
        .map_err(pe)?;
    let dirs = str_col(&df, "eval_dir")?;
    let vals: Vec<Vec<String>> = cols
        .iter()
        .map(|c| str_col(&df, c))
        .collect::<Result<_>>()?;
    let seeds: Vec<u64> = df
        .column("seed")
        .map_err(pe)?
        .u64()
        .map_err(pe)?
        .iter()
        .map(|x| x.unwrap_or(0))
        .collect();
    Ok((0..dirs.len())
        .map(|i| EvalRun {
            eval_dir: dirs[i].clone(),
            in_dataset: vals[0][i].clone(),
            method: vals[1][i].clone(),
            model: vals[2][i].clone(),
            score: vals[3][i].clone(),
            protocol: vals[4][i].clone(),
            ratio: vals[5][i].clone(),
            seed: seeds[i],
        })
        .collect())
}

/// Reads `<eval_dir>/scores.parquet` (columns `set`, `draw`, `index`, `score`; `set` = `in` for the
/// in-distribution test set) into ID scores and per-OOD-set pools of distinct scored examples.
pub fn load_scores(eval_dir: &Path) -> Result<crate::report::bootstrap::EvalScores> {
    use crate::report::bootstrap::{EvalScores, OodPool};
    let path = eval_dir.join("scores.parquet");
    if !path.is_file() {
        return Err(OeError::Data(format!(
            "{}: missing (per-example scores are needed for intervals and plots)",
            path.display()
        )));
    }
    let df = scan(&path)?
        .select([
            col("set").cast(DataType::String),
            col("draw").cast(DataType::Int64),
            col("index").cast(DataType::UInt64),
            col("score").cast(DataType::Float64),
        ])
        .collect()
        .map_err(|e| OeError::Data(format!("{}: {e}", path.display())))?;
    let set = df.column("set").map_err(pe)?.str().map_err(pe)?.clone();
    let draw = df.column("draw").map_err(pe)?.i64().map_err(pe)?.clone();
    let index = df.column("index").map_err(pe)?.u64().map_err(pe)?.clone();
    let score = df.column("score").map_err(pe)?.f64().map_err(pe)?.clone();
    let mut in_scores = Vec::new();
    // Per set: index → score over all draws, examples per draw, and draw 0's scores.
    type Pool = (BTreeMap<u64, f64>, BTreeMap<i64, usize>, Vec<f64>);
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    for i in 0..df.height() {
        let (Some(s), Some(d), Some(ix), Some(v)) =
            (set.get(i), draw.get(i), index.get(i), score.get(i))
        else {
            return Err(OeError::Data(format!(
                "{}: null in row {i}",
                path.display()
            )));
        };
        if s == "in" {
            in_scores.push(v);
        } else {
            let e = pools.entry(s.to_string()).or_default();
            e.0.insert(ix, v);
            *e.1.entry(d).or_default() += 1;
            if d == 0 {
                e.2.push(v);
            }
        }
    }
    if in_scores.is_empty() {
        return Err(OeError::Data(format!(
            "{}: no in-distribution scores (set = \"in\")",
            path.display()
        )));
    }
    let sets = pools
        .into_iter()
        .map(|(name, (by_index, per_draw, first))| {
            let per_draw_n = per_draw
                .get(&0)
                .copied()
                .unwrap_or_else(|| per_draw.values().copied().next().unwrap_or(by_index.len()));
            let first_draw = if first.is_empty() {
                by_index.values().copied().collect()
            } else {
                first
            };
            OodPool {
                name,
                scores: by_index.into_values().collect(),
                per_draw: per_draw_n,
                first_draw,
            }
        })
        .collect();
    Ok(EvalScores { in_scores, sets })
}
