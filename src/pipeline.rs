//! The text pipeline: data → vocabulary → baseline → OE → evaluation, and self-contained model
//! directories that can be evaluated or used for scoring later.
//!
//! A model directory holds `run.json` (everything needed to rebuild the model and its inputs),
//! `vocab.json` (word models) or `tokenizer.json` (pretrained encoders), `model.safetensors` (written once, atomically, when training ends), the training log,
//! and evaluation results under `eval-<score>-<protocol>/`. While training, `checkpoint.safetensors`
//! and `checkpoint.json` are rewritten atomically at the end of every epoch for `--resume`.

use crate::data::{self, TextOptions};
use crate::error::{OeError, Result};
use crate::eval::{self, EvalConfig, EvalReport, OodInput, Scorer};
use crate::models::{ModelConfig, TextModel};
use crate::tokenize::{LabelVocab, TextEncoder};
use crate::train::{self, CheckpointState, EncodedSet, Method, Observer, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// Everything about how a model directory's model was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub tool: String,
    pub in_dataset: String,
    pub text: TextOptions,
    /// In-distribution inputs padded/truncated to exactly this many tokens (20NG: 100).
    pub in_fix_len: Option<usize>,
    pub vocab_max_size: usize,
    pub vocab_size: usize,
    pub vocab_sha256: String,
    /// Class names; index = class id (the reference's frequency order).
    pub labels: Vec<String>,
    pub model: ModelConfig,
    pub method: Method,
    /// Outlier corpus used for OE (none for the baseline).
    pub oe_corpus: Option<String>,
    pub oe_examples: Option<usize>,
    pub train: TrainConfig,
    /// The baseline this model was fine-tuned from (relative path), if any.
    pub init_from: Option<String>,
    pub train_examples: usize,
    pub data_root: PathBuf,
    /// Validation texts held out of the training split (`--holdout`; none: all of train is used,
    /// as the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<crate::scoring::calibrate::Holdout>,
}

/// A model directory, loaded.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub vocab: TextEncoder,
    pub labels: LabelVocab,
    pub vs: nn::VarStore,
    pub model: TextModel,
    /// Feature-space detectors fitted on the training set (`detectors/`), when present.
    pub detectors: Option<crate::detectors::FeatureDetectors>,
    /// Outputs of evaluation batches already run (several scores, one forward pass).
    pub outputs: eval::OutputCache,
}

impl LoadedModel {
    /// Loads `dir/run.json`, `dir/vocab.json` (or `dir/tokenizer.json`) and `dir/model.safetensors`
    /// onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg_path = dir.join("run.json");
        let bytes = std::fs::read(&cfg_path).map_err(|e| {
            OeError::Data(format!(
                "{}: not a model directory ({e}); train one with `oe-text train`",
                cfg_path.display()
            ))
        })?;
        let config: RunConfig = serde_json::from_slice(&bytes)
            .map_err(|e| OeError::parse(&cfg_path, e.line(), e.to_string()))?;
        let vocab = TextEncoder::load_dir(dir, config.model.max_len())?;
        if vocab.sha256() != config.vocab_sha256 {
            return Err(OeError::Data(format!(
                "{}: vocabulary hash differs from run.json; the directory was modified",
                dir.display()
            )));
        }
        let labels = LabelVocab::from_names(config.labels.clone())?;
        let mut vs = nn::VarStore::new(device);
        let model = config
            .model
            .build(&vs.root(), vocab.len() as i64, labels.len() as i64)?;
        train::load_weights(&mut vs, &dir.join("model.safetensors"))?;
        let det_dir = dir.join("detectors");
        let detectors = if det_dir.is_dir() {
            Some(crate::detectors::FeatureDetectors::load(&det_dir, device)?)
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            vocab,
            labels,
            vs,
            model,
            detectors,
            outputs: Default::default(),
        })
    }

    pub fn scorer(&self) -> Scorer<'_> {
        Scorer {
            model: &self.model,
            device: self.vs.device(),
            in_fix_len: self.config.in_fix_len,
            max_len: self.config.model.max_len(),
            detectors: self.detectors.as_ref(),
            cache: Some(&self.outputs),
        }
    }

    /// Fits Mahalanobis and k-NN detectors on the penultimate features of the in-distribution
    /// training set (streamed in batches, each text computed without padding), stores them in
    /// `dir/detectors/`, and keeps them for scoring.
    pub fn fit_detectors(&mut self, train: &data::Labelled) -> Result<()> {
        let enc = encode_labelled(&self.vocab, &self.labels, train, self.config.in_fix_len)?;
        let (feats, _) = self
            .scorer()
            .outputs_bucketed(&enc.ids, 256, self.config.in_fix_len);
        let labels = tch::Tensor::from_slice(&enc.labels);
        let n = enc.labels.len() as i64;
        let step = 1024i64;
        let batches = (0..n).step_by(step as usize).map(|s| {
            let len = step.min(n - s);
            (feats.narrow(0, s, len), labels.narrow(0, s, len))
        });
        let det = crate::detectors::FeatureDetectors::fit(
            batches,
            self.labels.len(),
            &Default::default(),
            &Default::default(),
        )?;
        det.save(&self.dir.join("detectors"))?;
        self.detectors = Some(det);
        Ok(())
    }
}

