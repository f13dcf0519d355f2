//! The paper's GRU classifier (`ClfGRU`; README, "The paper's protocol: text").
//!
//! Embedding 50 (pad row zero) → 2-layer unidirectional GRU(128) → linear head on the top layer's last
//! hidden state. Variable names are PyTorch's (`embedding.weight`, `gru.weight_ih_l0`, ...,
//! `linear.weight`), so the paper's released weights load unchanged.

use super::{gru_cpu, PadMode, TokenBatch, PAD_ID};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// GRU hyper-parameters; defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GruConfig {
    pub embedding_dim: i64,
    pub hidden: i64,
    pub layers: i64,
    pub pad: PadMode,
}

impl Default for GruConfig {
    fn default() -> Self {
        Self {
            embedding_dim: 50,
            hidden: 128,
            layers: 2,
            pad: PadMode::Left,
        }
    }
}

/// What [`GruClassifier::forward_for_backward`] keeps: the GRU's tape and the head's input.
pub struct FusedTape {
    tape: gru_cpu::Tape,
    last: Tensor,
}

/// Features `[B, H]` and logits `[B, classes]` of a batch, computed on whichever thread calls it
/// ([`GruClassifier::alone_job`]).
pub type AloneJob = Box<dyn FnOnce() -> (Tensor, Tensor) + Send + 'static>;

/// The GRU classifier.
#[derive(Debug)]
pub struct GruClassifier {
    embedding: Tensor,
    /// Per layer: `[w_ih [3H, in], w_hh [3H, H], b_ih [3H], b_hh [3H]]`, gate rows in order r, z, n.
    layers: Vec<[Tensor; 4]>,
    linear_w: Tensor,
    linear_b: Tensor,
    cfg: GruConfig,
    /// Inference only: the first layer's input projections per vocabulary entry and the transposed
    /// weights ([`GruClassifier::freeze_for_inference`]); a training step drops them.
    frozen: std::cell::RefCell<Option<gru_cpu::Frozen>>,
    /// The arithmetic of inference's products ([`GruClassifier::set_precision`]).
    precision: std::cell::Cell<super::Precision>,
}

