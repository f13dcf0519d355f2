//! One generic training loop for text classifiers: baseline (cross-entropy), OE fine-tuning and OE
//! from scratch, with the paper's defaults, a per-epoch cosine schedule, explicit seeds, progress
//! reported to an observer, and atomic per-epoch checkpoints.

use crate::error::{OeError, Result};
use crate::loss::{cross_entropy, OeLoss};
use crate::models::{TextModel, TokenBatch};
use crate::optim::Adam;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Which training a phase performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Cross-entropy only.
    Baseline,
    /// Start from a baseline and fine-tune with OE (the paper's text setting).
    OeFinetune,
    /// Train with OE from random initialisation.
    OeScratch,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::OeFinetune => "oe-finetune",
            Method::OeScratch => "oe-scratch",
        }
    }
}

/// How in-distribution and outlier batches are paired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pairing {
    /// The reference: `zip(in_loader, oe_loader)`, an epoch ends when either runs out (in practice the
    /// in-distribution data).
    #[default]
    Truncate,
    /// Reshuffle and restart the outlier data whenever it runs out, so every in-distribution batch is
    /// paired.
    Cycle,
}

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
    fn default() -> Self {
        Self {
            epochs: 5,
            lr: 0.01,
            batch_size: 64,
            oe_batch_size: 64,
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
        if self.epochs == 0
            || self.batch_size == 0
            || self.oe_batch_size == 0
            || self.lr.is_nan()
            || self.lr <= 0.0
        {
            return Err(OeError::Config(format!(
                "epochs, batch sizes and learning rate must be positive (epochs {}, batch {}, OE batch {}, lr {})",
                self.epochs, self.batch_size, self.oe_batch_size, self.lr
            )));
        }
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

/// Progress events; the library never prints, binaries render these.
pub trait Observer {
    fn phase_start(
        &mut self,
        _phase: &str,
        _epochs: usize,
        _steps_per_epoch: usize,
        _start_epoch: usize,
    ) {
    }
    fn step(&mut self, _phase: &str, _epoch: usize, _step: usize, _loss: f64, _accuracy: f64) {}
    fn epoch_end(&mut self, _phase: &str, _epoch: usize, _summary: &EpochSummary) {}
    /// Something the user should know that does not stop training.
    fn warning(&mut self, _msg: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// What one epoch did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub train_accuracy: f64,
    pub steps: usize,
    pub seconds: f64,
}

/// Checkpoint bookkeeping written next to the weights (`checkpoint.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckpointState {
    pub phase: String,
    /// Number of completed epochs of this phase.
    pub epochs_done: usize,
    pub history: Vec<EpochSummary>,
}

/// Writes the variables to `path` (`.safetensors`) atomically: temp file in the same directory,
/// then rename, so a half-written file never carries the final name.
pub fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    save_tensors(&named_variables(vs), path)
}

/// Writes a training checkpoint to `path` atomically: the variables (so `load_weights` reads it) and
/// the optimiser's state, which `read_tensors` + [`Adam::load_state`] restore.
/// `epochs_done` is stored too (`__checkpoint.epochs_done`), so a resume can check that the weights
/// and `checkpoint.json` come from the same epoch.
pub fn save_checkpoint(
    vs: &nn::VarStore,
    opt: &Adam,
    epochs_done: usize,
    path: &Path,
) -> Result<()> {
    let mut all = named_variables(vs);
    all.extend(opt.state_tensors());
    all.push((
        CHECKPOINT_EPOCHS.to_string(),
        Tensor::from_slice(&[epochs_done as i64]),
    ));
    save_tensors(&all, path)
}

/// Name of the completed-epochs counter inside a checkpoint file.
pub const CHECKPOINT_EPOCHS: &str = "__checkpoint.epochs_done";

/// Every tensor of a `.safetensors` file, by name.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Tensor::read_safetensors(path)
        .map(|v| v.into_iter().collect())
        .map_err(|e| OeError::Data(format!("{}: cannot read ({e})", path.display())))
}

fn named_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn save_tensors(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.partial.safetensors",
        path.file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("weights")
    ));
    Tensor::write_safetensors(named, &tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| OeError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| OeError::io(path, e))?;
    Ok(())
}

/// Loads `.safetensors` weights into `vs`, with a clear error naming the file.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(OeError::Data(format!(
            "{}: weights file not found",
            path.display()
        )));
    }
    vs.load(path).map_err(|e| {
        OeError::Data(format!(
            "{}: cannot load weights ({e}); the file is incomplete or from another model shape",
            path.display()
        ))
    })
}