/// The default in-distribution fixed length: 20NG documents are cut and padded to 100 tokens.
pub fn default_fix_len(in_dataset: &str, text: &TextOptions) -> Option<usize> {
    if in_dataset.starts_with("20ng") {
        Some(text.max_tokens.unwrap_or(100))
    } else {
        None
    }
}

/// Tokens → ids for a labelled split.
pub fn encode_labelled(
    vocab: &TextEncoder,
    labels: &LabelVocab,
    set: &data::Labelled,
    fix_len: Option<usize>,
) -> Result<EncodedSet> {
    let ids = eval::encode_all(&set.texts, |t| vocab.encode(t));
    let labels = labels.indices(set.labels.iter().map(String::as_str))?;
    Ok(EncodedSet {
        ids,
        labels,
        fix_len,
    })
}

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
    pub vocab_max_size: usize,
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

/// Progress for the whole pipeline: training events plus short status lines.
pub trait PipelineObserver: Observer {
    fn status(&mut self, _msg: &str) {}
}

impl PipelineObserver for train::Silent {}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| OeError::Data(format!("{}: {e}", path.display())))?;
    crate::io::write_atomic(path, &bytes)
}

/// `Ok(true)` when `dir` already holds finished weights and `resume` allows keeping them; an error
/// when they exist without `resume`; `Ok(false)` when the phase still has to be trained.
pub(crate) fn already_trained(
    dir: &Path,
    phase: &str,
    resume: bool,
    obs: &mut dyn PipelineObserver,
) -> Result<bool> {
    let final_path = dir.join("model.safetensors");
    if !final_path.exists() {
        return Ok(false);
    }
    if resume {
        obs.status(&format!(
            "{phase}: already trained ({})",
            final_path.display()
        ));
        return Ok(true);
    }
    Err(OeError::Config(format!(
        "{} exists; use --resume to continue that run or choose another --out",
        final_path.display()
    )))
}

