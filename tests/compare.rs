//! `oe-text compare` on generated data: the grid is complete, its numbers are the ones a separate,
//! uncached evaluation gives, reruns keep what is trained, and the CLI writes the tables.

use crate::common;

use oe::detect::score::Score;
use oe::detect::{Detector, FeatureDetector};
use oe::eval::EvalConfig;
use oe::loss::OeLoss;
use oe::text::compare::{run_compare, ModelRuns};
use oe::text::model_dir::LoadedModel;
use oe::text::models::{GruConfig, ModelConfig};
use oe::text::pipeline::{evaluate_model, load_ood_inputs, TrainRequest};
use oe::text::train::TrainConfig;
use oe::train::Silent;
use std::path::Path;
use std::process::Command;
use tch::Device;

fn dataset(d: &Path) {
    let rows = |n: usize, off: usize| -> Vec<(String, &str)> {
        (off..off + n)
            .map(|i| {
                let (w, l) = if i % 2 == 0 {
                    ("good fine great", "pos")
                } else {
                    ("bad awful poor", "neg")
                };
                (format!("the {w} movie {} was {}", i % 7, i % 5), l)
            })
            .collect()
    };
    common::write_splits(d, &[("train", rows(96, 0)), ("test", rows(40, 500))]);
    common::write_lines(&d.join("oe.txt"), 60, |i| {
        format!("river castle history war {i}")
    });
    common::write_lines(&d.join("ood.txt"), 60, |i| {
        format!("what is the question number {} ?", i % 9)
    });
}

fn request(d: &Path, out: &Path, oe_loss: OeLoss) -> TrainRequest {
    let train = TrainConfig {
        epochs: 1,
        batch_size: 32,
        oe_batch_size: 32,
        oe_loss,
        ..Default::default()
    };
    common::request(d, out, ModelConfig::Gru(GruConfig::default()), train, 2)
}

