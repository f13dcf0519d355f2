//! The text wing's commands: `run_train` (data → vocabulary → baseline → OE → evaluation, each
//! model in a self-contained directory, [`crate::text::model_dir`]), `run_eval` (a model directory
//! or released weights against the OOD sets) and `run_score` (streaming batch scoring,
//! [`crate::text::score`]).

use crate::error::{OeError, Result};
use crate::eval::{EvalConfig, EvalReport};
use crate::rundir::{self, already_trained, interrupted_state, write_json, RunHeader};
use crate::text::data::{self, TextOptions};
use crate::text::model_dir::{default_fix_len, encode_labelled, LoadedModel, RunConfig};
use crate::text::models::ModelConfig;
use crate::text::protocol::{self, encode_all, OodInput};
use crate::text::score;
use crate::text::tokenize::TextEncoder;
use crate::text::train::{self as ttrain, EncodedSet, TrainConfig};
use crate::train::{self, CheckpointState, Method, MethodLabel, Observer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// A full training request (`oe-text train`).
#[derive(Clone, Debug)]
pub struct TrainRequest {
    pub in_dataset: String,
    /// `None`: baseline only.
    pub oe_corpus: Option<String>,
    pub oe_method: Method,
    pub data_root: PathBuf,
    pub out_dir: PathBuf,
    pub text: TextOptions,
    /// Vocabulary size: most frequent training words (word vocabulary) or the subword vocabulary's
    /// size (`tokenizer`).
    pub vocab_max_size: usize,
    /// Train a subword vocabulary by this definition instead of the word vocabulary (models
    /// trained from scratch; `vocab_size` is replaced by `vocab_max_size`).
    pub tokenizer: Option<crate::text::tokenize::hf::SubwordConfig>,
    pub model: ModelConfig,
    pub baseline: TrainConfig,
    pub oe: TrainConfig,
    pub eval: EvalConfig,
    /// OOD sets to evaluate on (`None`: every set present under the data root).
    pub ood_sets: Option<Vec<String>>,
    pub resume: bool,
    pub device: Device,
    /// Hold this fraction of the training split out for validation (threshold calibration);
    /// `None`: train on all of it (the paper).
    pub holdout: Option<f64>,
    /// After training, store the threshold keeping this fraction of the validation texts (the
    /// hold-out, else the dev split) in each model directory; `None`: no calibration.
    pub calibrate_tpr: Option<f64>,
    /// Name of the OE model's directory under `out_dir` (`None`: `oe`), so runs with different OE
    /// losses can share one baseline.
    pub oe_dir: Option<String>,
    /// Evaluate the trained models (`oe-text compare` evaluates them itself, with every detector).
    pub evaluate: bool,
    /// `oe.pairing` was not chosen by the user: when the outliers last fewer steps than an epoch
    /// (CLINC150's 100 out-of-scope queries), OE cycles them instead of ending the epoch early.
    pub auto_pairing: bool,
    /// Write the prepared data as token ids to this file and stop ([`export_ids`]).
    pub export_ids: Option<PathBuf>,
}

/// What a training run produced.
pub struct TrainOutcome {
    pub dirs: Vec<(String, PathBuf)>,
    pub reports: Vec<(String, EvalReport)>,
    pub table: String,
    pub timings: Vec<PhaseTiming>,
}

/// Wall-clock time of one pipeline phase (written to `timings.json` in the run directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub phase: String,
    pub seconds: f64,
    /// Examples processed (training: in-distribution examples × epochs; evaluation: texts scored).
    pub examples: usize,
    pub examples_per_second: f64,
}

fn timing(phase: &str, t0: std::time::Instant, examples: usize) -> PhaseTiming {
    let seconds = t0.elapsed().as_secs_f64();
    PhaseTiming {
        phase: phase.to_string(),
        seconds,
        examples,
        examples_per_second: examples as f64 / seconds.max(1e-9),
    }
}

/// Reads a `timings.json` written by [`run_train`].
fn read_timings(path: &Path) -> Result<Vec<PhaseTiming>> {
    let bytes = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| OeError::parse(path, e.line(), e.to_string()))
}

