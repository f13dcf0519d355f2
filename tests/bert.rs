//! all-MiniLM-L6-v2 through `oe::text::models::bert`, pinned to independently computed reference values.
//!
//! Needs `.models/all-MiniLM-L6-v2` (made by `.ci/setup`); every test prints why and passes when it is
//! absent.
//!
//! Reference values: `experiments/minilm_reference.py`, a from-scratch numpy (float64) BERT that reads
//! `model.safetensors` with the `safetensors` package and tokenises with the `tokenizers` package (the
//! model's `tokenizer.json`, padding/truncation off), one sentence at a time without padding; the
//! sentence embedding is sentence-transformers' mean pooling over all tokens ([CLS] and [SEP]
//! included), not L2-normalised. Run with numpy 2.4.6, scipy 1.17.1, safetensors 0.8.0, tokenizers
//! 0.23.3 in a temporary venv:
//!     python3 -m venv /tmp/oe-venv && /tmp/oe-venv/bin/pip install numpy scipy safetensors tokenizers
//!     /tmp/oe-venv/bin/python experiments/minilm_reference.py
//! Its cos("A man is eating food.", "A man is eating a piece of bread.") = 0.7553 also matches the
//! value sentence-transformers' documentation shows for this model.

use crate::common;

use oe::text::models::bert::{
    mean_pool, BertBatch, BertClassifier, BertClassifierConfig, BertConfig, BertModel,
};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

const SENTENCES: [&str; 4] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, a must-see!",
    "Stock markets fell sharply on Tuesday after the announcement.",
];

const IDS: [&[i64]; 4] = [
    &[101, 1037, 2158, 2003, 5983, 2833, 1012, 102],
    &[
        101, 1037, 2158, 2003, 5983, 1037, 3538, 1997, 7852, 1012, 102,
    ],
    &[
        101, 1996, 2047, 3185, 2003, 12476, 1010, 1037, 2442, 1011, 2156, 999, 102,
    ],
    &[
        101, 4518, 6089, 3062, 9249, 2006, 9857, 2044, 1996, 8874, 1012, 102,
    ],
];

const FIRST8: [[f64; 8]; 4] = [
    [
        0.187239, 0.024818, -0.035356, 0.272502, -0.781265, -0.189356, 0.569623, -0.306333,
    ],
    [
        0.272934, 0.287085, -0.058144, -0.029859, -0.661091, -0.115641, 0.399532, 0.068522,
    ],
    [
        -0.497860, -0.363041, -0.007580, -0.181069, -0.045227, -0.083224, -0.169139, -0.220975,
    ],
    [
        0.157036, -0.109116, 0.430098, 0.370827, -0.077832, 0.059146, -0.216235, 0.339858,
    ],
];
const NORMS: [f64; 4] = [5.632677, 5.196920, 4.318193, 4.770265];
const COS_01: f64 = 0.755337;
const COS_02: f64 = -0.017950;
const COS_23: f64 = -0.044314;

fn model_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(".models/all-MiniLM-L6-v2");
    if d.join("model.safetensors").is_file() {
        Some(d)
    } else {
        println!("skipped: {} is absent (run .ci/setup)", d.display());
        None
    }
}

fn load(dir: &Path) -> (nn::VarStore, BertModel) {
    let cfg = BertConfig::from_dir(dir).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads
        ),
        (384, 6, 12)
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let m = BertModel::new(&vs.root(), &cfg);
    m.load_safetensors(&dir.join("model.safetensors")).unwrap();
    (vs, m)
}

fn row(t: &Tensor, i: i64) -> Vec<f64> {
    Vec::<f64>::try_from(t.get(i).to_kind(Kind::Double)).unwrap()
}

/// The pretrained model's tokenizer as a model directory uses it ([`TextEncoder`]).
fn encoder(dir: &Path, max_len: Option<usize>) -> oe::text::tokenize::TextEncoder {
    oe::text::tokenize::TextEncoder::subword_from_file(&dir.join("tokenizer.json"), max_len)
        .unwrap()
}

