//! Feature-space anomaly detectors, fitted on in-distribution training features only.
//!
//! - [`Mahalanobis`] (Lee et al., NeurIPS 2018): class-conditional means and one shared (tied)
//!   covariance of the penultimate features; score = `min_c (x − μ_c)ᵀ Σ⁻¹ (x − μ_c)`, the squared
//!   Mahalanobis distance to the closest class mean (the negative of Lee et al.'s confidence `M(x)`,
//!   without input pre-processing or layer ensembles).
//! - [`Knn`] (Sun et al., ICML 2022): features L2-normalised; score = Euclidean distance to the k-th
//!   nearest normalised training feature (k = 50 by default), by brute force (chunked matrix products).
//!
//! Like [`crate::detect::score`], **higher always means more anomalous**, and scores are `[n]` float32 on the
//! features' device.
//!
//! Fitting is streamed: each fitter takes batches of features `[b, d]` (any float kind, any device)
//! with int64 labels `[b]`. [`MahalanobisFitter`] keeps `O(C·d + d²)` float64 accumulators, never the
//! features. [`KnnFitter`] must keep the normalised training bank: `N × d` values in f32 (4 bytes each)
//! or f16 (2 bytes), e.g. SST's 8,544 training texts × 384 (MiniLM) = 13.1 MB in f32, 6.6 MB in f16;
//! 1 M × 768 = 3.1 GB / 1.5 GB. [`FeatureDetectors::fit`] fits every stored detector (these two and
//! [`super::fitted`]'s) under one [`DetectorSettings`].
//!
//! Files in a model directory: `mahalanobis.json` (JSON of [`Mahalanobis`]; float64 means and
//! precision matrix), `knn.json` ([`KnnMeta`]) and `knn-bank.safetensors` (the bank, tensor `bank`).

use super::{FeatureDetector, FeatureSource};
use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Mahalanobis file name inside a model directory.
pub const MAHALANOBIS_FILE: &str = "mahalanobis.json";
/// kNN metadata file name inside a model directory.
pub const KNN_META_FILE: &str = "knn.json";
/// kNN bank file name inside a model directory.
pub const KNN_BANK_FILE: &str = "knn-bank.safetensors";

fn check_batch(feats: &Tensor, labels: Option<&Tensor>, dim: Option<i64>) -> Result<(i64, i64)> {
    let (b, d) = feats.size2().map_err(|_| {
        OeError::Config(format!(
            "features must be [batch, dim], got {:?}",
            feats.size()
        ))
    })?;
    if let Some(want) = dim {
        if d != want {
            return Err(OeError::Config(format!(
                "features have dim {d}, expected {want}"
            )));
        }
    }
    if let Some(l) = labels {
        if l.size() != [b] {
            return Err(OeError::Config(format!(
                "labels must be [{b}] for features [{b}, {d}], got {:?}",
                l.size()
            )));
        }
    }
    Ok((b, d))
}

/// Options for [`Mahalanobis`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MahalanobisConfig {
    /// Relative ridge: the covariance used is `Σ + ridge · (tr Σ / d) · I` (keeps it invertible when
    /// features are collinear or `N < d`).
    pub ridge: f64,
}

impl Default for MahalanobisConfig {
    fn default() -> Self {
        Self { ridge: 1e-6 }
    }
}

/// Streaming accumulator for [`Mahalanobis`]: per-class sums and counts and one shifted outer-product
/// sum, all float64 on the device of the first batch. Memory `O(C·d + d²)`.
#[derive(Debug)]
pub struct MahalanobisFitter {
    n_classes: i64,
    /// Shift `s` `[d]` (the first batch's mean), subtracted before accumulating (numerical stability).
    shift: Option<Tensor>,
    /// `Σ_i [y_i = c] (x_i − s)`, `[C, d]`.
    sums: Option<Tensor>,
    /// `Σ_i (x_i − s)(x_i − s)ᵀ`, `[d, d]`.
    outer: Option<Tensor>,
    /// Per-class counts `[C]` (int64).
    counts: Option<Tensor>,
}

