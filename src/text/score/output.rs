//! Output of `oe-text score`: TSV (default), CSV, JSON-lines or Parquet, to standard output or to a
//! file written atomically (a temporary file in the same directory, renamed over the final name only
//! when every row is written; an interrupted or failed run leaves nothing under the final name).
//!
//! Columns: `source`, `line`, `score` (anomaly score, higher = more anomalous), `class` (predicted
//! class name), `prob` (its softmax probability), `p_value` (conformal, against the calibration's
//! validation scores, when requested) and, when a decision rule is in force, `is_ood`.

pub use super::parquet::Columns;
use crate::error::{OeError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Output format.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    Tsv,
    Csv,
    Jsonl,
    Parquet,
}

impl OutputFormat {
    /// From an output file name: `.csv`, `.jsonl` / `.json` / `.ndjson`, `.parquet`; else TSV.
    pub fn from_path(p: &Path) -> Self {
        match p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => OutputFormat::Csv,
            Some("jsonl" | "json" | "ndjson") => OutputFormat::Jsonl,
            Some("parquet") => OutputFormat::Parquet,
            _ => OutputFormat::Tsv,
        }
    }
}

/// One output row.
#[derive(Clone, Copy, Debug)]
pub struct OutRow<'a> {
    pub source: &'a str,
    pub line: u64,
    pub score: f32,
    pub class: &'a str,
    pub prob: f32,
    pub is_ood: Option<bool>,
    /// Conformal p-value (`--alpha`, `--fdr`, `--p-values`).
    pub p_value: Option<f64>,
}

/// Where rows go.
pub trait RowWriter {
    fn write(&mut self, row: &OutRow) -> Result<()>;
    /// Flushes everything (and, for a file, makes it appear under its final name).
    fn finish(&mut self) -> Result<()>;
}

/// The byte destination: standard output, or a file written through [`crate::io::OutFile`]
/// (atomically for a regular file, directly into a device or FIFO).
pub enum Dest {
    Stdout(std::io::Stdout),
    Atomic {
        file: Option<crate::io::OutFile>,
        path: PathBuf,
    },
}

impl Dest {
    pub fn stdout() -> Self {
        Dest::Stdout(std::io::stdout())
    }

    /// A temporary file next to `path` (`.oe-tmp-*`), renamed to `path` by [`Dest::commit`]; or
    /// `path` itself when it is a device or FIFO.
    pub fn atomic(path: &Path) -> Result<Self> {
        Ok(Dest::Atomic {
            file: Some(crate::io::OutFile::create(path)?),
            path: path.to_path_buf(),
        })
    }

    fn name(&self) -> PathBuf {
        match self {
            Dest::Stdout(_) => PathBuf::from("<stdout>"),
            Dest::Atomic { path, .. } => path.clone(),
        }
    }

    /// A second handle on the same bytes (for writers that keep their sink).
    pub fn sink(&self) -> Result<Box<dyn Write + Send>> {
        match self {
            Dest::Stdout(_) => Ok(Box::new(std::io::stdout())),
            Dest::Atomic {
                file: Some(f),
                path,
            } => Ok(Box::new(
                f.as_file().try_clone().map_err(|e| OeError::io(path, e))?,
            )),
            Dest::Atomic { file: None, path } => Err(OeError::Data(format!(
                "{}: output already committed",
                path.display()
            ))),
        }
    }

    /// fsync and rename (files); nothing for standard output.
    pub fn commit(&mut self) -> Result<()> {
        if let Dest::Atomic { file, .. } = self {
            if let Some(f) = file.take() {
                f.commit()?;
            }
        }
        Ok(())
    }
}

impl Write for Dest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Dest::Stdout(s) => s.write(buf),
            Dest::Atomic { file: Some(f), .. } => f.write(buf),
            Dest::Atomic { file: None, .. } => {
                Err(std::io::Error::other("output already committed"))
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Dest::Stdout(s) => s.flush(),
            Dest::Atomic { file: Some(f), .. } => f.flush(),
            Dest::Atomic { file: None, .. } => Ok(()),
        }
    }
}

/// TSV / CSV / JSON-lines rows.
pub struct TextRows {
    w: std::io::BufWriter<Dest>,
    format: OutputFormat,
    cols: Columns,
    header_done: bool,
    name: PathBuf,
    line: String,
}

