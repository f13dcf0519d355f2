//! Scaling out without a scheduler (the same commands run as Slurm array tasks in `slurm.rs`):
//! sharded scoring merged byte for byte into the unsharded output, shards stopped by a signal that
//! resume, merges that refuse incomplete or inconsistent parts, sweeps whose states come from their
//! run directories, a training run stopped by SIGTERM mid-epoch that resumes to the uninterrupted
//! run's weights, and the lock that keeps two writers out of one run directory.
#![allow(dead_code)] // slurm.rs uses part of this module

use crate::common::check;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn oe_text() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oe-text"));
    c.env_remove("SLURM_ARRAY_JOB_ID")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_RESTART_COUNT")
        .env_remove("SLURM_JOB_ID");
    c
}

/// A deterministic pseudo-random sentence of 1..=20 words.
pub fn sentence(i: u64) -> String {
    crate::common::sentence(i, 777, 20)
}

/// A two-class dataset (train / dev / test CSV), an OOD file and an outlier corpus in `d`.
pub fn dataset(d: &Path) {
    let csv = |n: usize, off: usize| crate::common::labelled_csv(n, off, sentence);
    std::fs::create_dir_all(d).unwrap();
    std::fs::write(d.join("train.csv"), csv(400, 0)).unwrap();
    std::fs::write(d.join("dev.csv"), csv(100, 5000)).unwrap();
    std::fs::write(d.join("test.csv"), csv(100, 9000)).unwrap();
    let ood: String = (0..100)
        .map(|i| format!("a question about topic {i} ?\n"))
        .collect();
    std::fs::write(d.join("ood.txt"), ood).unwrap();
    let oe: String = (0..300)
        .map(|i| format!("an outlier sentence {i} about {}\n", sentence(i + 70_000)))
        .collect();
    std::fs::write(d.join("oe.txt"), oe).unwrap();
}

/// `oe-text train` flags for the dataset in `d`: small, fast, on one CPU thread.
pub fn train_flags(d: &Path, epochs: usize) -> Vec<String> {
    let d = d.display().to_string();
    [
        "--in",
        &d,
        "--data-dir",
        &d,
        "--ood",
        &format!("{d}/ood.txt"),
        "--oe",
        &format!("{d}/oe.txt"),
        "--epochs",
        &epochs.to_string(),
        "--oe-epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `oe-text train FLAGS --out OUT`.
pub fn train_cmd(flags: &[String], out: &Path) -> Command {
    let mut c = oe_text();
    c.arg("train").args(flags).arg("--out").arg(out);
    c
}

/// One trained model (calibrated, so thresholds and p-values work) and inputs to score:
/// `big.txt` (empty lines left out by default), `more.txt.gz` and `c.csv`.
fn fixture() -> &'static (tempfile::TempDir, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("data");
        dataset(&d);
        let out = t.path().join("run");
        check(&train_cmd(&train_flags(&d, 1), &out).output().unwrap());
        let big: String = (0..5000u64)
            .map(|i| {
                if i % 97 == 0 {
                    "\n".to_string()
                } else {
                    sentence(i) + "\n"
                }
            })
            .collect();
        std::fs::write(t.path().join("big.txt"), big).unwrap();
        let more: String = (0..1500u64).map(|i| sentence(i + 10_000) + "\n").collect();
        let f = std::fs::File::create(t.path().join("more.txt.gz")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, more.as_bytes()).unwrap();
        gz.finish().unwrap();
        let csv: String = std::iter::once("id,text\n".to_string())
            .chain((0..700u64).map(|i| format!("{i},\"{}\"\n", sentence(i + 20_000))))
            .collect();
        std::fs::write(t.path().join("c.csv"), csv).unwrap();
        let model = out.join("baseline");
        (t, model)
    })
}

fn score_cmd(model: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut c = oe_text();
    c.arg("score")
        .arg("--model")
        .arg(model)
        .args(["--device", "cpu", "--threads", "1", "--quiet"])
        .arg(dir.join("big.txt"))
        .arg(dir.join("more.txt.gz"))
        .arg(dir.join("c.csv"))
        .args(extra);
    c
}

