//! `oe-text score` / `oe-text calibrate` on a tiny model trained here (1 epoch, generated data):
//! batch independence, input order, every bad-input behaviour, atomic output, thresholds.

use crate::common;

use oe::text::model_dir::LoadedModel;
use oe::text::models::{GruConfig, ModelConfig};
use oe::text::pipeline::{run_train, TrainRequest};
use oe::text::score::input::InputOptions;
use oe::text::score::output::{OutRow, RowWriter};
use oe::text::score::{score_stream, ScoreOptions};
use oe::text::train::TrainConfig;
use oe::train::Silent;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::Device;

/// A deterministic pseudo-random sentence of 1..=24 words.
fn sentence(i: u64) -> String {
    common::sentence(i, 12345, 24)
}

fn write(path: &Path, s: impl AsRef<[u8]>) {
    std::fs::write(path, s).unwrap();
}

pub(crate) fn dataset(d: &Path, with_dev: bool) {
    let csv = |n: usize, off: usize| common::labelled_csv(n, off, sentence);
    write(&d.join("train.csv"), csv(120, 0));
    write(&d.join("test.csv"), csv(30, 1000));
    if with_dev {
        write(&d.join("dev.csv"), csv(40, 2000));
    }
    let ood: String = (0..30)
        .map(|i| format!("a question about topic {i} ?\n"))
        .collect();
    write(&d.join("ood.txt"), ood);
}

/// A GRU trained on [`dataset`] for 1 epoch, calibrated for MSP at TPR 0.9 (on the dev split
/// when there is one): its `run/baseline` directory.
pub(crate) fn train(d: &Path, holdout: Option<f64>) -> PathBuf {
    // One libtorch thread: these models are tiny, and spinning threads are slow on a busy machine.
    tch::set_num_threads(1);
    let req = TrainRequest {
        oe_corpus: None,
        baseline: TrainConfig {
            epochs: 1,
            ..Default::default()
        },
        oe: TrainConfig::default(),
        holdout,
        calibrate_tpr: Some(0.9),
        ..common::request(
            d,
            &d.join("run"),
            ModelConfig::Gru(GruConfig::default()),
            TrainConfig::default(),
            1,
        )
    };
    run_train(&req, &mut Silent).unwrap();
    d.join("run").join("baseline")
}

/// One model directory for all tests (a dataset with a dev split).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        dataset(t.path(), true);
        let m = train(t.path(), None);
        (t, m)
    })
    .1
}

fn load() -> LoadedModel {
    tch::set_num_threads(1);
    LoadedModel::load(model_dir(), Device::Cpu).unwrap()
}

#[derive(Default)]
struct Rows(Vec<(String, u64, f32, String, f32, Option<bool>)>);
impl RowWriter for Rows {
    fn write(&mut self, r: &OutRow) -> oe::Result<()> {
        self.0.push((
            r.source.into(),
            r.line,
            r.score,
            r.class.into(),
            r.prob,
            r.is_ood,
        ));
        Ok(())
    }
    fn finish(&mut self) -> oe::Result<()> {
        Ok(())
    }
}

fn score_files(m: &LoadedModel, files: &[PathBuf], opts: &ScoreOptions) -> Rows {
    let mut rows = Rows::default();
    score_stream(m, files, &InputOptions::default(), opts, &mut rows).unwrap();
    rows
}

/// `texts` reversed and rotated left by `rot`, written to `dir/shuffled.txt` (no final newline);
/// with the permutation (`perm[pos]` = the text at line `pos + 1`).
fn shuffled(dir: &Path, texts: &[String], rot: usize) -> (PathBuf, Vec<usize>) {
    let mut perm: Vec<usize> = (0..texts.len()).collect();
    perm.reverse();
    perm.rotate_left(rot);
    let path = dir.join("shuffled.txt");
    let lines: Vec<&str> = perm.iter().map(|&i| texts[i].as_str()).collect();
    write(&path, lines.join("\n"));
    (path, perm)
}