#[test]
fn grid_is_complete_and_matches_uncached_evaluation() {
    tch::set_num_threads(1);
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    dataset(d);
    let out = d.join("grid");
    let runs = vec![ModelRuns {
        name: "gru".into(),
        oe: request(d, &out.join("gru"), OeLoss::text_default()),
        energy_oe: Some(request(
            d,
            &out.join("gru"),
            OeLoss::Energy {
                lambda: 0.1,
                m_in: -25.0,
                m_out: -7.0,
                temperature: 1.0,
            },
        )),
    }];
    let detectors = vec![
        Detector::Logit(Score::Msp),
        Detector::Logit(Score::Energy { temperature: 1.0 }),
        Detector::Feature(FeatureDetector::Knn),
    ];
    let res = run_compare(&runs, &detectors, &out, false, &mut Silent).unwrap();
    // 3 trainings x 3 detectors x (1 set + mean).
    assert_eq!(res.rows.len(), 18);
    for training in ["baseline", "oe", "energy-oe"] {
        for det in ["msp", "energy", "knn"] {
            let n = res
                .rows
                .iter()
                .filter(|r| r.training == training && r.detector == det)
                .count();
            assert_eq!(n, 2, "{training} {det}");
            assert!(out
                .join("gru")
                .join(training)
                .join(format!("eval-{det}-paper"))
                .join("results.parquet")
                .is_file());
        }
    }
    let csv = std::fs::read_to_string(&res.csv).unwrap();
    assert_eq!(csv.lines().count(), 19);
    let md = std::fs::read_to_string(&res.markdown).unwrap();
    assert_eq!(md.lines().filter(|l| l.starts_with("| gru |")).count(), 9);
    // The energy-bounded run fine-tuned the same baseline (one baseline directory, two OE ones).
    let run_e: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("gru/energy-oe/run.json")).unwrap())
            .unwrap();
    assert_eq!(run_e["train"]["oe_loss"]["type"], "energy");
    assert_eq!(run_e["init_from"], "../baseline");
    assert!(out.join("gru/timings.json").is_file());
    assert!(out.join("gru/timings-energy-oe.json").is_file());

    // Every cell equals a fresh evaluation (new model load, nothing cached).
    let req = &runs[0].oe;
    let ind =
        oe::text::data::load_in_distribution(&req.in_dataset, &req.data_root, &req.text).unwrap();
    let ood = load_ood_inputs(
        req.ood_sets.as_deref(),
        &req.in_dataset,
        &req.data_root,
        &req.text,
    )
    .unwrap();
    for (training, det) in [
        ("oe", Detector::Logit(Score::Energy { temperature: 1.0 })),
        ("energy-oe", Detector::Feature(FeatureDetector::Knn)),
        ("baseline", Detector::Logit(Score::Msp)),
    ] {
        let m = LoadedModel::load(&out.join("gru").join(training), Device::Cpu).unwrap();
        let cfg = EvalConfig {
            detector: det,
            ..req.eval.clone()
        };
        let (r, _) = evaluate_model(&m, &ind.test, &ood, &cfg, m.config.method_label()).unwrap();
        assert_eq!(m.config.method_label().name(), training);
        let cell = res
            .rows
            .iter()
            .find(|x| x.training == training && x.detector == det.name() && x.ood_set != "mean")
            .unwrap();
        assert_eq!(cell.fpr, r.sets[0].fpr.mean, "{training} {}", det.name());
        assert_eq!(
            cell.auroc,
            r.sets[0].auroc.mean,
            "{training} {}",
            det.name()
        );
        assert_eq!(cell.aupr_out, r.sets[0].aupr_out.mean);
        assert_eq!(cell.in_accuracy, r.in_accuracy);
    }

    // A rerun keeps the trained models (resume) and reproduces the table exactly.
    let before = std::fs::metadata(out.join("gru/baseline/model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    let again = run_compare(&runs, &detectors, &out, false, &mut Silent).unwrap();
    let after = std::fs::metadata(out.join("gru/baseline/model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(again.table, res.table);
}

#[test]
fn cli_compare_needs_an_outlier_corpus_and_names_bad_detectors() {
    let bin = env!("CARGO_BIN_EXE_oe-text");
    let t = tempfile::tempdir().unwrap();
    dataset(t.path());
    let out = Command::new(bin)
        .args(["compare", "--in"])
        .arg(t.path())
        .args(["--models", "gru", "--data-dir"])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--oe"), "{err}");
    let out = Command::new(bin)
        .args([
            "compare",
            "--in",
            "x",
            "--oe",
            "y",
            "--detectors",
            "msp,nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
    let out = Command::new(bin)
        .args(["compare", "--in", "x", "--oe", "y", "--model", "gru"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--models"), "{err}");
}

/// `oe-text compare` with the GRU on the generated dataset in `d` (1 + 1 epochs, 1 draw, one CPU
/// thread, quiet, into `d/grid`), plus `extra` flags.
fn compare_cli(d: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oe-text"))
        .args([
            "compare",
            "--models",
            "gru",
            "--epochs",
            "1",
            "--oe-epochs",
            "1",
        ])
        .args([
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quiet",
        ])
        .args(extra)
        .arg("--in")
        .arg(d)
        .arg("--oe")
        .arg(d.join("oe.txt"))
        .arg("--ood")
        .arg(d.join("ood.txt"))
        .arg("--data-dir")
        .arg(d)
        .arg("--out")
        .arg(d.join("grid"))
        .output()
        .unwrap()
}

#[test]
fn cli_compare_writes_the_grid() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    dataset(d);
    let out = compare_cli(d, &["--detectors", "msp,mahalanobis", "--no-energy-oe"]);
    common::check(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| gru | baseline | msp |"), "{stdout}");
    assert!(stdout.contains("| gru | oe | mahalanobis |"), "{stdout}");
    assert!(d.join("grid/compare.csv").is_file());
    assert!(d.join("grid/gru/oe/detectors").is_dir());
}

#[test]
fn cli_compare_with_oe_from_scratch_has_no_baseline_rows() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    dataset(d);
    let out = compare_cli(d, &["--detectors", "msp", "--oe-method", "scratch"]);
    common::check(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| gru | oe | msp |"), "{stdout}");
    assert!(stdout.contains("| gru | energy-oe | msp |"), "{stdout}");
    assert!(!stdout.contains("| gru | baseline |"), "{stdout}");
    assert!(!d.join("grid/gru/baseline").exists());
}
