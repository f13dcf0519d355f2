//! Image data: one in-memory type ([`ImageSet`], `[n, h, w, 3]` u8 in HWC order), a lazy
//! [`ImageSource`] trait for sets too large to hold (80M Tiny Images, big image folders), and readers
//! for each canonical format:
//!
//! - [`cifar`]: CIFAR-10/100 python pickle batches and binary batches;
//! - [`mat`]: SVHN `.mat` (format 5, uint8 matrices, zlib-compressed or not);
//! - [`tinyimagenet`]: the Tiny ImageNet folder with its val annotation file;
//! - [`folder`]: any folder (or `.tar.gz`) of JPEG/PNG images, with class sub-folders or not;
//! - [`tinyimages`]: the 80 Million Tiny Images `.bin` with the CIFAR exclusion list;
//! - [`npy`]: `.npy` uint8 arrays (300K Random Images).
//!
//! [`load`] maps dataset names to these readers under a data root.

pub mod cifar;
pub mod folder;
pub mod load;
pub mod manifests;
pub mod mat;
pub mod npy;
pub mod pickle;
pub mod tinyimagenet;
pub mod tinyimages;

pub use load::*;

use crate::error::{OeError, Result};

/// The dataset family that decides preprocessing (image size, normalisation, augmentation:
/// [`super::augment`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// CIFAR-10/100 (and image folders by default): 32×32, flip + crop(pad 4), CIFAR statistics.
    Cifar,
    /// SVHN: 32×32, no augmentation, raw [0, 1]; OE images flipped only.
    Svhn,
    /// Tiny ImageNet: 64×64, flip + crop(pad 8), ImageNet statistics; OE images not augmented.
    TinyImagenet,
}

/// Images of one size, `[n, h, w, 3]` u8 (HWC, RGB), with optional integer labels.
#[derive(Clone, Debug, Default)]
pub struct ImageSet {
    pub name: String,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
    /// One per image, or empty for unlabelled sets.
    pub labels: Vec<i64>,
    /// Class names; index = label.
    pub classes: Vec<String>,
}

impl ImageSet {
    pub fn image_bytes(&self) -> usize {
        self.height * self.width * 3
    }

    pub fn len(&self) -> usize {
        if self.image_bytes() == 0 {
            0
        } else {
            self.pixels.len() / self.image_bytes()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `i` as HWC bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let b = self.image_bytes();
        &self.pixels[i * b..(i + 1) * b]
    }

    /// The images at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(idx.len() * self.image_bytes());
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            name: self.name.clone(),
            height: self.height,
            width: self.width,
            pixels,
            labels: if self.labels.is_empty() {
                vec![]
            } else {
                idx.iter().map(|&i| self.labels[i]).collect()
            },
            classes: self.classes.clone(),
        }
    }

    /// Appends `other` (same size and classes).
    pub fn extend(&mut self, other: &ImageSet) -> Result<()> {
        if (self.height, self.width) != (other.height, other.width)
            || self.labels.is_empty() != other.labels.is_empty()
        {
            return Err(OeError::Data(format!(
                "cannot concatenate {} ({}x{}) and {} ({}x{})",
                self.name, self.height, self.width, other.name, other.height, other.width
            )));
        }
        self.pixels.extend_from_slice(&other.pixels);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }

    /// Checks internal consistency (labels, classes, sizes).
    pub fn check(&self) -> Result<()> {
        let b = self.image_bytes();
        if b == 0 || !self.pixels.len().is_multiple_of(b) {
            return Err(OeError::Data(format!(
                "{}: {} bytes is not a whole number of {}x{}x3 images",
                self.name,
                self.pixels.len(),
                self.height,
                self.width
            )));
        }
        if !self.labels.is_empty() {
            if self.labels.len() != self.len() {
                return Err(OeError::Data(format!(
                    "{}: {} images but {} labels",
                    self.name,
                    self.len(),
                    self.labels.len()
                )));
            }
            let k = self.classes.len() as i64;
            if let Some(y) = self.labels.iter().find(|&&y| y < 0 || (k > 0 && y >= k)) {
                return Err(OeError::Data(format!(
                    "{}: label {y} out of range for {k} classes",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// Random access to images of one fixed size, possibly decoded or read from disk on demand.
/// Shared by the training batcher and the evaluation, which call it from several threads.
pub trait ImageSource: Send + Sync {
    fn name(&self) -> &str;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(height, width)` of every image.
    fn size(&self) -> (usize, usize);
    /// Writes image `i` (HWC u8, `size()`) into `out`.
    fn read(&self, i: usize, out: &mut [u8]) -> Result<()>;
    /// Label of image `i`, for labelled sources.
    fn label(&self, _i: usize) -> Option<i64> {
        None
    }
    /// Indices the outlier sampler must skip (80M Tiny Images: images overlapping CIFAR).
    fn excluded(&self, _i: usize) -> bool {
        false
    }
}

impl ImageSource for ImageSet {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> usize {
        ImageSet::len(self)
    }
    fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }
    fn read(&self, i: usize, out: &mut [u8]) -> Result<()> {
        if i >= ImageSet::len(self) {
            return Err(OeError::Data(format!(
                "{}: image {i} out of range ({} images)",
                self.name,
                ImageSet::len(self)
            )));
        }
        out.copy_from_slice(self.image(i));
        Ok(())
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.labels.get(i).copied()
    }
}

/// Converts a column-major `[h, w, 3, n]` array (MATLAB order; also one 80M Tiny Images record with
/// `n = 1`) into HWC images: byte `r + h·c + h·w·ch + h·w·3·n` is pixel (row r, column c, channel ch)
/// of image n.
pub fn column_major_to_hwc(src: &[u8], h: usize, w: usize, dst: &mut [u8]) {
    let per = h * w * 3;
    let n = src.len() / per;
    for img in 0..n {
        let s = &src[img * per..(img + 1) * per];
        let d = &mut dst[img * per..(img + 1) * per];
        for ch in 0..3 {
            for c in 0..w {
                for r in 0..h {
                    d[(r * w + c) * 3 + ch] = s[r + h * c + h * w * ch];
                }
            }
        }
    }
}

/// Converts planar `[3, h, w]` records (CIFAR: 1024 red, 1024 green, 1024 blue, row-major) to HWC.
pub fn planar_to_hwc(src: &[u8], h: usize, w: usize, dst: &mut [u8]) {
    let plane = h * w;
    for p in 0..plane {
        for ch in 0..3 {
            dst[p * 3 + ch] = src[ch * plane + p];
        }
    }
}
