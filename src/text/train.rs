//! The text wing's training step: baseline (cross-entropy), OE fine-tuning and OE from scratch on
//! token batches, with the paper's defaults and a per-epoch cosine schedule. The epochs, seeding,
//! loss check and checkpoints are the shared driver's ([`crate::train::run_phase`]).

use crate::error::{OeError, Result};
use crate::loss::{cross_entropy, OeLoss};
use crate::text::models::{TextModel, TokenBatch};
use crate::train::optim::Adam;
use crate::train::{
    run_phase, CheckpointState, Method, Observer, Pairing, PhasePlan, PhaseStep, Record,
    StepOutcome,
};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{nn, Kind, Tensor};

/// Optimisation settings of one phase; defaults are the paper's text baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Adam learning rate at epoch 0; cosine-annealed once per epoch (`T_max = epochs`).
    pub lr: f64,
    pub batch_size: usize,
    /// Outlier examples per in-distribution batch (OE phases only).
    pub oe_batch_size: usize,
    pub oe_loss: OeLoss,
    pub pairing: Pairing,
    /// Seed for shuffling and initialisation.
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The reference code's text baseline ([`crate::paper::defaults`]).
    fn default() -> Self {
        use crate::paper::defaults;
        Self {
            epochs: defaults::TEXT_EPOCHS,
            lr: defaults::TEXT_LR,
            batch_size: defaults::TEXT_BATCH,
            oe_batch_size: defaults::TEXT_OE_BATCH,
            oe_loss: OeLoss::text_default(),
            pairing: Pairing::Truncate,
            seed: 1,
        }
    }
}

impl TrainConfig {
    /// Learning rate for epoch `e` (0-based): `lr·(1 + cos(π e / E)) / 2` (PyTorch CosineAnnealingLR
    /// stepped once per epoch, eta_min 0).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * (1.0 + (std::f64::consts::PI * epoch as f64 / self.epochs as f64).cos()) / 2.0
    }

    pub fn validate(&self) -> Result<()> {
        crate::train::check_schedule(self.epochs, self.batch_size, self.oe_batch_size, self.lr)?;
        Ok(())
    }
}

/// Token ids of a labelled set, ready for batching.
#[derive(Clone, Debug, Default)]
pub struct EncodedSet {
    pub ids: Vec<Vec<i64>>,
    pub labels: Vec<i64>,
    /// Pad every batch to exactly this length (torchtext `fix_length`, 20NG: 100).
    pub fix_len: Option<usize>,
}

/// Runs one training phase from `state.epochs_done` to `cfg.epochs`, calling
/// `checkpoint(state, optimiser)` after every epoch. `oe` is required for the OE methods and ignored
/// for the baseline. `optimizer_state` (from a checkpoint) restores Adam's moments and step, so a
/// resumed phase continues exactly as an uninterrupted one (on the CPU, bit for bit), also from a
/// mid-epoch checkpoint: the shuffles are functions of (seed, phase, epoch), the dropout stream of
/// (seed, phase, epoch, step).
#[allow(clippy::too_many_arguments)]
pub fn train_phase(
    phase: &str,
    method: Method,
    model: &TextModel,
    vs: &nn::VarStore,
    train: &EncodedSet,
    oe: Option<&[Vec<i64>]>,
    cfg: &TrainConfig,
    state: CheckpointState,
    optimizer_state: Option<&HashMap<String, Tensor>>,
    observer: &mut dyn Observer,
    checkpoint: &mut dyn FnMut(&CheckpointState, &Adam) -> Result<()>,
) -> Result<CheckpointState> {
    cfg.validate()?;
    if train.ids.is_empty() {
        return Err(OeError::Data("no training examples".into()));
    }
    let oe = match method {
        Method::Baseline => None,
        _ => match oe {
            Some(o) if !o.is_empty() => Some(o),
            _ => {
                return Err(OeError::Config(format!(
                    "{} needs a non-empty outlier corpus",
                    method.name()
                )))
            }
        },
    };
    let mut opt = Adam::new(vs);
    if let Some(st) = optimizer_state {
        if !opt.load_state(st)? && state.epochs_done > 0 {
            observer.warning(&format!(
                "{phase}: the checkpoint has no optimiser state (written by an older version); Adam's moments restart"
            ));
        }
    }
    let plan = PhasePlan {
        phase,
        seed: cfg.seed,
        epochs: cfg.epochs,
        steps_per_epoch: train.ids.len().div_ceil(cfg.batch_size),
    };
    // The fused CPU GRU splits each step over its worker threads, one libtorch thread each.
    let gru_workers = (vs.device() == tch::Device::Cpu && matches!(model, TextModel::Gru(_)))
        .then(crate::text::models::gru_cpu::adopt_torch_threads);
    let mut step = TextStep {
        gru_workers,
        model,
        device: vs.device(),
        train,
        oe,
        cfg,
        opt,
        checkpoint,
    };
    run_phase(&plan, state, observer, &mut step)
}

