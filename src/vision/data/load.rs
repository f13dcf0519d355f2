//! Dataset names → readers, under a data root (the layout of `data-manifests/*.toml`).

use super::cifar::{self, Cifar};
use super::folder::{FolderImages, FolderSpec};
use super::npy::NpyImages;
use super::tinyimages::TinyImages;
use super::Preset;
use super::{mat, tinyimagenet, ImageSet, ImageSource};
use crate::error::{OeError, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// Built-in in-distribution datasets.
pub const IN_NAMES: &[&str] = &["cifar10", "cifar100", "svhn", "tinyimagenet"];

/// Built-in real OOD sets: name → candidate folders under the data root, first existing wins.
pub const OOD_FOLDERS: &[(&str, &[&str])] = &[
    ("textures", &["dtd/images", "dtd"]),
    ("places365", &["places365/test_subset", "places365"]),
    ("lsun", &["LSUN", "lsun", "LSUN_C", "LSUN_resize"]),
    ("isun", &["iSUN", "isun"]),
    ("icons50", &["Icons-50", "icons50"]),
    ("chars74k", &["chars74k/StreetLetters", "chars74k"]),
    ("imagenet", &["imagenet-800", "imagenet_ood"]),
];

/// A loaded in-distribution dataset.
pub struct InDistribution {
    pub name: String,
    pub preset: Preset,
    pub train: ImageSet,
    pub test: ImageSet,
}

impl InDistribution {
    pub fn classes(&self) -> &[String] {
        &self.train.classes
    }
}

/// Loading options.
#[derive(Clone, Copy, Debug)]
pub struct InOptions {
    /// SVHN: add `extra_32x32.mat` to the training set when present (the paper: train + extra).
    pub svhn_extra: bool,
    /// Image size for folders (default: the preset's).
    pub size: Option<usize>,
    /// Folders without their own test split: the seed of the permutation that puts
    /// [`FOLDER_TEST_FRACTION`] of the images into the test split.
    pub split_seed: u64,
}

impl Default for InOptions {
    fn default() -> Self {
        Self {
            svhn_extra: true,
            size: None,
            split_seed: 0,
        }
    }
}

/// The share of a folder's images that go to its test split when it has no `test/` folder (1/5).
pub const FOLDER_TEST_FRACTION: (usize, usize) = (1, 5);

/// Splits `n` items into `(train, test)` indices, each sorted: a `seed` permutation, its first
/// `n·1/5` (at least 1) are the test split.
pub fn folder_split(n: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n_test = (n * FOLDER_TEST_FRACTION.0 / FOLDER_TEST_FRACTION.1).max(1);
    let (test_idx, train_idx) = order.split_at(n_test.min(n));
    let (mut tr, mut te) = (train_idx.to_vec(), test_idx.to_vec());
    tr.sort_unstable();
    te.sort_unstable();
    (tr, te)
}

/// `LABEL=SPEC`: the shared [`crate::datasets::split_label`].
pub use crate::datasets::split_label;

/// A dataset spec as recorded in a run directory: built-in names as they are, folders and
/// archives (with their `#class+class` selection) by absolute path, so the run can be evaluated
/// from any working directory.
pub fn absolute_spec(spec: &str) -> String {
    if IN_NAMES.contains(&spec) || spec == "tiny-imagenet" {
        return spec.to_string();
    }
    match FolderSpec::parse(spec) {
        Ok(f) => {
            let p = crate::rundir::absolute(&f.path).display().to_string();
            match f.classes {
                Some(c) => format!("{p}#{}", c.join("+")),
                None => p,
            }
        }
        Err(_) => spec.to_string(),
    }
}

/// The preset of a dataset name (folders: CIFAR's).
pub fn preset_for(name: &str) -> Preset {
    match name {
        "svhn" => Preset::Svhn,
        "tinyimagenet" | "tiny-imagenet" => Preset::TinyImagenet,
        _ => Preset::Cifar,
    }
}

fn svhn_dir(root: &Path) -> PathBuf {
    if root.join("svhn").is_dir() {
        root.join("svhn")
    } else {
        root.to_path_buf()
    }
}

/// Loads an in-distribution dataset by name (`cifar10`, `cifar100`, `svhn`, `tinyimagenet`) or
/// from a path: a folder (or `.tar.gz`) with class sub-folders, or with `train/` and `test/` (or
/// `val/`) folders that each have class sub-folders. A folder without a test split is split 80/20
/// by a seed-0 permutation.
pub fn load_in_distribution(name: &str, root: &Path, opts: &InOptions) -> Result<InDistribution> {
    let preset = preset_for(name);
    let (train, test) = match name {
        "cifar10" | "cifar100" => {
            let c = if name == "cifar10" {
                Cifar::C10
            } else {
                Cifar::C100
            };
            (cifar::load(root, c, true)?, cifar::load(root, c, false)?)
        }
        "svhn" => {
            let d = svhn_dir(root);
            missing_help(
                "svhn",
                root,
                &[d.join("train_32x32.mat"), d.join("test_32x32.mat")],
            )?;
            let mut train = mat::load_svhn(&d.join("train_32x32.mat"), "svhn-train")?;
            let extra = d.join("extra_32x32.mat");
            if opts.svhn_extra && extra.is_file() {
                train.extend(&mat::load_svhn(&extra, "svhn-extra")?)?;
            }
            (
                train,
                mat::load_svhn(&d.join("test_32x32.mat"), "svhn-test")?,
            )
        }
        "tinyimagenet" | "tiny-imagenet" => {
            // When the manifest's files are absent, a failing load also says how to get them.
            let absent = super::manifests::find("tinyimagenet")
                .is_some_and(|m| !crate::datasets::present(m, root));
            let load = |train: bool| {
                tinyimagenet::load(root, train).map_err(|e| match absent {
                    true => OeError::Data(format!(
                        "tinyimagenet: {e}; {}",
                        super::manifests::how_to_get("tinyimagenet", root)
                    )),
                    false => e,
                })
            };
            (load(true)?, load(false)?)
        }
        spec => {
            let f = FolderSpec::parse(spec)?;
            let p = f.path.as_path();
            if !p.exists() {
                return Err(OeError::Config(format!(
                    "unknown in-distribution dataset `{spec}`: not one of {} and not a folder or archive{}",
                    IN_NAMES.join(", "),
                    if f.classes.is_some() { format!(" ({} does not exist)", p.display()) } else { String::new() }
                )));
            }
            let size = opts.size.unwrap_or(preset.image_size());
            let test_dir = ["test", "val"]
                .iter()
                .map(|t| p.join(t))
                .find(|d| d.is_dir());
            match (p.join("train").is_dir(), test_dir) {
                (true, Some(t)) => {
                    let part = |d: PathBuf| FolderSpec {
                        path: d,
                        classes: f.classes.clone(),
                    };
                    (
                        part(p.join("train")).labelled(size)?.load_all()?,
                        part(t).labelled(size)?.load_all()?,
                    )
                }
                _ => {
                    let all = f.labelled(size)?;
                    let (tr, te) = folder_split(all.items.len(), opts.split_seed);
                    (all.subset(&tr).load_all()?, all.subset(&te).load_all()?)
                }
            }
        }
    };
    if train.classes != test.classes {
        return Err(OeError::Data(format!(
            "{name}: train and test have different classes ({} vs {})",
            train.classes.len(),
            test.classes.len()
        )));
    }
    super::manifests::check_count(name, "train", train.len())?;
    super::manifests::check_count(name, "test", test.len())?;
    Ok(InDistribution {
        name: name.to_string(),
        preset,
        train,
        test,
    })
}

/// An error saying how to get dataset `name` when any of `files` is absent.
fn missing_help(name: &str, root: &Path, files: &[PathBuf]) -> Result<()> {
    let absent: Vec<String> = files
        .iter()
        .filter(|f| !f.is_file())
        .map(|f| f.display().to_string())
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    Err(OeError::Data(format!(
        "{name}: {} not found under the data root {}; {}",
        absent.join(", "),
        root.display(),
        super::manifests::how_to_get(name, root)
    )))
}

/// Held-out validation indices for calibration (README, "The paper's protocol: vision"): CIFAR the last 10% by index,
/// SVHN the last 5,000, Tiny ImageNet and folders 10% by a seed-0 permutation.
pub fn validation_indices(name: &str, n: usize) -> Vec<usize> {
    match name {
        "cifar10" | "cifar100" => (n - n / 10..n).collect(),
        "svhn" => (n.saturating_sub(5000)..n).collect(),
        _ => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
            let mut v = order[..n / 10].to_vec();
            v.sort_unstable();
            v
        }
    }
}

