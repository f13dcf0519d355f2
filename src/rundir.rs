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
    /// The data root the datasets were read from (absolute since this version; older directories
    /// may hold a path relative to where training ran).
    pub data_root: PathBuf,
    /// The files training read (absolute paths) with their sha256, so a run moved to another node
    /// can check that it reads the same data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_files: Vec<DataFile>,
}

/// A data file a run read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

impl DataFile {
    /// Hashes `path` (made absolute).
    pub fn of(path: &Path) -> Result<DataFile> {
        let abs = std::fs::canonicalize(path).map_err(|e| OeError::io(path, e))?;
        let bytes = std::fs::metadata(&abs)
            .map_err(|e| OeError::io(&abs, e))?
            .len();
        Ok(DataFile {
            sha256: crate::datasets::fetch::sha256_file(&abs)?,
            path: abs,
            bytes,
        })
    }
}

/// `p` made absolute (against the current directory) without requiring it to exist.
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
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

/// A path recorded in a run directory's `run.json`, for use now: absolute paths as they are; a
/// relative one (directories written before paths were recorded absolute) as it resolves from the
/// working directory when it exists there, else against the run directory.
pub fn resolve_recorded(path: &Path, run_dir: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    let from_run = run_dir.join(path);
    if from_run.exists() {
        from_run
    } else {
        path.to_path_buf()
    }
}

/// A recorded dataset spec for use now: a built-in name as it is, a relative path resolved by
/// [`resolve_recorded`].
pub fn resolve_recorded_dataset(spec: &str, run_dir: &Path) -> String {
    let p = Path::new(spec);
    let looks_like_path = spec.contains('/') || spec.contains('.') || p.exists();
    if !looks_like_path || p.is_absolute() {
        return spec.to_string();
    }
    resolve_recorded(p, run_dir).display().to_string()
}

/// Writes `dir/run.json` and its checksum ([`crate::checksum`]).
pub fn write_run<T: Serialize>(dir: &Path, cfg: &T) -> Result<()> {
    let p = dir.join(RUN_FILE);
    write_json(&p, cfg)?;
    crate::checksum::record(&p)
}

