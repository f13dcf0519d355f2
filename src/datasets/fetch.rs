//! Getting the data: verification of what is on disk, downloads (from the manifest's URL or an
//! `OE_DATA_MIRROR`), extraction, atomic placement.
//!
//! Every download goes to a staging folder inside the data root (same file system), is checked
//! (sha256 where the manifest has one; complete length; example counts where the sha256 describes
//! only the mirror copy), and only then renamed to its final path. A failed or interrupted
//! download leaves nothing under a final path; the staging folder is removed on failure (and a
//! stale one, `.oe-staging-*`, is never read by any loader).

use super::manifest::{ArchiveFormat, FileEntry, Manifest};
use crate::error::{OeError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Called as a download advances with (file name, bytes so far, total bytes when known), and
/// once more with `done = true` at the end.
#[derive(Clone)]
pub struct DownloadProgress(pub std::sync::Arc<ProgressFn>);

/// `(file name, bytes so far, total bytes, done)`.
pub type ProgressFn = dyn Fn(&str, u64, Option<u64>, bool) + Send + Sync;

impl std::fmt::Debug for DownloadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownloadProgress")
    }
}

/// Where and how to download.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Base URL replicating the data-root layout (`<mirror>/<path>`): `http://...` or `file:///...`
    /// (or a plain folder path).
    pub mirror: Option<String>,
    /// Also fetch optional files.
    pub all: bool,
    /// Download files the manifest has no checksum for (verified by the loaders' example counts
    /// only). Off: such downloads are refused.
    pub insecure: bool,
    /// Told how a download advances (the binaries draw a bar); `None`: nothing is reported.
    pub progress: Option<DownloadProgress>,
    pub timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            mirror: None,
            all: false,
            insecure: false,
            progress: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl FetchOptions {
    /// Defaults plus `OE_DATA_MIRROR`.
    pub fn from_env() -> Self {
        FetchOptions {
            mirror: std::env::var("OE_DATA_MIRROR")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            ..Default::default()
        }
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    digest_file::<Sha256>(path)
}

/// MD5 of a file, hex (for the checksums dataset authors publish).
pub fn md5_file(path: &Path) -> Result<String> {
    digest_file::<md5::Md5>(path)
}

/// The digest `D` of a file, hex, read in 1 MiB blocks.
fn digest_file<D: Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| OeError::io(path, e))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| OeError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::io::hex(&h.finalize()))
}

/// State of one manifest file under a data root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Present and its sha256 matches.
    Verified,
    /// Present; the manifest has no sha256 for it (or only the mirror's): counts decide.
    Unchecked,
    /// Present with another sha256.
    Mismatch {
        expected: String,
        actual: String,
    },
    Missing,
}

pub fn file_status(root: &Path, f: &FileEntry) -> Result<FileStatus> {
    let p = root.join(&f.path);
    if !p.is_file() {
        return Ok(FileStatus::Missing);
    }
    match &f.sha256 {
        None => match &f.md5 {
            Some(exp) => {
                let act = md5_file(&p)?;
                if act.eq_ignore_ascii_case(exp) {
                    Ok(FileStatus::Verified)
                } else {
                    Ok(FileStatus::Mismatch {
                        expected: format!("md5 {exp}"),
                        actual: format!("md5 {act}"),
                    })
                }
            }
            None => Ok(FileStatus::Unchecked),
        },
        Some(exp) => {
            let act = sha256_file(&p)?;
            if act.eq_ignore_ascii_case(exp) {
                Ok(FileStatus::Verified)
            } else if f.sha256_mirror_only {
                Ok(FileStatus::Unchecked)
            } else {
                Ok(FileStatus::Mismatch {
                    expected: exp.clone(),
                    actual: act,
                })
            }
        }
    }
}

fn open_url(url: &str, timeout: Duration) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    if let Some(p) = url.strip_prefix("file://") {
        let f = std::fs::File::open(p).map_err(|e| OeError::Data(format!("{url}: {e}")))?;
        let len = f.metadata().ok().map(|m| m.len());
        return Ok((Box::new(f), len));
    }
    if !url.starts_with("http://") && !url.starts_with("https://") {
        let f = std::fs::File::open(url).map_err(|e| OeError::Data(format!("{url}: {e}")))?;
        let len = f.metadata().ok().map(|m| m.len());
        return Ok((Box::new(f), len));
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .build();
    match agent.get(url).call() {
        Ok(resp) => {
            let len = resp
                .header("Content-Length")
                .and_then(|v| v.trim().parse().ok());
            Ok((Box::new(resp.into_reader()), len))
        }
        Err(ureq::Error::Status(code, _)) => Err(OeError::Data(format!(
            "{url}: HTTP {code}{}",
            if code == 404 {
                " (not found: check the URL or the mirror's layout)"
            } else {
                ""
            }
        ))),
        Err(e) => {
            Err(OeError::Data(format!(
            "{} (no network? download the file by hand into the data root, or set OE_DATA_MIRROR \
             to an http(s):// or file:// mirror with the data-root layout)",
            if e.to_string().contains(url) { e.to_string() } else { format!("{url}: {e}") }
        )))
        }
    }
}

