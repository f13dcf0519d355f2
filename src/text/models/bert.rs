//! A pretrained BERT-family encoder (BERT, MiniLM, ...) on tch, loading Hugging Face checkpoints.
//!
//! The architecture is Hugging Face's `BertModel` (post-layer-norm): embeddings (word + position +
//! token type, then LayerNorm), `num_hidden_layers` blocks of multi-head self-attention and a GELU
//! feed-forward, each followed by a residual LayerNorm. Variables carry Hugging Face's names
//! (`embeddings.word_embeddings.weight`, `encoder.layer.N.attention.self.query.weight`, ...), so a
//! `model.safetensors` written by `transformers` loads directly, with or without a `bert.` prefix.
//!
//! Padding: BERT's pad id is 0 ([`BERT_PAD_ID`]) and right padding is conventional ([`BertBatch`]).
//! Padded keys are masked out of attention and position ids count real tokens only, so a text's
//! hidden states (at its real tokens) and its pooled vector do not depend on the rest of its batch or
//! on the padding side (up to float rounding).
//!
//! The set-up script (`.ci/setup`) places all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) in
//! `.models/all-MiniLM-L6-v2/`; `tests/bert.rs` pins its sentence embeddings.

use super::TokenBatch;
use crate::detect::{FeatureSource, Pool};
use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, nn::Module, Device, Kind, Tensor};

/// BERT's padding token id (`[PAD]` = 0 in the uncased BERT vocabulary).
pub const BERT_PAD_ID: i64 = 0;

/// The feed-forward activation (`hidden_act` in `config.json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// Exact GELU, `x * Phi(x)` (erf form).
    #[default]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
}

/// A Hugging Face BERT `config.json` (fields this encoder uses; others are ignored). Missing fields
/// take BERT-base's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: HiddenAct,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// Longest input in tokens (size of the position table).
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    /// Only `"absolute"` is supported.
    pub position_embedding_type: String,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: BERT_PAD_ID,
            position_embedding_type: "absolute".into(),
        }
    }
}

impl BertConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
        let cfg: Self = serde_json::from_slice(&bytes)
            .map_err(|e| OeError::parse(path, e.line(), e.to_string()))?;
        cfg.validate()
            .map_err(|e| OeError::parse(path, 1, e.to_string()))?;
        Ok(cfg)
    }

    /// Checks sizes and unsupported options.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(OeError::Config(format!("BERT config: {m}")));
        if self.num_attention_heads < 1 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size {} must be a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.vocab_size < 1
            || self.num_hidden_layers < 1
            || self.intermediate_size < 1
            || self.max_position_embeddings < 1
            || self.type_vocab_size < 1
        {
            return bad("vocab_size, num_hidden_layers, intermediate_size, max_position_embeddings and type_vocab_size must be positive".into());
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            ));
        }
        Ok(())
    }
}

/// Cuts `ids` longer than `max_len` to their first `max_len - 1` ids and their last one (the
/// `[SEP]`), as Hugging Face's truncation does for one sequence.
pub(crate) fn truncate_keep_last(mut ids: Vec<i64>, max_len: Option<usize>) -> Vec<i64> {
    if let Some(m) = max_len {
        if ids.len() > m && m >= 1 {
            let last = *ids.last().expect("non-empty");
            ids.truncate(m - 1);
            ids.push(last);
        }
    }
    ids
}

/// A batch for [`BertModel`] / [`BertClassifier`]: right-padded token ids and an attention mask.
#[derive(Debug)]
pub struct BertBatch {
    /// `[batch, time]`, int64; padded with the pad id (0 for BERT) after each text's tokens.
    pub input_ids: Tensor,
    /// `[batch, time]`, int64: 1 at real tokens, 0 at padding.
    pub attention_mask: Tensor,
}

