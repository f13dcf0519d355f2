//! Detectors beyond Mahalanobis and k-NN, each a small pure function of features, logits and the
//! classification head `z = W f + b` (`W` `[k, d]`, `b` `[k]`), fitted on in-distribution training
//! data only. **Higher always means more anomalous**; scores are `[n]` float32 on the inputs' device.
//!
//! - [`Rmd`], relative Mahalanobis (Ren et al. 2021, "A simple fix to Mahalanobis distance for
//!   improving near-OOD detection"): `min_c MD_c(x) − MD_0(x)`, where `MD_c` is the squared distance
//!   to class `c` under the tied covariance (as [`Mahalanobis`]) and `MD_0` the squared distance to
//!   one Gaussian fitted to all training features (their mean and covariance).
//! - [`Vim`], virtual-logit matching (Wang et al., CVPR 2022): origin `o = −W⁺ b`; `R` spans the
//!   eigenvectors of the (uncentred, about `o`) training covariance of `x − o` outside its top `D`
//!   (`D` = 1000 for `d ≥ 2048`, 512 for `d ≥ 768`, else `d / 2`, as the authors' code); virtual
//!   logit `v(x) = α ‖Rᵀ(x − o)‖` with `α` = mean training max-logit / mean training `‖Rᵀ(x − o)‖`;
//!   score `v(x) − logsumexp(z)`.
//! - [`React`], rectified activations (Sun et al., NeurIPS 2021): features clipped from above at the
//!   `p`-th percentile `c` of all training activations (p = 90 by default); score = energy of
//!   `W min(f, c) + b`, i.e. `−logsumexp`. ReAct was designed for ReLU features; text encoders'
//!   features are signed, and only the upper tail is clipped, as the paper does.
//! - [`odin`], ODIN's temperature scaling (Liang et al., ICLR 2018): `−max softmax(z / T)`. ODIN's
//!   second half, a gradient step on the input, has no counterpart for discrete tokens (an
//!   embedding-space step would need the model to take embeddings as input); it is not done.
//!
//! Tests pin every score to `experiments/detectors_reference.py` (numpy, float64).

use super::feature::{Mahalanobis, MahalanobisConfig, MahalanobisFitter};
use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous()
            .view([-1]),
    )
    .map_err(OeError::from)
}

fn dims(feats: &Tensor, what: &str) -> Result<(i64, i64)> {
    feats.size2().map_err(|_| {
        OeError::Config(format!(
            "{what}: features must be [n, d], got {:?}",
            feats.size()
        ))
    })
}

fn check_head(w: &Tensor, b: &Tensor, d: i64, what: &str) -> Result<i64> {
    let (k, dw) = w.size2().map_err(|_| {
        OeError::Config(format!(
            "{what}: head weights must be [k, d], got {:?}",
            w.size()
        ))
    })?;
    if dw != d || b.size() != [k] {
        return Err(OeError::Config(format!(
            "{what}: head is {:?} + {:?}, features have dim {d}",
            w.size(),
            b.size()
        )));
    }
    Ok(k)
}

fn write_json<T: Serialize>(dir: &Path, file: &str, v: &T) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
    let s = serde_json::to_vec(v).map_err(|e| OeError::Config(e.to_string()))?;
    crate::io::write_atomic(&dir.join(file), &s)
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, file: &str) -> Result<T> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|e| OeError::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| OeError::parse(&path, e.line(), e.to_string()))
}

// ------------------------------------------------------------------------------------------ RMD

/// RMD file name inside `detectors/`.
pub const RMD_FILE: &str = "rmd.json";

/// A fitted relative-Mahalanobis detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rmd {
    /// Class means and tied precision.
    pub classes: Mahalanobis,
    /// One Gaussian of all training features (its mean and precision).
    pub background: Mahalanobis,
}

impl Rmd {
    /// Fits from training features `[N, d]` and labels `[N]` (int64 in `0..n_classes`).
    pub fn fit(feats: &Tensor, labels: &Tensor, n_classes: usize) -> Result<Self> {
        let cfg = MahalanobisConfig::default();
        let mut fc = MahalanobisFitter::new(n_classes);
        fc.update(feats, labels)?;
        let mut fb = MahalanobisFitter::new(1);
        let zeros = Tensor::zeros([feats.size()[0]], (Kind::Int64, feats.device()));
        fb.update(feats, &zeros)?;
        Ok(Self {
            classes: fc.finish(&cfg)?,
            background: fb.finish(&cfg)?,
        })
    }

    /// Scores `[n]` for `feats` `[n, d]`: `min_c MD_c(x) − MD_0(x)`, in float64, returned as float32.
    pub fn score(&self, feats: &Tensor) -> Result<Tensor> {
        let c = self.classes.min_distance_f64(feats)?;
        let b = self.background.min_distance_f64(feats)?;
        Ok((c - b).to_kind(Kind::Float))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json(dir, RMD_FILE, self)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        read_json(dir, RMD_FILE)
    }
}