impl MahalanobisFitter {
    /// An empty accumulator for labels in `0..n_classes`.
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes: n_classes as i64,
            shift: None,
            sums: None,
            outer: None,
            counts: None,
        }
    }

    /// Adds a batch: `feats` `[b, d]` (float), `labels` `[b]` (int64 in `0..n_classes`). All batches
    /// must have the same `d`.
    pub fn update(&mut self, feats: &Tensor, labels: &Tensor) -> Result<()> {
        let dim = self.shift.as_ref().map(|s| s.size()[0]);
        let (b, d) = check_batch(feats, Some(labels), dim)?;
        if b == 0 {
            return Ok(());
        }
        let labels = labels.to_kind(Kind::Int64).to_device(feats.device());
        let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
        if lo < 0 || hi >= self.n_classes {
            return Err(OeError::Config(format!(
                "labels must lie in 0..{}, got {lo}..={hi}",
                self.n_classes
            )));
        }
        let x = feats.to_kind(Kind::Double);
        let dev = x.device();
        if self.shift.is_none() {
            self.shift = Some(x.mean_dim([0i64].as_slice(), false, Kind::Double));
            self.sums = Some(Tensor::zeros([self.n_classes, d], (Kind::Double, dev)));
            self.outer = Some(Tensor::zeros([d, d], (Kind::Double, dev)));
            self.counts = Some(Tensor::zeros([self.n_classes], (Kind::Int64, dev)));
        }
        let shift = self.shift.as_ref().expect("set above");
        let dev0 = shift.device();
        let xc = x.to_device(dev0) - shift;
        let labels = labels.to_device(dev0);
        let sums = self.sums.as_mut().expect("set above");
        *sums = sums.index_add(0, &labels, &xc);
        let outer = self.outer.as_mut().expect("set above");
        *outer = &*outer + xc.tr().matmul(&xc);
        let counts = self.counts.as_mut().expect("set above");
        *counts = &*counts + labels.bincount::<Tensor>(None, self.n_classes);
        Ok(())
    }

    /// Number of features added so far.
    pub fn count(&self) -> i64 {
        self.counts
            .as_ref()
            .map_or(0, |c| c.sum(Kind::Int64).int64_value(&[]))
    }

    /// Class means `[C, d]`, the regularised tied covariance and its inverse. Every class needs at
    /// least one feature.
    pub fn finish(&self, cfg: &MahalanobisConfig) -> Result<Mahalanobis> {
        let (Some(shift), Some(sums), Some(outer), Some(counts)) =
            (&self.shift, &self.sums, &self.outer, &self.counts)
        else {
            return Err(OeError::Config("Mahalanobis: no training features".into()));
        };
        let counts_v: Vec<i64> = Vec::try_from(counts).map_err(OeError::from)?;
        if let Some(c) = counts_v.iter().position(|&n| n == 0) {
            return Err(OeError::Config(format!(
                "Mahalanobis: class {c} has no training features"
            )));
        }
        let d = shift.size()[0];
        let n: i64 = counts_v.iter().sum();
        let nc = counts.to_kind(Kind::Double).unsqueeze(1); // [C, 1]
        let mc = sums / &nc; // class means minus shift, [C, d]
                             // Within-class scatter: Σ_i (x_i−s)(x_i−s)ᵀ − Σ_c n_c (μ_c−s)(μ_c−s)ᵀ.
        let scatter = outer - (&mc * &nc).tr().matmul(&mc);
        let cov = scatter / n as f64;
        let cov = (&cov + cov.tr()) * 0.5; // exactly symmetric
        let trace = cov.trace().double_value(&[]);
        // Features that do not vary (an encoder's [CLS] state before the first layer) have a zero
        // covariance: a unit ridge then keeps every distance finite (and equal).
        let scale = trace / d as f64;
        let scale = if scale > 1e-12 { scale } else { 1.0 };
        let lam = cfg.ridge * scale;
        let reg = &cov + Tensor::eye(d, (Kind::Double, cov.device())) * lam;
        let precision = Tensor::linalg_inv(&reg);
        let precision = (&precision + precision.tr()) * 0.5;
        let means = &mc + shift;
        let to_vec = |t: &Tensor| -> Result<Vec<f64>> {
            Vec::<f64>::try_from(t.to_device(Device::Cpu).contiguous().view([-1]))
                .map_err(OeError::from)
        };
        Ok(Mahalanobis {
            dim: d as usize,
            n_classes: self.n_classes as usize,
            counts: counts_v.iter().map(|&c| c as u64).collect(),
            means: to_vec(&means)?,
            covariance: to_vec(&cov)?,
            precision: to_vec(&precision)?,
            config: cfg.clone(),
        })
    }
}

/// A fitted Mahalanobis detector (serde: JSON in [`MAHALANOBIS_FILE`]; floats survive the JSON round
/// trip to within one ulp).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mahalanobis {
    /// Feature dimension `d`.
    pub dim: usize,
    /// Number of classes `C`.
    pub n_classes: usize,
    /// Training features per class, `[C]`.
    pub counts: Vec<u64>,
    /// Class means, row-major `[C, d]`.
    pub means: Vec<f64>,
    /// Tied (maximum-likelihood, divided by `N`) covariance before the ridge, row-major `[d, d]`.
    pub covariance: Vec<f64>,
    /// Inverse of the regularised covariance, row-major `[d, d]`.
    pub precision: Vec<f64>,
    pub config: MahalanobisConfig,
}

impl Mahalanobis {
    /// Fits from an iterator of `(features [b, d], labels [b] int64)` batches (streamed; see
    /// [`MahalanobisFitter`]).
    pub fn fit<I>(batches: I, n_classes: usize, cfg: &MahalanobisConfig) -> Result<Self>
    where
        I: IntoIterator<Item = (Tensor, Tensor)>,
    {
        let mut f = MahalanobisFitter::new(n_classes);
        for (x, y) in batches {
            f.update(&x, &y)?;
        }
        f.finish(cfg)
    }

