//! `oe-vision` flags → validated requests.

use crate::cli::{DataDirArgs, DeviceArgs};
use crate::detect::score::Score;
use crate::error::{OeError, Result};
use crate::eval::{EvalConfig, Protocol};
use crate::loss::OeLoss;
use crate::metrics::FprRule;
use crate::train::{Method, MethodLabel, Pairing};
use crate::vision::augment::Preset;
use crate::vision::data::{self, split_label, InOptions};
use crate::vision::models::WrnConfig;
use crate::vision::pipeline::{default_oe_order, paper_defaults, VisionTrainRequest};
use crate::vision::train::VisionTrainConfig;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VisionOeMethod {
    /// Fine-tune the baseline with OE (the paper's main setting).
    Finetune,
    /// Train with OE from random initialisation.
    Scratch,
}

/// Evaluation flags with the vision defaults (FPR at 95% TPR, batches of 200).
#[derive(Args, Clone, Debug)]
pub struct VisionEvalArgs {
    /// OOD sets, comma-separated: gaussian, rademacher (bernoulli), blobs, textures, svhn, places365,
    /// lsun, isun, cifar10, cifar100, icons50, chars74k, imagenet, or folders/archives/.npy/.mat;
    /// FOLDER#cat+dog keeps those class sub-folders; NAME=SPEC names a set in tables
    /// (default: the paper's sets for the dataset that are present).
    #[arg(long, value_delimiter = ',', value_name = "SETS")]
    pub ood: Option<Vec<String>>,
    /// paper: OOD draws of whole test batches (200·⌊(n/5)/200⌋); clean: exactly n/5.
    #[arg(long, value_enum, default_value_t = Protocol::Paper)]
    pub protocol: Protocol,
    /// Anomaly score: msp, maxlogit, energy[:T], entropy, xent-uniform.
    #[arg(long, default_value = "msp", value_parser = |s: &str| s.parse::<Score>())]
    pub score: Score,
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    #[arg(long, default_value_t = 5)]
    pub id_per_ood: usize,
    #[arg(long, default_value_t = 0.95)]
    pub tpr: f64,
    #[arg(long, value_enum, default_value_t = FprRule::Closest)]
    pub fpr_rule: FprRule,
    #[arg(long, default_value_t = 1)]
    pub eval_seed: u64,
    #[arg(long, default_value_t = 200)]
    pub test_batch_size: usize,
    /// Skip calibration (RMS/MAD calibration error, soft F1).
    #[arg(long)]
    pub no_calibration: bool,
}

impl VisionEvalArgs {
    pub fn config(&self) -> Result<EvalConfig> {
        crate::cli::check_tpr(self.tpr)?;
        if self.repeats == 0 || self.id_per_ood == 0 || self.test_batch_size == 0 {
            return Err(OeError::Config(
                "--repeats, --id-per-ood and --test-batch-size must be positive".into(),
            ));
        }
        Ok(EvalConfig {
            protocol: self.protocol,
            detector: crate::detect::Detector::Logit(self.score),
            repeats: self.repeats,
            id_per_ood: self.id_per_ood,
            tpr: self.tpr,
            fpr_rule: self.fpr_rule,
            batch_size: self.test_batch_size,
            seed: self.eval_seed,
            val_ood: None,
        })
    }
}

