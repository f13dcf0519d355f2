//! Manifests of the vision datasets (`data-manifests/*.toml`, the text side's format, parsed with
//! [`crate::datasets::manifest::parse_manifest`]). Kept apart from the text list so the text data
//! commands never try to load or fetch images.

use crate::datasets::fetch::{self, FetchOptions};
use crate::datasets::manifest::{compare_count, CountEntry, Manifest};
use crate::error::{OeError, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The embedded vision manifests (file stem, TOML text).
pub const SOURCES: &[(&str, &str)] = crate::datasets::manifest::manifest_sources!(
    "cifar10",
    "cifar100",
    "svhn",
    "tinyimagenet",
    "tiny-images-80m",
    "random-300k",
    "textures",
    "places365",
    "lsun",
    "isun",
);

/// All vision manifests (parsed once).
pub fn all() -> &'static [Manifest] {
    static ALL: OnceLock<Vec<Manifest>> = OnceLock::new();
    ALL.get_or_init(|| crate::datasets::manifest::parse_embedded(SOURCES))
}

pub fn find(name: &str) -> Option<&'static Manifest> {
    all().iter().find(|m| m.name == name)
}

fn expected(dataset: &str, split: &str) -> Option<&'static CountEntry> {
    all()
        .iter()
        .flat_map(|m| m.counts.iter())
        .find(|c| c.dataset == dataset && c.split == split)
}

/// Compares a loaded count with the manifest: equal → Ok; strict → error; else a warning.
pub fn check_count(dataset: &str, split: &str, n: usize) -> Result<()> {
    compare_count(expected(dataset, split), dataset, split, n, "images", "")
}
/// An `oe-vision data` command.
#[derive(Clone, Debug)]
pub enum DataRequest {
    List {
        root: PathBuf,
    },
    Show {
        root: PathBuf,
        name: String,
    },
    /// Download, verify (published checksums, else the loaders' counts) and unpack.
    Fetch {
        root: PathBuf,
        names: Vec<String>,
        opts: FetchOptions,
    },
    /// Re-check files (checksums) and counts; every dataset present when `names` is empty.
    Verify {
        root: PathBuf,
        names: Vec<String>,
    },
}

/// What a data command printed, and the datasets that failed verification.
#[derive(Clone, Debug, Default)]
pub struct DataOutput {
    pub text: String,
    /// The command fails after printing when this is not empty.
    pub failed: Vec<String>,
}

/// What `oe-vision` users need when image dataset `name` is not under `root`
/// ([`crate::datasets::how_to_get`]); empty for a name without a manifest.
pub fn how_to_get(name: &str, root: &Path) -> String {
    find(name)
        .map(|m| crate::datasets::how_to_get(m, root, "oe-vision"))
        .unwrap_or_default()
}

/// A vision manifest by name, or an error listing the known ones.
pub fn get(name: &str) -> Result<&'static Manifest> {
    find(name).ok_or_else(|| {
        let names: Vec<&str> = all().iter().map(|m| m.name.as_str()).collect();
        OeError::Config(format!(
            "unknown image dataset `{name}` (known: {})",
            names.join(", ")
        ))
    })
}

/// The loaders' check of a dataset's files under `root` (a staging folder while fetching): the
/// in-distribution datasets are loaded (the loader compares their split sizes with the manifest:
/// a mismatch of a strict count is an error); other sets list their files present.
pub fn check_loader_counts(m: &Manifest, root: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    if super::IN_NAMES.contains(&m.name.as_str()) {
        let opts = super::InOptions {
            svhn_extra: true,
            ..Default::default()
        };
        // The loader compares each split with the manifest's counts ([`check_count`]).
        let d = super::load_in_distribution(&m.name, root, &opts)?;
        for (split, n) in [("train", d.train.len()), ("test", d.test.len())] {
            lines.push(format!("{} {split}: {n} images", m.name));
        }
    } else {
        for f in m.files.iter().filter(|f| root.join(&f.path).exists()) {
            lines.push(format!("{}: present", f.path));
        }
    }
    Ok(lines)
}

/// Runs `oe-vision data list | show | fetch | verify`; returns the text to print.
pub fn run_data(req: &DataRequest) -> Result<DataOutput> {
    let mut out = DataOutput::default();
    match req {
        DataRequest::List { root } => out.text = crate::datasets::list(all(), root),
        DataRequest::Show { root, name } => out.text = crate::datasets::describe(get(name)?, root),
        DataRequest::Fetch { root, names, opts } => {
            let ms = names.iter().map(|n| get(n)).collect::<Result<Vec<_>>>()?;
            out.text = fetch::fetch_report(&ms, root, opts, &check_loader_counts)?;
        }
        DataRequest::Verify { root, names } => {
            if !root.is_dir() {
                return Err(OeError::Data(format!(
                    "data root {} does not exist",
                    root.display()
                )));
            }
            let ms: Vec<&Manifest> = if names.is_empty() {
                all()
                    .iter()
                    .filter(|m| crate::datasets::present(m, root))
                    .collect()
            } else {
                names.iter().map(|n| get(n)).collect::<Result<_>>()?
            };
            for m in ms {
                let r = fetch::verify_dataset(m, root, &check_loader_counts)?;
                out.text.push_str(&crate::datasets::verify_lines(&r));
                if !r.ok() {
                    out.failed.push(m.name.clone());
                }
            }
        }
    }
    Ok(out)
}