/// The first of `candidates` (relative to `root`) that is a file; else an error `"{missing} under
/// {root}"`.
fn first_file(root: &Path, candidates: &[&str], missing: &str) -> Result<PathBuf> {
    candidates
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| OeError::Data(format!("{missing} under {}", root.display())))
}

/// An outlier (OE) source: `tiny-images` (the 80M `.bin` under the root), `300k`
/// (`300K_random_images.npy`), or a path to a `.bin` (80M format), `.npy`, folder or archive.
/// Folders are fitted to `size`.
pub fn load_oe_source(spec: &str, root: &Path, size: usize) -> Result<Box<dyn ImageSource>> {
    let path = match spec {
        "tiny-images" | "tinyimages" | "80m" => first_file(
            root,
            &[
                "80M/tiny_images.bin",
                "tiny_images.bin",
                "tinyimages/tiny_images.bin",
            ],
            "tiny-images: no tiny_images.bin",
        )?,
        "300k" | "300k-random-images" => first_file(
            root,
            &["300K_random_images.npy", "300K/300K_random_images.npy"],
            "300k: no 300K_random_images.npy",
        )?,
        p => {
            let f = FolderSpec::parse(p)?;
            if f.classes.is_some() {
                return Ok(Box::new(f.unlabelled(size)?));
            }
            f.path
        }
    };
    let lower = path.to_string_lossy().to_ascii_lowercase();
    if lower.ends_with(".bin") {
        let idx = path.with_file_name("80mn_cifar_idxs.txt");
        let src = TinyImages::open(&path, idx.is_file().then_some(idx.as_path()))?;
        if size != 32 {
            return Err(OeError::Config(
                "the 80M Tiny Images are 32x32; use them with 32x32 data".into(),
            ));
        }
        Ok(Box::new(src))
    } else if lower.ends_with(".npy") {
        let src = NpyImages::open(&path)?;
        if src.size() != (size, size) {
            return Err(OeError::Config(format!(
                "{}: images are {:?}, the model needs {size}x{size}",
                path.display(),
                src.size()
            )));
        }
        Ok(Box::new(src))
    } else if path.exists() {
        Ok(Box::new(FolderImages::unlabelled(&path, size)?))
    } else {
        Err(OeError::Config(format!(
            "outlier source `{spec}`: not tiny-images, 300k or an existing .bin/.npy/folder/archive"
        )))
    }
}

