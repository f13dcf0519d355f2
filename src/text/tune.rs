//! `oe-text tune`: choosing the stored detectors' hyper-parameters on validation data only.
//!
//! For a model directory, every candidate setting of every stored detector is fitted on the
//! in-distribution **training** features and scored on the in-distribution **dev** split and a
//! **validation OOD set** (CLINC150's out-of-scope validation queries, or a user file). The
//! candidate with the highest validation AUROC (OOD positive; ties: the first in grid order) is
//! kept. The grids:
//!
//! | detector    | hyper-parameters                                                        |
//! |-------------|-------------------------------------------------------------------------|
//! | mahalanobis | feature source (pretrained encoders: every layer's mean / `[CLS]`, the layer average) |
//! | rmd         | feature source                                                          |
//! | knn         | feature source × k ∈ {1, 5, 10, 20, 50, 100, 200} (k ≤ training texts)  |
//! | vim         | principal dimension ∈ {d/4, d/2, 3d/4}                                  |
//! | react       | clipping percentile ∈ {80, 85, 90, 95, 99}                              |
//! | odin        | temperature ∈ {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}                |
//!
//! The chosen settings are refitted on the training features and stored in `detectors/`
//! (`detectors.json` records them); `detectors/tuning.json` records every candidate's validation
//! AUROC, the validation sets and the files read. `eval`, `compare` and `score` then use the tuned
//! detectors. No OOD test set is loaded: the request names only the validation set.

use crate::detect::feature::{DetectorSettings, FeatureDetectors, Knn, KnnConfig, TrainFeatures};
use crate::detect::fitted::{odin, React, Rmd, Vim};
use crate::detect::{FeatureDetector, FeatureSource};
use crate::error::{OeError, Result};
use crate::metrics::ranking::Ranking;
use crate::metrics::Positive;
use crate::text::data::{self, TextOptions};
use crate::text::model_dir::{encode_labelled, LoadedModel};
use crate::text::pipeline::{self, ValidationData};
use crate::text::protocol::encode_all;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// File name of the tuning record inside `detectors/`.
pub const TUNING_FILE: &str = "tuning.json";

/// What to tune.
#[derive(Clone, Debug)]
pub struct TuneRequest {
    pub model_dir: PathBuf,
    /// The data root given on the command line (`None`: the one recorded in `run.json`).
    pub data_root: Option<PathBuf>,
    /// The validation OOD set (`None`: the dataset's own, e.g. `clinc150-oos-val`).
    pub val_ood: Option<String>,
    /// The detectors to tune (empty: all).
    pub detectors: Vec<FeatureDetector>,
    pub device: Device,
}

/// One candidate setting and its validation AUROC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub detector: FeatureDetector,
    /// `source=layer3-mean k=10`, ...
    pub params: String,
    /// AUROC (OOD positive) on dev vs the validation OOD set.
    pub val_auroc: f64,
}

/// `detectors/tuning.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TuningRecord {
    pub tool: String,
    pub metric: String,
    pub in_dataset: String,
    /// In-distribution validation: the dev split and its size.
    pub val_in: String,
    pub n_val_in: usize,
    pub val_ood: String,
    pub n_val_ood: usize,
    /// The files read for tuning, with their sha256.
    pub data_files: Vec<crate::rundir::DataFile>,
    /// Per detector: the chosen candidate.
    pub chosen: Vec<Candidate>,
    /// Every candidate, in grid order.
    pub candidates: Vec<Candidate>,
    /// The validation AUROC of each detector at its default setting (for comparison).
    pub defaults: Vec<Candidate>,
    /// Candidates left out, and why (a feature source that does not vary, ...).
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// The tuning's result.
pub struct TuneOutcome {
    pub record: TuningRecord,
    pub record_file: PathBuf,
    /// A terminal table: detector, chosen setting, validation AUROC, the default's.
    pub table: String,
}

