//! Streaming input for `oe-text score`: text files (one text per line), `.gz` files, CSV and
//! JSON-lines files with a text column, directories (recursively) and standard input.
//!
//! Nothing here holds a whole file: lines are read one at a time with a byte cap
//! ([`InputOptions::max_line_bytes`]), so a 1 GB file (or a 1 GB line) never sits in memory. Every
//! irregular input has a defined behaviour chosen by a policy ([`InputOptions`]); every deviation is
//! counted in [`Counts`] or is an error naming the file and line.

use crate::error::{OeError, Result};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// How a file's records are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// From the file name (after a `.gz`): `.csv` → csv, `.jsonl` / `.json` / `.ndjson` → jsonl,
    /// anything else (and standard input) → lines.
    #[default]
    Auto,
    /// One text per line.
    Lines,
    /// CSV with a header row; the text is the `--column` field.
    Csv,
    /// One JSON object per line; the text is the `--column` field.
    Jsonl,
}

/// Invalid UTF-8 in a line or field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalidUtf8 {
    /// Stop with an error naming the file and line.
    #[default]
    Fail,
    /// Leave the line out of the output (counted).
    Skip,
    /// Replace each invalid sequence with U+FFFD and score the line (counted).
    Replace,
}

/// A CSV row without the column (or unreadable), or a JSON line that is not an object holding the
/// column as a string, number or boolean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBadRecord {
    /// Stop with an error naming the file and line.
    #[default]
    Fail,
    /// Leave the record out of the output (counted).
    Skip,
}

/// An empty text (nothing but white space).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnEmpty {
    /// Leave it out of the output (counted).
    #[default]
    Skip,
    /// Score it as a text of no tokens (a single padding step).
    Score,
    /// Stop with an error naming the file and line.
    Fail,
}

/// A text longer than the model's maximum (in tokens) or than `--max-line-bytes` (in bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnLong {
    /// Keep the beginning (the model's first tokens / the first bytes) and score it (counted).
    #[default]
    Truncate,
    /// Leave it out of the output (counted).
    Skip,
    /// Stop with an error naming the file and line.
    Fail,
}

/// Reading options.
#[derive(Clone, Debug, Serialize)]
pub struct InputOptions {
    pub format: InputFormat,
    /// Text column of CSV / JSON-lines input (default `text`).
    pub column: Option<String>,
    /// Longest line (or CSV field) read, in bytes; the rest of a longer line is discarded while
    /// reading and the line follows `on_long` (a JSON line that long is a bad record).
    pub max_line_bytes: usize,
    pub on_invalid_utf8: OnInvalidUtf8,
    pub on_bad_record: OnBadRecord,
    pub on_empty: OnEmpty,
    pub on_long: OnLong,
    /// Directory inputs: follow links to directories ([`expand_inputs_with`]).
    pub follow_dir_links: bool,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self {
            format: InputFormat::Auto,
            column: None,
            max_line_bytes: 1 << 20,
            on_invalid_utf8: OnInvalidUtf8::Fail,
            on_bad_record: OnBadRecord::Fail,
            on_empty: OnEmpty::Skip,
            on_long: OnLong::Truncate,
            follow_dir_links: false,
        }
    }
}