#[test]
fn sharded_scores_merge_into_the_unsharded_output_byte_for_byte() {
    let (t, model) = fixture();
    let dir = t.path();
    // TSV with the calibrated threshold (4 shards), Parquet with Benjamini-Hochberg over all texts
    // (3 shards: the merge decides over the merged rows), JSON lines with p-values and --alpha.
    for (name, shards, extra) in [
        ("whole.tsv", 4, vec!["--threshold", "auto"]),
        ("whole.parquet", 3, vec!["--fdr", "0.2"]),
        ("whole.jsonl", 2, vec!["--alpha", "0.1"]),
    ] {
        let unsharded = dir.join(format!("un-{name}"));
        let mut args = extra.clone();
        args.extend(["--output", unsharded.to_str().unwrap()]);
        check(&score_cmd(model, dir, &args).output().unwrap());
        let merged = dir.join(format!("sh-{name}"));
        // Shards in any order, one of them twice (the second run keeps the finished part).
        let mut order: Vec<usize> = (0..shards).rev().collect();
        order.push(0);
        for i in order {
            let mut a = extra.clone();
            let s = format!("{i}/{shards}");
            a.extend(["--output", merged.to_str().unwrap(), "--shard", &s]);
            check(&score_cmd(model, dir, &a).output().unwrap());
        }
        let st = oe_text()
            .args(["merge", "--status", "-o"])
            .arg(&merged)
            .output()
            .unwrap();
        check(&st);
        let st = String::from_utf8_lossy(&st.stdout);
        assert_eq!(st.matches(": done (").count(), shards, "{st}");
        check(
            &oe_text()
                .args(["merge", "-o"])
                .arg(&merged)
                .output()
                .unwrap(),
        );
        let (a, b) = (
            std::fs::read(&unsharded).unwrap(),
            std::fs::read(&merged).unwrap(),
        );
        assert!(a.len() > 1000);
        assert!(
            a == b,
            "{name}: merged output differs from the unsharded one"
        );
    }
    // The shards were balanced: 7,200 records read, 52 empty lines left out, the other 7,148 in
    // blocks of 1,024 (shard 1 of 4: blocks 1 and 5).
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("sh-whole.tsv.parts/part-001-of-004.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["records"], 7200);
    assert_eq!(rec["owned"], 2048);
    assert_eq!(rec["rows"], 2048);
}

#[test]
fn merges_refuse_missing_failed_and_inconsistent_parts() {
    let (t, model) = fixture();
    let dir = t.path().join("refuse");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("x.tsv");
    let o = out.to_str().unwrap();
    check(
        &score_cmd(model, t.path(), &["-o", o, "--shard", "0/3"])
            .output()
            .unwrap(),
    );
    // Shard 1 with another score: the merge names the disagreement.
    check(
        &score_cmd(
            model,
            t.path(),
            &["-o", o, "--shard", "1/3", "--score", "energy"],
        )
        .output()
        .unwrap(),
    );
    // Shard 2 fails (invalid UTF-8 under the default policy): failed.json holds the reason.
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"fine\n\xff\xfe bad\n").unwrap();
    let r = oe_text()
        .args(["score", "--device", "cpu", "--quiet", "--model"])
        .arg(model)
        .arg(&bad)
        .args(["-o", o, "--shard", "2/3"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    let st = oe_text()
        .args(["merge", "--status", "-o", o])
        .output()
        .unwrap();
    assert!(!st.status.success(), "not all parts are done");
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("part 0/3: done"), "{st}");
    assert!(
        st.contains("part 2/3: failed:") && st.contains("bad.txt:2"),
        "{st}"
    );
    let m = oe_text().args(["merge", "-o", o]).output().unwrap();
    let e = String::from_utf8_lossy(&m.stderr);
    assert!(
        !m.status.success() && e.contains("1 of 3 parts are not finished"),
        "{e}"
    );
    assert!(!out.exists(), "nothing is written when the merge refuses");
    // Shard 2 done with the default score: now the settings of part 1 differ.
    check(
        &score_cmd(model, t.path(), &["-o", o, "--shard", "2/3"])
            .output()
            .unwrap(),
    );
    let m = oe_text().args(["merge", "-o", o]).output().unwrap();
    let e = String::from_utf8_lossy(&m.stderr);
    assert!(e.contains("different settings"), "{e}");
    // --shard without --output, and a bad shard, are refused before any work.
    let r = score_cmd(model, t.path(), &["--shard", "0/2"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&r.stderr).contains("--shard needs --output"));
    let r = score_cmd(model, t.path(), &["-o", o, "--shard", "3/3"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&r.stderr).contains("0 <= I < N"));
}

/// Sends `sig` to a child once `ready()` holds (or fails after 120 s), and waits for it.
pub fn signal_when(mut child: std::process::Child, sig: i32, ready: impl Fn() -> bool) -> Output {
    let t0 = Instant::now();
    while !ready() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("finished ({st}) before it could be signalled");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child process by its pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_shard_stopped_by_a_signal_resumes_where_it_stopped() {
    let (t, model) = fixture();
    let dir = t.path().join("resume");
    std::fs::create_dir_all(&dir).unwrap();
    // A larger input, so that the signal arrives mid-way: big.txt 30 times.
    let big = std::fs::read(t.path().join("big.txt")).unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, big.repeat(30)).unwrap();
    let run = |extra: &[&str]| {
        let mut c = oe_text();
        c.args([
            "score",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quiet",
            "--model",
        ])
        .arg(model)
        .arg(&input)
        .args(extra);
        c
    };
    let whole = dir.join("whole.tsv");
    check(&run(&["-o", whole.to_str().unwrap()]).output().unwrap());
    let out = dir.join("parts.tsv");
    let o = out.to_str().unwrap();
    let partial = dir.join("parts.tsv.parts/part-000-of-002.rows.partial");
    // SIGTERM, then SIGUSR1 on the resumed run: each stops with status 75 and a progress record.
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        let before = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let child = run(&["-o", o, "--shard", "0/2"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let r = signal_when(child, sig, || {
            std::fs::metadata(&partial).is_ok_and(|m| m.len() > before + 20_000)
        });
        let e = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(75), "{e}");
        assert!(e.contains("run the same command to resume"), "{e}");
        let st = oe_text()
            .args(["merge", "--status", "-o", o])
            .output()
            .unwrap();
        let st = String::from_utf8_lossy(&st.stdout);
        assert!(st.contains("part 0/2: interrupted after"), "{st}");
    }
    check(&run(&["-o", o, "--shard", "0/2"]).output().unwrap());
    check(&run(&["-o", o, "--shard", "1/2"]).output().unwrap());
    check(
        &oe_text()
            .args(["merge", "--remove-parts", "-o", o])
            .output()
            .unwrap(),
    );
    assert!(std::fs::read(&whole).unwrap() == std::fs::read(&out).unwrap());
    assert!(!dir.join("parts.tsv.parts").exists());
    // Unsharded scoring stopped by a signal writes nothing under the final name.
    let lost = dir.join("lost.tsv");
    let child = run(&["-o", lost.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let r = signal_when(child, libc::SIGTERM, || {
        started.elapsed() > Duration::from_millis(1500)
    });
    assert_eq!(r.status.code(), Some(75));
    assert!(!lost.exists());
    // ... and leaves no temporary file behind.
    let tmp: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".oe-tmp"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    // An output that is one of the inputs is refused before anything is written.
    let before = std::fs::read(&input).unwrap();
    let r = run(&["-o", input.to_str().unwrap()]).output().unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && e.contains("the output is also an input"),
        "{e}"
    );
    assert!(std::fs::read(&input).unwrap() == before);
}

#[test]
fn training_stopped_by_sigterm_mid_epoch_resumes_to_the_uninterrupted_weights() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    dataset(&d);
    let flags = train_flags(&d, 4);
    let full = t.path().join("full");
    check(&train_cmd(&flags, &full).output().unwrap());
    let cut = t.path().join("cut");
    let child = train_cmd(&flags, &cut)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = cut.join("baseline").join("checkpoint.json");
    let r = signal_when(child, libc::SIGTERM, || ckpt.exists());
    let e = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(75), "{e}");
    assert!(e.contains("a checkpoint was written"), "{e}");
    // The lock was released, the checkpoint is mid-epoch (or, rarely, at a boundary).
    assert!(!cut.join(oe::rundir::LOCK_FILE).exists());
    let st: oe::train::CheckpointState =
        serde_json::from_slice(&std::fs::read(&ckpt).unwrap()).unwrap();
    assert!(st.epochs_done >= 1 && st.epochs_done < 4, "{st:?}");
    // A second train without --resume is refused; with it, it finishes.
    let r = train_cmd(&flags, &cut).output().unwrap();
    assert!(String::from_utf8_lossy(&r.stderr).contains("--resume"));
    check(&train_cmd(&flags, &cut).arg("--resume").output().unwrap());
    for phase in ["baseline", "oe"] {
        let a = std::fs::read(full.join(phase).join("model.safetensors")).unwrap();
        let b = std::fs::read(cut.join(phase).join("model.safetensors")).unwrap();
        assert!(a == b, "{phase}: the resumed run's weights differ");
    }
}