/// The checksums a download must match (either may be absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct Expected<'a> {
    pub sha256: Option<&'a str>,
    /// The authors' published MD5 (CIFAR, SVHN publish only that).
    pub md5: Option<&'a str>,
}

impl<'a> Expected<'a> {
    pub fn sha256(s: Option<&'a str>) -> Self {
        Self {
            sha256: s,
            md5: None,
        }
    }
    pub fn any(&self) -> bool {
        self.sha256.is_some() || self.md5.is_some()
    }
}

/// Downloads `url` to `dest` (parent folders created): streamed into a temporary file next to
/// `dest`, length, sha256 and md5 checked, then renamed. Returns the sha256. On any error nothing
/// is left at `dest` (an existing `dest` is left untouched).
pub fn download_to(
    url: &str,
    dest: &Path,
    expected: Expected,
    opts: &FetchOptions,
) -> Result<String> {
    let dir = dest
        .parent()
        .ok_or_else(|| OeError::Data(format!("{}: no parent folder", dest.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
    let (reader, len) = open_url(url, opts.timeout)?;
    let mut tmp = crate::io::temp_file_in(dir, ".oe-download-", "")?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let report = |bytes: u64, done: bool| {
        if let Some(p) = &opts.progress {
            (p.0)(&name, bytes, len, done)
        }
    };
    let mut reader = reader;
    let mut h = Sha256::new();
    let mut h5 = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    loop {
        if crate::interrupt::requested() {
            return Err(OeError::Interrupted(format!(
                "{url}: download stopped by a signal after {total} bytes; nothing was kept, run \
                 the fetch again"
            )));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(OeError::Data(format!(
                    "{url}: transfer failed (truncated) after {total} bytes ({e}); nothing was saved, run the fetch again"
                )))
            }
        };
        h.update(&buf[..n]);
        if expected.md5.is_some() {
            h5.update(&buf[..n]);
        }
        tmp.write_all(&buf[..n])
            .map_err(|e| OeError::io(tmp.path(), e))?;
        total += n as u64;
        report(total, false);
    }
    report(total, true);
    if let Some(n) = len {
        if total != n {
            return Err(OeError::Data(format!(
                "{url}: truncated transfer ({total} of {n} bytes); nothing was saved, run the fetch again"
            )));
        }
    }
    let sha = crate::io::hex(&h.finalize());
    if let Some(exp) = expected.sha256 {
        if !sha.eq_ignore_ascii_case(exp) {
            return Err(OeError::Data(format!(
                "{url}: sha256 {sha} differs from the manifest's {exp}; the download was discarded \
                 (a corrupted or different file: try again, or check the mirror)"
            )));
        }
    }
    if let Some(exp) = expected.md5 {
        let got = crate::io::hex(&h5.finalize());
        if !got.eq_ignore_ascii_case(exp) {
            return Err(OeError::Data(format!(
                "{url}: md5 {got} differs from the published {exp}; the download was discarded \
                 (a corrupted or different file: try again, or check the mirror)"
            )));
        }
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| OeError::io(tmp.path(), e))?;
    crate::io::persist(tmp, dest)?;
    Ok(sha)
}

fn mirror_url(mirror: &str, path: &str) -> String {
    let m = mirror.trim_end_matches('/');
    if m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file://") {
        format!("{m}/{path}")
    } else {
        format!(
            "file://{}/{path}",
            std::fs::canonicalize(m)
                .unwrap_or_else(|_| PathBuf::from(m))
                .display()
        )
    }
}

/// Extracts one member of an archive file into `dest` (through a temporary file next to it).
fn extract_member(
    archive: &Path,
    format: ArchiveFormat,
    member: &str,
    dest: &Path,
    sha: Option<&str>,
) -> Result<()> {
    let mut tmp = crate::io::temp_file_in(crate::io::parent_dir(dest), ".oe-extract-", "")?;
    let bad = |e: String| OeError::Data(format!("{}: {e}", archive.display()));
    let f = std::fs::File::open(archive).map_err(|e| OeError::io(archive, e))?;
    match format {
        ArchiveFormat::Zip => {
            let mut z = zip::ZipArchive::new(std::io::BufReader::new(f))
                .map_err(|e| bad(format!("bad zip: {e}")))?;
            let mut m = z
                .by_name(member)
                .map_err(|e| bad(format!("member {member}: {e}")))?;
            std::io::copy(&mut m, &mut tmp).map_err(|e| bad(format!("member {member}: {e}")))?;
        }
        ArchiveFormat::TarGz => {
            let mut ar =
                tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
            let mut found = false;
            for e in ar.entries().map_err(|e| bad(e.to_string()))? {
                let mut e = e.map_err(|e| bad(e.to_string()))?;
                let name = e
                    .path()
                    .map_err(|e| bad(e.to_string()))?
                    .to_string_lossy()
                    .into_owned();
                if name.trim_start_matches("./") == member {
                    std::io::copy(&mut e, &mut tmp)
                        .map_err(|e| bad(format!("member {member}: {e}")))?;
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(bad(format!("no member {member}")));
            }
        }
        ArchiveFormat::Gz => {
            std::io::copy(&mut flate2::read::GzDecoder::new(f), &mut tmp)
                .map_err(|e| bad(format!("bad gzip: {e}")))?;
        }
    }
    if let Some(exp) = sha {
        tmp.as_file()
            .sync_all()
            .map_err(|e| OeError::io(tmp.path(), e))?;
        let act = sha256_file(tmp.path())?;
        if !act.eq_ignore_ascii_case(exp) {
            return Err(bad(format!(
                "member {member}: sha256 {act} differs from the manifest's {exp}"
            )));
        }
    }
    crate::io::persist(tmp, dest)?;
    Ok(())
}

/// `what: message` for a data error (one `data:` prefix, not one per level); other errors as
/// they are.
fn context(e: OeError, what: &str) -> OeError {
    match e {
        OeError::Data(msg) => OeError::Data(format!("{what}: {msg}")),
        other => other,
    }
}

/// Refuses a download that nothing but example counts would check, unless `opts.insecure`.
fn check_verifiable(m: &Manifest, url: &str, opts: &FetchOptions) -> Result<()> {
    if opts.insecure {
        return Ok(());
    }
    Err(OeError::Data(format!(
        "{}: {url} has no checksum to verify it against (the manifest could only check its example \
         counts); pass --insecure to download it anyway, or set OE_DATA_MIRROR to a mirror whose \
         copy has a recorded sha256",
        m.name
    )))
}

/// Staging folders of downloads in progress: `<root>/.oe-staging-*`, holding an `owner` file with
/// the fetching process's id.
pub const STAGING_PREFIX: &str = ".oe-staging-";
const STAGING_OWNER: &str = "owner";

/// Removes the staging folders that no running process owns (left by a fetch that was killed).
/// Best effort: a folder that cannot be removed stays (no loader reads it).
pub fn clean_stale_staging(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(STAGING_PREFIX) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join(STAGING_OWNER))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if !owner.is_some_and(crate::rundir::process_alive) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// What `fetch` did for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    AlreadyPresent(String),
    Downloaded(String),
    Skipped(String, String),
}

/// Makes every required (with `opts.all`, every) file of `m` present and verified under `root`.
/// The loaders' check of a dataset's files under a root (a staging directory while fetching):
/// one line per loader with its counts, or the error the loaders gave. Each wing supplies its own
/// (`text::data::check_loader_counts`).
pub type CountCheck<'a> = &'a dyn Fn(&Manifest, &Path) -> Result<Vec<String>>;

/// Downloads the missing files of `m` into `root`, verifying each by sha256 and then the loaders'
/// counts (`counts`) on a staging copy before anything is moved into place.
pub fn fetch_dataset(
    m: &Manifest,
    root: &Path,
    opts: &FetchOptions,
    counts: CountCheck,
) -> Result<Vec<Fetched>> {
    std::fs::create_dir_all(root).map_err(|e| OeError::io(root, e))?;
    let mut out = Vec::new();
    let mut todo: Vec<&FileEntry> = Vec::new();
    for f in m.files.iter().filter(|f| f.required || opts.all) {
        match file_status(root, f)? {
            FileStatus::Verified | FileStatus::Unchecked => {
                out.push(Fetched::AlreadyPresent(f.path.clone()))
            }
            FileStatus::Missing | FileStatus::Mismatch { .. } => todo.push(f),
        }
    }
    if todo.is_empty() {
        return Ok(out);
    }
    clean_stale_staging(root);
    let stage = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(root)
        .map_err(|e| OeError::io(root, e))?;
    crate::io::write_atomic(
        &stage.path().join(STAGING_OWNER),
        std::process::id().to_string().as_bytes(),
    )?;
    let mut staged: Vec<&FileEntry> = Vec::new();
    let mut needs_counts = false;
    let mut archives: std::collections::HashMap<&str, PathBuf> = Default::default();
    for f in todo {
        let dest = stage.path().join(&f.path);
        let file_sums = Expected {
            sha256: f.sha256.as_deref(),
            md5: f.md5.as_deref(),
        };
        let archive = f
            .archive
            .as_ref()
            .and_then(|aid| m.archives.iter().find(|a| &a.id == aid));
        if let Some(mirror) = &opts.mirror {
            // A mirror holds the data-root layout, or the original archives by their file names.
            let direct = download_to(&mirror_url(mirror, &f.path), &dest, file_sums, opts);
            match (direct, archive, &f.member) {
                (Ok(_), _, _) => {
                    if !file_sums.any() {
                        check_verifiable(m, &mirror_url(mirror, &f.path), opts)?;
                    }
                    needs_counts |= !file_sums.any()
                }
                (Err(e), Some(a), Some(member)) => {
                    if !archives.contains_key(a.id.as_str()) {
                        let ap = stage.path().join(".archives").join(&a.id);
                        let sums = Expected {
                            sha256: a.sha256.as_deref(),
                            md5: a.md5.as_deref(),
                        };
                        if !sums.any() && !file_sums.any() {
                            check_verifiable(m, &mirror_url(mirror, a.file_name()), opts)?;
                        }
                        match download_to(&mirror_url(mirror, a.file_name()), &ap, sums, opts) {
                            Ok(_) => {}
                            Err(e2) if !f.required => {
                                out.push(Fetched::Skipped(
                                    f.path.clone(),
                                    format!("optional file not on the mirror: {e}; {e2}"),
                                ));
                                continue;
                            }
                            Err(e2) => {
                                return Err(OeError::Data(format!(
                                    "{} ({}): not on the mirror as a file ({e}) nor in its archive: {e2}",
                                    m.name, f.path
                                )))
                            }
                        }
                        archives.insert(a.id.as_str(), ap);
                    }
                    needs_counts |= !file_sums.any() && !a.checked();
                    extract_member(
                        &archives[a.id.as_str()],
                        a.format,
                        member,
                        &dest,
                        f.sha256.as_deref(),
                    )?;
                }
                (Err(e), _, _) if !f.required => {
                    out.push(Fetched::Skipped(
                        f.path.clone(),
                        format!("optional file not on the mirror: {e}"),
                    ));
                    continue;
                }
                (Err(e), _, _) => return Err(context(e, &format!("{} ({})", m.name, f.path))),
            }
        } else if let Some(url) = &f.url {
            let sums = if f.sha256_mirror_only {
                Expected {
                    sha256: None,
                    md5: f.md5.as_deref(),
                }
            } else {
                file_sums
            };
            if !sums.any() {
                check_verifiable(m, url, opts)?;
            }
            needs_counts |= f.sha256_mirror_only || !sums.any();
            download_to(url, &dest, sums, opts)
                .map_err(|e| context(e, &format!("{} ({})", m.name, f.path)))?;
        } else if let (Some(a), Some(member)) = (archive, &f.member) {
            if f.sha256.is_none() && !a.checked() {
                check_verifiable(m, &a.url, opts)?;
            }
            if !archives.contains_key(a.id.as_str()) {
                let ap = stage.path().join(".archives").join(&a.id);
                let sums = Expected {
                    sha256: a.sha256.as_deref(),
                    md5: a.md5.as_deref(),
                };
                download_to(&a.url, &ap, sums, opts).map_err(|e| context(e, &m.name))?;
                archives.insert(a.id.as_str(), ap);
            }
            needs_counts |= f.sha256.is_none() && !a.checked();
            extract_member(
                &archives[a.id.as_str()],
                a.format,
                member,
                &dest,
                f.sha256.as_deref(),
            )?;
        } else if !f.required {
            out.push(Fetched::Skipped(
                f.path.clone(),
                "no public download URL; a mirror (OE_DATA_MIRROR) can provide it".into(),
            ));
            continue;
        } else {
            return Err(OeError::Data(format!(
                "{}: {} has no public download URL ({}); set OE_DATA_MIRROR to a mirror that has it, or copy it into {}",
                m.name,
                f.path,
                f.note.as_deref().unwrap_or("see the manifest"),
                root.display()
            )));
        }
        staged.push(f);
    }
    if needs_counts {
        // Count verification on the staging root, completed with the files already in place.
        for f in m.files.iter() {
            let src = root.join(&f.path);
            let dst = stage.path().join(&f.path);
            if src.is_file() && !dst.exists() {
                if let Some(d) = dst.parent() {
                    std::fs::create_dir_all(d).map_err(|e| OeError::io(d, e))?;
                }
                std::fs::hard_link(&src, &dst)
                    .or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))
                    .map_err(|e| OeError::io(&dst, e))?;
            }
        }
        counts(m, stage.path()).map_err(|e| {
            OeError::Data(format!(
                "{}: downloaded files failed the count check, nothing was kept: {e}",
                m.name
            ))
        })?;
    }
    for f in staged {
        let src = stage.path().join(&f.path);
        let dst = root.join(&f.path);
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(|e| OeError::io(d, e))?;
        }
        std::fs::rename(&src, &dst).map_err(|e| OeError::io(&dst, e))?;
        out.push(Fetched::Downloaded(f.path.clone()));
    }
    Ok(out)
}

