//! Flags of `oe-text score` and `oe-text calibrate`.

//! (Only flags and their validation: the commands are [`crate::text::score::run_score`] and
//! [`crate::text::calibrate::run_calibrate`].)

use crate::cli::DeviceArgs;
use crate::detect::score::Score;
use crate::error::{OeError, Result};
use crate::text::calibrate::{CalibrateRequest, SplitChoice};
use crate::text::pipeline::{PDecision, ScoreRequest, Threshold};
use crate::text::score::input::{
    InputFormat, InputOptions, OnBadRecord, OnEmpty, OnInvalidUtf8, OnLong,
};
use crate::text::score::output::OutputFormat;
use clap::Args;
use std::path::PathBuf;

fn parse_score(s: &str) -> std::result::Result<Score, String> {
    s.parse()
}

/// A level (`--alpha`, `--fdr`) in (0, 1).
fn check_level(flag: &str, v: f64) -> Result<()> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(OeError::Config(format!(
            "{flag} must be in (0, 1), got {v}"
        )))
    }
}

fn parse_threshold(s: &str) -> std::result::Result<Threshold, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Threshold::Auto);
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(Threshold::Value)
        .ok_or_else(|| format!("--threshold takes `auto` or a number, got `{s}`"))
}

/// `oe-text score`. On the CPU, `--threads 0` (the default) gives libtorch half the cores
/// ([`crate::text::score::default_score_threads`]) for a transformer; the GRU and MiniLM's packed
/// encoder take every core for their own worker threads.
#[derive(Args, Clone, Debug)]
pub struct ScoreArgs {
    /// A model directory written by `oe-text train` (its baseline/ or oe/ folder).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Inputs: text files (one text per line), .gz files, CSV / JSON-lines files (text in --column),
    /// directories (recursively; names starting with `.` left out) or `-` for standard input (default).
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Anomaly score (higher = more anomalous): msp, maxlogit, energy[:T], entropy, xent-uniform, or
    /// a detector stored in the model directory (fitted by eval or tune): mahalanobis, rmd, knn,
    /// vim, react, odin (with those, --threshold takes a number).
    #[arg(long, default_value = "msp", value_parser = crate::cli::parse_detector)]
    pub score: crate::detect::Detector,
    /// Flag texts with score > threshold as OOD (`is_ood` column): `auto` (the threshold stored by
    /// `oe-text calibrate` for this score) or a number.
    #[arg(long, value_parser = parse_threshold, allow_hyphen_values = true)]
    pub threshold: Option<Threshold>,
    /// Flag texts whose conformal p-value (against the validation scores stored by `oe-text
    /// calibrate`) is at most A: an in-distribution text is flagged with probability at most A.
    /// Adds a p_value column.
    #[arg(long, value_name = "A", conflicts_with_all = ["threshold", "fdr"])]
    pub alpha: Option<f64>,
    /// Flag texts by the Benjamini-Hochberg procedure over all scored texts: at most a fraction Q
    /// of the flagged texts are in-distribution (in expectation). Rows are written once every text
    /// is scored (memory grows with the input). Adds a p_value column.
    #[arg(long, value_name = "Q", conflicts_with_all = ["threshold", "alpha"])]
    pub fdr: Option<f64>,
    /// Add the conformal p-value column without flagging by it.
    #[arg(long)]
    pub p_values: bool,
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
    /// Inside input directories, follow symbolic links to directories too (each once; a loop is
    /// an error). By default only links to files are followed.
    #[arg(long)]
    pub follow_links: bool,
    /// Rows of a batch of short texts.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Largest number of texts read but not yet written (the reorder buffer).
    #[arg(long, default_value_t = 65_536)]
    pub max_pending: usize,
    /// Score only shard I of N (0 <= I < N) into a part of --output (in OUTPUT.parts/), for
    /// `oe-text merge`: blocks of 1,024 records go round-robin to the shards. Rerunning a finished
    /// shard does nothing; an interrupted one resumes.
    #[arg(long, value_name = "I/N", conflicts_with = "slurm")]
    pub shard: Option<crate::text::score::shard::Shard>,
    /// Arithmetic of the model's products: float32 (default), or bf16 (opt-in, the CPU GRU on CPUs
    /// with AVX512_BF16: bfloat16 inputs, float32 sums; faster; scores move slightly, and the
    /// summary says how far on the first texts, scored both ways)
    #[arg(long, value_enum, default_value_t = crate::device::Precision::Float32)]
    pub precision: crate::device::Precision,
    /// Write a Slurm array script scoring N shards and a merge job that runs after all of them
    /// succeed (`afterok`), into OUTPUT.slurm/; with --submit, submit both.
    #[arg(long, value_name = "N")]
    pub slurm: Option<usize>,
    #[command(flatten)]
    pub slurm_opts: crate::cli::cluster::SlurmArgs,
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
            follow_dir_links: self.follow_links,
        })
    }

    pub fn output_format(&self) -> OutputFormat {
        self.format.unwrap_or_else(|| match &self.output {
            Some(p) => OutputFormat::from_path(p),
            None => OutputFormat::Tsv,
        })
    }

    /// The validated request.
    pub fn request(&self, device: tch::Device) -> Result<ScoreRequest> {
        if self.batch_size == 0 || self.max_pending == 0 {
            return Err(OeError::Config(
                "--batch-size and --max-pending must be positive".into(),
            ));
        }
        if self.shard.is_some() && self.output.as_deref().is_none_or(|p| p.as_os_str() == "-") {
            return Err(OeError::Config(
                "--shard needs --output FILE: the parts go to FILE.parts/ and `oe-text merge -o FILE` writes FILE".into(),
            ));
        }
        Ok(ScoreRequest {
            model_dir: self.model.clone(),
            inputs: self.inputs.clone(),
            input: self.input_options()?,
            score: self.score.logit().unwrap_or_default(),
            stored: match self.score {
                crate::detect::Detector::Feature(f) => Some(f),
                crate::detect::Detector::Logit(_) => None,
            },
            threshold: self.threshold,
            p_decision: match (self.alpha, self.fdr, self.p_values) {
                (Some(a), _, _) => {
                    check_level("--alpha", a)?;
                    PDecision::Alpha(a)
                }
                (_, Some(q), _) => {
                    check_level("--fdr", q)?;
                    PDecision::Fdr(q)
                }
                (None, None, true) => PDecision::Report,
                (None, None, false) => PDecision::None,
            },
            output: self.output.clone(),
            format: self.output_format(),
            batch_size: self.batch_size,
            max_pending: self.max_pending,
            default_threads: self.device.threads == 0,
            device,
            shard: self.shard,
            precision: self.precision,
        })
    }
}

