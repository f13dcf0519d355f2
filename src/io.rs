//! Small I/O helpers shared by every command: reading score files and writing files atomically.

use crate::error::{OeError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Where a write to a path lands, once symbolic links are followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Nothing or a regular file at this path (the end of any symbolic links): written through a
    /// temporary file next to it and renamed over it.
    Replace(PathBuf),
    /// A character device or FIFO (`/dev/null`, `/dev/stdout`, a named pipe): written into
    /// directly, never renamed over or removed.
    InPlace(PathBuf),
}

impl Target {
    /// The path written to.
    pub fn path(&self) -> &Path {
        match self {
            Target::Replace(p) | Target::InPlace(p) => p,
        }
    }
}

/// How many symbolic links [`resolve_target`] follows before giving up (Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Follows symbolic links at `path` (dangling ones too: their target is where a new file goes) and
/// says how a write to it proceeds. A directory, block device or socket at the end is an error
/// naming it (and the link that led there).
pub fn resolve_target(path: &Path) -> Result<Target> {
    let mut cur = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        let m = match std::fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Target::Replace(cur)),
            Err(e) => return Err(OeError::io(&cur, e)),
        };
        let ft = m.file_type();
        if ft.is_symlink() {
            let to = std::fs::read_link(&cur).map_err(|e| OeError::io(&cur, e))?;
            cur = if to.is_absolute() {
                to
            } else {
                parent_dir(&cur).join(to)
            };
            continue;
        }
        if ft.is_file() {
            return Ok(Target::Replace(cur));
        }
        let via = if cur == path {
            String::new()
        } else {
            format!(" (the target of the symbolic link {})", path.display())
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() || ft.is_fifo() {
                return Ok(Target::InPlace(cur));
            }
        }
        let what = if ft.is_dir() {
            "a directory"
        } else {
            "a block device or socket"
        };
        return Err(OeError::Config(format!(
            "{}{via}: is {what}; cannot write an output file there (choose a file path)",
            cur.display()
        )));
    }
    Err(OeError::Config(format!(
        "{}: more than {MAX_LINKS} symbolic links (a loop?); cannot write there",
        path.display()
    )))
}

/// Opens a device or FIFO for writing, without truncating or creating anything.
fn open_in_place(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| OeError::io(path, e))
}

/// An output file being written: a temporary file renamed into place by [`OutFile::commit`], or,
/// for a device or FIFO ([`Target::InPlace`]), the destination itself. Dropped uncommitted, the
/// temporary file is removed and the destination left as it was (a device or FIFO may already have
/// received bytes: there is no taking them back).
#[derive(Debug)]
pub struct OutFile {
    inner: OutInner,
    /// The path as given (for messages).
    path: PathBuf,
}

#[derive(Debug)]
enum OutInner {
    Temp {
        tmp: tempfile::NamedTempFile,
        target: PathBuf,
    },
    InPlace(std::fs::File),
}

