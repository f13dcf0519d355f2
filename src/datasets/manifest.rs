//! Dataset manifests (`data-manifests/*.toml`, embedded in the binary): role, files with sha256,
//! where to download them, expected counts, preprocessing, license, citation.

use crate::error::{OeError, Result};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    InDistribution,
    OutlierExposure,
    OodTest,
    User,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::InDistribution => "in-distribution",
            Role::OutlierExposure => "outlier-exposure",
            Role::OodTest => "ood-test",
            Role::User => "user",
        })
    }
}

/// Archive formats the fetcher can unpack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveFormat {
    Zip,
    TarGz,
    Gz,
}

/// One file of a dataset, at `path` relative to the data root.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    /// SHA-256 of the file; `None` = verified by counts only.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The MD5 the dataset's authors publish for this file (checked on download and by
    /// `verify` when there is no sha256).
    #[serde(default)]
    pub md5: Option<String>,
    /// `true` when `sha256` describes the mirror copy only (the canonical download has other bytes
    /// and is verified by counts instead).
    #[serde(default)]
    pub sha256_mirror_only: bool,
    /// Direct download URL of this very file.
    #[serde(default)]
    pub url: Option<String>,
    /// Or: id of an archive below and the member to take from it.
    #[serde(default)]
    pub archive: Option<String>,
    #[serde(default)]
    pub member: Option<String>,
    /// Optional files are fetched only with `--all`; a dataset loads without them.
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub note: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveEntry {
    pub id: String,
    pub url: String,
    pub format: ArchiveFormat,
    #[serde(default)]
    pub sha256: Option<String>,
    /// The MD5 the dataset's authors publish for the archive.
    #[serde(default)]
    pub md5: Option<String>,
}

impl ArchiveEntry {
    /// The archive's file name (the last segment of its URL): where a mirror that holds the
    /// original downloads keeps it.
    pub fn file_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }

    /// Whether the archive is checked by a published checksum (so its members need no counts).
    pub fn checked(&self) -> bool {
        self.sha256.is_some() || self.md5.is_some()
    }
}

/// Expected number of examples of one loader name and split.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountEntry {
    /// Loader name (`sst`, `20ng`, `ewt-email`, ...).
    pub dataset: String,
    pub split: String,
    pub count: usize,
    /// A different count is an error (else a warning with both numbers).
    #[serde(default = "yes")]
    pub strict: bool,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub title: String,
    pub role: Role,
    /// Names the loaders accept for this dataset (`load_in_distribution`, `load_ood`, `load_oe_corpus`).
    #[serde(default)]
    pub loads: Vec<String>,
    pub description: String,
    pub preprocessing: String,
    pub license: String,
    pub citation: String,
    #[serde(default)]
    pub homepage: Option<String>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub archives: Vec<ArchiveEntry>,
    #[serde(default)]
    pub counts: Vec<CountEntry>,
}

