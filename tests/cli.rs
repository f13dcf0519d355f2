//! The binaries' behaviour at the edges: standard output closed or full.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn oe_text() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oe-text"))
}

/// `oe-text score` of the committed fixture model on its own input file, on the CPU.
fn score_fixture() -> Command {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-cb7c0ec");
    let mut c = oe_text();
    c.current_dir(fixture).args([
        "score",
        "--model",
        ".",
        "score-input.txt",
        "--device",
        "cpu",
    ]);
    c
}

/// Two score files for `metrics`.
fn score_files(dir: &Path) -> (String, String) {
    let a = dir.join("in.txt");
    let b = dir.join("out.txt");
    std::fs::write(&a, "0.1\n0.2\n0.3\n").unwrap();
    std::fs::write(&b, "0.7\n0.8\n0.25\n").unwrap();
    (a.display().to_string(), b.display().to_string())
}

/// `oe-text data list` and `oe-text metrics`, each a command that prints to standard output.
fn printing_commands(dir: &Path) -> Vec<Command> {
    let (a, b) = score_files(dir);
    let mut list = oe_text();
    list.args(["data", "list", "--data-dir"]).arg(dir);
    let mut metrics = oe_text();
    metrics.args(["metrics", "--in", &a, "--out", &b]);
    vec![list, metrics]
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_full_standard_output_is_an_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    for mut c in printing_commands(d.path()) {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = c.stdout(full).output().unwrap();
        let e = stderr(&o);
        assert!(!o.status.success(), "{c:?}: {e}");
        assert_ne!(o.status.code(), Some(101), "{c:?}: {e}");
        assert!(!e.contains("panicked"), "{c:?}: {e}");
        assert!(
            e.contains("No space left") && e.contains("standard output"),
            "{c:?}: {e}"
        );
    }
}

#[test]
fn a_closed_standard_output_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    for mut c in printing_commands(d.path()) {
        // A pipe whose read end is closed before the command starts (as after `| head -1` has
        // read its line): every write fails with EPIPE.
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(r);
        let o = c
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "{c:?}: {e}");
        assert!(e.trim().is_empty(), "{c:?}: a message: {e}");
        assert!(
            matches!(o.status.code(), Some(0 | 141)),
            "{c:?}: {:?}",
            o.status
        );
    }
}

fn data(args: &[&str], root: &Path) -> Output {
    oe_text()
        .arg("data")
        .args(args)
        .arg("--data-dir")
        .arg(root)
        .output()
        .unwrap()
}

#[test]
fn data_verify_fails_for_a_missing_root_and_a_partly_deleted_dataset() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-root");
    let o = data(&["verify"], &missing);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("does not exist"),
        "{e}"
    );
    // An existing root with nothing in it: nothing to verify is not a success either.
    let o = data(&["verify"], d.path());
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to verify"), "{}", stderr(&o));
    // TREC with its train file deleted: verified by default (not skipped as absent), and failed.
    std::fs::create_dir(d.path().join("trec")).unwrap();
    std::fs::write(d.path().join("trec/TREC_10.label"), "DESC:def what ?\n").unwrap();
    for args in [&["verify"][..], &["verify", "trec"]] {
        let o = data(args, d.path());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success(), "{args:?}: {out}");
        assert!(
            out.contains("trec/train_5500.label: MISSING"),
            "{args:?}: {out}"
        );
        assert!(
            stderr(&o).contains("verification failed for: trec"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn data_show_fails_when_a_loader_fails() {
    let d = tempfile::tempdir().unwrap();
    let o = data(&["show", "trec"], d.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    // The report is printed first, then the failure.
    assert!(out.contains("[trec] not loadable"), "{out}");
    assert!(stderr(&o).contains("not loadable: trec"), "{}", stderr(&o));
}

#[test]
fn huge_and_tiny_thresholds_print_compactly() {
    for (t, want) in [("1e300", "score > 1e300"), ("-2.5e-9", "score > -2.5e-9")] {
        let o = score_fixture()
            .args(["--threshold", t])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let e = stderr(&o);
        assert!(o.status.success(), "{e}");
        assert!(e.contains(&format!("flagged OOD ({want})")), "{e}");
        assert!(!e.contains("00000000"), "{e}");
    }
}

/// `score -o` a device or a FIFO writes into it: /dev/null stays the device (as root it used to
/// be renamed over), a FIFO's reader gets the rows.
#[test]
fn score_output_to_a_device_or_fifo_writes_into_it() {
    use std::os::unix::fs::FileTypeExt;
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("rows.tsv");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    for out in [Path::new("/dev/null"), fifo.as_path()] {
        let o = score_fixture().arg("-o").arg(out).output().unwrap();
        assert!(o.status.success(), "{}: {}", out.display(), stderr(&o));
    }
    let rows = reader.join().unwrap();
    assert!(rows.starts_with("source\tline\tscore"), "{rows}");
    assert!(rows.lines().count() > 10, "{rows}");
    assert!(std::fs::symlink_metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}
