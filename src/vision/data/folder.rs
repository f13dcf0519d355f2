//! Folders of JPEG/PNG images (Textures, Places365, LSUN, iSUN, any user folder; Tiny ImageNet's
//! files), as a directory tree or a `.tar.gz`/`.tgz`/`.tar` archive of one.
//!
//! Every image is decoded to RGB and fitted to `size × size` as torchvision's
//! `Resize(size)` + `CenterCrop(size)`: the shorter side is scaled to `size` (bilinear with
//! antialiasing, like PIL), then the centre is cut out. Images already `size × size` are unchanged.
//! With class sub-folders (torchvision `ImageFolder`), labels are the sorted sub-folder names.

use super::{ImageSet, ImageSource};
use crate::error::{OeError, Result};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where an image's encoded bytes are.
#[derive(Clone, Debug)]
pub enum Blob {
    Path(PathBuf),
    Mem(Arc<Vec<u8>>),
}

impl Blob {
    fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Blob::Path(p) => Ok(std::fs::read(p).map_err(|e| OeError::io(p, e))?.into()),
            Blob::Mem(b) => Ok(b.as_slice().into()),
        }
    }
}

/// `true` for file names with an image extension (jpg, jpeg, png; any case).
pub fn is_image(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.ends_with(".jpg") || l.ends_with(".jpeg") || l.ends_with(".png")
}

fn is_archive(p: &Path) -> bool {
    let s = p.to_string_lossy().to_ascii_lowercase();
    s.ends_with(".tar.gz") || s.ends_with(".tgz") || s.ends_with(".tar")
}

/// Every image under `root` (a directory, walked recursively without following links to
/// directories, or an archive) as
/// `(relative path with '/' separators, blob)`, sorted by path.
pub fn scan(root: &Path) -> Result<Vec<(String, Blob)>> {
    let mut out = Vec::new();
    if root.is_dir() {
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| OeError::io(&d, e))? {
                let e = e.map_err(|e| OeError::io(&d, e))?;
                let p = e.path();
                let ft = e.file_type().map_err(|e| OeError::io(&p, e))?;
                // Links to directories are not followed (they can lead out of the tree or
                // around in a loop); links to image files are.
                if ft.is_dir() {
                    stack.push(p);
                } else if (ft.is_file() || (ft.is_symlink() && p.is_file()))
                    && is_image(&e.file_name().to_string_lossy())
                {
                    let rel = p
                        .strip_prefix(root)
                        .unwrap_or(&p)
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().to_string())
                        .collect::<Vec<_>>()
                        .join("/");
                    out.push((rel, Blob::Path(p)));
                }
            }
        }
    } else if root.is_file() && is_archive(root) {
        let f = std::fs::File::open(root).map_err(|e| OeError::io(root, e))?;
        let lower = root.to_string_lossy().to_ascii_lowercase();
        let reader: Box<dyn Read> = if lower.ends_with(".tar") {
            Box::new(std::io::BufReader::new(f))
        } else {
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
        };
        let mut ar = tar::Archive::new(reader);
        for e in ar.entries().map_err(|e| OeError::io(root, e))? {
            let mut e = e.map_err(|e| OeError::io(root, e))?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = e
                .path()
                .map_err(|e| OeError::io(root, e))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            if !is_image(&name) {
                continue;
            }
            // Capped: the size is the header's claim (a crafted one must not abort the process).
            let mut buf = Vec::with_capacity(e.size().min(16 << 20) as usize);
            e.read_to_end(&mut buf).map_err(|e| OeError::io(root, e))?;
            out.push((name, Blob::Mem(Arc::new(buf))));
        }
    } else {
        return Err(OeError::Data(format!(
            "{}: not a folder or a .tar.gz/.tgz/.tar archive of images",
            root.display()
        )));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.is_empty() {
        return Err(OeError::Data(format!(
            "{}: no .jpg/.jpeg/.png images found",
            root.display()
        )));
    }
    Ok(out)
}

/// Decodes an image and fits it to `size × size` (Resize(size) + CenterCrop(size)); HWC RGB bytes.
pub fn decode_fit(bytes: &[u8], size: usize, origin: &str) -> Result<Vec<u8>> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| OeError::Data(format!("{origin}: cannot decode image: {e}")))?
        .to_rgb8();
    Ok(fit_rgb(img, size))
}