/// What happened to the records read; printed at the end of every run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    /// Records read (lines of text / JSON-lines files, data rows of CSV files).
    pub read: u64,
    /// Records written to the output.
    pub scored: u64,
    pub skipped_empty: u64,
    pub skipped_invalid_utf8: u64,
    pub skipped_bad_record: u64,
    pub skipped_long: u64,
    /// Lines scored with invalid UTF-8 replaced by U+FFFD.
    pub replaced_invalid_utf8: u64,
    /// Texts scored after cutting them to `--max-line-bytes`.
    pub truncated_bytes: u64,
    /// Texts scored after cutting them to the model's maximum number of tokens.
    pub truncated_tokens: u64,
    /// Records with `is_ood` true (when a threshold is in force).
    pub flagged_ood: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.read += o.read;
        self.scored += o.scored;
        self.skipped_empty += o.skipped_empty;
        self.skipped_invalid_utf8 += o.skipped_invalid_utf8;
        self.skipped_bad_record += o.skipped_bad_record;
        self.skipped_long += o.skipped_long;
        self.replaced_invalid_utf8 += o.replaced_invalid_utf8;
        self.truncated_bytes += o.truncated_bytes;
        self.truncated_tokens += o.truncated_tokens;
        self.flagged_ood += o.flagged_ood;
    }

    pub fn skipped(&self) -> u64 {
        self.skipped_empty + self.skipped_invalid_utf8 + self.skipped_bad_record + self.skipped_long
    }

    /// One human-readable summary; every kind of change is named, zero or not.
    pub fn summary(&self) -> String {
        format!(
            "read {} records, scored {}; skipped {} (empty {}, invalid UTF-8 {}, bad record {}, too long {}); \
replaced invalid UTF-8 in {}; truncated {} to --max-line-bytes and {} to the model's maximum tokens",
            self.read,
            self.scored,
            self.skipped(),
            self.skipped_empty,
            self.skipped_invalid_utf8,
            self.skipped_bad_record,
            self.skipped_long,
            self.replaced_invalid_utf8,
            self.truncated_bytes,
            self.truncated_tokens
        )
    }
}

/// One text to score.
#[derive(Clone, Debug)]
pub struct Record {
    /// Index into the list of sources.
    pub source: u32,
    /// 1-based line number (CSV: the line the row starts on).
    pub line: u64,
    pub text: String,
}

/// The name standard input is given in the output.
pub const STDIN: &str = "-";

/// Expands inputs into files: directories are walked recursively (sorted by path; names starting
/// with `.` are left out), `-` is standard input. Named pipes and devices given by name (`<(cmd)`,
/// `/dev/stdin`) are read as files. Inside directories, symbolic links to files are followed but
/// links to directories are not (they can lead out of the tree, or around in a loop) unless
/// `follow_dir_links`, which follows them once each (a directory reached twice is an error naming
/// the loop). An input that does not exist is an error.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    expand_inputs_with(inputs, false)
}

/// [`expand_inputs`], choosing whether directory links are followed.
pub fn expand_inputs_with(inputs: &[PathBuf], follow_dir_links: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.as_os_str() == STDIN {
            out.push(p.clone());
            continue;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                let mut seen = std::collections::HashSet::new();
                walk(p, follow_dir_links, &mut seen, &mut out)?
            }
            Ok(_) => out.push(p.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OeError::Data(format!(
                    "{}: no such file or directory",
                    p.display()
                )))
            }
            Err(e) => return Err(OeError::io(p, e)),
        }
    }
    Ok(out)
}

fn walk(
    dir: &Path,
    follow: bool,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).map_err(|e| OeError::io(dir, e))?;
    if !seen.insert((m.dev(), m.ino())) {
        return Err(OeError::Data(format!(
            "{}: a directory link leads back to a directory already read (a loop); remove it or \
             score without following directory links",
            dir.display()
        )));
    }
    let mut entries: Vec<(PathBuf, std::fs::FileType)> = std::fs::read_dir(dir)
        .map_err(|e| OeError::io(dir, e))?
        .map(|e| {
            let e = e.map_err(|e| OeError::io(dir, e))?;
            let ft = e.file_type().map_err(|x| OeError::io(e.path(), x))?;
            Ok((e.path(), ft))
        })
        .collect::<Result<_>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, ft) in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if ft.is_dir() {
            walk(&p, follow, seen, out)?;
        } else if ft.is_symlink() {
            // A dangling link is skipped like any other non-file entry.
            match std::fs::metadata(&p) {
                Ok(t) if t.is_dir() && follow => walk(&p, follow, seen, out)?,
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        } else if ft.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// The format a file is read in.
pub fn resolve_format(path: &Path, requested: InputFormat) -> InputFormat {
    if requested != InputFormat::Auto {
        return requested;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".csv") {
        InputFormat::Csv
    } else if name.ends_with(".jsonl") || name.ends_with(".json") || name.ends_with(".ndjson") {
        InputFormat::Jsonl
    } else {
        InputFormat::Lines
    }
}

/// Opens a source as a buffered byte stream (gzip-decoded when its name ends in `.gz`).
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path.as_os_str() == STDIN {
        return Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            std::io::stdin(),
        )));
    }
    let f = std::fs::File::open(path).map_err(|e| OeError::io(path, e))?;
    let gz = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    if gz {
        let dec = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, f));
        Ok(Box::new(BufReader::with_capacity(1 << 16, dec)))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, f)))
    }
}

