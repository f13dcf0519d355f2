//! The cluster features on a real one-node Slurm cluster (munge, slurmctld, slurmd started by
//! `tests/slurm/cluster.sh` in a temporary state directory, stopped when the test ends): a 4-point
//! sweep as a job array ends with 4 finished run directories and a report; a 4-shard scoring array
//! with its `afterok` merge job equals the unsharded output byte for byte; a failing shard leaves the
//! merge job cancelled and says why in `merge --status`; a training task preempted by a whole-node
//! job in a higher-priority partition is signalled, checkpoints, is requeued and finishes with the
//! same weights as an uninterrupted run. Skips, saying why, where Slurm cannot be started (not
//! installed, not root).

use crate::cluster::{dataset, oe_text, sentence, sweep_file, train_cmd, train_flags};
use crate::common::check;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running cluster; stopped (exactly the daemons it started) when dropped.
struct Cluster {
    state: PathBuf,
    conf: String,
}

impl Cluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh")
    }

    /// Starts one, or says why it cannot.
    fn start(state: PathBuf) -> Result<Cluster, String> {
        let out = Command::new(Self::script())
            .arg("start")
            .arg(&state)
            // Ports of their own, so a real Slurm on this machine is left alone.
            .env("OE_SLURM_CTLD_PORT", "16817")
            .env("OE_SLURM_SLURMD_PORT", "16818")
            .output()
            .map_err(|e| format!("cannot run cluster.sh: {e}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {}
            Some(2) => return Err(format!("Slurm is not available here: {}", err.trim())),
            _ => panic!("the Slurm cluster did not start:\n{err}"),
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .expect("cluster.sh prints export SLURM_CONF=...")
            .trim_matches(['\'', '"'])
            .to_string();
        Ok(Cluster { state, conf })
    }

    /// A command talking to this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn oe(&self) -> Command {
        let mut c = oe_text();
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `scontrol show job ID`'s JobState of every task (empty once the job is gone).
    fn states(&self, id: &str) -> Vec<String> {
        let out = self
            .cmd("scontrol")
            .args(["show", "job", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("JobState="))
            .map(str::to_string)
            .collect()
    }

    /// Waits until `done()` (fails after `secs`, showing the queue).
    fn wait(&self, what: &str, secs: u64, done: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !done() {
            if t0.elapsed() > Duration::from_secs(secs) {
                let q = self.cmd("squeue").arg("-a").output().unwrap();
                panic!(
                    "timed out after {secs} s waiting for {what}; queue:\n{}",
                    String::from_utf8_lossy(&q.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(&self.state)
            .output();
    }
}

fn last_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn sweeps_shards_failures_and_preemption_on_a_real_slurm_cluster() {
    let t = tempfile::tempdir().unwrap();
    let cluster = match Cluster::start(t.path().join("slurm")) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipping the Slurm tests: {why}");
            return;
        }
    };
    let d = t.path().join("data");
    dataset(&d);

    // 1. A 4-point sweep as one job array: 4 finished run directories, and a report over them.
    let out = t.path().join("sweep");
    let file = t.path().join("sweep.toml");
    sweep_file(&file, &d, &out, &[1, 2, 3, 4], 1, false, true);
    let r = cluster
        .oe()
        .args(["sweep", "slurm", "--cpus", "1", "--submit"])
        .arg(&file)
        .output()
        .unwrap();
    check(&r);
    let status = || {
        let r = cluster
            .oe()
            .args(["sweep", "status"])
            .arg(&file)
            .output()
            .unwrap();
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    cluster.wait("the sweep", 600, || {
        let s = status();
        s.starts_with("4 points: 4 done") || s.contains(" failed") && !s.contains(" 0 failed")
    });
    assert!(
        status().starts_with("4 points: 4 done, 0 running, 0 failed"),
        "{}",
        status()
    );
    let rep = cluster.oe().arg("report").arg(&out).output().unwrap();
    check(&rep);
    assert!(String::from_utf8_lossy(&rep.stdout).contains("ood.txt"));
    let logs = std::fs::read_dir(out.join("slurm/logs")).unwrap().count();
    assert_eq!(logs, 4, "one log per task");
    // Resubmitting a finished sweep submits nothing.
    let r = cluster
        .oe()
        .args(["sweep", "slurm", "--submit"])
        .arg(&file)
        .output()
        .unwrap();
    check(&r);
    assert!(String::from_utf8_lossy(&r.stderr).contains("nothing to submit"));

    // 2. Sharded scoring: 4 shards and a merge job chained with afterok, equal to one process.
    let model = out.join("in-data_seed-1/oe");
    let input = t.path().join("in.txt");
    let text: String = (0..6000u64).map(|i| sentence(i + 50_000) + "\n").collect();
    std::fs::write(&input, text).unwrap();
    let whole = t.path().join("whole.parquet");
    let score = |c: &mut Command| {
        c.args([
            "score",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quiet",
            "--threshold",
            "auto",
        ])
        .arg("--model")
        .arg(&model)
        .arg(&input);
    };
    let mut c = oe_text();
    score(&mut c);
    check(&c.arg("-o").arg(&whole).output().unwrap());
    // `score --slurm N --submit` into `out`; the merge job's final state.
    let slurm_score = |out: &Path, shards: &str| -> Vec<String> {
        let mut c = cluster.oe();
        score(&mut c);
        let r = c
            .arg("-o")
            .arg(out)
            .args(["--slurm", shards, "--cpus", "1", "--submit"])
            .output()
            .unwrap();
        check(&r);
        let ids = last_line(&r);
        let (_, merge_job) = ids.split_once(' ').expect("array and merge job ids");
        let merge_job = merge_job.to_string();
        cluster.wait("the merge job to end", 300, || {
            cluster
                .states(&merge_job)
                .iter()
                .all(|s| s != "PENDING" && s != "RUNNING")
        });
        cluster.states(&merge_job)
    };
    let merged = t.path().join("merged.parquet");
    assert_eq!(slurm_score(&merged, "4"), ["COMPLETED"]);
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&merged).unwrap(),
        "the merged output differs from the unsharded one"
    );

    // 3. A failing shard (its part cannot be written: a directory holds the part's name) leaves
    // the merge job cancelled, and `merge --status` names the failure.
    let failed_out = t.path().join("failed.tsv");
    std::fs::create_dir_all(
        t.path()
            .join("failed.tsv.parts/part-000-of-002.rows.partial/x"),
    )
    .unwrap();
    assert_eq!(slurm_score(&failed_out, "2"), ["CANCELLED"]);
    assert!(!failed_out.exists());
    let st = oe_text()
        .args(["merge", "--status", "-o"])
        .arg(&failed_out)
        .output()
        .unwrap();
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.contains("part 0/2: failed:") && st.contains("part-000-of-002.rows.partial"),
        "{st}"
    );
    assert!(st.contains("part 1/2: done"), "{st}");

    // 4. Preemption: a training task in `debug` is preempted by a whole-node job in `urgent`: it is
    // signalled, checkpoints mid-run, requeues itself, restarts and resumes to the same weights.
    let out = t.path().join("preempt");
    let file = t.path().join("preempt.toml");
    sweep_file(&file, &d, &out, &[7], 12, false, false);
    let r = cluster
        .oe()
        .args([
            "sweep",
            "slurm",
            "--cpus",
            "1",
            "--partition",
            "debug",
            "--submit",
        ])
        .arg(&file)
        .output()
        .unwrap();
    check(&r);
    let point = out.join("in-data_seed-7");
    let ckpt = point.join("baseline/checkpoint.json");
    // Meanwhile, the same point without a scheduler (the reference weights).
    let reference = t.path().join("reference");
    let mut local = train_cmd(&train_flags(&d, 12), &reference)
        .args(["--seed", "7"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cluster.wait("the first checkpoint", 300, || ckpt.exists());
    let urgent = cluster
        .cmd("sbatch")
        .args([
            "--parsable",
            "-p",
            "urgent",
            "--exclusive",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 2",
        ])
        .output()
        .unwrap();
    check(&urgent);
    cluster.wait("the preempted point to finish", 600, || {
        point.join("done.json").exists()
    });
    assert!(local.wait().unwrap().success());
    let log = std::fs::read_to_string(out.join("slurm/logs/oe-sweep-test-0.log")).unwrap();
    eprintln!("log of the preempted task:\n{log}");
    assert!(
        log.contains("restart 0") && log.contains("restart 1"),
        "{log}"
    );
    assert!(log.contains("a checkpoint was written"), "{log}");
    assert!(log.contains("baseline: resuming after epoch"), "{log}");
    for phase in ["baseline", "oe"] {
        let a = std::fs::read(reference.join(phase).join("model.safetensors")).unwrap();
        let b = std::fs::read(point.join(phase).join("model.safetensors")).unwrap();
        assert!(a == b, "{phase}: the preempted run's weights differ");
    }
}