#[test]
fn scores_do_not_depend_on_the_batch_and_order_is_kept() {
    let m = load();
    let dir = tempfile::tempdir().unwrap();
    let texts: Vec<String> = (0..600).map(|i| sentence(i % 450)).collect();
    let whole = dir.path().join("whole.txt");
    write(&whole, texts.join("\n") + "\n");
    // Small reorder buffer: many batches are run early and partly filled.
    for max_pending in [65_536, 5] {
        // Small batches keep the test fast; every run uses the same batch shapes.
        let opts = ScoreOptions {
            max_pending,
            max_batch_rows: 16,
            ..Default::default()
        };
        let a = score_files(&m, std::slice::from_ref(&whole), &opts);
        assert_eq!(a.0.len(), 600);
        // input order
        assert!(a.0.iter().enumerate().all(|(i, r)| r.1 == i as u64 + 1));
        // shuffled file
        let (shuffled, perm) = shuffled(dir.path(), &texts, 77);
        let b = score_files(&m, &[shuffled], &opts);
        for (pos, &i) in perm.iter().enumerate() {
            assert_eq!(
                b.0[pos].2.to_bits(),
                a.0[i].2.to_bits(),
                "line {i}: shuffled"
            );
            assert_eq!(b.0[pos].4.to_bits(), a.0[i].4.to_bits());
            assert_eq!(b.0[pos].3, a.0[i].3);
        }
        // line by line, one file (and one run) per line
        for i in (0..600).step_by(37) {
            let one = dir.path().join("one.txt");
            write(&one, &texts[i]);
            let c = score_files(&m, &[one], &opts);
            assert_eq!(c.0.len(), 1);
            assert_eq!(c.0[0].2.to_bits(), a.0[i].2.to_bits(), "line {i}: alone");
        }
        // repeated texts get identical scores wherever they are
        assert_eq!(a.0[10].2.to_bits(), a.0[460].2.to_bits());
    }
}

