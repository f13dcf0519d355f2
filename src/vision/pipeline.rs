//! The vision pipeline: data → baseline → OE (fine-tune or from scratch) → evaluation, with model
//! directories by the shared protocol ([`crate::rundir`]): `run.json`, `model.safetensors` written
//! once at the end, `checkpoint.safetensors` + `momentum.safetensors` + `checkpoint.json` rewritten
//! atomically after every epoch for `--resume`, `train_log.json`, and `eval-<score>-<protocol>/`.

use super::augment::Preset;
use super::data::{self, ImageSet, ImageSource, InOptions};
use super::model_dir::{VisionModel, VisionRunConfig, MOMENTUM_FILE};
use super::models::{WideResNet, WrnConfig};
use super::protocol::{OodData, OodSet, VisionReport};
use super::synthetic::{self, Synthetic};
use super::train::{self as vtrain, OeOrder, PhaseData, Sgd, VisionTrainConfig};
use crate::error::{OeError, Result};
use crate::eval::{CalibrationSummary, EvalConfig, EvalReport};
use crate::rundir::{self, already_trained, interrupted_state, write_json, RunHeader};
use crate::train::{self, CheckpointState, Method, MethodLabel, Observer};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// The paper's settings (README, "The paper's protocol: vision") for a preset and method.
pub fn paper_defaults(preset: Preset, method: Method) -> VisionTrainConfig {
    let (epochs, lr, oe_batch_size) = crate::paper::defaults::vision_schedule(
        preset == Preset::Svhn,
        preset == Preset::TinyImagenet,
        method == Method::OeFinetune,
    );
    VisionTrainConfig {
        epochs,
        lr,
        oe_batch_size,
        ..VisionTrainConfig::default()
    }
}

/// The paper's architecture for a preset.
pub fn paper_model(preset: Preset, classes: usize) -> WrnConfig {
    match preset {
        Preset::Svhn => WrnConfig::wrn_16_4(classes as i64),
        _ => WrnConfig::wrn_40_2(classes as i64),
    }
}

/// A training request (`oe-vision train`).
#[derive(Clone, Debug)]
pub struct VisionTrainRequest {
    pub in_dataset: String,
    /// Its short name in tables and results (default: `in_dataset`).
    pub in_label: Option<String>,
    pub oe_source: Option<String>,
    pub oe_method: Method,
    pub data_root: PathBuf,
    pub out_dir: PathBuf,
    pub in_options: InOptions,
    /// `None`: the paper's (WRN-40-2, or WRN-16-4 for SVHN).
    pub model: Option<WrnConfig>,
    pub baseline: VisionTrainConfig,
    pub oe: VisionTrainConfig,
    pub eval: EvalConfig,
    pub ood_sets: Option<Vec<String>>,
    /// Hold out the validation split (README, "The paper's protocol: vision") for temperature tuning.
    pub hold_out: bool,
    pub calibrate: bool,
    /// Use only the first N training images (smoke tests).
    pub max_train: Option<usize>,
    /// Use only the first N test images (smoke tests).
    pub max_test: Option<usize>,
    pub resume: bool,
    pub device: Device,
}

pub struct VisionOutcome {
    pub dirs: Vec<(String, PathBuf)>,
    pub reports: Vec<(String, VisionReport)>,
    pub table: String,
}