/// Fetches each of `manifests` in turn ([`fetch_dataset`]) and returns one line per file:
/// present, downloaded and verified, or skipped and why (`data fetch`, both wings).
pub fn fetch_report(
    manifests: &[&Manifest],
    root: &Path,
    opts: &FetchOptions,
    counts: CountCheck,
) -> Result<String> {
    let mut out = String::new();
    for m in manifests {
        for r in fetch_dataset(m, root, opts, counts)? {
            let line = match r {
                Fetched::AlreadyPresent(p) => format!("{}: {p}: present", m.name),
                Fetched::Downloaded(p) => format!("{}: {p}: downloaded and verified", m.name),
                Fetched::Skipped(p, why) => format!("{}: {p}: skipped ({why})", m.name),
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Verification report of one dataset.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub name: String,
    pub files: Vec<(String, FileStatus, bool)>,
    /// Loader counts, or the error the loaders gave.
    pub counts: std::result::Result<Vec<String>, String>,
}

impl VerifyReport {
    /// True when every required file is present, none mismatches, and the loaders' counts pass.
    pub fn ok(&self) -> bool {
        self.counts.is_ok()
            && self.files.iter().all(|(_, s, req)| match s {
                FileStatus::Mismatch { .. } => false,
                FileStatus::Missing => !req,
                _ => true,
            })
    }
}

/// Re-checks what is on disk for one dataset: sha256 of each file, then the loaders' counts.
pub fn verify_dataset(m: &Manifest, root: &Path, counts: CountCheck) -> Result<VerifyReport> {
    let mut files = Vec::new();
    for f in &m.files {
        files.push((f.path.clone(), file_status(root, f)?, f.required));
    }
    let any_required_missing = files
        .iter()
        .any(|(_, s, r)| *r && *s == FileStatus::Missing);
    let counts = if any_required_missing {
        Err("required files missing".to_string())
    } else {
        counts(m, root).map_err(|e| e.to_string())
    };
    Ok(VerifyReport {
        name: m.name.clone(),
        files,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_https_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let e = download_to(
            "https://127.0.0.1:9/x",
            &d.path().join("x"),
            Expected::default(),
            &FetchOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("OE_DATA_MIRROR"), "{e}");
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn file_mirror_and_sha_check() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src.txt");
        std::fs::write(&src, b"hello").unwrap();
        let url = format!("file://{}", src.display());
        let opts = FetchOptions {
            progress: None,
            ..Default::default()
        };
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(
            download_to(
                &url,
                &d.path().join("a/b.txt"),
                Expected::sha256(Some(good)),
                &opts
            )
            .unwrap(),
            good
        );
        let bad = "0".repeat(64);
        assert!(download_to(
            &url,
            &d.path().join("c.txt"),
            Expected::sha256(Some(&bad)),
            &opts
        )
        .is_err());
        assert!(!d.path().join("c.txt").exists());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.iter()
                .all(|n| !n.to_string_lossy().starts_with(".oe-")),
            "{left:?}"
        );
    }
}
