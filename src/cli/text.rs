//! Flags of `oe-text train`, `compare` and `eval`.

use super::{DataRootArgs, DeviceArgs, EvalArgs};
use crate::detect::Detector;
use crate::error::{OeError, Result};
use crate::loss::OeLoss;
use crate::text::models::transformer::Pooling;
use crate::text::models::{GruConfig, ModelConfig, PadMode, TransformerConfig};
use crate::text::train::TrainConfig;
use crate::train::{Method, MethodLabel, Pairing};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

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
            ModelKind::Gru | ModelKind::Transformer => {
                use crate::paper::defaults::{TEXT_EPOCHS, TEXT_LR, TEXT_OE_EPOCHS};
                (TEXT_EPOCHS, TEXT_OE_EPOCHS, TEXT_LR)
            }
            ModelKind::Minilm => (2, 2, 2e-5),
        }
    }
}

/// `--tokenizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenizerArg {
    /// Whitespace words in the paper's frequency vocabulary.
    Word,
    /// WordPiece trained from the training text (vocab/wordpiece-10k.json).
    Wordpiece,
    /// Byte-pair encoding trained from the training text (vocab/bpe-10k.json).
    Bpe,
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

/// `oe-text train`.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// In-distribution dataset: sst, trec, 20ng, clinc150, or a user dataset (CSV / JSON-lines with
    /// text and label columns; see --text-column, --label-column).
    #[arg(long = "in", value_name = "NAME")]
    pub in_dataset: String,
    /// Outlier corpus for OE: wikitext2, wikitext103, clinc150-oos-train (CLINC150's 100 real
    /// out-of-scope training queries) or a text file; omit to train the baseline only.
    #[arg(long, value_name = "NAME")]
    pub oe: Option<String>,
    #[arg(long, value_enum, default_value_t = OeMethodArg::Finetune)]
    pub oe_method: OeMethodArg,
    /// Name of the OE model's directory under --out (default: oe), so OE runs with different
    /// outlier corpora share one baseline (e.g. --oe-dir oe-clinc150 beside oe).
    #[arg(long, value_name = "NAME", value_parser = parse_dir_name)]
    pub oe_dir: Option<String>,
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
    /// How outlier batches pair with in-distribution batches (default: truncate, the reference's
    /// zip, unless the outliers last less than an epoch, e.g. clinc150-oos-train: then cycle).
    #[arg(long, value_enum)]
    pub pairing: Option<Pairing>,
    /// Seed for initialisation and shuffling (recorded in run.json).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Vocabulary size: the most frequent training words plus <unk> and <pad> (word), or the size of
    /// the subword vocabulary (wordpiece, bpe).
    #[arg(long, default_value_t = crate::paper::defaults::TEXT_VOCAB)]
    pub vocab_size: usize,
    /// How text becomes tokens for a model trained from scratch: word (the paper's vocabulary of
    /// training words), or a wordpiece / bpe vocabulary trained from the training text by the
    /// definitions in vocab/ and saved in the model directory as tokenizer.json. MiniLM always uses
    /// its own tokenizer.
    #[arg(long, value_enum, default_value_t = TokenizerArg::Word)]
    pub tokenizer: TokenizerArg,
    /// Continue an interrupted run in --out (completed phases are kept).
    #[arg(long)]
    pub resume: bool,
    /// Write the prepared data as token ids (training set, outlier corpus, test set, OOD sets) with
    /// the schedule to this JSON file and stop before training: the same workload for another
    /// framework (experiments/bench_torch.sh feeds it to the PyTorch equivalent).
    #[arg(long, value_name = "FILE")]
    pub export_ids: Option<PathBuf>,
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
                ..Default::default()
            }),
            ModelKind::Minilm => {
                let dir = match &self.pretrained {
                    Some(d) => d.clone(),
                    None => crate::text::models::default_minilm_dir()?,
                };
                let head = crate::text::models::BertClassifierConfig {
                    max_len: self.max_len.unwrap_or(128),
                    ..Default::default()
                };
                ModelConfig::Pretrained(crate::text::models::PretrainedConfig::from_dir(
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

    /// The subword definition of `--tokenizer` (none for word), refused for MiniLM.
    pub fn tokenizer(&self) -> Result<Option<crate::text::tokenize::hf::SubwordConfig>> {
        use crate::text::tokenize::hf::{definition, SubwordKind};
        let kind = match self.tokenizer {
            TokenizerArg::Word => return Ok(None),
            TokenizerArg::Wordpiece => SubwordKind::WordPiece,
            TokenizerArg::Bpe => SubwordKind::Bpe,
        };
        if self.model_kind() == ModelKind::Minilm {
            return Err(OeError::Config(
                "--tokenizer: MiniLM uses its own pretrained tokenizer".into(),
            ));
        }
        Ok(Some(definition(kind)))
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
    pub fn request(&self, device: tch::Device) -> Result<crate::text::pipeline::TrainRequest> {
        let (epochs, oe_epochs, lr) = self.model_kind().default_schedule();
        let lr = self.lr.unwrap_or(lr);
        let baseline = TrainConfig {
            epochs: self.epochs.unwrap_or(epochs),
            lr,
            batch_size: self.batch_size,
            oe_batch_size: self.oe_batch_size,
            oe_loss: self.oe_loss(),
            pairing: self.pairing.unwrap_or_default(),
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
        Ok(crate::text::pipeline::TrainRequest {
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
            tokenizer: self.tokenizer()?,
            model: self.model_config()?,
            baseline,
            oe,
            eval: self.eval.config(Some(&self.in_dataset))?,
            ood_sets: self.eval.ood.clone(),
            resume: self.resume || crate::cli::restarted_by_slurm(),
            device,
            holdout: self.holdout,
            calibrate_tpr: (self.calibrate_tpr > 0.0).then_some(self.calibrate_tpr),
            oe_dir: self.oe_dir.clone(),
            evaluate: true,
            auto_pairing: self.pairing.is_none(),
            export_ids: self.export_ids.clone(),
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
    /// Detectors, comma-separated: msp, maxlogit, energy[:T], entropy, xent-uniform, or stored:
    /// mahalanobis, rmd, knn, vim, react, odin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "msp,maxlogit,energy,mahalanobis,knn",
        value_parser = parse_detector
    )]
    pub detectors: Vec<Detector>,
    /// Leave energy-bounded OE (--m-in, --m-out, --lambda) out of the grid.
    #[arg(long)]
    pub no_energy_oe: bool,
    /// Tune every model's stored detectors (feature layer, k, percentile, temperature) on the dev
    /// split and the validation OOD set (--val-ood, default the dataset's own) before evaluating.
    #[arg(long)]
    pub tune: bool,
    /// Everything `oe-text train` takes (--in, --oe, epochs, seeds, data, evaluation, device).
    /// --out is the grid's directory (default: runs/compare-<in>-<oe>-seed<seed>); each model
    /// trains under --out/<model>/.
    #[command(flatten)]
    pub train: TrainArgs,
}

use super::parse_detector;

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

    /// One [`crate::text::compare::ModelRuns`] per model.
    pub fn runs(&self, device: tch::Device) -> Result<Vec<crate::text::compare::ModelRuns>> {
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
                Ok(crate::text::compare::ModelRuns {
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
    /// Label for the table and results: baseline, oe, energy-oe, oe-scratch, energy-oe-scratch
    /// (default: the model directory's own training, from run.json). Required with --weights: what
    /// the released weights were trained with (baseline or oe).
    #[arg(long, value_parser = parse_method)]
    pub method: Option<MethodLabel>,
    /// Arithmetic of the model's products: float32 (default), or bf16 (opt-in, the CPU GRU on CPUs
    /// with AVX512_BF16: bfloat16 inputs, float32 sums; faster, scores move slightly; the results go to
    /// eval-...-bf16/)
    #[arg(long, value_enum, default_value_t = crate::device::Precision::Float32)]
    pub precision: crate::device::Precision,
    #[command(flatten)]
    pub data: DataRootArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn parse_dir_name(s: &str) -> std::result::Result<String, String> {
    let ok = !s.is_empty()
        && s != "baseline"
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}`: a directory name of letters, digits, '-', '_' and '.', not `baseline`"
        ))
    }
}

fn parse_method(s: &str) -> std::result::Result<MethodLabel, String> {
    s.parse()
}

impl EvalCommandArgs {
    /// The validated request.
    pub fn request(&self, device: tch::Device) -> Result<crate::text::pipeline::EvalRequest> {
        use crate::text::pipeline::{EvalRequest, EvalSource};
        let in_dataset = match &self.model {
            Some(dir) => crate::text::model_dir::recorded_in_dataset(dir),
            None => self.in_dataset.clone(),
        };
        let source = match (&self.model, &self.weights) {
            (Some(dir), _) => EvalSource::ModelDir(dir.clone()),
            (None, Some(w)) => {
                let in_dataset = self
                    .in_dataset
                    .clone()
                    .ok_or_else(|| OeError::Config("--weights needs --in".into()))?;
                let method = self.method.ok_or_else(|| {
                    OeError::Config(
                        "--weights needs --method baseline|oe: what the weights were trained with"
                            .into(),
                    )
                })?;
                let stem = w.file_stem().and_then(|s| s.to_str()).unwrap_or("weights");
                EvalSource::Weights {
                    file: w.clone(),
                    in_dataset,
                    method,
                    out_dir: self
                        .out
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("runs").join(format!("weights-{stem}"))),
                }
            }
            (None, None) => {
                return Err(OeError::Config(
                    "give --model DIR or --weights FILE --in NAME".into(),
                ))
            }
        };
        Ok(EvalRequest {
            source,
            method: self.method,
            data_root: crate::datasets::explicit_data_root(self.data.data_dir.as_deref()),
            text: self.data.text(),
            eval: self.eval.config(in_dataset.as_deref())?,
            ood_sets: self.eval.ood.clone(),
            precision: self.precision,
            device,
        })
    }
}