impl BertBatch {
    /// Right-pads `seqs` (ids that already include `[CLS]`/`[SEP]`) with `pad_id` to the longest (at
    /// least 1 step) and moves the batch to `device`. Longer than `max_len`: first `max_len - 1` ids and
    /// the last one are kept.
    pub fn right_padded(
        seqs: &[&[i64]],
        pad_id: i64,
        max_len: Option<usize>,
        device: Device,
    ) -> Self {
        let seqs: Vec<Vec<i64>> = seqs
            .iter()
            .map(|s| truncate_keep_last(s.to_vec(), max_len))
            .collect();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; seqs.len() * t];
        let mut mask = vec![0i64; seqs.len() * t];
        for (i, s) in seqs.iter().enumerate() {
            ids[i * t..i * t + s.len()].copy_from_slice(s);
            mask[i * t..i * t + s.len()].fill(1);
        }
        let shape = [seqs.len() as i64, t as i64];
        Self {
            input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            attention_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
        }
    }

    /// Converts a left-padded [`TokenBatch`] (pad id 1, real tokens at the last `lengths` positions)
    /// holding BERT token ids into a right-padded batch with pad id `pad_id`, on the same device.
    pub fn from_left_padded(batch: &TokenBatch, pad_id: i64) -> Self {
        let (_, t) = batch.tokens.size2().expect("tokens are [batch, time]");
        let dev = batch.tokens.device();
        let pos = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0); // [1, T]
        let lengths = batch.lengths.clamp(0, t).unsqueeze(1); // [B, 1]
        let real = pos.lt_tensor(&lengths); // [B, T]: true for the first `len` positions
        let src = (&pos + (-&lengths + t)).clamp_max(t - 1); // source column of each target column
        let gathered = batch.tokens.gather(1, &src, false);
        let input_ids = gathered.where_self(&real, &Tensor::full_like(&gathered, pad_id));
        Self {
            input_ids,
            attention_mask: real.to_kind(Kind::Int64),
        }
    }

    /// Moves the batch to `device`.
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            input_ids: self.input_ids.to_device(device),
            attention_mask: self.attention_mask.to_device(device),
        }
    }
}

#[derive(Debug)]
struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_ln: nn::LayerNorm,
    inter: nn::Linear,
    out: nn::Linear,
    out_ln: nn::LayerNorm,
}

/// The BERT encoder (no pooler: sentence vectors come from [`mean_pool`]).
#[derive(Debug)]
pub struct BertModel {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    emb_ln: nn::LayerNorm,
    layers: Vec<Layer>,
    cfg: BertConfig,
    /// Every variable with its Hugging Face name (relative to the encoder), for loading checkpoints.
    named: Vec<(String, Tensor)>,
}