// ------------------------------------------------------------------------------------------ ViM

/// ViM file name inside `detectors/`.
pub const VIM_FILE: &str = "vim.json";

/// A fitted ViM detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vim {
    /// Feature dimension `d`.
    pub dim: usize,
    /// Dimension `D` of the principal subspace.
    pub principal_dim: usize,
    /// Origin `o = −W⁺ b`, `[d]`.
    pub origin: Vec<f64>,
    /// Orthonormal basis `R` of the residual space, row-major `[d, d − D]`.
    pub residual: Vec<f64>,
    /// Scale of the virtual logit.
    pub alpha: f64,
}

impl Vim {
    /// The authors' rule for `D`: 1000 for `d ≥ 2048`, 512 for `d ≥ 768`, else `d / 2`.
    pub fn default_principal_dim(d: usize) -> usize {
        if d >= 2048 {
            1000
        } else if d >= 768 {
            512
        } else {
            d / 2
        }
    }

    /// Fits from training features `[N, d]` (what the head sees) and the head `w` `[k, d]`, `b`
    /// `[k]`; `principal_dim` `None` = [`Vim::default_principal_dim`]. Float64 throughout.
    pub fn fit(
        feats: &Tensor,
        w: &Tensor,
        b: &Tensor,
        principal_dim: Option<usize>,
    ) -> Result<Self> {
        let (n, d) = dims(feats, "ViM")?;
        check_head(w, b, d, "ViM")?;
        let pd = principal_dim.unwrap_or_else(|| Self::default_principal_dim(d as usize));
        if n < 2 || pd == 0 || pd >= d as usize {
            return Err(OeError::Config(format!(
                "ViM: needs at least 2 training features and 0 < D < d (N {n}, D {pd}, d {d})"
            )));
        }
        let x = feats.to_kind(Kind::Double).to_device(Device::Cpu);
        let w = w.to_kind(Kind::Double).to_device(Device::Cpu);
        let b = b.to_kind(Kind::Double).to_device(Device::Cpu);
        let origin = -w
            .linalg_pinv(1e-15, false)
            .matmul(&b.unsqueeze(1))
            .squeeze_dim(1); // [d]
        let xc = &x - &origin;
        let cov = xc.tr().matmul(&xc) / n as f64; // uncentred about o, as EmpiricalCovariance(assume_centered=True)
        let cov = (&cov + cov.tr()) * 0.5;
        let (_, vecs) = cov.linalg_eigh("L"); // ascending eigenvalues
        let residual = vecs.narrow(1, 0, d - pd as i64).contiguous(); // [d, d − D]
        let logits = x.matmul(&w.tr()) + &b;
        let max_logit = logits.amax([1i64].as_slice(), false).mean(Kind::Double);
        let norms = xc
            .matmul(&residual)
            .norm_scalaropt_dim(2, [1i64].as_slice(), false)
            .mean(Kind::Double);
        let alpha = max_logit.double_value(&[]) / norms.double_value(&[]);
        if !alpha.is_finite() {
            return Err(OeError::Config(
                "ViM: the training features have no residual off their principal subspace".into(),
            ));
        }
        Ok(Self {
            dim: d as usize,
            principal_dim: pd,
            origin: to_vec(&origin)?,
            residual: to_vec(&residual)?,
            alpha,
        })
    }

