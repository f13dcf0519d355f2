//! Text classifiers: the paper's GRU, a transformer encoder trained from scratch, and a pretrained
//! BERT-family encoder (MiniLM) fine-tuned with a classification head.
//!
//! Every model maps a [`TokenBatch`] to logits `[batch, classes]`; features for feature-space detectors
//! come from [`TextModel::features`].

pub mod bert;
pub mod bert_cpu;
pub mod gru;
pub mod gru_cpu;
pub mod transformer;

use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

pub use bert::{BertClassifier, BertClassifierConfig, BertConfig};
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

pub use crate::device::Precision;

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

    /// Rows `[start, start + n)`, with the same number of steps (the same padding).
    pub fn rows(&self, start: usize, n: usize) -> Self {
        Self {
            tokens: self.tokens.narrow(0, start as i64, n as i64),
            lengths: self.lengths.narrow(0, start as i64, n as i64),
        }
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
    /// A pretrained encoder (Hugging Face BERT layout) with a linear head.
    Pretrained(PretrainedConfig),
}

/// A pretrained BERT-family encoder and its classification head. The encoder's `config.json` is
/// copied in, so a model directory rebuilds the network without the original download.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainedConfig {
    /// Short name for tables and run directories (`minilm`).
    pub name: String,
    /// Where the pretrained weights were read from (recorded for provenance; a trained model
    /// directory does not need it).
    pub source: std::path::PathBuf,
    pub encoder: BertConfig,
    pub head: BertClassifierConfig,
}

impl PretrainedConfig {
    /// Reads `dir/config.json`; the weights (`dir/model.safetensors`) are loaded when training starts.
    pub fn from_dir(name: &str, dir: &std::path::Path, head: BertClassifierConfig) -> Result<Self> {
        let encoder = BertConfig::from_dir(dir)?;
        if head.max_len < 2 {
            return Err(OeError::Config(format!(
                "maximum length {} is below 2 ([CLS] and [SEP] alone need 2)",
                head.max_len
            )));
        }
        if head.max_len as i64 > encoder.max_position_embeddings {
            return Err(OeError::Config(format!(
                "maximum length {} exceeds the encoder's {} positions ({})",
                head.max_len,
                encoder.max_position_embeddings,
                dir.display()
            )));
        }
        Ok(Self {
            name: name.to_string(),
            source: dir.to_path_buf(),
            encoder,
            head,
        })
    }
}

impl ModelConfig {
    /// Short name for tables and run directories.
    pub fn name(&self) -> &str {
        match self {
            ModelConfig::Gru(_) => "gru",
            ModelConfig::Transformer(_) => "transformer",
            ModelConfig::Pretrained(p) => &p.name,
        }
    }

    /// Builds the model's variables under `path` (randomly initialised; a pretrained encoder's weights
    /// are loaded by [`TextModel::load_pretrained`]). `vocab_size` must match a pretrained encoder's.
    pub fn build(&self, path: &nn::Path, vocab_size: i64, n_classes: i64) -> Result<TextModel> {
        if vocab_size < 2 || n_classes < 2 {
            return Err(OeError::Config(format!(
                "a classifier needs a vocabulary with at least 2 entries and at least 2 classes (got {vocab_size}, {n_classes})"
            )));
        }
        if path.device() == Device::Cpu {
            match self {
                ModelConfig::Gru(_) => {
                    gru_cpu::adopt_torch_threads();
                }
                _ => gru_cpu::release_torch_threads(),
            }
        }
        Ok(match self {
            ModelConfig::Gru(c) => {
                TextModel::Gru(GruClassifier::new(path, c, vocab_size, n_classes))
            }
            ModelConfig::Transformer(c) => {
                TextModel::Transformer(TransformerClassifier::new(path, c, vocab_size, n_classes)?)
            }
            ModelConfig::Pretrained(c) => {
                if vocab_size != c.encoder.vocab_size {
                    return Err(OeError::Config(format!(
                        "the tokenizer has {vocab_size} entries but the encoder's config.json says {}",
                        c.encoder.vocab_size
                    )));
                }
                c.encoder.validate()?;
                TextModel::Pretrained(BertClassifier::new(path, &c.encoder, &c.head, n_classes))
            }
        })
    }

    /// The truncation every input gets at scoring time (`None` = unlimited).
    pub fn max_len(&self) -> Option<usize> {
        match self {
            ModelConfig::Gru(_) => None,
            ModelConfig::Transformer(c) => Some(c.max_len),
            ModelConfig::Pretrained(c) => Some(c.head.max_len),
        }
    }
}

/// A built text classifier.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per process; boxing buys nothing
pub enum TextModel {
    Gru(GruClassifier),
    Transformer(TransformerClassifier),
    Pretrained(BertClassifier),
}