impl BertModel {
    /// Builds the encoder's (trainable) variables under `path`, named as Hugging Face names them
    /// relative to `path`, with BERT's initialisation (normal(0, 0.02) weights); load pretrained weights
    /// with [`BertModel::load_safetensors`]. Panics on an invalid config (see [`BertConfig::validate`]).
    pub fn new(path: &nn::Path, cfg: &BertConfig) -> Self {
        cfg.validate().expect("invalid BERT config");
        let h = cfg.hidden_size;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let emb_cfg = nn::EmbeddingConfig {
            ws_init: init,
            ..Default::default()
        };
        let lin_cfg = nn::LinearConfig {
            ws_init: init,
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let ln_cfg = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        let mut named = Vec::new();
        let mut emb = |p: nn::Path, name: &str, n: i64| {
            let e = nn::embedding(&p / name, n, h, emb_cfg);
            named.push((format!("embeddings.{name}.weight"), e.ws.shallow_clone()));
            e
        };
        let e = path / "embeddings";
        let word = emb(e.clone(), "word_embeddings", cfg.vocab_size);
        let position = emb(
            e.clone(),
            "position_embeddings",
            cfg.max_position_embeddings,
        );
        let token_type = emb(e.clone(), "token_type_embeddings", cfg.type_vocab_size);
        let emb_ln = nn::layer_norm(&e / "LayerNorm", vec![h], ln_cfg);
        push_ln(&mut named, "embeddings.LayerNorm", &emb_ln);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = path / "encoder" / "layer" / i;
                let pre = format!("encoder.layer.{i}");
                let mut lin = |rel: &str, i_dim: i64, o_dim: i64| {
                    let mut q = p.clone();
                    for part in rel.split('.') {
                        q = &q / part;
                    }
                    let l = nn::linear(&q, i_dim, o_dim, lin_cfg);
                    named.push((format!("{pre}.{rel}.weight"), l.ws.shallow_clone()));
                    let bs = l.bs.as_ref().expect("linear with bias");
                    named.push((format!("{pre}.{rel}.bias"), bs.shallow_clone()));
                    l
                };
                let query = lin("attention.self.query", h, h);
                let key = lin("attention.self.key", h, h);
                let value = lin("attention.self.value", h, h);
                let attn_out = lin("attention.output.dense", h, h);
                let inter = lin("intermediate.dense", h, cfg.intermediate_size);
                let out = lin("output.dense", cfg.intermediate_size, h);
                let attn_ln =
                    nn::layer_norm(&p / "attention" / "output" / "LayerNorm", vec![h], ln_cfg);
                push_ln(
                    &mut named,
                    &format!("{pre}.attention.output.LayerNorm"),
                    &attn_ln,
                );
                let out_ln = nn::layer_norm(&p / "output" / "LayerNorm", vec![h], ln_cfg);
                push_ln(&mut named, &format!("{pre}.output.LayerNorm"), &out_ln);
                Layer {
                    query,
                    key,
                    value,
                    attn_out,
                    attn_ln,
                    inter,
                    out,
                    out_ln,
                }
            })
            .collect();
        Self {
            word,
            position,
            token_type,
            emb_ln,
            layers,
            cfg: cfg.clone(),
            named,
        }
    }

    /// The configuration the encoder was built with.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Hidden size `H` (the width of [`BertModel::forward`]'s output and of [`mean_pool`]).
    pub fn hidden_size(&self) -> i64 {
        self.cfg.hidden_size
    }

    /// The encoder's variables with their Hugging Face names (relative to the encoder).
    pub fn named_variables(&self) -> &[(String, Tensor)] {
        &self.named
    }

    /// Copies pretrained weights from a Hugging Face `model.safetensors` into the encoder's variables
    /// (they stay trainable). A variable `name` is read from `name` or `bert.name`; extra tensors in
    /// the file (pooler, `position_ids`, heads) are ignored; a missing tensor or a shape mismatch is an
    /// error. f16/bf16 files are converted to the variables' kind and device.
    pub fn load_safetensors(&self, file: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(file)
            .map_err(|e| OeError::Config(format!("{}: {e}", file.display())))?
            .into_iter()
            .collect();
        let missing: Vec<&str> = self
            .named
            .iter()
            .filter(|(n, _)| {
                !tensors.contains_key(n) && !tensors.contains_key(&format!("bert.{n}"))
            })
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(OeError::Config(format!(
                "{}: {} BERT weights missing, e.g. {}",
                file.display(),
                missing.len(),
                missing[..missing.len().min(3)].join(", ")
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, var) in &self.named {
                let src = tensors
                    .get(name)
                    .or_else(|| tensors.get(&format!("bert.{name}")))
                    .expect("checked above");
                if src.size() != var.size() {
                    return Err(OeError::Config(format!(
                        "{}: `{name}` has shape {:?}, the config wants {:?}",
                        file.display(),
                        src.size(),
                        var.size()
                    )));
                }
                let mut v = var.shallow_clone();
                v.copy_(src);
            }
            Ok(())
        })
    }

    /// Last hidden states `[B, T, H]` (float) for `input_ids` `[B, T]` (int64) and `attention_mask`
    /// `[B, T]` (any numeric or bool kind, nonzero = real token). Token type ids are all 0. Position ids
    /// count real tokens (`cumsum(mask) - 1`), which equals `0..T` for right padding (Hugging Face's
    /// convention) and also handles left padding. Hidden states at padded positions are meaningless.
    /// `train` switches dropout on. Panics if `T` exceeds `max_position_embeddings`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        self.forward_with(input_ids, attention_mask, train, |_, _| {})
    }

    /// [`BertModel::forward`], calling `on_layer(i, hidden [B, T, H])` with the hidden states after
    /// the embeddings (`i = 0`) and after each encoder layer (`i = 1..=L`).
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
        mut on_layer: impl FnMut(usize, &Tensor),
    ) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids are [batch, time]");
        assert!(
            t <= self.cfg.max_position_embeddings,
            "BERT input of {t} tokens exceeds max_position_embeddings {}",
            self.cfg.max_position_embeddings
        );
        let real = attention_mask.ne(0); // [B, T] bool
        let positions = (real.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let p_drop = self.cfg.hidden_dropout_prob;
        let mut x = self.word.forward(input_ids)
            + self.position.forward(&positions)
            + self.token_type.forward(&input_ids.zeros_like());
        x = x.apply(&self.emb_ln).dropout(p_drop, train);
        on_layer(0, &x);
        let heads = self.cfg.num_attention_heads;
        let h = self.cfg.hidden_size;
        let dh = h / heads;
        // Additive key mask [B, 1, 1, T]: 0 at real keys, a large negative at padding (exp underflows
        // to exactly 0, so padding has no influence on real tokens).
        let key_bias = (real.logical_not().to_kind(x.kind()) * -1e9).view([b, 1, 1, t]);
        let split = |y: Tensor| y.view([b, t, heads, dh]).transpose(1, 2); // [B, heads, T, dh]
        let act = self.cfg.hidden_act;
        let attn_drop = if train {
            self.cfg.attention_probs_dropout_prob
        } else {
            0.0
        };
        for (li, l) in self.layers.iter().enumerate() {
            let q = split(x.apply(&l.query));
            let k = split(x.apply(&l.key));
            let v = split(x.apply(&l.value));
            let ctx = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&key_bias),
                attn_drop,
                false,
                None,
                false,
            ); // [B, heads, T, dh]
            let ctx = ctx.transpose(1, 2).contiguous().view([b, t, h]);
            let a = (ctx.apply(&l.attn_out).dropout(p_drop, train) + &x).apply(&l.attn_ln);
            let f = a.apply(&l.inter);
            let f = match act {
                HiddenAct::Gelu => f.gelu("none"),
                HiddenAct::GeluNew => f.gelu("tanh"),
                HiddenAct::Relu => f.relu(),
            };
            x = (f.apply(&l.out).dropout(p_drop, train) + a).apply(&l.out_ln);
            on_layer(li + 1, &x);
        }
        x
    }
}

