//! The training core shared by the text and vision wings: what a phase is ([`Method`],
//! [`Pairing`]), progress events ([`Observer`]), checkpoint files, the seeded streams, and
//! [`run_phase`], the one phase driver. The driver owns the epochs, the seeding (the shuffle stream
//! is a function of (seed, phase, epoch), libtorch's dropout generator is reseeded before every
//! step from (seed, phase, epoch, step), so that a run resumed at any step is the uninterrupted
//! one), the finite-loss check, the epoch summaries, the checkpoint calls, and graceful stops: when
//! [`crate::interrupt::requested`] turns true, the driver ends the phase after the current step with
//! a mid-epoch checkpoint ([`PartialEpoch`]) and returns [`OeError::Interrupted`]. Each wing
//! supplies only its step ([`PhaseStep`]: `text::train`, `vision::train`).

pub mod optim;

use crate::error::{OeError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Tensor};

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

/// The training a model went through, as results tables, reports and comparisons name it
/// (`baseline`, `oe`, `energy-oe`, and `-scratch` for OE from random initialisation). It is read from
/// a model directory's `run.json` (its method and OE loss), never guessed from a file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodLabel {
    Baseline,
    /// OE fine-tuning with the paper's loss (cross-entropy to uniform).
    Oe,
    /// OE fine-tuning with the energy-bounded loss.
    EnergyOe,
    OeScratch,
    EnergyOeScratch,
}

impl MethodLabel {
    pub const ALL: [MethodLabel; 5] = [
        MethodLabel::Baseline,
        MethodLabel::Oe,
        MethodLabel::EnergyOe,
        MethodLabel::OeScratch,
        MethodLabel::EnergyOeScratch,
    ];

    /// The label of a model trained with `method` and (for OE) `oe_loss`.
    pub fn of(method: Method, oe_loss: &crate::loss::OeLoss) -> Self {
        let energy = matches!(oe_loss, crate::loss::OeLoss::Energy { .. });
        match (method, energy) {
            (Method::Baseline, _) => MethodLabel::Baseline,
            (Method::OeFinetune, false) => MethodLabel::Oe,
            (Method::OeFinetune, true) => MethodLabel::EnergyOe,
            (Method::OeScratch, false) => MethodLabel::OeScratch,
            (Method::OeScratch, true) => MethodLabel::EnergyOeScratch,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MethodLabel::Baseline => "baseline",
            MethodLabel::Oe => "oe",
            MethodLabel::EnergyOe => "energy-oe",
            MethodLabel::OeScratch => "oe-scratch",
            MethodLabel::EnergyOeScratch => "energy-oe-scratch",
        }
    }

    /// The paper's row this is compared with: `baseline` (MSP) or `oe`.
    pub fn paper_method(self) -> &'static str {
        match self {
            MethodLabel::Baseline => "baseline",
            _ => "oe",
        }
    }
}

impl std::fmt::Display for MethodLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MethodLabel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        MethodLabel::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = MethodLabel::ALL.iter().map(|m| m.name()).collect();
                format!("unknown method `{s}`; expected one of {}", all.join(", "))
            })
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
    /// A short status line of the pipeline around training (loading, evaluating, results).
    fn status(&mut self, _msg: &str) {}
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
    /// Seconds of `seconds` the model waited for its next batch (data loading and augmentation
    /// not keeping up); absent for wings that prepare batches inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_wait_seconds: Option<f64>,
}

/// Checkpoint bookkeeping written next to the weights (`checkpoint.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckpointState {
    pub phase: String,
    /// Number of completed epochs of this phase.
    pub epochs_done: usize,
    pub history: Vec<EpochSummary>,
    /// The epoch in progress when the run was stopped mid-epoch (on a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
}

impl CheckpointState {
    /// Optimisation steps done in the epoch after `epochs_done` (0 at an epoch boundary).
    pub fn steps_done(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.steps_done)
    }
}

/// An epoch stopped after `steps_done` steps, with its running sums so that its summary is the
/// uninterrupted epoch's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// 0-based epoch (= `epochs_done`).
    pub epoch: usize,
    /// Steps of this epoch already done (the resumed epoch skips them).
    pub steps_done: usize,
    /// Steps recorded (can be fewer than the step index + 1 only for steps the wing skipped).
    pub recorded: usize,
    pub loss_sum: f64,
    pub correct: f64,
    pub seen: usize,
    pub seconds: f64,
}

