//! Graceful stops for preemption and time limits.
//!
//! Clusters stop jobs with a signal: Slurm sends SIGTERM on preemption or at the time limit (and
//! the signal of `--signal`, here SIGUSR1, some seconds before), Kubernetes sends SIGTERM. The
//! binaries call [`install`] for their long-running commands; a signal then only sets a flag. Long
//! loops poll [`requested`] between units of work (after a training step, between scoring chunks),
//! save what they did in a form they can resume from, and return [`crate::error::OeError::Interrupted`];
//! the binary exits with [`EXIT_INTERRUPTED`] (after asking Slurm to requeue the task, when it runs
//! as an array task: [`slurm_array_task`]). A second SIGINT (Ctrl-C twice) ends the process at once.

use crate::error::{OeError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Exit status of a command that stopped on a signal after saving resumable state (`EX_TEMPFAIL`).
pub const EXIT_INTERRUPTED: u8 = 75;

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

thread_local! {
    static LOCAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a stop was requested (by a signal after [`install`], or by [`request`] /
/// [`request_in_this_thread`]).
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed) || LOCAL.with(|l| l.get())
}

/// Requests a stop of the whole process, as a signal would (embedding programs).
pub fn request() {
    flag().store(true, Ordering::Relaxed);
}

/// Requests a stop seen only by work running on this thread (tests, which share one process).
pub fn request_in_this_thread() {
    LOCAL.with(|l| l.set(true));
}

/// Clears the process-wide request and this thread's.
pub fn clear() {
    flag().store(false, Ordering::Relaxed);
    LOCAL.with(|l| l.set(false));
}

/// Makes SIGTERM, SIGUSR1 and SIGINT request a stop instead of killing the process; a second SIGINT
/// while a stop is pending exits at once (status 130).
pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let f = flag();
    let err = |e: std::io::Error| OeError::Config(format!("cannot install signal handlers: {e}"));
    // Registered first, so it sees the flag before the second registration sets it.
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(f)).map_err(err)?;
    for sig in [SIGTERM, SIGUSR1, SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(f)).map_err(err)?;
    }
    Ok(())
}

/// `ARRAYJOBID_TASKID` when this process runs as a Slurm array task: the id that requeues this
/// task alone (`scontrol requeue $SLURM_JOB_ID` from inside a task would requeue the whole array).
pub fn slurm_array_task() -> Option<String> {
    let job = std::env::var("SLURM_ARRAY_JOB_ID").ok()?;
    let task = std::env::var("SLURM_ARRAY_TASK_ID").ok()?;
    (!job.is_empty() && !task.is_empty()).then(|| format!("{job}_{task}"))
}

/// Asks Slurm to requeue this job: an array task by `ARRAYJOBID_TASKID` (only that task), any other
/// batch job by `SLURM_JOB_ID`. `Ok(None)` outside Slurm; the message of `scontrol` when it refuses
/// (a job submitted without `--requeue`, an interactive allocation, or a job Slurm is already
/// requeueing), which the caller reports as a warning.
pub fn requeue_slurm_task() -> Result<Option<String>> {
    let Some(id) =
        slurm_array_task().or_else(|| std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty()))
    else {
        return Ok(None);
    };
    let out = std::process::Command::new("scontrol")
        .args(["requeue", &id])
        .output()
        .map_err(|e| OeError::Config(format!("scontrol requeue {id}: {e}")))?;
    if out.status.success() {
        Ok(Some(format!("requeued Slurm task {id}")))
    } else {
        Err(OeError::Config(format!(
            "scontrol requeue {id} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_task_id_needs_both_variables() {
        // Only reads the environment; the variables are unset in `cargo test`.
        if std::env::var_os("SLURM_ARRAY_JOB_ID").is_none() {
            assert_eq!(slurm_array_task(), None);
        }
    }
}
