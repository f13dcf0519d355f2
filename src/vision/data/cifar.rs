//! CIFAR-10 and CIFAR-100 in their canonical formats.
//!
//! - Python version (`cifar-10-batches-py/data_batch_{1..5}`, `test_batch`, `batches.meta`;
//!   `cifar-100-python/train`, `test`, `meta`): pickled dicts whose `data` is a `uint8` array
//!   `[n, 3072]` (1024 red, 1024 green, 1024 blue, row-major) and whose `labels` (CIFAR-10) or
//!   `fine_labels` (CIFAR-100) is a list of ints.
//! - Binary version (`cifar-10-batches-bin/*.bin`: 1 label byte + 3072 pixel bytes per record;
//!   `cifar-100-binary/{train,test}.bin`: coarse byte, fine byte, 3072 pixel bytes).

use super::{pickle, planar_to_hwc, ImageSet};
use crate::error::{OeError, Result};
use std::path::Path;

/// Which CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar {
    C10,
    C100,
}

impl Cifar {
    pub fn name(self) -> &'static str {
        match self {
            Cifar::C10 => "cifar10",
            Cifar::C100 => "cifar100",
        }
    }
    pub fn classes(self) -> usize {
        match self {
            Cifar::C10 => 10,
            Cifar::C100 => 100,
        }
    }
    pub fn python_dir(self) -> &'static str {
        match self {
            Cifar::C10 => "cifar-10-batches-py",
            Cifar::C100 => "cifar-100-python",
        }
    }
    pub fn binary_dir(self) -> &'static str {
        match self {
            Cifar::C10 => "cifar-10-batches-bin",
            Cifar::C100 => "cifar-100-binary",
        }
    }
    fn python_files(self, train: bool) -> Vec<String> {
        match (self, train) {
            (Cifar::C10, true) => (1..=5).map(|i| format!("data_batch_{i}")).collect(),
            (Cifar::C10, false) => vec!["test_batch".into()],
            (Cifar::C100, true) => vec!["train".into()],
            (Cifar::C100, false) => vec!["test".into()],
        }
    }
    fn binary_files(self, train: bool) -> Vec<String> {
        self.python_files(train)
            .into_iter()
            .map(|f| format!("{f}.bin"))
            .collect()
    }
}

const IMG: usize = 3072;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| OeError::io(path, e))
}

/// One python batch: `(HWC pixels, labels)`.
pub fn read_python_batch(path: &Path, which: Cifar) -> Result<(Vec<u8>, Vec<i64>)> {
    let origin = path.display().to_string();
    let v = pickle::parse(&read(path)?, &origin)?;
    let data = v
        .get("data")
        .ok_or_else(|| OeError::Data(format!("{origin}: no `data` entry")))?;
    let arr = data
        .ndarray()
        .ok_or_else(|| OeError::Data(format!("{origin}: `data` is not a numpy array")))?;
    if arr.dtype.trim_start_matches(['|', '<', '>', '=']) != "u1"
        || arr.shape.len() != 2
        || arr.shape[1] != IMG
        || arr.fortran_order
        || arr.data.len() != arr.shape[0] * IMG
    {
        return Err(OeError::Data(format!(
            "{origin}: `data` is {} {:?} ({} bytes); expected C-order uint8 [n, 3072]",
            arr.dtype,
            arr.shape,
            arr.data.len()
        )));
    }
    let key = match which {
        Cifar::C10 => "labels",
        Cifar::C100 => "fine_labels",
    };
    let labels: Vec<i64> = v
        .get(key)
        .and_then(|l| l.items())
        .ok_or_else(|| OeError::Data(format!("{origin}: no `{key}` list")))?
        .iter()
        .map(|x| x.as_int())
        .collect::<Option<_>>()
        .ok_or_else(|| OeError::Data(format!("{origin}: `{key}` holds a non-integer")))?;
    let n = arr.shape[0];
    if labels.len() != n {
        return Err(OeError::Data(format!(
            "{origin}: {n} images but {} labels",
            labels.len()
        )));
    }
    let mut px = vec![0u8; n * IMG];
    for i in 0..n {
        planar_to_hwc(
            &arr.data[i * IMG..(i + 1) * IMG],
            32,
            32,
            &mut px[i * IMG..(i + 1) * IMG],
        );
    }
    Ok((px, labels))
}

/// One binary batch: `(HWC pixels, labels)` (CIFAR-100: fine labels).
pub fn read_binary_batch(path: &Path, which: Cifar) -> Result<(Vec<u8>, Vec<i64>)> {
    let bytes = read(path)?;
    let head = match which {
        Cifar::C10 => 1,
        Cifar::C100 => 2,
    };
    let rec = head + IMG;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(OeError::Data(format!(
            "{}: {} bytes is not a whole number of {rec}-byte records",
            path.display(),
            bytes.len()
        )));
    }
    let n = bytes.len() / rec;
    let mut px = vec![0u8; n * IMG];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let r = &bytes[i * rec..(i + 1) * rec];
        labels.push(r[head - 1] as i64);
        planar_to_hwc(&r[head..], 32, 32, &mut px[i * IMG..(i + 1) * IMG]);
    }
    Ok((px, labels))
}

/// Class names from the meta file (python: `label_names` / `fine_label_names`; binary: text file),
/// or `class0..` when absent.
fn class_names(root: &Path, which: Cifar, python: bool) -> Vec<String> {
    let names = if python {
        let (file, key) = match which {
            Cifar::C10 => ("batches.meta", "label_names"),
            Cifar::C100 => ("meta", "fine_label_names"),
        };
        let p = root.join(which.python_dir()).join(file);
        std::fs::read(&p)
            .ok()
            .and_then(|b| pickle::parse(&b, &p.display().to_string()).ok())
            .and_then(|v| {
                v.get(key)?
                    .items()?
                    .iter()
                    .map(|x| x.as_string())
                    .collect::<Option<Vec<_>>>()
            })
    } else {
        let file = match which {
            Cifar::C10 => "batches.meta.txt",
            Cifar::C100 => "fine_label_names.txt",
        };
        std::fs::read_to_string(root.join(which.binary_dir()).join(file))
            .ok()
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
    };
    match names {
        Some(n) if n.len() == which.classes() => n,
        _ => (0..which.classes()).map(|i| format!("class{i}")).collect(),
    }
}

/// Loads the train (`train = true`) or test split from `root`, preferring the python version and
/// falling back to the binary version.
pub fn load(root: &Path, which: Cifar, train: bool) -> Result<ImageSet> {
    let py = root.join(which.python_dir());
    let bin = root.join(which.binary_dir());
    let (python, dir, files) = if py.is_dir() {
        (true, py, which.python_files(train))
    } else if bin.is_dir() {
        (false, bin, which.binary_files(train))
    } else {
        let help = super::manifests::how_to_get(which.name(), root);
        return Err(OeError::Data(format!(
            "{}: neither {} nor {} found under the data root {}; {help}",
            which.name(),
            py.display(),
            bin.display(),
            root.display(),
        )));
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let p = dir.join(&f);
        let (px, l) = if python {
            read_python_batch(&p, which)?
        } else {
            read_binary_batch(&p, which)?
        };
        pixels.extend(px);
        labels.extend(l);
    }
    let set = ImageSet {
        name: format!("{}-{}", which.name(), if train { "train" } else { "test" }),
        height: 32,
        width: 32,
        pixels,
        labels,
        classes: class_names(root, which, python),
    };
    set.check()?;
    Ok(set)
}
