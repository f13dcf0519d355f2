//! Small I/O helpers shared by every command: reading score files and writing files atomically.

use crate::error::{OeError, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// An interrupted write never leaves a partial file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| OeError::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".oe-tmp-")
        .tempfile_in(dir)
        .map_err(|e| OeError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| OeError::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| OeError::io(path, e))?;
    tmp.persist(path).map_err(|e| OeError::io(path, e.error))?;
    Ok(())
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
