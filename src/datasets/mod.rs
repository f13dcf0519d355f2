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

/// The data root the user chose (`--data-dir`, else `$OE_DATA_DIR`), if any: commands that read a
/// model directory use the directory's recorded root otherwise.
pub fn explicit_data_root(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("OE_DATA_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
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

/// What a user needs when a dataset's files are not under `root`: which required files are
/// missing, where to download them (URLs with their checksums), the fetch command, and how to
/// point the tools at another data root. `tool` is the binary (`oe-text`, `oe-vision`).
pub fn how_to_get(m: &Manifest, root: &Path, tool: &str) -> String {
    let mut out = String::new();
    let missing: Vec<String> = m
        .files
        .iter()
        .filter(|f| f.required && !root.join(&f.path).is_file())
        .map(|f| root.join(&f.path).display().to_string())
        .collect();
    if !missing.is_empty() {
        let _ = write!(out, "missing: {}", missing.join(", "));
    }
    let mut sources: Vec<String> = Vec::new();
    for f in m.files.iter().filter(|f| f.required) {
        let src = match (&f.url, &f.archive) {
            (Some(u), _) => Some((u.clone(), f.sha256.clone(), f.md5.clone())),
            (None, Some(aid)) => m
                .archives
                .iter()
                .find(|a| &a.id == aid)
                .map(|a| (a.url.clone(), a.sha256.clone(), a.md5.clone())),
            _ => None,
        };
        if let Some((u, sha, md5)) = src {
            let sum = match (sha, md5) {
                (Some(s), _) => format!(" (sha256 {s})"),
                (None, Some(m5)) => format!(" (md5 {m5})"),
                _ => String::new(),
            };
            let line = format!("{u}{sum}");
            if !sources.contains(&line) {
                sources.push(line);
            }
        }
    }
    if !sources.is_empty() {
        let _ = write!(out, "; download: {}", sources.join(", "));
    }
    let _ = write!(
        out,
        "; `{tool} data fetch {} --data-dir {}` downloads, verifies and unpacks it there; to use \
         files you already have elsewhere, pass --data-dir DIR (or set OE_DATA_DIR) to the folder \
         that holds them (`{tool} data show {}` lists the layout)",
        m.name,
        root.display(),
        m.name
    );
    out
}

/// The report lines of one dataset's verification (`data verify`, both wings).
pub fn verify_lines(r: &fetch::VerifyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}:", r.name);
    for (p, s, req) in &r.files {
        let st = match s {
            fetch::FileStatus::Verified => "checksum ok".to_string(),
            fetch::FileStatus::Unchecked => "present (checked by counts)".to_string(),
            fetch::FileStatus::Mismatch { expected, actual } => {
                format!("CHECKSUM MISMATCH: expected {expected}, got {actual}")
            }
            fetch::FileStatus::Missing if *req => "MISSING".to_string(),
            fetch::FileStatus::Missing => "absent (optional)".to_string(),
        };
        let _ = writeln!(out, "  {p}: {st}");
    }
    match &r.counts {
        Ok(lines) => lines.iter().for_each(|l| {
            let _ = writeln!(out, "  counts {l}");
        }),
        Err(e) => {
            let _ = writeln!(out, "  COUNTS FAILED: {e}");
        }
    }
    out
}

/// `NAME=SPEC` → (`Some(NAME)`, `SPEC`), so a user's file gets a short name in tables and results
/// (text and vision). A spec that exists as a path, or whose part before `=` is empty or has a `/`,
/// is taken whole.
pub fn split_label(s: &str) -> (Option<&str>, &str) {
    match s.split_once('=') {
        Some((l, spec)) if !l.is_empty() && !l.contains('/') && !Path::new(s).exists() => {
            (Some(l), spec)
        }
        _ => (None, s),
    }
}