/// Validation AUROC, `None` when a score is not finite (the candidate is then skipped and named
/// in [`TuningRecord::skipped`]).
fn auroc(s_in: &Tensor, s_ood: &Tensor) -> Result<Option<f64>> {
    let v = |t: &Tensor| -> Result<Vec<f64>> {
        Vec::<f64>::try_from(
            t.to_device(Device::Cpu)
                .to_kind(tch::Kind::Double)
                .contiguous(),
        )
        .map_err(OeError::from)
    };
    let (a, b) = (v(s_in)?, v(s_ood)?);
    if a.iter().chain(&b).any(|x| !x.is_finite()) {
        return Ok(None);
    }
    Ok(Some(Ranking::new(&a, &b, Positive::Ood)?.auroc()))
}

fn get(by: &[(FeatureSource, Tensor)], s: FeatureSource) -> &Tensor {
    &by.iter()
        .find(|(x, _)| *x == s)
        .expect("computed for every source")
        .1
}

/// Tunes the stored detectors of a model directory on validation data (see the module docs).
pub fn run_tune(req: &TuneRequest) -> Result<TuneOutcome> {
    let mut m = LoadedModel::load(&req.model_dir, req.device)?;
    let in_dataset = crate::rundir::resolve_recorded_dataset(&m.config.header.in_dataset, &m.dir);
    let root = req
        .data_root
        .clone()
        .unwrap_or_else(|| crate::rundir::resolve_recorded(&m.config.header.data_root, &m.dir));
    let text: TextOptions = m.config.text.clone();
    let ind = data::load_in_distribution(&in_dataset, &root, &text)?;
    let val_name = data::validation_ood_or_own(req.val_ood.as_deref(), &in_dataset)
        .ok_or_else(|| {
            OeError::Config(format!(
                "tuning needs a validation OOD set: {in_dataset} has none of its own; pass --val-ood NAME or --val-ood FILE (never a test set)"
            ))
        })?;
    let val =
        pipeline::load_validation(Some(&val_name), &ind, &root, &text)?.expect("a name was given");
    let detectors: Vec<FeatureDetector> = if req.detectors.is_empty() {
        FeatureDetector::all().to_vec()
    } else {
        req.detectors.clone()
    };
    let files = tuning_files(&in_dataset, &root, &val_name)?;
    let record = tune_loaded(&mut m, &ind.train, &val, &detectors, files)?;
    let record_file = m.dir.join("detectors").join(TUNING_FILE);
    let table = table(&record);
    Ok(TuneOutcome {
        record,
        record_file,
        table,
    })
}

/// The files tuning reads: the in-distribution dataset's and, for a file, the validation OOD set.
pub fn tuning_files(
    in_dataset: &str,
    root: &Path,
    val: &str,
) -> Result<Vec<crate::rundir::DataFile>> {
    let mut files = data::training_files(in_dataset, root, None)?;
    let (_, spec) = data::split_label(val);
    if Path::new(spec).is_file() {
        files.push(PathBuf::from(spec));
    }
    files.dedup();
    files
        .iter()
        .map(|p| crate::rundir::DataFile::of(p))
        .collect()
}

