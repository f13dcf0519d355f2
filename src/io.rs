//! Small I/O helpers shared by every command: reading score files and writing files atomically.

use crate::error::{OeError, Result};
use std::io::Write;
use std::path::Path;

/// A temporary file in `dir` (created if needed) for an atomic write, named `<prefix>*<suffix>`.
/// It is created with mode `0666 & !umask`, the mode an ordinary file gets, so that once renamed
/// into place other users of a shared machine can read it as they read any other file.
pub fn temp_file_in(dir: &Path, prefix: &str, suffix: &str) -> Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
    let mut b = tempfile::Builder::new();
    b.prefix(prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir).map_err(|e| OeError::io(dir, e))
}

/// The folder an atomic write of `path` puts its temporary file in.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Refuses to replace anything but a regular file (or nothing): a device such as `/dev/null`, a
/// FIFO, a directory or a symbolic link at `path` is an error naming it, never renamed over.
pub fn check_replaceable(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => {
            let what = if m.file_type().is_symlink() {
                "a symbolic link"
            } else if m.is_dir() {
                "a directory"
            } else {
                "not a regular file (a device, FIFO or socket)"
            };
            Err(OeError::Config(format!(
                "{}: is {what}; refusing to replace it (choose a regular file as output)",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OeError::io(path, e)),
    }
}

/// Moves a finished temporary file to `path` (after [`check_replaceable`]).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    check_replaceable(path)?;
    tmp.persist(path).map_err(|e| OeError::io(path, e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// An interrupted write never leaves a partial file under the final name; the file gets the usual
/// permissions (`0666 & !umask`); an existing `path` that is not a regular file is not replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // Checked before anything is created (no temporary file in `/dev` for `-o /dev/null`), and
    // again by `persist` at the rename.
    check_replaceable(path)?;
    let mut tmp = temp_file_in(parent_dir(path), ".oe-tmp-", "")?;
    tmp.write_all(bytes).map_err(|e| OeError::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| OeError::io(path, e))?;
    persist(tmp, path)
}

/// Lower-case hexadecimal of `bytes` (sha256 digests in manifests, `run.json` and file names).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_score(path: &Path, line: usize, field: &str) -> Result<f64> {
    let t = field.trim();
    if t.is_empty() {
        return Err(OeError::parse(path, line, "empty value; expected a number"));
    }
    let v: f64 = t
        .parse()
        .map_err(|_| OeError::parse(path, line, format!("`{t}` is not a number")))?;
    if !v.is_finite() {
        return Err(OeError::parse(
            path,
            line,
            format!("`{t}` is not a finite number"),
        ));
    }
    Ok(v)
}

/// Reads anomaly scores from a file: one number per line, or the column `column` of a CSV file with
/// a header. Empty lines, non-numbers, NaN and infinities are errors naming the file and line; so is
/// a file with no scores.
pub fn read_scores(path: &Path, column: Option<&str>) -> Result<Vec<f64>> {
    let bytes = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
    let scores = match column {
        None => {
            let mut out = Vec::new();
            let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
            // A final newline does not make an empty last line.
            if lines.last().is_some_and(|l| l.is_empty()) {
                lines.pop();
            }
            for (i, raw) in lines.into_iter().enumerate() {
                let line_no = i + 1;
                let text = std::str::from_utf8(raw)
                    .map_err(|_| OeError::parse(path, line_no, "invalid UTF-8"))?;
                let text = text.strip_suffix('\r').unwrap_or(text);
                out.push(parse_score(path, line_no, text)?);
            }
            out
        }
        Some(col) => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(bytes.as_slice());
            let headers = rdr
                .headers()
                .map_err(|e| OeError::parse(path, 1, format!("bad CSV header: {e}")))?
                .clone();
            let idx = headers
                .iter()
                .position(|h| h.trim() == col)
                .ok_or_else(|| {
                    OeError::parse(
                        path,
                        1,
                        format!(
                            "no column `{col}` in header (columns: {})",
                            headers.iter().collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?;
            let mut out = Vec::new();
            for rec in rdr.records() {
                let rec = rec.map_err(|e| {
                    let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                    OeError::parse(path, line, format!("bad CSV row: {e}"))
                })?;
                let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
                let field = rec.get(idx).ok_or_else(|| {
                    OeError::parse(path, line, format!("row has no column `{col}`"))
                })?;
                out.push(parse_score(path, line, field)?);
            }
            out
        }
    };
    if scores.is_empty() {
        return Err(OeError::parse(path, 1, "no scores in file"));
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[cfg(unix)]
    #[test]
    fn atomic_writes_get_the_usual_mode_and_never_replace_special_files() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"{}").unwrap();
        // The process umask (read back by setting it) decides the mode, as for any created file.
        let mask = unsafe_umask();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !mask, "mode {mode:o}, umask {mask:o}");
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = write_atomic(&link, b"x").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let e = write_atomic(Path::new("/dev/null"), b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = write_atomic(d.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
    }

    /// The current umask, from `/proc/self/status` (Linux), else the common 022.
    #[cfg(unix)]
    fn unsafe_umask() -> u32 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    }

    #[test]
    fn reads_plain_scores() {
        let f = file(b"0.5\n-1\n2e-3\n");
        assert_eq!(read_scores(f.path(), None).unwrap(), vec![0.5, -1.0, 0.002]);
        let f = file(b"1\r\n2");
        assert_eq!(read_scores(f.path(), None).unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn bad_plain_input_names_the_line() {
        for (content, line, what) in [
            (&b"1\nabc\n"[..], 2, "not a number"),
            (b"1\n\n2\n", 2, "empty"),
            (b"1\nNaN\n", 2, "finite"),
            (b"1\n2\ninf\n", 3, "finite"),
            (b"1\n\xff\n", 2, "UTF-8"),
            (b"", 1, "no scores"),
        ] {
            let f = file(content);
            let e = read_scores(f.path(), None).unwrap_err().to_string();
            assert!(e.contains(&format!(":{line}:")) && e.contains(what), "{e}");
        }
    }

    #[test]
    fn reads_csv_column() {
        let f = file(b"id,score\na,0.25\nb,1.5\n");
        assert_eq!(
            read_scores(f.path(), Some("score")).unwrap(),
            vec![0.25, 1.5]
        );
        let e = read_scores(f.path(), Some("nope")).unwrap_err().to_string();
        assert!(e.contains("no column `nope`"), "{e}");
        let f = file(b"id,score\na,0.25\nb,x\n");
        let e = read_scores(f.path(), Some("score"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":3:"), "{e}");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC; Howard Hinnant's days-to-civil).
pub fn utc_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_times() {
        // Checked with `date -u -d @SECS +%FT%TZ`.
        assert_eq!(super::utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc_time(1_796_121_296), "2026-12-01T10:34:56Z");
    }
}
