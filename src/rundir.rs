//! The model-directory protocol shared by the text and vision wings.
//!
//! A model directory holds `run.json` (everything needed to rebuild the model and its inputs: the
//! shared [`RunHeader`] fields plus the wing's own), the weights `model.safetensors` (written once,
//! atomically, when training ends: its presence means *finished*), `train_log.json` (the epochs),
//! and evaluation directories `eval-<score>-<protocol>/` ([`crate::results`]). While training,
//! `checkpoint.json` and `checkpoint.safetensors` (plus a wing's optimiser file) are rewritten
//! atomically after every epoch: their presence without the weights means *interrupted*, and
//! `--resume` continues from them.

use crate::error::{OeError, Result};
use crate::train::{CheckpointState, Method, Observer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `run.json`.
pub const RUN_FILE: &str = "run.json";
/// The finished weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The weights (and optimiser state) after the last completed epoch of an unfinished phase.
pub const CHECKPOINT_WEIGHTS: &str = "checkpoint.safetensors";
/// The bookkeeping of that checkpoint ([`CheckpointState`]).
pub const CHECKPOINT_STATE: &str = "checkpoint.json";
/// The finished phase's epochs ([`CheckpointState`]).
pub const TRAIN_LOG: &str = "train_log.json";

/// The fields of `run.json` both wings write (flattened into each wing's run config, so the JSON
/// field names are those of earlier versions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    /// `oe <version>` that wrote the directory.
    pub tool: String,
    /// The in-distribution dataset (manifest name, or a user file).
    pub in_dataset: String,
    pub method: Method,
    /// What the weights were initialised from (a relative model directory, or imported weights).
    pub init_from: Option<String>,
    pub train_examples: usize,
    /// The data root the datasets were read from.
    pub data_root: PathBuf,
}

impl RunHeader {
    /// `oe <crate version>`.
    pub fn tool() -> String {
        format!("oe {}", env!("CARGO_PKG_VERSION"))
    }
}

/// Writes `v` as pretty JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| OeError::Data(format!("{}: {e}", path.display())))?;
    crate::io::write_atomic(path, &bytes)
}

/// Reads `dir/run.json` as `T`. A missing file says "not a model directory" (and which command
/// makes one); a file that cannot be read says why (e.g. permission denied); bad JSON names the line.
pub fn read_run<T: DeserializeOwned>(dir: &Path, command: &str) -> Result<T> {
    let p = dir.join(RUN_FILE);
    let bytes = std::fs::read(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            OeError::Data(format!(
                "{}: not a model directory (no {RUN_FILE}); train one with `{command}`",
                dir.display()
            ))
        } else {
            OeError::io(&p, e)
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| OeError::parse(&p, e.line(), e.to_string()))
}

/// `Ok(true)` when `dir` already holds finished weights and `resume` allows keeping them; an error
/// when they exist without `resume`; `Ok(false)` when the phase still has to be trained.
pub fn already_trained(
    dir: &Path,
    phase: &str,
    resume: bool,
    obs: &mut dyn Observer,
) -> Result<bool> {
    let final_path = dir.join(WEIGHTS_FILE);
    if !final_path.exists() {
        return Ok(false);
    }
    if resume {
        obs.status(&format!(
            "{phase}: already trained ({})",
            final_path.display()
        ));
        return Ok(true);
    }
    Err(OeError::Config(format!(
        "{} exists; use --resume to continue that run or choose another --out",
        final_path.display()
    )))
}

/// The state of an interrupted run in `dir` (`checkpoint.json` + `checkpoint.safetensors`), if
/// any; an error when one exists without `resume`. The caller loads the weights.
pub fn interrupted_state(dir: &Path, resume: bool) -> Result<Option<CheckpointState>> {
    let ckpt_w = dir.join(CHECKPOINT_WEIGHTS);
    let ckpt_j = dir.join(CHECKPOINT_STATE);
    if !(ckpt_j.exists() && ckpt_w.exists()) {
        return Ok(None);
    }
    if !resume {
        return Err(OeError::Config(format!(
            "{} holds an interrupted run; pass --resume to continue it",
            dir.display()
        )));
    }
    let bytes = std::fs::read(&ckpt_j).map_err(|e| OeError::io(&ckpt_j, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| OeError::parse(&ckpt_j, e.line(), e.to_string()))
}

/// Ends a phase: writes `train_log.json`, then the weights through `save_weights` (atomically: the
/// directory counts as finished from then on), then removes the checkpoint files and `extra` ones.
pub fn finish_phase(
    dir: &Path,
    state: &CheckpointState,
    save_weights: impl FnOnce(&Path) -> Result<()>,
    extra: &[&str],
) -> Result<()> {
    write_json(&dir.join(TRAIN_LOG), state)?;
    save_weights(&dir.join(WEIGHTS_FILE))?;
    for f in [CHECKPOINT_WEIGHTS, CHECKPOINT_STATE].iter().chain(extra) {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Silent;

    #[test]
    fn finished_and_interrupted_checks() {
        let d = tempfile::tempdir().unwrap();
        assert!(!already_trained(d.path(), "baseline", false, &mut Silent).unwrap());
        assert!(interrupted_state(d.path(), false).unwrap().is_none());
        let st = CheckpointState {
            phase: "baseline".into(),
            epochs_done: 2,
            history: vec![],
        };
        write_json(&d.path().join(CHECKPOINT_STATE), &st).unwrap();
        std::fs::write(d.path().join(CHECKPOINT_WEIGHTS), b"x").unwrap();
        let e = interrupted_state(d.path(), false).unwrap_err().to_string();
        assert!(e.contains("pass --resume"), "{e}");
        assert_eq!(
            interrupted_state(d.path(), true)
                .unwrap()
                .unwrap()
                .epochs_done,
            2
        );
        finish_phase(
            d.path(),
            &st,
            |p| std::fs::write(p, b"w").map_err(|e| OeError::io(p, e)),
            &[],
        )
        .unwrap();
        assert!(!d.path().join(CHECKPOINT_STATE).exists());
        assert!(d.path().join(TRAIN_LOG).is_file());
        let e = already_trained(d.path(), "baseline", false, &mut Silent).unwrap_err();
        assert!(e.to_string().contains("use --resume"), "{e}");
        assert!(already_trained(d.path(), "baseline", true, &mut Silent).unwrap());
    }

    #[test]
    fn run_json_errors_say_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let e = read_run::<RunHeader>(d.path(), "oe-text train")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a model directory"), "{e}");
        std::fs::write(d.path().join(RUN_FILE), "{\n  \"tool\": 3\n}").unwrap();
        let e = read_run::<RunHeader>(d.path(), "oe-text train")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.json") && e.contains('2'), "{e}");
    }
}
