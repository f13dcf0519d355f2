//! Slurm batch scripts and submission.
//!
//! Every array script written here:
//! - runs one unit (a sweep point, a scoring shard) per task, chosen by `SLURM_ARRAY_TASK_ID`
//!   passed as an explicit index (never derived from the array's size: resubmitting only some
//!   indices keeps the meaning of each);
//! - asks for `--requeue` and `--open-mode=append` (a requeued task appends to its log instead of
//!   truncating it) and `--signal=B:USR1@SECS` (a warning before the time limit);
//! - `exec`s the program, so that the program is the batch shell and receives the signals itself;
//!   the program checkpoints, requeues its own task (`ARRAYJOBID_TASKID`) and exits
//!   ([`crate::interrupt`]).

use crate::error::{OeError, Result};
use std::path::{Path, PathBuf};

/// Resources and scheduling of a Slurm job.
#[derive(Clone, Debug, PartialEq)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// `--time` (e.g. `4:00:00`).
    pub time: Option<String>,
    /// GPUs per task (`--gres=gpu:N`).
    pub gpus: Option<u32>,
    pub cpus: Option<u32>,
    /// Memory per task (`--mem`, e.g. `8G`).
    pub mem: Option<String>,
    /// Most tasks of the array running at once (`--array=...%N`).
    pub max_parallel: Option<usize>,
    /// Seconds before the time limit at which the task gets SIGUSR1.
    pub signal_secs: u32,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            time: None,
            gpus: None,
            cpus: None,
            mem: None,
            max_parallel: None,
            signal_secs: 120,
        }
    }
}

/// `0-3,5,7-9` for the sorted, deduplicated `indices`.
pub fn compact_ranges(indices: &[usize]) -> String {
    let mut v = indices.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// `s` quoted for a POSIX shell (unchanged when it is made only of safe characters).
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The `#SBATCH` lines every job gets.
fn header(name: &str, log: &Path, chdir: &Path, o: &SlurmOptions) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let mut line = |k: &str, v: &str| s += &format!("#SBATCH --{k}={}\n", shell_quote(v));
    line("job-name", name);
    line("output", &log.display().to_string());
    line("chdir", &chdir.display().to_string());
    if let Some(p) = &o.partition {
        line("partition", p);
    }
    if let Some(t) = &o.time {
        line("time", t);
    }
    if let Some(c) = o.cpus {
        line("cpus-per-task", &c.to_string());
    }
    if let Some(g) = o.gpus {
        line("gres", &format!("gpu:{g}"));
    }
    if let Some(m) = &o.mem {
        line("mem", m);
    }
    s
}

/// An array script: task `i` (of `indices`) runs `argv` with the token [`TASK_ID`] replaced by the
/// task id. `log_dir` gets one log per task (`NAME-TASK.log`, appended to across restarts).
pub fn array_script(
    name: &str,
    indices: &[usize],
    log_dir: &Path,
    chdir: &Path,
    o: &SlurmOptions,
    argv: &[String],
    what: &str,
) -> Result<String> {
    if indices.is_empty() {
        return Err(OeError::Config(format!("{name}: no tasks to run")));
    }
    let mut s = header(name, &log_dir.join("%x-%a.log"), chdir, o);
    let mut array = compact_ranges(indices);
    if let Some(p) = o.max_parallel {
        array += &format!("%{p}");
    }
    s += &format!("#SBATCH --array={array}\n");
    s += "#SBATCH --requeue\n#SBATCH --open-mode=append\n";
    s += &format!("#SBATCH --signal=B:USR1@{}\n", o.signal_secs);
    s += &format!(
        "# Written by {}: {what}.\n# Each task runs one unit by its explicit index; on SIGTERM / SIGUSR1 it checkpoints,\n# requeues its own task and exits {}; a restarted task resumes. Finished units are skipped.\n",
        crate::rundir::RunHeader::tool(),
        crate::interrupt::EXIT_INTERRUPTED
    );
    s += "echo \"[oe] task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, $(date -u +%FT%TZ)\"\n";
    s += "exec";
    for a in argv {
        s.push(' ');
        if a == TASK_ID {
            s += "\"${SLURM_ARRAY_TASK_ID}\"";
        } else if let Some(rest) = a.strip_prefix(TASK_ID) {
            s += &format!("\"${{SLURM_ARRAY_TASK_ID}}\"{}", shell_quote(rest));
        } else {
            s += &shell_quote(a);
        }
    }
    s.push('\n');
    Ok(s)
}

/// The placeholder for the array task id in [`array_script`]'s `argv` (alone, or at the start of
/// an argument: `{TASK}/4`).
pub const TASK_ID: &str = "{TASK}";