/// Token ids of `texts` (with `[CLS]`/`[SEP]`), right-padded into one batch on the CPU.
fn batch_of(tk: &oe::text::tokenize::TextEncoder, texts: &[&str]) -> BertBatch {
    let ids: Vec<Vec<i64>> = texts.iter().map(|t| tk.encode(t)).collect();
    let refs: Vec<&[i64]> = ids.iter().map(Vec::as_slice).collect();
    BertBatch::right_padded(
        &refs,
        oe::text::models::bert::BERT_PAD_ID,
        None,
        Device::Cpu,
    )
}

fn cos(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / n(a) / n(b)
}

#[test]
fn minilm_sentence_embeddings_match_reference() {
    let Some(dir) = model_dir() else { return };
    // The production tokenisation path: the model directory's encoder (`tokenizer.json`).
    let tk = encoder(&dir, Some(128));
    let ids: Vec<Vec<i64>> = SENTENCES.iter().map(|s| tk.encode(s)).collect();
    for (got, want) in ids.iter().zip(IDS) {
        assert_eq!(got.as_slice(), want);
    }
    let (_vs, m) = load(&dir);
    // All four in one right-padded batch.
    let batch = batch_of(&tk, &SENTENCES);
    let emb = tch::no_grad(|| {
        let h = m.forward(&batch.input_ids, &batch.attention_mask, false);
        assert_eq!(h.size(), [4, 13, 384]);
        mean_pool(&h, &batch.attention_mask)
    });
    let rows: Vec<Vec<f64>> = (0..4).map(|i| row(&emb, i)).collect();
    for (i, r) in rows.iter().enumerate() {
        for (j, (g, w)) in r.iter().zip(FIRST8[i]).enumerate() {
            assert!((g - w).abs() < 1e-4, "sentence {i} dim {j}: {g} vs {w}");
        }
        let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (norm - NORMS[i]).abs() < 1e-4,
            "sentence {i} norm {norm} vs {}",
            NORMS[i]
        );
    }
    assert!((cos(&rows[0], &rows[1]) - COS_01).abs() < 1e-5);
    assert!((cos(&rows[0], &rows[2]) - COS_02).abs() < 1e-5);
    assert!((cos(&rows[2], &rows[3]) - COS_23).abs() < 1e-5);
    // Each sentence alone (no padding) gives the same embedding as in the padded batch.
    for (i, s) in SENTENCES.iter().enumerate() {
        let one = batch_of(&tk, &[s]);
        let e = tch::no_grad(|| {
            mean_pool(
                &m.forward(&one.input_ids, &one.attention_mask, false),
                &one.attention_mask,
            )
        });
        let d = row(&e, 0)
            .iter()
            .zip(&rows[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-5, "sentence {i}: batch vs alone differ by {d}");
    }
}

/// The batch-invariant CPU encoder (`bert_cpu`, scoring's and serving's path) on the pretrained
/// MiniLM: the independent float64 reference's embeddings, libtorch's within 1e-5, and each
/// sentence's bits the same alone as packed with the others.
#[test]
fn minilm_packed_cpu_encoder_matches_reference_and_is_batch_invariant() {
    let Some(dir) = model_dir() else { return };
    let vs = nn::VarStore::new(Device::Cpu);
    let m = BertClassifier::from_pretrained(&vs.root(), &dir, &BertClassifierConfig::default(), 2)
        .unwrap();
    m.freeze_for_inference();
    let pen = [oe::detect::FeatureSource::Penultimate];
    let (emb, logits) = m.features_and_logits_alone(&IDS, &pen).unwrap();
    assert_eq!(emb.size(), [4, 384]);
    let batch =
        BertBatch::right_padded(&IDS, oe::text::models::bert::BERT_PAD_ID, None, Device::Cpu);
    let (lt_emb, lt_logits) = tch::no_grad(|| m.features_and_logits(&batch, false));
    let d = (&emb - &lt_emb).abs().max().double_value(&[]);
    assert!(d < 1e-5, "packed vs libtorch embeddings differ by {d}");
    let d = (&logits - &lt_logits).abs().max().double_value(&[]);
    assert!(d < 1e-5, "packed vs libtorch logits differ by {d}");
    for i in 0..4 {
        let r = row(&emb, i as i64);
        for (j, (g, w)) in r.iter().zip(FIRST8[i]).enumerate() {
            assert!((g - w).abs() < 1e-4, "sentence {i} dim {j}: {g} vs {w}");
        }
        let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - NORMS[i]).abs() < 1e-4, "sentence {i} norm {norm}");
        let (alone, alone_l) = m.features_and_logits_alone(&IDS[i..i + 1], &pen).unwrap();
        assert!(
            alone.equal(&emb.narrow(0, i as i64, 1)),
            "sentence {i} alone"
        );
        assert!(
            alone_l.equal(&logits.narrow(0, i as i64, 1)),
            "sentence {i} alone"
        );
    }
}

