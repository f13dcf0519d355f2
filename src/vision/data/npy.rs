//! `.npy` uint8 image arrays `[n, h, w, 3]` (C order), read lazily: the 300K Random Images file
//! (`300K_random_images.npy`, `[300000, 32, 32, 3]`).

use super::ImageSource;
use crate::error::{OeError, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A lazily read `.npy` image array.
pub struct NpyImages {
    name: String,
    path: PathBuf,
    file: File,
    offset: u64,
    n: usize,
    h: usize,
    w: usize,
}

/// Parses the header; returns `(descr, fortran_order, shape, data offset)`.
pub fn parse_header(head: &[u8], origin: &str) -> Result<(String, bool, Vec<usize>, usize)> {
    let bad = |m: &str| OeError::Data(format!("{origin}: {m}"));
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (bad magic)"));
    }
    let (len, start) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        2 | 3 if head.len() >= 12 => (
            u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported .npy version {v}"))),
    };
    let text = head
        .get(start..start + len)
        .ok_or_else(|| bad("truncated header"))?;
    let text = String::from_utf8_lossy(text);
    let field = |key: &str| -> Option<String> {
        let i = text.find(&format!("'{key}'"))?;
        let rest = text[i + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        if let Some(r) = rest.strip_prefix('(') {
            Some(r[..r.find(')')?].to_string())
        } else if let Some(r) = rest.strip_prefix('\'') {
            Some(r[..r.find('\'')?].to_string())
        } else {
            Some(rest[..rest.find([',', '}'])?].trim().to_string())
        }
    };
    let descr = field("descr").ok_or_else(|| bad("header has no descr"))?;
    let fortran =
        field("fortran_order").ok_or_else(|| bad("header has no fortran_order"))? == "True";
    let shape = field("shape")
        .ok_or_else(|| bad("header has no shape"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<_>>>()?;
    Ok((descr, fortran, shape, start + len))
}

impl NpyImages {
    pub fn open(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let file = File::open(path).map_err(|e| OeError::io(path, e))?;
        let mut head = vec![0u8; 4096];
        let got = file
            .read_at(&mut head, 0)
            .map_err(|e| OeError::io(path, e))?;
        head.truncate(got);
        let (descr, fortran, shape, offset) = parse_header(&head, &origin)?;
        if !matches!(descr.as_str(), "|u1" | "u1" | "<u1" | "|b1")
            || fortran
            || shape.len() != 4
            || shape[3] != 3
        {
            return Err(OeError::Data(format!(
                "{origin}: array is {descr} {shape:?} (fortran {fortran}); expected C-order uint8 [n, h, w, 3]"
            )));
        }
        let size = file.metadata().map_err(|e| OeError::io(path, e))?.len();
        let need = offset as u64 + (shape[0] * shape[1] * shape[2] * 3) as u64;
        if size < need {
            return Err(OeError::Data(format!(
                "{origin}: {size} bytes, the header needs {need}: truncated file"
            )));
        }
        Ok(Self {
            name: path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("npy")
                .to_string(),
            path: path.to_path_buf(),
            file,
            offset: offset as u64,
            n: shape[0],
            h: shape[1],
            w: shape[2],
        })
    }
}

impl ImageSource for NpyImages {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> usize {
        self.n
    }
    fn size(&self) -> (usize, usize) {
        (self.h, self.w)
    }
    fn read(&self, i: usize, out: &mut [u8]) -> Result<()> {
        let b = (self.h * self.w * 3) as u64;
        self.file
            .read_exact_at(out, self.offset + i as u64 * b)
            .map_err(|e| OeError::io(&self.path, e))
    }
}