/// `oe-vision train`.
#[derive(Args, Clone, Debug)]
pub struct VisionTrainArgs {
    /// In-distribution data: cifar10, cifar100, svhn, tinyimagenet, or a folder/.tar.gz with class
    /// sub-folders (optionally train/ and test/; else a seeded fifth is the test split);
    /// FOLDER#cat+dog+... keeps only those classes; LABEL=SPEC names it in tables.
    #[arg(long = "in", value_name = "NAME|FOLDER")]
    pub in_dataset: String,
    /// Outliers: tiny-images (80M .bin), 300k (.npy), or a .bin/.npy/folder/archive (FOLDER#cat+dog:
    /// those class sub-folders only); omit for the baseline only.
    #[arg(long, value_name = "NAME|FILE|FOLDER")]
    pub oe: Option<String>,
    #[arg(long, value_enum, default_value_t = VisionOeMethod::Finetune)]
    pub oe_method: VisionOeMethod,
    /// Output run directory (default: runs/<in>-<oe>-wrn-D-W-seed<seed>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Preprocessing preset (default: from --in; folders use cifar).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// WRN depth (default: 40; SVHN 16).
    #[arg(long)]
    pub depth: Option<i64>,
    /// WRN widen factor (default: 2; SVHN 4).
    #[arg(long)]
    pub widen: Option<i64>,
    /// Dropout (default: 0.3; SVHN 0.4).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Baseline epochs (default: 100; SVHN 20).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Baseline learning rate (default: 0.1; SVHN 0.01).
    #[arg(long)]
    pub lr: Option<f64>,
    /// OE epochs (default: fine-tune 10, SVHN 5; scratch as the baseline).
    #[arg(long)]
    pub oe_epochs: Option<usize>,
    /// OE learning rate (default: fine-tune 0.001, SVHN 1e-4; scratch as the baseline).
    #[arg(long)]
    pub oe_lr: Option<f64>,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Outliers per batch (default: 256; Tiny ImageNet 180).
    #[arg(long)]
    pub oe_batch_size: Option<usize>,
    /// λ of the OE term.
    #[arg(long, default_value_t = crate::loss::LAMBDA_VISION)]
    pub lambda: f64,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    #[arg(long, value_enum, default_value_t = Pairing::Truncate)]
    pub pairing: Pairing,
    /// Outlier order (default: offset blocks for .bin/.npy as the reference, shuffle for folders).
    #[arg(long, value_enum)]
    pub oe_order: Option<crate::vision::train::OeOrder>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Hold out the validation split (CIFAR last 10%, SVHN 5,000, others 10%) for temperature tuning.
    #[arg(long)]
    pub hold_out: bool,
    /// SVHN: leave out extra_32x32.mat.
    #[arg(long)]
    pub no_svhn_extra: bool,
    /// Folders without a test/ folder: seed of the train / test split (a fifth goes to test).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Folders: image size (default: the preset's, 32 or 64).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Smoke tests: use only the first N training images.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Smoke tests: use only the first N test images.
    #[arg(long)]
    pub max_test: Option<usize>,
    /// Smoke tests: at most N steps per epoch (the schedule keeps its full length).
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub eval: VisionEvalArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn stem(s: &str) -> String {
    let p = Path::new(s);
    p.file_name()
        .and_then(|x| x.to_str())
        .unwrap_or("data")
        .trim_end_matches(".tar.gz")
        .trim_end_matches(".tgz")
        .split('.')
        .next()
        .unwrap_or("data")
        .to_string()
}

impl VisionTrainArgs {
    /// The in-distribution spec without its label.
    fn in_spec(&self) -> &str {
        split_label(&self.in_dataset).1
    }

    pub fn preset(&self) -> Preset {
        self.preset
            .unwrap_or_else(|| data::preset_for(self.in_spec()))
    }

    /// The architecture when any of --depth/--widen/--dropout is given (classes filled in later).
    fn model_override(&self) -> Option<WrnConfig> {
        if self.depth.is_none() && self.widen.is_none() && self.dropout.is_none() {
            return None;
        }
        let base = crate::vision::pipeline::paper_model(self.preset(), 10);
        Some(WrnConfig {
            depth: self.depth.unwrap_or(base.depth),
            widen_factor: self.widen.unwrap_or(base.widen_factor),
            dropout: self.dropout.unwrap_or(base.dropout),
            num_classes: 0,
        })
    }

    pub fn default_out(&self) -> PathBuf {
        let m = self
            .model_override()
            .unwrap_or_else(|| crate::vision::pipeline::paper_model(self.preset(), 10));
        let oe = self
            .oe
            .as_deref()
            .map(stem)
            .unwrap_or_else(|| "baseline".into());
        PathBuf::from("runs").join(format!(
            "{}-{oe}-{}-seed{}",
            split_label(&self.in_dataset)
                .0
                .map_or_else(|| stem(self.in_spec()), str::to_string),
            m.name(),
            self.seed
        ))
    }

    pub fn configs(&self) -> Result<(VisionTrainConfig, VisionTrainConfig)> {
        let preset = self.preset();
        let oe_method = match self.oe_method {
            VisionOeMethod::Finetune => Method::OeFinetune,
            VisionOeMethod::Scratch => Method::OeScratch,
        };
        let mut base = paper_defaults(preset, Method::Baseline);
        base.epochs = self.epochs.unwrap_or(base.epochs);
        base.lr = self.lr.unwrap_or(base.lr);
        base.batch_size = self.batch_size;
        base.weight_decay = self.weight_decay;
        base.seed = self.seed;
        base.pairing = self.pairing;
        base.max_steps_per_epoch = self.max_steps;
        base.oe_batch_size = self.oe_batch_size.unwrap_or(base.oe_batch_size);
        base.oe_loss = OeLoss::Uniform {
            lambda: self.lambda,
        };
        let d = paper_defaults(preset, oe_method);
        let mut oe = VisionTrainConfig {
            epochs: self.oe_epochs.unwrap_or(if oe_method == Method::OeScratch {
                base.epochs
            } else {
                d.epochs
            }),
            lr: self.oe_lr.unwrap_or(if oe_method == Method::OeScratch {
                base.lr
            } else {
                d.lr
            }),
            ..base.clone()
        };
        oe.oe_order = self
            .oe_order
            .unwrap_or_else(|| self.oe.as_deref().map(default_oe_order).unwrap_or_default());
        base.validate()?;
        oe.validate()?;
        Ok((base, oe))
    }

