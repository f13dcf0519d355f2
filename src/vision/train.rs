//! The vision training loop (README, "The paper's protocol: vision"): SGD with Nesterov momentum and weight decay, a
//! cosine learning rate updated every step, in-distribution and outlier images concatenated into one
//! forward pass, CPU-side augmentation prefetched on a background thread.
//!
//! The epochs, seeding, loss check and checkpoint calls are the shared driver's
//! ([`crate::train::run_phase`]); this module is the vision step and its optimiser. The SGD momentum buffers are saved next to the weights, so `--resume` continues
//! exactly where the last completed epoch ended.

use super::augment::{with_prefetch, Augment, StepPlan};
use super::data::ImageSource;
use super::models::WideResNet;
use crate::error::{OeError, Result};
use crate::loss::{cross_entropy, OeLoss};
use crate::train::{
    load_weights, run_phase, save_weights, CheckpointState, Method, Observer, Pairing, PhasePlan,
    PhaseStep, Record, StepOutcome,
};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// How outlier images are ordered within an epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OeOrder {
    /// The reference's 80M/300K loader: a contiguous block from a random offset each epoch
    /// (`(k + offset) mod (len − 1)`), excluded indices replaced by random ones.
    #[default]
    Offset,
    /// A fresh random permutation every epoch (image folders).
    Shuffle,
}

/// Optimisation settings of one phase; defaults are the CIFAR baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionTrainConfig {
    pub epochs: usize,
    /// Initial learning rate `lr0`.
    pub lr: f64,
    /// Cosine floor (the reference's 1e-6).
    pub lr_min: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Outlier images per in-distribution batch (OE phases).
    pub oe_batch_size: usize,
    pub oe_loss: OeLoss,
    pub oe_order: OeOrder,
    pub pairing: Pairing,
    pub seed: u64,
    /// Stop each epoch after this many steps (smoke tests); the schedule still uses the full length.
    pub max_steps_per_epoch: Option<usize>,
    /// Batches prepared ahead on the CPU.
    pub prefetch: usize,
}

impl Default for VisionTrainConfig {
    /// The paper's CIFAR baseline ([`crate::paper::defaults`]).
    fn default() -> Self {
        use crate::paper::defaults;
        let (epochs, lr, oe_batch_size) = defaults::vision_schedule(false, false, false);
        Self {
            epochs,
            lr,
            lr_min: defaults::VISION_LR_MIN,
            momentum: defaults::VISION_MOMENTUM,
            nesterov: true,
            weight_decay: defaults::VISION_WEIGHT_DECAY,
            batch_size: defaults::VISION_BATCH,
            oe_batch_size,
            oe_loss: OeLoss::vision_default(),
            oe_order: OeOrder::Offset,
            pairing: Pairing::Truncate,
            seed: 1,
            max_steps_per_epoch: None,
            prefetch: 3,
        }
    }
}

impl VisionTrainConfig {
    /// `lr(t) = lr_min + (lr0 − lr_min)·½(1 + cos(π t / T))`.
    pub fn cosine(&self, t: usize, total: usize) -> f64 {
        self.lr_min
            + (self.lr - self.lr_min)
                * 0.5
                * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos())
    }

    /// Learning rate used by optimiser step `step` (0-based) of `total`: the reference calls
    /// `scheduler.step()` before `optimizer.step()`, so step `s` uses `lr(s + 1)`.
    pub fn lr_for_step(&self, step: usize, total: usize) -> f64 {
        self.cosine(step + 1, total)
    }

    pub fn validate(&self) -> Result<()> {
        crate::train::check_schedule(self.epochs, self.batch_size, self.oe_batch_size, self.lr)?;
        if !(0.0..1.0).contains(&self.momentum) || self.weight_decay < 0.0 {
            return Err(OeError::Config(
                "momentum must be in [0, 1) and weight decay >= 0".into(),
            ));
        }
        Ok(())
    }
}