/// Trains (or resumes) one model directory. Returns when `model.safetensors` exists: `true` when
/// it trained now, `false` when the directory was already finished (`--resume`).
#[allow(clippy::too_many_arguments)]
fn train_model_dir(
    dir: &Path,
    phase: &str,
    cfg: &RunConfig,
    vocab: &TextEncoder,
    train_set: &EncodedSet,
    oe_ids: Option<&[Vec<i64>]>,
    init_weights: Option<&Path>,
    resume: bool,
    device: Device,
    obs: &mut dyn Observer,
) -> Result<bool> {
    if resume {
        rundir::check_same_config(dir, cfg, "oe-text train")?;
    }
    if already_trained(dir, phase, resume, obs)? {
        return Ok(false);
    }
    let ckpt_w = dir.join(rundir::CHECKPOINT_WEIGHTS);
    let ckpt_j = dir.join(rundir::CHECKPOINT_STATE);
    train::seed_everything(cfg.train.seed);
    let mut vs = nn::VarStore::new(device);
    let model = cfg
        .model
        .build(&vs.root(), vocab.len() as i64, cfg.labels.len() as i64)?;
    let mut opt_state = None;
    let state = match interrupted_state(dir, resume)? {
        Some(state) => {
            train::load_weights(&mut vs, &ckpt_w)?;
            let tensors = train::read_tensors(&ckpt_w)?;
            train::check_checkpoint_progress(&tensors, &state, &ckpt_w, &ckpt_j)?;
            obs.status(&format!(
                "{phase}: resuming after epoch {} step {} of {} epochs (weights and Adam state from {})",
                state.epochs_done,
                state.steps_done(),
                cfg.train.epochs,
                ckpt_w.display()
            ));
            opt_state = Some(tensors);
            state
        }
        None => {
            if let Some(w) = init_weights {
                train::load_weights(&mut vs, w)?;
            } else if let ModelConfig::Pretrained(p) = &cfg.model {
                obs.status(&format!(
                    "{phase}: encoder weights from {}",
                    p.source.display()
                ));
                model.load_pretrained(&p.source)?;
            }
            CheckpointState::default()
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
    rundir::write_run(dir, cfg)?;
    vocab.save_dir(dir)?;
    let method = cfg.header.method;
    let mut save = |s: &CheckpointState, opt: &crate::train::optim::Adam| -> Result<()> {
        train::save_checkpoint(&vs, opt.state_tensors(), s, &ckpt_w)?;
        write_json(&ckpt_j, s)
    };
    let state = ttrain::train_phase(
        phase,
        method,
        &model,
        &vs,
        train_set,
        oe_ids,
        &cfg.train,
        state,
        opt_state.as_ref(),
        obs,
        &mut save,
    )?;
    rundir::finish_phase(dir, &state, |p| train::save_weights(&vs, p), &[])?;
    Ok(true)
}

/// Writes a training run's prepared data as token ids, with the schedule, as one JSON object:
/// `vocab_size`, `classes`, `pad_id`, `fix_len`, `max_train_tokens`, `train`/`test` (`ids`,
/// `labels`), `oe` (ids or null), `ood` (`[{name, ids, order}]`: `order` is the reference's fixed
/// order for SNLI and IMDB, else null: random draws), `baseline`/`oe_train` (epochs, lr,
/// batch sizes, λ) and `eval` (batch size, draws, ID:OOD ratio). Written atomically.
#[allow(clippy::too_many_arguments)]
fn export_ids(
    path: &Path,
    req: &TrainRequest,
    vocab: &TextEncoder,
    classes: usize,
    train: &EncodedSet,
    test: &EncodedSet,
    oe: Option<&[Vec<i64>]>,
    ood: &[OodInput],
    oe_cfg: &crate::text::train::TrainConfig,
) -> Result<()> {
    let sets: Vec<serde_json::Value> = ood
        .iter()
        .map(|set| {
            let ids = encode_all(&protocol::paper_texts(set), |t| vocab.encode(t));
            let order = protocol::paper_fixed_order(set, &ids);
            serde_json::json!({"name": set.name, "ids": ids, "order": order})
        })
        .collect();
    let sched = |c: &crate::text::train::TrainConfig| {
        serde_json::json!({
            "epochs": c.epochs, "lr": c.lr, "batch_size": c.batch_size,
            "oe_batch_size": c.oe_batch_size, "oe_loss": c.oe_loss, "pairing": c.pairing,
        })
    };
    let v = serde_json::json!({
        "in_dataset": req.in_dataset,
        "vocab_size": vocab.len(),
        "classes": classes,
        "pad_id": crate::text::models::PAD_ID,
        "fix_len": train.fix_len,
        "max_train_tokens": train.ids.iter().map(Vec::len).max(),
        "model": req.model,
        "train": {"ids": train.ids, "labels": train.labels},
        "test": {"ids": test.ids, "labels": test.labels},
        "oe": oe,
        "ood": sets,
        "baseline": sched(&req.baseline),
        "oe_train": sched(oe_cfg),
        "eval": {"batch_size": req.eval.batch_size, "repeats": req.eval.repeats,
                 "id_per_ood": req.eval.id_per_ood, "seed": req.eval.seed},
    });
    let bytes =
        serde_json::to_vec(&v).map_err(|e| OeError::Data(format!("{}: {e}", path.display())))?;
    crate::io::write_atomic(path, &bytes)
}

/// Loads the OOD sets named (or all present) with the paper's preprocessing.
/// Without names: `in_dataset`'s own near-OOD set when it has one (CLINC150's out-of-scope
/// queries), else every far-OOD set present ([`data::default_ood_sets`]).
pub fn load_ood_inputs(
    names: Option<&[String]>,
    in_dataset: &str,
    root: &Path,
    text: &TextOptions,
) -> Result<Vec<OodInput>> {
    let names: Vec<String> = match names {
        Some(n) => n.to_vec(),
        None => data::default_ood_sets(in_dataset, root),
    };
    if names.is_empty() {
        return Err(OeError::Data(format!(
            "no OOD sets found under {} (known: {}); pass --data-dir or --ood FILE",
            root.display(),
            data::OOD_NAMES.join(", ")
        )));
    }
    let ood_text = TextOptions {
        lowercase: text.lowercase.map(|_| true).or(Some(true)),
        max_tokens: None,
        text_column: text.text_column.clone(),
        label_column: None,
    };
    // In parallel (IMDB's archive is inflated on one thread while the other sets are read), in
    // the order given.
    use rayon::prelude::*;
    names
        .par_iter()
        .map(|n| {
            let s = data::load_ood(n, root, &ood_text)?;
            Ok(OodInput {
                name: s.name,
                texts: s.texts,
                premises: s.premises,
            })
        })
        .collect()
}

/// Validation data for thresholds and tuning, never test data: the in-distribution dev split and
/// a validation OOD set ([`EvalConfig::val_ood`]).
#[derive(Clone, Debug)]
pub struct ValidationData {
    pub dev: data::Labelled,
    pub ood: OodInput,
}

/// Loads [`EvalConfig::val_ood`] (when set) and pairs it with `ind`'s dev split; a dataset without
/// a dev split is an error then.
pub fn load_validation(
    val_ood: Option<&str>,
    ind: &data::InDistribution,
    root: &Path,
    text: &TextOptions,
) -> Result<Option<ValidationData>> {
    let Some(name) = val_ood else {
        return Ok(None);
    };
    let dev = ind.dev.clone().ok_or_else(|| {
        OeError::Config(format!(
            "--val-ood {name}: {} has no dev split to pair it with (user datasets: add dev.csv or dev.jsonl)",
            ind.name
        ))
    })?;
    let ood = load_ood_inputs(Some(&[name.to_string()]), &ind.name, root, text)?
        .into_iter()
        .next()
        .ok_or_else(|| OeError::Data(format!("validation OOD set `{name}` is empty")))?;
    Ok(Some(ValidationData { dev, ood }))
}

/// Anomaly scores and correctness of the dev split, and anomaly scores of the validation OOD set,
/// under `cfg`'s detector, every text scored alone (batch-independent).
pub fn validation_scores(
    m: &LoadedModel,
    val: &ValidationData,
    cfg: &EvalConfig,
) -> Result<(Vec<f64>, Vec<bool>, Vec<f64>)> {
    let scorer = m.scorer();
    let enc = encode_labelled(&m.vocab, &m.labels, &val.dev, m.config.in_fix_len)?;
    let (f, l) = scorer.outputs_bucketed(&enc.ids, 256, m.config.in_fix_len);
    let s_in = scorer.anomaly(&f, &l, cfg)?;
    let pred = Vec::<i64>::try_from(&l.argmax(-1, false)).map_err(OeError::Torch)?;
    let correct = pred.iter().zip(&enc.labels).map(|(p, y)| p == y).collect();
    let vocab = &m.vocab;
    let ids = encode_all(&val.ood.texts, |t| vocab.encode(t));
    let (f, l) = scorer.outputs_bucketed(&ids, 256, None);
    let s_ood = scorer.anomaly(&f, &l, cfg)?;
    Ok((s_in, correct, s_ood))
}

/// The operating point of `report` from validation data ([`crate::eval::choose_threshold`]).
pub fn operating_point(
    m: &LoadedModel,
    val: &ValidationData,
    cfg: &EvalConfig,
    report: &EvalReport,
) -> Result<crate::eval::OperatingPoint> {
    let (s_in, ok, s_ood) = validation_scores(m, val, cfg)?;
    let (t, acc, rec) = crate::eval::choose_threshold(&s_in, &ok, &s_ood)?;
    let n = report.in_scores.len().max(1) as f64;
    let accepted = report.in_scores.iter().filter(|&&s| s <= t).count();
    let acc_test = report
        .in_scores
        .iter()
        .zip(&report.in_correct)
        .filter(|(s, c)| **c && **s <= t)
        .count();
    Ok(crate::eval::OperatingPoint {
        rule: crate::eval::OPERATING_RULE.to_string(),
        val_ood_set: val.ood.name.clone(),
        n_val_in: s_in.len(),
        n_val_ood: s_ood.len(),
        threshold: t,
        val_in_accuracy: acc,
        val_ood_recall: rec,
        test_in_accuracy: acc_test as f64 / n,
        test_in_accepted: accepted as f64 / n,
        test_ood_recall: report
            .sets
            .iter()
            .map(|set| {
                let d = set.scores.first().map(Vec::as_slice).unwrap_or(&[]);
                let flagged = d.iter().filter(|(_, s)| *s > t).count();
                (set.ood_set.clone(), flagged as f64 / d.len().max(1) as f64)
            })
            .collect(),
    })
}

/// Evaluates a loaded model on its in-distribution test set and the given OOD inputs, and writes
/// the results into its directory.
pub fn evaluate_model(
    m: &LoadedModel,
    test: &data::Labelled,
    ood: &[OodInput],
    cfg: &EvalConfig,
    method: MethodLabel,
) -> Result<(EvalReport, PathBuf)> {
    evaluate_model_with(m, test, ood, cfg, method, None)
}

/// [`evaluate_model`], plus the operating point of a threshold chosen on `val` when given.
pub fn evaluate_model_with(
    m: &LoadedModel,
    test: &data::Labelled,
    ood: &[OodInput],
    cfg: &EvalConfig,
    method: MethodLabel,
    val: Option<&ValidationData>,
) -> Result<(EvalReport, PathBuf)> {
    let enc = encode_labelled(&m.vocab, &m.labels, test, m.config.in_fix_len)?;
    let vocab = &m.vocab;
    let mut report = protocol::evaluate(
        &m.scorer(),
        &enc.ids,
        &enc.labels,
        ood,
        |t| vocab.encode(t),
        cfg,
    )?;
    if let Some(v) = val {
        report.operating_point = Some(operating_point(m, v, cfg, &report)?);
    }
    report.precision = m.model.precision();
    let meta = crate::results::RunMeta {
        in_dataset: m.config.header.in_dataset.clone(),
        method,
        model: m.config.model.name().to_string(),
        seed: m.config.train.seed,
        model_dir: m.dir.display().to_string(),
        paper: crate::paper::Table::Table8,
    };
    let out = crate::results::write_eval(&m.dir, &report, None, &meta)?;
    Ok((report, out))
}

/// Stores the deployment threshold of a freshly trained model (`calibration-<score>.*`) from the
/// held-out validation texts, else the dev split; says so when there is neither.
fn calibrate_after_training(
    m: &LoadedModel,
    heldout: Option<&data::Labelled>,
    dev: Option<&data::Labelled>,
    score: crate::detect::score::Score,
    tpr: f64,
) -> Result<String> {
    use crate::text::calibrate::{calibrate, Validation};
    let val = match (heldout, dev, &m.config.holdout) {
        (Some(h), _, Some(rec)) => Validation {
            texts: h.texts.clone(),
            split: "holdout".into(),
            note: format!(
                "{} of {} training examples held out from training (fraction {}, seed {})",
                rec.n_heldout, rec.n_train_total, rec.fraction, rec.seed
            ),
        },
        (_, Some(d), _) => Validation {
            texts: d.texts.clone(),
            split: "dev".into(),
            note: format!(
                "{} dev split, not used in training",
                m.config.header.in_dataset
            ),
        },
        _ => {
            return Ok(format!(
                "{}: no threshold stored (no dev split and no --holdout)",
                m.dir.display()
            ))
        }
    };
    let c = calibrate(m, &val, score, tpr)?;
    Ok(format!(
        "{}: threshold {} ({score}) keeps {:.1}% of {} {} texts",
        m.dir.display(),
        crate::io::compact_number(c.threshold),
        c.kept_fraction * 100.0,
        c.n_validation,
        c.split
    ))
}

/// `oe-text train`: baseline, then OE (fine-tune or from scratch), then evaluation of both.
pub fn run_train(req: &TrainRequest, obs: &mut dyn Observer) -> Result<TrainOutcome> {
    obs.status(&format!(
        "loading {} from {}",
        req.in_dataset,
        req.data_root.display()
    ));
    let mut timings = Vec::new();
    let t_data = std::time::Instant::now();
    let ind = data::load_in_distribution(&req.in_dataset, &req.data_root, &req.text)?;
    let (ind, heldout, holdout) = match req.holdout {
        Some(f) => {
            let (ind, val, h) = crate::text::calibrate::hold_out(ind, f, req.baseline.seed)?;
            (ind, Some(val), Some(h))
        }
        None => (ind, None, None),
    };
    let subword = req
        .tokenizer
        .as_ref()
        .map(|t| crate::text::tokenize::hf::SubwordConfig {
            vocab_size: req.vocab_max_size,
            ..t.clone()
        });
    let vocab = match (&req.model, &subword) {
        (ModelConfig::Pretrained(p), None) => TextEncoder::subword_from_file(
            &p.source.join(crate::text::tokenize::encoder::TOKENIZER_FILE),
            Some(p.head.max_len),
        )?,
        (ModelConfig::Pretrained(_), Some(_)) => {
            return Err(OeError::Config(
                "a pretrained model uses its own tokenizer; --tokenizer is for models trained from scratch".into(),
            ))
        }
        (m, Some(cfg)) => {
            obs.status(&format!(
                "training a {:?} vocabulary of {} on {} texts",
                cfg.kind,
                cfg.vocab_size,
                ind.train.len()
            ));
            TextEncoder::train_subword(ind.train.texts.iter().map(String::as_str), cfg, m.max_len())?
        }
        (_, None) => TextEncoder::Word(ind.build_vocab(req.vocab_max_size)),
    };
    let labels = ind.label_vocab();
    let fix_len = default_fix_len(&req.in_dataset, &req.text);
    let train_set = encode_labelled(&vocab, &labels, &ind.train, fix_len)?;
    obs.status(&format!(
        "{}: {} train / {} test examples, {} classes, vocabulary {}",
        req.in_dataset,
        ind.train.len(),
        ind.test.len(),
        labels.len(),
        vocab.len()
    ));
    let oe_ids = match &req.oe_corpus {
        Some(c) => {
            let sents = data::load_oe_corpus(c, &req.data_root)?;
            obs.status(&format!("OE corpus {c}: {} sentences", sents.len()));
            Some(encode_all(&sents, |t| vocab.encode(t)))
        }
        None => None,
    };
    let mut oe_train = req.oe.clone();
    if let Some(o) = &oe_ids {
        let steps = ind.train.len().div_ceil(req.oe.batch_size.max(1));
        let oe_steps = o.len().div_ceil(req.oe.oe_batch_size.max(1));
        if oe_steps < steps && req.oe.pairing == crate::train::Pairing::Truncate {
            if req.auto_pairing {
                oe_train.pairing = crate::train::Pairing::Cycle;
                obs.status(&format!(
                    "the {} outliers last {oe_steps} of the {steps} steps of an epoch: OE cycles \
                     them (--pairing cycle; pass --pairing truncate for the reference's zip)",
                    o.len()
                ));
            } else {
                obs.warning(&format!(
                    "the {} outliers last {oe_steps} of the {steps} steps of an epoch \
                     (--pairing truncate ends the epoch there, as the reference does); \
                     --pairing cycle pairs every in-distribution batch",
                    o.len()
                ));
            }
        }
    }
    // The baseline records the in-distribution files; the OE model those and its outlier corpus
    // (so OE runs with different corpora share one baseline).
    let files_of = |oe: Option<&str>| -> Result<Vec<rundir::DataFile>> {
        data::training_files(&req.in_dataset, &req.data_root, oe)?
            .iter()
            .map(|p| rundir::DataFile::of(p))
            .collect()
    };
    let data_files = files_of(None)?;
    let oe_data_files = match &req.oe_corpus {
        Some(c) => files_of(Some(c))?,
        None => data_files.clone(),
    };
    // Every OOD set is read before any training, so a typo in --ood costs nothing.
    let ood = if req.evaluate {
        Some(load_ood_inputs(
            req.ood_sets.as_deref(),
            &req.in_dataset,
            &req.data_root,
            &req.text,
        )?)
    } else {
        None
    };
    let val = if req.evaluate {
        load_validation(req.eval.val_ood.as_deref(), &ind, &req.data_root, &req.text)?
    } else {
        None
    };
    let n_prepared = ind.train.len() + ind.test.len() + oe_ids.as_ref().map_or(0, |o| o.len());
    timings.push(timing("data preparation", t_data, n_prepared));
    if let Some(path) = &req.export_ids {
        let test = encode_labelled(&vocab, &labels, &ind.test, fix_len)?;
        export_ids(
            path,
            req,
            &vocab,
            labels.len(),
            &train_set,
            &test,
            oe_ids.as_deref(),
            ood.as_deref().unwrap_or_default(),
            &oe_train,
        )?;
        obs.status(&format!("wrote {}", path.display()));
        return Ok(TrainOutcome {
            dirs: Vec::new(),
            reports: Vec::new(),
            table: String::new(),
            timings,
        });
    }
    // Inputs first, then the run directory: a missing dataset leaves nothing behind.
    let _lock = rundir::RunLock::acquire(&req.out_dir, "oe-text train")?;
    let mut trained_now = false;
    let base_cfg = RunConfig {
        header: RunHeader {
            tool: RunHeader::tool(),
            // A user dataset by absolute path, so the directory evaluates from anywhere.
            in_dataset: if Path::new(&req.in_dataset).exists() {
                rundir::absolute(Path::new(&req.in_dataset))
                    .display()
                    .to_string()
            } else {
                req.in_dataset.clone()
            },
            method: Method::Baseline,
            init_from: None,
            train_examples: ind.train.len(),
            data_root: rundir::absolute(&req.data_root),
            data_files,
        },
        text: req.text.clone(),
        in_fix_len: fix_len,
        vocab_max_size: req.vocab_max_size,
        vocab_size: vocab.len(),
        vocab_sha256: vocab.sha256(),
        labels: labels.names().to_vec(),
        model: req.model.clone(),
        oe_corpus: None,
        oe_examples: None,
        train: req.baseline.clone(),
        holdout: holdout.clone(),
        tokenizer: subword.clone(),
        max_train_tokens: train_set.ids.iter().map(Vec::len).max(),
    };
    let mut dirs = Vec::new();
    let base_dir = req.out_dir.join("baseline");
    let oe_dir_name = req.oe_dir.as_deref().unwrap_or("oe");
    let need_baseline = req.oe_corpus.is_none() || req.oe_method == Method::OeFinetune;
    if need_baseline {
        let t0 = std::time::Instant::now();
        if train_model_dir(
            &base_dir, "baseline", &base_cfg, &vocab, &train_set, None, None, req.resume,
            req.device, obs,
        )? {
            trained_now = true;
            timings.push(timing(
                "baseline training",
                t0,
                ind.train.len() * req.baseline.epochs,
            ));
        }
        dirs.push(("baseline".to_string(), base_dir.clone()));
    }
    if let (Some(corpus), Some(oe_ids)) = (&req.oe_corpus, &oe_ids) {
        let oe_dir = req.out_dir.join(oe_dir_name);
        let oe_cfg = RunConfig {
            header: RunHeader {
                method: req.oe_method,
                init_from: (req.oe_method == Method::OeFinetune).then(|| "../baseline".to_string()),
                data_files: oe_data_files.clone(),
                ..base_cfg.header.clone()
            },
            oe_corpus: Some(corpus.clone()),
            oe_examples: Some(oe_ids.len()),
            train: oe_train.clone(),
            ..base_cfg.clone()
        };
        let init =
            (req.oe_method == Method::OeFinetune).then(|| base_dir.join("model.safetensors"));
        let t0 = std::time::Instant::now();
        if train_model_dir(
            &oe_dir,
            req.oe_method.name(),
            &oe_cfg,
            &vocab,
            &train_set,
            Some(oe_ids),
            init.as_deref(),
            req.resume,
            req.device,
            obs,
        )? {
            trained_now = true;
            timings.push(timing(
                req.oe_method.name(),
                t0,
                ind.train.len() * oe_train.epochs,
            ));
        }
        dirs.push((oe_dir_name.to_string(), oe_dir));
    }
    // One timings file per OE variant, so runs sharing a baseline do not overwrite each other's.
    let timings_file = match &req.oe_dir {
        Some(d) => format!("timings-{d}.json"),
        None => "timings.json".to_string(),
    };
    // A resume keeps the timings of the phases it did not run (skipped phases are not timed).
    let timings_path = req.out_dir.join(&timings_file);
    if !trained_now && timings_path.is_file() {
        timings = read_timings(&timings_path)?;
    } else if timings_path.is_file() {
        let old = read_timings(&timings_path)?;
        for t in old {
            if !timings.iter().any(|n| n.phase == t.phase) {
                timings.push(t);
            }
        }
    }
    let mut reports = Vec::new();
    if !req.evaluate {
        write_json(&timings_path, &timings)?;
        return Ok(TrainOutcome {
            dirs,
            reports,
            table: String::new(),
            timings,
        });
    }
    if crate::interrupt::requested() {
        return Err(OeError::Interrupted(format!(
            "training of {} is finished, its evaluation was not run; run the same command with --resume",
            req.out_dir.display()
        )));
    }
    obs.status("evaluating");
    let t_eval = std::time::Instant::now();
    let ood = ood.unwrap_or_default();
    for (name, dir) in &dirs {
        let mut m = LoadedModel::load(dir, req.device)?;
        if m.detectors.is_none() || m.needs_fit(req.eval.detector) {
            // Fitted now so that later evaluations and scoring can use them; a training set too
            // small for them (k-NN needs k examples) only matters when this evaluation uses one.
            if let Err(e) = m.fit_detectors(&ind.train, None) {
                if matches!(req.eval.detector, crate::detect::Detector::Feature(_)) {
                    return Err(e);
                }
                obs.status(&format!("{name}: feature detectors not fitted: {e}"));
            }
        }
        let (r, out) = evaluate_model_with(
            &m,
            &ind.test,
            &ood,
            &req.eval,
            m.config.method_label(),
            val.as_ref(),
        )?;
        obs.status(&format!("{name}: results in {}", out.display()));
        reports.push((name.clone(), r));
        if let Some(tpr) = req.calibrate_tpr {
            obs.status(&calibrate_after_training(
                &m,
                heldout.as_ref(),
                ind.dev.as_ref(),
                req.eval
                    .detector
                    .logit()
                    .unwrap_or(crate::detect::Score::Msp),
                tpr,
            )?);
        }
    }
    let scored: usize = reports
        .iter()
        .map(|(_, r)| {
            r.n_in
                + r.sets
                    .iter()
                    .map(|s| s.n_ood * s.draws.len())
                    .sum::<usize>()
        })
        .sum();
    timings.retain(|t| t.phase != "evaluation");
    timings.push(timing("evaluation", t_eval, scored));
    for t in &timings {
        obs.status(&format!(
            "time: {:<20} {:8.1} s  {:10.0} examples/s",
            t.phase, t.seconds, t.examples_per_second
        ));
    }
    write_json(&req.out_dir.join(&timings_file), &timings)?;
    let refs: Vec<(&str, &EvalReport)> = reports.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let table = crate::results::comparison_table(&req.in_dataset, &refs);
    Ok(TrainOutcome {
        dirs,
        reports,
        table,
        timings,
    })
}

/// What `oe-text eval` evaluates.
#[derive(Clone, Debug)]
pub enum EvalSource {
    /// A model directory written by `oe-text train`.
    ModelDir(PathBuf),
    /// Released GRU weights (PyTorch names) for `in_dataset`, turned into a model directory at
    /// `out_dir` with the vocabulary rebuilt from the training text.
    Weights {
        file: PathBuf,
        in_dataset: String,
        method: MethodLabel,
        out_dir: PathBuf,
    },
}

/// A validated `oe-text eval` request.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    pub source: EvalSource,
    /// The label in tables and results (default: the model directory's own, from `run.json`).
    pub method: Option<MethodLabel>,
    /// `None`: a model directory's recorded data root (released weights: the default root).
    pub data_root: Option<PathBuf>,
    /// Casing and truncation for rebuilding the vocabulary of released weights.
    pub text: TextOptions,
    pub eval: EvalConfig,
    /// OOD sets (`None`: every set present under the data root).
    pub ood_sets: Option<Vec<String>>,
    /// The arithmetic of the model's products.
    pub precision: crate::device::Precision,
    pub device: Device,
}

/// What an evaluation produced.
pub struct EvalOutcome {
    pub report: EvalReport,
    /// The terminal table (ours beside the paper's Table 8).
    pub table: String,
    /// The evaluation directory written under the model directory.
    pub results_dir: PathBuf,
}

/// `oe-text eval`: loads (or imports) the model, fits feature detectors when the evaluation uses
/// one and none are stored, evaluates on the in-distribution test set and the OOD sets, and writes
/// the results into the model directory.
pub fn run_eval(req: &EvalRequest, obs: &mut dyn Observer) -> Result<EvalOutcome> {
    let needs_detectors = matches!(req.eval.detector, crate::detect::Detector::Feature(_));
    // The OOD sets for a model of `in_dataset` with its text options.
    let load_ood = |in_dataset: &str, text: &TextOptions, root: &Path| {
        load_ood_inputs(req.ood_sets.as_deref(), in_dataset, root, text)
    };
    let (mut m, ind, data_root, ood) = match &req.source {
        EvalSource::ModelDir(dir) => {
            let m = LoadedModel::load(dir, req.device)?;
            let root = req
                .data_root
                .clone()
                .unwrap_or_else(|| rundir::resolve_recorded(&m.config.header.data_root, dir));
            let in_dataset = rundir::resolve_recorded_dataset(&m.config.header.in_dataset, dir);
            obs.status(&format!("loading {in_dataset} from {}", root.display()));
            // The in-distribution and the OOD sets are read at the same time.
            let (header, text) = (&m.config.header, &m.config.text);
            let (ind, ood) = rayon::join(
                || data::load_in_distribution(&in_dataset, &root, text),
                || load_ood(&header.in_dataset, text, &root),
            );
            (m, ind?, root, Some(ood?))
        }
        EvalSource::Weights {
            file,
            in_dataset,
            method,
            out_dir,
        } => {
            let root = req
                .data_root
                .clone()
                .unwrap_or_else(|| crate::datasets::resolve_data_root(None));
            let (m, ind) = import_weights(
                file, in_dataset, &root, &req.text, *method, out_dir, req.device,
            )?;
            (m, ind, root, None)
        }
    };
    let data_root = &data_root;
    m.set_precision(req.precision)?;
    if needs_detectors && m.needs_fit(req.eval.detector) {
        obs.status(&format!("{}: fitting feature detectors", m.dir.display()));
        m.fit_detectors(&ind.train, None)?;
    }
    let method = req.method.unwrap_or_else(|| m.config.method_label());
    let ood = match ood {
        Some(ood) => ood,
        None => load_ood(&m.config.header.in_dataset, &m.config.text, data_root)?,
    };
    let val = load_validation(req.eval.val_ood.as_deref(), &ind, data_root, &m.config.text)?;
    let t_eval = std::time::Instant::now();
    let (report, results_dir) =
        evaluate_model_with(&m, &ind.test, &ood, &req.eval, method, val.as_ref())?;
    obs.status(&format!(
        "time: evaluation {:.2} s (after loading the model and the data)",
        t_eval.elapsed().as_secs_f64()
    ));
    let table =
        crate::results::comparison_table(&m.config.header.in_dataset, &[(method.name(), &report)]);
    Ok(EvalOutcome {
        report,
        table,
        results_dir,
    })
}

/// Builds a GRU from released `.safetensors` weights with the vocabulary rebuilt from the training
/// text (the paper's released checkpoints), as a model directory under `out_dir`.
pub fn import_weights(
    weights: &Path,
    in_dataset: &str,
    data_root: &Path,
    text: &TextOptions,
    method: MethodLabel,
    out_dir: &Path,
    device: Device,
) -> Result<(LoadedModel, data::InDistribution)> {
    let (method, oe_corpus, train) = match method {
        MethodLabel::Baseline => (Method::Baseline, None, TrainConfig::default()),
        MethodLabel::Oe => (
            Method::OeFinetune,
            Some("wikitext2".to_string()),
            TrainConfig::default(),
        ),
        other => {
            return Err(OeError::Config(format!(
            "released weights are `baseline` or `oe` (the paper's OE fine-tuning); got `{other}`"
        )))
        }
    };
    let ind = data::load_in_distribution(in_dataset, data_root, text)?;
    let vocab = ind.build_vocab(crate::paper::defaults::TEXT_VOCAB);
    let labels = ind.label_vocab();
    let model = ModelConfig::Gru(Default::default());
    let cfg = RunConfig {
        header: RunHeader {
            tool: RunHeader::tool(),
            in_dataset: in_dataset.to_string(),
            method,
            init_from: Some(weights.display().to_string()),
            train_examples: ind.train.len(),
            data_root: rundir::absolute(data_root),
            data_files: data::training_files(in_dataset, data_root, None)?
                .iter()
                .map(|p| rundir::DataFile::of(p))
                .collect::<Result<Vec<_>>>()?,
        },
        text: text.clone(),
        in_fix_len: default_fix_len(in_dataset, text),
        vocab_max_size: crate::paper::defaults::TEXT_VOCAB,
        vocab_size: vocab.len(),
        vocab_sha256: vocab.sha256(),
        labels: labels.names().to_vec(),
        model,
        oe_corpus,
        oe_examples: None,
        train,
        holdout: None,
        tokenizer: None,
        max_train_tokens: ind.train.texts.iter().map(|t| vocab.encode(t).len()).max(),
    };
    // Check the weights' shapes against the rebuilt vocabulary before copying anything.
    let tensors = tch::Tensor::read_safetensors(weights)
        .map_err(|e| OeError::Data(format!("{}: cannot read weights: {e}", weights.display())))?;
    for (name, t) in &tensors {
        if name == "embedding.weight" && t.size()[0] != vocab.len() as i64 {
            return Err(OeError::Data(format!(
                "{}: embedding has {} rows but the vocabulary rebuilt from {in_dataset} has {} entries",
                weights.display(),
                t.size()[0],
                vocab.len()
            )));
        }
        if name == "linear.weight" && t.size()[0] != labels.len() as i64 {
            return Err(OeError::Data(format!(
                "{}: {} classes but {in_dataset} has {}",
                weights.display(),
                t.size()[0],
                labels.len()
            )));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| OeError::io(out_dir, e))?;
    rundir::write_run(out_dir, &cfg)?;
    TextEncoder::Word(vocab).save_dir(out_dir)?;
    let bytes = std::fs::read(weights).map_err(|e| OeError::io(weights, e))?;
    crate::io::write_atomic(&out_dir.join("model.safetensors"), &bytes)?;
    let m = LoadedModel::load(out_dir, device)?;
    Ok((m, ind))
}

/// `--threshold`: flag texts with score > threshold as OOD.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// The threshold stored by `oe-text calibrate` (or training) for the score.
    Auto,
    Value(f64),
}

/// A validated `oe-text score` request.
#[derive(Clone, Debug)]
pub struct ScoreRequest {
    pub model_dir: std::path::PathBuf,
    /// Files, directories or `-` (standard input); empty: standard input.
    pub inputs: Vec<std::path::PathBuf>,
    pub input: crate::text::score::input::InputOptions,
    pub score: crate::detect::Score,
    /// Score with this stored detector instead of `score` (see [`score::ScoreOptions::stored`]).
    pub stored: Option<crate::detect::FeatureDetector>,
    pub threshold: Option<Threshold>,
    /// How texts are flagged OOD, by conformal p-value (instead of `threshold`).
    pub p_decision: PDecision,
    /// `None`: standard output.
    pub output: Option<std::path::PathBuf>,
    pub format: crate::text::score::output::OutputFormat,
    pub batch_size: usize,
    pub max_pending: usize,
    /// `--threads 0`: on the CPU, give libtorch [`default_score_threads`].
    pub default_threads: bool,
    pub device: tch::Device,
    /// Score one shard into a part of `output` ([`score::shard`]; merged by `oe-text merge`).
    pub shard: Option<score::shard::Shard>,
    /// The arithmetic of the model's products.
    pub precision: crate::device::Precision,
}

/// Conformal p-values in `oe-text score` (against the validation scores stored by `calibrate`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum PDecision {
    /// No p-values.
    #[default]
    None,
    /// A `p_value` column, no flags from it.
    Report,
    /// Flag `p_value <= alpha`: in-distribution texts are flagged with probability at most `alpha`.
    Alpha(f64),
    /// Flag by Benjamini–Hochberg at level `q` over all scored texts: the false-discovery rate
    /// among flagged texts is at most `q` (rows are written once every text is scored).
    Fdr(f64),
}

