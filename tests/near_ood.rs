//! Near-OOD: CLINC150 built in (real data from `../shared/data`, skipped when absent), tuning on
//! validation data without touching test data, every stored detector through `eval`, the
//! operating point, `report --format near-ood`, and `--ood NAME=PATH` / `--text-column` /
//! `--label-column` through the CLI (generated data).

use crate::common;

use oe::detect::feature::SETTINGS_FILE;
use oe::detect::{Detector, FeatureDetector, FeatureSource};
use oe::eval::{EvalConfig, Protocol};
use oe::text::data;
use oe::text::model_dir::LoadedModel;
use oe::text::models::{GruConfig, ModelConfig};
use oe::text::pipeline::{evaluate_model_with, load_validation, run_train};
use oe::text::train::TrainConfig;
use oe::text::tune::{run_tune, TuneRequest, TuningRecord, TUNING_FILE};
use oe::train::Silent;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Device;

fn shared_data() -> Option<PathBuf> {
    let root = std::env::var_os("OE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if root.join("clinc150/data_full.json").is_file() {
        Some(root)
    } else {
        eprintln!("skipped: {} has no clinc150/data_full.json", root.display());
        None
    }
}

#[test]
fn clinc150_loads_every_split_with_the_manifest_counts() {
    let Some(root) = shared_data() else { return };
    let ind = data::load_in_distribution("clinc150", &root, &Default::default()).unwrap();
    assert_eq!(ind.train.len(), 15_000);
    assert_eq!(ind.dev.as_ref().map(|d| d.len()), Some(3_000));
    assert_eq!(ind.test.len(), 4_500);
    let labels = ind.label_vocab();
    assert_eq!(labels.len(), 150);
    for l in labels.names() {
        let n = ind.train.labels.iter().filter(|x| *x == l).count();
        assert_eq!(n, 100, "{l}");
        assert_ne!(l, "oos");
    }
    let oos = data::load_ood("clinc150-oos", &root, &Default::default()).unwrap();
    assert_eq!(
        (oos.name.as_str(), oos.texts.len()),
        ("clinc150-oos", 1_000)
    );
    let val = data::load_ood("clinc150-oos-val", &root, &Default::default()).unwrap();
    assert_eq!(val.texts.len(), 100);
    // The three out-of-scope splits are disjoint from each other and from the in-scope test set.
    let oe = data::load_oe_corpus("clinc150-oos-train", &root).unwrap();
    assert_eq!(oe.len(), 100);
    assert!(val.texts.iter().all(|t| !ind.test.texts.contains(t)));
    // Defaults: clinc150's own near-OOD test set; its validation set is never a default test set.
    assert_eq!(data::default_ood_sets("clinc150", &root), ["clinc150-oos"]);
    assert!(!data::default_ood_sets("sst", &root).contains(&"clinc150-oos".to_string()));
    assert_eq!(
        data::validation_ood_for("clinc150"),
        Some("clinc150-oos-val")
    );
    // One file for the dataset and its OE corpus, recorded once.
    let files = data::training_files("clinc150", &root, Some("clinc150-oos-train")).unwrap();
    assert_eq!(files, [root.join("clinc150/data_full.json")]);
    // `NAME=SPEC` renames a built-in set too.
    let short = data::load_ood("near=clinc150-oos", &root, &Default::default()).unwrap();
    assert_eq!((short.name.as_str(), short.texts.len()), ("near", 1_000));
}