impl OutFile {
    /// Starts writing `path` ([`resolve_target`] decides how).
    pub fn create(path: &Path) -> Result<Self> {
        let inner = match resolve_target(path)? {
            Target::Replace(target) => OutInner::Temp {
                tmp: temp_file_in(parent_dir(&target), ".oe-tmp-", "")?,
                target,
            },
            Target::InPlace(p) => OutInner::InPlace(open_in_place(&p)?),
        };
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The open file the bytes go to.
    pub fn as_file(&self) -> &std::fs::File {
        match &self.inner {
            OutInner::Temp { tmp, .. } => tmp.as_file(),
            OutInner::InPlace(f) => f,
        }
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the bytes final: fsync and rename for a file; for a device or FIFO, nothing more.
    pub fn commit(self) -> Result<()> {
        match self.inner {
            OutInner::Temp { tmp, target } => {
                tmp.as_file()
                    .sync_all()
                    .map_err(|e| OeError::io(&self.path, e))?;
                persist(tmp, &target)
            }
            OutInner::InPlace(mut f) => f.flush().map_err(|e| OeError::io(&self.path, e)),
        }
    }
}

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.inner {
            OutInner::Temp { tmp, .. } => tmp.write(buf),
            OutInner::InPlace(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.inner {
            OutInner::Temp { tmp, .. } => tmp.flush(),
            OutInner::InPlace(f) => f.flush(),
        }
    }
}

/// A temporary file for a later [`persist`] to `path`, for writers that need a file name (libtorch
/// writes `.safetensors` by path): next to the file a symbolic link at `path` points to, or in the
/// system's temporary folder when `path` is a device or FIFO (its bytes are copied there).
pub fn temp_file_for(path: &Path, prefix: &str, suffix: &str) -> Result<tempfile::NamedTempFile> {
    match resolve_target(path)? {
        Target::Replace(t) => temp_file_in(parent_dir(&t), prefix, suffix),
        Target::InPlace(_) => temp_file_in(&std::env::temp_dir(), prefix, suffix),
    }
}

/// Moves a finished temporary file to `path`: renamed over a regular file (or over the target of a
/// symbolic link, which stays a link), copied into a device or FIFO (never renamed over it), an
/// error naming it for a directory ([`resolve_target`]).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    match resolve_target(path)? {
        Target::Replace(t) => match tmp.persist(&t) {
            Ok(_) => {}
            // The temporary file was made next to a symbolic link whose target is on another
            // file system: copied next to the target first, then renamed.
            #[cfg(unix)]
            Err(e) if e.error.raw_os_error() == Some(libc::EXDEV) => {
                let mut src = e.file.reopen().map_err(|e| OeError::io(&t, e))?;
                let mut near = temp_file_in(parent_dir(&t), ".oe-tmp-", "")?;
                std::io::copy(&mut src, &mut near).map_err(|e| OeError::io(&t, e))?;
                near.as_file().sync_all().map_err(|e| OeError::io(&t, e))?;
                near.persist(&t).map_err(|e| OeError::io(&t, e.error))?;
            }
            Err(e) => return Err(OeError::io(&t, e.error)),
        },
        Target::InPlace(p) => {
            let mut src = tmp.reopen().map_err(|e| OeError::io(tmp.path(), e))?;
            let mut dst = open_in_place(&p)?;
            std::io::copy(&mut src, &mut dst).map_err(|e| OeError::io(&p, e))?;
            dst.flush().map_err(|e| OeError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// An interrupted write never leaves a partial file under the final name; the file gets the usual
/// permissions (`0666 & !umask`). A symbolic link stays a link (its target is replaced); a device
/// or FIFO is written into, never replaced ([`resolve_target`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OutFile::create(path)?;
    f.write_all(bytes).map_err(|e| OeError::io(path, e))?;
    f.commit()
}

/// A number for messages and summaries, compact at any magnitude: the shortest form that reads back
/// as `x`, positional for `1e-4 <= |x| < 1e16` (`0.5`, `12`, `-3.25`), else in exponent form
/// (`1e300`, `2.5e-7`) instead of hundreds of digits.
pub fn compact_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-4..1e16).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
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
    fn atomic_writes_get_the_usual_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"{}").unwrap();
        // The process umask (read back by setting it) decides the mode, as for any created file.
        let mask = unsafe_umask();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !mask, "mode {mode:o}, umask {mask:o}");
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        // Streamed outputs and files written by path (libtorch's weights) through a temporary
        // file get the same mode, not tempfile's 0600.
        let q = d.path().join("b.tsv");
        let mut o = OutFile::create(&q).unwrap();
        o.write_all(b"x").unwrap();
        o.commit().unwrap();
        let w = d.path().join("model.safetensors");
        let tmp = temp_file_for(&w, ".oe-tmp-", ".safetensors").unwrap();
        std::fs::write(tmp.path(), b"weights").unwrap();
        persist(tmp, &w).unwrap();
        for f in [&q, &w] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o666 & !mask, "{}: mode {mode:o}", f.display());
        }
    }

    #[cfg(unix)]
    fn file_type(p: &Path) -> std::fs::FileType {
        std::fs::symlink_metadata(p).unwrap().file_type()
    }

    /// Names in `dir` (to see that no temporary file is left).
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    #[test]
    fn a_char_device_is_written_into_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        // /dev/null itself: written into (no error), still the device.
        write_atomic(Path::new("/dev/null"), b"x").unwrap();
        assert!(file_type(Path::new("/dev/null")).is_char_device());
        // A node of our own (major 1, minor 3: a second /dev/null), which root could otherwise
        // rename over.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped the mknod part: not root (creating a device node needs root)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("null");
        let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        if rc != 0 {
            eprintln!(
                "skipped the mknod part: mknod failed ({}), no CAP_MKNOD here",
                std::io::Error::last_os_error()
            );
            return;
        }
        write_atomic(&dev, b"some bytes").unwrap();
        assert!(file_type(&dev).is_char_device(), "replaced by a file");
        let mut o = OutFile::create(&dev).unwrap();
        o.write_all(b"streamed").unwrap();
        o.commit().unwrap();
        assert!(file_type(&dev).is_char_device());
        // A temporary file handed to persist is copied into the device, then removed.
        let mut tmp = temp_file_for(&dev, ".oe-tmp-", "").unwrap();
        assert!(
            !tmp.path().starts_with(d.path()),
            "{}",
            tmp.path().display()
        );
        tmp.write_all(b"copied").unwrap();
        persist(tmp, &dev).unwrap();
        assert!(file_type(&dev).is_char_device());
        assert_eq!(names(d.path()), ["null"], "no temporary file left");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_into() {
        use std::os::unix::fs::FileTypeExt;
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(&fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe\n").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe\n");
        assert!(file_type(&fifo).is_fifo(), "replaced by a file");
        assert_eq!(names(d.path()), ["pipe"], "no temporary file left");
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_stays_a_link_and_its_target_gets_the_bytes() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("real");
        std::fs::create_dir(&sub).unwrap();
        let target = sub.join("a.txt");
        std::fs::write(&target, b"old").unwrap();
        let link = d.path().join("link");
        // A relative link, resolved against the link's folder.
        std::os::unix::fs::symlink("real/a.txt", &link).unwrap();
        let chain = d.path().join("link2");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        write_atomic(&chain, b"new").unwrap();
        assert!(file_type(&link).is_symlink() && file_type(&chain).is_symlink());
        assert!(file_type(&target).is_file());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(&sub), ["a.txt"], "no temporary file left");
        // Streaming and persist go to the target too.
        let mut o = OutFile::create(&link).unwrap();
        o.write_all(b"streamed").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"streamed");
        let mut tmp = temp_file_for(&link, ".oe-tmp-", "").unwrap();
        tmp.write_all(b"persisted").unwrap();
        persist(tmp, &link).unwrap();
        assert!(file_type(&link).is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"persisted");
        // A dangling link: its target is created.
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(sub.join("b.txt"), &dangling).unwrap();
        write_atomic(&dangling, b"b").unwrap();
        assert!(file_type(&dangling).is_symlink());
        assert_eq!(std::fs::read(sub.join("b.txt")).unwrap(), b"b");
    }

    #[cfg(unix)]
    #[test]
    fn directories_and_link_loops_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = write_atomic(d.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let link = d.path().join("to-dir");
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        let e = write_atomic(&link, b"x").unwrap_err().to_string();
        assert!(
            e.contains("a directory") && e.contains("symbolic link") && e.contains("to-dir"),
            "{e}"
        );
        assert!(file_type(&link).is_symlink());
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = write_atomic(&a, b"x").unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
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
    fn numbers_are_compact_at_any_magnitude() {
        for (x, want) in [
            (1e300, "1e300"),
            (-1e300, "-1e300"),
            (2.5e-7, "2.5e-7"),
            (1e16, "1e16"),
            (0.0, "0"),
            (0.5, "0.5"),
            (-3.25, "-3.25"),
            (12.0, "12"),
            (0.0001, "0.0001"),
            (123456789.125, "123456789.125"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(compact_number(x), want);
            if x.is_finite() {
                assert_eq!(compact_number(x).parse::<f64>().unwrap(), x);
            }
        }
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

/// Appends `s` to `out` as one CSV field (RFC 4180): quoted, with quotes doubled, when it holds a
/// comma, a quote or a line break.
pub fn csv_field(s: &str, out: &mut String) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}