/// Trains (or resumes) one model directory; returns when `model.safetensors` exists.
#[allow(clippy::too_many_arguments)]
fn train_model_dir(
    dir: &Path,
    phase: &str,
    cfg: &VisionRunConfig,
    data: &PhaseData,
    init_weights: Option<&Path>,
    resume: bool,
    device: Device,
    obs: &mut dyn Observer,
) -> Result<()> {
    if resume {
        rundir::check_same_config(dir, cfg, "oe-vision train")?;
    }
    if already_trained(dir, phase, resume, obs)? {
        return Ok(());
    }
    let ckpt_w = dir.join(rundir::CHECKPOINT_WEIGHTS);
    let ckpt_m = dir.join(MOMENTUM_FILE);
    let ckpt_j = dir.join(rundir::CHECKPOINT_STATE);
    train::seed_everything(cfg.train.seed);
    let mut vs = nn::VarStore::new(device);
    let model = WideResNet::new(&vs.root(), &cfg.model)?;
    let resumed = interrupted_state(dir, resume)?;
    if resumed.is_some() {
        train::load_weights(&mut vs, &ckpt_w)?;
    } else if let Some(w) = init_weights {
        train::load_weights(&mut vs, w)?;
    }
    let mut sgd = Sgd::new(
        &vs,
        cfg.train.momentum,
        cfg.train.nesterov,
        cfg.train.weight_decay,
    );
    let state = match resumed {
        Some(state) => {
            sgd.load(&ckpt_m)?;
            obs.status(&format!(
                "{phase}: resuming after epoch {} step {} of {} epochs (weights and SGD momentum restored)",
                state.epochs_done,
                state.steps_done(),
                cfg.train.epochs
            ));
            state
        }
        None => CheckpointState::default(),
    };
    std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
    rundir::write_run(dir, cfg)?;
    let mut save = |s: &CheckpointState, sgd: &Sgd| -> Result<()> {
        train::save_weights(&vs, &ckpt_w)?;
        sgd.save(&ckpt_m)?;
        write_json(&ckpt_j, s)
    };
    let state = vtrain::train_phase(
        phase,
        cfg.header.method,
        &model,
        &mut sgd,
        data,
        &cfg.train,
        state,
        obs,
        &mut save,
    )?;
    rundir::finish_phase(
        dir,
        &state,
        |p| train::save_weights(&vs, p),
        &[MOMENTUM_FILE],
    )
}

/// Builds the OOD sets: synthetic ones (generated, `(n_in/ratio)·repeats` images, seeded) and real
/// ones found under the root. `names = None`: the paper's list for the dataset, skipping real sets
/// whose files are absent (with a status line).
#[allow(clippy::too_many_arguments)]
pub fn build_ood_sets(
    names: Option<&[String]>,
    in_dataset: &str,
    root: &Path,
    preset: Preset,
    image_size: usize,
    n_in: usize,
    cfg: &EvalConfig,
    obs: &mut dyn Observer,
) -> Result<Vec<OodSet>> {
    let explicit = names.is_some();
    let names: Vec<String> = match names {
        Some(n) => n.to_vec(),
        None => data::paper_ood_sets(in_dataset)
            .into_iter()
            .map(String::from)
            .collect(),
    };
    let mut out = Vec::new();
    for n in &names {
        if let Some(kind) = Synthetic::parse(n) {
            let count = (n_in / cfg.id_per_ood.max(1)).max(1) * cfg.repeats;
            let seed = crate::eval::set_seed(cfg.seed, n);
            let x = synthetic::generate(kind, count, image_size, preset.unit_range(), seed);
            out.push(OodSet {
                name: kind.name(preset.unit_range()).to_string(),
                data: OodData::Inputs(x),
            });
            continue;
        }
        if n == in_dataset {
            continue;
        }
        // `NAME=SPEC`: a short name for a path in tables and results.
        let (label, spec) = data::split_label(n);
        let label = label.map_or_else(|| n.clone(), str::to_string);
        match data::load_ood_source(spec, root, image_size)? {
            Some(src) => out.push(OodSet {
                name: label,
                data: OodData::Images(src),
            }),
            None if explicit => {
                return Err(OeError::Data(format!(
                    "OOD set `{n}`: files not found under {} (see `oe-vision data show {n}`)",
                    root.display()
                )))
            }
            None => obs.status(&format!(
                "OOD set {n}: not under {}, skipped",
                root.display()
            )),
        }
    }
    if out.is_empty() {
        return Err(OeError::Data("no OOD sets to evaluate".into()));
    }
    Ok(out)
}