    /// Scores `[n]` for `feats` `[n, d]` and their logits `[n, k]`: `α ‖Rᵀ(x − o)‖ − logsumexp(z)`.
    pub fn score(&self, feats: &Tensor, logits: &Tensor) -> Result<Tensor> {
        let (n, d) = dims(feats, "ViM")?;
        if d as usize != self.dim || logits.size().first() != Some(&n) {
            return Err(OeError::Config(format!(
                "ViM: fitted on dim {}, got features {:?} and logits {:?}",
                self.dim,
                feats.size(),
                logits.size()
            )));
        }
        let dev = feats.device();
        let r = self.dim as i64 - self.principal_dim as i64;
        let o = Tensor::from_slice(&self.origin).to_device(dev);
        let basis = Tensor::from_slice(&self.residual)
            .view([d, r])
            .to_device(dev);
        let v = (feats.to_kind(Kind::Double) - o)
            .matmul(&basis)
            .norm_scalaropt_dim(2, [1i64].as_slice(), false)
            * self.alpha;
        let energy = logits
            .to_kind(Kind::Double)
            .logsumexp([1i64].as_slice(), false);
        Ok((v - energy).to_kind(Kind::Float))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json(dir, VIM_FILE, self)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let v: Self = read_json(dir, VIM_FILE)?;
        if v.origin.len() != v.dim
            || v.residual.len() != v.dim * (v.dim - v.principal_dim.min(v.dim))
        {
            return Err(OeError::parse(
                dir.join(VIM_FILE),
                1,
                "array sizes do not match dim",
            ));
        }
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------- ReAct

/// ReAct file name inside `detectors/`.
pub const REACT_FILE: &str = "react.json";

/// A fitted ReAct detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct React {
    /// The percentile of training activations the clip sits at.
    pub percentile: f64,
    /// The clip value `c`.
    pub clip: f64,
}

/// The `p`-th percentile (0–100) of `values`, with linear interpolation between order statistics
/// (numpy's default: position `p/100 · (n − 1)`). `None` for no values or a NaN.
pub fn percentile(values: &mut [f32], p: f64) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let pos = p / 100.0 * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = pos - lo as f64;
    let (_, a, rest) = values.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    let a = f64::from(*a);
    if frac == 0.0 || rest.is_empty() {
        return Some(a);
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
    Some(a + frac * (f64::from(b) - a))
}

impl React {
    /// Fits the clip at the `percentile`-th percentile of every value of `feats` `[N, d]`.
    pub fn fit(feats: &Tensor, percentile_level: f64) -> Result<Self> {
        dims(feats, "ReAct")?;
        let mut v = Vec::<f32>::try_from(
            feats
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view([-1]),
        )
        .map_err(OeError::from)?;
        let clip = percentile(&mut v, percentile_level).ok_or_else(|| {
            OeError::Config(format!(
                "ReAct: no percentile {percentile_level} of {} training activations (empty, NaN or a level outside 0..100)",
                v.len()
            ))
        })?;
        Ok(Self {
            percentile: percentile_level,
            clip,
        })
    }

    /// Scores `[n]` for `feats` `[n, d]` and the head: `−logsumexp(W min(f, c) + b)`.
    pub fn score(&self, feats: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (_, d) = dims(feats, "ReAct")?;
        check_head(w, b, d, "ReAct")?;
        let f = feats.to_kind(Kind::Float).clamp_max(self.clip);
        let z = f.matmul(&w.to_kind(Kind::Float).tr()) + b.to_kind(Kind::Float);
        Ok(-z.logsumexp([1i64].as_slice(), false))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json(dir, REACT_FILE, self)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        read_json(dir, REACT_FILE)
    }
}

// ----------------------------------------------------------------------------------------- ODIN

/// ODIN's temperature-scaled MSP: logits `[n, k]` → `−max_c softmax(z / T)_c` `[n]`.
pub fn odin(logits: &Tensor, temperature: f64) -> Tensor {
    -(logits.to_kind(Kind::Float) / temperature)
        .softmax(-1, Kind::Float)
        .amax([-1i64].as_slice(), false)
}

#[cfg(test)]
mod tests {
    //! Reference values: `experiments/detectors_reference.py` (numpy float64), on inputs defined by
    //! the same formulas ([`inputs`], the feature tests' inputs plus a head).
    use super::*;

    const D: i64 = 5;
    const K: i64 = 3;

    /// train x `[24, 5]`, labels `[24]`, queries `[6, 5]` (the feature tests' inputs), head W
    /// `[3, 5]`, b `[3]` (float32).
    fn inputs() -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        let (x, y, q) = crate::detect::feature::tests::inputs();
        let mut w = Vec::new();
        for c in 0..K {
            for j in 0..D {
                let (fc, fj) = (c as f64, j as f64);
                w.push(((0.5 * fc + 0.3 * fj + 0.2).sin() + if j == c { 1.0 } else { 0.0 }) as f32);
            }
        }
        let b: Vec<f32> = (0..K).map(|c| (0.1 * c as f64 - 0.05) as f32).collect();
        (
            x,
            y,
            q,
            Tensor::from_slice(&w).view([K, D]),
            Tensor::from_slice(&b),
        )
    }

