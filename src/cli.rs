//! Command-line pieces shared by `oe-text` and `oe-vision`: flags → validated configs, error printing.
//!
//! Kept in the library so that tests can assert that every flag reaches its config.

use crate::device::DeviceSpec;
use crate::error::{OeError, Result};
use crate::metrics::{DetectionMetrics, FprRule, MetricsConfig, Positive};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

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
    /// Sets libtorch's threads and resolves `--device`; says which device and why on stderr
    /// unless `quiet` (for the binaries, which share this start-up).
    pub fn select(&self, quiet: bool) -> Result<tch::Device> {
        crate::device::set_torch_threads(self.threads);
        let choice = crate::device::resolve(self.device)?;
        if !quiet {
            eprintln!("{}", choice.description);
        }
        Ok(choice.device)
    }
}

/// Output format for small result tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    #[default]
    Table,
    Json,
    Csv,
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
    /// The validated metric configuration.
    pub fn config(&self) -> Result<MetricsConfig> {
        if !(self.tpr > 0.0 && self.tpr <= 1.0) {
            return Err(OeError::Config(format!(
                "--tpr must be in (0, 1], got {}",
                self.tpr
            )));
        }
        Ok(MetricsConfig {
            positive: self.positive,
            tpr: self.tpr,
            fpr_rule: self.fpr_rule,
        })
    }
}

/// Runs `metrics`: reads both files, computes, and renders in the chosen format.
pub fn run_metrics(args: &MetricsArgs) -> Result<String> {
    let cfg = args.config()?;
    let mut in_scores = crate::io::read_scores(&args.in_file, args.column.as_deref())?;
    let mut ood_scores = crate::io::read_scores(&args.out_file, args.column.as_deref())?;
    if args.higher_is_normal {
        in_scores.iter_mut().for_each(|s| *s = -*s);
        ood_scores.iter_mut().for_each(|s| *s = -*s);
    }
    let m = DetectionMetrics::compute(&in_scores, &ood_scores, &cfg)?;
    Ok(render_metrics(&m, args.format))
}

/// Renders metrics as an aligned table, one JSON object, or a two-line CSV.
pub fn render_metrics(m: &DetectionMetrics, format: TableFormat) -> String {
    let named = m.named();
    match format {
        TableFormat::Table => {
            let mut s = format!(
                "n_in = {}, n_ood = {}, positive class = {}\n",
                m.n_in,
                m.n_ood,
                match m.positive {
                    Positive::Ood => "OOD",
                    Positive::Id => "in-distribution",
                }
            );
            for (k, v) in &named {
                s += &format!("{k:<24} {:>8.2}%\n", v * 100.0);
            }
            s
        }
        TableFormat::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("n_in".into(), m.n_in.into());
            obj.insert("n_ood".into(), m.n_ood.into());
            obj.insert("positive".into(), m.positive.suffix().into());
            for (k, v) in &named {
                obj.insert(k.clone(), (*v).into());
            }
            serde_json::Value::Object(obj).to_string() + "\n"
        }
        TableFormat::Csv => {
            let mut head = vec!["n_in".to_string(), "n_ood".to_string()];
            let mut vals = vec![m.n_in.to_string(), m.n_ood.to_string()];
            for (k, v) in &named {
                head.push(k.clone());
                vals.push(format!("{v}"));
            }
            format!("{}\n{}\n", head.join(","), vals.join(","))
        }
    }
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

// ---------------------------------------------------------------------------------------------
// oe-text train / eval

use crate::data::TextOptions;
use crate::eval::{EvalConfig, Protocol};
use crate::loss::OeLoss;
use crate::models::transformer::Pooling;
use crate::models::{GruConfig, ModelConfig, PadMode, TransformerConfig};
use crate::score::Score;
use crate::train::{Method, Pairing, TrainConfig};

/// Which architecture `--model` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelKind {
    /// The paper's 2-layer GRU (word vocabulary from the training text).
    Gru,
    /// A transformer encoder trained from scratch (word vocabulary from the training text).
    Transformer,
    /// Pretrained all-MiniLM-L6-v2 (its own WordPiece tokenizer) fine-tuned with a linear head.
    Minilm,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Gru => "gru",
            ModelKind::Transformer => "transformer",
            ModelKind::Minilm => "minilm",
        }
    }

    /// Default (baseline epochs, OE epochs, learning rate): the paper's for models trained from
    /// scratch; for the pretrained encoder the usual fine-tuning settings (a rate of 0.01 destroys
    /// pretrained weights).
    pub fn default_schedule(self) -> (usize, usize, f64) {
        match self {
            ModelKind::Gru | ModelKind::Transformer => (5, 5, 0.01),
            ModelKind::Minilm => (2, 2, 2e-5),
        }
    }
}