/// What `oe-text score` did.
pub struct ScoreOutcome {
    pub summary: crate::text::score::ScoreSummary,
    /// Where a stored threshold came from (`--threshold auto`).
    pub threshold_note: Option<String>,
    /// The output file, when not standard output.
    pub output: Option<std::path::PathBuf>,
    /// With a shard: the part's rows file, and whether it was already finished (nothing scored).
    pub part: Option<(std::path::PathBuf, bool)>,
}

/// Resolves `--threshold` for a model and score.
pub fn resolve_threshold(
    m: &LoadedModel,
    score: &crate::detect::Score,
    t: Option<Threshold>,
) -> Result<Option<(f64, Option<crate::text::calibrate::Calibration>)>> {
    Ok(match t {
        None => None,
        Some(Threshold::Value(v)) => Some((v, None)),
        Some(Threshold::Auto) => {
            let c = crate::text::calibrate::load(&m.dir, score)?;
            Some((c.threshold, Some(c)))
        }
    })
}

/// libtorch intra-op threads for scoring on the CPU when `--threads` is 0: half the cores (at least
/// one), leaving the rest to the reader and the tokeniser. On 2 cores, libtorch's default (2 threads
/// competing with the reader) measured 12x slower than 1 thread.
pub fn default_score_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// `oe-text score`: loads the model directory and streams the inputs through it, in input order.
pub fn run_score(req: &ScoreRequest) -> Result<ScoreOutcome> {
    let mut m = LoadedModel::load(&req.model_dir, req.device)?;
    m.set_precision(req.precision)?;
    // (The GRU takes its worker threads when it is built: `gru_cpu::adopt_torch_threads`; MiniLM's
    // packed CPU encoder takes libtorch's thread count, every core by default, for its own workers:
    // its inference costs far more than reading and tokenising.)
    let own_workers =
        matches!(m.model, crate::text::models::TextModel::Gru(_)) || m.model.scores_rows_alone();
    if req.default_threads && m.vs.device() == tch::Device::Cpu && !own_workers {
        tch::set_num_threads(default_score_threads() as i32);
    }
    let inputs = if req.inputs.is_empty() {
        vec![std::path::PathBuf::from(score::input::STDIN)]
    } else {
        score::input::expand_inputs_with(&req.inputs, req.input.follow_dir_links)?
    };
    if inputs
        .iter()
        .filter(|p| p.as_os_str() == score::input::STDIN)
        .count()
        > 1
    {
        return Err(OeError::Config("standard input (`-`) given twice".into()));
    }
    // The output must not be one of the inputs (it would replace what is being read).
    if let Some(out) = req.output.as_deref().filter(|p| p.as_os_str() != "-") {
        if let Ok(o) = std::fs::canonicalize(out) {
            if let Some(i) = inputs
                .iter()
                .find(|i| std::fs::canonicalize(i).is_ok_and(|c| c == o))
            {
                return Err(OeError::Config(format!(
                    "{}: the output is also an input ({}); choose another --output",
                    out.display(),
                    i.display()
                )));
            }
        }
    }
    if let Some(d) = req.stored {
        if matches!(req.threshold, Some(Threshold::Auto)) || req.p_decision != PDecision::None {
            return Err(OeError::Config(format!(
                "`oe-text calibrate` stores thresholds and validation scores for logit scores only; \
                 with --score {} give --threshold VALUE (e.g. the operating point of `oe-text eval`)",
                d.name()
            )));
        }
    }
    let threshold = resolve_threshold(&m, &req.score, req.threshold)?;
    let mut threshold_note = match &threshold {
        Some((t, Some(c))) => Some(format!(
            "threshold {} for {} from {} ({} validation texts, {:.1}% kept; {})",
            crate::io::compact_number(*t),
            c.score,
            crate::text::calibrate::paths(&m.dir, &c.score).0.display(),
            c.n_validation,
            c.kept_fraction * 100.0,
            c.split
        )),
        _ => None,
    };
    let conformal = match req.p_decision {
        PDecision::None => None,
        _ => {
            // The calibration `--threshold auto` already read, else read it now.
            let loaded;
            let c = match &threshold {
                Some((_, Some(c))) => c,
                _ => {
                    loaded = crate::text::calibrate::load(&m.dir, &req.score)?;
                    &loaded
                }
            };
            let note = format!(
                "p-values against {} {} validation scores ({}) from {}",
                c.n_validation,
                c.score,
                c.split,
                crate::text::calibrate::paths(&m.dir, &c.score).0.display()
            );
            threshold_note = Some(match threshold_note {
                Some(t) => format!("{t}; {note}"),
                None => note,
            });
            Some(c.conformal(&m.dir)?)
        }
    };
    let opts = score::ScoreOptions {
        score: req.score,
        stored: req.stored,
        threshold: threshold.map(|t| t.0),
        p_values: conformal,
        alpha: match req.p_decision {
            PDecision::Alpha(a) => Some(a),
            _ => None,
        },
        max_batch_rows: req.batch_size,
        max_pending: req.max_pending,
        ..Default::default()
    };
    score::check_stored(&m, &opts)?;
    let cols = score::output::Columns {
        p_value: opts.p_values.is_some(),
        is_ood: opts.threshold.is_some()
            || opts.alpha.is_some()
            || matches!(req.p_decision, PDecision::Fdr(_)),
    };
    if let Some(shard) = req.shard {
        return score_shard(req, &m, &inputs, opts, cols, shard, threshold_note);
    }
    let mut writer = score::output::open_writer(req.output.as_deref(), req.format, cols)?;
    let summary = match req.p_decision {
        PDecision::Fdr(q) => {
            // Benjamini–Hochberg needs every p-value: keep the rows, decide, then write them.
            let mut rows = score::output::Collected::default();
            let mut summary = score::score_stream(&m, &inputs, &req.input, &opts, &mut rows)?;
            let p: Vec<f64> = rows.rows.iter().map(|r| r.p_value.unwrap_or(1.0)).collect();
            let flags = crate::detect::conformal::benjamini_hochberg(&p, q);
            for (r, f) in rows.rows.iter().zip(&flags) {
                writer.write(&r.as_row(Some(*f)))?;
            }
            writer.finish()?;
            summary.counts.flagged_ood = flags.iter().filter(|&&f| f).count() as u64;
            summary.decision = Some(format!("Benjamini-Hochberg, FDR <= {q}"));
            summary
        }
        _ => score::score_stream(&m, &inputs, &req.input, &opts, writer.as_mut())?,
    };
    if let Some(n) = summary.stopped_after {
        return Err(OeError::Interrupted(format!(
            "scoring stopped after {n} records; nothing was written (rerun the command)"
        )));
    }
    Ok(ScoreOutcome {
        summary,
        threshold_note,
        output: req.output.clone(),
        part: None,
    })
}