/// `--precision bf16` (where the CPU has AVX512_BF16): each text the same bits whole, shuffled, alone
/// and through the service's path; close to float32; the run reports how far it moved; and the
/// transformer, which has no bfloat16 path, is refused with a message.
#[test]
fn bf16_scores_are_batch_invariant_close_to_float32_and_reported() {
    // The transformer has no bfloat16 path: refused, saying which models have one.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-cb7c0ec");
    let mut t = LoadedModel::load(&fixture, Device::Cpu).unwrap();
    let e = t.set_precision(oe::device::Precision::Bf16).unwrap_err();
    assert!(e.to_string().contains("CPU GRU only"), "{e}");
    if !oe::device::Precision::Bf16.available() {
        eprintln!("skipped: this CPU lacks AVX512_BF16");
        return;
    }
    let f32m = load();
    let mut m = load();
    m.set_precision(oe::device::Precision::Bf16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let texts: Vec<String> = (0..300).map(|i| sentence(i % 250)).collect();
    let whole = dir.path().join("whole.txt");
    write(&whole, texts.join("\n") + "\n");
    let opts = ScoreOptions::default();
    let mut a = Rows::default();
    let summary = score_stream(
        &m,
        std::slice::from_ref(&whole),
        &InputOptions::default(),
        &opts,
        &mut a,
    )
    .unwrap();
    let check = summary
        .precision_check
        .clone()
        .expect("a bf16 run reports its check");
    assert_eq!(check.texts, 300);
    assert!(summary
        .render()
        .contains("precision bf16: the first 300 texts"));
    let want = score_files(&f32m, std::slice::from_ref(&whole), &opts);
    let max =
        a.0.iter()
            .zip(&want.0)
            .map(|(x, y)| (x.2 - y.2).abs() as f64)
            .fold(0.0, f64::max);
    assert!(max > 0.0 && max < 5e-2, "bf16 moved the scores by {max}");
    assert!(
        (check.max_abs_score_diff - max).abs() < 1e-12,
        "{check:?} vs {max}"
    );
    let (shuffled, perm) = shuffled(dir.path(), &texts, 41);
    let b = score_files(&m, &[shuffled], &opts);
    for (pos, &i) in perm.iter().enumerate() {
        assert_eq!(
            b.0[pos].2.to_bits(),
            a.0[i].2.to_bits(),
            "line {i}: shuffled"
        );
    }
    let served = oe::text::score::score_texts(&m, &texts[..40], &opts).unwrap();
    for (i, s) in served.iter().enumerate() {
        assert_eq!(
            s.score.to_bits(),
            a.0[i].2.to_bits(),
            "text {i}: service path"
        );
        assert_eq!(s.prob.to_bits(), a.0[i].4.to_bits());
    }
    for i in (0..300).step_by(29) {
        let one = dir.path().join("one.txt");
        write(&one, &texts[i]);
        let c = score_files(&m, &[one], &opts);
        assert_eq!(c.0[0].2.to_bits(), a.0[i].2.to_bits(), "line {i}: alone");
    }
    // Back to float32: the float32 scores again, bit for bit.
    m.set_precision(oe::device::Precision::Float32).unwrap();
    let back = score_files(&m, std::slice::from_ref(&whole), &opts);
    assert!(back
        .0
        .iter()
        .zip(&want.0)
        .all(|(x, y)| x.2.to_bits() == y.2.to_bits()));
}

#[test]
fn many_sources_in_order_with_gzip_csv_jsonl_and_directories() {
    use std::io::Write;
    let m = load();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("tree/sub")).unwrap();
    write(&d.join("tree/b.txt"), "good movie\nbad film\n");
    write(&d.join("tree/sub/a.txt"), "the war\n");
    write(&d.join("tree/.hidden"), "never read\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"id,body\n1,the king\n2,\"the river, quite\"\n")
        .unwrap();
    write(&d.join("c.csv.gz"), gz.finish().unwrap());
    write(&d.join("d.jsonl"), "{\"body\": \"great plot\"}\n");
    let files = oe::text::score::input::expand_inputs(&[
        d.join("tree"),
        d.join("c.csv.gz"),
        d.join("d.jsonl"),
    ])
    .unwrap();
    let in_opts = InputOptions {
        column: Some("body".into()),
        ..Default::default()
    };
    let mut rows = Rows::default();
    // --column applies to the CSV / JSON-lines sources; plain text files are read as lines.
    let lines_only = InputOptions::default();
    let text_files: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .cloned()
        .collect();
    score_stream(
        &m,
        &text_files,
        &lines_only,
        &ScoreOptions::default(),
        &mut rows,
    )
    .unwrap();
    let rest: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e != "txt"))
        .cloned()
        .collect();
    score_stream(&m, &rest, &in_opts, &ScoreOptions::default(), &mut rows).unwrap();
    let got: Vec<(String, u64)> = rows
        .0
        .iter()
        .map(|r| {
            (
                Path::new(&r.0)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                r.1,
            )
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("b.txt", 1),
        ("b.txt", 2),
        ("a.txt", 1),
        ("c.csv.gz", 2),
        ("c.csv.gz", 3),
        ("d.jsonl", 1),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), *b))
    .collect();
    assert_eq!(got, want);
    for r in &rows.0 {
        assert!(
            ["pos", "neg"].contains(&r.3.as_str()) && r.4 >= 0.5 && r.4 <= 1.0,
            "{r:?}"
        );
        assert!(r.2 <= -0.5 && r.2 >= -1.0, "msp is −max softmax: {r:?}");
    }
    // Plain text with --column is refused, naming the file.
    let mut rows = Rows::default();
    let e = score_stream(
        &m,
        &text_files,
        &in_opts,
        &ScoreOptions::default(),
        &mut rows,
    )
    .unwrap_err();
    assert!(e.to_string().contains("b.txt"), "{e}");
}

fn oe_text() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oe-text"))
}