/// Resize(size) + CenterCrop(size) of an RGB image.
pub fn fit_rgb(img: image::RgbImage, size: usize) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (w, h) == (size, size) {
        return img.into_raw();
    }
    // torchvision Resize(int): the shorter side becomes `size`, the longer keeps the aspect ratio.
    let (nw, nh) = if w <= h {
        (size, (size * h / w).max(size))
    } else {
        ((size * w / h).max(size), size)
    };
    let img = if (nw, nh) == (w, h) {
        img
    } else {
        image::imageops::resize(
            &img,
            nw as u32,
            nh as u32,
            image::imageops::FilterType::Triangle,
        )
    };
    // torchvision CenterCrop: top = round((h − size) / 2).
    let top = ((nh - size) as f64 / 2.0).round() as u32;
    let left = ((nw - size) as f64 / 2.0).round() as u32;
    image::imageops::crop_imm(&img, left, top, size as u32, size as u32)
        .to_image()
        .into_raw()
}

/// A folder of images decoded on demand.
#[derive(Clone, Debug)]
pub struct FolderImages {
    pub name: String,
    pub items: Vec<(String, Blob)>,
    /// Per item, when the folder has class sub-folders.
    pub labels: Vec<i64>,
    pub classes: Vec<String>,
    pub size: usize,
}

/// Drops leading directories shared by every path while at least `keep` components remain
/// (`test/airplane/0.jpg` → `airplane/0.jpg` with `keep = 2`).
fn strip_common(items: &mut [(String, Blob)], keep: usize) {
    loop {
        let first = items[0].0.split('/').next().unwrap_or("").to_string();
        let all = items.iter().all(|(p, _)| {
            p.split('/').count() > keep && p.split('/').next() == Some(first.as_str())
        });
        if !all {
            return;
        }
        for (p, _) in items.iter_mut() {
            *p = p[first.len() + 1..].to_string();
        }
    }
}

/// A folder or archive, optionally restricted to some of its class sub-folders:
/// `PATH` or `PATH#class+class+...` (a path that exists as written is never split at `#`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderSpec {
    pub path: PathBuf,
    /// The classes to keep, in the order given (`None`: all).
    pub classes: Option<Vec<String>>,
}

impl FolderSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        if Path::new(spec).exists() {
            return Ok(Self {
                path: spec.into(),
                classes: None,
            });
        }
        match spec.rsplit_once('#') {
            Some((path, list)) => {
                let classes: Vec<String> = list.split('+').map(|c| c.trim().to_string()).collect();
                if classes.iter().any(|c| c.is_empty()) {
                    return Err(OeError::Config(format!(
                        "`{spec}`: an empty class name after `#` (classes are joined by `+`: PATH#cat+dog)"
                    )));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(d) = classes.iter().find(|c| !seen.insert(c.as_str())) {
                    return Err(OeError::Config(format!(
                        "`{spec}`: class `{d}` is named twice"
                    )));
                }
                Ok(Self {
                    path: path.into(),
                    classes: Some(classes),
                })
            }
            None => Ok(Self {
                path: spec.into(),
                classes: None,
            }),
        }
    }

    /// The images of this spec with their class labels (the kept classes, sorted by name, as
    /// torchvision's `ImageFolder` would see a folder holding only those).
    pub fn labelled(&self, size: usize) -> Result<FolderImages> {
        let all = FolderImages::with_classes(&self.path, size)?;
        match &self.classes {
            None => Ok(all),
            Some(keep) => all.only_classes(keep, &self.path),
        }
    }

    /// The images of this spec without labels (outliers, OOD sets).
    pub fn unlabelled(&self, size: usize) -> Result<FolderImages> {
        match &self.classes {
            None => FolderImages::unlabelled(&self.path, size),
            Some(_) => {
                let mut f = self.labelled(size)?;
                f.labels.clear();
                f.classes.clear();
                Ok(f)
            }
        }
    }
}