    /// Anomaly scores `[n]` (float32, on `feats`' device) for `feats` `[n, d]`:
    /// `min_c (x − μ_c)ᵀ P (x − μ_c)` with `P` the regularised precision; computed in float64.
    pub fn score(&self, feats: &Tensor) -> Result<Tensor> {
        Ok(self.min_distance_f64(feats)?.to_kind(Kind::Float))
    }

    /// `min_c (x − μ_c)ᵀ P (x − μ_c)` `[n]` in float64 (clamped at 0), for `feats` `[n, d]`.
    pub fn min_distance_f64(&self, feats: &Tensor) -> Result<Tensor> {
        let (n, d) = check_batch(feats, None, Some(self.dim as i64))?;
        let dev = feats.device();
        let c = self.n_classes as i64;
        let means = Tensor::from_slice(&self.means).view([c, d]).to_device(dev);
        let prec = Tensor::from_slice(&self.precision)
            .view([d, d])
            .to_device(dev);
        if n == 0 {
            return Ok(Tensor::zeros([0], (Kind::Double, dev)));
        }
        let x = feats.to_kind(Kind::Double);
        // (x−μ)ᵀP(x−μ) = xᵀPx − 2 xᵀPμ + μᵀPμ, per class: [n, C].
        let xp = x.matmul(&prec); // [n, d]
        let xpx = (&xp * &x).sum_dim_intlist([1i64].as_slice(), true, Kind::Double); // [n, 1]
        let mp = means.matmul(&prec); // [C, d]
        let mpm = (&mp * &means).sum_dim_intlist([1i64].as_slice(), false, Kind::Double); // [C]
        let d2 = xpx - xp.matmul(&means.tr()) * 2.0 + mpm.unsqueeze(0);
        Ok(d2.amin([1i64].as_slice(), false).clamp_min(0.0))
    }

    /// Writes `dir/mahalanobis.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let s = serde_json::to_vec(self).map_err(|e| OeError::Config(e.to_string()))?;
        crate::io::write_atomic(&dir.join(MAHALANOBIS_FILE), &s)
    }

    /// Reads `dir/mahalanobis.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MAHALANOBIS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| OeError::io(&path, e))?;
        let m: Self = serde_json::from_slice(&bytes)
            .map_err(|e| OeError::parse(&path, e.line(), e.to_string()))?;
        let (c, d) = (m.n_classes, m.dim);
        if m.means.len() != c * d || m.precision.len() != d * d || m.covariance.len() != d * d {
            return Err(OeError::parse(
                &path,
                1,
                "array sizes do not match dim / n_classes",
            ));
        }
        Ok(m)
    }
}

/// Storage type of the kNN bank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BankKind {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 2 bytes per value (normalised values are in [−1, 1]; distances change by about 1e-3).
    F16,
}

impl BankKind {
    fn kind(self) -> Kind {
        match self {
            BankKind::F32 => Kind::Float,
            BankKind::F16 => Kind::Half,
        }
    }
}

/// Options for [`Knn`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KnnConfig {
    /// The neighbour whose distance is the score (1 = nearest).
    pub k: usize,
    pub bank: BankKind,
    /// Training rows per similarity matrix product when scoring (memory: `n × chunk` floats).
    pub chunk: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 50,
            bank: BankKind::F32,
            chunk: 8192,
        }
    }
}

/// L2-normalises rows of `x` `[n, d]` (float32 result; zero rows stay zero).
fn normalise(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let norm = x
        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}

/// Streaming accumulator for [`Knn`]: keeps the normalised features (in the bank's kind, on their
/// device).
#[derive(Debug)]
pub struct KnnFitter {
    cfg: KnnConfig,
    chunks: Vec<Tensor>,
    dim: Option<i64>,
}

impl KnnFitter {
    pub fn new(cfg: &KnnConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            chunks: Vec::new(),
            dim: None,
        }
    }

    /// Adds a batch of features `[b, d]` (labels are not needed).
    pub fn update(&mut self, feats: &Tensor) -> Result<()> {
        let (b, d) = check_batch(feats, None, self.dim)?;
        self.dim = Some(d);
        if b > 0 {
            self.chunks.push(tch::no_grad(|| {
                normalise(feats).to_kind(self.cfg.bank.kind())
            }));
        }
        Ok(())
    }

    /// The bank `[N, d]` (concatenated; briefly twice its size in memory). Needs `N ≥ k`.
    pub fn finish(self) -> Result<Knn> {
        let n: i64 = self.chunks.iter().map(|c| c.size()[0]).sum();
        if n < self.cfg.k as i64 || self.cfg.k == 0 {
            return Err(OeError::Config(format!(
                "kNN: k = {} needs 1 ≤ k ≤ the number of training features ({n})",
                self.cfg.k
            )));
        }
        let bank = Tensor::cat(&self.chunks, 0);
        Ok(Knn {
            cfg: self.cfg,
            bank,
        })
    }
}