/// The directory of the pretrained MiniLM: `$OE_MODELS_DIR/all-MiniLM-L6-v2`, else the
/// `.models/all-MiniLM-L6-v2` that `.ci/setup` fills, looked up from the executable's folder upwards
/// and then from the working directory.
pub fn default_minilm_dir() -> Result<PathBuf> {
    const NAME: &str = "all-MiniLM-L6-v2";
    let mut tried = Vec::new();
    if let Some(d) = std::env::var_os("OE_MODELS_DIR") {
        tried.push(PathBuf::from(d).join(NAME));
    }
    if let Ok(exe) = std::env::current_exe() {
        tried.extend(
            exe.ancestors()
                .skip(1)
                .map(|a| a.join(".models").join(NAME)),
        );
    }
    tried.push(PathBuf::from(".models").join(NAME));
    tried
        .iter()
        .find(|d| d.join("config.json").is_file() && d.join("model.safetensors").is_file())
        .cloned()
        .ok_or_else(|| {
            OeError::Config(format!(
                "pretrained {NAME} not found (run .ci/setup, which installs it into .models/, set \
                 OE_MODELS_DIR, or pass --pretrained DIR); looked in: {}",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Which OE training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OeMethodArg {
    /// Fine-tune the baseline with OE (the paper's text setting).
    Finetune,
    /// Train with OE from scratch.
    Scratch,
}

/// Which auxiliary loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OeLossArg {
    /// Cross-entropy to the uniform distribution (the paper).
    Uniform,
    /// Energy-bounded squared hinges (Liu et al. 2020).
    Energy,
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
}

impl DataRootArgs {
    pub fn root(&self) -> PathBuf {
        crate::data::resolve_data_root(self.data_dir.as_deref())
    }
    pub fn text(&self) -> TextOptions {
        TextOptions {
            lowercase: self.lowercase,
            max_tokens: self.max_tokens,
        }
    }
}

/// Evaluation flags, shared by `train` and `eval`.
#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// OOD sets, comma-separated: snli, imdb, multi30k, wmt16, yelp, ewt-answers, ..., or text files
    /// (default: every set present under the data root).
    #[arg(long, value_delimiter = ',', value_name = "SETS")]
    pub ood: Option<Vec<String>>,
    /// paper: the reference's protocol and quirks; clean: seeded uniform draws, batch-independent scores.
    #[arg(long, value_enum, default_value_t = Protocol::Paper)]
    pub protocol: Protocol,
    /// Anomaly score: msp, maxlogit, energy[:T], entropy, xent-uniform.
    #[arg(long, default_value = "msp", value_parser = parse_score)]
    pub score: Score,
    /// OOD draws per set.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// In-distribution examples per OOD example (5: the paper's 1:5 OOD:ID).
    #[arg(long, default_value_t = 5)]
    pub id_per_ood: usize,
    /// Recall level for FPR.
    #[arg(long, default_value_t = 0.9)]
    pub tpr: f64,
    #[arg(long, value_enum, default_value_t = FprRule::Closest)]
    pub fpr_rule: FprRule,
    /// Seed of the OOD draws.
    #[arg(long, default_value_t = 1)]
    pub eval_seed: u64,
    /// Paper protocol: cut WMT16 sentences at the first comma (a CSV-reading quirk; the paper's
    /// numbers match uncut sentences, so it is off by default).
    #[arg(long)]
    pub wmt16_comma_cut: bool,
    /// Score with a feature-space detector fitted on the in-distribution training set instead of
    /// --score: mahalanobis or knn (fitted and stored in the model directory on first use).
    #[arg(long, value_enum)]
    pub detector: Option<crate::eval::FeatureDetector>,
}

fn parse_score(s: &str) -> std::result::Result<Score, String> {
    s.parse()
}

impl EvalArgs {
    pub fn config(&self) -> Result<EvalConfig> {
        if !(self.tpr > 0.0 && self.tpr <= 1.0) {
            return Err(OeError::Config(format!(
                "--tpr must be in (0, 1], got {}",
                self.tpr
            )));
        }
        if self.repeats == 0 || self.id_per_ood == 0 {
            return Err(OeError::Config(
                "--repeats and --id-per-ood must be positive".into(),
            ));
        }
        Ok(EvalConfig {
            protocol: self.protocol,
            score: self.score,
            repeats: self.repeats,
            id_per_ood: self.id_per_ood,
            tpr: self.tpr,
            fpr_rule: self.fpr_rule,
            batch_size: 64,
            seed: self.eval_seed,
            wmt16_comma_cut: self.wmt16_comma_cut,
            detector: self.detector,
        })
    }
}

/// `oe-text train`.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// In-distribution dataset: sst, trec, 20ng, or a user dataset (CSV / JSON-lines with text and label).
    #[arg(long = "in", value_name = "NAME")]
    pub in_dataset: String,
    /// Outlier corpus for OE: wikitext2, wikitext103 or a text file; omit to train the baseline only.
    #[arg(long, value_name = "NAME")]
    pub oe: Option<String>,
    #[arg(long, value_enum, default_value_t = OeMethodArg::Finetune)]
    pub oe_method: OeMethodArg,
    /// Output directory (train: runs/<in>-<oe>-<model>-seed<seed>; compare:
    /// runs/compare-<in>-<oe>-seed<seed>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The model to train (default: gru; `compare` takes --models instead).
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// GRU padding: left (the paper: the GRU runs over padding) or masked (batch-independent).
    #[arg(long, value_enum, default_value_t = PadMode::Left)]
    pub pad: PadMode,
    /// Transformer layers.
    #[arg(long, default_value_t = 2)]
    pub layers: i64,
    /// Transformer attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: i64,
    /// Transformer width.
    #[arg(long, default_value_t = 128)]
    pub width: i64,
    /// Transformer feed-forward size.
    #[arg(long, default_value_t = 256)]
    pub ff: i64,
    /// Transformer dropout.
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// Transformer maximum input length in tokens (default: 256; MiniLM: 128 WordPiece ids).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// --model minilm: directory with config.json, model.safetensors and tokenizer.json (default:
    /// .models/all-MiniLM-L6-v2 from .ci/setup, or $OE_MODELS_DIR/all-MiniLM-L6-v2).
    #[arg(long, value_name = "DIR")]
    pub pretrained: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Baseline epochs (default: 5; MiniLM: 2).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// OE epochs (default 5 as the reference code; the paper's text says 2; MiniLM: 2).
    #[arg(long)]
    pub oe_epochs: Option<usize>,
    /// Adam learning rate, cosine-annealed per epoch (default: 0.01; MiniLM: 2e-5).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam learning rate of the OE phase, a fresh optimiser as the reference (default: as --lr).
    #[arg(long)]
    pub oe_lr: Option<f64>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Outlier texts per in-distribution batch.
    #[arg(long, default_value_t = 64)]
    pub oe_batch_size: usize,
    #[arg(long, value_enum, default_value_t = OeLossArg::Uniform)]
    pub oe_loss: OeLossArg,
    /// Weight λ of the OE term (default: 1.0 uniform, 0.1 energy).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Energy-bounded loss: in-distribution energy margin.
    #[arg(long, default_value_t = -25.0, allow_hyphen_values = true)]
    pub m_in: f64,
    /// Energy-bounded loss: outlier energy margin.
    #[arg(long, default_value_t = -7.0, allow_hyphen_values = true)]
    pub m_out: f64,
    #[arg(long, value_enum, default_value_t = Pairing::Truncate)]
    pub pairing: Pairing,
    /// Seed for initialisation and shuffling (recorded in run.json).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Vocabulary size (most frequent training tokens; plus <unk> and <pad>).
    #[arg(long, default_value_t = 10_000)]
    pub vocab_size: usize,
    /// Continue an interrupted run in --out (completed phases are kept).
    #[arg(long)]
    pub resume: bool,
    /// Hold this fraction of the training split out (seeded by --seed, recorded in run.json) as the
    /// validation split for deployment thresholds (default: train on all of it, as the paper).
    #[arg(long, value_name = "FRACTION")]
    pub holdout: Option<f64>,
    /// After training, store the score threshold keeping this fraction of validation texts (the
    /// hold-out, else the dev split) in each model directory (0: none).
    #[arg(long, default_value_t = 0.95)]
    pub calibrate_tpr: f64,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub data: DataRootArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl TrainArgs {
    /// `--model`, default GRU.
    pub fn model_kind(&self) -> ModelKind {
        self.model.unwrap_or(ModelKind::Gru)
    }

    pub fn model_config(&self) -> Result<ModelConfig> {
        Ok(match self.model_kind() {
            ModelKind::Gru => ModelConfig::Gru(GruConfig {
                pad: self.pad,
                ..Default::default()
            }),
            ModelKind::Transformer => ModelConfig::Transformer(TransformerConfig {
                layers: self.layers,
                heads: self.heads,
                width: self.width,
                ff: self.ff,
                dropout: self.dropout,
                max_len: self.max_len.unwrap_or(256),
                pooling: self.pooling,
            }),
            ModelKind::Minilm => {
                let dir = match &self.pretrained {
                    Some(d) => d.clone(),
                    None => default_minilm_dir()?,
                };
                let head = crate::models::BertClassifierConfig {
                    max_len: self.max_len.unwrap_or(128),
                    ..Default::default()
                };
                ModelConfig::Pretrained(crate::models::PretrainedConfig::from_dir(
                    "minilm", &dir, head,
                )?)
            }
        })
    }

    pub fn oe_loss(&self) -> OeLoss {
        match self.oe_loss {
            OeLossArg::Uniform => OeLoss::Uniform {
                lambda: self.lambda.unwrap_or(crate::loss::LAMBDA_TEXT),
            },
            OeLossArg::Energy => OeLoss::Energy {
                lambda: self.lambda.unwrap_or(0.1),
                m_in: self.m_in,
                m_out: self.m_out,
                temperature: 1.0,
            },
        }
    }

    /// Default output directory name.
    pub fn default_out(&self) -> PathBuf {
        let stem = Path::new(&self.in_dataset)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("data")
            .to_string();
        let oe = self
            .oe
            .as_deref()
            .map(|o| {
                Path::new(o)
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("oe")
                    .to_string()
            })
            .unwrap_or_else(|| "baseline".into());
        let model = self.model_kind().name();
        PathBuf::from("runs").join(format!("{stem}-{oe}-{model}-seed{}", self.seed))
    }

    /// The validated pipeline request.
    pub fn request(&self, device: tch::Device) -> Result<crate::pipeline::TrainRequest> {
        let (epochs, oe_epochs, lr) = self.model_kind().default_schedule();
        let lr = self.lr.unwrap_or(lr);
        let baseline = TrainConfig {
            epochs: self.epochs.unwrap_or(epochs),
            lr,
            batch_size: self.batch_size,
            oe_batch_size: self.oe_batch_size,
            oe_loss: self.oe_loss(),
            pairing: self.pairing,
            seed: self.seed,
        };
        baseline.validate()?;
        let oe = TrainConfig {
            epochs: self.oe_epochs.unwrap_or(oe_epochs),
            lr: self.oe_lr.unwrap_or(lr),
            ..baseline.clone()
        };
        oe.validate()?;
        if !(0.0..=1.0).contains(&self.calibrate_tpr) {
            return Err(OeError::Config(format!(
                "--calibrate-tpr must be in [0, 1], got {}",
                self.calibrate_tpr
            )));
        }
        Ok(crate::pipeline::TrainRequest {
            in_dataset: self.in_dataset.clone(),
            oe_corpus: self.oe.clone(),
            oe_method: match self.oe_method {
                OeMethodArg::Finetune => Method::OeFinetune,
                OeMethodArg::Scratch => Method::OeScratch,
            },
            data_root: self.data.root(),
            out_dir: self.out.clone().unwrap_or_else(|| self.default_out()),
            text: self.data.text(),
            vocab_max_size: self.vocab_size,
            model: self.model_config()?,
            baseline,
            oe,
            eval: self.eval.config()?,
            ood_sets: self.eval.ood.clone(),
            resume: self.resume,
            device,
            holdout: self.holdout,
            calibrate_tpr: (self.calibrate_tpr > 0.0).then_some(self.calibrate_tpr),
            oe_dir: None,
            evaluate: true,
        })
    }
}

/// `oe-text compare`.
#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// Models, comma-separated: gru, transformer, minilm (this replaces --model).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "gru,transformer,minilm"
    )]
    pub models: Vec<ModelKind>,
    /// Detectors, comma-separated: msp, maxlogit, energy[:T], entropy, xent-uniform, mahalanobis, knn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "msp,maxlogit,energy,mahalanobis,knn",
        value_parser = parse_detector
    )]
    pub detectors: Vec<crate::compare::Detector>,
    /// Leave energy-bounded OE (--m-in, --m-out, --lambda) out of the grid.
    #[arg(long)]
    pub no_energy_oe: bool,
    /// Everything `oe-text train` takes (--in, --oe, epochs, seeds, data, evaluation, device).
    /// --out is the grid's directory (default: runs/compare-<in>-<oe>-seed<seed>); each model
    /// trains under --out/<model>/.
    #[command(flatten)]
    pub train: TrainArgs,
}

