//! Streaming Parquet output of `oe-text score`: rows are buffered up to one row group and written
//! with polars' batched writer, so memory stays bounded whatever the number of rows.

use crate::error::{OeError, Result};
use polars::io::parquet::write::BatchedWriter as ParquetBatched;
use polars::prelude::*;
use std::io::Write;
use std::path::Path;

fn pe<E: std::fmt::Display>(e: E) -> OeError {
    OeError::Data(format!("Parquet score output: {e}"))
}

/// Columns `source` (string), `line` (u64), `score` (f64, the float32 score widened exactly),
/// `class` (string), `prob` (f64) and, when requested, `p_value` (f64) and `is_ood` (bool).
pub struct ScoreParquet<D> {
    writer: ParquetBatched<Box<dyn Write + Send>>,
    /// Kept so that the caller gets it back (to commit an atomic file) from [`ScoreParquet::finish`].
    dest: D,
    cols: Columns,
    row_group: usize,
    source: Vec<String>,
    line: Vec<u64>,
    score: Vec<f64>,
    class: Vec<String>,
    prob: Vec<f64>,
    p_value: Vec<f64>,
    is_ood: Vec<bool>,
}

/// The optional columns of an output: `p_value`, then `is_ood`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    pub p_value: bool,
    pub is_ood: bool,
}

fn schema(cols: Columns) -> Schema {
    let mut fields = vec![
        Field::new("source".into(), DataType::String),
        Field::new("line".into(), DataType::UInt64),
        Field::new("score".into(), DataType::Float64),
        Field::new("class".into(), DataType::String),
        Field::new("prob".into(), DataType::Float64),
    ];
    if cols.p_value {
        fields.push(Field::new("p_value".into(), DataType::Float64));
    }
    if cols.is_ood {
        fields.push(Field::new("is_ood".into(), DataType::Boolean));
    }
    Schema::from_iter(fields)
}

impl<D> ScoreParquet<D> {
    /// `sink` receives the bytes; `dest` is handed back by [`ScoreParquet::finish`].
    pub fn with_sink(
        sink: Box<dyn Write + Send>,
        dest: D,
        cols: Columns,
        row_group: usize,
    ) -> Result<Self> {
        let row_group = row_group.max(1);
        let writer = ParquetWriter::new(sink)
            .with_row_group_size(Some(row_group))
            .batched(&schema(cols))
            .map_err(pe)?;
        Ok(Self {
            writer,
            dest,
            cols,
            row_group,
            source: Vec::new(),
            line: Vec::new(),
            score: Vec::new(),
            class: Vec::new(),
            prob: Vec::new(),
            p_value: Vec::new(),
            is_ood: Vec::new(),
        })
    }

    /// Appends one row: source, line, score, class, probability, p-value, OOD flag.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        source: &str,
        line: u64,
        score: f32,
        class: &str,
        prob: f32,
        p_value: Option<f64>,
        is_ood: Option<bool>,
    ) -> Result<()> {
        self.source.push(source.to_string());
        self.line.push(line);
        self.score.push(f64::from(score));
        self.class.push(class.to_string());
        self.prob.push(f64::from(prob));
        if self.cols.p_value {
            self.p_value.push(p_value.unwrap_or(1.0));
        }
        if self.cols.is_ood {
            self.is_ood.push(is_ood.unwrap_or(false));
        }
        if self.line.len() >= self.row_group {
            self.write_group()?;
        }
        Ok(())
    }

    fn write_group(&mut self) -> Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let mut cols = vec![
            Column::new("source".into(), std::mem::take(&mut self.source)),
            Column::new("line".into(), std::mem::take(&mut self.line)),
            Column::new("score".into(), std::mem::take(&mut self.score)),
            Column::new("class".into(), std::mem::take(&mut self.class)),
            Column::new("prob".into(), std::mem::take(&mut self.prob)),
        ];
        if self.cols.p_value {
            cols.push(Column::new(
                "p_value".into(),
                std::mem::take(&mut self.p_value),
            ));
        }
        if self.cols.is_ood {
            cols.push(Column::new(
                "is_ood".into(),
                std::mem::take(&mut self.is_ood),
            ));
        }
        let df = DataFrame::new_infer_height(cols).map_err(pe)?;
        self.writer.write_batch(&df).map_err(pe)
    }

    /// Writes the last row group and the footer; returns the destination.
    pub fn finish(mut self) -> Result<D> {
        self.write_group()?;
        self.writer.finish().map_err(pe)?;
        Ok(self.dest)
    }
}

/// Reads a Parquet file (tests and tools).
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| OeError::io(path, e))?;
    ParquetReader::new(f)
        .finish()
        .map_err(|e| OeError::Data(format!("{}: unreadable Parquet file: {e}", path.display())))
}
