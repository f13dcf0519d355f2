//! A text model directory: its `run.json` ([`RunConfig`], whose shared fields are
//! [`crate::rundir::RunHeader`]), loaded with its vocabulary, weights and fitted feature detectors
//! ([`LoadedModel`]), and the encoding of labelled texts for it. The directory protocol (files,
//! finished / interrupted checks) is [`crate::rundir`]'s.
//!
//! Files: `run.json`, `vocab.json` (word models) or `tokenizer.json` (subword and pretrained
//! encoders), `model.safetensors`, `train_log.json`, `detectors/` (fitted feature detectors),
//! `calibration-<score>.{json,csv}` (deployment thresholds) and `eval-<score>-<protocol>/`.

use crate::error::{OeError, Result};
use crate::rundir::{self, RunHeader};
use crate::text::data::{self, TextOptions};
use crate::text::models::{ModelConfig, TextModel};
use crate::text::protocol::{self, encode_all, Scorer};
use crate::text::tokenize::{LabelVocab, TextEncoder};
use crate::text::train::{EncodedSet, TrainConfig};
use crate::train::{self, MethodLabel};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// A held-out validation fraction of the training split, recorded in `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    /// Fraction of the training examples held out.
    pub fraction: f64,
    pub seed: u64,
    /// Number of examples held out.
    pub n_heldout: usize,
    /// Training examples before the hold-out.
    pub n_train_total: usize,
}

/// Everything about how a model directory's model was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// `tool`, `in_dataset`, `method`, `init_from`, `train_examples`, `data_root`.
    #[serde(flatten)]
    pub header: RunHeader,
    pub text: TextOptions,
    /// In-distribution inputs padded/truncated to exactly this many tokens (20NG: 100).
    pub in_fix_len: Option<usize>,
    pub vocab_max_size: usize,
    pub vocab_size: usize,
    pub vocab_sha256: String,
    /// Class names; index = class id (the reference's frequency order).
    pub labels: Vec<String>,
    pub model: ModelConfig,
    /// Outlier corpus used for OE (none for the baseline).
    pub oe_corpus: Option<String>,
    pub oe_examples: Option<usize>,
    pub train: TrainConfig,
    /// Validation texts held out of the training split (`--holdout`; none: all of train is used,
    /// as the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<Holdout>,
    /// The subword vocabulary trained from the training text (`--tokenizer wordpiece|bpe`; saved as
    /// `tokenizer.json`); none: the word vocabulary, or a pretrained model's own tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<crate::text::tokenize::hf::SubwordConfig>,
    /// Tokens of the longest training text: `score` and `serve` cut longer texts there by default
    /// (the model never saw longer ones). Absent in older directories ([`DEFAULT_MAX_SCORE_TOKENS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_tokens: Option<usize>,
}

/// The token cap of scoring for model directories that do not record their longest training text.
pub const DEFAULT_MAX_SCORE_TOKENS: usize = 4096;

impl RunConfig {
    /// The training this model went through, as results name it.
    pub fn method_label(&self) -> MethodLabel {
        MethodLabel::of(self.header.method, &self.train.oe_loss)
    }
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
    pub detectors: Option<crate::detect::feature::FeatureDetectors>,
    /// Outputs of evaluation batches already run (several scores, one forward pass).
    pub outputs: protocol::OutputCache,
    /// The batch-row probe of [`crate::text::score`] (`(max rows probed, smallest free batch)`),
    /// run once per process and model.
    pub row_probe: std::sync::Mutex<Option<(usize, Option<crate::text::score::FreeRows>)>>,
}

