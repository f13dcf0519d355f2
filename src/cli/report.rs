//! Flags of `oe-text report`.

use crate::report::command::ReportFormat;
use crate::report::ReportRequest;
use clap::Args;
use std::path::PathBuf;

/// `oe-text report`: aggregates the results of any number of runs.
#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// Run directories (or model/eval directories), searched recursively for results.parquet.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub run_dirs: Vec<PathBuf>,
    /// Group by these (comma-separated; the OOD set is always a key): dataset, method, score, model,
    /// protocol, ratio, seed. Columns not grouped by that vary inside a group are flagged in `warning`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "dataset,method,score"
    )]
    pub by: Vec<crate::report::aggregate::GroupKey>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Write the report here instead of standard output (required for parquet and html).
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Bootstrap resamples for confidence intervals (0: no intervals).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    /// Write ROC, PR and histogram plots (PNG and SVG) into this directory (html: default
    /// <output stem>-plots next to the page).
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Fail instead of flagging groups that mix protocols, ratios, models, scores, datasets or methods.
    #[arg(long)]
    pub strict: bool,
}

impl ReportArgs {
    /// The request (checks of combinations happen in the library, with the same messages).
    pub fn request(&self) -> ReportRequest {
        ReportRequest {
            run_dirs: self.run_dirs.clone(),
            by: self.by.clone(),
            format: self.format,
            output: self.output.clone(),
            bootstrap: self.bootstrap,
            seed: self.seed,
            level: self.level,
            plots: self.plots.clone(),
            strict: self.strict,
        }
    }
}
