//! Integration tests of the text pipeline: the paper's released weights against independent logits,
//! seeded determinism, checkpoint/resume, and the `oe-text` binary end to end on generated data.

use crate::common;

use oe::text::data::TextOptions;
use oe::text::model_dir::LoadedModel;
use oe::text::models::{GruConfig, ModelConfig, TokenBatch, TransformerConfig};
use oe::text::pipeline::import_weights;
use oe::text::protocol::Scorer;
use oe::text::train::{self as ttrain, EncodedSet, TrainConfig};
use oe::train::{self, CheckpointState, Method};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{nn, Device, Tensor};

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("data").is_dir() && p.join("reference-models").is_dir() {
        Some(p)
    } else {
        eprintln!("skipped: ../shared/data or ../shared/reference-models not present");
        None
    }
}

fn read_logits(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// SST sentences (binary, neutral dropped) the way the fixture's author read the trees: only
/// single-token leaves `(label token)`. Nodes such as `(2 2 1\/2)` (two leaves under one label, which
/// nltk and torchtext read as two tokens) are dropped. Used only to reproduce the fixture.
fn sst_fixture_style(path: &Path) -> (Vec<String>, Vec<String>) {
    let leaf = regex::Regex::new(r"\(\d ([^()\s]+)\)").unwrap();
    let (mut texts, mut labels) = (vec![], vec![]);
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let y = line.as_bytes()[1];
        if y == b'2' {
            continue;
        }
        let toks: Vec<&str> = leaf
            .captures_iter(line)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        texts.push(toks.join(" "));
        labels.push(if y > b'2' { "positive" } else { "negative" }.to_string());
    }
    (texts, labels)
}

fn max_abs_diff(got: &Tensor, want: &[Vec<f64>]) -> f64 {
    let got = Vec::<Vec<f32>>::try_from(got).unwrap();
    assert_eq!(got.len(), want.len());
    let mut d = 0f64;
    for (g, w) in got.iter().zip(want) {
        for (a, b) in g.iter().zip(w) {
            d = d.max((*a as f64 - b).abs());
        }
    }
    d
}

fn accuracy(logits: &Tensor, labels: &[i64]) -> f64 {
    let pred = Vec::<i64>::try_from(&logits.argmax(-1, false)).unwrap();
    pred.iter().zip(labels).filter(|(p, y)| p == y).count() as f64 / labels.len() as f64
}