fn parse_detector(s: &str) -> std::result::Result<crate::compare::Detector, String> {
    s.parse()
}

impl CompareArgs {
    /// The grid's directory.
    pub fn out_dir(&self) -> PathBuf {
        self.train.out.clone().unwrap_or_else(|| {
            let stem = Path::new(&self.train.in_dataset)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("data");
            let oe = self
                .train
                .oe
                .as_deref()
                .and_then(|o| Path::new(o).file_stem())
                .and_then(|s| s.to_str())
                .unwrap_or("oe");
            PathBuf::from("runs").join(format!("compare-{stem}-{oe}-seed{}", self.train.seed))
        })
    }

    /// One [`crate::compare::ModelRuns`] per model.
    pub fn runs(&self, device: tch::Device) -> Result<Vec<crate::compare::ModelRuns>> {
        if self.train.oe.is_none() {
            return Err(OeError::Config(
                "compare needs an outlier corpus: --oe wikitext2 (or wikitext103 or a file)".into(),
            ));
        }
        if self.models.is_empty() {
            return Err(OeError::Config("--models is empty".into()));
        }
        if self.train.model.is_some() {
            return Err(OeError::Config(
                "compare trains every model of --models; use --models instead of --model".into(),
            ));
        }
        let out = self.out_dir();
        self.models
            .iter()
            .map(|&kind| {
                let mut a = self.train.clone();
                a.model = Some(kind);
                a.out = Some(out.join(kind.name()));
                a.oe_loss = OeLossArg::Uniform;
                let oe = a.request(device)?;
                let energy_oe = if self.no_energy_oe {
                    None
                } else {
                    a.oe_loss = OeLossArg::Energy;
                    Some(a.request(device)?)
                };
                Ok(crate::compare::ModelRuns {
                    name: kind.name().to_string(),
                    oe,
                    energy_oe,
                })
            })
            .collect()
    }
}