/// A real OOD test set by name (see [`OOD_FOLDERS`], plus `svhn`, `cifar10`, `cifar100`,
/// `tinyimagenet`) or path, as images of `size × size` (normalised later with the in-distribution's
/// statistics). Returns `None` for a built-in name whose files are absent.
pub fn load_ood_source(
    name: &str,
    root: &Path,
    size: usize,
) -> Result<Option<Box<dyn ImageSource>>> {
    // Other sizes (SVHN for 64x64 Tiny ImageNet models): Resize(size) + CenterCrop(size).
    let fit = |s: ImageSet| -> Result<Box<dyn ImageSource>> {
        if (s.height, s.width) == (size, size) {
            return Ok(Box::new(ImageSet {
                name: name.to_string(),
                ..s
            }));
        }
        let mut pixels = Vec::with_capacity(s.len() * size * size * 3);
        for i in 0..s.len() {
            let img =
                image::RgbImage::from_raw(s.width as u32, s.height as u32, s.image(i).to_vec())
                    .ok_or_else(|| OeError::Data(format!("{name}: bad image buffer")))?;
            pixels.extend(super::folder::fit_rgb(img, size));
        }
        Ok(Box::new(ImageSet {
            name: name.to_string(),
            height: size,
            width: size,
            pixels,
            ..s
        }))
    };
    match name {
        "svhn" => {
            let p = svhn_dir(root).join("test_32x32.mat");
            if !p.is_file() {
                return Ok(None);
            }
            Ok(Some(fit(mat::load_svhn(&p, "svhn")?)?))
        }
        "cifar10" | "cifar100" => {
            let c = if name == "cifar10" {
                Cifar::C10
            } else {
                Cifar::C100
            };
            if !root.join(c.python_dir()).is_dir() && !root.join(c.binary_dir()).is_dir() {
                return Ok(None);
            }
            Ok(Some(fit(cifar::load(root, c, false)?)?))
        }
        _ => {
            if let Some((_, cands)) = OOD_FOLDERS.iter().find(|(n, _)| *n == name) {
                return match cands.iter().map(|c| root.join(c)).find(|p| p.is_dir()) {
                    Some(p) => {
                        let mut f = FolderImages::unlabelled(&p, size)?;
                        f.name = name.to_string();
                        Ok(Some(Box::new(f)))
                    }
                    None => Ok(None),
                };
            }
            let f = FolderSpec::parse(name)?;
            if f.classes.is_some() {
                return Ok(Some(Box::new(f.unlabelled(size)?)));
            }
            let p = Path::new(name);
            if p.exists() {
                let lower = name.to_ascii_lowercase();
                if lower.ends_with(".npy") {
                    return Ok(Some(Box::new(NpyImages::open(p)?)));
                }
                if lower.ends_with(".mat") {
                    return Ok(Some(fit(mat::load_svhn(p, name)?)?));
                }
                return Ok(Some(Box::new(FolderImages::unlabelled(p, size)?)));
            }
            Err(OeError::Config(format!(
                "unknown OOD set `{name}` (built in: gaussian, rademacher, bernoulli, blobs, svhn, cifar10, cifar100, {}; or a folder, archive, .npy or .mat)",
                OOD_FOLDERS.iter().map(|x| x.0).collect::<Vec<_>>().join(", ")
            )))
        }
    }
}

/// The paper's OOD sets for an in-distribution dataset (README, "The paper's protocol: vision"; Table 7 rows).
pub fn paper_ood_sets(in_name: &str) -> Vec<&'static str> {
    match in_name {
        "svhn" => vec![
            "gaussian",
            "bernoulli",
            "blobs",
            "icons50",
            "textures",
            "places365",
            "lsun",
            "cifar10",
            "chars74k",
        ],
        "cifar10" => vec![
            "gaussian",
            "rademacher",
            "blobs",
            "textures",
            "svhn",
            "places365",
            "lsun",
            "cifar100",
        ],
        "cifar100" => vec![
            "gaussian",
            "rademacher",
            "blobs",
            "textures",
            "svhn",
            "places365",
            "lsun",
            "cifar10",
        ],
        "tinyimagenet" => vec![
            "gaussian",
            "rademacher",
            "blobs",
            "textures",
            "svhn",
            "places365",
            "lsun",
            "imagenet",
        ],
        _ => vec![
            "gaussian",
            "rademacher",
            "blobs",
            "textures",
            "svhn",
            "places365",
            "lsun",
        ],
    }
}