/// The released GRU weights with our GRU reproduce per-example test logits computed by an independent
/// PyTorch implementation (each example alone, no padding).
///
/// TREC: our vocabulary and labels reproduce the fixture directly. SST: the fixture's vocabulary
/// was built from trees read with single-token leaves only; with that reading our GRU matches it to
/// 1e-4. Our SST parser follows nltk/torchtext (as the reference did), and with *its* vocabulary the
/// released baseline is more accurate (79.3% vs the fixture's 75.5%; checked in numpy as well),
/// which is the evidence that ours is the vocabulary the weights were trained with.
#[test]
fn released_weights_reproduce_independent_logits() {
    let Some(shared) = shared() else { return };
    let data = shared.join("data");
    for (ds, stem, fixture_acc) in [
        ("trec", "trec-baseline", 0.770),
        ("trec", "trec-oe-wikitext2-finetune", 0.706),
        ("sst", "sst-baseline", 0.755),
        ("sst", "sst-oe-wikitext2-finetune", 0.738),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let weights = shared.join(format!("reference-models/{stem}.safetensors"));
        let method = if stem.contains("-oe-") {
            oe::train::MethodLabel::Oe
        } else {
            oe::train::MethodLabel::Baseline
        };
        let (m, ind) = import_weights(
            &weights,
            ds,
            &data,
            &TextOptions::default(),
            method,
            dir.path(),
            Device::Cpu,
        )
        .unwrap();
        let want =
            read_logits(&shared.join(format!("reference-models/logits/{stem}.test-logits.csv")));
        let labels = m
            .labels
            .indices(ind.test.labels.iter().map(String::as_str))
            .unwrap();
        let ids: Vec<Vec<i64>> = ind.test.texts.iter().map(|t| m.vocab.encode(t)).collect();
        // Batched by exact length = each example computed without padding, as the fixture.
        let ours = m.scorer().logits_bucketed(&ids, 128, None);
        let acc = accuracy(&ours, &labels);
        if ds == "trec" {
            let d = max_abs_diff(&ours, &want);
            assert!(d < 1e-4, "{stem}: max |logit difference| = {d}");
            // The README of the fixtures states 77.0% / 70.6%; the fixture logits themselves give
            // 76.8% / 70.8% against TREC_10 labels (checked with numpy), and so do we.
            let fixture_logits = Tensor::from_slice(&want.concat()).view([want.len() as i64, -1]);
            let from_fixture = accuracy(&fixture_logits, &labels);
            assert_eq!(
                acc, from_fixture,
                "{stem}: accuracy {acc} vs the fixture's {from_fixture}"
            );
            let _ = fixture_acc;
            eprintln!("{stem}: max |Δlogit| {d:.2e}, accuracy {:.1}%", acc * 100.0);
        } else {
            let (train_t, _) = sst_fixture_style(&data.join("sst/trees/train.txt"));
            let (test_t, test_l) = sst_fixture_style(&data.join("sst/trees/test.txt"));
            let vocab =
                oe::text::tokenize::WordVocab::build(train_t.iter().map(String::as_str), 10_000);
            assert_eq!(vocab.len(), 10_002);
            let fids: Vec<Vec<i64>> = test_t.iter().map(|t| vocab.encode(t)).collect();
            let fixture_style = m.scorer().logits_bucketed(&fids, 128, None);
            let d = max_abs_diff(&fixture_style, &want);
            assert!(d < 1e-4, "{stem}: max |logit difference| = {d}");
            let flabels = m.labels.indices(test_l.iter().map(String::as_str)).unwrap();
            let facc = accuracy(&fixture_style, &flabels);
            let fixture_logits = Tensor::from_slice(&want.concat()).view([want.len() as i64, -1]);
            assert_eq!(facc, accuracy(&fixture_logits, &flabels), "{stem}");
            let _ = fixture_acc;
            assert!(
                acc > facc + 0.02,
                "{stem}: nltk-style vocabulary {acc} vs fixture-style {facc}"
            );
            eprintln!(
                "{stem}: fixture-style max |Δlogit| {d:.2e}, accuracy {:.1}%; our vocabulary {:.1}%",
                facc * 100.0,
                acc * 100.0
            );
        }
    }
}

fn toy_set(n: usize, seed: u64) -> EncodedSet {
    // Class 0 uses tokens 2..20, class 1 tokens 20..38; lengths 3..10.
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut x = seed;
    for i in 0..n {
        let y = (i % 2) as i64;
        let len = 3 + (i * 7 % 8);
        let seq = (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                2 + 18 * y + ((x >> 33) % 18) as i64
            })
            .collect();
        ids.push(seq);
        labels.push(y);
    }
    EncodedSet {
        ids,
        labels,
        fix_len: None,
    }
}

