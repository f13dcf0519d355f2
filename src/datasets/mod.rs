//! Datasets as files, for both wings: manifests (`data-manifests/*.toml`: files, sha256, sources,
//! expected counts) in [`manifest`], and finding, downloading and verifying those files in
//! [`fetch`]. Parsing the files is each wing's (`text::data`, `vision::data`).

pub mod fetch;
pub mod manifest;

use manifest::{Manifest, Role};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Data root: explicit `--data-dir`, then `$OE_DATA_DIR`, then a per-user cache dir
/// (`$XDG_CACHE_HOME/oe/data` or `~/.cache/oe/data`).
pub fn resolve_data_root(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("OE_DATA_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("oe").join("data");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("oe").join("data");
    }
    PathBuf::from(".oe-data")
}

/// Whether every required file of `m` is under `root` (and it has one).
pub fn present(m: &Manifest, root: &Path) -> bool {
    m.files
        .iter()
        .filter(|f| f.required)
        .all(|f| root.join(&f.path).is_file())
        && m.files.iter().any(|f| f.required)
}

/// `data list`: one line per manifest (name, role, whether its files are under `root`, loaders).
pub fn list(manifests: &[Manifest], root: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "data root: {}", root.display());
    let _ = writeln!(out, "{:<16} {:<17} {:<8} loads", "name", "role", "present");
    for m in manifests {
        let p = if m.role == Role::User {
            "-"
        } else if present(m, root) {
            "yes"
        } else {
            "no"
        };
        let _ = writeln!(
            out,
            "{:<16} {:<17} {:<8} {}",
            m.name,
            m.role.to_string(),
            p,
            m.loads.join(", ")
        );
    }
    out
}

/// A manifest's description, and each file with where it goes under `root` and whether it is
/// there: what `data show` says before the wing's loaders report counts and examples.
pub fn describe(m: &Manifest, root: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} — {}\nrole: {}\n{}\npreprocessing: {}\nlicense: {}\ncitation: {}",
        m.name, m.title, m.role, m.description, m.preprocessing, m.license, m.citation
    );
    for f in &m.files {
        let state = if root.join(&f.path).is_file() {
            "present"
        } else if f.required {
            "MISSING"
        } else {
            "absent (optional)"
        };
        let _ = writeln!(
            out,
            "  file {}: {state}{}",
            root.join(&f.path).display(),
            f.url
                .as_deref()
                .map(|u| format!(" (source: {u})"))
                .unwrap_or_default()
        );
    }
    for c in &m.counts {
        let _ = writeln!(out, "  expected {} {}: {}", c.dataset, c.split, c.count);
    }
    out
}