/// Writes the variables to `path` (`.safetensors`) atomically: temp file in the same directory,
/// then rename, so a half-written file never carries the final name.
pub fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    save_tensors(&named_variables(vs), path)?;
    crate::checksum::record(path)
}

/// Writes a training checkpoint to `path` atomically: the variables (so `load_weights` reads it) and
/// the optimiser's state (e.g. [`optim::Adam::state_tensors`]), which `read_tensors` + [`optim::Adam::load_state`] restore.
/// The progress (epochs done, steps of the next epoch done) is stored too (`__checkpoint.epochs_done`,
/// `__checkpoint.steps_done`), so a resume can check that the weights and `checkpoint.json` come
/// from the same step ([`check_checkpoint_progress`]).
pub fn save_checkpoint(
    vs: &nn::VarStore,
    optimizer_state: Vec<(String, Tensor)>,
    state: &CheckpointState,
    path: &Path,
) -> Result<()> {
    let mut all = named_variables(vs);
    all.extend(optimizer_state);
    all.push((
        CHECKPOINT_EPOCHS.to_string(),
        Tensor::from_slice(&[state.epochs_done as i64]),
    ));
    all.push((
        CHECKPOINT_STEPS.to_string(),
        Tensor::from_slice(&[state.steps_done() as i64]),
    ));
    save_tensors(&all, path)
}

/// Name of the completed-epochs counter inside a checkpoint file.
pub const CHECKPOINT_EPOCHS: &str = "__checkpoint.epochs_done";
/// Name of the steps-done-in-the-next-epoch counter inside a checkpoint file.
pub const CHECKPOINT_STEPS: &str = "__checkpoint.steps_done";

/// Checks that checkpoint tensors (`path`) and `checkpoint.json` (`state`, from `json`) describe the
/// same step; files written by older versions carry no step counter (0).
pub fn check_checkpoint_progress(
    tensors: &HashMap<String, Tensor>,
    state: &CheckpointState,
    path: &Path,
    json: &Path,
) -> Result<()> {
    let get = |k: &str| tensors.get(k).map(|t| t.int64_value(&[0]));
    let epochs = get(CHECKPOINT_EPOCHS);
    let steps = get(CHECKPOINT_STEPS).unwrap_or(0);
    if let Some(e) = epochs {
        if e != state.epochs_done as i64 || steps != state.steps_done() as i64 {
            return Err(OeError::Data(format!(
                "{} is from epoch {e} step {steps} but {} says epoch {} step {}: the run was \
                 interrupted while saving; delete both to restart this phase",
                path.display(),
                json.display(),
                state.epochs_done,
                state.steps_done()
            )));
        }
    }
    Ok(())
}

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

/// Writes tensors as `.safetensors` through the one atomic-file mechanism ([`crate::io`]).
fn save_tensors(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tmp = crate::io::temp_file_for(path, ".oe-tmp-", ".safetensors")?;
    Tensor::write_safetensors(named, tmp.path())?;
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| OeError::io(tmp.path(), e))?;
    crate::io::persist(tmp, path)
}

/// Loads `.safetensors` weights into `vs`, with a one-line error naming the file: a tensor the
/// model has and the file lacks, or one whose shape differs (the first, by name), is said before
/// libtorch is asked; what libtorch still refuses is said without its C++ backtrace.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(OeError::Data(format!(
            "{}: weights file not found",
            path.display()
        )));
    }
    crate::checksum::verify(path)?;
    let cannot = |why: String| {
        OeError::Data(format!(
            "{}: cannot load weights: {why}; the file is incomplete or from another model shape",
            path.display()
        ))
    };
    let shapes = safetensors_shapes(path).map_err(cannot)?;
    for (name, var) in named_variables(vs) {
        match shapes.get(&name) {
            None => return Err(cannot(format!("no tensor `{name}` in the file"))),
            Some(shape) if *shape != var.size() => {
                return Err(cannot(format!(
                    "tensor `{name}` has shape {shape:?} in the file, the model's is {:?}",
                    var.size()
                )))
            }
            Some(_) => {}
        }
    }
    vs.load(path)
        .map_err(|e| cannot(torch_message(&e.to_string())))
}

