//! Outlier Exposure losses, shared by text and vision.
//!
//! All functions take logits `z` of shape `[n, k]` (n examples, k classes, float) and return a scalar
//! tensor that is differentiable in `z`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// λ used by the paper for text (NLP) experiments.
pub const LAMBDA_TEXT: f64 = crate::paper::defaults::TEXT_LAMBDA;
/// λ used by the paper for vision experiments.
pub const LAMBDA_VISION: f64 = crate::paper::defaults::VISION_LAMBDA;

/// Which auxiliary loss is applied to the outlier batch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum OeLoss {
    /// The paper's loss: `λ · mean_i H(U; softmax(z_i))` on the outlier batch.
    Uniform { lambda: f64 },
    /// Energy-bounded loss of Liu et al. (2020), `λ · (mean ReLU(E_in − m_in)² + mean ReLU(m_out − E_out)²)`
    /// with energy `E(z) = −T·logsumexp(z/T)` (their code: λ = 0.1, m_in = −25, m_out = −7, T = 1).
    Energy {
        lambda: f64,
        m_in: f64,
        m_out: f64,
        temperature: f64,
    },
}

impl OeLoss {
    /// The paper's text default (uniform, λ = 1.0).
    pub fn text_default() -> Self {
        OeLoss::Uniform {
            lambda: LAMBDA_TEXT,
        }
    }

    /// The paper's vision default (uniform, λ = 0.5).
    pub fn vision_default() -> Self {
        OeLoss::Uniform {
            lambda: LAMBDA_VISION,
        }
    }

    /// The weighted auxiliary term. `logits_in`: `[n_in, k]` (used by the energy loss only),
    /// `logits_out`: `[n_out, k]`. Returns a scalar.
    pub fn auxiliary(&self, logits_in: &Tensor, logits_out: &Tensor) -> Tensor {
        match *self {
            OeLoss::Uniform { lambda } => uniform_cross_entropy(logits_out) * lambda,
            OeLoss::Energy {
                lambda,
                m_in,
                m_out,
                temperature,
            } => energy_bounded(logits_in, logits_out, m_in, m_out, temperature) * lambda,
        }
    }
}

/// Batch-mean cross-entropy from `softmax(z)` to the uniform distribution,
/// `mean_i [logsumexp(z_i) − mean_c z_ic]` (the vision reference's form).
///
/// `logits`: `[n, k]` → scalar.
pub fn uniform_cross_entropy(logits: &Tensor) -> Tensor {
    let lse = logits.logsumexp([-1i64].as_slice(), false);
    let mean = logits.mean_dim([-1i64].as_slice(), false, Kind::Float);
    (lse - mean).mean(Kind::Float)
}

/// The same quantity in the NLP reference's form: `mean over batch and classes of −log_softmax(z)`.
///
/// `logits`: `[n, k]` → scalar. Numerically identical to [`uniform_cross_entropy`].
pub fn uniform_cross_entropy_log_softmax(logits: &Tensor) -> Tensor {
    -logits.log_softmax(-1, Kind::Float).mean(Kind::Float)
}

/// Energy `E(z) = −T · logsumexp(z / T)` per row. `logits`: `[n, k]` → `[n]`.
pub fn energy(logits: &Tensor, temperature: f64) -> Tensor {
    (logits / temperature).logsumexp([-1i64].as_slice(), false) * (-temperature)
}

/// Energy-bounded OE term (unweighted): `mean ReLU(E_in − m_in)² + mean ReLU(m_out − E_out)²`.
///
/// `logits_in`: `[n_in, k]`, `logits_out`: `[n_out, k]` → scalar.
pub fn energy_bounded(
    logits_in: &Tensor,
    logits_out: &Tensor,
    m_in: f64,
    m_out: f64,
    temperature: f64,
) -> Tensor {
    let e_in = energy(logits_in, temperature);
    let e_out = energy(logits_out, temperature);
    let hinge_in = (e_in - m_in).relu().square().mean(Kind::Float);
    let hinge_out = (-e_out + m_out).relu().square().mean(Kind::Float);
    hinge_in + hinge_out
}