/// A one-task script running `argv` (a merge job).
pub fn single_script(
    name: &str,
    log: &Path,
    chdir: &Path,
    o: &SlurmOptions,
    argv: &[String],
) -> String {
    let mut s = header(name, log, chdir, o);
    s += "#SBATCH --open-mode=append\n";
    s += "exec";
    for a in argv {
        s.push(' ');
        s += &shell_quote(a);
    }
    s.push('\n');
    s
}

/// Submits `script` with `sbatch --parsable` (plus `extra` arguments such as a dependency) and
/// returns the job id.
pub fn sbatch(script: &Path, extra: &[String]) -> Result<String> {
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .output()
        .map_err(|e| {
            OeError::Config(format!(
                "sbatch {}: {e} (is Slurm installed and on PATH?)",
                script.display()
            ))
        })?;
    if !out.status.success() {
        return Err(OeError::Config(format!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    Ok(id.split(';').next().unwrap_or("").to_string())
}

/// Writes an executable script atomically.
pub fn write_script(path: &Path, body: &str) -> Result<()> {
    crate::io::write_atomic(path, body.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(path)
        .map_err(|e| OeError::io(path, e))?
        .permissions();
    perm.set_mode(perm.mode() | ((perm.mode() & 0o444) >> 2));
    std::fs::set_permissions(path, perm).map_err(|e| OeError::io(path, e))
}

/// The absolute path of the running program (for scripts that run it again).
pub fn current_program() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| OeError::Config(format!("cannot find this program: {e}")))
}

/// `oe-text sweep slurm`: one array task per unfinished point of a sweep.
#[derive(Clone, Debug)]
pub struct SweepSlurmRequest<'a> {
    pub sweep: &'a crate::cluster::sweep::Sweep,
    pub options: SlurmOptions,
    pub submit: bool,
    /// The directory tasks run in (the current one: relative paths of the sweep resolve there).
    pub chdir: PathBuf,
}

/// What `sweep slurm` found, wrote (and submitted).
#[derive(Clone, Debug)]
pub struct SweepSlurmOutcome {
    pub status: crate::cluster::sweep::SweepStatus,
    /// The points the array runs (those not done and not running).
    pub todo: Vec<usize>,
    /// `OUT/slurm/sweep.sbatch`, unless there was nothing to run.
    pub script: Option<PathBuf>,
    /// The array's job id when submitted.
    pub job: Option<String>,
}

/// Writes `OUT/slurm/sweep.sbatch`: one array task per unfinished point, each running `oe-text
/// sweep run SWEEP --index $SLURM_ARRAY_TASK_ID`, logs in `OUT/slurm/logs/`; with `submit`,
/// submits it. Writes nothing when every point is done or running.
pub fn sweep_slurm(req: &SweepSlurmRequest) -> Result<SweepSlurmOutcome> {
    let s = req.sweep;
    let status = crate::cluster::sweep::status(s);
    let todo = status.unfinished();
    let mut out = SweepSlurmOutcome {
        status,
        todo,
        script: None,
        job: None,
    };
    if out.todo.is_empty() {
        return Ok(out);
    }
    let dir = req.chdir.join(&s.out).join("slurm");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| OeError::io(&logs, e))?;
    let argv = vec![
        current_program()?.display().to_string(),
        "sweep".into(),
        "run".into(),
        s.file.display().to_string(),
        "--index".into(),
        TASK_ID.into(),
    ];
    let script = array_script(
        &format!("oe-sweep-{}", s.name),
        &out.todo,
        &logs,
        &req.chdir,
        &req.options,
        &argv,
        &format!(
            "sweep {} ({} of {} points)",
            s.file.display(),
            out.todo.len(),
            s.points.len()
        ),
    )?;
    let path = dir.join("sweep.sbatch");
    write_script(&path, &script)?;
    if req.submit {
        out.job = Some(sbatch(&path, &[])?);
    }
    out.script = Some(path);
    Ok(out)
}

/// `oe-text score --slurm N`: the shard array and the merge job.
#[derive(Clone, Debug)]
pub struct ScoreSlurmRequest {
    /// The scoring command without `--slurm` / `--submit` (program first).
    pub score_argv: Vec<String>,
    pub output: PathBuf,
    pub shards: usize,
    pub options: SlurmOptions,
    pub submit: bool,
    /// The directory tasks run in (the current one).
    pub chdir: PathBuf,
}

/// What `score --slurm` wrote (and submitted).
#[derive(Clone, Debug)]
pub struct ScoreSlurmOutcome {
    pub array_script: PathBuf,
    pub merge_script: PathBuf,
    pub submit_script: PathBuf,
    /// (array job id, merge job id) when submitted.
    pub jobs: Option<(String, String)>,
}