impl FolderImages {
    /// Keeps the images of the classes `keep` (each must exist), relabelled over those classes
    /// in sorted order; the name gets `#class+class`.
    pub fn only_classes(self, keep: &[String], origin: &Path) -> Result<Self> {
        if let Some(c) = keep.iter().find(|c| !self.classes.contains(c)) {
            return Err(OeError::Data(format!(
                "{}: no class folder `{c}` (classes: {})",
                origin.display(),
                self.classes.join(", ")
            )));
        }
        let mut classes = keep.to_vec();
        classes.sort();
        let mut map = vec![None; self.classes.len()];
        for (new, c) in classes.iter().enumerate() {
            let old = self.classes.iter().position(|x| x == c).unwrap_or(0);
            map[old] = Some(new as i64);
        }
        let (mut items, mut labels) = (Vec::new(), Vec::new());
        for (item, &l) in self.items.into_iter().zip(&self.labels) {
            if let Some(new) = map[l as usize] {
                items.push(item);
                labels.push(new);
            }
        }
        Ok(Self {
            name: format!("{}#{}", self.name, keep.join("+")),
            items,
            labels,
            classes,
            size: self.size,
        })
    }

    /// All images under `root`, unlabelled, fitted to `size`.
    pub fn unlabelled(root: &Path, size: usize) -> Result<Self> {
        let items = scan(root)?;
        Ok(Self {
            name: name_of(root),
            items,
            labels: vec![],
            classes: vec![],
            size,
        })
    }

    /// An `ImageFolder`: each first-level sub-folder (after shared leading folders of an archive) is
    /// a class, in sorted order.
    pub fn with_classes(root: &Path, size: usize) -> Result<Self> {
        let mut items = scan(root)?;
        strip_common(&mut items, 2);
        if let Some((p, _)) = items.iter().find(|(p, _)| !p.contains('/')) {
            return Err(OeError::Data(format!(
                "{}: `{p}` is not inside a class folder; a labelled image folder needs one sub-folder per class",
                root.display()
            )));
        }
        let mut classes: Vec<String> = items
            .iter()
            .map(|(p, _)| p.split('/').next().unwrap_or("").to_string())
            .collect();
        classes.sort();
        classes.dedup();
        let labels = items
            .iter()
            .map(|(p, _)| {
                let c = p.split('/').next().unwrap_or("");
                classes.binary_search_by(|x| x.as_str().cmp(c)).unwrap_or(0) as i64
            })
            .collect();
        Ok(Self {
            name: name_of(root),
            items,
            labels,
            classes,
            size,
        })
    }

    /// Decodes every image in parallel.
    pub fn load_all(&self) -> Result<ImageSet> {
        let per = self.size * self.size * 3;
        let mut pixels = vec![0u8; self.items.len() * per];
        pixels
            .par_chunks_mut(per)
            .enumerate()
            .try_for_each(|(i, out)| self.read(i, out))?;
        let set = ImageSet {
            name: self.name.clone(),
            height: self.size,
            width: self.size,
            pixels,
            labels: self.labels.clone(),
            classes: self.classes.clone(),
        };
        set.check()?;
        Ok(set)
    }

    /// The items at `idx` (a split).
    pub fn subset(&self, idx: &[usize]) -> Self {
        Self {
            name: self.name.clone(),
            items: idx.iter().map(|&i| self.items[i].clone()).collect(),
            labels: if self.labels.is_empty() {
                vec![]
            } else {
                idx.iter().map(|&i| self.labels[i]).collect()
            },
            classes: self.classes.clone(),
            size: self.size,
        }
    }
}

fn name_of(root: &Path) -> String {
    let s = root
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "folder".into());
    s.trim_end_matches(".tar.gz")
        .trim_end_matches(".tgz")
        .trim_end_matches(".tar")
        .to_string()
}

impl ImageSource for FolderImages {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> usize {
        self.items.len()
    }
    fn size(&self) -> (usize, usize) {
        (self.size, self.size)
    }
    fn read(&self, i: usize, out: &mut [u8]) -> Result<()> {
        let (name, blob) = &self.items[i];
        let px = decode_fit(&blob.bytes()?, self.size, name)?;
        out.copy_from_slice(&px);
        Ok(())
    }
    fn label(&self, i: usize) -> Option<i64> {
        self.labels.get(i).copied()
    }
}