fn push_ln(named: &mut Vec<(String, Tensor)>, name: &str, ln: &nn::LayerNorm) {
    let w = ln.ws.as_ref().expect("affine layer norm");
    let b = ln.bs.as_ref().expect("affine layer norm");
    named.push((format!("{name}.weight"), w.shallow_clone()));
    named.push((format!("{name}.bias"), b.shallow_clone()));
}

/// Sentence-transformers mean pooling: `hidden` `[B, T, H]` averaged over the positions where `mask`
/// `[B, T]` is nonzero, giving `[B, H]` (a row with no real token gives zeros).
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.ne(0).to_kind(hidden.kind()).unsqueeze(-1); // [B, T, 1]
    let sum = (hidden * &m).sum_dim_intlist([1i64].as_slice(), false, hidden.kind());
    let count = m
        .sum_dim_intlist([1i64].as_slice(), false, hidden.kind())
        .clamp_min(1e-9);
    sum / count
}

/// Hyper-parameters of [`BertClassifier`]'s head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertClassifierConfig {
    /// Dropout on the pooled vector before the linear head (BERT's `classifier_dropout`).
    pub dropout: f64,
    /// Longest input in tokens, `[CLS]`/`[SEP]` included (callers truncate with it).
    pub max_len: usize,
    /// The head's logits as row-wise reductions ([`crate::text::models::row_linear`]: a text's
    /// logits do not depend on its batch's size, so scoring needs no filler rows); models saved
    /// before it (no field in `run.json`) keep the matrix product and their exact scores.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub row_head: bool,
}

impl Default for BertClassifierConfig {
    fn default() -> Self {
        Self {
            dropout: 0.1,
            max_len: 128,
            row_head: true,
        }
    }
}