/// The text step: one batch of in-distribution texts and, for OE, one batch of outliers in a
/// separate forward pass (as the NLP reference does), Adam on their summed loss.
struct TextStep<'a> {
    /// The fused CPU GRU's worker threads ([`crate::text::models::gru_cpu::workers`]); set for a
    /// GRU on the CPU.
    gru_workers: Option<usize>,
    model: &'a TextModel,
    device: tch::Device,
    train: &'a EncodedSet,
    oe: Option<&'a [Vec<i64>]>,
    cfg: &'a TrainConfig,
    opt: Adam,
    checkpoint: &'a mut dyn FnMut(&CheckpointState, &Adam) -> Result<()>,
}

impl PhaseStep for TextStep<'_> {
    fn epoch(
        &mut self,
        epoch: usize,
        rng: &mut ChaCha8Rng,
        skip: usize,
        record: Record,
    ) -> Result<f64> {
        let (cfg, train, device) = (self.cfg, self.train, self.device);
        let lr = cfg.lr_at(epoch);
        let mut order: Vec<usize> = (0..train.ids.len()).collect();
        order.shuffle(rng);
        let mut oe_order: Vec<usize> = self.oe.map(|o| (0..o.len()).collect()).unwrap_or_default();
        oe_order.shuffle(rng);
        let mut oe_pos = 0usize;
        for (step, chunk) in order.chunks(cfg.batch_size).enumerate() {
            // zip(in_loader, oe_loader): with Truncate the epoch ends when the outliers run out.
            if self.oe.is_some() && oe_pos >= oe_order.len() {
                match cfg.pairing {
                    Pairing::Truncate => break,
                    Pairing::Cycle => {
                        oe_order.shuffle(rng);
                        oe_pos = 0;
                    }
                }
            }
            if step < skip {
                // Done before a resume: advance the outlier stream as the step did.
                if self.oe.is_some() {
                    oe_pos = (oe_pos + cfg.oe_batch_size).min(oe_order.len());
                }
                continue;
            }
            let seqs: Vec<&[i64]> = chunk.iter().map(|&i| train.ids[i].as_slice()).collect();
            let batch = TokenBatch::left_padded(&seqs, train.fix_len, device);
            let labels: Vec<i64> = chunk.iter().map(|&i| train.labels[i]).collect();
            let y = Tensor::from_slice(&labels).to_device(device);
            let obatch = self.oe.map(|o| {
                let end = (oe_pos + cfg.oe_batch_size).min(oe_order.len());
                let oseqs: Vec<&[i64]> = oe_order[oe_pos..end]
                    .iter()
                    .map(|&i| o[i].as_slice())
                    .collect();
                oe_pos = end;
                TokenBatch::left_padded(&oseqs, None, device)
            });
            let loss_of = |logits: &Tensor, ologits: Option<&Tensor>| {
                let mut loss = cross_entropy(logits, &y);
                if let Some(ol) = ologits {
                    loss += cfg.oe_loss.auxiliary(logits, ol);
                }
                loss
            };
            let (logits, loss) = match (self.model, self.gru_workers) {
                (TextModel::Gru(g), Some(parts)) if g.packed_for(&batch) => {
                    let (logits, loss, grads) =
                        fused_gru_step(g, parts, &batch, obatch.as_ref(), loss_of);
                    self.opt.step_with_grads(lr, &grads);
                    (logits, loss)
                }
                _ => {
                    let logits = self.model.logits(&batch, true);
                    let ologits = obatch.as_ref().map(|b| self.model.logits(b, true));
                    let loss = loss_of(&logits, ologits.as_ref());
                    self.opt.backward_step(&loss, lr);
                    (logits, loss)
                }
            };
            let l = loss.double_value(&[]);
            let correct = if l.is_finite() {
                let pred = logits.argmax(-1, false);
                pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as f64
            } else {
                0.0
            };
            record(
                step,
                StepOutcome {
                    loss: l,
                    correct,
                    examples: chunk.len(),
                },
            )?;
        }
        Ok(lr)
    }

    fn checkpoint(&mut self, state: &CheckpointState) -> Result<()> {
        (self.checkpoint)(state, &self.opt)
    }
}

/// Splits `n` rows into at most `parts` contiguous ranges of near-equal size.
fn split_rows(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|p| (n * p / parts, n * (p + 1) / parts - n * p / parts))
        .filter(|&(_, len)| len > 0)
        .collect()
}