/// `oe-text merge`.
#[derive(Args, Clone, Debug)]
pub struct MergeArgs {
    /// The final output, as given to `score --shard I/N --output FILE` (the parts are in FILE.parts/).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Number of shards (default: from the part file names).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Only show each part's state (done, running, interrupted, failed, not started); exit status 1
    /// unless all are done.
    #[arg(long)]
    pub status: bool,
    /// Delete FILE.parts/ after a successful merge.
    #[arg(long)]
    pub remove_parts: bool,
}

impl MergeArgs {
    pub fn request(&self) -> crate::text::score::shard::MergeRequest {
        crate::text::score::shard::MergeRequest {
            output: self.output.clone(),
            shards: self.shards,
            status_only: self.status,
            remove_parts: self.remove_parts,
        }
    }
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

impl CalibrateArgs {
    /// The validated request.
    pub fn request(&self, device: tch::Device) -> Result<CalibrateRequest> {
        crate::cli::check_tpr(self.tpr)?;
        Ok(CalibrateRequest {
            model_dir: self.model.clone(),
            tpr: self.tpr,
            score: self.score,
            split: self.split,
            data_dir: self.data_dir.clone(),
            device,
        })
    }
}

/// `oe-text tune`.
#[derive(Args, Clone, Debug)]
pub struct TuneArgs {
    /// A model directory written by `oe-text train` (its baseline/ or oe/ folder).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The validation OOD set: a name (clinc150-oos-val) or a file, optionally NAME=FILE; never a
    /// test set (default: the dataset's own, clinc150-oos-val for clinc150).
    #[arg(long, value_name = "SET")]
    pub val_ood: Option<String>,
    /// Detectors to tune, comma-separated (default: all of mahalanobis, rmd, knn, vim, react, odin).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub detectors: Vec<crate::detect::FeatureDetector>,
    /// Data root (default: the one recorded in run.json).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl TuneArgs {
    /// The validated request.
    pub fn request(&self, device: tch::Device) -> Result<crate::text::tune::TuneRequest> {
        Ok(crate::text::tune::TuneRequest {
            model_dir: self.model.clone(),
            data_root: crate::datasets::explicit_data_root(self.data_dir.as_deref()),
            val_ood: self.val_ood.clone(),
            detectors: self.detectors.clone(),
            device,
        })
    }
}

/// `oe-text serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// A model directory written by `oe-text train` (its baseline/ or oe/ folder).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Address to listen on (loopback by default; 0 as the port picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Score of requests that name none: msp, maxlogit, energy[:T], entropy, xent-uniform.
    #[arg(long, default_value = "msp", value_parser = parse_score)]
    pub score: Score,
    /// A micro-batch closes at this many texts...
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    /// ...or this many milliseconds after its first request (0: as soon as the requests already
    /// waiting are taken; under load, the requests that arrive while a batch is scored form the
    /// next one).
    #[arg(long, default_value_t = 0)]
    pub max_wait_ms: u64,
    /// Requests admitted at once (waiting or being scored); beyond it: 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest request body.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most texts per request.
    #[arg(long, default_value_t = 1024)]
    pub max_texts: usize,
    /// Longest text, in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    pub max_text_bytes: usize,
    /// A file holding a bearer token that every route but /healthz and /readyz then requires.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// HTTP worker threads (inference runs on its own thread; --threads sets libtorch's). Default:
    /// the cores beside the inference thread's, 1 to 4.
    #[arg(long, default_value_t = crate::text::serve::default_http_threads())]
    pub http_threads: usize,
    /// Append one JSON line per scored text to this file (time, request, score kind, score, class,
    /// prob, is_ood, p_value; never the text): the input of `oe-text monitor --window-secs`.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Arithmetic of the model's products: float32 (default), or bf16 (opt-in, the CPU GRU on CPUs
    /// with AVX512_BF16: bfloat16 inputs, float32 sums; faster, scores move slightly)
    #[arg(long, value_enum, default_value_t = crate::device::Precision::Float32)]
    pub precision: crate::device::Precision,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ServeArgs {
    /// The validated request (reads the token file; its content is never printed).
    pub fn request(&self, device: tch::Device) -> Result<crate::text::serve::ServeRequest> {
        let token = match &self.token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| OeError::io(p, e))?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(OeError::Config(format!(
                        "{}: the token file is empty",
                        p.display()
                    )));
                }
                Some(t)
            }
            None => None,
        };
        let req = crate::text::serve::ServeRequest {
            addr: self.addr,
            score: self.score,
            max_batch: self.max_batch,
            max_wait: std::time::Duration::from_millis(self.max_wait_ms),
            queue: self.queue,
            max_body_bytes: self.max_body_bytes,
            max_texts: self.max_texts,
            max_text_bytes: self.max_text_bytes,
            token,
            threads: self.http_threads,
            log: self.log.clone(),
            precision: self.precision,
            ..crate::text::serve::ServeRequest::new(self.model.clone(), device)
        };
        req.validate()?;
        Ok(req)
    }
}

/// `oe-text monitor`.
#[derive(Args, Clone, Debug)]
pub struct MonitorArgs {
    /// A file written by `oe-text score` (TSV, CSV, JSON lines or Parquet), or the log of
    /// `oe-text serve --log`.
    #[arg(value_name = "SCORED")]
    pub input: PathBuf,
    /// Texts per window.
    #[arg(long, default_value_t = 1000)]
    pub every: usize,
    /// Windows of this many seconds instead (the service's log: `oe-text serve --log FILE`).
    #[arg(long, value_name = "SECS", conflicts_with = "every")]
    pub window_secs: Option<f64>,
    /// Level of the "small p-value" share.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Also plot the rates per window (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

impl MonitorArgs {
    pub fn request(&self) -> Result<crate::text::score::monitor::MonitorRequest> {
        check_level("--alpha", self.alpha)?;
        if self.every == 0 {
            return Err(OeError::Config("--every must be positive".into()));
        }
        Ok(crate::text::score::monitor::MonitorRequest {
            input: self.input.clone(),
            every: self.every,
            window_secs: self.window_secs,
            alpha: self.alpha,
            plot: self.plot.clone(),
        })
    }
}
