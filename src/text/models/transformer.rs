//! A transformer encoder classifier trained from scratch, with the GRU's interface.
//!
//! Pre-layer-norm encoder blocks (multi-head self-attention, GELU feed-forward), learned position
//! embeddings counted from each text's first real token, padded keys masked out, and masked pooling:
//! a text's logits never depend on the rest of its batch.

use super::{TokenBatch, PAD_ID};
use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

/// How token states become one text vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean over real tokens.
    #[default]
    Mean,
    /// Element-wise max over real tokens.
    Max,
    /// The last real token's state.
    Last,
}

/// Transformer hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformerConfig {
    pub layers: i64,
    pub heads: i64,
    /// Model width (embedding and hidden size); divisible by `heads`.
    pub width: i64,
    /// Feed-forward inner size.
    pub ff: i64,
    pub dropout: f64,
    /// Longest input in tokens; longer texts keep their first `max_len` tokens.
    pub max_len: usize,
    pub pooling: Pooling,
    /// The head's logits as row-wise reductions ([`super::row_linear`]); models saved before it
    /// (no field in `run.json`) keep the matrix product and their exact scores.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub row_head: bool,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            layers: 2,
            heads: 4,
            width: 128,
            ff: 256,
            dropout: 0.1,
            max_len: 256,
            pooling: Pooling::Mean,
            row_head: true,
        }
    }
}

#[derive(Debug)]
struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    out: nn::Linear,
    ln2: nn::LayerNorm,
    ff1: nn::Linear,
    ff2: nn::Linear,
}

/// The transformer classifier.
#[derive(Debug)]
pub struct TransformerClassifier {
    tok: nn::Embedding,
    pos: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    head: nn::Linear,
    cfg: TransformerConfig,
}

impl TransformerClassifier {
    pub fn new(
        path: &nn::Path,
        cfg: &TransformerConfig,
        vocab_size: i64,
        n_classes: i64,
    ) -> Result<Self> {
        if cfg.heads < 1 || cfg.width % cfg.heads != 0 || cfg.layers < 1 || cfg.max_len == 0 {
            return Err(OeError::Config(format!(
                "transformer: width {} must be a positive multiple of heads {}, with at least one layer and max_len > 0",
                cfg.width, cfg.heads
            )));
        }
        let d = cfg.width;
        let emb_cfg = nn::EmbeddingConfig {
            padding_idx: PAD_ID,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        let tok = nn::embedding(path / "tok", vocab_size, d, emb_cfg);
        let pos = nn::embedding(
            path / "pos",
            cfg.max_len as i64,
            d,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            },
        );
        let blocks = (0..cfg.layers)
            .map(|i| {
                let p = path / format!("block{i}");
                Block {
                    ln1: nn::layer_norm(&p / "ln1", vec![d], Default::default()),
                    qkv: nn::linear(&p / "qkv", d, 3 * d, Default::default()),
                    out: nn::linear(&p / "out", d, d, Default::default()),
                    ln2: nn::layer_norm(&p / "ln2", vec![d], Default::default()),
                    ff1: nn::linear(&p / "ff1", d, cfg.ff, Default::default()),
                    ff2: nn::linear(&p / "ff2", cfg.ff, d, Default::default()),
                }
            })
            .collect();
        Ok(Self {
            tok,
            pos,
            blocks,
            ln_f: nn::layer_norm(path / "ln_f", vec![d], Default::default()),
            head: nn::linear(path / "head", d, n_classes, Default::default()),
            cfg: cfg.clone(),
        })
    }

    /// Features (pooled, `[batch, width]`) and logits (`[batch, classes]`). Inputs longer than
    /// `max_len` must be truncated by the caller (see `ModelConfig::max_len`); here the last `max_len`
    /// positions are kept as a guard.
    /// The classification head: weights `[classes, width]`, bias `[classes]`.
    pub fn head(&self) -> (Tensor, Tensor) {
        let b = self.head.bs.as_ref().map(Tensor::detach);
        let w = self.head.ws.detach();
        let b = b.unwrap_or_else(|| Tensor::zeros([w.size()[0]], (w.kind(), w.device())));
        (w, b)
    }