/// A BERT encoder with a linear head on the mean-pooled last hidden states. Variables live under
/// `path / "bert"` (the encoder, Hugging Face names) and `path / "classifier"` (the head), as in
/// `transformers`' `BertForSequenceClassification`, so a saved VarStore reloads with `vs.load`.
#[derive(Debug)]
pub struct BertClassifier {
    pub bert: BertModel,
    head: nn::Linear,
    cfg: BertClassifierConfig,
    /// Set by [`BertClassifier::freeze_for_inference`] on the CPU, cleared when the model trains:
    /// scoring then runs the batch-invariant CPU encoder ([`super::bert_cpu`]).
    for_inference: std::cell::Cell<bool>,
    /// That encoder's host copy of the weights, built on first use (evaluation, which keeps
    /// libtorch's forward, never builds it); dropped when the model trains.
    frozen: std::cell::RefCell<Option<std::sync::Arc<super::bert_cpu::Frozen>>>,
}

impl BertClassifier {
    /// A randomly initialised encoder (from `bert_cfg`) and head with `n_classes` outputs.
    pub fn new(
        path: &nn::Path,
        bert_cfg: &BertConfig,
        cfg: &BertClassifierConfig,
        n_classes: i64,
    ) -> Self {
        let bert = BertModel::new(&(path / "bert"), bert_cfg);
        let head = nn::linear(
            path / "classifier",
            bert_cfg.hidden_size,
            n_classes,
            nn::LinearConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        Self {
            bert,
            head,
            cfg: cfg.clone(),
            for_inference: Default::default(),
            frozen: Default::default(),
        }
    }

    /// Reads `dir/config.json`, builds the classifier under `path` and loads the encoder's pretrained
    /// weights from `dir/model.safetensors` (the head stays randomly initialised).
    pub fn from_pretrained(
        path: &nn::Path,
        dir: &Path,
        cfg: &BertClassifierConfig,
        n_classes: i64,
    ) -> Result<Self> {
        let bert_cfg = BertConfig::from_dir(dir)?;
        let m = Self::new(path, &bert_cfg, cfg, n_classes);
        m.bert.load_safetensors(&dir.join("model.safetensors"))?;
        Ok(m)
    }

    /// The head's configuration.
    pub fn config(&self) -> &BertClassifierConfig {
        &self.cfg
    }

    /// Penultimate features (the mean-pooled encoder output, `[B, H]`) and logits (`[B, classes]`).
    /// `train` switches dropout on.
    pub fn features_and_logits(&self, batch: &BertBatch, train: bool) -> (Tensor, Tensor) {
        if train {
            // The weights are about to change.
            self.for_inference.set(false);
            self.frozen.borrow_mut().take();
        }
        let hidden = self
            .bert
            .forward(&batch.input_ids, &batch.attention_mask, train);
        let pooled = mean_pool(&hidden, &batch.attention_mask);
        let pooled_in = pooled.dropout(self.cfg.dropout, train);
        let logits = if self.cfg.row_head {
            crate::text::models::row_linear(&pooled_in, &self.head)
        } else {
            pooled_in.apply(&self.head)
        };
        (pooled, logits)
    }

    /// Whether the packed, batch-invariant CPU encoder runs ([`super::bert_cpu`]): the weights are
    /// float32 on the CPU.
    pub fn packed_on_cpu(&self) -> bool {
        self.head.ws.device() == Device::Cpu && self.head.ws.kind() == Kind::Float
    }

    /// Fixes the weights for inference: on the CPU, scoring then runs [`super::bert_cpu`] (whose
    /// host copy of the weights is made on first use, [`BertClassifier::frozen`]). A training
    /// forward undoes it.
    pub fn freeze_for_inference(&self) {
        let cpu = self.packed_on_cpu();
        self.for_inference.set(cpu);
        if cpu {
            // The encoder runs on oe's workers (libtorch's thread count, taken once, as the CPU
            // GRU takes it); libtorch's own OpenMP pool becomes one thread on this thread, so the
            // small operations left to it (the head's softmax over a batch) do not start OpenMP
            // workers that then spin for a while against the encoder's (a service at 4
            // concurrent requests lost 10% of its CPU to that).
            super::gru_cpu::adopt_torch_threads();
        }
    }

    /// The host copy of the weights for [`super::bert_cpu`], made now if it was not yet; `None`
    /// unless frozen for inference on the CPU ([`BertClassifier::freeze_for_inference`]).
    pub fn frozen(&self) -> Option<std::sync::Arc<super::bert_cpu::Frozen>> {
        if !self.for_inference.get() {
            return None;
        }
        let mut slot = self.frozen.borrow_mut();
        let f = slot.get_or_insert_with(|| {
            std::sync::Arc::new(tch::no_grad(|| super::bert_cpu::Frozen::new(self)))
        });
        Some(f.clone())
    }

    /// Features of each of `sources` `[B, S·H]` (as [`BertClassifier::features_at`]) and logits
    /// `[B, classes]` of `seqs` (token ids with `[CLS]`/`[SEP]`, any lengths up to the position
    /// table, as the scorer cuts them; no padding between them), each row bit for bit what its
    /// text gets alone ([`super::bert_cpu`]). `None` unless frozen for inference on the CPU
    /// ([`BertClassifier::freeze_for_inference`]).
    pub fn features_and_logits_alone(
        &self,
        seqs: &[&[i64]],
        sources: &[FeatureSource],
    ) -> Option<(Tensor, Tensor)> {
        Some(self.frozen()?.features_and_logits(seqs, sources))
    }

    /// Whether [`BertClassifier::features_and_logits_alone`] runs.
    pub fn scores_rows_alone(&self) -> bool {
        self.for_inference.get()
    }

    /// The classification head: weights `[classes, hidden]`, bias `[classes]`.
    pub fn head(&self) -> (Tensor, Tensor) {
        let w = self.head.ws.detach();
        let b = self.head.bs.as_ref().map(Tensor::detach);
        let b = b.unwrap_or_else(|| Tensor::zeros([w.size()[0]], (w.kind(), w.device())));
        (w, b)
    }

    /// Features from each of `sources`, concatenated `[B, S·H]`, and the logits `[B, classes]`
    /// (inference: no dropout). [`FeatureSource::Penultimate`] is the pooled output the head sees;
    /// layer `i` is the hidden state after the embeddings (0) or encoder layer `i`, mean-pooled over
    /// real tokens or taken at `[CLS]` (position 0); the layer mean averages layers 1..=L.
    pub fn features_at(&self, batch: &BertBatch, sources: &[FeatureSource]) -> (Tensor, Tensor) {
        let n_layers = self.bert.config().num_hidden_layers as usize;
        let mut pooled: std::collections::HashMap<(usize, Pool), Tensor> = Default::default();
        let wanted = |i: usize, p: Pool| {
            sources.iter().any(|s| match *s {
                FeatureSource::Layer { layer, pool } => layer == i && pool == p,
                FeatureSource::LayerMean { pool } => i >= 1 && pool == p,
                FeatureSource::Penultimate => false,
            })
        };
        let mask = &batch.attention_mask;
        let hidden = self
            .bert
            .forward_with(&batch.input_ids, mask, false, |i, h| {
                for p in [Pool::Mean, Pool::Cls] {
                    if wanted(i, p) {
                        let v = match p {
                            Pool::Mean => mean_pool(h, mask),
                            Pool::Cls => h.select(1, 0),
                        };
                        pooled.insert((i, p), v);
                    }
                }
            });
        let pen = mean_pool(&hidden, mask);
        let logits = if self.cfg.row_head {
            crate::text::models::row_linear(&pen, &self.head)
        } else {
            pen.apply(&self.head)
        };
        let parts: Vec<Tensor> = sources
            .iter()
            .map(|s| match *s {
                FeatureSource::Penultimate => pen.shallow_clone(),
                FeatureSource::Layer { layer, pool } => pooled
                    .get(&(layer.min(n_layers), pool))
                    .map(Tensor::shallow_clone)
                    .unwrap_or_else(|| pen.zeros_like()),
                FeatureSource::LayerMean { pool } => {
                    let v: Vec<Tensor> = (1..=n_layers)
                        .filter_map(|i| pooled.get(&(i, pool)).map(Tensor::shallow_clone))
                        .collect();
                    Tensor::stack(&v, 0).mean_dim([0i64].as_slice(), false, pen.kind())
                }
            })
            .collect();
        (Tensor::cat(&parts, 1), logits)
    }

    /// Logits `[B, classes]`.
    pub fn logits(&self, batch: &BertBatch, train: bool) -> Tensor {
        self.features_and_logits(batch, train).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 32,
            max_position_embeddings: 20,
            ..Default::default()
        }
    }