fn run(args: &[&str], extra: &[&Path]) -> (bool, String, String) {
    let mut c = oe_text();
    c.arg("score")
        .arg("--model")
        .arg(model_dir())
        .args(["--device", "cpu", "--threads", "1", "--batch-size", "16"])
        .args(args)
        .args(extra);
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_bad_input_behaviour_through_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let txt = d.join("in.txt");
    write(
        &txt,
        b"good movie\n\nbad \xff film\n   \nthe war the war the war\n".as_slice(),
    );
    // Invalid UTF-8 fails by default, naming file and line.
    let (ok, _, err) = run(&[], &[&txt]);
    assert!(
        !ok && err.contains("in.txt:3:") && err.contains("UTF-8"),
        "{err}"
    );
    // skip: counted; empty lines skipped by default, counted
    let (ok, out, err) = run(&["--on-invalid-utf8", "skip"], &[&txt]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(err.contains("skipped 3 (empty 2, invalid UTF-8 1"), "{err}");
    // replace: scored with U+FFFD, counted; --on-empty score keeps the empty lines
    let (ok, out, err) = run(
        &["--on-invalid-utf8", "replace", "--on-empty", "score"],
        &[&txt],
    );
    assert!(ok, "{err}");
    let lines: Vec<u64> = out
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines, [1, 2, 3, 4, 5]);
    assert!(err.contains("replaced invalid UTF-8 in 1"), "{err}");
    // --on-empty fail
    let (ok, _, err) = run(
        &["--on-invalid-utf8", "skip", "--on-empty", "fail"],
        &[&txt],
    );
    assert!(
        !ok && err.contains("in.txt:2:") && err.contains("empty"),
        "{err}"
    );
    // Over-long lines (bytes): truncate (counted), skip, fail
    let (ok, _, err) = run(
        &["--on-invalid-utf8", "skip", "--max-line-bytes", "12"],
        &[&txt],
    );
    assert!(
        ok && err.contains("truncated 1 to --max-line-bytes"),
        "{err}"
    );
    let (ok, out, err) = run(
        &[
            "--on-invalid-utf8",
            "skip",
            "--max-line-bytes",
            "12",
            "--on-long",
            "skip",
        ],
        &[&txt],
    );
    assert!(
        ok && err.contains("too long 1") && out.lines().count() == 2,
        "{err}{out}"
    );
    let (ok, _, err) = run(
        &[
            "--on-invalid-utf8",
            "skip",
            "--max-line-bytes",
            "12",
            "--on-long",
            "fail",
        ],
        &[&txt],
    );
    assert!(
        !ok && err.contains("in.txt:5:") && err.contains("max-line-bytes"),
        "{err}"
    );
    // CSV rows without the column
    let csv = d.join("in.csv");
    write(&csv, "id,text\n1,good movie\n2\n3,bad film\n");
    let (ok, _, err) = run(&[], &[&csv]);
    assert!(
        !ok && err.contains("in.csv:3:") && err.contains("no column `text`"),
        "{err}"
    );
    let (ok, out, err) = run(&["--on-bad-record", "skip", "--format", "csv"], &[&csv]);
    assert!(
        ok && err.contains("bad record 1") && out.lines().count() == 3,
        "{err}{out}"
    );
    assert!(out.starts_with("source,line,score,class,prob\n"), "{out}");
    // Malformed JSON
    let js = d.join("in.jsonl");
    write(&js, "{\"text\": \"good movie\"}\n{\"text\": \"bad\n");
    let (ok, _, err) = run(&[], &[&js]);
    assert!(
        !ok && err.contains("in.jsonl:2:") && err.contains("malformed JSON"),
        "{err}"
    );
    let (ok, out, err) = run(&["--on-bad-record", "skip", "--format", "jsonl"], &[&js]);
    assert!(ok && err.contains("bad record 1"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["line"], 1);
    // Standard input
    let mut c = oe_text();
    c.arg("score")
        .arg("--model")
        .arg(model_dir())
        .args(["--device", "cpu", "--threads", "1", "-"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"good movie\nbad film\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        s.lines()
            .nth(2)
            .unwrap()
            .split('\t')
            .take(2)
            .collect::<Vec<_>>(),
        ["-", "2"]
    );
}

#[test]
fn output_files_are_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.txt");
    let big: String = (0..800).map(|i| sentence(i) + "\n").collect();
    write(&good, &big);
    let bad = d.join("bad.txt");
    write(&bad, [big.as_bytes(), &b"\xff\n"[..]].concat());
    let outdir = d.join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("scores.tsv");
    // A failing run leaves neither a file nor a temporary.
    let (ok, _, _) = run(&["--output", out.to_str().unwrap()], &[&bad]);
    assert!(!ok);
    assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 0);
    // A good run writes the whole file; a later failing run leaves it as it was.
    let (ok, _, err) = run(&["--output", out.to_str().unwrap()], &[&good]);
    assert!(ok, "{err}");
    let first = std::fs::read(&out).unwrap();
    assert_eq!(first.iter().filter(|&&b| b == b'\n').count(), 801);
    let (ok, _, _) = run(&["--output", out.to_str().unwrap()], &[&bad]);
    assert!(!ok);
    assert_eq!(std::fs::read(&out).unwrap(), first);
    assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 1);
    // Parquet
    let pq = outdir.join("scores.parquet");
    let (ok, _, err) = run(&["--output", pq.to_str().unwrap()], &[&good]);
    assert!(ok, "{err}");
    let df = oe::text::score::parquet::read_parquet(&pq).unwrap();
    assert_eq!(df.height(), 800);
}

