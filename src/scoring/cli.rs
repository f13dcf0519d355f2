//! Flags of `oe-text score` and `oe-text calibrate`, and the commands themselves.

use super::calibrate::{self, Calibration, SplitChoice};
use super::input::{self, InputFormat, InputOptions, OnBadRecord, OnEmpty, OnInvalidUtf8, OnLong};
use super::output::{self, OutputFormat};
use super::{ScoreOptions, ScoreSummary};
use crate::cli::DeviceArgs;
use crate::error::{OeError, Result};
use crate::pipeline::LoadedModel;
use crate::score::Score;
use clap::Args;
use std::path::PathBuf;

fn parse_score(s: &str) -> std::result::Result<Score, String> {
    s.parse()
}

/// `--threshold auto|X`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThresholdArg {
    /// The threshold stored by `oe-text calibrate` (or training) for the score.
    Auto,
    Value(f64),
}

fn parse_threshold(s: &str) -> std::result::Result<ThresholdArg, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(ThresholdArg::Auto);
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(ThresholdArg::Value)
        .ok_or_else(|| format!("--threshold takes `auto` or a number, got `{s}`"))
}

/// `oe-text score`. On the CPU, `--threads 0` (the default) gives libtorch half the cores
/// ([`default_score_threads`]).
#[derive(Args, Clone, Debug)]
pub struct ScoreArgs {
    /// A model directory written by `oe-text train` (its baseline/ or oe/ folder).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Inputs: text files (one text per line), .gz files, CSV / JSON-lines files (text in --column),
    /// directories (recursively; names starting with `.` left out) or `-` for standard input (default).
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Anomaly score: msp, maxlogit, energy[:T], entropy, xent-uniform (higher = more anomalous).
    #[arg(long, default_value = "msp", value_parser = parse_score)]
    pub score: Score,
    /// Flag texts with score > threshold as OOD (`is_ood` column): `auto` (the threshold stored by
    /// `oe-text calibrate` for this score) or a number.
    #[arg(long, value_parser = parse_threshold, allow_hyphen_values = true)]
    pub threshold: Option<ThresholdArg>,
    /// Output file, written atomically (default: standard output).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format (default: from --output's extension, else tsv).
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// How input files are read (auto: by extension; standard input: lines).
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub input_format: InputFormat,
    /// Text column of CSV / JSON-lines input (default: text).
    #[arg(long)]
    pub column: Option<String>,
    /// Invalid UTF-8: fail (error naming file and line), skip, or replace (U+FFFD) and score.
    #[arg(long, value_enum, default_value_t = OnInvalidUtf8::Fail)]
    pub on_invalid_utf8: OnInvalidUtf8,
    /// CSV rows without the column, unreadable CSV rows, malformed JSON lines: fail or skip.
    #[arg(long, value_enum, default_value_t = OnBadRecord::Fail)]
    pub on_bad_record: OnBadRecord,
    /// Empty (white-space only) texts: skip, score (as a text of no tokens) or fail.
    #[arg(long, value_enum, default_value_t = OnEmpty::Skip)]
    pub on_empty: OnEmpty,
    /// Texts longer than the model's maximum tokens or --max-line-bytes: truncate, skip or fail.
    #[arg(long, value_enum, default_value_t = OnLong::Truncate)]
    pub on_long: OnLong,
    /// Longest line (or CSV field) read, in bytes; the rest is discarded while reading (bounds memory).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_line_bytes: usize,
    /// Rows of a batch of short texts.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Largest number of texts read but not yet written (the reorder buffer).
    #[arg(long, default_value_t = 65_536)]
    pub max_pending: usize,
    /// No summary on standard error.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ScoreArgs {
    pub fn input_options(&self) -> Result<InputOptions> {
        if self.max_line_bytes == 0 {
            return Err(OeError::Config("--max-line-bytes must be positive".into()));
        }
        Ok(InputOptions {
            format: self.input_format,
            column: self.column.clone(),
            max_line_bytes: self.max_line_bytes,
            on_invalid_utf8: self.on_invalid_utf8,
            on_bad_record: self.on_bad_record,
            on_empty: self.on_empty,
            on_long: self.on_long,
        })
    }

    pub fn output_format(&self) -> OutputFormat {
        self.format.unwrap_or_else(|| match &self.output {
            Some(p) => OutputFormat::from_path(p),
            None => OutputFormat::Tsv,
        })
    }
}