/// What [`KNN_META_FILE`] holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnMeta {
    pub config: KnnConfig,
    /// Bank rows `N`.
    pub n: usize,
    /// Feature dimension `d`.
    pub dim: usize,
}

/// A fitted kNN detector: the normalised training bank `[N, d]`.
#[derive(Debug)]
pub struct Knn {
    pub cfg: KnnConfig,
    /// `[N, d]`, L2-normalised rows, f32 or f16, on the fitting (or loading) device.
    pub bank: Tensor,
}

impl Knn {
    /// Fits from an iterator of feature batches `[b, d]` (streamed; see [`KnnFitter`]).
    pub fn fit<I>(batches: I, cfg: &KnnConfig) -> Result<Self>
    where
        I: IntoIterator<Item = Tensor>,
    {
        let mut f = KnnFitter::new(cfg);
        for x in batches {
            f.update(&x)?;
        }
        f.finish()
    }

    /// Metadata (config and bank shape).
    pub fn meta(&self) -> KnnMeta {
        let s = self.bank.size();
        KnnMeta {
            config: self.cfg.clone(),
            n: s[0] as usize,
            dim: s[1] as usize,
        }
    }

    /// Bank size in bytes (`N · d · 4` for f32, `N · d · 2` for f16).
    pub fn bank_bytes(&self) -> usize {
        let m = self.meta();
        m.n * m.dim * if self.cfg.bank == BankKind::F16 { 2 } else { 4 }
    }

    /// Moves the bank to `device`.
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            cfg: self.cfg.clone(),
            bank: self.bank.to_device(device),
        }
    }

    /// Anomaly scores `[n]` (float32, on `feats`' device) for `feats` `[n, d]`: the Euclidean distance
    /// between the normalised feature and its k-th nearest bank row. Cosine similarities are computed
    /// by chunks of `chunk` bank rows (float32 matrix products, a running top-k of size `[n, k]`); the
    /// k-th neighbour's distance is then recomputed exactly as `‖q − b‖`.
    pub fn score(&self, feats: &Tensor) -> Result<Tensor> {
        Ok(self
            .scores_at(feats, &[self.cfg.k])?
            .pop()
            .expect("one k, one score tensor"))
    }

    /// [`Knn::score`] for each neighbour rank in `ks` (each in `1..=N`), from one pass over the
    /// bank: `[n]` float32 per k.
    pub fn scores_at(&self, feats: &Tensor, ks: &[usize]) -> Result<Vec<Tensor>> {
        let (nb, db) = self.bank.size2().map_err(OeError::from)?;
        let (n, _) = check_batch(feats, None, Some(db))?;
        let dev = feats.device();
        if let Some(bad) = ks.iter().find(|&&k| k == 0 || k as i64 > nb) {
            return Err(OeError::Config(format!(
                "k-NN: k = {bad} is outside 1..={nb} (the bank's rows)"
            )));
        }
        if n == 0 {
            return Ok(ks
                .iter()
                .map(|_| Tensor::zeros([0], (Kind::Float, dev)))
                .collect());
        }
        let k = ks.iter().copied().max().unwrap_or(1) as i64;
        let chunk = self.cfg.chunk.max(1) as i64;
        Ok(tch::no_grad(|| {
            let q = normalise(feats); // [n, d]
            let mut best: Option<(Tensor, Tensor)> = None; // ([n, ≤k] sims, [n, ≤k] global rows)
            let mut start = 0;
            while start < nb {
                let len = chunk.min(nb - start);
                let bank = self
                    .bank
                    .narrow(0, start, len)
                    .to_device(dev)
                    .to_kind(Kind::Float);
                let sims = q.matmul(&bank.tr()); // [n, len]
                let kk = k.min(len);
                let (v, i) = sims.topk(kk, 1, true, false);
                let i = i + start;
                best = Some(match best {
                    None => (v, i),
                    Some((bv, bi)) => {
                        let v = Tensor::cat(&[bv, v], 1);
                        let i = Tensor::cat(&[bi, i], 1);
                        let kk = k.min(v.size()[1]);
                        let (v2, pos) = v.topk(kk, 1, true, false);
                        (v2, i.gather(1, &pos, false))
                    }
                });
                start += len;
            }
            let (v, i) = best.expect("bank is non-empty");
            // Index of the k-th largest similarity = k-th nearest neighbour.
            let (_, order) = v.sort(1, true);
            ks.iter()
                .map(|&kq| {
                    let kth = i
                        .gather(1, &order.narrow(1, kq as i64 - 1, 1), false)
                        .squeeze_dim(1); // [n]
                    let nb_rows = self
                        .bank
                        .index_select(0, &kth.to_device(self.bank.device()))
                        .to_device(dev)
                        .to_kind(Kind::Float);
                    (&q - nb_rows).norm_scalaropt_dim(2, [1i64].as_slice(), false)
                })
                .collect()
        }))
    }

    /// Writes `dir/knn.json` and `dir/knn-bank.safetensors` (tensor `bank`, stored from the CPU).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
        let path = dir.join(KNN_BANK_FILE);
        let tmp = crate::io::temp_file_for(&path, ".oe-tmp-", ".safetensors")?;
        let bank = self.bank.to_device(Device::Cpu).contiguous();
        Tensor::write_safetensors(&[("bank", &bank)], tmp.path())?;
        crate::io::persist(tmp, &path)?;
        let meta =
            serde_json::to_vec_pretty(&self.meta()).map_err(|e| OeError::Config(e.to_string()))?;
        crate::io::write_atomic(&dir.join(KNN_META_FILE), &meta)
    }

    /// Reads `dir/knn.json` and `dir/knn-bank.safetensors`, placing the bank on `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let mpath = dir.join(KNN_META_FILE);
        let bytes = std::fs::read(&mpath).map_err(|e| OeError::io(&mpath, e))?;
        let meta: KnnMeta = serde_json::from_slice(&bytes)
            .map_err(|e| OeError::parse(&mpath, e.line(), e.to_string()))?;
        let bpath = dir.join(KNN_BANK_FILE);
        let bank = Tensor::read_safetensors(&bpath)?
            .into_iter()
            .find(|(n, _)| n == "bank")
            .map(|(_, t)| t)
            .ok_or_else(|| OeError::parse(&bpath, 1, "no tensor `bank`"))?;
        if bank.size() != [meta.n as i64, meta.dim as i64] || bank.kind() != meta.config.bank.kind()
        {
            return Err(OeError::parse(
                &bpath,
                1,
                format!(
                    "bank is {:?} {:?}, {} says [{}, {}] {:?}",
                    bank.size(),
                    bank.kind(),
                    KNN_META_FILE,
                    meta.n,
                    meta.dim,
                    meta.config.bank
                ),
            ));
        }
        Ok(Self {
            cfg: meta.config,
            bank: bank.to_device(device),
        })
    }
}