/// Reads `dir/run.json` as `T`. A missing file says "not a model directory" (and which command
/// makes one); a file that cannot be read says why (e.g. permission denied); bad JSON names the line.
pub fn read_run<T: DeserializeOwned>(dir: &Path, command: &str) -> Result<T> {
    let p = dir.join(RUN_FILE);
    if p.is_file() {
        crate::checksum::verify(&p)?;
    }
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

/// Fails when `dir/run.json` (a finished or interrupted run) was made with settings other than
/// `cfg`'s, naming each difference. Both sides go through `T` (so fields added since have their
/// defaults on both); what may change between a run and its resume is left out: the tool
/// version, the data root (the data files' hashes must still match) and the data files' paths.
pub fn check_same_config<T: Serialize + DeserializeOwned>(
    dir: &Path,
    cfg: &T,
    command: &str,
) -> Result<()> {
    if !dir.join(RUN_FILE).is_file() {
        return Ok(());
    }
    let old: T = read_run(dir, command)?;
    let norm = |v: &T| -> Result<serde_json::Value> {
        let mut j = serde_json::to_value(v).map_err(|e| OeError::Data(e.to_string()))?;
        if let Some(o) = j.as_object_mut() {
            o.remove("tool");
            o.remove("data_root");
            // Derived from the (hash-checked) data; absent in directories written before it was.
            o.remove("max_train_tokens");
            // A baseline's outlier settings are never used (a baseline shared by OE variants
            // with other losses is the same baseline).
            if o.get("method").and_then(|m| m.as_str()) == Some("baseline") {
                if let Some(t) = o.get_mut("train").and_then(|t| t.as_object_mut()) {
                    for k in ["oe_loss", "oe_batch_size", "oe_order", "pairing", "lambda"] {
                        t.remove(k);
                    }
                }
            }
            // A dataset path recorded relative by older versions and absolute now.
            if let Some(serde_json::Value::String(d)) = o.get_mut("in_dataset") {
                if let Ok(c) = std::fs::canonicalize(d.as_str()) {
                    *d = c.display().to_string();
                }
            }
            if let Some(files) = o.get_mut("data_files").and_then(|f| f.as_array_mut()) {
                for f in files.iter_mut() {
                    if let Some(f) = f.as_object_mut() {
                        f.remove("path");
                    }
                }
            }
        }
        Ok(j)
    };
    let (mut a, b) = (norm(&old)?, norm(cfg)?);
    // Baselines written before they recorded only in-distribution files also list the OE corpus
    // of the run that made them: an old list that holds every new entry is the same data.
    if b.get("method").and_then(|m| m.as_str()) == Some("baseline") {
        if let (Some(old_files), Some(new_files)) = (
            a.get("data_files").and_then(|f| f.as_array()).cloned(),
            b.get("data_files").and_then(|f| f.as_array()),
        ) {
            if new_files.iter().all(|f| old_files.contains(f)) {
                a["data_files"] = serde_json::Value::Array(new_files.clone());
            }
        }
    }
    let mut diffs = Vec::new();
    json_diff("", &a, &b, &mut diffs);
    if diffs.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = diffs.iter().take(8).cloned().collect();
    Err(OeError::Config(format!(
        "{} was trained with other settings than this command's: {}{}; run the command it was \
         made with (see its {RUN_FILE}), or choose another --out",
        dir.display(),
        shown.join(", "),
        if diffs.len() > 8 {
            format!(" and {} more", diffs.len() - 8)
        } else {
            String::new()
        }
    )))
}

/// `path: old → new` for every leaf where `a` and `b` differ.
fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                json_diff(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a == b => {}
        _ => {
            let short = |v: &Value| {
                let s = v.to_string();
                if s.len() > 60 {
                    format!(
                        "{}…",
                        &s[..s.char_indices().nth(57).map_or(s.len(), |c| c.0)]
                    )
                } else {
                    s
                }
            };
            out.push(format!("{path} {} → {}", short(a), short(b)));
        }
    }
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

/// The lock file of a directory being written (`.oe-lock`, see [`RunLock`]).
pub const LOCK_FILE: &str = ".oe-lock";

/// Who holds a [`RunLock`]: written as JSON into the lock file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub command: String,
    /// `SLURM_JOB_ID` (or `ARRAYJOB_TASK`) when the owner ran under Slurm: a requeued task may take
    /// over its own lock on another node.
    #[serde(default)]
    pub slurm_job: Option<String>,
}

impl LockOwner {
    fn me(command: &str) -> Self {
        LockOwner {
            pid: std::process::id(),
            host: hostname(),
            started: crate::io::unix_now(),
            command: command.to_string(),
            slurm_job: slurm_job_id(),
        }
    }

    /// Whether the owner is certainly gone: same host and no such process, or the same Slurm job
    /// (a requeued task restarting).
    pub fn is_stale(&self) -> bool {
        let me = LockOwner::me("");
        if self.slurm_job.is_some() && self.slurm_job == me.slurm_job {
            return true;
        }
        self.host == me.host && (self.pid == me.pid || !process_alive(self.pid))
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn slurm_job_id() -> Option<String> {
    crate::interrupt::slurm_array_task().or_else(|| std::env::var("SLURM_JOB_ID").ok())
}

/// Whether process `pid` exists on this host.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// An exclusive claim on a directory while one process writes it, so two `train --out X` (or two
/// sweep tasks) never write the same directory. The lock file is created with `O_EXCL` and names
/// its owner; a lock whose owner is gone (same host, no such process; or the same Slurm job,
/// restarted) is taken over. Dropping the lock removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `dir` (created if needed) for `command`.
    pub fn acquire(dir: &Path, command: &str) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
        Self::acquire_file(&dir.join(LOCK_FILE), dir, command)
    }