#[test]
fn a_second_writer_of_a_run_directory_gets_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    dataset(&d);
    let out = t.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // A live owner: this test process.
    let owner = serde_json::json!({
        "pid": std::process::id(), "host": oe::rundir::hostname(), "started": 0,
        "command": "oe-text train (another one)"
    });
    std::fs::write(out.join(oe::rundir::LOCK_FILE), owner.to_string()).unwrap();
    let r = train_cmd(&train_flags(&d, 1), &out).output().unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        e.contains("is being written by `oe-text train (another one)`")
            && e.contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    // A stale lock (no such process on this host) is taken over.
    let stale = serde_json::json!({
        "pid": 2_000_000_000u32, "host": oe::rundir::hostname(), "started": 0, "command": "x"
    });
    std::fs::write(out.join(oe::rundir::LOCK_FILE), stale.to_string()).unwrap();
    check(&train_cmd(&train_flags(&d, 1), &out).output().unwrap());
    assert!(!out.join(oe::rundir::LOCK_FILE).exists());
}

/// A sweep file over the dataset in `d`: one point per seed (and, with `failing`, per seed a point
/// whose dataset does not exist), into `out`; progress lines unless `quiet`.
pub fn sweep_file(
    path: &Path,
    d: &Path,
    out: &Path,
    seeds: &[u64],
    epochs: usize,
    failing: bool,
    quiet: bool,
) {
    let ds = if failing {
        format!(
            "[{:?}, {:?}]",
            d.display().to_string(),
            d.join("missing").display().to_string()
        )
    } else {
        format!("[{:?}]", d.display().to_string())
    };
    let body = format!(
        "name = \"test\"\nout = {:?}\n[fixed]\ndata-dir = {:?}\nood = {:?}\noe = {:?}\nepochs = {epochs}\noe-epochs = 1\nbatch-size = 8\ndevice = \"cpu\"\nthreads = 1\nquiet = {quiet}\n[grid]\nin = {ds}\nseed = {seeds:?}\n",
        out.display().to_string(),
        d.display().to_string(),
        d.join("ood.txt").display().to_string(),
        d.join("oe.txt").display().to_string(),
    );
    std::fs::write(path, body).unwrap();
}