/// Settings file name inside `detectors/`.
pub const SETTINGS_FILE: &str = "detectors.json";

/// How the stored detectors are configured: their defaults, or the choice `oe-text tune` made on
/// validation data (then [`DetectorSettings::tuned`] says how). Saved as `detectors/detectors.json`;
/// a directory without it (written before it existed) has the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorSettings {
    pub mahalanobis_source: FeatureSource,
    pub rmd_source: FeatureSource,
    pub knn_source: FeatureSource,
    /// The neighbour whose distance is the k-NN score.
    pub knn_k: usize,
    /// ReAct's clip, as a percentile of the training activations.
    pub react_percentile: f64,
    /// ViM's principal dimension (`None`: the authors' rule, [`super::fitted::Vim::default_principal_dim`]).
    pub vim_principal_dim: Option<usize>,
    /// ODIN's temperature (1000: the ODIN paper's choice without tuning).
    pub odin_temperature: f64,
    /// What chose these values (`oe-text tune`'s record), `None` for the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuned: Option<serde_json::Value>,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        Self {
            mahalanobis_source: FeatureSource::Penultimate,
            rmd_source: FeatureSource::Penultimate,
            knn_source: FeatureSource::Penultimate,
            knn_k: KnnConfig::default().k,
            react_percentile: 90.0,
            vim_principal_dim: None,
            odin_temperature: 1000.0,
            tuned: None,
        }
    }
}

impl DetectorSettings {
    /// The features `d` reads (ViM and ReAct: the head's input; ODIN: none, reported as penultimate).
    pub fn source(&self, d: FeatureDetector) -> FeatureSource {
        match d {
            FeatureDetector::Mahalanobis => self.mahalanobis_source,
            FeatureDetector::Rmd => self.rmd_source,
            FeatureDetector::Knn => self.knn_source,
            _ => FeatureSource::Penultimate,
        }
    }

    /// Every source the detectors read, penultimate first, without repeats.
    pub fn sources(&self) -> Vec<FeatureSource> {
        let mut v = vec![FeatureSource::Penultimate];
        for s in [self.mahalanobis_source, self.rmd_source, self.knn_source] {
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v
    }

    /// The hyper-parameters of `d`, for tables and `GET /v1/model` (`source=layer3-mean k=10`).
    pub fn describe(&self, d: FeatureDetector) -> String {
        match d {
            FeatureDetector::Mahalanobis | FeatureDetector::Rmd => {
                format!("source={}", self.source(d))
            }
            FeatureDetector::Knn => format!("source={} k={}", self.knn_source, self.knn_k),
            FeatureDetector::React => format!("percentile={}", self.react_percentile),
            FeatureDetector::Vim => match self.vim_principal_dim {
                Some(p) => format!("principal_dim={p}"),
                None => "principal_dim=auto".to_string(),
            },
            FeatureDetector::Odin => format!("temperature={}", self.odin_temperature),
        }
    }
}

/// Training features for [`FeatureDetectors::fit`]: one `[N, d]` tensor per source (the
/// penultimate one among them), int64 labels `[N]`, and the classification head `w` `[k, d]`,
/// `b` `[k]` that maps penultimate features to logits.
pub struct TrainFeatures<'a> {
    pub by_source: &'a [(FeatureSource, Tensor)],
    pub labels: &'a Tensor,
    pub n_classes: usize,
    pub head: (&'a Tensor, &'a Tensor),
}