    #[test]
    fn config_parses_hf_json_and_rejects_bad_sizes() {
        let j = r#"{"architectures":["BertModel"],"hidden_act":"gelu","hidden_size":384,
            "num_attention_heads":12,"num_hidden_layers":6,"intermediate_size":1536,"vocab_size":30522,
            "layer_norm_eps":1e-12,"unknown_field":3}"#;
        let c: BertConfig = serde_json::from_str(j).unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.num_hidden_layers,
                c.max_position_embeddings
            ),
            (384, 6, 512)
        );
        assert!(c.validate().is_ok());
        let c: BertConfig = serde_json::from_str(r#"{"hidden_act":"gelu_pytorch_tanh"}"#).unwrap();
        assert_eq!(c.hidden_act, HiddenAct::GeluNew);
        let bad = BertConfig {
            hidden_size: 10,
            num_attention_heads: 3,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn names_match_hugging_face_and_batches_do_not_leak() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BertClassifier::new(&vs.root(), &tiny(), &Default::default(), 3);
        let vars = vs.variables();
        assert!(vars.contains_key("bert.embeddings.word_embeddings.weight"));
        assert!(vars.contains_key("bert.encoder.layer.1.attention.self.query.weight"));
        assert!(vars.contains_key("bert.encoder.layer.0.output.LayerNorm.bias"));
        assert!(vars.contains_key("classifier.weight"));
        // Every VarStore variable of the encoder is in `named` under the same name (minus `bert.`).
        assert_eq!(m.bert.named_variables().len() + 2, vars.len());
        for (n, _) in m.bert.named_variables() {
            assert!(vars.contains_key(&format!("bert.{n}")), "{n}");
        }
        let seqs: [&[i64]; 3] = [&[2, 5, 7, 3], &[2, 9, 3], &[2, 4, 4, 4, 4, 8, 3]];
        let all = BertBatch::right_padded(&seqs, BERT_PAD_ID, None, Device::Cpu);
        let (f_all, l_all) = m.features_and_logits(&all, false);
        for (i, s) in seqs.iter().enumerate() {
            let one = BertBatch::right_padded(&[s], BERT_PAD_ID, None, Device::Cpu);
            let (f, l) = m.features_and_logits(&one, false);
            let df = (f.get(0) - f_all.get(i as i64))
                .abs()
                .max()
                .double_value(&[]);
            let dl = (l.get(0) - l_all.get(i as i64))
                .abs()
                .max()
                .double_value(&[]);
            assert!(df < 1e-5 && dl < 1e-5, "row {i}: {df} {dl}");
        }
        // A left-padded TokenBatch converts to the same right-padded batch and the same outputs.
        let tb = TokenBatch::left_padded(&seqs, None, Device::Cpu);
        let conv = BertBatch::from_left_padded(&tb, BERT_PAD_ID);
        assert_eq!(conv.input_ids, all.input_ids);
        assert_eq!(conv.attention_mask, all.attention_mask);
        // The model also accepts left padding directly (positions follow the mask).
        let (f_left, _) = m.features_and_logits(
            &BertBatch {
                input_ids: tb.tokens.shallow_clone(),
                attention_mask: tb.mask().to_kind(Kind::Int64),
            },
            false,
        );
        assert!((f_left - f_all).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn truncation_keeps_the_last_token() {
        assert_eq!(
            truncate_keep_last(vec![1, 2, 3, 4, 5], Some(3)),
            vec![1, 2, 5]
        );
        assert_eq!(truncate_keep_last(vec![1, 2], Some(3)), vec![1, 2]);
        let b = BertBatch::right_padded(&[&[1, 2, 3, 4, 5], &[1, 9]], 0, Some(3), Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(b.input_ids.view([-1])).unwrap(),
            vec![1, 2, 5, 1, 9, 0]
        );
    }
}