#[test]
fn sweeps_run_points_skip_finished_ones_and_report_their_state() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    dataset(&d);
    let out = t.path().join("sweep");
    let file = t.path().join("s.toml");
    sweep_file(&file, &d, &out, &[1, 2], 1, true, true);
    let status = || {
        let r = oe_text()
            .args(["sweep", "status"])
            .arg(&file)
            .output()
            .unwrap();
        check(&r);
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    assert!(status().starts_with("4 points: 0 done, 0 running, 0 failed, 0 interrupted, 4 pending"));
    // Point 3 (the missing dataset) fails and says why; points 0 and 1 finish.
    let r = oe_text()
        .args(["sweep", "run", "--index", "3"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!r.status.success());
    for i in ["0", "1"] {
        check(
            &oe_text()
                .args(["sweep", "run", "--index", i])
                .arg(&file)
                .output()
                .unwrap(),
        );
    }
    let s = status();
    assert!(
        s.starts_with("4 points: 2 done, 0 running, 1 failed, 0 interrupted, 1 pending"),
        "{s}"
    );
    assert!(s.contains("failed") && s.contains("missing"), "{s}");
    // A finished point is not run again.
    let r = oe_text()
        .args(["sweep", "run", "--index", "0"])
        .arg(&file)
        .output()
        .unwrap();
    check(&r);
    assert!(String::from_utf8_lossy(&r.stderr).contains("already done"));
    // The Slurm script covers exactly the unfinished points.
    let r = oe_text()
        .args(["sweep", "slurm", "--time", "0:30:00", "--max-parallel", "2"])
        .arg(&file)
        .output()
        .unwrap();
    check(&r);
    let script = std::fs::read_to_string(out.join("slurm/sweep.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=2-3%2\n"), "{script}");
    assert!(script.contains("#SBATCH --requeue\n#SBATCH --open-mode=append\n"));
    assert!(script.contains("--index \"${SLURM_ARRAY_TASK_ID}\""));
    // The report over the sweep aggregates both seeds.
    let r = oe_text().arg("report").arg(&out).output().unwrap();
    check(&r);
    let rep = String::from_utf8_lossy(&r.stdout);
    assert!(rep.contains("ood.txt"), "{rep}");
    // Each point directory is what `train --out` writes, plus done.json.
    for p in ["in-data_seed-1", "in-data_seed-2"] {
        assert!(out.join(p).join("done.json").is_file());
        assert!(out.join(p).join("oe/model.safetensors").is_file());
    }
}
