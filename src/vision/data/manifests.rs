//! Manifests of the vision datasets (`data-manifests/*.toml`, the text side's format, parsed with
//! [`crate::data::manifest::parse_manifest`]). Kept apart from the text list so the text data
//! commands never try to load or fetch images.

use crate::data::manifest::{parse_manifest, CountEntry, Manifest};
use crate::error::{OeError, Result};
use std::sync::OnceLock;

macro_rules! sources {
    ($($n:literal),* $(,)?) => {
        &[$(($n, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/data-manifests/", $n, ".toml")))),*]
    };
}

/// The embedded vision manifests (file stem, TOML text).
pub const SOURCES: &[(&str, &str)] = sources!(
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

pub fn all() -> &'static [Manifest] {
    static ALL: OnceLock<Vec<Manifest>> = OnceLock::new();
    ALL.get_or_init(|| {
        SOURCES
            .iter()
            .map(|(n, s)| parse_manifest(s, n).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    })
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
    if let Some(c) = expected(dataset, split) {
        if c.count != n {
            let msg = format!(
                "{dataset} {split}: loaded {n} images, the manifest expects {}{}",
                c.count,
                c.note
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            );
            if c.strict {
                return Err(OeError::Data(format!(
                    "{msg}; the files under the data root are not the canonical ones"
                )));
            }
            eprintln!("warning: {msg}");
        }
    }
    Ok(())
}