/// Reads one line (without `\n` / `\r\n`) into `buf`, keeping at most `max` bytes and discarding
/// the rest of the line. Returns `None` at end of input, else whether bytes were discarded.
pub fn read_line_capped<R: BufRead + ?Sized>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut any = false;
    let mut over = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        any = true;
        let (chunk, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if chunk.len() > room {
            over = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        r.consume(used);
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if !over && buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(over))
}

/// Where records go, and what the reader reports.
pub trait RecordSink {
    fn record(&mut self, r: Record) -> Result<()>;
    fn counts(&mut self) -> &mut Counts;
}

/// Reads every record of one source into `sink`, applying the policies.
pub fn read_source<S: RecordSink + ?Sized>(
    src_idx: u32,
    path: &Path,
    opts: &InputOptions,
    sink: &mut S,
) -> Result<()> {
    let format = if path.as_os_str() == STDIN && opts.format == InputFormat::Auto {
        if opts.column.is_some() {
            return Err(OeError::Config(
                "standard input with --column needs --input-format csv or jsonl".into(),
            ));
        }
        InputFormat::Lines
    } else {
        resolve_format(path, opts.format)
    };
    if format == InputFormat::Lines && opts.column.is_some() && opts.format == InputFormat::Auto {
        return Err(OeError::Config(format!(
            "{}: --column needs a CSV or JSON-lines file (.csv, .jsonl, .json, .ndjson, optionally .gz) or --input-format",
            path.display()
        )));
    }
    let mut reader = open(path)?;
    match format {
        InputFormat::Csv => read_csv(src_idx, path, reader, opts, sink),
        InputFormat::Jsonl | InputFormat::Lines | InputFormat::Auto => read_lines(
            src_idx,
            path,
            &mut *reader,
            format == InputFormat::Jsonl,
            opts,
            sink,
        ),
    }
}

/// Decodes UTF-8 under the policy; `Ok(None)` means skipped.
fn decode(
    path: &Path,
    line: u64,
    bytes: &[u8],
    cut: bool,
    opts: &InputOptions,
    counts: &mut Counts,
) -> Result<Option<String>> {
    // A line cut at the byte cap may end inside a character: drop the incomplete tail.
    let bytes = if cut {
        match std::str::from_utf8(bytes) {
            Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
            _ => bytes,
        }
    } else {
        bytes
    };
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Some(s.to_string())),
        Err(e) => match opts.on_invalid_utf8 {
            OnInvalidUtf8::Fail => Err(OeError::parse(
                path,
                line as usize,
                format!(
                    "invalid UTF-8 at byte {} of the line (--on-invalid-utf8 skip|replace to go on)",
                    e.valid_up_to() + 1
                ),
            )),
            OnInvalidUtf8::Skip => {
                counts.skipped_invalid_utf8 += 1;
                Ok(None)
            }
            OnInvalidUtf8::Replace => {
                counts.replaced_invalid_utf8 += 1;
                Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
            }
        },
    }
}