impl TextRows {
    pub fn new(dest: Dest, format: OutputFormat, cols: Columns) -> Self {
        let name = dest.name();
        Self {
            w: std::io::BufWriter::with_capacity(1 << 16, dest),
            format,
            cols,
            header_done: false,
            name,
            line: String::new(),
        }
    }

    fn header(&mut self) -> String {
        let sep = if self.format == OutputFormat::Csv {
            ","
        } else {
            "\t"
        };
        let mut cols = vec!["source", "line", "score", "class", "prob"];
        if self.cols.p_value {
            cols.push("p_value");
        }
        if self.cols.is_ood {
            cols.push("is_ood");
        }
        cols.join(sep) + "\n"
    }
}

fn tsv_field(s: &str, out: &mut String) {
    if s.contains(['\t', '\n', '\r', '\\']) {
        for c in s.chars() {
            match c {
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
    } else {
        out.push_str(s);
    }
}

impl TextRows {
    /// Writes the header once (TSV and CSV; JSON lines have none).
    fn write_header(&mut self) -> Result<()> {
        if !self.header_done && self.format != OutputFormat::Jsonl {
            let h = self.header();
            self.w
                .write_all(h.as_bytes())
                .map_err(|e| OeError::io(&self.name, e))?;
        }
        self.header_done = true;
        Ok(())
    }
}

impl RowWriter for TextRows {
    fn write(&mut self, r: &OutRow) -> Result<()> {
        use std::fmt::Write as _;
        self.write_header()?;
        let l = &mut self.line;
        l.clear();
        match self.format {
            OutputFormat::Jsonl => {
                // Fixed key order; strings escaped by serde_json; non-finite numbers as null.
                let num = |x: f32| {
                    if x.is_finite() {
                        x.to_string()
                    } else {
                        "null".into()
                    }
                };
                let js = |s: &str| serde_json::to_string(s).unwrap_or_default();
                let _ = write!(
                    l,
                    "{{\"source\":{},\"line\":{},\"score\":{},\"class\":{},\"prob\":{}",
                    js(r.source),
                    r.line,
                    num(r.score),
                    js(r.class),
                    num(r.prob)
                );
                if let Some(p) = r.p_value {
                    let _ = write!(l, ",\"p_value\":{p}");
                }
                if let Some(o) = r.is_ood {
                    let _ = write!(l, ",\"is_ood\":{o}");
                }
                l.push('}');
            }
            f => {
                let (sep, field): (char, fn(&str, &mut String)) = if f == OutputFormat::Csv {
                    (',', crate::io::csv_field)
                } else {
                    ('\t', tsv_field)
                };
                field(r.source, l);
                let _ = write!(l, "{sep}{}{sep}{}{sep}", r.line, r.score);
                field(r.class, l);
                let _ = write!(l, "{sep}{}", r.prob);
                if let Some(p) = r.p_value {
                    let _ = write!(l, "{sep}{p}");
                }
                if let Some(o) = r.is_ood {
                    let _ = write!(l, "{sep}{o}");
                }
            }
        }
        l.push('\n');
        self.w
            .write_all(l.as_bytes())
            .map_err(|e| OeError::io(&self.name, e))
    }

    fn finish(&mut self) -> Result<()> {
        self.write_header()?;
        self.w.flush().map_err(|e| OeError::io(&self.name, e))?;
        self.w.get_mut().commit()
    }
}

/// Parquet rows, one row group per `row_group` rows (so memory stays bounded).
pub struct ParquetRows {
    w: Option<crate::text::score::parquet::ScoreParquet<Dest>>,
}

impl ParquetRows {
    pub fn new(dest: Dest, cols: Columns, row_group: usize) -> Result<Self> {
        Ok(Self {
            w: Some(crate::text::score::parquet::ScoreParquet::with_sink(
                dest.sink()?,
                dest,
                cols,
                row_group,
            )?),
        })
    }
}

impl RowWriter for ParquetRows {
    fn write(&mut self, r: &OutRow) -> Result<()> {
        self.w
            .as_mut()
            .ok_or_else(|| OeError::Data("Parquet output already finished".into()))?
            .push(
                r.source, r.line, r.score, r.class, r.prob, r.p_value, r.is_ood,
            )
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(w) = self.w.take() {
            let mut dest = w.finish()?;
            dest.flush().map_err(|e| OeError::io(dest.name(), e))?;
            dest.commit()?;
        }
        Ok(())
    }
}

/// One row kept in memory by [`Collected`].
#[derive(Clone, Debug)]
pub struct OwnedRow {
    pub source: String,
    pub line: u64,
    pub score: f32,
    pub class: String,
    pub prob: f32,
    pub p_value: Option<f64>,
}

impl OwnedRow {
    /// The row to write, with `is_ood` decided afterwards.
    pub fn as_row(&self, is_ood: Option<bool>) -> OutRow<'_> {
        OutRow {
            source: &self.source,
            line: self.line,
            score: self.score,
            class: &self.class,
            prob: self.prob,
            is_ood,
            p_value: self.p_value,
        }
    }
}

/// Keeps every row (for decisions that need all scores first, e.g. Benjamini–Hochberg).
#[derive(Clone, Debug, Default)]
pub struct Collected {
    pub rows: Vec<OwnedRow>,
}

impl RowWriter for Collected {
    fn write(&mut self, r: &OutRow) -> Result<()> {
        self.rows.push(OwnedRow {
            source: r.source.to_string(),
            line: r.line,
            score: r.score,
            class: r.class.to_string(),
            prob: r.prob,
            p_value: r.p_value,
        });
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A writer for `format` to `path` (atomic) or standard output.
pub fn open_writer(
    path: Option<&Path>,
    format: OutputFormat,
    cols: Columns,
) -> Result<Box<dyn RowWriter>> {
    let dest = match path {
        Some(p) if p.as_os_str() != "-" => Dest::atomic(p)?,
        _ => Dest::stdout(),
    };
    Ok(match format {
        OutputFormat::Parquet => Box::new(ParquetRows::new(dest, cols, 65_536)?),
        f => Box::new(TextRows::new(dest, f, cols)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u64) -> OutRow<'static> {
        OutRow {
            source: "a,b\tc.txt",
            line: i,
            score: -0.5,
            class: "pos",
            prob: 0.75,
            is_ood: Some(i.is_multiple_of(2)),
            p_value: None,
        }
    }

    #[test]
    fn text_formats() {
        let dir = tempfile::tempdir().unwrap();
        for (f, want) in [
            (OutputFormat::Tsv, "source\tline\tscore\tclass\tprob\tis_ood\na,b\\tc.txt\t1\t-0.5\tpos\t0.75\tfalse\n"),
            (OutputFormat::Csv, "source,line,score,class,prob,is_ood\n\"a,b\tc.txt\",1,-0.5,pos,0.75,false\n"),
            (
                OutputFormat::Jsonl,
                "{\"source\":\"a,b\\tc.txt\",\"line\":1,\"score\":-0.5,\"class\":\"pos\",\"prob\":0.75,\"is_ood\":false}\n",
            ),
        ] {
            let p = dir.path().join(format!("out-{f:?}"));
            let mut w = open_writer(Some(&p), f, Columns { p_value: false, is_ood: true }).unwrap();
            w.write(&row(1)).unwrap();
            // Nothing under the final name before finish.
            assert!(!p.exists());
            w.finish().unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), want, "{f:?}");
        }
    }

    #[test]
    fn failed_run_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.tsv");
        {
            let mut w = open_writer(Some(&p), OutputFormat::Tsv, Columns::default()).unwrap();
            for i in 0..100_000 {
                w.write(&row(i)).unwrap();
            }
            // dropped without finish: an interrupted run
        }
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn parquet_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.parquet");
        let mut w = open_writer(
            Some(&p),
            OutputFormat::Parquet,
            Columns {
                p_value: false,
                is_ood: true,
            },
        )
        .unwrap();
        for i in 0..70_000 {
            w.write(&row(i)).unwrap();
        }
        w.finish().unwrap();
        let df = crate::text::score::parquet::read_parquet(&p).unwrap();
        assert_eq!(df.height(), 70_000);
        assert_eq!(
            df.get_column_names()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["source", "line", "score", "class", "prob", "is_ood"]
        );
    }
}