/// Evaluates a loaded model and writes its results into its directory.
pub fn evaluate_model(
    m: &VisionModel,
    test: &ImageSet,
    validation: Option<&ImageSet>,
    ood: &[OodSet],
    cfg: &EvalConfig,
    method: MethodLabel,
    calibrate: bool,
) -> Result<(VisionReport, PathBuf)> {
    let report = super::protocol::evaluate(
        &m.scorer(cfg.batch_size),
        test,
        ood,
        cfg,
        validation,
        calibrate,
    )?;
    let meta = crate::results::RunMeta {
        in_dataset: m.config.in_name().to_string(),
        method,
        model: m.config.model.name(),
        seed: m.config.train.seed,
        model_dir: m.dir.display().to_string(),
        paper: crate::paper::Table::Table7,
    };
    let out = crate::results::write_eval(
        &m.dir,
        &report.detection,
        report.calibration.as_ref(),
        &meta,
    )?;
    Ok((report, out))
}

/// Splits off the validation images when requested; returns `(train, validation)`.
pub fn split_validation(
    name: &str,
    train: ImageSet,
    hold_out: bool,
) -> (ImageSet, Option<ImageSet>) {
    if !hold_out {
        return (train, None);
    }
    let val_idx = data::validation_indices(name, train.len());
    let mut is_val = vec![false; train.len()];
    for &i in &val_idx {
        is_val[i] = true;
    }
    let keep: Vec<usize> = (0..train.len()).filter(|&i| !is_val[i]).collect();
    (train.subset(&keep), Some(train.subset(&val_idx)))
}

/// At most `n` images of `set`, drawn by a seed-0 permutation and kept in file order (folders are
/// sorted by class, so the first `n` would be one class).
pub fn sample(set: &ImageSet, n: usize) -> ImageSet {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if n >= set.len() {
        return set.clone();
    }
    let mut idx: Vec<usize> = (0..set.len()).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    idx.truncate(n);
    idx.sort_unstable();
    set.subset(&idx)
}

