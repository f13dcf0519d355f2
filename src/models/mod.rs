//! Text classifiers: the paper's GRU and a transformer encoder trained from scratch.
//!
//! Every model maps a [`TokenBatch`] to logits `[batch, classes]`; features for feature-space detectors
//! come from [`TextModel::features`].

pub mod bert;
pub mod gru;
pub mod transformer;

use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

pub use gru::{GruClassifier, GruConfig};
pub use transformer::{TransformerClassifier, TransformerConfig};

/// Padding token id (torchtext's `<pad>` = 1).
pub const PAD_ID: i64 = 1;

/// How padded positions are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PadMode {
    /// The reference: sequences are left-padded and the model runs over the padding too, so a text's
    /// logits depend on the longest text in its batch.
    #[default]
    Left,
    /// Padded positions do not change the model state: a text gets the same logits whatever else is in
    /// its batch (identical to running it alone).
    Masked,
}

/// A batch of token ids, left-padded with [`PAD_ID`].
#[derive(Debug)]
pub struct TokenBatch {
    /// `[batch, time]`, int64.
    pub tokens: Tensor,
    /// `[batch]`, int64: number of real (non-pad) tokens per row (the last `len` positions).
    pub lengths: Tensor,
}

impl TokenBatch {
    /// Left-pads `seqs` to the longest (at least 1 step), or to exactly `fix_len` (truncating the
    /// end, as torchtext's `fix_length`), and moves the batch to `device`.
    pub fn left_padded(seqs: &[&[i64]], fix_len: Option<usize>, device: Device) -> Self {
        let t = fix_len
            .unwrap_or_else(|| seqs.iter().map(|s| s.len()).max().unwrap_or(0))
            .max(1);
        let mut flat = vec![PAD_ID; seqs.len() * t];
        let mut lens = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            let s = &s[..s.len().min(t)];
            let start = i * t + (t - s.len());
            flat[start..start + s.len()].copy_from_slice(s);
            lens.push(s.len() as i64);
        }
        let tokens = Tensor::from_slice(&flat)
            .view([seqs.len() as i64, t as i64])
            .to_device(device);
        let lengths = Tensor::from_slice(&lens).to_device(device);
        Self { tokens, lengths }
    }

    /// `[batch, time]` bool mask, true at real tokens.
    pub fn mask(&self) -> Tensor {
        let (_, t) = self.tokens.size2().expect("tokens are [batch, time]");
        let pos = Tensor::arange(t, (Kind::Int64, self.tokens.device())).unsqueeze(0);
        let start = (-&self.lengths + t).unsqueeze(1);
        pos.ge_tensor(&start)
    }
}

/// Model configuration, saved in every model directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ModelConfig {
    Gru(GruConfig),
    Transformer(TransformerConfig),
}

impl ModelConfig {
    /// Short name for tables and run directories.
    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::Gru(_) => "gru",
            ModelConfig::Transformer(_) => "transformer",
        }
    }

    /// Builds the model's variables under `path`.
    pub fn build(&self, path: &nn::Path, vocab_size: i64, n_classes: i64) -> Result<TextModel> {
        if vocab_size < 2 || n_classes < 2 {
            return Err(OeError::Config(format!(
                "a classifier needs a vocabulary with at least 2 entries and at least 2 classes (got {vocab_size}, {n_classes})"
            )));
        }
        Ok(match self {
            ModelConfig::Gru(c) => {
                TextModel::Gru(GruClassifier::new(path, c, vocab_size, n_classes))
            }
            ModelConfig::Transformer(c) => {
                TextModel::Transformer(TransformerClassifier::new(path, c, vocab_size, n_classes)?)
            }
        })
    }

    /// The truncation every input gets at scoring time (`None` = unlimited).
    pub fn max_len(&self) -> Option<usize> {
        match self {
            ModelConfig::Gru(_) => None,
            ModelConfig::Transformer(c) => Some(c.max_len),
        }
    }
}

/// A built text classifier.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per process; boxing buys nothing
pub enum TextModel {
    Gru(GruClassifier),
    Transformer(TransformerClassifier),
}

impl TextModel {
    /// Logits `[batch, classes]` for a left-padded batch.
    pub fn logits(&self, batch: &TokenBatch, train: bool) -> Tensor {
        self.features_and_logits(batch, train).1
    }

    /// Penultimate features `[batch, dim]` and logits `[batch, classes]`.
    pub fn features_and_logits(&self, batch: &TokenBatch, train: bool) -> (Tensor, Tensor) {
        match self {
            TextModel::Gru(m) => m.features_and_logits(batch, train),
            TextModel::Transformer(m) => m.features_and_logits(batch, train),
        }
    }

    /// Penultimate features `[batch, dim]`.
    pub fn features(&self, batch: &TokenBatch) -> Tensor {
        self.features_and_logits(batch, false).0
    }
}