/// The state of an interrupted run in `dir` (`checkpoint.json` + `checkpoint.safetensors`), if
/// any; an error when one exists without `resume`. The caller loads the weights.
pub(crate) fn interrupted_state(dir: &Path, resume: bool) -> Result<Option<CheckpointState>> {
    let ckpt_w = dir.join("checkpoint.safetensors");
    let ckpt_j = dir.join("checkpoint.json");
    if !(ckpt_j.exists() && ckpt_w.exists()) {
        return Ok(None);
    }
    if !resume {
        return Err(OeError::Config(format!(
            "{} holds an interrupted run; pass --resume to continue it",
            dir.display()
        )));
    }
    let bytes = std::fs::read(&ckpt_j).map_err(|e| OeError::io(&ckpt_j, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| OeError::parse(&ckpt_j, e.line(), e.to_string()))
}

/// Trains (or resumes) one model directory. Returns when `model.safetensors` exists.
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
    obs: &mut dyn PipelineObserver,
) -> Result<()> {
    if already_trained(dir, phase, resume, obs)? {
        return Ok(());
    }
    let final_path = dir.join("model.safetensors");
    let ckpt_w = dir.join("checkpoint.safetensors");
    let ckpt_j = dir.join("checkpoint.json");
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
            if let Some(e) = tensors.get(train::CHECKPOINT_EPOCHS) {
                let e = e.int64_value(&[0]);
                if e != state.epochs_done as i64 {
                    return Err(OeError::Data(format!(
                        "{} is from epoch {e} but {} says {}: the run was interrupted while \
                         saving; delete both to restart this phase",
                        ckpt_w.display(),
                        ckpt_j.display(),
                        state.epochs_done
                    )));
                }
            }
            obs.status(&format!(
                "{phase}: resuming after epoch {} of {} (weights and Adam state from {})",
                state.epochs_done,
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
    write_json(&dir.join("run.json"), cfg)?;
    vocab.save_dir(dir)?;
    let method = cfg.method;
    let mut save = |s: &CheckpointState, opt: &crate::optim::Adam| -> Result<()> {
        train::save_checkpoint(&vs, opt, s.epochs_done, &ckpt_w)?;
        write_json(&ckpt_j, s)
    };
    let state = train::train_phase(
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
    write_json(&dir.join("train_log.json"), &state)?;
    train::save_weights(&vs, &final_path)?;
    let _ = std::fs::remove_file(&ckpt_w);
    let _ = std::fs::remove_file(&ckpt_j);
    Ok(())
}

/// Loads the OOD sets named (or all present) with the paper's preprocessing.
pub fn load_ood_inputs(
    names: Option<&[String]>,
    root: &Path,
    text: &TextOptions,
) -> Result<Vec<OodInput>> {
    let names: Vec<String> = match names {
        Some(n) => n.to_vec(),
        None => data::available_ood_sets(root),
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
    };
    names
        .iter()
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

/// Evaluates a loaded model on its in-distribution test set and the given OOD inputs, and writes
/// the results into its directory.
pub fn evaluate_model(
    m: &LoadedModel,
    test: &data::Labelled,
    ood: &[OodInput],
    cfg: &EvalConfig,
    method: &str,
) -> Result<(EvalReport, PathBuf)> {
    let enc = encode_labelled(&m.vocab, &m.labels, test, m.config.in_fix_len)?;
    let vocab = &m.vocab;
    let report = eval::evaluate(
        &m.scorer(),
        &enc.ids,
        &enc.labels,
        ood,
        |t| vocab.encode(t),
        cfg,
    )?;
    let meta = crate::report::RunMeta {
        in_dataset: m.config.in_dataset.clone(),
        method: method.to_string(),
        model: m.config.model.name().to_string(),
        seed: m.config.train.seed,
        model_dir: m.dir.display().to_string(),
    };
    let out = crate::report::write_eval(&m.dir, &report, &meta)?;
    Ok((report, out))
}

/// Stores the deployment threshold of a freshly trained model (`calibration-<score>.*`) from the
/// held-out validation texts, else the dev split; says so when there is neither.
fn calibrate_after_training(
    m: &LoadedModel,
    heldout: Option<&data::Labelled>,
    dev: Option<&data::Labelled>,
    score: crate::score::Score,
    tpr: f64,
) -> Result<String> {
    use crate::scoring::calibrate::{calibrate, Validation};
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
            note: format!("{} dev split, not used in training", m.config.in_dataset),
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
        c.threshold,
        c.kept_fraction * 100.0,
        c.n_validation,
        c.split
    ))
}

/// `oe-text train`: baseline, then OE (fine-tune or from scratch), then evaluation of both.
pub fn run_train(req: &TrainRequest, obs: &mut dyn PipelineObserver) -> Result<TrainOutcome> {
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
            let (ind, val, h) = crate::scoring::calibrate::hold_out(ind, f, req.baseline.seed)?;
            (ind, Some(val), Some(h))
        }
        None => (ind, None, None),
    };
    let vocab = match &req.model {
        ModelConfig::Pretrained(p) => TextEncoder::subword_from_file(
            &p.source.join(crate::tokenize::encoder::TOKENIZER_FILE),
            Some(p.head.max_len),
        )?,
        _ => TextEncoder::Word(ind.build_vocab(req.vocab_max_size)),
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
            Some(eval::encode_all(&sents, |t| vocab.encode(t)))
        }
        None => None,
    };
    let n_prepared = ind.train.len() + ind.test.len() + oe_ids.as_ref().map_or(0, |o| o.len());
    timings.push(timing("data preparation", t_data, n_prepared));
    let base_cfg = RunConfig {
        tool: format!("oe {}", env!("CARGO_PKG_VERSION")),
        in_dataset: req.in_dataset.clone(),
        text: req.text.clone(),
        in_fix_len: fix_len,
        vocab_max_size: req.vocab_max_size,
        vocab_size: vocab.len(),
        vocab_sha256: vocab.sha256(),
        labels: labels.names().to_vec(),
        model: req.model.clone(),
        method: Method::Baseline,
        oe_corpus: None,
        oe_examples: None,
        train: req.baseline.clone(),
        init_from: None,
        train_examples: ind.train.len(),
        data_root: req.data_root.clone(),
        holdout: holdout.clone(),
    };
    let mut dirs = Vec::new();
    let base_dir = req.out_dir.join("baseline");
    let oe_dir_name = req.oe_dir.as_deref().unwrap_or("oe");
    let need_baseline = req.oe_corpus.is_none() || req.oe_method == Method::OeFinetune;
    if need_baseline {
        let t0 = std::time::Instant::now();
        train_model_dir(
            &base_dir, "baseline", &base_cfg, &vocab, &train_set, None, None, req.resume,
            req.device, obs,
        )?;
        dirs.push(("baseline".to_string(), base_dir.clone()));
        timings.push(timing(
            "baseline training",
            t0,
            ind.train.len() * req.baseline.epochs,
        ));
    }
    if let (Some(corpus), Some(oe_ids)) = (&req.oe_corpus, &oe_ids) {
        let oe_dir = req.out_dir.join(oe_dir_name);
        let oe_cfg = RunConfig {
            method: req.oe_method,
            oe_corpus: Some(corpus.clone()),
            oe_examples: Some(oe_ids.len()),
            train: req.oe.clone(),
            init_from: (req.oe_method == Method::OeFinetune).then(|| "../baseline".to_string()),
            ..base_cfg.clone()
        };
        let init =
            (req.oe_method == Method::OeFinetune).then(|| base_dir.join("model.safetensors"));
        let t0 = std::time::Instant::now();
        train_model_dir(
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
        )?;
        dirs.push((oe_dir_name.to_string(), oe_dir));
        timings.push(timing(
            req.oe_method.name(),
            t0,
            ind.train.len() * req.oe.epochs,
        ));
    }
    // One timings file per OE variant, so runs sharing a baseline do not overwrite each other's.
    let timings_file = match &req.oe_dir {
        Some(d) => format!("timings-{d}.json"),
        None => "timings.json".to_string(),
    };
    let mut reports = Vec::new();
    if !req.evaluate {
        write_json(&req.out_dir.join(&timings_file), &timings)?;
        return Ok(TrainOutcome {
            dirs,
            reports,
            table: String::new(),
            timings,
        });
    }
    obs.status("evaluating");
    let t_eval = std::time::Instant::now();
    let ood = load_ood_inputs(req.ood_sets.as_deref(), &req.data_root, &req.text)?;
    for (name, dir) in &dirs {
        let mut m = LoadedModel::load(dir, req.device)?;
        if m.detectors.is_none() {
            // Fitted now so that later evaluations and scoring can use them; a training set too
            // small for them (k-NN needs k examples) only matters when this evaluation uses one.
            if let Err(e) = m.fit_detectors(&ind.train) {
                if req.eval.detector.is_some() {
                    return Err(e);
                }
                obs.status(&format!("{name}: feature detectors not fitted: {e}"));
            }
        }
        let (r, out) = evaluate_model(&m, &ind.test, &ood, &req.eval, name)?;
        obs.status(&format!("{name}: results in {}", out.display()));
        reports.push((name.clone(), r));
        if let Some(tpr) = req.calibrate_tpr {
            obs.status(&calibrate_after_training(
                &m,
                heldout.as_ref(),
                ind.dev.as_ref(),
                req.eval.score,
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
    timings.push(timing("evaluation", t_eval, scored));
    for t in &timings {
        obs.status(&format!(
            "time: {:<20} {:8.1} s  {:10.0} examples/s",
            t.phase, t.seconds, t.examples_per_second
        ));
    }
    write_json(&req.out_dir.join(&timings_file), &timings)?;
    let refs: Vec<(&str, &EvalReport)> = reports.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let table = crate::report::comparison_table(&req.in_dataset, &refs);
    Ok(TrainOutcome {
        dirs,
        reports,
        table,
        timings,
    })
}

/// Builds a GRU from released `.safetensors` weights with the vocabulary rebuilt from the training
/// text (the paper's released checkpoints), as a model directory under `out_dir`.
pub fn import_weights(
    weights: &Path,
    in_dataset: &str,
    data_root: &Path,
    text: &TextOptions,
    out_dir: &Path,
    device: Device,
) -> Result<(LoadedModel, data::InDistribution)> {
    let ind = data::load_in_distribution(in_dataset, data_root, text)?;
    let vocab = ind.build_vocab(10_000);
    let labels = ind.label_vocab();
    let model = ModelConfig::Gru(Default::default());
    let cfg = RunConfig {
        tool: format!("oe {}", env!("CARGO_PKG_VERSION")),
        in_dataset: in_dataset.to_string(),
        text: text.clone(),
        in_fix_len: default_fix_len(in_dataset, text),
        vocab_max_size: 10_000,
        vocab_size: vocab.len(),
        vocab_sha256: vocab.sha256(),
        labels: labels.names().to_vec(),
        model,
        method: Method::Baseline,
        oe_corpus: None,
        oe_examples: None,
        train: TrainConfig::default(),
        init_from: Some(weights.display().to_string()),
        train_examples: ind.train.len(),
        data_root: data_root.to_path_buf(),
        holdout: None,
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
    write_json(&out_dir.join("run.json"), &cfg)?;
    TextEncoder::Word(vocab).save_dir(out_dir)?;
    let bytes = std::fs::read(weights).map_err(|e| OeError::io(weights, e))?;
    crate::io::write_atomic(&out_dir.join("model.safetensors"), &bytes)?;
    let m = LoadedModel::load(out_dir, device)?;
    Ok((m, ind))
}