#[test]
fn minilm_classifier_loads_with_or_without_bert_prefix_and_trains() {
    let Some(dir) = model_dir() else { return };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = BertClassifierConfig::default();
    let clf = BertClassifier::from_pretrained(&vs.root(), &dir, &cfg, 2).unwrap();
    // Reference checkpoint names have no prefix; our VarStore writes `bert.`-prefixed names, which
    // load back through `load_safetensors` too.
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("model.safetensors");
    vs.save(&saved).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let clf2 = BertClassifier::new(&vs2.root(), &clf.bert.config().clone(), &cfg, 2);
    clf2.bert.load_safetensors(&saved).unwrap();
    let tk = encoder(&dir, Some(cfg.max_len));
    let batch = batch_of(&tk, &SENTENCES);
    let (f1, _) = tch::no_grad(|| clf.features_and_logits(&batch, false));
    let (f2, _) = tch::no_grad(|| clf2.features_and_logits(&batch, false));
    assert_eq!(f1.size(), [4, 384]);
    assert!((&f1 - &f2).abs().max().double_value(&[]) < 1e-6);
    // Encoder weights are trainable: one Adam step changes them and lowers the loss on this batch.
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let w = "bert.encoder.layer.0.attention.self.query.weight";
    let before = vs.variables()[w].copy();
    let loss0 = clf
        .logits(&batch, false)
        .cross_entropy_for_logits(&labels)
        .double_value(&[]);
    for _ in 0..3 {
        let loss = clf.logits(&batch, true).cross_entropy_for_logits(&labels);
        opt.backward_step(&loss);
    }
    let loss1 = clf
        .logits(&batch, false)
        .cross_entropy_for_logits(&labels)
        .double_value(&[]);
    assert!(vs.variables()[w].requires_grad());
    assert!(
        (vs.variables()[w].copy() - before)
            .abs()
            .max()
            .double_value(&[])
            > 0.0
    );
    assert!(loss1 < loss0, "{loss1} !< {loss0}");
}