fn bad_record(
    path: &Path,
    line: u64,
    opts: &InputOptions,
    counts: &mut Counts,
    why: String,
) -> Result<()> {
    match opts.on_bad_record {
        OnBadRecord::Fail => Err(OeError::parse(
            path,
            line as usize,
            format!("{why} (--on-bad-record skip to go on)"),
        )),
        OnBadRecord::Skip => {
            counts.skipped_bad_record += 1;
            Ok(())
        }
    }
}

/// Empty and over-long (in bytes) handling; `Ok(false)`: skipped.
fn accept(
    path: &Path,
    line: u64,
    text: &str,
    cut: bool,
    opts: &InputOptions,
    counts: &mut Counts,
) -> Result<bool> {
    if cut {
        match opts.on_long {
            OnLong::Fail => {
                return Err(OeError::parse(
                    path,
                    line as usize,
                    format!(
                        "longer than --max-line-bytes {} (--on-long truncate|skip to go on)",
                        opts.max_line_bytes
                    ),
                ))
            }
            OnLong::Skip => {
                counts.skipped_long += 1;
                return Ok(false);
            }
            OnLong::Truncate => counts.truncated_bytes += 1,
        }
    }
    if text.trim().is_empty() {
        match opts.on_empty {
            OnEmpty::Skip => {
                counts.skipped_empty += 1;
                return Ok(false);
            }
            OnEmpty::Fail => {
                return Err(OeError::parse(
                    path,
                    line as usize,
                    "empty text (--on-empty skip|score to go on)",
                ))
            }
            OnEmpty::Score => {}
        }
    }
    Ok(true)
}

fn read_lines<S: RecordSink + ?Sized>(
    src: u32,
    path: &Path,
    r: &mut (dyn BufRead + Send),
    jsonl: bool,
    opts: &InputOptions,
    sink: &mut S,
) -> Result<()> {
    let column = opts.column.as_deref().unwrap_or("text");
    let mut buf = Vec::new();
    let mut line = 0u64;
    while let Some(cut) =
        read_line_capped(r, opts.max_line_bytes, &mut buf).map_err(|e| OeError::io(path, e))?
    {
        line += 1;
        sink.counts().read += 1;
        if jsonl {
            if buf.iter().all(|b| b.is_ascii_whitespace()) {
                if accept(path, line, "", false, opts, sink.counts())? {
                    sink.record(Record {
                        source: src,
                        line,
                        text: String::new(),
                    })?;
                }
                continue;
            }
            if cut {
                bad_record(
                    path,
                    line,
                    opts,
                    sink.counts(),
                    format!(
                        "JSON line longer than --max-line-bytes {}",
                        opts.max_line_bytes
                    ),
                )?;
                continue;
            }
            let Some(s) = decode(path, line, &buf, false, opts, sink.counts())? else {
                continue;
            };
            let text = match serde_json::from_str::<serde_json::Value>(&s) {
                Err(e) => {
                    bad_record(
                        path,
                        line,
                        opts,
                        sink.counts(),
                        format!("malformed JSON: {e}"),
                    )?;
                    continue;
                }
                Ok(v) => match v.get(column) {
                    Some(serde_json::Value::String(t)) => t.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    Some(serde_json::Value::Bool(b)) => b.to_string(),
                    Some(_) => {
                        bad_record(
                            path,
                            line,
                            opts,
                            sink.counts(),
                            format!("field `{column}` is not a string, number or boolean"),
                        )?;
                        continue;
                    }
                    None => {
                        let why = if v.is_object() {
                            format!("no field `{column}`")
                        } else {
                            "not a JSON object".to_string()
                        };
                        bad_record(path, line, opts, sink.counts(), why)?;
                        continue;
                    }
                },
            };
            if accept(path, line, &text, false, opts, sink.counts())? {
                sink.record(Record {
                    source: src,
                    line,
                    text,
                })?;
            }
        } else {
            let Some(text) = decode(path, line, &buf, cut, opts, sink.counts())? else {
                continue;
            };
            if accept(path, line, &text, cut, opts, sink.counts())? {
                sink.record(Record {
                    source: src,
                    line,
                    text,
                })?;
            }
        }
    }
    Ok(())
}