impl TrainFeatures<'_> {
    /// The features of `s`.
    pub fn get(&self, s: FeatureSource) -> Result<&Tensor> {
        self.by_source
            .iter()
            .find(|(x, _)| *x == s)
            .map(|(_, t)| t)
            .ok_or_else(|| OeError::Config(format!("no training features from {s}")))
    }
}

/// The detectors stored in a model directory (`detectors/`), fitted on the training set's features.
/// Directories written before RMD, ViM and ReAct existed hold only Mahalanobis and k-NN; the others
/// are then `None` until fitted.
#[derive(Debug)]
pub struct FeatureDetectors {
    pub settings: DetectorSettings,
    pub mahalanobis: Mahalanobis,
    pub knn: Knn,
    pub rmd: Option<super::fitted::Rmd>,
    pub vim: Option<super::fitted::Vim>,
    pub react: Option<super::fitted::React>,
}

impl FeatureDetectors {
    /// Fits every detector under `settings`.
    pub fn fit(train: &TrainFeatures, settings: &DetectorSettings) -> Result<Self> {
        use super::fitted::{React, Rmd, Vim};
        let labels = train.labels;
        let mahalanobis = Mahalanobis::fit(
            [(
                train.get(settings.mahalanobis_source)?.detach(),
                labels.shallow_clone(),
            )],
            train.n_classes,
            &MahalanobisConfig::default(),
        )?;
        let knn_cfg = KnnConfig {
            k: settings.knn_k,
            ..Default::default()
        };
        let knn = Knn::fit([train.get(settings.knn_source)?.detach()], &knn_cfg)?;
        let rmd = Rmd::fit(
            &train.get(settings.rmd_source)?.detach(),
            labels,
            train.n_classes,
        )?;
        let pen = train.get(FeatureSource::Penultimate)?.detach();
        let (w, b) = train.head;
        let vim = Vim::fit(&pen, w, b, settings.vim_principal_dim)?;
        let react = React::fit(&pen, settings.react_percentile)?;
        Ok(Self {
            settings: settings.clone(),
            mahalanobis,
            knn,
            rmd: Some(rmd),
            vim: Some(vim),
            react: Some(react),
        })
    }

    /// Whether `d` is fitted here (ODIN needs nothing fitted).
    pub fn has(&self, d: FeatureDetector) -> bool {
        match d {
            FeatureDetector::Mahalanobis | FeatureDetector::Knn | FeatureDetector::Odin => true,
            FeatureDetector::Rmd => self.rmd.is_some(),
            FeatureDetector::Vim => self.vim.is_some(),
            FeatureDetector::React => self.react.is_some(),
        }
    }

    /// Scores `[n]` (float32) of detector `d` from the features of its source `feats` `[n, d]`, the
    /// penultimate features `pen` `[n, d]`, the logits `[n, k]` and the head.
    pub fn score(
        &self,
        d: FeatureDetector,
        feats: &Tensor,
        pen: &Tensor,
        logits: &Tensor,
        head: (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let missing = || {
            OeError::Config(format!(
                "{} is not fitted in this model directory (written before it existed); evaluating with it fits it",
                d.name()
            ))
        };
        match d {
            FeatureDetector::Mahalanobis => self.mahalanobis.score(feats),
            FeatureDetector::Knn => self.knn.score(feats),
            FeatureDetector::Rmd => self.rmd.as_ref().ok_or_else(missing)?.score(feats),
            FeatureDetector::Vim => self.vim.as_ref().ok_or_else(missing)?.score(pen, logits),
            FeatureDetector::React => {
                let (w, b) = head;
                let dev = pen.device();
                self.react.as_ref().ok_or_else(missing)?.score(
                    pen,
                    &w.to_device(dev),
                    &b.to_device(dev),
                )
            }
            FeatureDetector::Odin => {
                Ok(super::fitted::odin(logits, self.settings.odin_temperature))
            }
        }
    }

    /// Writes every file into `dir` (`detectors.json` last: a directory with it is complete).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.mahalanobis.save(dir)?;
        self.knn.save(dir)?;
        if let Some(r) = &self.rmd {
            r.save(dir)?;
        }
        if let Some(v) = &self.vim {
            v.save(dir)?;
        }
        if let Some(r) = &self.react {
            r.save(dir)?;
        }
        let s = serde_json::to_vec_pretty(&self.settings)
            .map_err(|e| OeError::Config(e.to_string()))?;
        crate::io::write_atomic(&dir.join(SETTINGS_FILE), &s)
    }

