//! Tiny ImageNet (`tiny-imagenet-200/`): `wnids.txt`, `train/<wnid>/images/*.JPEG` (500 per class)
//! and `val/images/*.JPEG` labelled by `val/val_annotations.txt` (`file<TAB>wnid<TAB>box...`).
//! The val folder (10,000) is the test set, as the paper. Classes are the sorted wnids
//! (torchvision `ImageFolder` order). Images are 64×64 (grey ones are converted to RGB).

use super::folder::{Blob, FolderImages};
use super::ImageSet;
use crate::error::{OeError, Result};
use std::path::Path;

/// The directory holding `wnids.txt`: `root/tiny-imagenet-200` or `root` itself.
pub fn locate(root: &Path) -> Option<std::path::PathBuf> {
    [root.join("tiny-imagenet-200"), root.to_path_buf()]
        .into_iter()
        .find(|d| d.join("wnids.txt").is_file())
}

fn classes(dir: &Path) -> Result<Vec<String>> {
    let p = dir.join("wnids.txt");
    let text = std::fs::read_to_string(&p).map_err(|e| OeError::io(&p, e))?;
    let mut c: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    c.sort();
    c.dedup();
    Ok(c)
}

/// The split as a lazily decoded folder (`train = false`: the val folder).
pub fn folder(root: &Path, train: bool) -> Result<FolderImages> {
    let dir = locate(root).ok_or_else(|| {
        OeError::Data(format!(
            "tinyimagenet: no tiny-imagenet-200/wnids.txt under {}",
            root.display()
        ))
    })?;
    let classes = classes(&dir)?;
    let idx = |w: &str| classes.binary_search_by(|c| c.as_str().cmp(w)).ok();
    let mut items = Vec::new();
    let mut labels = Vec::new();
    if train {
        for (k, wnid) in classes.iter().enumerate() {
            let d = dir.join("train").join(wnid).join("images");
            let mut files: Vec<_> = std::fs::read_dir(&d)
                .map_err(|e| OeError::io(&d, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| super::folder::is_image(&p.to_string_lossy()))
                .collect();
            files.sort();
            for f in files {
                items.push((
                    format!("{wnid}/{}", f.file_name().unwrap().to_string_lossy()),
                    Blob::Path(f),
                ));
                labels.push(k as i64);
            }
        }
    } else {
        let ann = dir.join("val").join("val_annotations.txt");
        let text = std::fs::read_to_string(&ann).map_err(|e| OeError::io(&ann, e))?;
        let mut rows: Vec<(String, i64)> = Vec::new();
        for (ln, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let mut f = l.split('\t');
            let (Some(file), Some(wnid)) = (f.next(), f.next()) else {
                return Err(OeError::parse(
                    &ann,
                    ln + 1,
                    "expected `file<TAB>wnid<TAB>...`",
                ));
            };
            let k = idx(wnid.trim()).ok_or_else(|| {
                OeError::parse(&ann, ln + 1, format!("wnid `{wnid}` is not in wnids.txt"))
            })?;
            rows.push((file.trim().to_string(), k as i64));
        }
        rows.sort();
        for (file, k) in rows {
            let p = dir.join("val").join("images").join(&file);
            if !p.is_file() {
                return Err(OeError::Data(format!(
                    "{}: missing (listed in {})",
                    p.display(),
                    ann.display()
                )));
            }
            items.push((file, Blob::Path(p)));
            labels.push(k);
        }
    }
    Ok(FolderImages {
        name: format!("tinyimagenet-{}", if train { "train" } else { "val" }),
        items,
        labels,
        classes,
        size: 64,
    })
}

/// Loads and decodes a split.
pub fn load(root: &Path, train: bool) -> Result<ImageSet> {
    folder(root, train)?.load_all()
}
