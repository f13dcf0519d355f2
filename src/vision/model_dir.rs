//! A vision model directory: its `run.json` ([`VisionRunConfig`], whose shared fields are
//! [`crate::rundir::RunHeader`]) and the loaded model ([`VisionModel`]). The directory protocol
//! (files, finished / interrupted checks) is [`crate::rundir`]'s; vision adds the SGD momentum
//! buffers of an interrupted phase ([`MOMENTUM_FILE`]).

use super::augment::Preset;
use super::models::{WideResNet, WrnConfig};
use super::protocol::VisionScorer;
use super::train::VisionTrainConfig;
use crate::error::Result;
use crate::rundir::{self, RunHeader};
use crate::train::{self, MethodLabel};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// Everything about how a vision model directory's model was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionRunConfig {
    /// `tool`, `in_dataset`, `method`, `init_from`, `train_examples`, `data_root`.
    #[serde(flatten)]
    pub header: RunHeader,
    pub preset: Preset,
    pub image_size: usize,
    pub classes: Vec<String>,
    pub model: WrnConfig,
    pub oe_source: Option<String>,
    pub oe_images: Option<usize>,
    pub train: VisionTrainConfig,
    /// Images held out from training for temperature tuning (0: none).
    pub validation_examples: usize,
    /// Folders without a test split: the seed of their train / test split
    /// ([`super::data::folder_split`]); absent in older run directories (0, the only split then).
    #[serde(default)]
    pub split_seed: u64,
    /// The in-distribution data's short name in tables and results (`--in NAME=SPEC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_label: Option<String>,
}

impl VisionRunConfig {
    /// The training this model went through, as results name it.
    pub fn method_label(&self) -> MethodLabel {
        MethodLabel::of(self.header.method, &self.train.oe_loss)
    }

    /// The in-distribution data as tables name it: its label, else its spec.
    pub fn in_name(&self) -> &str {
        self.in_label.as_deref().unwrap_or(&self.header.in_dataset)
    }
}

/// A model directory, loaded.
pub struct VisionModel {
    pub dir: PathBuf,
    pub config: VisionRunConfig,
    pub vs: nn::VarStore,
    pub model: WideResNet,
}

impl VisionModel {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config: VisionRunConfig = rundir::read_run(dir, "oe-vision train")?;
        let mut vs = nn::VarStore::new(device);
        let model = WideResNet::new(&vs.root(), &config.model)?;
        train::load_weights(&mut vs, &dir.join("model.safetensors"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            vs,
            model,
        })
    }

    pub fn scorer(&self, batch_size: usize) -> VisionScorer<'_> {
        VisionScorer {
            model: &self.model,
            device: self.vs.device(),
            norm: self.config.preset.norm(),
            batch_size,
        }
    }
}

/// The SGD momentum buffers of an interrupted phase, next to `checkpoint.safetensors`.
pub const MOMENTUM_FILE: &str = "momentum.safetensors";