/// The shape of every tensor in a `.safetensors` file, from its header (the data is not read).
fn safetensors_shapes(path: &Path) -> std::result::Result<HashMap<String, Vec<i64>>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|e| format!("not a safetensors file (no header: {e})"))?;
    let n = u64::from_le_bytes(n);
    // The format's own limit on the header (100 MB).
    if n > 100_000_000 {
        return Err(format!("not a safetensors file (a {n}-byte header)"));
    }
    let mut header = Vec::new();
    f.take(n)
        .read_to_end(&mut header)
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format!("not a safetensors file (header: {e})"))?;
    let obj = v
        .as_object()
        .ok_or("not a safetensors file (the header is not a JSON object)")?;
    let mut out = HashMap::new();
    for (k, t) in obj {
        if k == "__metadata__" {
            continue;
        }
        let shape = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_i64()).collect::<Option<Vec<i64>>>())
            .ok_or_else(|| format!("tensor `{k}` has no shape in the header"))?;
        out.insert(k.clone(), shape);
    }
    Ok(out)
}

/// libtorch's message without the C++ backtrace: the text before "Exception raised from", on one
/// line.
pub fn torch_message(msg: &str) -> String {
    let head = msg.split("Exception raised from").next().unwrap_or(msg);
    let lines: Vec<&str> = head
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        msg.lines().next().unwrap_or("").trim().to_string()
    } else {
        lines.join(" ")
    }
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

/// Checks the settings every phase needs: positive epochs, batch sizes and learning rate.
pub fn check_schedule(epochs: usize, batch: usize, oe_batch: usize, lr: f64) -> Result<()> {
    if epochs == 0 || batch == 0 || oe_batch == 0 || lr.is_nan() || lr <= 0.0 {
        return Err(OeError::Config(format!(
            "epochs, batch sizes and learning rate must be positive (epochs {epochs}, batch {batch}, OE batch {oe_batch}, lr {lr})"
        )));
    }
    Ok(())
}

/// The libtorch seed for (seed, phase, epoch, step): the dropout draws of that step.
pub fn torch_step_seed(seed: u64, phase: &str, epoch: usize, step: usize) -> i64 {
    let h = fnv1a(0xcbf2_9ce4_8422_2325, phase.as_bytes());
    let mut r = ChaCha8Rng::seed_from_u64(
        seed ^ h ^ ((epoch as u64) << 32 | step as u64).wrapping_mul(0xd6e8_feb8_6659_fd93),
    );
    r.gen::<i64>()
}

/// Sets the global libtorch seed (initialisation, dropout) for reproducible CPU runs.
pub fn seed_everything(seed: u64) {
    tch::manual_seed(seed as i64);
}

/// What one optimisation step reports to the driver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The step's loss (the mean over its batch).
    pub loss: f64,
    /// Correctly classified in-distribution examples of the batch.
    pub correct: f64,
    /// In-distribution examples of the batch.
    pub examples: usize,
}

/// What a step calls after every optimisation step: `record(step index, outcome)`.
pub type Record<'a> = &'a mut dyn FnMut(usize, StepOutcome) -> Result<()>;

/// A wing's training step, run by [`run_phase`].
pub trait PhaseStep {
    /// Runs epoch `epoch` (0-based), drawing its order from `rng`, and calls `record` once after every
    /// optimisation step (`record` fails when the loss is not finite or a stop was requested; pass
    /// that error on). The first `skip` steps were done before a resume: draw everything exactly as
    /// for an uninterrupted epoch, but do not run them (and do not record them). Returns the
    /// learning rate to report for the epoch.
    fn epoch(
        &mut self,
        epoch: usize,
        rng: &mut ChaCha8Rng,
        skip: usize,
        record: Record,
    ) -> Result<f64>;
    /// Saves a checkpoint of `state` (after its last epoch, or mid-epoch when `state.partial`).
    fn checkpoint(&mut self, state: &CheckpointState) -> Result<()>;
    /// Seconds the last [`PhaseStep::epoch`] waited for batches from a background loader (and
    /// resets the count); `None` when batches are not prepared in the background.
    fn take_data_wait(&mut self) -> Option<f64> {
        None
    }
}

/// One phase of training: its name (the seed streams depend on it), seed and length.
#[derive(Clone, Copy, Debug)]
pub struct PhasePlan<'a> {
    pub phase: &'a str,
    pub seed: u64,
    pub epochs: usize,
    /// Optimisation steps of a full epoch (for progress; an epoch may stop early).
    pub steps_per_epoch: usize,
}