/// One training step of the GRU without autograd ([`crate::text::models::gru_cpu`]): the
/// in-distribution batch and the outliers (each a separate forward pass, as the reference's) are
/// split over `parts` threads, the loss is taken by autograd on the logits alone, and each part's
/// backward pass runs on its thread; the gradients are summed in a fixed order. Returns the
/// in-distribution logits, the loss and the gradients for [`Adam::step_with_grads`].
fn fused_gru_step(
    g: &crate::text::models::GruClassifier,
    parts: usize,
    batch: &TokenBatch,
    obatch: Option<&TokenBatch>,
    loss_of: impl Fn(&Tensor, Option<&Tensor>) -> Tensor,
) -> (Tensor, Tensor, Vec<(Tensor, Tensor)>) {
    let n_in = batch.tokens.size()[0] as usize;
    let n_out = obatch.map_or(0, |b| b.tokens.size()[0] as usize);
    // Parts: (is outlier, first row, rows); the outliers get half the threads.
    let (p_in, p_out) = match obatch {
        Some(_) if parts > 1 => (parts - parts / 2, parts / 2),
        Some(_) => (1, 1),
        None => (parts, 0),
    };
    let mut units: Vec<(bool, usize, usize)> = split_rows(n_in, p_in)
        .into_iter()
        .map(|(s, n)| (false, s, n))
        .collect();
    if n_out > 0 {
        units.extend(
            split_rows(n_out, p_out)
                .into_iter()
                .map(|(s, n)| (true, s, n)),
        );
    }
    let sub = |&(out, s, n): &(bool, usize, usize)| {
        let b = if out {
            obatch.expect("outlier batch")
        } else {
            batch
        };
        b.rows(s, n)
    };
    let run_parallel = crate::text::models::gru_cpu::run_parallel::<Job>;
    // Forward passes.
    let jobs: Vec<Box<dyn FnOnce() -> Job + Send>> = units
        .iter()
        .map(|u| {
            let (m, b) = (g.shallow_clone(), sub(u));
            Box::new(move || {
                let (logits, tape) = m
                    .forward_for_backward(&b)
                    .expect("the fused GRU applies to this batch");
                Job::Forward(logits, tape)
            }) as Box<dyn FnOnce() -> Job + Send>
        })
        .collect();
    let mut logits_in = Vec::new();
    let mut logits_out = Vec::new();
    let mut tapes = Vec::new();
    for (u, r) in units.iter().zip(run_parallel(jobs)) {
        let Job::Forward(l, t) = r else {
            unreachable!("forward jobs return forward results")
        };
        if u.0 {
            logits_out.push(l);
        } else {
            logits_in.push(l);
        }
        tapes.push(t);
    }
    // The loss and its gradient with respect to the logits.
    let li = Tensor::cat(&logits_in, 0).set_requires_grad(true);
    let lo = (!logits_out.is_empty()).then(|| Tensor::cat(&logits_out, 0).set_requires_grad(true));
    let loss = loss_of(&li, lo.as_ref());
    loss.backward();
    let (dli, dlo) = (li.grad(), lo.as_ref().map(Tensor::grad));
    // Backward passes.
    let jobs: Vec<Box<dyn FnOnce() -> Job + Send>> = units
        .iter()
        .zip(tapes)
        .map(|(&(out, s, n), tape)| {
            let d = if out {
                dlo.as_ref().expect("outlier logits")
            } else {
                &dli
            };
            let d = d.narrow(0, s as i64, n as i64).contiguous();
            let m = g.shallow_clone();
            Box::new(move || Job::Backward(m.backward(&tape, &d)))
                as Box<dyn FnOnce() -> Job + Send>
        })
        .collect();
    let mut grads: Vec<(Tensor, Tensor)> = Vec::new();
    for r in run_parallel(jobs) {
        let Job::Backward(gs) = r else {
            unreachable!("backward jobs return gradients")
        };
        if grads.is_empty() {
            grads = gs;
        } else {
            tch::no_grad(|| {
                for ((_, acc), (_, d)) in grads.iter_mut().zip(gs) {
                    *acc += d;
                }
            });
        }
    }
    (li.detach(), loss.detach(), grads)
}

/// A worker's result in [`fused_gru_step`].
enum Job {
    Forward(Tensor, crate::text::models::gru::FusedTape),
    Backward(Vec<(Tensor, Tensor)>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_matches_reference_values() {
        // The reference's per-epoch cosine (README, "The paper's protocol: text"): E = 5 gives 0.01, 0.009045, 0.006545, 0.003455, 0.000955; E = 2 gives 0.01, 0.005.
        let c = TrainConfig::default();
        let want = [0.01, 0.009045, 0.006545, 0.003455, 0.000955];
        for (e, w) in want.iter().enumerate() {
            assert!((c.lr_at(e) - w).abs() < 1e-6, "epoch {e}: {}", c.lr_at(e));
        }
        let c2 = TrainConfig { epochs: 2, ..c };
        assert!((c2.lr_at(1) - 0.005).abs() < 1e-12);
    }
}