/// FNV-1a over `bytes`, continuing from `state` (0xcbf2_9ce4_8422_2325 starts a fresh hash): the
/// string hash behind every seeded stream (shuffles, OOD draws) and the evaluation cache's keys.
pub fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A deterministic RNG for (seed, phase, epoch), so resuming mid-phase reproduces the same order.
pub fn epoch_rng(seed: u64, phase: &str, epoch: usize) -> ChaCha8Rng {
    let h = fnv1a(0xcbf2_9ce4_8422_2325, phase.as_bytes());
    ChaCha8Rng::seed_from_u64(seed ^ h ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Runs one training phase from `state.epochs_done` to `cfg.epochs`, calling
/// `checkpoint(state, optimiser)` after every epoch. `oe` is required for the OE methods and ignored
/// for the baseline. `optimizer_state` (from a checkpoint) restores Adam's moments and step, so a
/// resumed phase continues exactly as an uninterrupted one (on the CPU, bit for bit): the shuffles
/// and the dropout stream are functions of (seed, phase, epoch).
#[allow(clippy::too_many_arguments)]
pub fn train_phase(
    phase: &str,
    method: Method,
    model: &TextModel,
    vs: &nn::VarStore,
    train: &EncodedSet,
    oe: Option<&[Vec<i64>]>,
    cfg: &TrainConfig,
    mut state: CheckpointState,
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
    let device = vs.device();
    let mut opt = Adam::new(vs);
    if let Some(st) = optimizer_state {
        if !opt.load_state(st)? && state.epochs_done > 0 {
            observer.warning(&format!(
                "{phase}: the checkpoint has no optimiser state (written by an older version); Adam's moments restart"
            ));
        }
    }
    let steps = train.ids.len().div_ceil(cfg.batch_size);
    let start = state.epochs_done;
    observer.phase_start(phase, cfg.epochs, steps, start);
    for epoch in start..cfg.epochs {
        let t0 = std::time::Instant::now();
        let lr = cfg.lr_at(epoch);
        let mut rng = epoch_rng(cfg.seed, phase, epoch);
        // Dropout draws from libtorch's global generator: seed it per epoch so that a resumed epoch
        // draws what the uninterrupted run drew.
        tch::manual_seed(rand::Rng::gen::<i64>(&mut epoch_rng(
            cfg.seed,
            phase,
            epoch + 1_000_000,
        )));
        let mut order: Vec<usize> = (0..train.ids.len()).collect();
        order.shuffle(&mut rng);
        let mut oe_order: Vec<usize> = oe.map(|o| (0..o.len()).collect()).unwrap_or_default();
        oe_order.shuffle(&mut rng);
        let mut oe_pos = 0usize;
        let (mut loss_sum, mut correct, mut seen, mut done) = (0.0, 0usize, 0usize, 0usize);
        for (step, chunk) in order.chunks(cfg.batch_size).enumerate() {
            // zip(in_loader, oe_loader): with Truncate the epoch ends when the outliers run out.
            if oe.is_some() && oe_pos >= oe_order.len() {
                match cfg.pairing {
                    Pairing::Truncate => break,
                    Pairing::Cycle => {
                        oe_order.shuffle(&mut rng);
                        oe_pos = 0;
                    }
                }
            }
            let seqs: Vec<&[i64]> = chunk.iter().map(|&i| train.ids[i].as_slice()).collect();
            let batch = TokenBatch::left_padded(&seqs, train.fix_len, device);
            let labels: Vec<i64> = chunk.iter().map(|&i| train.labels[i]).collect();
            let y = Tensor::from_slice(&labels).to_device(device);
            let logits = model.logits(&batch, true);
            let mut loss = cross_entropy(&logits, &y);
            if let Some(o) = oe {
                // A separate forward pass for the outliers, as the NLP reference does.
                let end = (oe_pos + cfg.oe_batch_size).min(oe_order.len());
                let oseqs: Vec<&[i64]> = oe_order[oe_pos..end]
                    .iter()
                    .map(|&i| o[i].as_slice())
                    .collect();
                oe_pos = end;
                let obatch = TokenBatch::left_padded(&oseqs, None, device);
                let ologits = model.logits(&obatch, true);
                loss += cfg.oe_loss.auxiliary(&logits, &ologits);
            }
            opt.backward_step(&loss, lr);
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                return Err(OeError::Config(format!(
                    "{phase}: loss became {l} at epoch {} step {}; lower the learning rate",
                    epoch + 1,
                    step + 1
                )));
            }
            let pred = logits.argmax(-1, false);
            let c = pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as usize;
            loss_sum += l * chunk.len() as f64;
            correct += c;
            seen += chunk.len();
            done += 1;
            observer.step(phase, epoch, step, l, c as f64 / chunk.len() as f64);
        }
        let summary = EpochSummary {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            steps: done,
            seconds: t0.elapsed().as_secs_f64(),
        };
        observer.epoch_end(phase, epoch, &summary);
        state.phase = phase.to_string();
        state.epochs_done = epoch + 1;
        state.history.push(summary);
        checkpoint(&state, &opt)?;
    }
    Ok(state)
}

/// Sets the global libtorch seed (initialisation, dropout) for reproducible CPU runs.
pub fn seed_everything(seed: u64) {
    tch::manual_seed(seed as i64);
}

/// Device of a var store (CPU when it has none).
pub fn device_of(vs: &nn::VarStore) -> Device {
    vs.device()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_matches_reference_values() {
        // protocol.md §2.4: E = 5 gives 0.01, 0.009045, 0.006545, 0.003455, 0.000955; E = 2 gives 0.01, 0.005.
        let c = TrainConfig::default();
        let want = [0.01, 0.009045, 0.006545, 0.003455, 0.000955];
        for (e, w) in want.iter().enumerate() {
            assert!((c.lr_at(e) - w).abs() < 1e-6, "epoch {e}: {}", c.lr_at(e));
        }
        let c2 = TrainConfig { epochs: 2, ..c };
        assert!((c2.lr_at(1) - 0.005).abs() < 1e-12);
    }

    #[test]
    fn epoch_rng_is_deterministic_and_distinct() {
        use rand::Rng;
        let a: u64 = epoch_rng(1, "baseline", 0).gen();
        let b: u64 = epoch_rng(1, "baseline", 0).gen();
        let c: u64 = epoch_rng(1, "baseline", 1).gen();
        let d: u64 = epoch_rng(1, "oe", 0).gen();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