fn train_toy(cfg: &TrainConfig, method: Method, oe: Option<&[Vec<i64>]>) -> nn::VarStore {
    train::seed_everything(cfg.seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ModelConfig::Gru(GruConfig::default())
        .build(&vs.root(), 40, 2)
        .unwrap();
    let set = toy_set(96, 5);
    ttrain::train_phase(
        "t",
        method,
        &model,
        &vs,
        &set,
        oe,
        cfg,
        CheckpointState::default(),
        None,
        &mut train::Silent,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    vs
}

fn max_weight_diff(a: &nn::VarStore, b: &nn::VarStore) -> f64 {
    let va = a.variables();
    let vb = b.variables();
    va.iter()
        .map(|(k, t)| (t - &vb[k]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// Tests share libtorch's global RNG across threads; this lock keeps seeded runs apart.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn same_seed_same_model_on_cpu() {
    let _g = SEEDED.lock().unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 16,
        ..Default::default()
    };
    let oe: Vec<Vec<i64>> = toy_set(64, 9)
        .ids
        .into_iter()
        .map(|s| s.iter().map(|t| t + 1).collect())
        .collect();
    let a = train_toy(&cfg, Method::OeScratch, Some(&oe));
    let b = train_toy(&cfg, Method::OeScratch, Some(&oe));
    assert_eq!(
        max_weight_diff(&a, &b),
        0.0,
        "same seed gave different weights"
    );
    let c = train_toy(
        &TrainConfig { seed: 2, ..cfg },
        Method::OeScratch,
        Some(&oe),
    );
    assert!(
        max_weight_diff(&a, &c) > 1e-4,
        "a different seed should give a different model"
    );
}

#[test]
fn training_learns_a_separable_toy_task() {
    let _g = SEEDED.lock().unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 16,
        ..Default::default()
    };
    let vs = train_toy(&cfg, Method::Baseline, None);
    let model = ModelConfig::Gru(GruConfig::default()).build(&(vs.root() / "x"), 40, 2);
    drop(model);
    // Re-create over the same variables to score the training set.
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let m2 = ModelConfig::Gru(GruConfig::default())
        .build(&vs2.root(), 40, 2)
        .unwrap();
    vs2.copy(&vs).unwrap();
    let set = toy_set(96, 5);
    let seqs: Vec<&[i64]> = set.ids.iter().map(|s| s.as_slice()).collect();
    let logits = m2.logits(&TokenBatch::left_padded(&seqs, None, Device::Cpu), false);
    let pred = Vec::<i64>::try_from(&logits.argmax(-1, false)).unwrap();
    let acc = pred.iter().zip(&set.labels).filter(|(p, y)| p == y).count() as f64 / 96.0;
    assert!(acc > 0.9, "training accuracy {acc}");
}

#[test]
fn interrupted_training_resumes_exactly_and_partial_files_never_load() {
    let _g = SEEDED.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoint.safetensors");
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 16,
        ..Default::default()
    };
    let set = toy_set(64, 3);
    // The transformer has dropout, so this also checks that the dropout stream resumes.
    let model_cfg = ModelConfig::Transformer(TransformerConfig {
        layers: 1,
        heads: 2,
        width: 16,
        ff: 32,
        dropout: 0.1,
        max_len: 64,
        pooling: Default::default(),
        row_head: true,
    });
    let build = |vs: &nn::VarStore| model_cfg.build(&vs.root(), 40, 2).unwrap();
    let last_state = std::cell::RefCell::new(CheckpointState::default());
    let run_obs = |vs: &nn::VarStore,
                   model: &oe::text::models::TextModel,
                   state: CheckpointState,
                   opt: Option<&std::collections::HashMap<String, tch::Tensor>>,
                   stop_after: Option<usize>,
                   obs: &mut dyn train::Observer| {
        ttrain::train_phase(
            "p",
            Method::Baseline,
            model,
            vs,
            &set,
            None,
            &cfg,
            state,
            opt,
            obs,
            &mut |s, o| {
                train::save_checkpoint(vs, o.state_tensors(), s, &ckpt)?;
                *last_state.borrow_mut() = s.clone();
                if Some(s.epochs_done) == stop_after {
                    Err(oe::OeError::Config("simulated interruption".into()))
                } else {
                    Ok(())
                }
            },
        )
    };
    let run = |vs: &nn::VarStore,
               model: &oe::text::models::TextModel,
               state: CheckpointState,
               opt: Option<&std::collections::HashMap<String, tch::Tensor>>,
               stop_after: Option<usize>| {
        run_obs(vs, model, state, opt, stop_after, &mut train::Silent)
    };
    // Reference: three epochs without interruption.
    train::seed_everything(1);
    let vs_ref = nn::VarStore::new(Device::Cpu);
    let model_ref = build(&vs_ref);
    let ref_state = run(&vs_ref, &model_ref, CheckpointState::default(), None, None).unwrap();
    // Run 1: "crash" after the first epoch's checkpoint.
    train::seed_everything(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = build(&vs);
    assert!(run(&vs, &model, CheckpointState::default(), None, Some(1)).is_err());
    // Run 2: a new process would rebuild the model, load weights and optimiser state, and finish.
    train::seed_everything(99);
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let model2 = build(&vs2);
    train::load_weights(&mut vs2, &ckpt).unwrap();
    assert_eq!(max_weight_diff(&vs, &vs2), 0.0);
    let tensors = train::read_tensors(&ckpt).unwrap();
    assert_eq!(tensors[train::CHECKPOINT_EPOCHS].int64_value(&[0]), 1);
    let state = CheckpointState {
        phase: "p".into(),
        epochs_done: 1,
        history: vec![],
        partial: None,
    };
    let done = run(&vs2, &model2, state, Some(&tensors), None).unwrap();
    assert_eq!(done.epochs_done, 3);
    assert_eq!(done.history.len(), 2);
    assert_eq!(
        max_weight_diff(&vs_ref, &vs2),
        0.0,
        "a resumed run must end where the uninterrupted one does"
    );
    // Run 3: a stop request (what SIGTERM does) after the 6th step, i.e. in the middle of the second
    // epoch (4 steps per epoch): a mid-epoch checkpoint, then a resume from it in a "new process".
    struct StopAt(usize, usize);
    impl train::Observer for StopAt {
        fn step(&mut self, _: &str, _: usize, _: usize, _: f64, _: f64) {
            self.1 += 1;
            if self.1 == self.0 {
                oe::interrupt::request_in_this_thread();
            }
        }
    }
    train::seed_everything(1);
    let vs4 = nn::VarStore::new(Device::Cpu);
    let model4 = build(&vs4);
    let e = run_obs(
        &vs4,
        &model4,
        CheckpointState::default(),
        None,
        None,
        &mut StopAt(6, 0),
    )
    .unwrap_err();
    oe::interrupt::clear();
    assert!(matches!(e, oe::OeError::Interrupted(_)), "{e}");
    let mid = last_state.borrow().clone();
    assert_eq!((mid.epochs_done, mid.steps_done()), (1, 2), "{mid:?}");
    let json = serde_json::to_string(&mid).unwrap();
    train::seed_everything(99);
    let mut vs5 = nn::VarStore::new(Device::Cpu);
    let model5 = build(&vs5);
    train::load_weights(&mut vs5, &ckpt).unwrap();
    let tensors = train::read_tensors(&ckpt).unwrap();
    let state: CheckpointState = serde_json::from_str(&json).unwrap();
    train::check_checkpoint_progress(&tensors, &state, &ckpt, Path::new("checkpoint.json"))
        .unwrap();
    let done = run(&vs5, &model5, state, Some(&tensors), None).unwrap();
    assert_eq!(
        max_weight_diff(&vs_ref, &vs5),
        0.0,
        "a run resumed mid-epoch must end where the uninterrupted one does"
    );
    assert_eq!(done.history.len(), 3);
    // The interrupted epoch's summary is the uninterrupted one's (its sums were checkpointed).
    assert_eq!(done.history[1].loss, ref_state.history[1].loss);
    assert_eq!(
        done.history[1].train_accuracy,
        ref_state.history[1].train_accuracy
    );
    assert_eq!(done.history[1].steps, 4);
    // A checkpoint.json from another step than the weights is refused.
    let other = CheckpointState {
        partial: None,
        ..mid.clone()
    };
    let e = train::check_checkpoint_progress(&tensors, &other, &ckpt, Path::new("checkpoint.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch 1 step 2") && e.contains("step 0"), "{e}");
    // A truncated weights file is rejected with a clear error.
    let bytes = std::fs::read(&ckpt).unwrap();
    let bad = dir.path().join("model.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let mut vs3 = nn::VarStore::new(Device::Cpu);
    let _m3 = build(&vs3);
    let e = train::load_weights(&mut vs3, &bad).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("cannot load"),
        "{e}"
    );
    // Checkpoints leave no temporary files behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
}

fn write(path: &Path, s: &str) {
    std::fs::write(path, s).unwrap();
}

fn oe_text() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oe-text"))
}

/// The whole `train` command on a tiny generated dataset: baseline, OE fine-tune, evaluation,
/// results on disk, a model directory that `eval` can reload, and `--resume` on a finished run.
#[test]
fn train_and_eval_commands_end_to_end() {
    let _g = SEEDED.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut train_csv = String::from("text,label\n");
    let mut test_csv = String::from("text,label\n");
    for i in 0..120 {
        let (w, l) = if i % 2 == 0 {
            ("good fine great", "pos")
        } else {
            ("bad awful poor", "neg")
        };
        let line = format!("\"the {w} movie {i}\",{l}\n");
        if i < 90 {
            train_csv += &line
        } else {
            test_csv += &line
        }
    }
    write(&d.join("train.csv"), &train_csv);
    write(&d.join("test.csv"), &test_csv);
    let oe: String = (0..200)
        .map(|i| format!("some wiki sentence number {i} about history\n"))
        .collect();
    write(&d.join("oe.txt"), &oe);
    let ood: String = (0..50)
        .map(|i| format!("a question about topic {i} ?\n"))
        .collect();
    write(&d.join("ood.txt"), &ood);
    let run = d.join("run");
    let out = oe_text()
        .args(["train", "--in"])
        .arg(d)
        .args(["--oe"])
        .arg(d.join("oe.txt"))
        .args(["--ood"])
        .arg(d.join("ood.txt"))
        .args([
            "--epochs",
            "2",
            "--oe-epochs",
            "1",
            "--repeats",
            "3",
            "--device",
            "cpu",
            "--quiet",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "train failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ood") && stdout.contains("baseline"),
        "{stdout}"
    );
    for sub in ["baseline", "oe"] {
        for f in [
            "run.json",
            "vocab.json",
            "model.safetensors",
            "train_log.json",
        ] {
            assert!(run.join(sub).join(f).is_file(), "{sub}/{f} missing");
        }
        let res = run.join(sub).join("eval-msp-paper");
        for f in ["results.csv", "results.parquet", "scores.parquet"] {
            assert!(res.join(f).is_file(), "{sub}/eval-msp-paper/{f} missing");
        }
        let csv = std::fs::read_to_string(res.join("results.csv")).unwrap();
        assert!(csv.contains("protocol") && csv.contains("1:5"), "{csv}");
        assert!(!run.join(sub).join("checkpoint.safetensors").exists());
    }
    // Finished runs are not silently overwritten ...
    let again = oe_text()
        .args(["train", "--in"])
        .arg(d)
        .args(["--ood"])
        .arg(d.join("ood.txt"))
        .args(["--epochs", "1", "--quiet", "--device", "cpu", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // --resume with other settings is refused, naming them; with the same ones it trains nothing
    // and keeps the recorded training times (only the evaluation is timed again).
    let timings = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("timings.json")).unwrap()).unwrap()
    };
    let before = timings(&run);
    let resume = |extra: &[&str]| {
        oe_text()
            .args(["train", "--in"])
            .arg(d)
            .args(["--oe"])
            .arg(d.join("oe.txt"))
            .args(["--ood"])
            .arg(d.join("ood.txt"))
            .args(["--epochs", "2", "--oe-epochs", "1", "--repeats", "3"])
            .args(extra)
            .args(["--device", "cpu", "--quiet", "--resume", "--out"])
            .arg(&run)
            .output()
            .unwrap()
    };
    let changed = resume(&["--seed", "2"]);
    let e = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success());
    assert!(
        e.contains("other settings") && e.contains("train.seed 1 → 2"),
        "{e}"
    );
    common::check(&resume(&[]));
    let after = timings(&run);
    let phase = |v: &serde_json::Value, name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|t| t["phase"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    for p in ["baseline training", "oe-finetune"] {
        assert_eq!(
            phase(&before, p),
            phase(&after, p),
            "{p}: kept, not re-timed"
        );
    }
    assert_eq!(
        after.as_array().unwrap().len(),
        before.as_array().unwrap().len()
    );
    // A typo in --ood fails before anything is trained.
    let typo = oe_text()
        .args(["train", "--in"])
        .arg(d)
        .args([
            "--ood", "snil", "--epochs", "1", "--device", "cpu", "--quiet", "--out",
        ])
        .arg(d.join("typo-run"))
        .output()
        .unwrap();
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("unknown OOD set `snil`"));
    assert!(
        !d.join("typo-run").exists(),
        "nothing written for a run that could not start"
    );
    // ... and the model directory is self-contained for `eval`, here with the clean protocol.
    let ev = oe_text()
        .args(["eval", "--model"])
        .arg(run.join("oe"))
        .args(["--ood"])
        .arg(d.join("ood.txt"))
        .args([
            "--protocol",
            "clean",
            "--score",
            "energy",
            "--repeats",
            "2",
            "--device",
            "cpu",
            "--data-dir",
        ])
        .arg(d)
        .output()
        .unwrap();
    common::check(&ev);
    assert!(run.join("oe/eval-energy-clean/results.parquet").is_file());
    // Feature-space detectors were fitted on the training set at training time and are reused.
    assert!(run.join("oe/detectors").is_dir());
    let ev = oe_text()
        .args(["eval", "--model"])
        .arg(run.join("baseline"))
        .args(["--ood"])
        .arg(d.join("ood.txt"))
        .args([
            "--detector",
            "knn",
            "--repeats",
            "2",
            "--device",
            "cpu",
            "--data-dir",
        ])
        .arg(d)
        .output()
        .unwrap();
    common::check(&ev);
    let csv = std::fs::read_to_string(run.join("baseline/eval-knn-paper/results.csv")).unwrap();
    assert!(csv.contains(",knn,"), "{csv}");
}