impl GruClassifier {
    /// Creates the variables with PyTorch's default initialisation: GRU and linear U(±1/√H), embedding
    /// N(0, 1) with the pad row zeroed.
    pub fn new(path: &nn::Path, cfg: &GruConfig, vocab_size: i64, n_classes: i64) -> Self {
        let h = cfg.hidden;
        let k = 1.0 / (h as f64).sqrt();
        let u = nn::Init::Uniform { lo: -k, up: k };
        let embedding = (path / "embedding").var(
            "weight",
            &[vocab_size, cfg.embedding_dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        tch::no_grad(|| {
            if vocab_size > PAD_ID {
                let _ = embedding.get(PAD_ID).fill_(0.0);
            }
        });
        let g = path / "gru";
        let layers = (0..cfg.layers)
            .map(|l| {
                let input = if l == 0 { cfg.embedding_dim } else { h };
                [
                    g.var(&format!("weight_ih_l{l}"), &[3 * h, input], u),
                    g.var(&format!("weight_hh_l{l}"), &[3 * h, h], u),
                    g.var(&format!("bias_ih_l{l}"), &[3 * h], u),
                    g.var(&format!("bias_hh_l{l}"), &[3 * h], u),
                ]
            })
            .collect();
        let lin = path / "linear";
        let linear_w = lin.var("weight", &[n_classes, h], u);
        let linear_b = lin.var("bias", &[n_classes], u);
        Self {
            embedding,
            layers,
            linear_w,
            linear_b,
            cfg: cfg.clone(),
            frozen: Default::default(),
            precision: Default::default(),
        }
    }

    /// Features (top-layer last hidden state, `[batch, H]`) and logits (`[batch, classes]`).
    /// The classification head: weights `[classes, hidden]`, bias `[classes]`.
    pub fn head(&self) -> (Tensor, Tensor) {
        (self.linear_w.detach(), self.linear_b.detach())
    }

    pub fn features_and_logits(&self, batch: &TokenBatch, train: bool) -> (Tensor, Tensor) {
        if !train && self.packed_for(batch) {
            let last = self.packed_inference(batch);
            let logits = gru_cpu::linear_rows(&last, &self.linear_w, &self.linear_b);
            return (last, logits);
        }
        let x = Tensor::embedding(&self.embedding, &batch.tokens, PAD_ID, false, false); // [B, T, E]
        let last = match self.cfg.pad {
            PadMode::Left => self.run_fused(&x, train),
            PadMode::Masked => self.run_masked(&x, &batch.mask()),
        };
        let logits = last.linear(&self.linear_w, Some(&self.linear_b));
        (last, logits)
    }

    /// Another handle on the same variables (for a worker thread: tensors are `Send`, not `Sync`).
    pub fn shallow_clone(&self) -> Self {
        Self {
            embedding: self.embedding.shallow_clone(),
            layers: gru_cpu::shallow_layers(&self.layers),
            linear_w: self.linear_w.shallow_clone(),
            linear_b: self.linear_b.shallow_clone(),
            cfg: self.cfg.clone(),
            frozen: std::cell::RefCell::new(
                self.frozen
                    .borrow()
                    .as_ref()
                    .map(gru_cpu::Frozen::shallow_clone),
            ),
            precision: self.precision.clone(),
        }
    }

    /// Whether [`super::gru_cpu`] runs this batch (inference, and
    /// [`GruClassifier::forward_for_backward`]): float32 weights and batch on the CPU.
    pub fn packed_for(&self, batch: &TokenBatch) -> bool {
        self.packed_on_cpu() && batch.tokens.device() == tch::Device::Cpu
    }

    /// Whether this model's inference runs on the fused CPU GRU (float32 weights on the CPU).
    pub fn packed_on_cpu(&self) -> bool {
        gru_cpu::supported(&self.embedding)
    }

    fn pad_steps(&self) -> gru_cpu::PadSteps {
        match self.cfg.pad {
            PadMode::Left => gru_cpu::PadSteps::Run,
            PadMode::Masked => gru_cpu::PadSteps::Skip,
        }
    }

    /// The fused CPU GRU over this model's weights (with the input table when frozen).
    fn gru(&self) -> gru_cpu::Gru {
        gru_cpu::Gru {
            embedding: self.embedding.shallow_clone(),
            layers: gru_cpu::shallow_layers(&self.layers),
            pad_id: PAD_ID,
            pad: self.pad_steps(),
            frozen: self
                .frozen
                .borrow()
                .as_ref()
                .map(|f| f.shallow_clone_with(self.precision.get() == super::Precision::Bf16)),
        }
    }

    /// [`gru_cpu::Gru::forward_split`] on `batch` (inference on the fused GRU's worker threads).
    fn packed_inference(&self, batch: &TokenBatch) -> Tensor {
        let (ids, lengths, steps) = Self::host_batch(batch);
        tch::no_grad(|| self.gru().forward_split(&ids, &lengths, steps))
    }

    /// Features `[B, H]` and logits `[B, classes]` of `seqs` (token ids, any lengths), each row
    /// exactly as if it were scored alone without padding, bit for bit, in one packed batch (the
    /// fused GRU with skipped pad steps and batch-invariant products). An empty sequence is one pad
    /// step under the reference's padding (what a batch of it alone computes) and the zero state
    /// under masked padding. `None` where the fused GRU does not run (weights off the CPU).
    pub fn features_and_logits_alone(&self, seqs: &[&[i64]]) -> Option<(Tensor, Tensor)> {
        self.alone_job(seqs).map(|job| job())
    }

    /// [`GruClassifier::features_and_logits_alone`] as a job that can run on another thread (it
    /// holds its own handles on the weights and its own copy of the ids).
    pub fn alone_job(&self, seqs: &[&[i64]]) -> Option<AloneJob> {
        if !self.packed_on_cpu() {
            return None;
        }
        let one_pad = [PAD_ID];
        let seqs: Vec<&[i64]> = seqs
            .iter()
            .map(|s| match self.cfg.pad {
                PadMode::Left if s.is_empty() => &one_pad[..],
                _ => *s,
            })
            .collect();
        let steps = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![PAD_ID; seqs.len() * steps];
        for (r, s) in seqs.iter().enumerate() {
            ids[(r + 1) * steps - s.len()..(r + 1) * steps].copy_from_slice(s);
        }
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let mut gru = self.gru();
        gru.pad = gru_cpu::PadSteps::Skip;
        let (w, b) = (self.linear_w.detach(), self.linear_b.detach());
        Some(Box::new(move || {
            let last = tch::no_grad(|| gru.forward_split(&ids, &lengths, steps));
            let logits = gru_cpu::linear_rows(&last, &w, &b);
            (last, logits)
        }))
    }

    /// Fixes the weights for inference: the first layer's input projections are then looked up
    /// per vocabulary entry ([`gru_cpu::input_table`]) instead of computed per token, and the
    /// transposed weights are kept ([`gru_cpu::Frozen`]). A training step drops them again.
    pub fn freeze_for_inference(&self) {
        if self.packed_on_cpu() && self.frozen.borrow().is_none() {
            let f = gru_cpu::Frozen::new(&self.embedding.detach(), &self.layers);
            let f = if self.precision.get() == super::Precision::Bf16 {
                f.with_bf16()
            } else {
                f
            };
            *self.frozen.borrow_mut() = Some(f);
        }
    }

    /// Sets the arithmetic of inference. bfloat16 needs the fused CPU GRU with frozen weights
    /// ([`GruClassifier::freeze_for_inference`]) and a CPU with AVX512_BF16; its packed weights are
    /// made once and kept.
    pub fn set_precision(&self, p: super::Precision) -> crate::error::Result<()> {
        use crate::error::OeError;
        if p == super::Precision::Bf16 {
            if !self.packed_on_cpu() {
                return Err(OeError::Config(
                    "--precision bf16 runs on the CPU only (the model is on a GPU)".into(),
                ));
            }
            if !p.available() {
                return Err(OeError::Config(
                    "--precision bf16 needs a CPU with AVX-512 BF16 instructions (avx512_bf16 in \
                     /proc/cpuinfo); this one lacks them: use the default float32"
                        .into(),
                ));
            }
            self.freeze_for_inference();
            let mut frozen = self.frozen.borrow_mut();
            if let Some(f) = frozen.take() {
                *frozen = Some(if f.has_bf16() { f } else { f.with_bf16() });
            }
        }
        self.precision.set(p);
        Ok(())
    }

    /// The arithmetic of inference now.
    pub fn precision(&self) -> super::Precision {
        self.precision.get()
    }

    /// A batch's ids (row-major), lengths and steps, on the host.
    fn host_batch(batch: &TokenBatch) -> (Vec<i64>, Vec<usize>, usize) {
        let steps = batch.tokens.size()[1] as usize;
        let ids = Vec::<i64>::try_from(batch.tokens.flatten(0, -1)).expect("token ids are int64");
        let lengths: Vec<usize> = Vec::<i64>::try_from(&batch.lengths)
            .expect("lengths are int64")
            .into_iter()
            .map(|l| l.max(0) as usize)
            .collect();
        (ids, lengths, steps)
    }

    /// Training on the CPU without autograd: logits `[batch, classes]` (no graph) and what
    /// [`GruClassifier::backward`] needs, or `None` where the fused GRU does not apply (then use
    /// [`GruClassifier::features_and_logits`] with autograd).
    pub fn forward_for_backward(&self, batch: &TokenBatch) -> Option<(Tensor, FusedTape)> {
        if !self.packed_for(batch) {
            return None;
        }
        // The weights are about to change.
        self.frozen.borrow_mut().take();
        let (ids, lengths, steps) = Self::host_batch(batch);
        let (last, tape) = tch::no_grad(|| self.gru().forward(&ids, &lengths, steps, true));
        let logits = tch::no_grad(|| last.linear(&self.linear_w, Some(&self.linear_b)));
        Some((logits, FusedTape { tape: tape?, last }))
    }

    /// The gradients of `Σ dlogits ⊙ logits` for every parameter, as `(variable, gradient)`: the
    /// variables are this model's tensors (shared with its var store). `dlogits`: `[batch, classes]`.
    pub fn backward(&self, t: &FusedTape, dlogits: &Tensor) -> Vec<(Tensor, Tensor)> {
        tch::no_grad(|| {
            let dl = dlogits.to_kind(Kind::Float).contiguous();
            let d_w = dl.tr().mm(&t.last); // [classes, H]
            let d_b = dl.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
            let dlast = dl.mm(&self.linear_w.detach()); // [batch, H]
            let g = self.gru().backward(&t.tape, &dlast);
            let mut out = vec![
                (self.embedding.shallow_clone(), g.embedding),
                (self.linear_w.shallow_clone(), d_w),
                (self.linear_b.shallow_clone(), d_b),
            ];
            for (vars, grads) in self.layers.iter().zip(g.layers) {
                for (v, d) in vars.iter().zip(grads) {
                    out.push((v.shallow_clone(), d));
                }
            }
            out
        })
    }

    /// The reference computation: libtorch's GRU over every position, padding included.
    fn run_fused(&self, x: &Tensor, train: bool) -> Tensor {
        let b = x.size()[0];
        let h0 = Tensor::zeros(
            [self.cfg.layers, b, self.cfg.hidden],
            (Kind::Float, x.device()),
        );
        let params: Vec<&Tensor> = self.layers.iter().flat_map(|l| l.iter()).collect();
        let (out, _) = x.gru(&h0, &params, true, self.cfg.layers, 0.0, train, false, true);
        out.select(1, -1)
    }

    /// Step by step; at padded steps the state is carried unchanged, so with left padding and h0 = 0
    /// the result equals running each sequence alone.
    fn run_masked(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let mut input = x.shallow_clone();
        let mut last = Tensor::zeros([b, self.cfg.hidden], (Kind::Float, x.device()));
        for [w_ih, w_hh, b_ih, b_hh] in &self.layers {
            let mut h = Tensor::zeros([b, self.cfg.hidden], (Kind::Float, x.device()));
            let mut outs = Vec::with_capacity(t as usize);
            for s in 0..t {
                let xs = input.select(1, s);
                let m = mask.select(1, s).unsqueeze(1).to_kind(Kind::Float);
                let next = xs.gru_cell(&h, w_ih, w_hh, Some(b_ih), Some(b_hh));
                h = &next * &m + &h * (-&m + 1.0);
                outs.push(h.shallow_clone());
            }
            input = Tensor::stack(&outs, 1);
            last = h;
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn model(pad: PadMode) -> (nn::VarStore, GruClassifier) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GruConfig {
            pad,
            ..Default::default()
        };
        let m = GruClassifier::new(&vs.root(), &cfg, 30, 3);
        (vs, m)
    }

    #[test]
    fn variable_names_and_shapes_match_pytorch() {
        let (vs, _) = model(PadMode::Left);
        let vars = vs.variables();
        let shape = |n: &str| vars.get(n).unwrap_or_else(|| panic!("missing {n}")).size();
        assert_eq!(shape("embedding.weight"), [30, 50]);
        assert_eq!(shape("gru.weight_ih_l0"), [384, 50]);
        assert_eq!(shape("gru.weight_hh_l0"), [384, 128]);
        assert_eq!(shape("gru.weight_ih_l1"), [384, 128]);
        assert_eq!(shape("gru.bias_hh_l1"), [384]);
        assert_eq!(shape("linear.weight"), [3, 128]);
        assert_eq!(shape("linear.bias"), [3]);
        assert_eq!(vars.len(), 11);
        let pad_row = vars["embedding.weight"].get(PAD_ID);
        assert_eq!(pad_row.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let w = &vars["gru.weight_hh_l0"];
        assert!(w.abs().max().double_value(&[]) <= 1.0 / 128f64.sqrt() + 1e-7);
    }

    /// A short text's logits alone, and the largest change when it is batched after a longer text:
    /// (the text, its logits alone `[1, classes]`, max |difference|).
    fn alone_vs_batched(m: &GruClassifier) -> (Vec<i64>, Tensor, f64) {
        let a: Vec<i64> = vec![5, 6, 7];
        let b: Vec<i64> = vec![8, 9, 10, 11, 12, 13, 2];
        let alone = m
            .features_and_logits(&TokenBatch::left_padded(&[&a], None, Device::Cpu), false)
            .1;
        let together = m
            .features_and_logits(
                &TokenBatch::left_padded(&[&b, &a], None, Device::Cpu),
                false,
            )
            .1;
        let diff = (alone.get(0) - together.get(1))
            .abs()
            .max()
            .double_value(&[]);
        (a, alone, diff)
    }

    #[test]
    fn masked_scores_do_not_depend_on_the_batch() {
        let (_vs, m) = model(PadMode::Masked);
        let (a, alone, diff) = alone_vs_batched(&m);
        assert!(diff < 1e-6, "masked logits changed with the batch: {diff}");
        // ... and the masked path equals libtorch's fused GRU on an unpadded sequence (same weights;
        // not a second model, since tests share libtorch's global RNG across threads).
        let batch = TokenBatch::left_padded(&[&a], None, Device::Cpu);
        let x = Tensor::embedding(&m.embedding, &batch.tokens, PAD_ID, false, false);
        let fused = m
            .run_fused(&x, false)
            .linear(&m.linear_w, Some(&m.linear_b));
        let d = (&fused - &alone).abs().max().double_value(&[]);
        assert!(d < 1e-5, "fused {fused:?} vs masked {alone:?}: {d}");
    }

    #[test]
    fn left_padding_changes_paper_mode_scores() {
        let (_vs, m) = model(PadMode::Left);
        let (_, _, diff) = alone_vs_batched(&m);
        assert!(
            diff > 1e-6,
            "the reference's padding effect should be visible"
        );
    }
}
