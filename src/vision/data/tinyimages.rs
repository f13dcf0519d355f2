//! The 80 Million Tiny Images file (`tiny_images.bin`: 79,302,017 records of 3072 bytes) read
//! lazily, with the CIFAR exclusion list (`80mn_cifar_idxs.txt`, one-based indices).
//!
//! Record i holds a `(32, 32, 3)` array in Fortran order: byte j is pixel (row `j % 32`,
//! column `(j / 32) % 32`, channel `j / 1024`) (README, "The paper's protocol: vision").

use super::{column_major_to_hwc, ImageSource};
use crate::error::{OeError, Result};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Images in the full file.
pub const TINY_IMAGES_LEN: usize = 79_302_017;
const REC: usize = 3072;

pub struct TinyImages {
    path: PathBuf,
    file: File,
    n: usize,
    excluded: HashSet<u32>,
}

impl TinyImages {
    /// Opens `bin`; `cifar_idxs`: the exclusion list (one-based indices, one per line).
    pub fn open(bin: &Path, cifar_idxs: Option<&Path>) -> Result<Self> {
        let file = File::open(bin).map_err(|e| OeError::io(bin, e))?;
        let size = file.metadata().map_err(|e| OeError::io(bin, e))?.len() as usize;
        if size == 0 || !size.is_multiple_of(REC) {
            return Err(OeError::Data(format!(
                "{}: {size} bytes is not a whole number of 3072-byte images",
                bin.display()
            )));
        }
        let mut excluded = HashSet::new();
        if let Some(p) = cifar_idxs {
            let text = std::fs::read_to_string(p).map_err(|e| OeError::io(p, e))?;
            for (ln, l) in text.lines().enumerate() {
                let l = l.trim();
                if l.is_empty() {
                    continue;
                }
                let one_based: u32 = l
                    .parse()
                    .map_err(|_| OeError::parse(p, ln + 1, format!("`{l}` is not an index")))?;
                if one_based == 0 {
                    return Err(OeError::parse(p, ln + 1, "indices are one-based"));
                }
                excluded.insert(one_based - 1);
            }
        }
        Ok(Self {
            path: bin.to_path_buf(),
            file,
            n: size / REC,
            excluded,
        })
    }

    /// Number of excluded (CIFAR-overlapping) indices.
    pub fn excluded_count(&self) -> usize {
        self.excluded.len()
    }

    pub fn is_excluded(&self, i: usize) -> bool {
        self.excluded.contains(&(i as u32))
    }
}

impl ImageSource for TinyImages {
    fn name(&self) -> &str {
        "tiny-images"
    }
    fn len(&self) -> usize {
        self.n
    }
    fn size(&self) -> (usize, usize) {
        (32, 32)
    }
    fn read(&self, i: usize, out: &mut [u8]) -> Result<()> {
        let mut raw = [0u8; REC];
        self.file
            .read_exact_at(&mut raw, (i * REC) as u64)
            .map_err(|e| OeError::io(&self.path, e))?;
        column_major_to_hwc(&raw, 32, 32, out);
        Ok(())
    }
    fn excluded(&self, i: usize) -> bool {
        self.is_excluded(i)
    }
}