/// PyTorch's SGD (`torch.optim.SGD(momentum, nesterov, weight_decay)`, dampening 0), with its
/// momentum buffers in a var store so they can be saved and restored.
pub struct Sgd {
    params: Vec<Tensor>,
    bufs: Vec<Tensor>,
    store: nn::VarStore,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

impl Sgd {
    pub fn new(vs: &nn::VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let store = nn::VarStore::new(vs.device());
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let root = store.root();
        let (mut params, mut bufs) = (Vec::new(), Vec::new());
        for (name, p) in named {
            bufs.push(root.zeros_no_train(&name.replace('.', "__"), &p.size()));
            params.push(p);
        }
        Self {
            params,
            bufs,
            store,
            momentum,
            nesterov,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// One update: `d = g + wd·p; buf = m·buf + d; d = d + m·buf (Nesterov) or buf; p −= lr·d`.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for (p, buf) in self.params.iter_mut().zip(self.bufs.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 {
                    &g + &*p * self.weight_decay
                } else {
                    g
                };
                let d = if self.momentum != 0.0 {
                    // PyTorch starts the buffer at the first `d`; zero-initialised, `m·0 + d` is that.
                    let _ = buf.g_mul_scalar_(self.momentum).g_add_(&d);
                    if self.nesterov {
                        d + &*buf * self.momentum
                    } else {
                        buf.shallow_clone()
                    }
                } else {
                    d
                };
                let _ = p.g_add_(&(d * (-lr)));
            }
        });
    }

    /// Saves the momentum buffers (`.safetensors`, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_weights(&self.store, path)
    }

    /// Restores buffers saved by [`Sgd::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        load_weights(&mut self.store, path)
    }
}

/// One optimisation step on device tensors; returns `[loss, correct]` (CPU, 2 floats).
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &WideResNet,
    sgd: &mut Sgd,
    x_in: &Tensor,
    y_in: &Tensor,
    x_out: Option<&Tensor>,
    oe_loss: &OeLoss,
    lr: f64,
) -> Tensor {
    let n_in = x_in.size()[0];
    let x = match x_out {
        Some(o) => Tensor::cat(&[x_in, o], 0),
        None => x_in.shallow_clone(),
    };
    let logits = model.logits(&x, true);
    let lin = logits.narrow(0, 0, n_in);
    let mut loss = cross_entropy(&lin, y_in);
    if let Some(o) = x_out {
        let lout = logits.narrow(0, n_in, o.size()[0]);
        loss += oe_loss.auxiliary(&lin, &lout);
    }
    sgd.zero_grad();
    loss.backward();
    sgd.step(lr);
    let correct = lin.argmax(-1, false).eq_tensor(y_in).sum(Kind::Float);
    Tensor::stack(&[loss.detach().to_kind(Kind::Float), correct], 0).to_device(tch::Device::Cpu)
}

/// Outlier indices for a whole epoch (`steps × oe_batch` at most, fewer when the source runs out).
fn oe_epoch_indices(
    src: &dyn ImageSource,
    cfg: &VisionTrainConfig,
    steps: usize,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    let n = src.len();
    let mut batches = Vec::new();
    match cfg.oe_order {
        OeOrder::Offset => {
            let wrap = if n > 1 { n - 1 } else { 1 };
            let offset = rng.gen_range(0..n);
            let mut k = 0usize;
            // The reference's loader yields ceil(len / batch) batches; Cycle keeps going.
            let available = n.div_ceil(cfg.oe_batch_size);
            for s in 0..steps {
                if s >= available && cfg.pairing == Pairing::Truncate {
                    break;
                }
                let take = if cfg.pairing == Pairing::Truncate {
                    cfg.oe_batch_size.min(n - k.min(n))
                } else {
                    cfg.oe_batch_size
                };
                let mut b = Vec::with_capacity(take);
                for _ in 0..take {
                    let mut i = (k + offset) % wrap;
                    let mut tries = 0;
                    while src.excluded(i) && tries < 1000 {
                        i = rng.gen_range(0..n);
                        tries += 1;
                    }
                    b.push(i);
                    k += 1;
                }
                batches.push(b);
            }
        }
        OeOrder::Shuffle => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(rng);
            let mut pos = 0;
            for _ in 0..steps {
                if pos >= n {
                    match cfg.pairing {
                        Pairing::Truncate => break,
                        Pairing::Cycle => {
                            order.shuffle(rng);
                            pos = 0;
                        }
                    }
                }
                let end = (pos + cfg.oe_batch_size).min(n);
                batches.push(order[pos..end].to_vec());
                pos = end;
            }
        }
    }
    batches
}

/// The data of one phase.
pub struct PhaseData<'a> {
    pub train: &'a dyn ImageSource,
    pub train_aug: Augment,
    /// Outliers and their augmentation (OE phases).
    pub oe: Option<(&'a dyn ImageSource, Augment)>,
}

