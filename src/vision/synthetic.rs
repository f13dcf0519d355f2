//! Synthetic OOD sets, built directly in network-input space (README, "The paper's protocol: vision"), `[n, 3, s, s]`:
//!
//! | set | CIFAR / Tiny ImageNet (`[-1, 1]`) | SVHN (`[0, 1]`) |
//! |---|---|---|
//! | Gaussian | N(0, 0.5²) clipped to [-1, 1] | N(0.5, 0.5²) clipped to [0, 1] |
//! | Rademacher / Bernoulli | ±1 with p = ½ | {0, 1} with p = ½ |
//! | Blobs | Bernoulli(0.7) per pixel of `s×s×3`, 3-D Gaussian blur (σ 1.5; 2 for 64×64; scipy `nearest` edges, truncate 4), values < 0.75 set to 0, then ×2 − 1 | the same without ×2 − 1 |
//!
//! The blur is skimage's `gaussian(x, sigma, multichannel=False)` on the `(s, s, 3)` array: with
//! `multichannel=False` the channel axis is blurred too.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr_free::normal;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which synthetic set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Synthetic {
    Gaussian,
    /// Rademacher (±1) for `[-1, 1]` inputs; Bernoulli {0, 1} for SVHN.
    Rademacher,
    Blobs,
}

impl Synthetic {
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "gaussian" => Some(Synthetic::Gaussian),
            "rademacher" | "bernoulli" => Some(Synthetic::Rademacher),
            "blobs" => Some(Synthetic::Blobs),
            _ => None,
        }
    }

    /// The set's name as the paper labels it for this input range.
    pub fn name(self, unit_range: bool) -> &'static str {
        match (self, unit_range) {
            (Synthetic::Gaussian, _) => "gaussian",
            (Synthetic::Rademacher, false) => "rademacher",
            (Synthetic::Rademacher, true) => "bernoulli",
            (Synthetic::Blobs, _) => "blobs",
        }
    }
}

/// Box–Muller normal sampling without an extra crate.
mod rand_distr_free {
    use rand::Rng;
    pub fn normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// scipy.ndimage's Gaussian kernel: radius `int(truncate·σ + 0.5)`, weights `exp(−x²/2σ²)` normalised.
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let r = (4.0 * sigma + 0.5) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// 1-D correlation along `axis` of a `dims`-shaped row-major array with `nearest` boundaries.
fn blur_axis(a: &[f64], dims: [usize; 3], axis: usize, k: &[f64]) -> Vec<f64> {
    let r = (k.len() / 2) as isize;
    let strides = [dims[1] * dims[2], dims[2], 1];
    let n = dims[axis] as isize;
    let mut out = vec![0.0; a.len()];
    for i in 0..dims[0] {
        for j in 0..dims[1] {
            for l in 0..dims[2] {
                let idx = [i, j, l];
                let base =
                    i * strides[0] + j * strides[1] + l * strides[2] - idx[axis] * strides[axis];
                let p = idx[axis] as isize;
                let mut s = 0.0;
                for (t, w) in k.iter().enumerate() {
                    let q = (p + t as isize - r).clamp(0, n - 1) as usize;
                    s += w * a[base + q * strides[axis]];
                }
                out[i * strides[0] + j * strides[1] + l * strides[2]] = s;
            }
        }
    }
    out
}

/// `skimage.filters.gaussian(x, sigma, multichannel=False)` on an `(s, s, 3)` array (all three axes).
pub fn gaussian_blur_3d(a: &[f64], s: usize, sigma: f64) -> Vec<f64> {
    let k = gaussian_kernel(sigma);
    let dims = [s, s, 3];
    let a = blur_axis(a, dims, 0, &k);
    let a = blur_axis(&a, dims, 1, &k);
    blur_axis(&a, dims, 2, &k)
}

/// Generates `n` images of `size × size` (`[n, 3, size, size]` float, CPU) with `seed`.
/// `unit_range`: SVHN's `[0, 1]` variants.
pub fn generate(kind: Synthetic, n: usize, size: usize, unit_range: bool, seed: u64) -> Tensor {
    let per = 3 * size * size;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0f32; n * per];
    match kind {
        Synthetic::Gaussian => {
            let (mu, lo, hi) = if unit_range {
                (0.5, 0.0, 1.0)
            } else {
                (0.0, -1.0, 1.0)
            };
            for v in data.iter_mut() {
                *v = (mu + 0.5 * normal(&mut rng)).clamp(lo, hi) as f32;
            }
        }
        Synthetic::Rademacher => {
            for v in data.iter_mut() {
                let b = rng.gen_bool(0.5);
                *v = match (b, unit_range) {
                    (true, _) => 1.0,
                    (false, true) => 0.0,
                    (false, false) => -1.0,
                };
            }
        }
        Synthetic::Blobs => {
            let sigma = if size >= 64 { 2.0 } else { 1.5 };
            for img in data.chunks_mut(per) {
                // HWC (s, s, 3) as the reference draws it, then transposed to CHW.
                let hwc: Vec<f64> = (0..per)
                    .map(|_| if rng.gen_bool(0.7) { 1.0 } else { 0.0 })
                    .collect();
                let b = gaussian_blur_3d(&hwc, size, sigma);
                for y in 0..size {
                    for x in 0..size {
                        for c in 0..3 {
                            let mut v = b[(y * size + x) * 3 + c];
                            if v < 0.75 {
                                v = 0.0;
                            }
                            if !unit_range {
                                v = v * 2.0 - 1.0;
                            }
                            img[c * size * size + y * size + x] = v as f32;
                        }
                    }
                }
            }
        }
    }
    Tensor::from_slice(&data).view([n as i64, 3, size as i64, size as i64])
}