/// Timing, not a check: `cargo test --test bert -- --ignored --nocapture minilm_speed`.
#[test]
#[ignore]
fn minilm_speed() {
    let Some(dir) = model_dir() else { return };
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = BertClassifierConfig::default();
    let clf = BertClassifier::from_pretrained(&vs.root(), &dir, &cfg, 2).unwrap();
    let (b, t) = (64i64, 32i64);
    let ids = Tensor::randint_low(1000, 29000, [b, t], (Kind::Int64, Device::Cpu));
    let batch = BertBatch {
        input_ids: ids,
        attention_mask: Tensor::ones([b, t], (Kind::Int64, Device::Cpu)),
    };
    let labels = Tensor::zeros([b], (Kind::Int64, Device::Cpu));
    let _ = tch::no_grad(|| clf.logits(&batch, false));
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        let _ = tch::no_grad(|| clf.logits(&batch, false));
    }
    let fwd = t0.elapsed().as_secs_f64() / reps as f64;
    // The packed CPU encoder (scoring's and serving's path) on the same batch, and one 12-token
    // sentence each way.
    clf.freeze_for_inference();
    let rows: Vec<Vec<i64>> = (0..b)
        .map(|i| Vec::<i64>::try_from(batch.input_ids.get(i)).unwrap())
        .collect();
    let refs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let pen = [oe::detect::FeatureSource::Penultimate];
    let time = |f: &dyn Fn()| {
        f();
        let t0 = Instant::now();
        for _ in 0..reps {
            f();
        }
        t0.elapsed().as_secs_f64() / reps as f64
    };
    let packed = time(&|| {
        let _ = clf.features_and_logits_alone(&refs, &pen).unwrap();
    });
    let one = &refs[0][..12];
    let one_batch = BertBatch::right_padded(&[one], 0, None, Device::Cpu);
    let lt_one = time(&|| {
        let _ = tch::no_grad(|| clf.logits(&one_batch, false));
    });
    let packed_one = time(&|| {
        let _ = clf.features_and_logits_alone(&[one], &pen).unwrap();
    });
    println!(
        "packed CPU encoder: batch {:.3} s ({:.0} sentences/s, libtorch {:.0}); one 12-token sentence {:.2} ms (libtorch {:.2} ms)",
        packed,
        b as f64 / packed,
        b as f64 / fwd,
        packed_one * 1e3,
        lt_one * 1e3
    );
    let mut opt = nn::Adam::default().build(&vs, 2e-5).unwrap();
    let t0 = Instant::now();
    for _ in 0..reps {
        let loss = clf.logits(&batch, true).cross_entropy_for_logits(&labels);
        opt.backward_step(&loss);
    }
    let step = t0.elapsed().as_secs_f64() / reps as f64;
    println!(
        "MiniLM batch {b} x {t} tokens, {} torch threads: forward {:.3} s ({:.0} sentences/s); train step {:.3} s ({:.0} sentences/s)",
        tch::get_num_threads(),
        fwd,
        b as f64 / fwd,
        step,
        b as f64 / step
    );
}

/// A tiny labelled dataset (train/dev/test CSV), an outlier file and an OOD file, generated here.
fn tiny_dataset(d: &Path) {
    let rows = |n: usize, off: usize| -> Vec<(String, &str)> {
        (off..off + n)
            .map(|i| {
                if i % 2 == 0 {
                    (
                        format!("a lovely film, truly great acting number {i}"),
                        "pos",
                    )
                } else {
                    (format!("a dull film, truly awful acting number {i}"), "neg")
                }
            })
            .collect()
    };
    common::write_splits(
        d,
        &[
            ("train", rows(64, 0)),
            ("dev", rows(16, 100)),
            ("test", rows(20, 200)),
        ],
    );
    common::write_lines(&d.join("oe.txt"), 40, |i| {
        format!("the river flows past the old castle in year {i}")
    });
    common::write_lines(&d.join("ood.txt"), 40, |i| {
        format!("how many kilometres is it to station {i} ?")
    });
}