impl TextModel {
    /// Tells the model its weights are final (loaded for inference): the CPU GRU then precomputes
    /// its first layer's input projections ([`GruClassifier::freeze_for_inference`]), and MiniLM
    /// on the CPU scores with its batch-invariant encoder ([`BertClassifier::freeze_for_inference`]).
    pub fn freeze_for_inference(&self) {
        match self {
            TextModel::Gru(g) => g.freeze_for_inference(),
            TextModel::Pretrained(b) => b.freeze_for_inference(),
            TextModel::Transformer(_) => {}
        }
    }

    /// Sets the arithmetic of inference ([`Precision`]); after [`TextModel::freeze_for_inference`].
    /// bfloat16 runs on the CPU GRU only, on CPUs with AVX512_BF16: anything else is an error
    /// naming why.
    pub fn set_precision(&self, p: Precision) -> Result<()> {
        match self {
            TextModel::Gru(g) => g.set_precision(p),
            _ if p == Precision::Float32 => Ok(()),
            m => Err(OeError::Config(format!(
                "--precision {} runs on the CPU GRU only, not on the {} model",
                p.name(),
                m.kind_name()
            ))),
        }
    }

    /// Makes now what scoring computes once per set of weights and would otherwise make on its
    /// first batch (MiniLM's host copy of its weights, [`BertClassifier::frozen`]).
    pub fn prepare_inference(&self) {
        if let TextModel::Pretrained(b) = self {
            let _ = b.frozen();
        }
    }

    /// The arithmetic of inference now.
    pub fn precision(&self) -> Precision {
        match self {
            TextModel::Gru(g) => g.precision(),
            _ => Precision::Float32,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            TextModel::Gru(_) => "gru",
            TextModel::Transformer(_) => "transformer",
            TextModel::Pretrained(_) => "pretrained (minilm)",
        }
    }

    /// Logits `[batch, classes]` for a left-padded batch.
    pub fn logits(&self, batch: &TokenBatch, train: bool) -> Tensor {
        self.features_and_logits(batch, train).1
    }

    /// Penultimate features `[batch, dim]` and logits `[batch, classes]`.
    pub fn features_and_logits(&self, batch: &TokenBatch, train: bool) -> (Tensor, Tensor) {
        match self {
            TextModel::Gru(m) => m.features_and_logits(batch, train),
            TextModel::Transformer(m) => m.features_and_logits(batch, train),
            TextModel::Pretrained(m) => {
                // Left-padded ids → right-padded with BERT's pad id and an attention mask.
                let pad = m.bert.config().pad_token_id;
                m.features_and_logits(&bert::BertBatch::from_left_padded(batch, pad), train)
            }
        }
    }

    /// Whether [`TextModel::outputs_alone`] runs: texts of any lengths in one batch, each row's
    /// result exactly its result alone (the CPU GRU's or the CPU BERT encoder's batch-invariant
    /// inference).
    pub fn scores_rows_alone(&self) -> bool {
        match self {
            TextModel::Gru(m) => m.packed_on_cpu(),
            TextModel::Pretrained(m) => m.scores_rows_alone(),
            TextModel::Transformer(_) => false,
        }
    }

    /// Features of each of `sources` `[batch, S·d]` and logits `[batch, classes]` of `seqs` (any
    /// lengths, no padding between them), each row bit for bit what it gets scored alone; `None`
    /// where the model cannot ([`TextModel::scores_rows_alone`]).
    pub fn outputs_alone(
        &self,
        seqs: &[&[i64]],
        sources: &[crate::detect::FeatureSource],
    ) -> Option<(Tensor, Tensor)> {
        let m = match self {
            TextModel::Gru(m) => m,
            TextModel::Pretrained(b) => return b.features_and_logits_alone(seqs, sources),
            TextModel::Transformer(_) => return None,
        };
        let (f, l) = m.features_and_logits_alone(seqs)?;
        if sources.len() <= 1 {
            return Some((f, l));
        }
        // A GRU has the penultimate source only (what `outputs` gives for the others too).
        let parts: Vec<Tensor> = sources.iter().map(|_| f.shallow_clone()).collect();
        Some((Tensor::cat(&parts, 1), l))
    }

    /// [`TextModel::outputs_alone`] (penultimate features) as a job for another thread: the GRU on
    /// the CPU; `None` for other models.
    pub fn outputs_alone_job(&self, seqs: &[&[i64]]) -> Option<gru::AloneJob> {
        match self {
            TextModel::Gru(m) => m.alone_job(seqs),
            _ => None,
        }
    }

    /// The classification head `z = W f + b`: `W` `[classes, d]`, `b` `[classes]` (detached).
    pub fn head(&self) -> (Tensor, Tensor) {
        match self {
            TextModel::Gru(m) => m.head(),
            TextModel::Transformer(m) => m.head(),
            TextModel::Pretrained(m) => m.head(),
        }
    }