    fn close(got: &Tensor, want: &[f64], tol: f64) {
        let g = to_vec(got).unwrap();
        assert_eq!(g.len(), want.len());
        for (i, (a, b)) in g.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "[{i}] {a} vs {b}");
        }
    }

    fn logits(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        x.matmul(&w.tr()) + b
    }

    #[test]
    fn rmd_matches_numpy() {
        let (x, y, q, _, _) = inputs();
        let r = Rmd::fit(&x, &y, 3).unwrap();
        close(&r.score(&q).unwrap(), &RMD, 2e-5);
    }

    #[test]
    fn vim_matches_numpy() {
        let (x, _, q, w, b) = inputs();
        let v = Vim::fit(&x, &w, &b, Some(2)).unwrap();
        assert!(
            (v.alpha - VIM_ALPHA).abs() < 1e-9 * VIM_ALPHA.abs().max(1.0),
            "{}",
            v.alpha
        );
        close(&v.score(&q, &logits(&q, &w, &b)).unwrap(), &VIM, 2e-5);
        // The default D for d = 5 is 2 (d / 2).
        assert_eq!(Vim::default_principal_dim(5), 2);
        assert_eq!(Vim::default_principal_dim(768), 512);
    }

    #[test]
    fn react_matches_numpy() {
        let (x, _, q, w, b) = inputs();
        let r = React::fit(&x, 90.0).unwrap();
        assert!((r.clip - REACT_CLIP).abs() < 1e-6, "{}", r.clip);
        close(&r.score(&q, &w, &b).unwrap(), &REACT, 2e-5);
    }

    #[test]
    fn odin_matches_numpy() {
        let (_, _, q, w, b) = inputs();
        close(&odin(&logits(&q, &w, &b), 10.0), &ODIN_T10, 2e-6);
    }

    #[test]
    fn percentile_is_numpys_linear_rule() {
        // np.percentile([3, 1, 2, 4], [0, 25, 50, 90, 100]) = 1, 1.75, 2.5, 3.7, 4
        for (p, want) in [
            (0.0, 1.0),
            (25.0, 1.75),
            (50.0, 2.5),
            (90.0, 3.7),
            (100.0, 4.0),
        ] {
            let got = percentile(&mut [3.0, 1.0, 2.0, 4.0], p).unwrap();
            assert!((got - want).abs() < 1e-6, "{p}: {got}");
        }
        assert_eq!(percentile(&mut [], 50.0), None);
        assert_eq!(percentile(&mut [1.0, f32::NAN], 50.0), None);
        assert_eq!(percentile(&mut [1.0], 101.0), None);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (x, y, q, w, b) = inputs();
        assert!(Vim::fit(&x, &w.narrow(1, 0, 4), &b, None).is_err());
        assert!(Vim::fit(&x, &w, &b, Some(5)).is_err());
        let v = Vim::fit(&x, &w, &b, None).unwrap();
        assert!(v.score(&q.narrow(1, 0, 4), &logits(&q, &w, &b)).is_err());
        assert!(React::fit(&x, 90.0)
            .unwrap()
            .score(&q, &w.narrow(0, 0, 2), &b)
            .is_err());
        assert!(Rmd::fit(&x, &y, 3)
            .unwrap()
            .score(&q.narrow(1, 0, 4))
            .is_err());
    }

    #[test]
    fn saved_detectors_load_back() {
        let (x, y, _, w, b) = inputs();
        let dir = tempfile::tempdir().unwrap();
        let r = Rmd::fit(&x, &y, 3).unwrap();
        r.save(dir.path()).unwrap();
        let back = Rmd::load(dir.path()).unwrap();
        // serde_json's float round trip is exact to within one ulp.
        for (a, b) in back.classes.means.iter().zip(&r.classes.means) {
            assert!((a - b).abs() <= 1e-15 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(back.classes.counts, r.classes.counts);
        let v = Vim::fit(&x, &w, &b, None).unwrap();
        v.save(dir.path()).unwrap();
        assert_eq!(
            Vim::load(dir.path()).unwrap().principal_dim,
            v.principal_dim
        );
        let a = React::fit(&x, 95.0).unwrap();
        a.save(dir.path()).unwrap();
        assert_eq!(React::load(dir.path()).unwrap(), a);
    }

    // ---- printed by `python3 experiments/detectors_reference.py` (section "fitted") ----
    const RMD: [f64; 6] = [
        6.4374293393e+01,
        2.5925999589e+01,
        8.1441918128e+01,
        3.1590405099e+02,
        8.6251705134e+02,
        1.7639418781e+02,
    ];
    const VIM_ALPHA: f64 = 2.603709783191e+00;
    const VIM: [f64; 6] = [
        -2.6219647588e+00,
        -1.9838478716e+00,
        9.9470791989e-01,
        4.9976827381e+00,
        1.9714854714e+01,
        2.4918082968e+01,
    ];
    const REACT_CLIP: f64 = 2.5206358433e+00;
    const REACT: [f64; 6] = [
        -4.3809757858e+00,
        -7.9279826280e+00,
        -5.7728380223e+00,
        2.4186605639e+00,
        9.8836450025e+00,
        1.0380046539e+01,
    ];
    const ODIN_T10: [f64; 6] = [
        -3.5056830091e-01,
        -3.5920074125e-01,
        -3.4661950353e-01,
        -3.6247257302e-01,
        -4.1635718358e-01,
        -4.0812589837e-01,
    ];
}