/// Runs `plan` from `state.epochs_done` (and `state.partial`'s step) to `plan.epochs` with `step`:
/// before every epoch seeds the epoch's shuffle stream from (seed, phase, epoch), before every step
/// libtorch's generator from (seed, phase, epoch, step), checks every step's loss is finite,
/// reports steps and epochs to `observer`, appends the epoch's summary to the state and has `step`
/// write a checkpoint. A stop request ([`crate::interrupt`]) ends the phase after the current step
/// with a mid-epoch checkpoint and [`OeError::Interrupted`].
pub fn run_phase(
    plan: &PhasePlan,
    mut state: CheckpointState,
    observer: &mut dyn Observer,
    step: &mut dyn PhaseStep,
) -> Result<CheckpointState> {
    let phase = plan.phase;
    let start = state.epochs_done;
    observer.phase_start(phase, plan.epochs, plan.steps_per_epoch, start);
    let interrupted = |state: &CheckpointState| {
        OeError::Interrupted(format!(
            "{phase}: stopped after epoch {} step {}; a checkpoint was written, run the same command with --resume to continue",
            state.epochs_done + usize::from(state.partial.is_some()),
            state.steps_done()
        ))
    };
    if start < plan.epochs && crate::interrupt::requested() {
        return Err(interrupted(&state));
    }
    for epoch in start..plan.epochs {
        let t0 = std::time::Instant::now();
        let mut rng = epoch_rng(plan.seed, phase, epoch);
        let resumed = state.partial.take().filter(|p| p.epoch == epoch);
        let p0 = resumed.unwrap_or(PartialEpoch {
            epoch,
            ..Default::default()
        });
        let skip = p0.steps_done;
        tch::manual_seed(torch_step_seed(plan.seed, phase, epoch, skip));
        let (mut loss_sum, mut correct, mut seen, mut done) =
            (p0.loss_sum, p0.correct, p0.seen, p0.recorded);
        let mut next_step = skip;
        let mut stop = false;
        let mut record = |s: usize, o: StepOutcome| -> Result<()> {
            if !o.loss.is_finite() {
                return Err(OeError::Config(format!(
                    "{phase}: loss became {} at epoch {} step {}; lower the learning rate",
                    o.loss,
                    epoch + 1,
                    s + 1
                )));
            }
            loss_sum += o.loss * o.examples as f64;
            correct += o.correct;
            seen += o.examples;
            done += 1;
            next_step = s + 1;
            observer.step(
                phase,
                epoch,
                s,
                o.loss,
                o.correct / o.examples.max(1) as f64,
            );
            tch::manual_seed(torch_step_seed(plan.seed, phase, epoch, s + 1));
            if crate::interrupt::requested() {
                stop = true;
                return Err(OeError::Interrupted(String::new()));
            }
            Ok(())
        };
        let res = step.epoch(epoch, &mut rng, skip, &mut record);
        let seconds = p0.seconds + t0.elapsed().as_secs_f64();
        if stop {
            state.phase = phase.to_string();
            state.partial = Some(PartialEpoch {
                epoch,
                steps_done: next_step,
                recorded: done,
                loss_sum,
                correct,
                seen,
                seconds,
            });
            step.checkpoint(&state)?;
            return Err(interrupted(&state));
        }
        let lr = res?;
        let summary = EpochSummary {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct / seen.max(1) as f64,
            steps: done,
            seconds,
            data_wait_seconds: step.take_data_wait(),
        };
        observer.epoch_end(phase, epoch, &summary);
        state.phase = phase.to_string();
        state.epochs_done = epoch + 1;
        state.history.push(summary);
        step.checkpoint(&state)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_store(i: i64, o: i64) -> nn::VarStore {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = nn::linear(vs.root() / "fc", i, o, Default::default());
        vs
    }

    #[test]
    fn weights_of_another_shape_are_one_line_naming_file_and_tensor() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        save_tensors(&named_variables(&linear_store(4, 3)), &p).unwrap();
        load_weights(&mut linear_store(4, 3), &p).unwrap();
        let e = load_weights(&mut linear_store(5, 3), &p)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n') && !e.contains("Exception raised"), "{e}");
        assert!(
            e.contains(&p.display().to_string())
                && e.contains("`fc.weight`")
                && e.contains("[3, 4]")
                && e.contains("[3, 5]"),
            "{e}"
        );
        let mut other = nn::VarStore::new(tch::Device::Cpu);
        let _ = nn::linear(other.root() / "head", 4, 3, Default::default());
        let e = load_weights(&mut other, &p).unwrap_err().to_string();
        assert!(e.contains("no tensor `head.bias`"), "{e}");
        // A truncated file: the header is fine, libtorch refuses the data; one line still.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 8]).unwrap();
        let e = load_weights(&mut linear_store(4, 3), &p)
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains('\n') && e.contains(&p.display().to_string()),
            "{e}"
        );
        std::fs::write(&p, b"junk").unwrap();
        let e = load_weights(&mut linear_store(4, 3), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
    }

    #[test]
    fn torch_messages_lose_the_backtrace() {
        let m = "The size of tensor a (5) must match the size of tensor b (4) at non-singleton \
                 dimension 1\nException raised from infer_size_impl at /pytorch/x.cpp:31 (most \
                 recent call first):\nframe #0: c10::Error::Error(...)\nframe #1: ...";
        assert_eq!(
            torch_message(m),
            "The size of tensor a (5) must match the size of tensor b (4) at non-singleton \
             dimension 1"
        );
        assert_eq!(torch_message("one\ntwo"), "one two");
    }

    #[test]
    fn method_labels_round_trip_and_follow_the_loss() {
        use crate::loss::OeLoss;
        for m in MethodLabel::ALL {
            assert_eq!(m.name().parse::<MethodLabel>().unwrap(), m);
        }
        assert!("oe-ish".parse::<MethodLabel>().is_err());
        let energy = OeLoss::Energy {
            lambda: 0.1,
            m_in: -25.0,
            m_out: -7.0,
            temperature: 1.0,
        };
        assert_eq!(
            MethodLabel::of(Method::Baseline, &energy),
            MethodLabel::Baseline
        );
        assert_eq!(
            MethodLabel::of(Method::OeFinetune, &OeLoss::text_default()),
            MethodLabel::Oe
        );
        assert_eq!(
            MethodLabel::of(Method::OeFinetune, &energy),
            MethodLabel::EnergyOe
        );
        assert_eq!(
            MethodLabel::of(Method::OeScratch, &energy).paper_method(),
            "oe"
        );
    }

    #[test]
    fn epoch_rng_is_deterministic_and_distinct() {
        let a: u64 = epoch_rng(1, "baseline", 0).gen();
        let b: u64 = epoch_rng(1, "baseline", 0).gen();
        let c: u64 = epoch_rng(1, "baseline", 1).gen();
        let d: u64 = epoch_rng(1, "oe", 0).gen();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    /// A step that reports fixed outcomes, to check the driver's bookkeeping.
    struct Fixed {
        losses: Vec<f64>,
        saved: Vec<usize>,
    }

    impl PhaseStep for Fixed {
        fn epoch(
            &mut self,
            epoch: usize,
            _: &mut ChaCha8Rng,
            skip: usize,
            record: Record,
        ) -> Result<f64> {
            for (s, &l) in self.losses.iter().enumerate().skip(skip) {
                record(
                    s,
                    StepOutcome {
                        loss: l,
                        correct: 1.0,
                        examples: 2,
                    },
                )?;
            }
            Ok(0.1 * (epoch + 1) as f64)
        }
        fn checkpoint(&mut self, state: &CheckpointState) -> Result<()> {
            self.saved.push(state.epochs_done);
            Ok(())
        }
    }

    /// A plan of `epochs` epochs of two steps, and a step reporting `losses`.
    fn fixed(phase: &str, epochs: usize, losses: Vec<f64>) -> (PhasePlan<'_>, Fixed) {
        let plan = PhasePlan {
            phase,
            seed: 3,
            epochs,
            steps_per_epoch: 2,
        };
        (
            plan,
            Fixed {
                losses,
                saved: vec![],
            },
        )
    }

    #[test]
    fn driver_resumes_summarises_and_checkpoints_every_epoch() {
        let (plan, mut step) = fixed("p", 3, vec![1.0, 3.0]);
        let start = CheckpointState {
            phase: "p".into(),
            epochs_done: 1,
            history: vec![Default::default()],
            partial: None,
        };
        let s = run_phase(&plan, start, &mut Silent, &mut step).unwrap();
        assert_eq!(step.saved, vec![2, 3]);
        assert_eq!(s.epochs_done, 3);
        assert_eq!(s.history.len(), 3);
        let last = &s.history[2];
        // loss: example-weighted mean (1·2 + 3·2) / 4; accuracy: 2 correct of 4.
        assert_eq!(
            (last.epoch, last.steps, last.loss, last.train_accuracy),
            (3, 2, 2.0, 0.5)
        );
        assert!((last.lr - 0.3).abs() < 1e-12);
    }

    #[test]
    fn driver_stops_on_a_non_finite_loss_naming_the_step() {
        let (plan, mut step) = fixed("oe", 2, vec![1.0, f64::NAN]);
        let e = run_phase(&plan, CheckpointState::default(), &mut Silent, &mut step).unwrap_err();
        assert!(
            e.to_string()
                .contains("oe: loss became NaN at epoch 1 step 2"),
            "{e}"
        );
        assert!(step.saved.is_empty());
    }

    #[test]
    fn step_seeds_differ_by_phase_epoch_and_step() {
        assert_eq!(torch_step_seed(1, "a", 0, 0), torch_step_seed(1, "a", 0, 0));
        assert_ne!(torch_step_seed(1, "a", 0, 0), torch_step_seed(1, "a", 1, 0));
        assert_ne!(torch_step_seed(1, "a", 0, 0), torch_step_seed(1, "a", 0, 1));
        assert_ne!(torch_step_seed(1, "a", 0, 0), torch_step_seed(1, "b", 0, 0));
    }

    /// A step whose "weights" are the sum of its losses, checkpointed in memory.
    struct Summing {
        losses: Vec<f64>,
        total: f64,
        saved: Vec<(CheckpointState, f64)>,
        /// Request a stop after this many recorded steps.
        stop_after: Option<usize>,
        recorded: usize,
    }

    impl PhaseStep for Summing {
        fn epoch(
            &mut self,
            epoch: usize,
            _: &mut ChaCha8Rng,
            skip: usize,
            record: Record,
        ) -> Result<f64> {
            for (s, &l) in self.losses.iter().enumerate().skip(skip) {
                self.total += l * (epoch + 1) as f64;
                self.recorded += 1;
                if self.stop_after == Some(self.recorded) {
                    crate::interrupt::request_in_this_thread();
                }
                record(
                    s,
                    StepOutcome {
                        loss: l,
                        correct: 1.0,
                        examples: 2,
                    },
                )?;
            }
            Ok(0.5)
        }
        fn checkpoint(&mut self, state: &CheckpointState) -> Result<()> {
            self.saved.push((state.clone(), self.total));
            Ok(())
        }
    }

    #[test]
    fn a_stop_mid_epoch_checkpoints_and_the_resumed_run_equals_the_uninterrupted_one() {
        let plan = PhasePlan {
            phase: "p",
            seed: 3,
            epochs: 3,
            steps_per_epoch: 4,
        };
        let losses = vec![1.0, 2.0, 3.0, 4.0];
        let mk = |stop_after| Summing {
            losses: losses.clone(),
            total: 0.0,
            saved: vec![],
            stop_after,
            recorded: 0,
        };
        let mut full = mk(None);
        let want = run_phase(&plan, CheckpointState::default(), &mut Silent, &mut full).unwrap();
        // Stop after the 6th step: epoch 2 (0-based 1), step index 1 done.
        let mut a = mk(Some(6));
        let e = run_phase(&plan, CheckpointState::default(), &mut Silent, &mut a).unwrap_err();
        crate::interrupt::clear();
        assert!(matches!(e, OeError::Interrupted(_)), "{e}");
        assert!(
            e.to_string().contains("stopped after epoch 2 step 2"),
            "{e}"
        );
        let (ckpt, total) = a.saved.last().unwrap().clone();
        assert_eq!(ckpt.epochs_done, 1);
        assert_eq!(ckpt.steps_done(), 2);
        let json = serde_json::to_string(&ckpt).unwrap();
        let ckpt: CheckpointState = serde_json::from_str(&json).unwrap();
        let mut b = mk(None);
        b.total = total;
        let got = run_phase(&plan, ckpt, &mut Silent, &mut b).unwrap();
        assert_eq!(b.total, full.total);
        assert_eq!(got.history.len(), 3);
        for (g, w) in got.history.iter().zip(&want.history) {
            assert_eq!(
                (g.epoch, g.steps, g.loss, g.train_accuracy),
                (w.epoch, w.steps, w.loss, w.train_accuracy)
            );
        }
        assert!(got.partial.is_none());
    }
}
