//! The near-OOD benchmark table (`oe-text report --format near-ood`): what intent-detection papers
//! report on CLINC150, per model × training × detector, over training seeds.
//!
//! Every evaluation directory under the given run directories (`eval-<score>-<protocol>/` with its
//! `results.csv`/`results.parquet` and `report.json`, in a model directory with a `run.json`) is one
//! observation. They are grouped by
//! model, training (baseline, or OE with its outlier corpus), detector, protocol and OOD set; each
//! cell is the mean ± sample standard deviation over the group's seeds, with their range in the
//! CSV. Columns: in-distribution test accuracy, AUROC, FPR at the evaluation's recall level,
//! AUPR-In and AUPR-Out (all OOD-positive except AUPR-In), and, when the evaluation had a
//! validation OOD set, the in-distribution accuracy and OOD recall at the threshold chosen on
//! validation.

use crate::error::{OeError, Result};
use crate::eval::EvalReport;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Mean, sample standard deviation (NaN for one value), minimum and maximum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Self> {
        if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            f64::NAN
        };
        Some(Self {
            mean,
            std,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One group of the table.
#[derive(Clone, Debug)]
pub struct NearOodRow {
    pub model: String,
    /// `baseline`, or `oe (<corpus>)`.
    pub training: String,
    pub detector: String,
    pub protocol: String,
    pub ood_set: String,
    /// The FPR column's name (`fpr95_closest_out`).
    pub fpr_name: String,
    pub seeds: Vec<u64>,
    pub in_accuracy: Option<Stat>,
    pub auroc: Option<Stat>,
    pub fpr: Option<Stat>,
    pub aupr_in: Option<Stat>,
    pub aupr_out: Option<Stat>,
    pub op_in_accuracy: Option<Stat>,
    pub op_ood_recall: Option<Stat>,
}

/// The model, method and seed of an evaluation, from the `results.csv` it wrote (the results
/// schema both wings share: `model`, `method`, `seed` columns, one value per file).
fn run_meta(results_csv: &Path) -> Result<(String, String, u64)> {
    let bad = |m: String| OeError::parse(results_csv, 1, m);
    let mut rd = csv::Reader::from_path(results_csv).map_err(|e| bad(e.to_string()))?;
    let header = rd.headers().map_err(|e| bad(e.to_string()))?.clone();
    let row = rd
        .records()
        .next()
        .ok_or_else(|| bad("no rows".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let col = |name: &str| -> Result<String> {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| row.get(i))
            .map(str::to_string)
            .ok_or_else(|| bad(format!("no column `{name}`")))
    };
    let seed = col("seed")?;
    let seed = seed
        .parse()
        .map_err(|_| bad(format!("seed `{seed}` is not a number")))?;
    Ok((col("model")?, col("method")?, seed))
}

/// (model, training, detector, protocol, OOD set, FPR column).
type Key = (String, String, String, String, String, String);
/// One evaluation of a group: (seed, in-distribution accuracy, the set's results, the operating
/// point's (in-distribution accuracy, OOD recall)).
type Obs = (u64, f64, crate::eval::SetResult, Option<(f64, f64)>);

/// The rows for every evaluation under `dirs` (OOD sets named in `only`, when given).
pub fn rows(dirs: &[PathBuf], only: Option<&str>) -> Result<Vec<NearOodRow>> {
    let mut groups: BTreeMap<Key, Vec<Obs>> = BTreeMap::new();
    for results in crate::report::aggregate::find_results(dirs)? {
        let e = results.parent().unwrap_or(Path::new("."));
        let model_dir = e.parent().unwrap_or(Path::new("."));
        let (model, method, seed) = run_meta(&e.join("results.csv"))?;
        let path = e.join("report.json");
        let bytes = std::fs::read(&path).map_err(|x| OeError::io(&path, x))?;
        // `report.json` is the evaluation report, with a `calibration` object beside its fields.
        let r: EvalReport = serde_json::from_slice(&bytes)
            .map_err(|x| OeError::parse(&path, x.line(), x.to_string()))?;
        // The outlier corpus of an OE model, by file name (`run.json`'s `oe_corpus`).
        let run: serde_json::Value = crate::rundir::read_run(model_dir, "oe-text train")?;
        let training = match run.get("oe_corpus").and_then(|c| c.as_str()) {
            Some(c) if method != "baseline" => {
                let c = Path::new(c)
                    .file_name()
                    .map_or_else(|| c.to_string(), |f| f.to_string_lossy().to_string());
                format!("{method} ({c})")
            }
            _ => method.clone(),
        };
        for s in &r.sets {
            if only.is_some_and(|o| o != s.ood_set) {
                continue;
            }
            let op = r.operating_point.as_ref().and_then(|op| {
                op.test_ood_recall
                    .iter()
                    .find(|(n, _)| *n == s.ood_set)
                    .map(|(_, rec)| (op.test_in_accuracy, *rec))
            });
            groups
                .entry((
                    model.clone(),
                    training.clone(),
                    r.config.score_name(),
                    r.config.protocol.name().to_string(),
                    s.ood_set.clone(),
                    r.config.fpr_column(),
                ))
                .or_default()
                .push((seed, r.in_accuracy, s.clone(), op));
        }
    }
    Ok(groups
        .into_iter()
        .map(
            |((model, training, detector, protocol, ood_set, fpr_name), v)| {
                let col = |f: &dyn Fn(&Obs) -> Option<f64>| {
                    let xs: Vec<f64> = v.iter().filter_map(f).collect();
                    if xs.len() == v.len() {
                        Stat::of(&xs)
                    } else {
                        None
                    }
                };
                NearOodRow {
                    seeds: v.iter().map(|x| x.0).collect(),
                    in_accuracy: col(&|x| Some(x.1)),
                    auroc: col(&|x| Some(x.2.auroc.mean)),
                    fpr: col(&|x| Some(x.2.fpr.mean)),
                    // Reports written before AUPR-In existed hold zeros (a real AUPR-In is at least the
                    // share of in-distribution texts).
                    aupr_in: col(&|x| (x.2.aupr_in.mean > 0.0).then_some(x.2.aupr_in.mean)),
                    aupr_out: col(&|x| Some(x.2.aupr_out.mean)),
                    op_in_accuracy: col(&|x| x.3.map(|o| o.0)),
                    op_ood_recall: col(&|x| x.3.map(|o| o.1)),
                    model,
                    training,
                    detector,
                    protocol,
                    ood_set,
                    fpr_name,
                }
            },
        )
        .collect())
}

/// The CSV names of [`NearOodRow::stats`], in table order.
pub const STAT_NAMES: [&str; 7] = [
    "in_accuracy",
    "auroc",
    "fpr",
    "aupr_in",
    "aupr_out",
    "op_in_accuracy",
    "op_ood_recall",
];

impl NearOodRow {
    /// The statistics in table order ([`STAT_NAMES`]).
    pub fn stats(&self) -> [&Option<Stat>; 7] {
        [
            &self.in_accuracy,
            &self.auroc,
            &self.fpr,
            &self.aupr_in,
            &self.aupr_out,
            &self.op_in_accuracy,
            &self.op_ood_recall,
        ]
    }
}

fn cell(s: &Option<Stat>) -> String {
    match s {
        Some(s) if s.std.is_finite() => format!("{:.1} ± {:.1}", s.mean * 100.0, s.std * 100.0),
        Some(s) => format!("{:.1}", s.mean * 100.0),
        None => "-".to_string(),
    }
}

/// The Markdown table (percent, mean ± sample standard deviation over seeds).
pub fn markdown(rows: &[NearOodRow]) -> String {
    let names: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.fpr_name.as_str()).collect();
    let fpr = match names.iter().next() {
        Some(n) if names.len() == 1 => n.split('_').next().unwrap_or("fpr").to_uppercase(),
        _ => "FPR (see CSV for its level)".to_string(),
    };
    let mut s = format!(
        "| model | training | detector | OOD set | ID acc. | AUROC ↑ | {fpr} ↓ | AUPR-In ↑ | AUPR-Out ↑ | ID acc. @ val. thr. | OOD recall @ val. thr. | seeds |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let cells: Vec<String> = r.stats().into_iter().map(cell).collect();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.model,
            r.training,
            r.detector,
            r.ood_set,
            cells.join(" | "),
            r.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    s
}

/// The CSV: every statistic of every cell (fractions, not percent).
pub fn csv(rows: &[NearOodRow]) -> String {
    let mut s = String::from("model,training,detector,protocol,ood_set,fpr_name,seeds");
    for st in STAT_NAMES {
        s += &format!(",{st}_mean,{st}_std,{st}_min,{st}_max");
    }
    s += "\n";
    for r in rows {
        let seeds = r
            .seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        for (i, f) in [
            &r.model,
            &r.training,
            &r.detector,
            &r.protocol,
            &r.ood_set,
            &r.fpr_name,
            &seeds,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                s.push(',');
            }
            crate::io::csv_field(f, &mut s);
        }
        for st in r.stats() {
            match st {
                Some(x) => s += &format!(",{},{},{},{}", x.mean, x.std, x.min, x.max),
                None => s += ",,,,",
            }
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_mean_sample_std_and_range() {
        // mean 2, sample variance ((1)^2 + 0 + 1^2) / 2 = 1.
        let s = Stat::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.min, s.max), (2.0, 1.0, 1.0, 3.0));
        assert!(Stat::of(&[0.5]).unwrap().std.is_nan());
        assert!(Stat::of(&[]).is_none() && Stat::of(&[f64::NAN]).is_none());
        assert_eq!(cell(&Stat::of(&[0.9, 0.92])), "91.0 ± 1.4");
        assert_eq!(cell(&Stat::of(&[0.9])), "90.0");
    }
}