/// `oe-text score --shard I/N -o OUTPUT`: scores the shard into its part (resuming an interrupted
/// part, keeping a finished one), see [`score::shard`].
fn score_shard(
    req: &ScoreRequest,
    m: &LoadedModel,
    inputs: &[std::path::PathBuf],
    opts: score::ScoreOptions,
    cols: score::output::Columns,
    shard: score::shard::Shard,
    threshold_note: Option<String>,
) -> Result<ScoreOutcome> {
    use score::shard as sh;
    let output = req
        .output
        .as_deref()
        .filter(|p| p.as_os_str() != "-")
        .ok_or_else(|| {
            OeError::Config("--shard needs --output FILE (the merged output's name)".into())
        })?;
    let paths = sh::part_paths(output, shard);
    let dir = sh::parts_dir(output);
    std::fs::create_dir_all(&dir).map_err(|e| OeError::io(&dir, e))?;
    let _lock = rundir::RunLock::acquire_file(&paths.lock, &paths.rows, "oe-text score --shard")?;
    // Any failure from here on is recorded for `merge --status` (a stop request is not a failure).
    let r = score_shard_locked(
        req,
        m,
        inputs,
        opts,
        cols,
        shard,
        threshold_note,
        output,
        paths,
    );
    if let Err(e) = &r {
        if !matches!(e, OeError::Interrupted(_)) {
            let _ = sh::write_failure(output, shard, &crate::error::chain(e));
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn score_shard_locked(
    req: &ScoreRequest,
    m: &LoadedModel,
    inputs: &[std::path::PathBuf],
    mut opts: score::ScoreOptions,
    cols: score::output::Columns,
    shard: score::shard::Shard,
    threshold_note: Option<String>,
    output: &Path,
    paths: score::shard::PartPaths,
) -> Result<ScoreOutcome> {
    use score::shard::{self as sh, PartStart};
    let model_sha256 = crate::datasets::fetch::sha256_file(&m.dir.join(rundir::WEIGHTS_FILE))?;
    let calibration_sha256 = if opts.p_values.is_some() || threshold_note.is_some() {
        let p = crate::text::calibrate::paths(&m.dir, &req.score).0;
        Some(crate::datasets::fetch::sha256_file(&p)?)
    } else {
        None
    };
    let settings = sh::PartSettings {
        score: req
            .stored
            .map_or_else(|| req.score.to_string(), |d| d.name().to_string()),
        threshold: opts.threshold,
        alpha: opts.alpha,
        fdr: match req.p_decision {
            PDecision::Fdr(q) => Some(q),
            _ => None,
        },
        p_values: cols.p_value,
        is_ood: cols.is_ood,
        format: req.format,
        input: serde_json::to_value(&req.input).map_err(|e| OeError::Data(e.to_string()))?,
        calibration_sha256,
        precision: req.precision,
    };
    let prior = match sh::part_start(output, shard, &model_sha256, &settings)? {
        PartStart::Finished(r) => {
            let mut summary = score::ScoreSummary {
                counts: r.counts.clone(),
                sources: r.sources.len(),
                seconds: 0.0,
                lines_per_second: 0.0,
                batches: 0,
                rows_computed: 0,
                free_rows: None,
                mixed_lengths: false,
                threshold: opts.threshold,
                decision: None,
                stopped_after: None,
                owned: Some(r.owned),
                input_digest: Some(r.input_digest.clone()),
                precision_check: None,
            };
            summary.counts.scored = r.rows;
            return Ok(ScoreOutcome {
                summary,
                threshold_note,
                output: None,
                part: Some((paths.rows, true)),
            });
        }
        PartStart::Start(g) => g,
    };
    let (owned_done, rows, bytes) = (prior.owned_done, prior.rows, prior.bytes);
    let sources: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let mut part = sh::PartRows::open(&paths.partial, &sources, m.labels.names(), rows, bytes)?;
    opts.shard = Some(sh::ShardSel {
        shard,
        skip_owned: owned_done,
    });
    let mut summary = score::score_stream(m, inputs, &req.input, &opts, &mut part)?;
    // This shard's counts include those of the runs before a resume.
    summary.counts.truncated_tokens += prior.truncated_tokens;
    summary.counts.skipped_long += prior.skipped_long;
    if let Some(k) = summary.stopped_after {
        part.sync()?;
        sh::write_progress(
            output,
            &sh::PartProgress {
                shard,
                model_sha256,
                settings,
                owned_done: k,
                rows: part.rows,
                bytes: part.bytes,
                truncated_tokens: summary.counts.truncated_tokens,
                skipped_long: summary.counts.skipped_long,
                stopped: crate::io::utc_time(crate::io::unix_now()),
            },
        )?;
        return Err(OeError::Interrupted(format!(
            "shard {shard} stopped after {k} of its records ({} rows in {}); run the same command to resume",
            part.rows,
            paths.partial.display()
        )));
    }
    // `score_stream` finished (synced) the rows file.
    let (rows, bytes) = (part.rows, part.bytes);
    drop(part);
    summary.counts.scored = rows;
    let record = sh::PartRecord {
        shard,
        model_dir: rundir::absolute(&m.dir),
        model_sha256,
        input_digest: summary.input_digest.clone().unwrap_or_default(),
        sources,
        labels: m.labels.names().to_vec(),
        settings,
        records: summary.counts.read,
        owned: summary.owned.unwrap_or(0),
        rows,
        bytes,
        counts: summary.counts.clone(),
        host: rundir::hostname(),
        finished: crate::io::utc_time(crate::io::unix_now()),
    };
    sh::complete_part(output, &record)?;
    Ok(ScoreOutcome {
        summary,
        threshold_note,
        output: None,
        part: Some((paths.rows, false)),
    })
}