#[test]
fn clinc150_json_errors_name_the_split_and_entry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("clinc150");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |body: &str| std::fs::write(dir.join("data_full.json"), body).unwrap();
    let all = |train: &str| {
        format!(
            r#"{{"train": {train}, "val": [["a b", "x"]], "test": [["c d", "x"]],
               "oos_train": [["e", "oos"]], "oos_val": [["f", "oos"]], "oos_test": [["g", "oos"]]}}"#
        )
    };
    let err = |body: String| {
        write(&body);
        data::load_in_distribution("clinc150", t.path(), &Default::default())
            .unwrap_err()
            .to_string()
    };
    let e = err(all(r#"[["hi", "x"], ["there", "oos"]]"#));
    assert!(e.contains("`train` entry 2") && e.contains("`oos`"), "{e}");
    let e = err(all(r#"[["hi", "x"], ["there"]]"#));
    assert!(
        e.contains("`train` entry 2 is not a [text, intent] pair"),
        "{e}"
    );
    let e = err(r#"{"train": []}"#.into());
    assert!(e.contains("key `val`"), "{e}");
    let e = err("{not json".into());
    assert!(e.contains("invalid JSON"), "{e}");
}

/// A 3-intent dataset with a dev split, an OE file, a test OOD file and a validation OOD file.
fn dataset(d: &Path) {
    let rows = |n: usize, off: usize| -> Vec<(String, &str)> {
        (off..off + n)
            .map(|i| {
                let (w, l) = match i % 3 {
                    0 => ("book a table tonight", "restaurant"),
                    1 => ("what is my balance", "bank"),
                    _ => ("play some music now", "music"),
                };
                (format!("{w} {}", common::sentence(i as u64, 3, 4)), l)
            })
            .collect()
    };
    common::write_splits(
        d,
        &[
            ("train", rows(120, 0)),
            ("dev", rows(30, 300)),
            ("test", rows(45, 600)),
        ],
    );
    common::write_lines(&d.join("oe.txt"), 40, |i| {
        format!(
            "river castle history war {}",
            common::sentence(i as u64, 9, 3)
        )
    });
    common::write_lines(&d.join("ood.txt"), 40, |i| {
        format!("how tall is the mountain {}", i % 11)
    });
    common::write_lines(&d.join("val-ood.txt"), 20, |i| {
        format!("who wrote the novel {}", i % 7)
    });
}

fn train(d: &Path, out: &Path) -> PathBuf {
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 16,
        oe_batch_size: 16,
        ..Default::default()
    };
    let mut req = common::request(d, out, ModelConfig::Gru(GruConfig::default()), cfg, 1);
    req.evaluate = false;
    run_train(&req, &mut Silent).unwrap();
    out.join("oe")
}

fn tune(dir: &Path, d: &Path) -> TuningRecord {
    run_tune(&TuneRequest {
        model_dir: dir.to_path_buf(),
        data_root: Some(d.to_path_buf()),
        val_ood: Some(format!("val={}", d.join("val-ood.txt").display())),
        detectors: vec![],
        device: Device::Cpu,
    })
    .unwrap()
    .record
}

#[test]
fn tuning_reads_validation_data_only_and_eval_uses_its_choice() {
    tch::set_num_threads(1);
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    dataset(&d);
    let dir = train(&d, &t.path().join("run"));
    // The test OOD set does not exist while tuning: nothing can read it.
    let ood_test = d.join("ood.txt");
    let kept = std::fs::read(&ood_test).unwrap();
    std::fs::remove_file(&ood_test).unwrap();
    let first = tune(&dir, &d);
    // Every detector has its grid; the chosen setting is the best validation AUROC of its grid.
    for det in FeatureDetector::all() {
        let cands: Vec<_> = first
            .candidates
            .iter()
            .filter(|c| c.detector == det)
            .collect();
        assert!(!cands.is_empty(), "{det:?}");
        let best = cands.iter().map(|c| c.val_auroc).fold(f64::MIN, f64::max);
        let chosen = first.chosen.iter().find(|c| c.detector == det).unwrap();
        assert_eq!(chosen.val_auroc, best, "{det:?}");
        assert!((0.0..=1.0).contains(&best));
    }
    assert_eq!(first.val_ood, "val");
    assert_eq!((first.n_val_in, first.n_val_ood), (30, 20));
    // A GRU has one feature source; k never exceeds the 120 training texts.
    assert!(first
        .candidates
        .iter()
        .all(|c| !c.params.contains("layer") && !c.params.contains("k=200")));
    assert!(first
        .data_files
        .iter()
        .any(|f| f.path.ends_with("val-ood.txt")));
    assert!(!first
        .data_files
        .iter()
        .any(|f| f.path.ends_with("ood.txt") && !f.path.ends_with("val-ood.txt")));
    // Replacing the in-distribution test split changes nothing: tuning never uses test data.
    let test = d.join("test.csv");
    let original_test = std::fs::read(&test).unwrap();
    std::fs::write(
        &test,
        "text,label\n\"play some music now loud\",music\n\"what is my balance today\",bank\n\"book a table tonight please\",restaurant\n",
    )
    .unwrap();
    let second = tune(&dir, &d);
    assert_eq!(first.candidates, second.candidates);
    std::fs::write(&test, original_test).unwrap();
    std::fs::write(&ood_test, kept).unwrap();

    // The model directory holds the tuned settings; a fresh load scores with them.
    let det_dir = dir.join("detectors");
    assert!(det_dir.join(TUNING_FILE).is_file() && det_dir.join(SETTINGS_FILE).is_file());
    let m = LoadedModel::load(&dir, Device::Cpu).unwrap();
    let s = m.detector_settings();
    assert!(s.tuned.is_some());
    let knn = first
        .chosen
        .iter()
        .find(|c| c.detector == FeatureDetector::Knn)
        .unwrap();
    assert_eq!(knn.params, s.describe(FeatureDetector::Knn));
    assert_eq!(m.detectors.as_ref().unwrap().knn.cfg.k, s.knn_k);
    let odin = first
        .chosen
        .iter()
        .find(|c| c.detector == FeatureDetector::Odin)
        .unwrap();
    assert_eq!(odin.params, format!("temperature={}", s.odin_temperature));

    // Every stored detector evaluates (full protocol), with the operating point from validation.
    let ind =
        data::load_in_distribution(&d.display().to_string(), &d, &Default::default()).unwrap();
    let ood = oe::text::pipeline::load_ood_inputs(
        Some(&[format!("test={}", ood_test.display())]),
        &ind.name,
        &d,
        &Default::default(),
    )
    .unwrap();
    let val_name = format!("val={}", d.join("val-ood.txt").display());
    let val = load_validation(Some(&val_name), &ind, &d, &Default::default())
        .unwrap()
        .unwrap();
    let evaluate = |det: FeatureDetector| {
        let cfg = EvalConfig {
            protocol: Protocol::Full,
            detector: Detector::Feature(det),
            repeats: 1,
            tpr: 0.95,
            val_ood: Some(val_name.clone()),
            ..Default::default()
        };
        evaluate_model_with(
            &m,
            &ind.test,
            &ood,
            &cfg,
            m.config.method_label(),
            Some(&val),
        )
        .unwrap()
    };
    for det in FeatureDetector::all() {
        let (r, out) = evaluate(det);
        assert_eq!(r.sets[0].ood_set, "test");
        assert_eq!(r.sets[0].n_ood, 40, "full: every OOD text");
        assert!(r.sets[0].auroc.mean.is_finite() && r.sets[0].aupr_in.mean > 0.0);
        let op = r.operating_point.as_ref().unwrap();
        assert_eq!(
            (op.val_ood_set.as_str(), op.n_val_in, op.n_val_ood),
            ("val", 30, 20)
        );
        assert!((0.0..=1.0).contains(&op.test_in_accuracy));
        assert!(op.test_in_accuracy <= op.test_in_accepted);
        assert!(op.test_in_accuracy <= r.in_accuracy + 1e-12);
        assert_eq!(op.test_ood_recall[0].0, "test");
        assert!(out.join("report.json").is_file(), "{det:?}");
    }
    // `oe-text score` with stored detectors: batch-independent bit for bit, and the evaluation's
    // scores up to float rounding (the evaluation scores whole batches at once).
    let texts: Vec<String> = ind.test.texts.clone();
    for det in [
        FeatureDetector::Rmd,
        FeatureDetector::Knn,
        FeatureDetector::Vim,
        FeatureDetector::React,
    ] {
        let opts = oe::text::score::ScoreOptions {
            stored: Some(det),
            ..Default::default()
        };
        let one = oe::text::score::score_texts(&m, &texts, &opts).unwrap();
        // Each text alone, and the texts in reverse order: the same bits.
        let mut rev = texts.clone();
        rev.reverse();
        let back = oe::text::score::score_texts(&m, &rev, &opts).unwrap();
        for (i, t) in texts.iter().enumerate().step_by(7) {
            let alone = oe::text::score::score_texts(&m, std::slice::from_ref(t), &opts).unwrap();
            assert_eq!(
                alone[0].score.to_bits(),
                one[i].score.to_bits(),
                "{det:?} {i}"
            );
        }
        let diff: Vec<usize> = (0..texts.len())
            .filter(|&i| one[i].score.to_bits() != back[texts.len() - 1 - i].score.to_bits())
            .collect();
        assert!(diff.is_empty(), "{det:?}: {diff:?}");
        // (The same settings as above, so the evaluation directories stay as they were.)
        let (r, _) = evaluate(det);
        for (a, b) in one.iter().zip(&r.in_scores) {
            assert!(
                (f64::from(a.score) - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{det:?}: {} vs {b}",
                a.score
            );
        }
    }
    let input = t.path().join("in.txt");
    std::fs::write(&input, "book a table tonight\nwho wrote the novel\n").unwrap();
    let o = oe_text()
        .args(["score", "--model"])
        .arg(&dir)
        .args(["--score", "rmd", "--threshold", "5", "--device", "cpu"])
        .arg(&input)
        .output()
        .unwrap();
    common::check(&o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        3,
        "header + 2 rows"
    );
    let o = oe_text()
        .args(["score", "--model"])
        .arg(&dir)
        .args(["--score", "rmd", "--threshold", "auto", "--device", "cpu"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--threshold VALUE"));
    // The table over these evaluations.
    let rows = oe::report::near_ood::rows(std::slice::from_ref(&dir), None).unwrap();
    assert_eq!(rows.len(), FeatureDetector::all().len());
    assert!(rows
        .iter()
        .all(|r| r.op_ood_recall.is_some() && r.aupr_in.is_some()));
    let md = oe::report::near_ood::markdown(&rows);
    assert!(md.contains("| gru | oe (oe.txt) | rmd | test |"), "{md}");
}

#[test]
fn pretrained_encoders_offer_every_layer_and_the_layer_average() {
    use oe::text::models::{BertClassifierConfig, BertConfig, TextModel, TokenBatch};
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let cfg = BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        intermediate_size: 32,
        max_position_embeddings: 20,
        ..Default::default()
    };
    let model = TextModel::Pretrained(oe::text::models::BertClassifier::new(
        &vs.root(),
        &cfg,
        &BertClassifierConfig::default(),
        5,
    ));
    let sources = model.feature_sources();
    // Penultimate, layers 0..3 by [CLS] and 0..2 by mean (layer 3's mean is the penultimate), and
    // the two averages.
    assert_eq!(sources.len(), 1 + 4 + 3 + 2);
    assert!(sources.iter().all(|s| model.supports(*s)));
    assert!(!model.supports(FeatureSource::Layer {
        layer: 4,
        pool: oe::detect::Pool::Mean
    }));
    let a: Vec<i64> = vec![2, 5, 7, 9];
    let b: Vec<i64> = vec![3, 4];
    let batch = TokenBatch::left_padded(&[&a, &b], None, Device::Cpu);
    let (f, l) = model.outputs(&batch, &sources);
    assert_eq!(f.size(), [2, sources.len() as i64 * 16]);
    let (pen, logits) = model.features_and_logits(&batch, false);
    let block = |i: usize| f.narrow(1, i as i64 * 16, 16);
    assert!(block(0).allclose(&pen, 1e-6, 1e-6, false));
    assert!(l.allclose(&logits, 1e-6, 1e-6, false));
    let mean = oe::detect::Pool::Mean;
    let idx = |s: FeatureSource| sources.iter().position(|x| *x == s).unwrap();
    let layers: Vec<tch::Tensor> = (1..=2)
        .map(|layer| block(idx(FeatureSource::Layer { layer, pool: mean })))
        .chain([pen.shallow_clone()])
        .collect();
    let avg = tch::Tensor::stack(&layers, 0).mean_dim([0i64].as_slice(), false, tch::Kind::Float);
    assert!(block(idx(FeatureSource::LayerMean { pool: mean })).allclose(&avg, 1e-5, 1e-5, false));
    // A text's features do not depend on its batch.
    let alone = model
        .outputs(&TokenBatch::left_padded(&[&b], None, Device::Cpu), &sources)
        .0;
    assert!(alone.allclose(&f.narrow(0, 1, 1), 1e-5, 1e-5, false));
    // The GRU has the penultimate features only.
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let gru = ModelConfig::Gru(GruConfig::default())
        .build(&vs.root(), 30, 3)
        .unwrap();
    assert_eq!(gru.feature_sources(), [FeatureSource::Penultimate]);
}

fn oe_text() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oe-text"))
}

#[test]
fn cli_takes_named_columns_and_short_ood_names() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Columns named as real exports name them, in a different order.
    let rows = |n: usize, off: usize| -> String {
        let mut s = String::from("intent,id,utterance\n");
        for i in off..off + n {
            let (w, l) = if i % 2 == 0 {
                ("good fine great", "pos")
            } else {
                ("bad awful poor", "neg")
            };
            s += &format!(
                "{l},{i},\"the {w} movie {}\"\n",
                common::sentence(i as u64, 1, 3)
            );
        }
        s
    };
    std::fs::write(d.join("train.csv"), rows(64, 0)).unwrap();
    std::fs::write(d.join("test.csv"), rows(20, 100)).unwrap();
    let long = d.join("a-rather-long-folder-name-for-the-ood-file/with/more/levels");
    std::fs::create_dir_all(&long).unwrap();
    common::write_lines(&long.join("questions.txt"), 30, |i| {
        format!("how far is it {i}")
    });
    let out = d.join("run");
    let run = |extra: &[&str]| {
        let mut c = oe_text();
        c.args(["train", "--in"])
            .arg(d)
            .args([
                "--epochs",
                "1",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--repeats",
                "1",
            ])
            .arg("--out")
            .arg(&out)
            .arg("--ood")
            .arg(format!(
                "questions={}",
                long.join("questions.txt").display()
            ))
            .args(extra);
        c.output().unwrap()
    };
    // Without the column flags: a clear error naming the file and the missing column.
    let o = run(&[]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("train.csv") && e.contains("text"), "{e}");
    let o = run(&["--text-column", "utterance", "--label-column", "intent"]);
    common::check(&o);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("questions ")),
        "{table}"
    );
    assert!(!table.contains("a-rather-long-folder"), "{table}");
    // Recorded in run.json, so the run can be evaluated again from its directory alone.
    let run_json = std::fs::read_to_string(out.join("baseline/run.json")).unwrap();
    assert!(
        run_json.contains("\"text_column\": \"utterance\""),
        "{run_json}"
    );
    let o = oe_text()
        .args(["eval", "--model"])
        .arg(out.join("baseline"))
        .args(["--repeats", "1", "--device", "cpu", "--ood"])
        .arg(format!("q={}", long.join("questions.txt").display()))
        .output()
        .unwrap();
    common::check(&o);
    assert!(String::from_utf8_lossy(&o.stdout)
        .lines()
        .any(|l| l.starts_with("q ")));
}