    /// Reads them back (kNN bank on `device`); files of detectors that were never fitted are absent.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        use super::fitted::{React, Rmd, Vim, REACT_FILE, RMD_FILE, VIM_FILE};
        let sp = dir.join(SETTINGS_FILE);
        let settings: DetectorSettings = if sp.is_file() {
            let bytes = std::fs::read(&sp).map_err(|e| OeError::io(&sp, e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| OeError::parse(&sp, e.line(), e.to_string()))?
        } else {
            DetectorSettings::default()
        };
        let opt = |f: &str| dir.join(f).is_file();
        let mut knn = Knn::load(dir, device)?;
        knn.cfg.k = settings.knn_k;
        Ok(Self {
            mahalanobis: Mahalanobis::load(dir)?,
            knn,
            rmd: opt(RMD_FILE).then(|| Rmd::load(dir)).transpose()?,
            vim: opt(VIM_FILE).then(|| Vim::load(dir)).transpose()?,
            react: opt(REACT_FILE).then(|| React::load(dir)).transpose()?,
            settings,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Reference values: `experiments/detectors_reference.py` (numpy + scipy, float64), on the inputs
    //! built by [`inputs`] from the same formulas.
    use super::*;

    const N: i64 = 24;
    const D: i64 = 5;
    const M: i64 = 6;

    /// train x `[24, 5]`, labels `[24]`, queries `[6, 5]` (float32), see the Python script (also
    /// the inputs of [`super::super::fitted`]'s tests).
    pub(crate) fn inputs() -> (Tensor, Tensor, Tensor) {
        let mut x = Vec::new();
        for i in 0..N {
            for j in 0..D {
                let (fi, fj) = (i as f64, j as f64);
                let v = (0.7 * fi + 1.3 * fj + 0.5).sin()
                    + 0.3 * (1.1 * fi * fj).cos()
                    + if j == i % 3 { 2.0 } else { 0.0 };
                x.push(v as f32);
            }
        }
        let y: Vec<i64> = (0..N).map(|i| i % 3).collect();
        let mut q = Vec::new();
        for i in 0..M {
            for j in 0..D {
                let (fi, fj) = (i as f64, j as f64);
                q.push(((0.9 * fi - 0.4 * fj).cos() * (1.0 + 0.5 * fi)) as f32);
            }
        }
        (
            Tensor::from_slice(&x).view([N, D]),
            Tensor::from_slice(&y),
            Tensor::from_slice(&q).view([M, D]),
        )
    }

    const MEANS0: [f64; 5] = [
        2.42315100e+00,
        4.51407214e-02,
        -4.16608434e-03,
        -5.33914482e-02,
        1.58782043e-02,
    ];
    const COV0: [f64; 5] = [
        4.86710912e-01,
        1.35901494e-01,
        -4.05967681e-01,
        -3.79994221e-01,
        1.96492055e-01,
    ];
    const MAHA: [f64; 6] = [
        6.68601453e+01,
        1.02801893e+02,
        1.11478028e+02,
        4.98331331e+02,
        1.86079015e+03,
        1.23227260e+03,
    ];
    const KNN3: [f64; 6] = [
        7.72553719e-01,
        9.09064071e-01,
        8.86043183e-01,
        1.39231119e+00,
        1.61050036e+00,
        1.41174592e+00,
    ];

    fn close(a: &[f64], b: &[f64], rel: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= rel * y.abs().max(1e-3), "[{i}] {x} vs {y}");
        }
    }

    fn v(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
    }

    fn batches(x: &Tensor, y: &Tensor, sizes: &[i64]) -> Vec<(Tensor, Tensor)> {
        let mut out = Vec::new();
        let mut s = 0;
        for &b in sizes {
            out.push((x.narrow(0, s, b), y.narrow(0, s, b)));
            s += b;
        }
        assert_eq!(s, x.size()[0]);
        out
    }

    #[test]
    fn mahalanobis_matches_numpy_and_streams() {
        let (x, y, q) = inputs();
        let cfg = MahalanobisConfig::default();
        let all = Mahalanobis::fit([(x.shallow_clone(), y.shallow_clone())], 3, &cfg).unwrap();
        close(&all.means[..5], &MEANS0, 1e-6);
        close(&all.covariance[..5], &COV0, 1e-6);
        close(&v(&all.score(&q).unwrap()), &MAHA, 1e-5);
        let streamed = Mahalanobis::fit(batches(&x, &y, &[1, 7, 0, 10, 6]), 3, &cfg).unwrap();
        close(&streamed.means, &all.means, 1e-10);
        close(&streamed.precision, &all.precision, 1e-8);
        assert_eq!(streamed.counts, vec![8, 8, 8]);
        // Far from every class mean scores higher than a training point.
        let near = all.score(&x.narrow(0, 0, 1)).unwrap().double_value(&[0]);
        let far = all
            .score(&(x.narrow(0, 0, 1) * 10.0))
            .unwrap()
            .double_value(&[0]);
        assert!(far > 10.0 * near, "{far} vs {near}");
        // Round trip (serde_json parses floats to within 1 ulp, not always exactly).
        let dir = tempfile::tempdir().unwrap();
        all.save(dir.path()).unwrap();
        let back = Mahalanobis::load(dir.path()).unwrap();
        assert_eq!(
            (back.dim, back.n_classes, &back.counts),
            (5, 3, &all.counts)
        );
        close(&back.means, &all.means, 1e-15);
        close(&back.precision, &all.precision, 1e-15);
        close(
            &v(&back.score(&q).unwrap()),
            &v(&all.score(&q).unwrap()),
            1e-7,
        );
        // Bad inputs.
        assert!(Mahalanobis::fit([(x.shallow_clone(), y.shallow_clone())], 2, &cfg).is_err());
        assert!(Mahalanobis::fit([(x.narrow(0, 0, 2), y.narrow(0, 0, 2))], 3, &cfg).is_err());
        assert!(all
            .score(&Tensor::zeros([2, 4], (Kind::Float, Device::Cpu)))
            .is_err());
    }

    #[test]
    fn knn_matches_scipy_streams_and_round_trips() {
        let (x, y, q) = inputs();
        let cfg = KnnConfig {
            k: 3,
            chunk: 5, // several chunks, the last one short
            ..Default::default()
        };
        let knn = Knn::fit([x.shallow_clone()], &cfg).unwrap();
        close(&v(&knn.score(&q).unwrap()), &KNN3, 1e-5);
        let one_chunk = Knn::fit(
            [x.shallow_clone()],
            &KnnConfig {
                chunk: 1000,
                ..cfg.clone()
            },
        )
        .unwrap();
        close(&v(&one_chunk.score(&q).unwrap()), &KNN3, 1e-5);
        let streamed =
            Knn::fit(batches(&x, &y, &[5, 5, 14]).into_iter().map(|b| b.0), &cfg).unwrap();
        assert_eq!(streamed.bank, knn.bank);
        assert_eq!(knn.bank_bytes(), (N * D * 4) as usize);
        // A training point's own direction is close; its opposite is far.
        let near = knn.score(&x.narrow(0, 0, 1)).unwrap().double_value(&[0]);
        let far = knn.score(&(-x.narrow(0, 0, 1))).unwrap().double_value(&[0]);
        assert!(far > 1.0 && far > 3.0 * near, "{far} vs {near}");
        // f16 bank: same scores to about 1e-3.
        let half = Knn::fit(
            [x.shallow_clone()],
            &KnnConfig {
                bank: BankKind::F16,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!(half.bank.kind(), Kind::Half);
        close(&v(&half.score(&q).unwrap()), &KNN3, 3e-3);
        // Round trips (f32 and f16), and both detectors together.
        let dir = tempfile::tempdir().unwrap();
        for k in [&knn, &half] {
            k.save(dir.path()).unwrap();
            let back = Knn::load(dir.path(), Device::Cpu).unwrap();
            assert_eq!(back.bank, k.bank);
            assert_eq!(back.cfg, k.cfg);
        }
        // Every stored detector together: fitted, saved, loaded back, scoring as fitted alone.
        let w = Tensor::from_slice(&[
            1.0f32, 0.0, 0.5, 0.0, 0.2, 0.0, 1.0, 0.0, 0.3, 0.0, 0.1, 0.0, 1.0, 0.0, 0.4,
        ])
        .view([3, 5]);
        let b = Tensor::from_slice(&[0.0f32, 0.1, -0.1]);
        let settings = DetectorSettings {
            knn_k: 3,
            ..Default::default()
        };
        let by_source = [(FeatureSource::Penultimate, x.shallow_clone())];
        let train = TrainFeatures {
            by_source: &by_source,
            labels: &y,
            n_classes: 3,
            head: (&w, &b),
        };
        let all = FeatureDetectors::fit(&train, &settings).unwrap();
        all.save(dir.path()).unwrap();
        let back = FeatureDetectors::load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(back.settings, settings);
        let logits = q.matmul(&w.tr()) + &b;
        let score = |d| back.score(d, &q, &q, &logits, (&w, &b)).unwrap();
        close(&v(&score(FeatureDetector::Mahalanobis)), &MAHA, 1e-5);
        close(&v(&score(FeatureDetector::Knn)), &KNN3, 1e-5);
        let rmd = crate::detect::fitted::Rmd::fit(&x, &y, 3).unwrap();
        close(
            &v(&score(FeatureDetector::Rmd)),
            &v(&rmd.score(&q).unwrap()),
            1e-6,
        );
        for d in FeatureDetector::all() {
            assert!(back.has(d), "{d:?}");
            assert_eq!(score(d).size(), [M]);
        }
        // A directory from before detectors.json, RMD, ViM and ReAct: defaults, those three absent.
        for f in [SETTINGS_FILE, "rmd.json", "vim.json", "react.json"] {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        let old = FeatureDetectors::load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(old.settings.knn_k, 50);
        assert!(!old.has(FeatureDetector::Vim) && old.has(FeatureDetector::Odin));
        assert!(old
            .score(FeatureDetector::Rmd, &q, &q, &logits, (&w, &b))
            .is_err());
        // k larger than the bank.
        assert!(Knn::fit([x.narrow(0, 0, 2)], &cfg).is_err());
    }
}