/// `(stem, TOML text)` of `data-manifests/<stem>.toml` for each stem, embedded at compile time.
macro_rules! manifest_sources {
    ($($n:literal),* $(,)?) => {
        &[$(($n, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/data-manifests/", $n, ".toml")))),*]
    };
}
pub(crate) use manifest_sources;

/// The embedded manifest sources (file stem, TOML text).
pub const SOURCES: &[(&str, &str)] = manifest_sources!(
    "sst",
    "trec",
    "20ng",
    "clinc150",
    "wikitext2",
    "wikitext103",
    "snli",
    "imdb",
    "multi30k",
    "wmt16",
    "yelp",
    "ewt",
    "user-text",
    "user-labelled",
);

/// Parses one manifest and checks its internal consistency.
pub fn parse_manifest(src: &str, origin: &str) -> Result<Manifest> {
    let m: Manifest =
        toml::from_str(src).map_err(|e| OeError::Data(format!("manifest {origin}: {e}")))?;
    for f in &m.files {
        if let Some(s) = &f.sha256 {
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(OeError::Data(format!(
                    "manifest {origin}: {}: bad sha256",
                    f.path
                )));
            }
        }
        if !f.md5.as_deref().is_none_or(is_md5) {
            return Err(OeError::Data(format!(
                "manifest {origin}: {}: bad md5",
                f.path
            )));
        }
        if let Some(a) = &f.archive {
            if !m.archives.iter().any(|x| &x.id == a) {
                return Err(OeError::Data(format!(
                    "manifest {origin}: {}: unknown archive `{a}`",
                    f.path
                )));
            }
            if f.member.is_none() {
                return Err(OeError::Data(format!(
                    "manifest {origin}: {}: archive without member",
                    f.path
                )));
            }
        }
        if f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return Err(OeError::Data(format!(
                "manifest {origin}: {}: path must be relative",
                f.path
            )));
        }
    }
    for a in &m.archives {
        if !a.md5.as_deref().is_none_or(is_md5) {
            return Err(OeError::Data(format!(
                "manifest {origin}: archive {}: bad md5",
                a.id
            )));
        }
    }
    Ok(m)
}

fn is_md5(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses embedded `(stem, TOML)` manifests; a broken embedded manifest is a programming error
/// (the unit tests parse every one).
pub fn parse_embedded(sources: &[(&str, &str)]) -> Vec<Manifest> {
    sources
        .iter()
        .map(|(n, s)| parse_manifest(s, n).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// All text manifests (parsed once).
pub fn all() -> &'static [Manifest] {
    static ALL: OnceLock<Vec<Manifest>> = OnceLock::new();
    ALL.get_or_init(|| parse_embedded(SOURCES))
}

/// The manifest named `name`, or the one whose `loads` contains `name`.
pub fn find(name: &str) -> Option<&'static Manifest> {
    all()
        .iter()
        .find(|m| m.name == name)
        .or_else(|| all().iter().find(|m| m.loads.iter().any(|l| l == name)))
}

pub fn get(name: &str) -> Result<&'static Manifest> {
    find(name).ok_or_else(|| {
        OeError::Config(format!(
            "unknown dataset `{name}` (known: {})",
            all()
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The expected count for a loader name and split, if the manifests record one.
pub fn expected_count(dataset: &str, split: &str) -> Option<&'static CountEntry> {
    all()
        .iter()
        .flat_map(|m| m.counts.iter())
        .find(|c| c.dataset == dataset && c.split == split)
}

/// Compares a loaded count with the manifest: equal → Ok; strict → error; else a warning on stderr.
pub fn check_count(dataset: &str, split: &str, n: usize) -> Result<()> {
    compare_count(
        expected_count(dataset, split),
        dataset,
        split,
        n,
        "examples",
        " (run `oe-text data verify`)",
    )
}

/// The comparison behind every `check_count`: `unit` names what was counted, `hint` ends the error.
pub fn compare_count(
    expected: Option<&CountEntry>,
    dataset: &str,
    split: &str,
    n: usize,
    unit: &str,
    hint: &str,
) -> Result<()> {
    if let Some(c) = expected {
        if c.count != n {
            let msg = format!(
                "{dataset} {split}: loaded {n} {unit}, the manifest expects {}{}",
                c.count,
                c.note
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            );
            if c.strict {
                return Err(OeError::Data(format!(
                    "{msg}; the files under the data root are not the canonical ones{hint}"
                )));
            }
            // Once per process: a run that loads the same split several times says it once.
            crate::error::warnings::warn(&msg);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifests_parse() {
        assert!(all().len() >= 11);
        assert_eq!(get("sst").unwrap().role, Role::InDistribution);
        assert_eq!(find("ewt-email").unwrap().name, "ewt");
        assert_eq!(expected_count("trec", "test").unwrap().count, 500);
        assert!(check_count("trec", "test", 499).is_err());
        assert!(parse_manifest("name = 1", "x").is_err());
    }
}