/// `oe-vision train`.
pub fn run_train(req: &VisionTrainRequest, obs: &mut dyn Observer) -> Result<VisionOutcome> {
    obs.status(&format!(
        "loading {} from {}",
        req.in_dataset,
        req.data_root.display()
    ));
    let mut ind = data::load_in_distribution(&req.in_dataset, &req.data_root, &req.in_options)?;
    if let Some(m) = req.max_train {
        ind.train = sample(&ind.train, m);
    }
    if let Some(m) = req.max_test {
        ind.test = sample(&ind.test, m);
    }
    let preset = ind.preset;
    let size = ind.train.height;
    let classes = ind.train.classes.clone();
    let (train_set, val_set) = split_validation(
        &req.in_dataset,
        std::mem::take(&mut ind.train),
        req.hold_out,
    );
    obs.status(&format!(
        "{}: {} train / {} held out / {} test images ({size}x{size}), {} classes",
        req.in_dataset,
        train_set.len(),
        val_set.as_ref().map_or(0, |v| v.len()),
        ind.test.len(),
        classes.len()
    ));
    let model = match &req.model {
        Some(m) => WrnConfig {
            num_classes: classes.len() as i64,
            ..m.clone()
        },
        None => paper_model(preset, classes.len()),
    };
    let oe_src: Option<Box<dyn ImageSource>> = match &req.oe_source {
        Some(s) => {
            let src = data::load_oe_source(s, &req.data_root, size)?;
            obs.status(&format!("outliers {s}: {} images", src.len()));
            Some(src)
        }
        None => None,
    };
    // Every OOD set is resolved before any training, so a typo costs nothing.
    let ood = build_ood_sets(
        req.ood_sets.as_deref(),
        &req.in_dataset,
        &req.data_root,
        preset,
        size,
        ind.test.len(),
        &req.eval,
        obs,
    )?;
    // Data first, then the run directory: a missing dataset or a typo leaves nothing behind.
    let _lock = rundir::RunLock::acquire(&req.out_dir, "oe-vision train")?;
    if let Some(src) = &oe_src {
        let steps = train_set.len().div_ceil(req.oe.batch_size.max(1));
        let oe_steps = src.len().div_ceil(req.oe.oe_batch_size.max(1));
        if req.oe.pairing == crate::train::Pairing::Truncate && oe_steps < steps {
            obs.warning(&format!(
                "the {} outlier images last {oe_steps} of the {steps} steps of an epoch \
                 (--pairing truncate ends the epoch there, as the reference does); \
                 --pairing cycle pairs every in-distribution batch",
                src.len()
            ));
        }
    }
    let base_cfg = VisionRunConfig {
        header: RunHeader {
            tool: RunHeader::tool(),
            in_dataset: data::absolute_spec(&req.in_dataset),
            method: Method::Baseline,
            init_from: None,
            train_examples: train_set.len(),
            data_root: rundir::absolute(&req.data_root),
            data_files: Vec::new(),
        },
        preset,
        image_size: size,
        classes: classes.clone(),
        model,
        oe_source: None,
        oe_images: None,
        train: req.baseline.clone(),
        validation_examples: val_set.as_ref().map_or(0, |v| v.len()),
        split_seed: req.in_options.split_seed,
        in_label: req.in_label.clone(),
    };
    let mut dirs = Vec::new();
    let base_dir = req.out_dir.join("baseline");
    let need_baseline = req.oe_source.is_none() || req.oe_method == Method::OeFinetune;
    if need_baseline {
        let data = PhaseData {
            train: &train_set,
            train_aug: preset.train_aug(),
            oe: None,
        };
        train_model_dir(
            &base_dir, "baseline", &base_cfg, &data, None, req.resume, req.device, obs,
        )?;
        dirs.push(("baseline".to_string(), base_dir.clone()));
    }
    if let (Some(name), Some(src)) = (&req.oe_source, &oe_src) {
        let oe_dir = req.out_dir.join("oe");
        let cfg = VisionRunConfig {
            header: RunHeader {
                method: req.oe_method,
                init_from: (req.oe_method == Method::OeFinetune).then(|| "../baseline".to_string()),
                ..base_cfg.header.clone()
            },
            oe_source: Some(name.clone()),
            oe_images: Some(src.len()),
            train: req.oe.clone(),
            ..base_cfg.clone()
        };
        let data = PhaseData {
            train: &train_set,
            train_aug: preset.train_aug(),
            oe: Some((src.as_ref(), preset.oe_aug())),
        };
        let init =
            (req.oe_method == Method::OeFinetune).then(|| base_dir.join("model.safetensors"));
        train_model_dir(
            &oe_dir,
            req.oe_method.name(),
            &cfg,
            &data,
            init.as_deref(),
            req.resume,
            req.device,
            obs,
        )?;
        dirs.push(("oe".to_string(), oe_dir));
    }
    obs.status("evaluating");
    let mut reports = Vec::new();
    for (name, dir) in &dirs {
        let m = VisionModel::load(dir, req.device)?;
        let (r, out) = evaluate_model(
            &m,
            &ind.test,
            val_set.as_ref(),
            &ood,
            &req.eval,
            m.config.method_label(),
            req.calibrate,
        )?;
        if let Some(why) = &r.calibration_skipped {
            obs.warning(&format!("{name}: {why}"));
        }
        obs.status(&format!("{name}: results in {}", out.display()));
        reports.push((name.clone(), r));
    }
    let table = comparison_table(req.in_label.as_deref().unwrap_or(&req.in_dataset), &reports);
    Ok(VisionOutcome {
        dirs,
        reports,
        table,
    })
}