fn read_csv<S: RecordSink + ?Sized>(
    src: u32,
    path: &Path,
    r: Box<dyn BufRead + Send>,
    opts: &InputOptions,
    sink: &mut S,
) -> Result<()> {
    let column = opts.column.as_deref().unwrap_or("text");
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(r);
    let headers = rdr
        .byte_headers()
        .map_err(|e| OeError::parse(path, 1, format!("bad CSV header: {e}")))?
        .clone();
    let idx = headers
        .iter()
        .position(|h| String::from_utf8_lossy(h).trim() == column)
        .ok_or_else(|| {
            OeError::parse(
                path,
                1,
                format!(
                    "no column `{column}` in the CSV header (columns: {})",
                    headers
                        .iter()
                        .map(|h| String::from_utf8_lossy(h).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let mut rec = csv::ByteRecord::new();
    loop {
        let more = match rdr.read_byte_record(&mut rec) {
            Ok(m) => m,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(OeError::Data(format!("{}: {e}", path.display())));
                }
                sink.counts().read += 1;
                bad_record(
                    path,
                    line,
                    opts,
                    sink.counts(),
                    format!("unreadable CSV row: {e}"),
                )?;
                continue;
            }
        };
        if !more {
            break;
        }
        let line = rec.position().map_or(0, |p| p.line());
        sink.counts().read += 1;
        let Some(field) = rec.get(idx) else {
            bad_record(
                path,
                line,
                opts,
                sink.counts(),
                format!("row has {} fields and no column `{column}`", rec.len()),
            )?;
            continue;
        };
        let cut = field.len() > opts.max_line_bytes;
        let field = &field[..field.len().min(opts.max_line_bytes)];
        let Some(text) = decode(path, line, field, cut, opts, sink.counts())? else {
            continue;
        };
        if accept(path, line, &text, cut, opts, sink.counts())? {
            sink.record(Record {
                source: src,
                line,
                text,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        recs: Vec<(u64, String)>,
        counts: Counts,
    }
    impl RecordSink for Collect {
        fn record(&mut self, r: Record) -> Result<()> {
            self.recs.push((r.line, r.text));
            Ok(())
        }
        fn counts(&mut self) -> &mut Counts {
            &mut self.counts
        }
    }

    fn read(name: &str, content: &[u8], opts: &InputOptions) -> Result<Collect> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let mut c = Collect::default();
        read_source(0, &p, opts, &mut c)?;
        Ok(c)
    }

    #[test]
    fn capped_lines() {
        let mut r = std::io::Cursor::new(b"abc\r\nabcdefgh\nxy".to_vec());
        let mut buf = Vec::new();
        assert_eq!(read_line_capped(&mut r, 4, &mut buf).unwrap(), Some(false));
        assert_eq!(buf, b"abc");
        assert_eq!(read_line_capped(&mut r, 4, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"abcd");
        assert_eq!(read_line_capped(&mut r, 4, &mut buf).unwrap(), Some(false));
        assert_eq!(buf, b"xy");
        assert_eq!(read_line_capped(&mut r, 4, &mut buf).unwrap(), None);
    }

    #[test]
    fn lines_with_every_policy() {
        let content = b"good one\n\nbad \xff byte\n   \nlast";
        let e = read("a.txt", content, &InputOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("a.txt:3:") && e.contains("UTF-8"), "{e}");
        let skip = InputOptions {
            on_invalid_utf8: OnInvalidUtf8::Skip,
            ..Default::default()
        };
        let c = read("a.txt", content, &skip).unwrap();
        assert_eq!(c.recs, vec![(1, "good one".into()), (5, "last".into())]);
        assert_eq!(
            (
                c.counts.read,
                c.counts.skipped_empty,
                c.counts.skipped_invalid_utf8
            ),
            (5, 2, 1)
        );
        let rep = InputOptions {
            on_invalid_utf8: OnInvalidUtf8::Replace,
            on_empty: OnEmpty::Score,
            ..Default::default()
        };
        let c = read("a.txt", content, &rep).unwrap();
        assert_eq!(c.recs.len(), 5);
        assert_eq!(c.recs[2].1, "bad \u{FFFD} byte");
        assert_eq!(c.counts.replaced_invalid_utf8, 1);
        let fail = InputOptions {
            on_empty: OnEmpty::Fail,
            ..Default::default()
        };
        let e = read("a.txt", content, &fail).err().unwrap().to_string();
        assert!(e.contains("a.txt:2:") && e.contains("empty"), "{e}");
    }

    #[test]
    fn long_lines_by_bytes() {
        let content = "short\nébcdefghij\n".as_bytes();
        let o = InputOptions {
            max_line_bytes: 4,
            ..Default::default()
        };
        let c = read("a.txt", content, &o).unwrap();
        // "é" is 2 bytes: the cut at 4 bytes keeps "ébc"; "short" is cut too.
        assert_eq!(c.recs, vec![(1, "shor".into()), (2, "ébc".into())]);
        assert_eq!(c.counts.truncated_bytes, 2);
        let o = InputOptions {
            max_line_bytes: 5,
            on_long: OnLong::Skip,
            ..Default::default()
        };
        let c = read("a.txt", content, &o).unwrap();
        assert_eq!((c.recs.len(), c.counts.skipped_long), (1, 1));
        let o = InputOptions {
            max_line_bytes: 5,
            on_long: OnLong::Fail,
            ..Default::default()
        };
        let e = read("a.txt", content, &o).err().unwrap().to_string();
        assert!(
            e.contains("a.txt:2:") && e.contains("max-line-bytes"),
            "{e}"
        );
    }

    #[test]
    fn csv_rows_without_the_column() {
        let content = b"id,text\n1,hello\n2\n3,\"multi\nline\"\n";
        let e = read("a.csv", content, &InputOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("a.csv:3:") && e.contains("no column `text`"),
            "{e}"
        );
        let o = InputOptions {
            on_bad_record: OnBadRecord::Skip,
            ..Default::default()
        };
        let c = read("a.csv", content, &o).unwrap();
        assert_eq!(c.recs, vec![(2, "hello".into()), (4, "multi\nline".into())]);
        assert_eq!(c.counts.skipped_bad_record, 1);
        let o = InputOptions {
            column: Some("nope".into()),
            ..Default::default()
        };
        let e = read("a.csv", content, &o).err().unwrap().to_string();
        assert!(e.contains("no column `nope`"), "{e}");
    }

    #[test]
    fn malformed_json() {
        let content =
            b"{\"text\": \"a\"}\n{\"text\": \nnot json\n[1]\n{\"other\": 1}\n{\"text\": 5}\n";
        let e = read("a.jsonl", content, &InputOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("a.jsonl:2:") && e.contains("malformed JSON"),
            "{e}"
        );
        let o = InputOptions {
            on_bad_record: OnBadRecord::Skip,
            ..Default::default()
        };
        let c = read("a.jsonl", content, &o).unwrap();
        assert_eq!(c.recs, vec![(1, "a".into()), (6, "5".into())]);
        assert_eq!(c.counts.skipped_bad_record, 4);
    }

    #[test]
    fn gzip_and_formats() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"text\nx y\n").unwrap();
        let bytes = gz.finish().unwrap();
        let c = read("a.csv.gz", &bytes, &InputOptions::default()).unwrap();
        assert_eq!(c.recs, vec![(2, "x y".into())]);
        assert_eq!(
            resolve_format(Path::new("a.JSONL.gz"), InputFormat::Auto),
            InputFormat::Jsonl
        );
        assert_eq!(
            resolve_format(Path::new("a.txt"), InputFormat::Auto),
            InputFormat::Lines
        );
        let o = InputOptions {
            column: Some("text".into()),
            ..Default::default()
        };
        assert!(read("a.txt", b"x\n", &o).is_err());
    }
}