#[test]
fn thresholds_from_calibration() {
    let dir_model = model_dir();
    // Training stored a threshold at TPR 0.9 from the dev split.
    let cal = oe::text::calibrate::load(dir_model, &oe::detect::score::Score::Msp).unwrap();
    assert_eq!(
        (cal.split.as_str(), cal.n_validation, cal.tpr),
        ("dev", 40, 0.9)
    );
    // `calibrate` at 0.95 replaces it, and writes the per-threshold table.
    let out = oe_text()
        .arg("calibrate")
        .arg("--model")
        .arg(dir_model)
        .args(["--tpr", "0.95", "--device", "cpu", "--threads", "1"])
        .output()
        .unwrap();
    common::check(&out);
    let cal = oe::text::calibrate::load(dir_model, &oe::detect::score::Score::Msp).unwrap();
    assert_eq!(cal.tpr, 0.95);
    assert!(cal.kept_fraction >= 0.95);
    let table = std::fs::read_to_string(dir_model.join("calibration-msp.csv")).unwrap();
    assert!(table.starts_with("threshold,n_kept,kept_fraction,n_flagged\n"));
    // Scoring the dev texts with --threshold auto keeps exactly the calibrated fraction.
    let dir = tempfile::tempdir().unwrap();
    let dev = dir_model
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("dev.csv");
    let (ok, out, err) = run(&["--threshold", "auto"], &[&dev]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("source\tline\tscore\tclass\tprob\tis_ood\n"),
        "{out}"
    );
    let flagged = out
        .lines()
        .skip(1)
        .filter(|l| l.ends_with("\ttrue"))
        .count();
    assert_eq!(
        40 - flagged,
        (cal.kept_fraction * 40.0).round() as usize,
        "{err}"
    );
    assert!(err.contains("flagged OOD"), "{err}");
    // An explicit threshold overrides; energy has no stored threshold.
    let (ok, out, _) = run(&["--threshold", "-2"], &[&dev]);
    assert!(ok && out.lines().skip(1).all(|l| l.ends_with("\ttrue")));
    let (ok, _, err) = run(&["--threshold", "auto", "--score", "energy"], &[&dev]);
    assert!(!ok && err.contains("oe-text calibrate"), "{err}");
    drop(dir);
}