impl LoadedModel {
    /// Loads `dir/run.json`, `dir/vocab.json` (or `dir/tokenizer.json`) and `dir/model.safetensors`
    /// onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config: RunConfig = rundir::read_run(dir, "oe-text train")?;
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
        model.freeze_for_inference();
        let det_dir = dir.join("detectors");
        let detectors = if det_dir.is_dir() {
            Some(crate::detect::feature::FeatureDetectors::load(
                &det_dir, device,
            )?)
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
            row_probe: Default::default(),
        })
    }

    /// Sets the arithmetic of inference ([`crate::device::Precision`]; bfloat16 only for the CPU
    /// GRU on CPUs with AVX512_BF16), dropping outputs computed under the previous one.
    pub fn set_precision(&mut self, p: crate::device::Precision) -> Result<()> {
        if p != self.model.precision() {
            self.model.set_precision(p)?;
            self.outputs = Default::default();
            self.row_probe = Default::default();
        }
        Ok(())
    }

    pub fn scorer(&self) -> Scorer<'_> {
        let sources = self
            .detectors
            .as_ref()
            .map(|d| d.settings.sources())
            .unwrap_or_else(|| vec![crate::detect::FeatureSource::Penultimate]);
        self.scorer_with(sources)
    }

    /// A scorer whose outputs hold the features of `sources` (the first must be the penultimate).
    pub fn scorer_with(&self, sources: Vec<crate::detect::FeatureSource>) -> Scorer<'_> {
        Scorer {
            model: &self.model,
            device: self.vs.device(),
            in_fix_len: self.config.in_fix_len,
            max_len: self.config.model.max_len(),
            detectors: self.detectors.as_ref(),
            sources,
            cache: Some(&self.outputs),
        }
    }

    /// The stored detectors' settings (defaults when none are stored).
    pub fn detector_settings(&self) -> crate::detect::feature::DetectorSettings {
        self.detectors
            .as_ref()
            .map(|d| d.settings.clone())
            .unwrap_or_default()
    }

    /// Training features of `sources` (`[N, d]` each, every text computed without padding) and the
    /// labels `[N]`.
    pub fn train_features(
        &self,
        train: &data::Labelled,
        sources: &[crate::detect::FeatureSource],
    ) -> Result<(
        Vec<(crate::detect::FeatureSource, tch::Tensor)>,
        tch::Tensor,
    )> {
        let enc = encode_labelled(&self.vocab, &self.labels, train, self.config.in_fix_len)?;
        let (by_source, _) = self.source_outputs(&enc.ids, self.config.in_fix_len, sources)?;
        Ok((by_source, tch::Tensor::from_slice(&enc.labels)))
    }

    /// Features of the penultimate source and `sources` (`[n, d]` each, in that order, without
    /// repeats) and logits `[n, k]` of `ids`, every text computed without padding, not cached.
    pub fn source_outputs(
        &self,
        ids: &[Vec<i64>],
        fix_len: Option<usize>,
        sources: &[crate::detect::FeatureSource],
    ) -> Result<(
        Vec<(crate::detect::FeatureSource, tch::Tensor)>,
        tch::Tensor,
    )> {
        for s in sources {
            if !self.model.supports(*s) {
                return Err(OeError::Config(format!(
                    "{}: a {} model has no {s} features (layers are those of pretrained encoders)",
                    self.dir.display(),
                    self.config.model.name()
                )));
            }
        }
        let mut all = vec![crate::detect::FeatureSource::Penultimate];
        for s in sources {
            if !all.contains(s) {
                all.push(*s);
            }
        }
        let scorer = Scorer {
            cache: None,
            ..self.scorer_with(all.clone())
        };
        let (feats, logits) = scorer.outputs_bucketed(ids, 256, fix_len);
        let by_source = all
            .iter()
            .map(|s| Ok((*s, scorer.source_features(&feats, *s)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((by_source, logits))
    }

    /// Fits every stored detector (Mahalanobis, RMD, k-NN, ViM, ReAct; ODIN needs no fit) under
    /// `settings` (`None`: the stored settings, else the defaults) on the features of the
    /// in-distribution training set, stores them in `dir/detectors/`, and keeps them for scoring.
    pub fn fit_detectors(
        &mut self,
        train: &data::Labelled,
        settings: Option<crate::detect::feature::DetectorSettings>,
    ) -> Result<()> {
        let settings = settings.unwrap_or_else(|| self.detector_settings());
        let (by_source, labels) = self.train_features(train, &settings.sources())?;
        let (w, b) = self.model.head();
        let (w, b) = (w.to_device(tch::Device::Cpu), b.to_device(tch::Device::Cpu));
        let det = crate::detect::feature::FeatureDetectors::fit(
            &crate::detect::feature::TrainFeatures {
                by_source: &by_source,
                labels: &labels,
                n_classes: self.labels.len(),
                head: (&w, &b),
            },
            &settings,
        )?;
        det.save(&self.dir.join("detectors"))?;
        self.detectors = Some(det);
        Ok(())
    }

    /// Whether evaluating with `d` needs [`LoadedModel::fit_detectors`] first.
    pub fn needs_fit(&self, d: crate::detect::Detector) -> bool {
        match d {
            crate::detect::Detector::Logit(_) => false,
            crate::detect::Detector::Feature(f) => {
                self.detectors.as_ref().is_none_or(|det| !det.has(f))
            }
        }
    }
}

/// The in-distribution dataset recorded in `dir/run.json`, if it can be read (for defaults that
/// depend on it; loading the directory reports any problem).
pub fn recorded_in_dataset(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join("run.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("in_dataset")?.as_str().map(str::to_string)
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
    let ids = encode_all(&set.texts, |t| vocab.encode(t));
    let labels = labels.indices(set.labels.iter().map(String::as_str))?;
    Ok(EncodedSet {
        ids,
        labels,
        fix_len,
    })
}