#[test]
fn metrics_command_reports_bad_input_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("in.txt");
    let b = dir.path().join("out.txt");
    write(&a, "0.1\n0.2\n0.3\n");
    write(&b, "0.9\nfoo\n");
    let out = oe_text()
        .args(["metrics", "--in"])
        .arg(&a)
        .args(["--out"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("out.txt:2:") && err.contains("not a number"),
        "{err}"
    );
    write(&b, "0.9\n0.8\n");
    let out = oe_text()
        .args(["metrics", "--format", "json", "--in"])
        .arg(&a)
        .args(["--out"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["auroc"], 1.0);
    assert_eq!(v["fpr90_closest_out"], 0.0);
    assert_eq!(v["positive"], "out");
}

#[test]
fn binary_runs_with_an_empty_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_oe-text"))
        .env_clear()
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_oe-vision"))
        .env_clear()
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[allow(dead_code)]
fn _unused(_: Tensor, _: Scorer, _: LoadedModel) {}

#[test]
fn model_directories_evaluate_from_anywhere_old_relative_paths_included() {
    let _g = SEEDED.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("ds");
    std::fs::create_dir_all(&ds).unwrap();
    let row = |i: u64| common::sentence(i, 99, 8);
    write(&ds.join("train.csv"), &common::labelled_csv(60, 0, row));
    write(&ds.join("test.csv"), &common::labelled_csv(20, 500, row));
    write(&ds.join("oe.txt"), "some outlier sentence\nanother one\n");
    write(
        &ds.join("ood.txt"),
        "a question about topic ?\nwhat is this ?\n",
    );
    let run = t.path().join("run");
    let req = oe::text::pipeline::TrainRequest {
        oe_corpus: None,
        ..common::request(
            &ds,
            &run,
            ModelConfig::Gru(Default::default()),
            TrainConfig {
                epochs: 1,
                ..Default::default()
            },
            1,
        )
    };
    oe::text::pipeline::run_train(&req, &mut oe::train::Silent).unwrap();
    let m = run.join("baseline");
    let eval_from = |cwd: &Path| {
        oe_text()
            .current_dir(cwd)
            .args(["eval", "--model"])
            .arg(&m)
            .args(["--ood"])
            .arg(ds.join("ood.txt"))
            .args(["--repeats", "1", "--device", "cpu"])
            .env_remove("OE_DATA_DIR")
            .output()
            .unwrap()
    };
    // Recorded absolute: no --data-dir needed, from any working directory.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.join("run.json")).unwrap()).unwrap();
    assert!(Path::new(cfg["in_dataset"].as_str().unwrap()).is_absolute());
    common::check(&eval_from(Path::new("/")));
    // A directory from before: relative paths (to the run directory here) and no checksums.
    let mut old = cfg.clone();
    old["in_dataset"] = "../../ds".into();
    old["data_root"] = "../../ds".into();
    std::fs::write(m.join("run.json"), serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    std::fs::remove_file(m.join("run.json.sha256")).unwrap();
    common::check(&eval_from(Path::new("/")));
}

/// The CPU features libtorch picks its kernels by (a different set can give other float rounding).
fn kernel_features() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let wanted = [
        "fma",
        "avx2",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_bf16",
        "avx512_vnni",
        "amx_bf16",
        "amx_tile",
    ];
    wanted
        .iter()
        .filter(|w| flags.contains(w))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU training of a commit gives the same weights in a debug and a release build (and in every
/// process), at a given libtorch thread count. The hashes below were printed by this test run
/// against the release binary (`OE_TEXT_BIN=target/release/oe-text cargo test ... identical`)
/// and are checked here by the debug build's. libtorch's kernels depend on the CPU's features and
/// its reductions on the thread count, so the pin holds for this feature set and one thread; on
/// another CPU the test says so and only checks that two runs agree.
#[test]
fn cpu_training_is_identical_across_builds_and_processes() {
    const PINNED_FEATURES: &str =
        "fma avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_vnni amx_bf16 amx_tile";
    const PINNED: [&str; 2] = [
        "21e34034bb9958b3af7360755a005080f9debb7756b17255d97fe57f54f46223",
        "9213632627dd74721a4bc233835e5754324444d8775b853caddfd5e982d01c4e",
    ];
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let row = |i: u64| common::sentence(i, 4242, 12);
    write(&d.join("train.csv"), &common::labelled_csv(200, 0, row));
    write(&d.join("test.csv"), &common::labelled_csv(40, 1000, row));
    common::write_lines(&d.join("oe.txt"), 200, |i| {
        common::sentence(i as u64, 77, 10)
    });
    common::write_lines(&d.join("ood.txt"), 30, |i| {
        format!("question {} ?", common::sentence(i as u64, 5, 6))
    });
    let bin = std::env::var_os("OE_TEXT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_oe-text")));
    let train = |out: &str| -> [String; 2] {
        let o = Command::new(&bin)
            .args(["train", "--in"])
            .arg(d)
            .args(["--oe"])
            .arg(d.join("oe.txt"))
            .args(["--ood"])
            .arg(d.join("ood.txt"))
            .args(["--epochs", "2", "--oe-epochs", "1", "--repeats", "1"])
            .args(["--threads", "1", "--device", "cpu", "--quiet", "--out"])
            .arg(d.join(out))
            .output()
            .unwrap();
        common::check(&o);
        ["baseline", "oe"].map(|p| {
            oe::datasets::fetch::sha256_file(&d.join(out).join(p).join("model.safetensors"))
                .unwrap()
        })
    };
    let a = train("run-a");
    assert_eq!(a, train("run-b"), "two processes, same weights");
    eprintln!("weights sha256 ({}): {a:?}", bin.display());
    if kernel_features() != PINNED_FEATURES {
        eprintln!(
            "skipping the pinned hashes: this CPU has [{}], they were recorded on [{PINNED_FEATURES}]",
            kernel_features()
        );
        return;
    }
    assert_eq!(
        a,
        PINNED.map(String::from),
        "weights differ from the release build's"
    );
}

/// `train --export-ids` writes the prepared data (every split, the outliers, the OOD sets, the
/// schedule) as token ids and stops: no run directory, ids within the vocabulary, counts as given.
#[test]
fn export_ids_writes_the_prepared_workload_and_trains_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let row = |i: u64| common::sentence(i, 4242, 12);
    write(&d.join("train.csv"), &common::labelled_csv(60, 0, row));
    write(&d.join("test.csv"), &common::labelled_csv(20, 1000, row));
    common::write_lines(&d.join("oe.txt"), 30, |i| {
        common::sentence(i as u64, 77, 10)
    });
    common::write_lines(&d.join("ood.txt"), 25, |i| common::sentence(i as u64, 5, 6));
    let file = d.join("ids.json");
    let o = Command::new(env!("CARGO_BIN_EXE_oe-text"))
        .args(["train", "--in"])
        .arg(d)
        .arg("--oe")
        .arg(d.join("oe.txt"))
        .arg("--ood")
        .arg(d.join("ood.txt"))
        .args(["--device", "cpu", "--quiet", "--epochs", "3", "--out"])
        .arg(d.join("run"))
        .arg("--export-ids")
        .arg(&file)
        .output()
        .unwrap();
    common::check(&o);
    assert!(
        !d.join("run").exists(),
        "export must not create a run directory"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let len = |p: &str| v.pointer(p).and_then(|x| x.as_array()).map_or(0, Vec::len);
    assert_eq!(len("/train/ids"), 60);
    assert_eq!(len("/train/labels"), 60);
    assert_eq!(len("/test/ids"), 20);
    assert_eq!(len("/oe"), 30);
    assert_eq!(len("/ood/0/ids"), 25);
    assert_eq!(v["baseline"]["epochs"], 3);
    assert_eq!(v["pad_id"], 1);
    let vocab = v["vocab_size"].as_i64().unwrap();
    let all_ids = v["train"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["oe"].as_array().unwrap());
    for seq in all_ids {
        for id in seq.as_array().unwrap() {
            let id = id.as_i64().unwrap();
            assert!(
                (0..vocab).contains(&id) && id != 1,
                "id {id} (vocabulary {vocab}, pad 1)"
            );
        }
    }
}