/// Resolves `--threshold` for a model and score.
pub fn resolve_threshold(
    m: &LoadedModel,
    score: &Score,
    t: Option<ThresholdArg>,
) -> Result<Option<(f64, Option<Calibration>)>> {
    Ok(match t {
        None => None,
        Some(ThresholdArg::Value(v)) => Some((v, None)),
        Some(ThresholdArg::Auto) => {
            let c = calibrate::load(&m.dir, score)?;
            Some((c.threshold, Some(c)))
        }
    })
}

/// libtorch intra-op threads for scoring on the CPU when `--threads` is 0: half the cores (at least
/// one), leaving the rest to the reader and the tokeniser. On 2 cores, libtorch's default (2 threads
/// competing with the reader) measured 12x slower than 1 thread.
pub fn default_score_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Runs `oe-text score` on a loaded model; the summary goes to standard error unless `--quiet`.
pub fn run_score(args: &ScoreArgs, m: &LoadedModel) -> Result<ScoreSummary> {
    if args.batch_size == 0 || args.max_pending == 0 {
        return Err(OeError::Config(
            "--batch-size and --max-pending must be positive".into(),
        ));
    }
    if args.device.threads == 0 && m.vs.device() == tch::Device::Cpu {
        tch::set_num_threads(default_score_threads() as i32);
    }
    let in_opts = args.input_options()?;
    let inputs = if args.inputs.is_empty() {
        vec![PathBuf::from(input::STDIN)]
    } else {
        input::expand_inputs(&args.inputs)?
    };
    if inputs
        .iter()
        .filter(|p| p.as_os_str() == input::STDIN)
        .count()
        > 1
    {
        return Err(OeError::Config("standard input (`-`) given twice".into()));
    }
    let threshold = resolve_threshold(m, &args.score, args.threshold)?;
    if let (Some((t, Some(c))), false) = (&threshold, args.quiet) {
        eprintln!(
            "threshold {t} for {} from {} ({} validation texts, {:.1}% kept; {})",
            c.score,
            calibrate::paths(&m.dir, &c.score).0.display(),
            c.n_validation,
            c.kept_fraction * 100.0,
            c.split
        );
    }
    let opts = ScoreOptions {
        score: args.score,
        threshold: threshold.map(|t| t.0),
        max_batch_rows: args.batch_size,
        max_pending: args.max_pending,
        ..Default::default()
    };
    let mut writer = output::open_writer(
        args.output.as_deref(),
        args.output_format(),
        opts.threshold.is_some(),
    )?;
    let summary = super::score_stream(m, &inputs, &in_opts, &opts, writer.as_mut())?;
    if !args.quiet {
        eprintln!("{}", summary.render());
        if let Some(p) = &args.output {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(summary)
}

/// `oe-text calibrate`.
#[derive(Args, Clone, Debug)]
pub struct CalibrateArgs {
    /// A model directory written by `oe-text train`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Fraction of in-distribution validation texts to keep (not flag).
    #[arg(long, default_value_t = 0.95)]
    pub tpr: f64,
    /// Anomaly score the threshold is for.
    #[arg(long, default_value = "msp", value_parser = parse_score)]
    pub score: Score,
    /// Validation split: auto (the hold-out recorded at training, else the dev split), holdout, dev,
    /// or test (not independent of the evaluation).
    #[arg(long, value_enum, default_value_t = SplitChoice::Auto)]
    pub split: SplitChoice,
    /// Data root (default: the one recorded in run.json).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs `oe-text calibrate` on a loaded model; returns the calibration and a one-line description.
pub fn run_calibrate(args: &CalibrateArgs, m: &LoadedModel) -> Result<(Calibration, String)> {
    let val = calibrate::validation_texts(m, args.data_dir.as_deref(), args.split)?;
    let c = calibrate::calibrate(m, &val, args.score, args.tpr)?;
    let (j, t) = calibrate::paths(&m.dir, &args.score);
    let line = format!(
        "{}: threshold {} keeps {:.2}% of {} validation texts ({}; target {:.2}%); flag score > threshold\nwrote {} and {}",
        c.score,
        c.threshold,
        c.kept_fraction * 100.0,
        c.n_validation,
        c.note,
        c.tpr * 100.0,
        j.display(),
        t.display()
    );
    Ok((c, line))
}