#[test]
fn holdout_is_recorded_and_used_for_calibration() {
    let t = tempfile::tempdir().unwrap();
    dataset(t.path(), false);
    let m = train(t.path(), Some(0.25));
    let run_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["holdout"]["n_heldout"], 30);
    assert_eq!(run_json["train_examples"], 90);
    let cal = oe::text::calibrate::load(&m, &oe::detect::score::Score::Msp).unwrap();
    assert_eq!((cal.split.as_str(), cal.n_validation), ("holdout", 30));
    // `calibrate` rebuilds the same held-out texts from run.json and gets the same threshold.
    let out = oe_text()
        .arg("calibrate")
        .arg("--model")
        .arg(&m)
        .args(["--tpr", "0.9", "--device", "cpu", "--threads", "1"])
        .output()
        .unwrap();
    common::check(&out);
    let again = oe::text::calibrate::load(&m, &oe::detect::score::Score::Msp).unwrap();
    assert_eq!(again.threshold, cal.threshold);
    // Without a dev split or a hold-out, calibrate says what to do.
    let t2 = tempfile::tempdir().unwrap();
    dataset(t2.path(), false);
    let m2 = train(t2.path(), None);
    assert!(oe::text::calibrate::load(&m2, &oe::detect::score::Score::Msp).is_err());
    let out = oe_text()
        .arg("calibrate")
        .arg("--model")
        .arg(&m2)
        .args(["--device", "cpu", "--threads", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--holdout"));
}

/// `--tokenizer wordpiece|bpe`: a transformer trained from scratch on a subword vocabulary trained
/// from the training text; its directory holds the vocabulary as `tokenizer.json`, and it evaluates
/// and scores like any other model (batch-independently, through the binary too).
#[test]
fn subword_tokenizer_models_train_evaluate_and_score() {
    use oe::text::models::TransformerConfig;
    use oe::text::tokenize::hf::{definition, SubwordKind};
    use oe::text::tokenize::TextEncoder;
    tch::set_num_threads(1);
    for kind in [SubwordKind::WordPiece, SubwordKind::Bpe] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        dataset(d, false);
        let small = TrainConfig {
            epochs: 1,
            ..Default::default()
        };
        let model = ModelConfig::Transformer(TransformerConfig {
            layers: 1,
            heads: 2,
            width: 16,
            ff: 16,
            max_len: 12,
            ..Default::default()
        });
        let req = TrainRequest {
            oe_corpus: None,
            vocab_max_size: 80,
            tokenizer: Some(definition(kind)),
            ..common::request(d, &d.join("run"), model, small, 1)
        };
        let out = run_train(&req, &mut Silent).unwrap();
        assert_eq!(out.reports.len(), 1);
        let dir = d.join("run").join("baseline");
        assert!(dir.join("tokenizer.json").is_file(), "{kind:?}");
        assert!(!dir.join("vocab.json").exists(), "{kind:?}");
        let m = LoadedModel::load(&dir, Device::Cpu).unwrap();
        let recorded = m.config.tokenizer.clone().unwrap();
        assert_eq!((recorded.kind, recorded.vocab_size), (kind, 80));
        assert!(matches!(m.vocab, TextEncoder::Subword { .. }));
        assert!(
            m.vocab.len() <= 80 && m.vocab.len() > 20,
            "{}",
            m.vocab.len()
        );
        // Texts longer than the model's 12 tokens are cut; scores do not depend on the batch.
        let texts: Vec<String> = (0..40).map(|i| sentence(i + 77)).collect();
        let opts = ScoreOptions::default();
        let all = oe::text::score::score_texts(&m, &texts, &opts).unwrap();
        for (i, t) in texts.iter().enumerate().step_by(7) {
            let one = oe::text::score::score_texts(&m, std::slice::from_ref(t), &opts).unwrap();
            assert_eq!(
                one[0].score.to_bits(),
                all[i].score.to_bits(),
                "{kind:?} text {i}"
            );
        }
        // The binary scores it from the directory alone.
        let input = d.join("in.txt");
        write(&input, texts.join("\n") + "\n");
        let o = Command::new(env!("CARGO_BIN_EXE_oe-text"))
            .args(["score", "--quiet", "--device", "cpu", "--model"])
            .arg(&dir)
            .arg(&input)
            .output()
            .unwrap();
        common::check(&o);
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 41);
    }
}

#[test]
fn tokenizer_flag_reaches_the_request_and_is_refused_for_minilm() {
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        t: oe::cli::text::TrainArgs,
    }
    let p = P::try_parse_from([
        "x",
        "--in",
        "sst",
        "--model",
        "transformer",
        "--tokenizer",
        "bpe",
    ])
    .unwrap();
    let req = p.t.request(Device::Cpu).unwrap();
    let t = req.tokenizer.unwrap();
    assert_eq!(t.kind, oe::text::tokenize::hf::SubwordKind::Bpe);
    let p = P::try_parse_from(["x", "--in", "sst"]).unwrap();
    assert!(p.t.request(Device::Cpu).unwrap().tokenizer.is_none());
    let p = P::try_parse_from([
        "x",
        "--in",
        "sst",
        "--model",
        "minilm",
        "--tokenizer",
        "wordpiece",
    ])
    .unwrap();
    let e = p.t.tokenizer().unwrap_err().to_string();
    assert!(e.contains("MiniLM"), "{e}");
}

/// A copy of the shared model directory in a fresh temporary folder.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("model");
    std::fs::create_dir_all(&m).unwrap();
    for e in std::fs::read_dir(model_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, m.join(p.file_name().unwrap())).unwrap();
        }
    }
    (t, m)
}