/// Tunes `detectors` of a loaded model on `val`, refits every stored detector with the choice on
/// `train`, saves them and the record (`detectors/tuning.json`, listing `data_files`, the files the
/// data came from) into the model directory, and returns the record.
pub fn tune_loaded(
    m: &mut LoadedModel,
    train: &data::Labelled,
    val: &ValidationData,
    detectors: &[FeatureDetector],
    data_files: Vec<crate::rundir::DataFile>,
) -> Result<TuningRecord> {
    let sources = m.model.feature_sources();
    let (train_by, train_labels) = m.train_features(train, &sources)?;
    let enc = encode_labelled(&m.vocab, &m.labels, &val.dev, m.config.in_fix_len)?;
    let (dev_by, dev_logits) = m.source_outputs(&enc.ids, m.config.in_fix_len, &sources)?;
    let vocab = &m.vocab;
    let ood_ids = encode_all(&val.ood.texts, |t| vocab.encode(t));
    let (ood_by, ood_logits) = m.source_outputs(&ood_ids, None, &sources)?;
    let pen = FeatureSource::Penultimate;
    let (w, b) = m.model.head();
    let (w, b) = (w.to_device(Device::Cpu), b.to_device(Device::Cpu));
    let n_classes = m.labels.len();
    let n_train = train_labels.size()[0] as usize;
    let d = get(&train_by, pen).size()[1] as usize;

    let mut candidates: Vec<(Candidate, DetectorSettings)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let base = m.detector_settings();
    let mut push = |det: FeatureDetector, s: DetectorSettings, auc: Option<f64>| match auc {
        Some(auc) => candidates.push((
            Candidate {
                detector: det,
                params: s.describe(det),
                val_auroc: auc,
            },
            s,
        )),
        None => skipped.push(format!(
            "{} {}: a validation score is not finite",
            det.name(),
            s.describe(det)
        )),
    };
    for &det in detectors {
        match det {
            FeatureDetector::Odin => {
                for t in [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0] {
                    let auc = auroc(&odin(&dev_logits, t), &odin(&ood_logits, t))?;
                    let s = DetectorSettings {
                        odin_temperature: t,
                        ..base.clone()
                    };
                    push(det, s, auc);
                }
            }
            FeatureDetector::Mahalanobis | FeatureDetector::Rmd => {
                for &src in &sources {
                    let x = get(&train_by, src);
                    let (si, so) = if det == FeatureDetector::Mahalanobis {
                        let mh = crate::detect::feature::Mahalanobis::fit(
                            [(x.shallow_clone(), train_labels.shallow_clone())],
                            n_classes,
                            &Default::default(),
                        )?;
                        (mh.score(get(&dev_by, src))?, mh.score(get(&ood_by, src))?)
                    } else {
                        let r = Rmd::fit(x, &train_labels, n_classes)?;
                        (r.score(get(&dev_by, src))?, r.score(get(&ood_by, src))?)
                    };
                    let s = if det == FeatureDetector::Mahalanobis {
                        DetectorSettings {
                            mahalanobis_source: src,
                            ..base.clone()
                        }
                    } else {
                        DetectorSettings {
                            rmd_source: src,
                            ..base.clone()
                        }
                    };
                    push(det, s, auroc(&si, &so)?);
                }
            }
            FeatureDetector::Knn => {
                let ks: Vec<usize> = [1usize, 5, 10, 20, 50, 100, 200]
                    .into_iter()
                    .filter(|&k| k <= n_train)
                    .collect();
                for &src in &sources {
                    let knn = Knn::fit(
                        [get(&train_by, src).shallow_clone()],
                        &KnnConfig {
                            k: 1,
                            ..Default::default()
                        },
                    )?;
                    let si = knn.scores_at(get(&dev_by, src), &ks)?;
                    let so = knn.scores_at(get(&ood_by, src), &ks)?;
                    for (i, &k) in ks.iter().enumerate() {
                        let s = DetectorSettings {
                            knn_source: src,
                            knn_k: k,
                            ..base.clone()
                        };
                        push(det, s, auroc(&si[i], &so[i])?);
                    }
                }
            }
            FeatureDetector::Vim => {
                let mut dims: Vec<usize> = [d / 4, d / 2, 3 * d / 4]
                    .into_iter()
                    .filter(|&p| p > 0 && p < d)
                    .collect();
                dims.dedup();
                for pd in dims {
                    let v = Vim::fit(get(&train_by, pen), &w, &b, Some(pd))?;
                    let auc = auroc(
                        &v.score(get(&dev_by, pen), &dev_logits)?,
                        &v.score(get(&ood_by, pen), &ood_logits)?,
                    )?;
                    let s = DetectorSettings {
                        vim_principal_dim: Some(pd),
                        ..base.clone()
                    };
                    push(det, s, auc);
                }
            }
            FeatureDetector::React => {
                for p in [80.0, 85.0, 90.0, 95.0, 99.0] {
                    let r = React::fit(get(&train_by, pen), p)?;
                    let auc = auroc(
                        &r.score(get(&dev_by, pen), &w, &b)?,
                        &r.score(get(&ood_by, pen), &w, &b)?,
                    )?;
                    let s = DetectorSettings {
                        react_percentile: p,
                        ..base.clone()
                    };
                    push(det, s, auc);
                }
            }
        }
    }
    // The best candidate per detector (first in grid order on ties), merged into one setting.
    let mut settings = base.clone();
    let mut chosen = Vec::new();
    for &det in detectors {
        let best = candidates
            .iter()
            .filter(|(c, _)| c.detector == det)
            .fold(None::<&(Candidate, DetectorSettings)>, |acc, x| match acc {
                Some(a) if a.0.val_auroc >= x.0.val_auroc => Some(a),
                _ => Some(x),
            })
            .ok_or_else(|| OeError::Config(format!("no candidate for {}", det.name())))?;
        let s = &best.1;
        match det {
            FeatureDetector::Mahalanobis => settings.mahalanobis_source = s.mahalanobis_source,
            FeatureDetector::Rmd => settings.rmd_source = s.rmd_source,
            FeatureDetector::Knn => {
                settings.knn_source = s.knn_source;
                settings.knn_k = s.knn_k;
            }
            FeatureDetector::Vim => settings.vim_principal_dim = s.vim_principal_dim,
            FeatureDetector::React => settings.react_percentile = s.react_percentile,
            FeatureDetector::Odin => settings.odin_temperature = s.odin_temperature,
        }
        chosen.push(best.0.clone());
    }
    // The defaults' validation AUROC, for the table (the candidate with the default setting).
    let dflt = DetectorSettings::default();
    let defaults: Vec<Candidate> = detectors
        .iter()
        .filter_map(|&det| {
            let want = dflt.describe(det);
            let want = if det == FeatureDetector::Vim {
                format!("principal_dim={}", Vim::default_principal_dim(d))
            } else {
                want
            };
            candidates
                .iter()
                .find(|(c, _)| c.detector == det && c.params == want)
                .map(|(c, _)| c.clone())
        })
        .collect();
    settings.tuned = Some(serde_json::json!({
        "by": "oe-text tune",
        "metric": "validation AUROC (OOD positive)",
        "val_in": "dev",
        "val_ood": val.ood.name,
        "record": TUNING_FILE,
    }));
    let det = FeatureDetectors::fit(
        &TrainFeatures {
            by_source: &train_by,
            labels: &train_labels,
            n_classes,
            head: (&w, &b),
        },
        &settings,
    )?;
    det.save(&m.dir.join("detectors"))?;
    m.detectors = Some(det);
    let record = TuningRecord {
        tool: format!("oe {}", env!("CARGO_PKG_VERSION")),
        metric: "AUROC (OOD positive) of the dev split against the validation OOD set".into(),
        in_dataset: m.config.header.in_dataset.clone(),
        val_in: "dev".into(),
        n_val_in: val.dev.len(),
        val_ood: val.ood.name.clone(),
        n_val_ood: val.ood.texts.len(),
        data_files,
        chosen,
        candidates: candidates.into_iter().map(|(c, _)| c).collect(),
        defaults,
        skipped,
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| OeError::Config(e.to_string()))?;
    crate::io::write_atomic(&m.dir.join("detectors").join(TUNING_FILE), &json)?;
    Ok(record)
}

/// The tuning table: detector, chosen setting and its validation AUROC, the default's.
pub fn table(r: &TuningRecord) -> String {
    let mut out = format!(
        "tuned on {} dev texts vs {} ({} texts); validation AUROC in %\n{:<12} {:<32} {:>8} {:>9}\n",
        r.n_val_in, r.val_ood, r.n_val_ood, "detector", "chosen", "AUROC", "default"
    );
    for c in &r.chosen {
        let d = r
            .defaults
            .iter()
            .find(|x| x.detector == c.detector)
            .map(|x| format!("{:9.2}", x.val_auroc * 100.0))
            .unwrap_or_else(|| format!("{:>9}", "-"));
        out += &format!(
            "{:<12} {:<32} {:8.2} {d}\n",
            c.detector.name(),
            c.params,
            c.val_auroc * 100.0
        );
    }
    out
}
