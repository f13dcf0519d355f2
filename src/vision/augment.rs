//! Per-dataset preprocessing (README, "The paper's protocol: vision") and parallel batch assembly on the CPU.
//!
//! A batch is built by rayon workers, one image each: read the u8 image from its source, random-crop
//! with zero padding and flip as configured, convert to CHW float and normalise. Each image's random
//! choices come from its own RNG seeded by `(batch seed, position)`, so batches are identical for any
//! thread count and on resume. [`Prefetcher`] builds the next batches on a background thread while
//! the device computes.

use super::data::ImageSource;
use crate::error::{OeError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Per-channel normalisation `(x/255 − mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// CIFAR statistics of the reference: mean [125.3, 123.0, 113.9]/255, std [63.0, 62.1, 66.7]/255.
    pub const CIFAR: Normalize = Normalize {
        mean: [125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0],
        std: [63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0],
    };
    /// ImageNet statistics (Tiny ImageNet).
    pub const IMAGENET: Normalize = Normalize {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// Raw `[0, 1]` (SVHN).
    pub const UNIT: Normalize = Normalize {
        mean: [0.0; 3],
        std: [1.0; 3],
    };
}

/// Random augmentation + normalisation of one stream of images.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// `RandomCrop(size, padding = pad)` with zero fill, when set.
    pub crop_pad: Option<usize>,
    /// `RandomHorizontalFlip()`.
    pub flip: bool,
    pub norm: Normalize,
}

impl Augment {
    /// Normalisation only (test time).
    pub fn test(norm: Normalize) -> Self {
        Self {
            crop_pad: None,
            flip: false,
            norm,
        }
    }
}

/// The per-dataset settings (README, "The paper's protocol: vision"): the family is named by the
/// data layer ([`super::data::Preset`]); what it means for preprocessing is here.
pub use super::data::Preset;

impl Preset {
    pub fn image_size(self) -> usize {
        match self {
            Preset::TinyImagenet => 64,
            _ => 32,
        }
    }
    pub fn norm(self) -> Normalize {
        match self {
            Preset::Cifar => Normalize::CIFAR,
            Preset::Svhn => Normalize::UNIT,
            Preset::TinyImagenet => Normalize::IMAGENET,
        }
    }
    /// In-distribution training augmentation.
    pub fn train_aug(self) -> Augment {
        match self {
            Preset::Cifar => Augment {
                crop_pad: Some(4),
                flip: true,
                norm: self.norm(),
            },
            Preset::Svhn => Augment::test(self.norm()),
            Preset::TinyImagenet => Augment {
                crop_pad: Some(8),
                flip: true,
                norm: self.norm(),
            },
        }
    }
    /// Outlier (OE) image augmentation.
    pub fn oe_aug(self) -> Augment {
        match self {
            Preset::Cifar => self.train_aug(),
            Preset::Svhn => Augment {
                crop_pad: None,
                flip: true,
                norm: self.norm(),
            },
            // Resize 64 + CenterCrop 64 (done when decoding) + Normalize.
            Preset::TinyImagenet => Augment::test(self.norm()),
        }
    }
    /// Synthetic OOD sets live in network-input space: `[-1, 1]` for CIFAR and Tiny ImageNet,
    /// `[0, 1]` for SVHN (README, "The paper's protocol: vision").
    pub fn unit_range(self) -> bool {
        self == Preset::Svhn
    }
}

/// Seed for image `pos` of a batch with seed `batch_seed`.
fn image_rng(batch_seed: u64, pos: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(batch_seed ^ (pos as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Augments one HWC u8 image into CHW floats (`out`: `3·h·w`).
pub fn augment_one(
    src: &[u8],
    h: usize,
    w: usize,
    aug: &Augment,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    let (dy, dx) = match aug.crop_pad {
        // RandomCrop(size, padding=p): a window of the zero-padded image, offset in [0, 2p].
        Some(p) => (
            rng.gen_range(0..=2 * p) as isize - p as isize,
            rng.gen_range(0..=2 * p) as isize - p as isize,
        ),
        None => (0, 0),
    };
    let flip = aug.flip && rng.gen_bool(0.5);
    let plane = h * w;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * aug.norm.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| -aug.norm.mean[c] / aug.norm.std[c]);
    for y in 0..h {
        let sy = y as isize + dy;
        for x in 0..w {
            // Flip first, then crop (the reference's order); both are symmetric for the offsets.
            let xx = if flip { w - 1 - x } else { x };
            let sx = xx as isize + dx;
            let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
            for c in 0..3 {
                let v = if inside {
                    src[(sy as usize * w + sx as usize) * 3 + c] as f32
                } else {
                    0.0
                };
                out[c * plane + y * w + x] = v * scale[c] + shift[c];
            }
        }
    }
}

/// Builds a normalised batch `[n, 3, h, w]` (CPU, float) from `idx` of `src`, in parallel.
pub fn make_batch(
    src: &dyn ImageSource,
    idx: &[usize],
    aug: &Augment,
    batch_seed: u64,
) -> Result<Tensor> {
    let (h, w) = src.size();
    let per = 3 * h * w;
    let mut data = vec![0f32; idx.len() * per];
    data.par_chunks_mut(per)
        .zip(idx.par_iter())
        .enumerate()
        .try_for_each_init(
            || vec![0u8; h * w * 3],
            |buf, (pos, (out, &i))| -> Result<()> {
                src.read(i, buf)?;
                let mut rng = image_rng(batch_seed, pos);
                augment_one(buf, h, w, aug, &mut rng, out);
                Ok(())
            },
        )?;
    Ok(Tensor::from_slice(&data).view([idx.len() as i64, 3, h as i64, w as i64]))
}

/// Labels of `idx` as an int64 tensor.
pub fn labels_of(src: &dyn ImageSource, idx: &[usize]) -> Result<Tensor> {
    let y = idx
        .iter()
        .map(|&i| {
            src.label(i)
                .ok_or_else(|| OeError::Data(format!("{}: image {i} has no label", src.name())))
        })
        .collect::<Result<Vec<i64>>>()?;
    Ok(Tensor::from_slice(&y))
}

/// One step's inputs, built ahead of time.
pub struct Prepared {
    pub step: usize,
    pub x_in: Tensor,
    pub y_in: Tensor,
    /// Outlier images, when the phase uses OE.
    pub x_out: Option<Tensor>,
}

/// What one step needs: in-distribution indices, outlier indices, and the batch seed.
#[derive(Clone, Debug)]
pub struct StepPlan {
    pub step: usize,
    pub in_idx: Vec<usize>,
    pub out_idx: Option<Vec<usize>>,
    pub seed: u64,
}

/// Runs `f` with an iterator over prepared batches built on a background thread, `depth` ahead.
pub fn with_prefetch<R>(
    plans: Vec<StepPlan>,
    depth: usize,
    in_src: &dyn ImageSource,
    in_aug: &Augment,
    oe: Option<(&dyn ImageSource, &Augment)>,
    f: impl FnOnce(&mut dyn Iterator<Item = Result<Prepared>>) -> R,
) -> R {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared>>(depth.max(1));
    std::thread::scope(|s| {
        s.spawn(move || {
            for p in plans {
                let r = (|| -> Result<Prepared> {
                    let x_in = make_batch(in_src, &p.in_idx, in_aug, p.seed)?;
                    let y_in = labels_of(in_src, &p.in_idx)?;
                    let x_out = match (&p.out_idx, oe) {
                        (Some(o), Some((src, aug))) => {
                            Some(make_batch(src, o, aug, p.seed ^ 0x5555_aaaa)?)
                        }
                        _ => None,
                    };
                    Ok(Prepared {
                        step: p.step,
                        x_in,
                        y_in,
                        x_out,
                    })
                })();
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    break;
                }
            }
        });
        // The receiver is dropped when `f` returns (even early), which stops the producer at its
        // next send, so the scope can join it.
        let mut it = rx.into_iter();
        f(&mut it)
    })
}