    /// Whether features can be read from `source` (layers: pretrained encoders only, layer index at
    /// most their depth).
    pub fn supports(&self, source: crate::detect::FeatureSource) -> bool {
        use crate::detect::FeatureSource as S;
        match (self, source) {
            (_, S::Penultimate) => true,
            (TextModel::Pretrained(m), S::Layer { layer, .. }) => {
                layer as i64 <= m.bert.config().num_hidden_layers
            }
            (TextModel::Pretrained(_), S::LayerMean { .. }) => true,
            _ => false,
        }
    }

    /// Every source [`TextModel::supports`], penultimate first (pretrained encoders: each layer's
    /// mean and `[CLS]` state, the last layer's mean being the penultimate features, then the
    /// averages over layers).
    pub fn feature_sources(&self) -> Vec<crate::detect::FeatureSource> {
        use crate::detect::{FeatureSource as S, Pool};
        let mut v = vec![S::Penultimate];
        if let TextModel::Pretrained(m) = self {
            let l = m.bert.config().num_hidden_layers as usize;
            for layer in 0..=l {
                if layer < l {
                    v.push(S::Layer {
                        layer,
                        pool: Pool::Mean,
                    });
                }
                v.push(S::Layer {
                    layer,
                    pool: Pool::Cls,
                });
            }
            v.push(S::LayerMean { pool: Pool::Mean });
            v.push(S::LayerMean { pool: Pool::Cls });
        }
        v
    }

    /// Features of each of `sources`, concatenated `[batch, S·d]`, and logits `[batch, classes]`
    /// (inference). With `[Penultimate]` alone this is [`TextModel::features_and_logits`]. Sources a
    /// model does not [`TextModel::supports`] give its penultimate features; callers check first.
    pub fn outputs(
        &self,
        batch: &TokenBatch,
        sources: &[crate::detect::FeatureSource],
    ) -> (Tensor, Tensor) {
        use crate::detect::FeatureSource as S;
        if let TextModel::Pretrained(m) = self {
            if sources.iter().any(|s| *s != S::Penultimate) {
                let pad = m.bert.config().pad_token_id;
                return m.features_at(&bert::BertBatch::from_left_padded(batch, pad), sources);
            }
        }
        let (f, l) = self.features_and_logits(batch, false);
        if sources.len() == 1 {
            return (f, l);
        }
        let parts: Vec<Tensor> = sources.iter().map(|_| f.shallow_clone()).collect();
        (Tensor::cat(&parts, 1), l)
    }

    /// Copies a pretrained encoder's weights (`dir/model.safetensors`) into the model; the head stays
    /// as initialised. Other models have nothing to load and return an error.
    pub fn load_pretrained(&self, dir: &std::path::Path) -> Result<()> {
        match self {
            TextModel::Pretrained(m) => m.bert.load_safetensors(&dir.join("model.safetensors")),
            _ => Err(OeError::Config(
                "only a pretrained encoder loads pretrained weights".into(),
            )),
        }
    }

    /// Penultimate features `[batch, dim]`.
    pub fn features(&self, batch: &TokenBatch) -> Tensor {
        self.features_and_logits(batch, false).0
    }
}

/// The directory of the pretrained MiniLM: `$OE_MODELS_DIR/all-MiniLM-L6-v2`, else the
/// `.models/all-MiniLM-L6-v2` that `.ci/setup` fills, looked up from the executable's folder upwards
/// and then from the working directory.
/// A linear layer applied row by row: `x` `[B, D]` and `l` (`[k, D]` weights, `[k]` bias) give
/// `[B, k]`, each row's dot products a reduction over D whose order does not depend on B. (A
/// matrix product picks its kernel by the number of rows, and with MKL the results for fewer than
/// 16 rows differ in the last bits from those of larger batches; this form makes a text's logits
/// independent of its batch's size, which the scoring engine relies on.)
pub fn row_linear(x: &Tensor, l: &nn::Linear) -> Tensor {
    let y =
        (x.unsqueeze(1) * l.ws.unsqueeze(0)).sum_dim_intlist([-1i64].as_slice(), false, x.kind());
    match &l.bs {
        Some(b) => y + b,
        None => y,
    }
}

pub fn default_minilm_dir() -> crate::error::Result<std::path::PathBuf> {
    const NAME: &str = "all-MiniLM-L6-v2";
    let mut tried = Vec::new();
    if let Some(d) = std::env::var_os("OE_MODELS_DIR") {
        tried.push(std::path::PathBuf::from(d).join(NAME));
    }
    if let Ok(exe) = std::env::current_exe() {
        tried.extend(
            exe.ancestors()
                .skip(1)
                .map(|a| a.join(".models").join(NAME)),
        );
    }
    tried.push(std::path::PathBuf::from(".models").join(NAME));
    tried
        .iter()
        .find(|d| d.join("config.json").is_file() && d.join("model.safetensors").is_file())
        .cloned()
        .ok_or_else(|| {
            crate::error::OeError::Config(format!(
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
