//! The command-line layer: clap argument structs and their validation into the library's request
//! types (`args.request()`), shared by `oe-text` and `oe-vision`. Nothing in the library imports
//! this module; the binaries parse, call `request()`, run the library, and print.

pub mod cluster;
pub mod data;
pub mod report;
pub mod score;
pub mod text;
pub mod vision;

use crate::detect::{Detector, FeatureDetector};
use crate::device::DeviceSpec;
use crate::error::{OeError, Result};
use crate::eval::{EvalConfig, Protocol};
use crate::metrics::files::{MetricsRequest, TableFormat};
use crate::metrics::{FprRule, MetricsConfig, Positive};
use crate::text::data::TextOptions;
use clap::Args;
use std::path::PathBuf;

/// `--device` and `--threads`, on every command that computes.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to compute: auto (a GPU when one is usable), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// libtorch intra-op threads (0 = libtorch's default, all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    s.parse()
}

impl DeviceArgs {
    /// Sets libtorch's threads and resolves `--device`; the choice says which device and why
    /// (the binaries print it).
    pub fn select(&self) -> Result<crate::device::DeviceChoice> {
        crate::device::set_torch_threads(self.threads);
        crate::device::resolve(self.device)
    }
}

/// `oe-text metrics`: metrics from two files of anomaly scores.
#[derive(Args, Clone, Debug)]
pub struct MetricsArgs {
    /// In-distribution anomaly scores: one number per line, or a CSV file with --column.
    #[arg(long = "in", value_name = "FILE")]
    pub in_file: PathBuf,
    /// Out-of-distribution anomaly scores, same format.
    #[arg(long = "out", value_name = "FILE")]
    pub out_file: PathBuf,
    /// Read this column of CSV files (with a header row) instead of one number per line.
    #[arg(long)]
    pub column: Option<String>,
    /// TPR (recall of the positive class) at which FPR is reported.
    #[arg(long, default_value_t = 0.9)]
    pub tpr: f64,
    /// Positive class: ood (the paper's; AUPR-Out) or id (AUPR-In, scores negated).
    #[arg(long, value_enum, default_value_t = Positive::Ood)]
    pub positive: Positive,
    /// FPR threshold rule: closest (the paper's argmin |recall − level|) or at-least.
    #[arg(long, value_enum, default_value_t = FprRule::Closest)]
    pub fpr_rule: FprRule,
    /// The files hold normality scores (higher = more normal, e.g. raw max softmax): negate them.
    #[arg(long)]
    pub higher_is_normal: bool,
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
}

impl MetricsArgs {
    /// The validated request.
    pub fn request(&self) -> Result<MetricsRequest> {
        check_tpr(self.tpr)?;
        Ok(MetricsRequest {
            in_file: self.in_file.clone(),
            out_file: self.out_file.clone(),
            column: self.column.clone(),
            config: MetricsConfig {
                positive: self.positive,
                tpr: self.tpr,
                fpr_rule: self.fpr_rule,
            },
            higher_is_normal: self.higher_is_normal,
            format: self.format,
        })
    }
}

/// `--tpr` is a recall level in (0, 1].
pub(crate) fn check_tpr(tpr: f64) -> Result<()> {
    if !(tpr > 0.0 && tpr <= 1.0) {
        return Err(OeError::Config(format!(
            "--tpr must be in (0, 1], got {tpr}"
        )));
    }
    Ok(())
}

/// Whether this process is a Slurm job restarted after a requeue (`SLURM_RESTART_COUNT` > 0): such a
/// run resumes its checkpoint by itself, as if `--resume` were given.
pub fn restarted_by_slurm() -> bool {
    std::env::var("SLURM_RESTART_COUNT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Formats an error and its whole `source()` chain, one cause per line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = format!("error: {err}");
    let mut cur = err.source();
    while let Some(e) = cur {
        s += &format!("\n  caused by: {e}");
        cur = e.source();
    }
    s
}

/// The data-root flag alone (the vision wing).
#[derive(Args, Clone, Debug)]
pub struct DataDirArgs {
    /// Data root (default: $OE_DATA_DIR, then ~/.cache/oe/data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    pub fn root(&self) -> PathBuf {
        crate::datasets::resolve_data_root(self.data_dir.as_deref())
    }
}