/// Writes `OUTPUT.slurm/{score.sbatch, merge.sbatch, submit.sh}` and, with `submit`, submits the
/// array and the merge job with `--dependency=afterok:ARRAY` (cancelled if a shard fails: the
/// cluster's `kill_invalid_depend` or `scancel`).
pub fn score_slurm(req: &ScoreSlurmRequest) -> Result<ScoreSlurmOutcome> {
    if req.shards == 0 {
        return Err(OeError::Config("--slurm needs at least 1 shard".into()));
    }
    let mut dir = req.output.as_os_str().to_owned();
    dir.push(".slurm");
    let dir = PathBuf::from(dir);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| OeError::io(&logs, e))?;
    let name = format!(
        "oe-score-{}",
        req.output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into())
    );
    let mut argv = req.score_argv.clone();
    argv.push("--shard".into());
    argv.push(format!("{TASK_ID}/{}", req.shards));
    let indices: Vec<usize> = (0..req.shards).collect();
    let array = array_script(
        &name,
        &indices,
        &logs,
        &req.chdir,
        &req.options,
        &argv,
        &format!("scoring in {} shards", req.shards),
    )?;
    let merge_argv = vec![
        argv[0].clone(),
        "merge".into(),
        "--output".into(),
        req.output.display().to_string(),
        "--shards".into(),
        req.shards.to_string(),
    ];
    let merge_opts = SlurmOptions {
        gpus: None,
        max_parallel: None,
        ..req.options.clone()
    };
    let merge = single_script(
        &format!("{name}-merge"),
        &logs.join("merge.log"),
        &req.chdir,
        &merge_opts,
        &merge_argv,
    );
    let array_path = dir.join("score.sbatch");
    let merge_path = dir.join("merge.sbatch");
    let submit_path = dir.join("submit.sh");
    write_script(&array_path, &array)?;
    write_script(&merge_path, &merge)?;
    let submit = format!(
        "#!/bin/sh\n# Submits the shards, then the merge once all of them succeeded.\nset -e\narray=$(sbatch --parsable {})\narray=${{array%%;*}}\nmerge=$(sbatch --parsable --dependency=afterok:$array --kill-on-invalid-dep=yes {})\necho \"shards: job $array, merge: job $merge\"\n",
        shell_quote(&array_path.display().to_string()),
        shell_quote(&merge_path.display().to_string())
    );
    write_script(&submit_path, &submit)?;
    let jobs = if req.submit {
        let a = sbatch(&array_path, &[])?;
        let m = sbatch(
            &merge_path,
            &[
                format!("--dependency=afterok:{a}"),
                "--kill-on-invalid-dep=yes".into(),
            ],
        )?;
        Some((a, m))
    } else {
        None
    };
    Ok(ScoreSlurmOutcome {
        array_script: array_path,
        merge_script: merge_path,
        submit_script: submit_path,
        jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_quotes() {
        assert_eq!(compact_ranges(&[5, 0, 1, 2, 3, 7, 8, 9, 3]), "0-3,5,7-9");
        assert_eq!(compact_ranges(&[4]), "4");
        assert_eq!(shell_quote("runs/a-b_1.toml"), "runs/a-b_1.toml");
        assert_eq!(shell_quote("it's here"), "'it'\\''s here'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn array_scripts_requeue_append_signal_and_exec_one_index() {
        let o = SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            gpus: Some(1),
            cpus: Some(4),
            max_parallel: Some(2),
            ..Default::default()
        };
        let argv: Vec<String> = [
            "/bin/oe-text",
            "sweep",
            "run",
            "/a b/s.toml",
            "--index",
            TASK_ID,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = array_script(
            "oe-sweep-x",
            &[0, 1, 3],
            Path::new("/l"),
            Path::new("/w"),
            &o,
            &argv,
            "a sweep",
        )
        .unwrap();
        for want in [
            "#SBATCH --array=0-1,3%2\n",
            "#SBATCH --requeue\n",
            "#SBATCH --open-mode=append\n",
            "#SBATCH --signal=B:USR1@120\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --time=1:00:00\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --cpus-per-task=4\n",
            "#SBATCH --output=/l/%x-%a.log\n",
            "#SBATCH --chdir=/w\n",
            "exec /bin/oe-text sweep run '/a b/s.toml' --index \"${SLURM_ARRAY_TASK_ID}\"\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        let shard_argv = vec!["x".to_string(), format!("{TASK_ID}/4")];
        let s = array_script(
            "n",
            &[0],
            Path::new("/l"),
            Path::new("/w"),
            &SlurmOptions::default(),
            &shard_argv,
            "w",
        )
        .unwrap();
        assert!(s.ends_with("exec x \"${SLURM_ARRAY_TASK_ID}\"/4\n"), "{s}");
        assert!(array_script("n", &[], Path::new("/l"), Path::new("/w"), &o, &argv, "w").is_err());
    }
}