/// The vision wing's terminal table for named reports ([`crate::results::vision_comparison_table`]).
pub fn comparison_table(in_dataset: &str, reports: &[(String, VisionReport)]) -> String {
    let refs: Vec<(&str, &EvalReport, Option<&CalibrationSummary>)> = reports
        .iter()
        .map(|(n, r)| (n.as_str(), &r.detection, r.calibration.as_ref()))
        .collect();
    crate::results::vision_comparison_table(in_dataset, &refs)
}

/// A validated `oe-vision eval` request.
#[derive(Clone, Debug)]
pub struct VisionEvalRequest {
    /// A model directory written by `oe-vision train`.
    pub model_dir: PathBuf,
    /// The label in tables and results (default: the model directory's own, from `run.json`).
    pub method: Option<MethodLabel>,
    /// `None`: the model directory's recorded data root.
    pub data_root: Option<PathBuf>,
    pub eval: EvalConfig,
    /// OOD sets (`None`: the paper's list for the dataset, those present).
    pub ood_sets: Option<Vec<String>>,
    /// Use at most this many test images (seeded sample).
    pub max_test: Option<usize>,
    /// Tune a temperature on the held-out split (when the model has one) and report calibration.
    pub calibrate: bool,
    pub device: Device,
}

/// What an evaluation produced.
pub struct VisionEvalOutcome {
    pub report: VisionReport,
    pub table: String,
    pub results_dir: PathBuf,
}

/// `oe-vision eval`: loads the model directory and its test (and held-out) images, builds the OOD
/// sets, evaluates, and writes the results into the model directory.
pub fn run_eval(req: &VisionEvalRequest, obs: &mut dyn Observer) -> Result<VisionEvalOutcome> {
    let m = VisionModel::load(&req.model_dir, req.device)?;
    let in_dataset = rundir::resolve_recorded_dataset(&m.config.header.in_dataset, &m.dir);
    let data_root = req
        .data_root
        .clone()
        .unwrap_or_else(|| rundir::resolve_recorded(&m.config.header.data_root, &m.dir));
    obs.status(&format!(
        "loading {in_dataset} from {}",
        data_root.display()
    ));
    let opts = InOptions {
        svhn_extra: false,
        size: Some(m.config.image_size),
        split_seed: m.config.split_seed,
    };
    let ind = data::load_in_distribution(&in_dataset, &data_root, &opts)?;
    let mut test = ind.test;
    if let Some(n) = req.max_test {
        test = sample(&test, n);
    }
    let val = (m.config.validation_examples > 0).then(|| {
        let idx = data::validation_indices(&in_dataset, ind.train.len());
        ind.train.subset(&idx)
    });
    let method = req.method.unwrap_or_else(|| m.config.method_label());
    let ood = build_ood_sets(
        req.ood_sets.as_deref(),
        &in_dataset,
        &data_root,
        m.config.preset,
        m.config.image_size,
        test.len(),
        &req.eval,
        obs,
    )?;
    let (report, results_dir) = evaluate_model(
        &m,
        &test,
        val.as_ref(),
        &ood,
        &req.eval,
        method,
        req.calibrate,
    )?;
    if let Some(why) = &report.calibration_skipped {
        obs.warning(why);
    }
    let table = crate::results::vision_comparison_table(
        m.config.in_name(),
        &[(
            method.name(),
            &report.detection,
            report.calibration.as_ref(),
        )],
    );
    Ok(VisionEvalOutcome {
        report,
        table,
        results_dir,
    })
}

/// The OE ordering the reference uses for a source spec: contiguous blocks for the 80M `.bin` and
/// the 300K `.npy`, shuffling for folders.
pub fn default_oe_order(spec: &str) -> OeOrder {
    let l = spec.to_ascii_lowercase();
    if matches!(
        l.as_str(),
        "tiny-images" | "tinyimages" | "80m" | "300k" | "300k-random-images"
    ) || l.ends_with(".bin")
        || l.ends_with(".npy")
    {
        OeOrder::Offset
    } else {
        OeOrder::Shuffle
    }
}