/// `oe-text eval`.
#[derive(Args, Clone, Debug)]
pub struct EvalCommandArgs {
    /// A model directory written by `oe-text train` (its baseline/ or oe/ folder).
    #[arg(long, value_name = "DIR", required_unless_present = "weights")]
    pub model: Option<PathBuf>,
    /// Instead of --model: released GRU weights (.safetensors, PyTorch names), with --in naming the
    /// training data whose vocabulary they need.
    #[arg(
        long,
        value_name = "FILE",
        requires = "in_dataset",
        conflicts_with = "model"
    )]
    pub weights: Option<PathBuf>,
    /// In-distribution dataset of --weights (sst, trec, 20ng).
    #[arg(long = "in", value_name = "NAME")]
    pub in_dataset: Option<String>,
    /// Where to put the model directory made from --weights (default: runs/weights-<file stem>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Label for the table and results: baseline or oe (default: from the run, or `oe` when the
    /// weights' file name contains "oe").
    #[arg(long)]
    pub method: Option<String>,
    #[command(flatten)]
    pub data: DataRootArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

// ---------------------------------------------------------------------------------------------
// oe-text report

/// Output format of `oe-text report`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// A Markdown table (for papers and notes).
    Md,
    /// The full aggregated table as CSV.
    Csv,
    /// The full aggregated table as Parquet (needs --output).
    Parquet,
    /// One self-contained HTML page: tables and plots (inline SVG), readable offline.
    Html,
}

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