/// Mean cross-entropy of `logits` (`[n, k]`) against integer `labels` (`[n]`, int64) → scalar.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let k = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, k])
    }

    fn scalar(x: &Tensor) -> f64 {
        x.double_value(&[])
    }

    // Reference values computed by hand with Python's math module (float64):
    //   row [1,2,3]: logsumexp = 3.40760596444438, mean = 2 -> 1.40760596444438
    //   row [0,0,0]: log 3 = 1.09861228866811
    //   batch mean = 1.25310912655624
    #[test]
    fn uniform_cross_entropy_matches_hand_values() {
        let z = t(&[&[1.0, 2.0, 3.0], &[0.0, 0.0, 0.0]]);
        assert!((scalar(&uniform_cross_entropy(&z)) - 1.253_109_126_556_24).abs() < 1e-6);
    }

    #[test]
    fn both_forms_of_the_paper_loss_agree() {
        tch::manual_seed(7);
        for &(n, k) in &[(1, 2), (64, 2), (64, 50), (17, 20)] {
            let z = Tensor::randn([n, k], (Kind::Float, tch::Device::Cpu)) * 4.0;
            let a = scalar(&uniform_cross_entropy(&z));
            let b = scalar(&uniform_cross_entropy_log_softmax(&z));
            assert!((a - b).abs() < 1e-5, "n={n} k={k}: {a} vs {b}");
        }
    }

    #[test]
    fn uniform_loss_is_minimal_log_k_at_uniform_logits() {
        let z = Tensor::full([5, 10], 3.5, (Kind::Float, tch::Device::Cpu));
        assert!((scalar(&uniform_cross_entropy(&z)) - (10f64).ln()).abs() < 1e-6);
    }

    #[test]
    fn lambda_weights_the_uniform_term() {
        let z = t(&[&[1.0, 2.0, 3.0], &[0.0, 0.0, 0.0]]);
        let v = scalar(&OeLoss::vision_default().auxiliary(&z, &z));
        assert!((v - 0.5 * 1.253_109_126_556_24).abs() < 1e-6);
    }

    // Energy-bounded reference by hand (Python math, float64), T = 1, m_in = -2, m_out = -1:
    //   in rows [3,0] -> E = -3.04858735157374 ; [0,0] -> E = -0.69314718055995
    //     hinges ReLU(E+2): 0, 1.30685281944005 -> squares 0, 1.70786425173 -> mean 0.85393212586
    //   out rows [0,0] -> E = -0.693147..; ReLU(-1 - E) = 0 ; [5,5] -> E = -5.69314718055995,
    //     ReLU(-1 + 5.693147) = 4.69314718055995 -> square 22.0256292 -> mean 11.0128146
    //   total = 11.8667467...
    #[test]
    fn energy_bounded_matches_hand_values() {
        let zin = t(&[&[3.0, 0.0], &[0.0, 0.0]]);
        let zout = t(&[&[0.0, 0.0], &[5.0, 5.0]]);
        let v = scalar(&energy_bounded(&zin, &zout, -2.0, -1.0, 1.0));
        let hin = 0.5 * (2.0f64 - 2f64.ln()).powi(2);
        let hout = 0.5 * (5.0 + 2f64.ln() - 1.0).powi(2);
        assert!((v - (hin + hout)).abs() < 1e-4, "{v} vs {}", hin + hout);
        assert!((v - 11.866_746_7).abs() < 1e-4);
    }

    #[test]
    fn losses_are_differentiable() {
        let z = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let l = uniform_cross_entropy(&z);
        l.backward();
        let g = z.grad();
        // d/dz [lse(z) - mean z] = softmax(z) - 1/k; each row of the gradient sums to zero (x 1/n).
        let row_sums = g.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
        assert!(row_sums.abs().max().double_value(&[]) < 1e-6);
    }
}