#[test]
fn non_finite_scores_are_errors_and_changed_model_files_are_refused() {
    let (t, m) = model_copy();
    let input = t.path().join("in.txt");
    write(&input, "the good movie\nthe bad movie\n");
    let score = |m: &Path| {
        oe_text()
            .arg("score")
            .arg("--model")
            .arg(m)
            .arg(&input)
            .args(["--device", "cpu", "--threshold", "0", "-o"])
            .arg(t.path().join("out.tsv"))
            .output()
            .unwrap()
    };
    common::check(&score(&m));
    // Every file that defines the model has its sha256 recorded next to it.
    for f in ["run.json", "model.safetensors"] {
        let side = std::fs::read_to_string(m.join(format!("{f}.sha256"))).unwrap();
        assert!(side.ends_with(&format!("  {f}\n")), "{side}");
    }
    // A NaN output bias (saved through the library, so its checksum is right): NaN logits must
    // not pass as in-distribution.
    {
        let loaded = LoadedModel::load(&m, Device::Cpu).unwrap();
        let mut nan = 0;
        tch::no_grad(|| {
            for (name, mut v) in loaded.vs.variables() {
                if name.ends_with("bias") && v.size().len() == 1 {
                    let _ = v.fill_(f64::NAN);
                    nan += 1;
                }
            }
        });
        assert!(nan > 0);
        oe::train::save_weights(&loaded.vs, &m.join("model.safetensors")).unwrap();
    }
    let o = score(&m);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("in.txt line 1") && e.contains("not finite"),
        "{e}"
    );
    let st = oe::text::score::score_texts(
        &LoadedModel::load(&m, Device::Cpu).unwrap(),
        &["a text".to_string()],
        &ScoreOptions::default(),
    );
    assert!(st.unwrap_err().to_string().contains("not finite"));
    // A weights file changed after it was written is refused, naming it.
    let (_t2, m2) = model_copy();
    let w = m2.join("model.safetensors");
    let mut b = std::fs::read(&w).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x01;
    std::fs::write(&w, b).unwrap();
    let o = score(&m2);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("model.safetensors") && e.contains("changed or damaged"),
        "{e}"
    );
    // So is an edited run.json.
    let (_t3, m3) = model_copy();
    let r = m3.join("run.json");
    let s = std::fs::read_to_string(&r)
        .unwrap()
        .replacen("\"labels\"", "\"labels\" ", 1);
    std::fs::write(&r, s).unwrap();
    let e = String::from_utf8_lossy(&score(&m3).stderr).into_owned();
    assert!(
        e.contains("run.json") && e.contains("changed or damaged"),
        "{e}"
    );
}

#[test]
fn a_huge_line_is_cut_to_the_longest_training_text() {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("run.json")).unwrap()).unwrap();
    let cap = cfg["max_train_tokens"].as_u64().unwrap() as usize;
    // Generated training rows of up to 24 words plus the label's words.
    assert!((20..=60).contains(&cap), "{cap}");
    let t = tempfile::tempdir().unwrap();
    // A 4 MB line (cut to 1 MiB while reading, then to `cap` tokens) and the same line's first
    // `cap` words on their own: equal scores, and the long one counted as cut.
    let words: Vec<String> = (0..1_100_000).map(|i| format!("w{}", i % 50)).collect();
    let long = words.join(" ");
    assert!(long.len() > 4_000_000);
    let short = words[..cap].join(" ");
    write(&t.path().join("in.txt"), format!("{long}\n{short}\n"));
    let m = load();
    let mut rows = Rows::default();
    let counts = score_stream(
        &m,
        &[t.path().join("in.txt")],
        &InputOptions::default(),
        &ScoreOptions::default(),
        &mut rows,
    )
    .unwrap();
    assert_eq!(rows.0.len(), 2);
    assert_eq!(
        rows.0[0].2, rows.0[1].2,
        "the long line is scored as its first {cap} tokens"
    );
    assert_eq!(counts.counts.truncated_tokens, 1, "{:?}", counts.counts);
}

#[test]
fn directory_links_are_not_followed_by_default_and_pipes_are_inputs() {
    use oe::text::score::input::expand_inputs_with;
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write(&root.join("a/x.txt"), "one\n");
    write(&outside.join("secret.txt"), "two\n");
    symlink("..", root.join("a/up")).unwrap(); // a loop
    symlink(&outside, root.join("out")).unwrap(); // out of the tree
    symlink(outside.join("secret.txt"), root.join("file-link.txt")).unwrap();
    let got = expand_inputs_with(std::slice::from_ref(&root), false).unwrap();
    assert_eq!(got, vec![root.join("a/x.txt"), root.join("file-link.txt")]);
    // Following directory links meets the loop and says so (the old walk scored x.txt 41 times).
    let e = expand_inputs_with(std::slice::from_ref(&root), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("loop"), "{e}");
    // A named pipe given by name (what `<(cmd)` passes) is read like a file.
    let fifo = t.path().join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(&fifo, "the good movie\nthe bad movie\n"))
    };
    let (ok, out, err) = run(&["--format", "tsv"], &[&fifo]);
    writer.join().unwrap().unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "header + 2 rows: {out}");
}