    /// Takes the lock file `path` guarding `what` (a directory or file named in errors).
    pub fn acquire_file(path: &Path, what: &Path, command: &str) -> Result<RunLock> {
        let path = path.to_path_buf();
        let me = LockOwner::me(command);
        let body = serde_json::to_vec_pretty(&me).map_err(|e| OeError::Data(e.to_string()))?;
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(&body)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| OeError::io(&path, e))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match read_lock(&path)? {
                        Some(owner) if !owner.is_stale() => {
                            return Err(OeError::Config(format!(
                                "{} is being written by `{}` (pid {} on {}, since {}{}); lock file {}: \
                                 wait for it, or delete the lock file if that process is gone",
                                what.display(),
                                owner.command,
                                owner.pid,
                                owner.host,
                                crate::io::utc_time(owner.started),
                                owner
                                    .slurm_job
                                    .as_deref()
                                    .map(|j| format!(", Slurm job {j}"))
                                    .unwrap_or_default(),
                                path.display()
                            )))
                        }
                        // Stale (or vanished meanwhile): remove and try again.
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(OeError::io(&path, e)),
            }
        }
        Err(OeError::Config(format!(
            "{}: cannot take the lock (it keeps reappearing)",
            path.display()
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The owner recorded in a lock file; `None` when it vanished or is unreadable (a crash while
/// writing it).
pub fn read_lock(path: &Path) -> Result<Option<LockOwner>> {
    match std::fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OeError::io(path, e)),
    }
}

/// Whether `dir` is locked by a live owner (for status views).
pub fn live_lock(dir: &Path) -> Option<LockOwner> {
    read_lock(&dir.join(LOCK_FILE))
        .ok()
        .flatten()
        .filter(|o| !o.is_stale())
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
            partial: None,
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
    fn a_second_writer_is_refused_and_a_stale_lock_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        let lock = RunLock::acquire(&dir, "oe-text train").unwrap();
        // Held by this (live) process: a second writer gets an error naming the owner... unless it
        // is this very process, which counts as stale; so write a live foreign owner by hand.
        drop(lock);
        let foreign = LockOwner {
            pid: 1, // init: alive on every Linux host
            host: hostname(),
            started: 0,
            command: "oe-text train --out run".into(),
            slurm_job: None,
        };
        std::fs::write(dir.join(LOCK_FILE), serde_json::to_vec(&foreign).unwrap()).unwrap();
        let e = RunLock::acquire(&dir, "x").unwrap_err().to_string();
        assert!(
            e.contains("is being written by `oe-text train --out run` (pid 1 on")
                && e.contains(LOCK_FILE),
            "{e}"
        );
        assert!(live_lock(&dir).is_some());
        // A dead owner on this host: taken over, and the file is gone after the drop.
        let dead = LockOwner {
            pid: u32::MAX / 2,
            ..foreign
        };
        std::fs::write(dir.join(LOCK_FILE), serde_json::to_vec(&dead).unwrap()).unwrap();
        assert!(live_lock(&dir).is_none());
        let l = RunLock::acquire(&dir, "x").unwrap();
        assert_eq!(
            read_lock(&dir.join(LOCK_FILE)).unwrap().unwrap().command,
            "x"
        );
        drop(l);
        assert!(!dir.join(LOCK_FILE).exists());
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

    /// An unreadable `run.json` says "permission denied", not "not a model directory". Root reads
    /// anything, so as root the read runs on a thread whose file-system user id is `nobody`
    /// (`setfsuid` changes only the calling thread's, and drops its CAP_DAC_OVERRIDE).
    #[cfg(target_os = "linux")]
    #[test]
    fn unreadable_run_json_says_permission_denied() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = d.path().join(RUN_FILE);
        std::fs::write(&p, "{}").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        let dir = d.path().to_path_buf();
        let e = std::thread::spawn(move || {
            if unsafe { libc::geteuid() } == 0 {
                unsafe { libc::setfsuid(65534) };
                if std::fs::read(dir.join(RUN_FILE)).is_ok() {
                    return None;
                }
            }
            Some(
                read_run::<RunHeader>(&dir, "oe-text train")
                    .unwrap_err()
                    .to_string(),
            )
        })
        .join()
        .unwrap();
        let Some(e) = e else {
            eprintln!("skipped: running as root and setfsuid did not take (root reads anything)");
            return;
        };
        assert!(
            e.to_lowercase().contains("permission denied") && e.contains("run.json"),
            "{e}"
        );
        assert!(!e.contains("not a model directory"), "{e}");
    }
}