    pub fn request(&self, device: tch::Device) -> Result<VisionTrainRequest> {
        let (baseline, oe) = self.configs()?;
        let model = self.model_override();
        if let Some(m) = &model {
            WrnConfig {
                num_classes: 10,
                ..m.clone()
            }
            .validate()?;
        }
        Ok(VisionTrainRequest {
            in_dataset: self.in_spec().to_string(),
            in_label: split_label(&self.in_dataset).0.map(str::to_string),
            oe_source: self.oe.clone(),
            oe_method: match self.oe_method {
                VisionOeMethod::Finetune => Method::OeFinetune,
                VisionOeMethod::Scratch => Method::OeScratch,
            },
            data_root: self.data.root(),
            out_dir: self.out.clone().unwrap_or_else(|| self.default_out()),
            in_options: InOptions {
                svhn_extra: !self.no_svhn_extra,
                size: self.image_size,
                split_seed: self.split_seed,
            },
            model,
            baseline,
            oe,
            eval: self.eval.config()?,
            ood_sets: self.eval.ood.clone(),
            hold_out: self.hold_out,
            calibrate: !self.eval.no_calibration,
            max_train: self.max_train,
            max_test: self.max_test,
            resume: self.resume || crate::cli::restarted_by_slurm(),
            device,
        })
    }
}

/// `oe-vision eval`.
#[derive(Args, Clone, Debug)]
pub struct VisionEvalCommandArgs {
    /// A model directory written by `oe-vision train` (its baseline/ or oe/ folder).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Label for the table and results: baseline, oe, energy-oe, oe-scratch, energy-oe-scratch
    /// (default: the model directory's own training, from run.json).
    #[arg(long, value_parser = |s: &str| s.parse::<MethodLabel>())]
    pub method: Option<MethodLabel>,
    /// Smoke tests: use only the first N test images.
    #[arg(long)]
    pub max_test: Option<usize>,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub eval: VisionEvalArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl VisionEvalCommandArgs {
    /// The validated request.
    pub fn request(
        &self,
        device: tch::Device,
    ) -> Result<crate::vision::pipeline::VisionEvalRequest> {
        Ok(crate::vision::pipeline::VisionEvalRequest {
            model_dir: self.model.clone(),
            method: self.method,
            data_root: crate::datasets::explicit_data_root(self.data.data_dir.as_deref()),
            eval: self.eval.config()?,
            ood_sets: self.eval.ood.clone(),
            max_test: self.max_test,
            calibrate: !self.eval.no_calibration,
            device,
        })
    }
}

/// `oe-vision bench`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 40)]
    pub depth: i64,
    #[arg(long, default_value_t = 2)]
    pub widen: i64,
    #[arg(long, default_value_t = 10)]
    pub classes: i64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 256)]
    pub oe_batch_size: usize,
    #[arg(long, default_value_t = 200)]
    pub eval_batch_size: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 50)]
    pub eval_steps: usize,
    /// Skip the run with CPU augmentation and prefetching.
    #[arg(long)]
    pub no_pipeline: bool,
    /// The pipeline run's images: a dataset spec as --in takes (its training split; default:
    /// synthetic).
    #[arg(long, value_name = "SPEC")]
    pub data: Option<String>,
    /// The pipeline run's outliers: a spec as --oe takes (default: synthetic).
    #[arg(long, value_name = "SPEC")]
    pub oe_data: Option<String>,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl BenchArgs {
    pub fn config(&self) -> crate::vision::bench::BenchConfig {
        crate::vision::bench::BenchConfig {
            depth: self.depth,
            widen: self.widen,
            classes: self.classes,
            batch: self.batch_size,
            oe_batch: self.oe_batch_size,
            eval_batch: self.eval_batch_size,
            warmup: self.warmup,
            steps: self.steps,
            eval_steps: self.eval_steps,
            pipeline: !self.no_pipeline,
            data: self.data.clone(),
            oe_data: self.oe_data.clone(),
            data_root: self.data_dir.root(),
        }
    }
}

/// `oe-vision data`.
#[derive(Args, Clone, Debug)]
pub struct VisionDataArgs {
    /// Data root (default: $OE_DATA_DIR, then ~/.cache/oe/data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: VisionDataCommand,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum VisionDataCommand {
    /// The image datasets, their role and whether their files are present.
    List,
    /// Where one dataset's files go under the data root, whether they are there, expected counts.
    Show { name: String },
    /// Download, verify (the published checksums) and unpack datasets into the data root (from
    /// $OE_DATA_MIRROR when set: the data-root layout or the original archives by file name).
    Fetch(crate::cli::data::FetchArgs),
    /// Re-check the files on disk (checksums) and the loaders' counts (default: every dataset
    /// present); fails when any check fails.
    Verify { names: Vec<String> },
}

impl VisionDataArgs {
    pub fn request(&self) -> crate::vision::data::manifests::DataRequest {
        use crate::vision::data::manifests::DataRequest;
        let root = crate::datasets::resolve_data_root(self.data_dir.as_deref());
        match &self.command {
            VisionDataCommand::List => DataRequest::List { root },
            VisionDataCommand::Show { name } => DataRequest::Show {
                root,
                name: name.clone(),
            },
            VisionDataCommand::Fetch(f) => DataRequest::Fetch {
                root,
                names: f.names.clone(),
                opts: f.options(),
            },
            VisionDataCommand::Verify { names } => DataRequest::Verify {
                root,
                names: names.clone(),
            },
        }
    }
}