/// Runs one phase from `state.epochs_done` to `cfg.epochs` on the shared driver
/// ([`run_phase`]), calling `checkpoint(state, sgd)` after every epoch.
#[allow(clippy::too_many_arguments)]
pub fn train_phase(
    phase: &str,
    method: Method,
    model: &WideResNet,
    sgd: &mut Sgd,
    data: &PhaseData,
    cfg: &VisionTrainConfig,
    state: CheckpointState,
    observer: &mut dyn Observer,
    checkpoint: &mut dyn FnMut(&CheckpointState, &Sgd) -> Result<()>,
) -> Result<CheckpointState> {
    cfg.validate()?;
    let n = data.train.len();
    if n == 0 {
        return Err(OeError::Data("no training images".into()));
    }
    let oe = match method {
        Method::Baseline => None,
        _ => match data.oe {
            Some((s, a)) if !s.is_empty() => Some((s, a)),
            _ => {
                return Err(OeError::Config(format!(
                    "{} needs a non-empty outlier source",
                    method.name()
                )))
            }
        },
    };
    let steps = n.div_ceil(cfg.batch_size);
    let plan = PhasePlan {
        phase,
        seed: cfg.seed,
        epochs: cfg.epochs,
        steps_per_epoch: steps,
    };
    let mut step = VisionStep {
        model,
        device: model_device(sgd),
        sgd,
        data,
        oe,
        cfg,
        steps,
        checkpoint,
        data_wait: std::time::Duration::ZERO,
    };
    run_phase(&plan, state, observer, &mut step)
}

/// The vision step: in-distribution and outlier images in one forward pass, SGD with a per-step
/// cosine learning rate, augmentation prefetched on a background thread.
struct VisionStep<'a> {
    model: &'a WideResNet,
    device: tch::Device,
    sgd: &'a mut Sgd,
    data: &'a PhaseData<'a>,
    oe: Option<(&'a dyn ImageSource, Augment)>,
    cfg: &'a VisionTrainConfig,
    steps: usize,
    checkpoint: &'a mut dyn FnMut(&CheckpointState, &Sgd) -> Result<()>,
    /// Time spent waiting for the prefetch thread in the current epoch.
    data_wait: std::time::Duration,
}

impl PhaseStep for VisionStep<'_> {
    fn epoch(
        &mut self,
        epoch: usize,
        rng: &mut ChaCha8Rng,
        skip: usize,
        record: Record,
    ) -> Result<f64> {
        let (cfg, steps, device, model) = (self.cfg, self.steps, self.device, self.model);
        let n = self.data.train.len();
        let total = cfg.epochs * steps;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let oe_batches = self.oe.map(|(s, _)| oe_epoch_indices(s, cfg, steps, rng));
        let limit = cfg.max_steps_per_epoch.unwrap_or(usize::MAX);
        let mut plans = Vec::new();
        for (s, chunk) in order.chunks(cfg.batch_size).enumerate() {
            if s >= limit {
                break;
            }
            let out_idx = match &oe_batches {
                Some(b) => match b.get(s) {
                    Some(o) if !o.is_empty() => Some(o.clone()),
                    _ => break, // zip(): the outliers ran out
                },
                None => None,
            };
            plans.push(StepPlan {
                step: s,
                in_idx: chunk.to_vec(),
                out_idx,
                seed: rng.gen(),
            });
        }
        // Steps done before a resume: every draw above was made, none of them is run.
        plans.retain(|p| p.step >= skip);
        let oe_pair = self.oe.as_ref().map(|(s, a)| (*s, a));
        let sgd = &mut *self.sgd;
        let waited = &mut self.data_wait;
        with_prefetch(
            plans,
            cfg.prefetch,
            self.data.train,
            &self.data.train_aug,
            oe_pair,
            |it| -> Result<()> {
                loop {
                    let t0 = std::time::Instant::now();
                    let Some(p) = it.next() else { break };
                    *waited += t0.elapsed();
                    let p = p?;
                    let lr = cfg.lr_for_step(epoch * steps + p.step, total);
                    let x_in = p.x_in.to_device(device);
                    let y_in = p.y_in.to_device(device);
                    let x_out = p.x_out.map(|x| x.to_device(device));
                    let examples = y_in.size()[0] as usize;
                    let r = train_step(model, sgd, &x_in, &y_in, x_out.as_ref(), &cfg.oe_loss, lr);
                    let v = Vec::<f32>::try_from(&r).map_err(OeError::Torch)?;
                    record(
                        p.step,
                        StepOutcome {
                            loss: v[0] as f64,
                            correct: v[1] as f64,
                            examples,
                        },
                    )?;
                }
                Ok(())
            },
        )?;
        Ok(cfg.lr_for_step(epoch * steps, total))
    }

    fn checkpoint(&mut self, state: &CheckpointState) -> Result<()> {
        (self.checkpoint)(state, self.sgd)
    }

    fn take_data_wait(&mut self) -> Option<f64> {
        Some(std::mem::take(&mut self.data_wait).as_secs_f64())
    }
}

fn model_device(sgd: &Sgd) -> tch::Device {
    sgd.store.device()
}
