//! Manifests of the vision datasets (`data-manifests/*.toml`, the text side's format, parsed with
//! [`crate::datasets::manifest::parse_manifest`]). Kept apart from the text list so the text data
//! commands never try to load or fetch images.

use crate::datasets::manifest::{compare_count, CountEntry, Manifest};
use crate::error::Result;
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
        root: std::path::PathBuf,
    },
    Show {
        root: std::path::PathBuf,
        name: String,
    },
}

/// Runs `oe-vision data list | show NAME`; returns the text to print.
pub fn run_data(req: &DataRequest) -> Result<String> {
    match req {
        DataRequest::List { root } => Ok(crate::datasets::list(all(), root)),
        DataRequest::Show { root, name } => {
            let m = find(name).ok_or_else(|| {
                let names: Vec<&str> = all().iter().map(|m| m.name.as_str()).collect();
                crate::error::OeError::Config(format!(
                    "unknown image dataset `{name}` (known: {})",
                    names.join(", ")
                ))
            })?;
            Ok(crate::datasets::describe(m, root))
        }
    }
}