#[test]
fn minilm_trains_baseline_and_oe_into_self_contained_model_directories() {
    use oe::text::model_dir::LoadedModel;
    use oe::text::models::{ModelConfig, PretrainedConfig};
    use oe::text::pipeline::{run_train, TrainRequest};
    use oe::text::train::TrainConfig;
    use oe::train::Silent;
    let Some(dir) = model_dir() else { return };
    tch::set_num_threads(2);
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tiny_dataset(d);
    let head = BertClassifierConfig {
        max_len: 16,
        ..Default::default()
    };
    let model = ModelConfig::Pretrained(PretrainedConfig::from_dir("minilm", &dir, head).unwrap());
    let train = TrainConfig {
        epochs: 1,
        lr: 5e-5,
        batch_size: 16,
        oe_batch_size: 16,
        ..Default::default()
    };
    let req = TrainRequest {
        calibrate_tpr: Some(0.9),
        ..common::request(d, &d.join("run"), model, train, 2)
    };
    let out = run_train(&req, &mut Silent).unwrap();
    assert_eq!(out.reports.len(), 2);
    for (name, dir_m) in &out.dirs {
        // Self-contained: the tokenizer is copied in, no word vocabulary, and run.json records the
        // encoder's config and where its weights came from.
        assert!(dir_m.join("tokenizer.json").is_file(), "{name}");
        assert!(!dir_m.join("vocab.json").exists(), "{name}");
        let run: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir_m.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["model"]["type"], "pretrained");
        assert_eq!(run["model"]["encoder"]["hidden_size"], 384);
        assert_eq!(run["model"]["head"]["max_len"], 16);
    }
    // Fine-tuning started from the pretrained encoder (not from random weights): the baseline's
    // word embeddings stay close to MiniLM's (one epoch at 5e-5 moves them by far less than their
    // scale), and they did move.
    let m = LoadedModel::load(&out.dirs[0].1, Device::Cpu).unwrap();
    let (_, pre) = load(&dir);
    let name = "bert.embeddings.word_embeddings.weight";
    let trained = m.vs.variables()[name].copy();
    let pretrained = pre.named_variables()[0].1.copy();
    let diff = (&trained - &pretrained).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.01, "max change {diff}");
    // The scoring path gives every text the same score alone as in a batch, and a text longer
    // than max_len is cut (keeping [SEP]) and counted.
    let texts: Vec<String> = vec![
        "a lovely film".into(),
        "where is the nearest train station ?".into(),
        "word ".repeat(40),
    ];
    let opts = oe::text::score::ScoreOptions::default();
    let all = oe::text::score::score_texts(&m, &texts, &opts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let one = oe::text::score::score_texts(&m, std::slice::from_ref(t), &opts).unwrap();
        // The packed CPU encoder: the same bits alone as in a batch.
        assert_eq!(one[0].score.to_bits(), all[i].score.to_bits(), "text {i}");
        assert!(one[0].score.is_finite());
    }
    // The service: concurrent clients with requests of random sizes get exactly what `oe-text
    // score` (another process, another thread count) wrote, texts of every length sharing
    // micro-batches in MiniLM's packed encoder.
    let base = &out.dirs[0].1;
    let all = crate::serve::texts(60, 3);
    let want = crate::serve::reference(base, &all, d);
    let s = crate::serve::server(base, |r| {
        r.max_batch = 32;
        r.max_wait = std::time::Duration::from_millis(20);
    });
    crate::serve::concurrent_clients_get_the_same_bits(&s.addr.to_string(), &all, &want);
    // A stored feature detector per request (training fitted them): the scores `oe-text score
    // --score mahalanobis` writes, bit for bit, with no threshold.
    let input = d.join("few.txt");
    std::fs::write(&input, all[..7].join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oe-text"))
        .args([
            "score",
            "--quiet",
            "--device",
            "cpu",
            "--score",
            "mahalanobis",
            "--model",
        ])
        .arg(base)
        .arg(&input)
        .output()
        .unwrap();
    common::check(&out);
    let want_m: Vec<f32> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(2).unwrap().parse().unwrap())
        .collect();
    let body = serde_json::json!({"texts": &all[..7], "detector": "mahalanobis"});
    let resp = ureq::post(&format!("http://{}/v1/score", s.addr))
        .send_bytes(&serde_json::to_vec(&body).unwrap())
        .unwrap()
        .into_string()
        .unwrap();
    let resp: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(resp["score"], "mahalanobis");
    assert!(resp["threshold"].is_null());
    let got: Vec<f32> = resp["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got.len(), 7);
    for (g, w) in got.iter().zip(&want_m) {
        assert_eq!(g.to_bits(), w.to_bits(), "mahalanobis {g} vs {w}");
    }
    s.stop().unwrap();
    let pre = oe::text::score::Preprocess::of(&m.config);
    let (ids, long) = pre.encode(&m.vocab, &texts[2]);
    assert!(long);
    assert_eq!(ids.len(), 16);
    assert_eq!(*ids.last().unwrap(), 102, "[SEP] kept at the end");
    assert_eq!(ids[0], 101, "[CLS] first");
}