    pub fn features_and_logits(&self, batch: &TokenBatch, train: bool) -> (Tensor, Tensor) {
        let (b, t_full) = batch.tokens.size2().expect("tokens are [batch, time]");
        let max_len = self.cfg.max_len as i64;
        let (tokens, t) = if t_full > max_len {
            (batch.tokens.narrow(1, t_full - max_len, max_len), max_len)
        } else {
            (batch.tokens.shallow_clone(), t_full)
        };
        let lengths = batch.lengths.clamp_max(t);
        let dev = tokens.device();
        let pos_idx = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0);
        let start = (-&lengths + t).unsqueeze(1); // first real position per row
        let mask = pos_idx.ge_tensor(&start); // [B, T]
        let positions = (&pos_idx - &start).clamp_min(0);
        let mut x = self.tok.forward(&tokens) + self.pos.forward(&positions);
        x = x.dropout(self.cfg.dropout, train);
        let (h, d) = (self.cfg.heads, self.cfg.width);
        let dh = d / h;
        // Additive key mask [B, 1, 1, T]: 0 for real tokens, a large negative for padding.
        let key_bias = (mask.logical_not().to_kind(Kind::Float) * -1e9).view([b, 1, 1, t]);
        for blk in &self.blocks {
            let y = x.apply(&blk.ln1).apply(&blk.qkv).view([b, t, 3, h, dh]);
            let q = y.select(2, 0).transpose(1, 2); // [B, h, T, dh]
            let k = y.select(2, 1).transpose(1, 2);
            let v = y.select(2, 2).transpose(1, 2);
            let att = (q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt() + &key_bias)
                .softmax(-1, Kind::Float)
                .dropout(self.cfg.dropout, train);
            let ctx = att.matmul(&v).transpose(1, 2).contiguous().view([b, t, d]);
            x = &x + ctx.apply(&blk.out).dropout(self.cfg.dropout, train);
            let f = x
                .apply(&blk.ln2)
                .apply(&blk.ff1)
                .gelu("none")
                .apply(&blk.ff2)
                .dropout(self.cfg.dropout, train);
            x = &x + f;
        }
        let x = x.apply(&self.ln_f);
        let m = mask.unsqueeze(-1).to_kind(Kind::Float); // [B, T, 1]
        let pooled = match self.cfg.pooling {
            Pooling::Mean => {
                (&x * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                    / m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                        .clamp_min(1.0)
            }
            Pooling::Max => (&x + (-&m + 1.0) * -1e9).amax([1i64].as_slice(), false),
            Pooling::Last => x.select(1, t - 1),
        };
        let logits = if self.cfg.row_head {
            super::row_linear(&pooled, &self.head)
        } else {
            pooled.apply(&self.head)
        };
        (pooled, logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn scores_do_not_depend_on_the_batch() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        for pooling in [Pooling::Mean, Pooling::Max, Pooling::Last] {
            let cfg = TransformerConfig {
                pooling,
                ..Default::default()
            };
            let m = TransformerClassifier::new(&(&vs.root() / format!("{pooling:?}")), &cfg, 40, 4)
                .unwrap();
            let a: Vec<i64> = vec![5, 6, 7];
            let b: Vec<i64> = (2..30).collect();
            let alone = m
                .features_and_logits(&TokenBatch::left_padded(&[&a], None, Device::Cpu), false)
                .1;
            let both = m
                .features_and_logits(
                    &TokenBatch::left_padded(&[&b, &a], None, Device::Cpu),
                    false,
                )
                .1;
            let diff = (alone.get(0) - both.get(1)).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{pooling:?}: {diff}");
            assert_eq!(both.size(), [2, 4]);
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = TransformerConfig {
            width: 130,
            heads: 4,
            ..Default::default()
        };
        assert!(TransformerClassifier::new(&vs.root(), &cfg, 10, 2).is_err());
    }
}