/// Data-root and text-preprocessing flags.
#[derive(Args, Clone, Debug)]
pub struct DataRootArgs {
    /// Data root (default: $OE_DATA_DIR, then ~/.cache/oe/data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Lower-case in-distribution text (default: the paper's choice: SST cased, others lower-cased).
    #[arg(long)]
    pub lowercase: Option<bool>,
    /// Keep only the first N tokens of in-distribution texts (default: 100 for 20NG, else all).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Column of user CSV / JSON-lines files that holds the text (default: text); also for
    /// `--ood` files in CSV or JSON-lines.
    #[arg(long, value_name = "NAME")]
    pub text_column: Option<String>,
    /// Column of user datasets that holds the label (default: label).
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
}

impl DataRootArgs {
    pub fn root(&self) -> PathBuf {
        crate::datasets::resolve_data_root(self.data_dir.as_deref())
    }
    pub fn text(&self) -> TextOptions {
        TextOptions {
            lowercase: self.lowercase,
            max_tokens: self.max_tokens,
            text_column: self.text_column.clone(),
            label_column: self.label_column.clone(),
        }
    }
}

/// Evaluation flags, shared by `train` and `eval`.
#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// OOD sets, comma-separated: snli, imdb, multi30k, wmt16, yelp, ewt-answers, ...,
    /// clinc150-oos, or text files, each optionally as NAME=PATH for a short name in tables
    /// (default: the dataset's own out-of-scope set for clinc150, else every far-OOD set present
    /// under the data root).
    #[arg(long, value_delimiter = ',', value_name = "SETS")]
    pub ood: Option<Vec<String>>,
    /// paper: the reference's protocol and quirks; clean: seeded uniform draws, batch-independent
    /// scores; full: every test text against every OOD text, once (default: full for clinc150,
    /// else paper).
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// Anomaly score: msp, maxlogit, energy[:T], entropy, xent-uniform, or a detector stored in the
    /// model directory, fitted on the in-distribution training set (on first use) with the settings
    /// of `oe-text tune` when it ran: mahalanobis, rmd, knn, vim, react, odin.
    #[arg(long, default_value = "msp", value_parser = parse_detector)]
    pub score: Detector,
    /// OOD draws per set.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// In-distribution examples per OOD example (5: the paper's 1:5 OOD:ID).
    #[arg(long, default_value_t = 5)]
    pub id_per_ood: usize,
    /// Recall level for FPR (default: 0.95 for clinc150, the field's FPR95; else 0.9, the
    /// paper's FPR90).
    #[arg(long)]
    pub tpr: Option<f64>,
    /// A validation OOD set (e.g. clinc150-oos-val, or NAME=FILE): the evaluation also reports the
    /// threshold chosen on it and the dev split, and that threshold's test in-distribution
    /// accuracy and OOD recall (default: clinc150-oos-val for clinc150, else none).
    #[arg(long, value_name = "SET")]
    pub val_ood: Option<String>,
    #[arg(long, value_enum, default_value_t = FprRule::Closest)]
    pub fpr_rule: FprRule,
    /// Seed of the OOD draws.
    #[arg(long, default_value_t = 1)]
    pub eval_seed: u64,
    /// The same as --score NAME for a stored detector (kept for earlier command lines).
    #[arg(long, value_enum, conflicts_with = "score")]
    pub detector: Option<FeatureDetector>,
}

pub(crate) fn parse_detector(s: &str) -> std::result::Result<Detector, String> {
    s.parse()
}

impl EvalArgs {
    /// The validated settings for a model of `in_dataset` (its defaults: [`EvalArgs::protocol`],
    /// [`EvalArgs::tpr`], [`EvalArgs::val_ood`]).
    pub fn config(&self, in_dataset: Option<&str>) -> Result<EvalConfig> {
        let near = in_dataset.and_then(crate::text::data::validation_ood_for);
        let tpr = self.tpr.unwrap_or(if near.is_some() { 0.95 } else { 0.9 });
        check_tpr(tpr)?;
        if self.repeats == 0 || self.id_per_ood == 0 {
            return Err(OeError::Config(
                "--repeats and --id-per-ood must be positive".into(),
            ));
        }
        let protocol = self.protocol.unwrap_or(if near.is_some() {
            Protocol::Full
        } else {
            Protocol::Paper
        });
        Ok(EvalConfig {
            protocol,
            detector: self.detector.map_or(self.score, Detector::Feature),
            repeats: if protocol == Protocol::Full {
                1
            } else {
                self.repeats
            },
            id_per_ood: self.id_per_ood,
            tpr,
            fpr_rule: self.fpr_rule,
            batch_size: 64,
            seed: self.eval_seed,
            val_ood: self.val_ood.clone().or(near.map(str::to_string)),
        })
    }
}
