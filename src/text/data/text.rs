//! Small text helpers shared by the parsers: file reading with line-numbered errors, casing,
//! truncation, archive iteration.

use crate::error::{OeError, Result};
use std::io::Read;
use std::path::Path;

pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            OeError::Data(format!(
                "missing file {} (run `oe-text data fetch <dataset>` or point --data-dir / OE_DATA_DIR at a data root that has it)",
                path.display()
            ))
        } else {
            OeError::io(path, e)
        }
    })
}

/// Splits UTF-8 text into lines (without `\n` / `\r\n`); invalid UTF-8 is an error naming the line.
pub fn utf8_lines<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let s = std::str::from_utf8(line).map_err(|e| {
            OeError::parse(
                path,
                line_no,
                format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
            )
        })?;
        out.push(s);
    }
    Ok(out)
}

/// Whole-file UTF-8 check with a line-numbered error.
pub fn utf8_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let upto = e.valid_up_to();
        let line = bytes[..upto].iter().filter(|&&b| b == b'\n').count() + 1;
        OeError::parse(path, line, "invalid UTF-8")
    })
}

/// Latin-1 bytes to a `String` (every byte is one code point).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Python `str.lower()` (close enough: Rust's Unicode lower-casing).
pub fn lower(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

/// Applies casing and truncation (first `max_tokens` whitespace tokens, re-joined by one space).
pub fn finish(s: &str, lowercase: bool, max_tokens: Option<usize>) -> String {
    let s = match max_tokens {
        Some(n) if s.split_whitespace().nth(n).is_some() => {
            s.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
        }
        _ => s.to_string(),
    };
    if lowercase {
        lower(&s)
    } else {
        s
    }
}

/// The largest archive member [`for_each_tar_gz_member`] reads (into memory): text datasets' members
/// are a few MB at most.
pub const MAX_TAR_MEMBER: u64 = 1 << 30;

/// The most memory reserved ahead for one member; a larger one grows as it is read.
const MAX_TAR_RESERVE: u64 = 16 << 20;

/// Iterates over the regular-file members of a `.tar.gz`, calling `f(member_path, bytes)` for
/// those `want` accepts.
pub fn for_each_tar_gz_member(
    path: &Path,
    want: impl Fn(&str) -> bool,
    mut f: impl FnMut(&str, Vec<u8>) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| OeError::io(path, e))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut ar = tar::Archive::new(gz);
    let bad = |e: std::io::Error| {
        OeError::Data(format!(
            "{}: unreadable tar.gz archive: {e}",
            path.display()
        ))
    };
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        if !want(&name) {
            continue;
        }
        // The size is the header's claim: a crafted header must not decide how much memory is
        // reserved (a failed 100 GB reservation aborts the process).
        let size = entry.size();
        if size > MAX_TAR_MEMBER {
            return Err(OeError::Data(format!(
                "{}: member {name} declares {size} bytes, more than the {} GiB a text member may \
                 have (a corrupted or crafted archive?)",
                path.display(),
                MAX_TAR_MEMBER >> 30
            )));
        }
        let mut buf = Vec::with_capacity(size.min(MAX_TAR_RESERVE) as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| OeError::Data(format!("{}: member {name}: {e}", path.display())))?;
        f(&name, buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_lowercases_and_cuts() {
        assert_eq!(finish("A b C d", true, Some(2)), "a b");
        assert_eq!(finish("A  b", false, Some(5)), "A  b");
    }

    /// A `.tar.gz` with one member `big/a.txt` whose header declares `size` bytes, followed by only
    /// `data` (a truncated or crafted archive).
    fn tar_gz_declaring(size: u64, data: &[u8]) -> tempfile::NamedTempFile {
        let mut h = tar::Header::new_gnu();
        h.set_path("big/a.txt").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(data);
        let f = tempfile::Builder::new()
            .suffix(".tar.gz")
            .tempfile()
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(f.reopen().unwrap(), Default::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap();
        f
    }

    #[test]
    fn a_huge_declared_member_is_refused_not_reserved() {
        let f = tar_gz_declaring(100 << 30, b"hello\n");
        let mut seen = 0;
        let e = for_each_tar_gz_member(
            f.path(),
            |_| true,
            |_, _| {
                seen += 1;
                Ok(())
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(seen, 0);
        let archive = f.path().display().to_string();
        assert!(
            e.contains(&archive) && e.contains("big/a.txt") && e.contains("107374182400"),
            "{e}"
        );
        // Just under the limit but truncated: read as far as it goes, no huge reservation; the
        // archive's end is then an error naming it.
        let f = tar_gz_declaring(MAX_TAR_MEMBER, b"hello\n");
        let r = for_each_tar_gz_member(
            f.path(),
            |_| true,
            |_, b| {
                assert!(
                    b.capacity() <= MAX_TAR_RESERVE as usize + 4096,
                    "{}",
                    b.capacity()
                );
                Ok(())
            },
        );
        if let Err(e) = r {
            assert!(
                e.to_string().contains(&f.path().display().to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn utf8_errors_name_the_line() {
        let p = Path::new("x.txt");
        assert_eq!(utf8_lines(p, b"a\r\nb\n").unwrap(), vec!["a", "b"]);
        let e = utf8_lines(p, b"a\nb\xff\n").unwrap_err().to_string();
        assert!(e.contains("x.txt:2:") && e.contains("UTF-8"), "{e}");
    }
}
