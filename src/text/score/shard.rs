//! Sharded scoring: `oe-text score --shard I/N` scores a deterministic 1/N of the input and writes
//! a *part*; `oe-text merge` checks that all N parts are present and agree, and writes the output
//! exactly as one unsharded `oe-text score` would, byte for byte (TSV, CSV, JSON lines, Parquet).
//!
//! - **Which records**: the input's records (after the reading policies: empty lines left out,
//!   ...) are numbered in input order across all files; record `s` belongs to shard
//!   `(s / BLOCK) mod N`. Blocks of [`BLOCK`] consecutive records go round-robin, so shards are
//!   balanced whether the input is one big file or many small ones, and every shard reads the whole
//!   input (reading is cheap next to inference) but tokenises and scores only its own records.
//! - **Parts** live in `OUTPUT.parts/`: `part-III-of-NNN.rows` (one line per scored record: source
//!   index, line, the float32 score and probability as bit patterns, class index, the p-value's bit
//!   pattern; so nothing is lost to decimal printing) and `part-III-of-NNN.json`, the completion
//!   record ([`PartRecord`]: record counts, the model's sha256, the digest of the whole input, the
//!   settings). The record is written last, atomically: a part without one is unfinished.
//! - **Decisions** (`is_ood` by threshold, `--alpha`, or Benjamini–Hochberg over all texts with
//!   `--fdr`) are made by the merge, over the merged rows, as the unsharded run makes them.
//! - **Preemption**: on a stop request the shard writes every row it has, records how far it got
//!   (`part-III-of-NNN.progress.json`) and returns [`OeError::Interrupted`]; the same command
//!   resumes from there (the rows file is cut to the recorded length, the shard's first records are
//!   skipped). A finished part is not scored again; a failed one leaves `part-III-of-NNN.failed.json`
//!   with the error, for `oe-text merge --status`.

use super::input::{Counts, Record};
use super::output::{open_writer, Columns, OutRow, OutputFormat, RowWriter};
use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

/// Consecutive records that go to the same shard.
pub const BLOCK: u64 = 1024;

/// Shard `index` of `count` (0-based: `--shard 0/4` .. `--shard 3/4`, as Slurm array task ids,
/// Kubernetes' `JOB_COMPLETION_INDEX` and `$(Process)` in HTCondor count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether record number `seq` (0-based, in input order) is this shard's.
    pub fn owns(&self, seq: u64) -> bool {
        (seq / BLOCK) % self.count as u64 == self.index as u64
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("--shard takes I/N with 0 <= I < N (e.g. 0/4), got `{s}`");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A shard to score, and how many of its records a resumed run skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSel {
    pub shard: Shard,
    pub skip_owned: u64,
}

/// SHA-256 over every record of the input, in order: source index (u32), line (u64) and text
/// length (u64), little-endian, then the text's bytes. Two runs that read the same records from
/// the same list of sources get the same digest.
pub struct InputDigest(Sha256);

impl InputDigest {
    pub fn new() -> Self {
        InputDigest(Sha256::new())
    }
    pub fn update(&mut self, r: &Record) {
        self.0.update(r.source.to_le_bytes());
        self.0.update(r.line.to_le_bytes());
        self.0.update((r.text.len() as u64).to_le_bytes());
        self.0.update(r.text.as_bytes());
    }
    pub fn finish(self) -> String {
        crate::io::hex(&self.0.finalize())
    }
}

impl Default for InputDigest {
    fn default() -> Self {
        Self::new()
    }
}

/// What a part was computed with; the merge requires all parts to agree on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartSettings {
    pub score: String,
    /// `is_ood = score > threshold` (when no p-value rule is given).
    pub threshold: Option<f64>,
    pub alpha: Option<f64>,
    pub fdr: Option<f64>,
    /// The output has a p_value column.
    pub p_values: bool,
    /// The output has an is_ood column.
    pub is_ood: bool,
    pub format: OutputFormat,
    /// The reading policies (`InputOptions`), which decide what a record is.
    pub input: serde_json::Value,
    /// sha256 of the calibration file behind the p-values, when used.
    pub calibration_sha256: Option<String>,
    /// The arithmetic of the model's products (absent in parts of float32 runs).
    #[serde(default, skip_serializing_if = "crate::device::Precision::is_default")]
    pub precision: crate::device::Precision,
}

/// The completion record of a part (`part-III-of-NNN.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartRecord {
    pub shard: Shard,
    /// The model directory and the sha256 of its weights and vocabulary.
    pub model_dir: PathBuf,
    pub model_sha256: String,
    /// [`InputDigest`] of the whole input (every shard reads all of it).
    pub input_digest: String,
    /// The sources, in order (row source indices point into this).
    pub sources: Vec<String>,
    /// Class names (row class indices point into this).
    pub labels: Vec<String>,
    pub settings: PartSettings,
    /// Records of the whole input, and this shard's.
    pub records: u64,
    pub owned: u64,
    /// Rows in the rows file, and its length in bytes.
    pub rows: u64,
    pub bytes: u64,
    /// Reading counts of the whole input (skipped empty lines, ...) and this shard's token cuts.
    pub counts: Counts,
    pub host: String,
    pub finished: String,
}

/// How far an interrupted part got (`part-III-of-NNN.progress.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartProgress {
    pub shard: Shard,
    pub model_sha256: String,
    pub settings: PartSettings,
    /// The shard's records done (their rows are in the rows file).
    pub owned_done: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Token cuts and skips of this shard's records so far.
    #[serde(default)]
    pub truncated_tokens: u64,
    #[serde(default)]
    pub skipped_long: u64,
    pub stopped: String,
}

/// A part that failed (`part-III-of-NNN.failed.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartFailure {
    pub shard: Shard,
    pub error: String,
    pub host: String,
    pub time: String,
}

/// The files of one part.
#[derive(Clone, Debug)]
pub struct PartPaths {
    pub rows: PathBuf,
    pub partial: PathBuf,
    pub record: PathBuf,
    pub progress: PathBuf,
    pub failed: PathBuf,
    pub lock: PathBuf,
}

/// `OUTPUT.parts/`.
pub fn parts_dir(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".parts");
    PathBuf::from(s)
}

/// The files of `shard` for `output`.
pub fn part_paths(output: &Path, shard: Shard) -> PartPaths {
    let dir = parts_dir(output);
    let w = shard.count.to_string().len().max(3);
    let stem = format!("part-{:0w$}-of-{:0w$}", shard.index, shard.count, w = w);
    let f = |ext: &str| dir.join(format!("{stem}{ext}"));
    PartPaths {
        rows: f(".rows"),
        partial: f(".rows.partial"),
        record: f(".json"),
        progress: f(".progress.json"),
        failed: f(".failed.json"),
        lock: f(".lock"),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    match std::fs::read(p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| OeError::parse(p, e.line(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OeError::io(p, e)),
    }
}

/// Writes rows of a part: `src \t line \t score bits \t class \t prob bits \t p bits|-`.
pub struct PartRows {
    w: BufWriter<std::fs::File>,
    path: PathBuf,
    sources: HashMap<String, u32>,
    labels: HashMap<String, u32>,
    pub rows: u64,
    pub bytes: u64,
}

impl PartRows {
    /// Appends to `path`, which holds `rows` rows in `bytes` bytes (cut to that length first).
    pub fn open(
        path: &Path,
        sources: &[String],
        labels: &[String],
        rows: u64,
        bytes: u64,
    ) -> Result<Self> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| OeError::io(path, e))?;
        let len = f.metadata().map_err(|e| OeError::io(path, e))?.len();
        if len < bytes {
            return Err(OeError::Data(format!(
                "{}: {len} bytes, but its progress record says {bytes}; delete the part's files to score the shard again",
                path.display()
            )));
        }
        f.set_len(bytes).map_err(|e| OeError::io(path, e))?;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| OeError::io(path, e))?;
        let index = |v: &[String]| -> HashMap<String, u32> {
            v.iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i as u32))
                .collect()
        };
        Ok(PartRows {
            w: BufWriter::new(f),
            path: path.to_path_buf(),
            sources: index(sources),
            labels: index(labels),
            rows,
            bytes,
        })
    }

    /// Flushes and syncs what was written.
    pub fn sync(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| OeError::io(&self.path, e))?;
        self.w
            .get_ref()
            .sync_all()
            .map_err(|e| OeError::io(&self.path, e))
    }
}

impl RowWriter for PartRows {
    fn write(&mut self, r: &OutRow) -> Result<()> {
        let src = self
            .sources
            .get(r.source)
            .copied()
            .ok_or_else(|| OeError::Data(format!("part rows: unknown source {}", r.source)))?;
        let class = self
            .labels
            .get(r.class)
            .copied()
            .ok_or_else(|| OeError::Data(format!("part rows: unknown class {}", r.class)))?;
        let p = match r.p_value {
            Some(p) => format!("{:016x}", p.to_bits()),
            None => "-".into(),
        };
        let line = format!(
            "{src}\t{}\t{:08x}\t{class}\t{:08x}\t{p}\n",
            r.line,
            r.score.to_bits(),
            r.prob.to_bits()
        );
        self.w
            .write_all(line.as_bytes())
            .map_err(|e| OeError::io(&self.path, e))?;
        self.rows += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        self.sync()
    }
}

/// One row read back from a part.
#[derive(Clone, Debug, PartialEq)]
struct PartRow {
    src: u32,
    line: u64,
    score: f32,
    class: u32,
    prob: f32,
    p_value: Option<f64>,
}

fn parse_row(path: &Path, n: usize, s: &str) -> Result<PartRow> {
    let bad = |what: &str| OeError::parse(path, n, format!("part row: bad {what}"));
    let mut f = s.split('\t');
    let mut next = |what: &str| f.next().ok_or_else(|| bad(what));
    let src = next("source")?.parse().map_err(|_| bad("source"))?;
    let line = next("line")?.parse().map_err(|_| bad("line"))?;
    let score = f32::from_bits(u32::from_str_radix(next("score")?, 16).map_err(|_| bad("score"))?);
    let class = next("class")?.parse().map_err(|_| bad("class"))?;
    let prob = f32::from_bits(u32::from_str_radix(next("prob")?, 16).map_err(|_| bad("prob"))?);
    let p = next("p_value")?;
    let p_value = if p == "-" {
        None
    } else {
        Some(f64::from_bits(
            u64::from_str_radix(p, 16).map_err(|_| bad("p_value"))?,
        ))
    };
    Ok(PartRow {
        src,
        line,
        score,
        class,
        prob,
        p_value,
    })
}

/// Reads a part's rows in order.
struct PartReader {
    lines: std::io::Lines<BufReader<std::fs::File>>,
    path: PathBuf,
    n: usize,
}

impl PartReader {
    fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| OeError::io(path, e))?;
        Ok(PartReader {
            lines: BufReader::new(f).lines(),
            path: path.to_path_buf(),
            n: 0,
        })
    }
    fn next_row(&mut self) -> Result<Option<PartRow>> {
        match self.lines.next() {
            None => Ok(None),
            Some(l) => {
                self.n += 1;
                let l = l.map_err(|e| OeError::io(&self.path, e))?;
                parse_row(&self.path, self.n, &l).map(Some)
            }
        }
    }
}

/// The state of one part, for `oe-text merge --status` and merge errors.
#[derive(Clone, Debug, PartialEq)]
pub enum PartState {
    Done { rows: u64 },
    Running { owner: String },
    Interrupted { owned_done: u64 },
    Failed { error: String },
    Missing,
}

impl std::fmt::Display for PartState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartState::Done { rows } => write!(f, "done ({rows} rows)"),
            PartState::Running { owner } => write!(f, "running ({owner})"),
            PartState::Interrupted { owned_done } => {
                write!(f, "interrupted after {owned_done} records (resumable)")
            }
            PartState::Failed { error } => write!(f, "failed: {error}"),
            PartState::Missing => write!(f, "not started"),
        }
    }
}

/// The state of every part of `output` in `count` shards.
pub fn part_states(output: &Path, count: usize) -> Result<Vec<PartState>> {
    (0..count)
        .map(|index| {
            let p = part_paths(output, Shard { index, count });
            if p.record.exists() && p.rows.exists() {
                let r: Option<PartRecord> = read_json(&p.record)?;
                return Ok(PartState::Done {
                    rows: r.map_or(0, |r| r.rows),
                });
            }
            if let Some(o) = crate::rundir::read_lock(&p.lock)?.filter(|o| !o.is_stale()) {
                return Ok(PartState::Running {
                    owner: format!("pid {} on {}", o.pid, o.host),
                });
            }
            if let Some(f) = read_json::<PartFailure>(&p.failed)? {
                return Ok(PartState::Failed { error: f.error });
            }
            if let Some(g) = read_json::<PartProgress>(&p.progress)? {
                return Ok(PartState::Interrupted {
                    owned_done: g.owned_done,
                });
            }
            Ok(PartState::Missing)
        })
        .collect()
}

/// The number of shards of the parts found for `output` (from their file names).
pub fn detect_count(output: &Path) -> Result<usize> {
    let dir = parts_dir(output);
    let rd = std::fs::read_dir(&dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            OeError::Data(format!(
                "{}: no parts (score with `--shard I/N -o {}` first)",
                dir.display(),
                output.display()
            ))
        } else {
            OeError::io(&dir, e)
        }
    })?;
    let mut counts = std::collections::BTreeSet::new();
    for e in rd {
        let e = e.map_err(|e| OeError::io(&dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("part-") {
            if let Some((_, n)) = rest.split_once("-of-") {
                let digits: String = n.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(n) = digits.parse::<usize>() {
                    counts.insert(n);
                }
            }
        }
    }
    match counts.len() {
        1 => Ok(*counts.iter().next().unwrap_or(&1)),
        0 => Err(OeError::Data(format!("{}: no parts", dir.display()))),
        _ => Err(OeError::Data(format!(
            "{}: parts of different shard counts ({:?}); pass --shards N",
            dir.display(),
            counts
        ))),
    }
}

/// What a scoring shard does before it scores: nothing left (already finished), or where to start.
pub enum PartStart {
    Finished(PartRecord),
    /// Start (or continue) after `progress.owned_done` records.
    Start(PartProgress),
}

/// Where `shard` of `output` starts with `model_sha256` and `settings`: a finished part with the
/// same model and settings is kept; an interrupted one continues; anything else starts over.
pub fn part_start(
    output: &Path,
    shard: Shard,
    model_sha256: &str,
    settings: &PartSettings,
) -> Result<PartStart> {
    let p = part_paths(output, shard);
    if let Some(r) = read_json::<PartRecord>(&p.record)? {
        if r.model_sha256 == model_sha256 && &r.settings == settings && p.rows.exists() {
            return Ok(PartStart::Finished(r));
        }
    }
    if let Some(g) = read_json::<PartProgress>(&p.progress)? {
        if g.model_sha256 == model_sha256 && &g.settings == settings && p.partial.exists() {
            return Ok(PartStart::Start(g));
        }
    }
    Ok(PartStart::Start(PartProgress {
        shard,
        model_sha256: model_sha256.to_string(),
        settings: settings.clone(),
        owned_done: 0,
        rows: 0,
        bytes: 0,
        truncated_tokens: 0,
        skipped_long: 0,
        stopped: String::new(),
    }))
}

/// Writes the progress record of an interrupted part.
pub fn write_progress(output: &Path, g: &PartProgress) -> Result<()> {
    crate::rundir::write_json(&part_paths(output, g.shard).progress, g)
}

/// Ends a part: the rows file under its final name, then the completion record; the progress and
/// failure records go.
pub fn complete_part(output: &Path, r: &PartRecord) -> Result<()> {
    let p = part_paths(output, r.shard);
    std::fs::rename(&p.partial, &p.rows).map_err(|e| OeError::io(&p.rows, e))?;
    crate::rundir::write_json(&p.record, r)?;
    let _ = std::fs::remove_file(&p.progress);
    let _ = std::fs::remove_file(&p.failed);
    Ok(())
}

/// Records that a part failed.
pub fn write_failure(output: &Path, shard: Shard, error: &str) -> Result<()> {
    let p = part_paths(output, shard);
    crate::rundir::write_json(
        &p.failed,
        &PartFailure {
            shard,
            error: error.to_string(),
            host: crate::rundir::hostname(),
            time: crate::io::utc_time(crate::io::unix_now()),
        },
    )
}

/// `oe-text merge`.
#[derive(Clone, Debug)]
pub struct MergeRequest {
    /// The final output (the parts are in `OUTPUT.parts/`).
    pub output: PathBuf,
    /// Number of shards (default: from the part file names).
    pub shards: Option<usize>,
    /// Only report the parts' states.
    pub status_only: bool,
    /// Remove the parts after a successful merge.
    pub remove_parts: bool,
}

/// What a merge did (or, with `status_only`, found).
#[derive(Clone, Debug)]
pub struct MergeOutcome {
    pub shards: usize,
    pub states: Vec<PartState>,
    pub rows: u64,
    pub flagged_ood: Option<u64>,
    pub decision: Option<String>,
    pub counts: Option<Counts>,
    pub output: Option<PathBuf>,
}

impl MergeOutcome {
    /// One line per part.
    pub fn render_states(&self) -> String {
        self.states
            .iter()
            .enumerate()
            .map(|(i, s)| format!("part {i}/{}: {s}\n", self.shards))
            .collect()
    }
}

/// Merges the parts of `req.output` (all must be finished and agree on model, input and settings)
/// into the output, in input order, with the decisions of an unsharded run.
pub fn run_merge(req: &MergeRequest) -> Result<MergeOutcome> {
    let n = match req.shards {
        Some(n) if n > 0 => n,
        Some(_) => return Err(OeError::Config("--shards must be positive".into())),
        None => detect_count(&req.output)?,
    };
    let states = part_states(&req.output, n)?;
    let mut out = MergeOutcome {
        shards: n,
        states: states.clone(),
        rows: 0,
        flagged_ood: None,
        decision: None,
        counts: None,
        output: None,
    };
    if req.status_only {
        return Ok(out);
    }
    let not_done: Vec<String> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| !matches!(s, PartState::Done { .. }))
        .map(|(i, s)| format!("part {i}/{n}: {s}"))
        .collect();
    if !not_done.is_empty() {
        return Err(OeError::Data(format!(
            "{}: {} of {n} parts are not finished, nothing merged:\n  {}",
            parts_dir(&req.output).display(),
            not_done.len(),
            not_done.join("\n  ")
        )));
    }
    let mut records = Vec::with_capacity(n);
    for index in 0..n {
        let p = part_paths(&req.output, Shard { index, count: n });
        let r: PartRecord = read_json(&p.record)?
            .ok_or_else(|| OeError::Data(format!("{}: missing", p.record.display())))?;
        let len = std::fs::metadata(&p.rows)
            .map_err(|e| OeError::io(&p.rows, e))?
            .len();
        if len != r.bytes || r.shard != (Shard { index, count: n }) {
            return Err(OeError::Data(format!(
                "{}: {len} bytes for shard {}, but its record says {} bytes for shard {}: the part is damaged; score that shard again",
                p.rows.display(),
                Shard { index, count: n },
                r.bytes,
                r.shard
            )));
        }
        records.push(r);
    }
    let first = &records[0];
    for r in &records[1..] {
        let differs = |what: &str| {
            OeError::Data(format!(
                "parts 0/{n} and {} were computed with different {what}; score every shard with the same command",
                r.shard
            ))
        };
        if r.model_sha256 != first.model_sha256 {
            return Err(differs("models"));
        }
        if r.input_digest != first.input_digest
            || r.sources != first.sources
            || r.records != first.records
        {
            return Err(differs("inputs"));
        }
        if r.settings != first.settings {
            return Err(differs("settings"));
        }
        if r.labels != first.labels {
            return Err(differs("class lists"));
        }
    }
    let total: u64 = records.iter().map(|r| r.rows).sum();
    let set = &first.settings;
    let paths: Vec<PathBuf> = (0..n)
        .map(|index| part_paths(&req.output, Shard { index, count: n }).rows)
        .collect();
    // Benjamini–Hochberg needs every p-value first: one pass to collect them in merged order.
    let fdr_flags = match set.fdr {
        Some(q) => {
            let mut p = Vec::with_capacity(total as usize);
            merge_rows(&paths, |r| {
                p.push(r.p_value.unwrap_or(1.0));
                Ok(())
            })?;
            Some(crate::detect::conformal::benjamini_hochberg(&p, q))
        }
        None => None,
    };
    let cols = Columns {
        p_value: set.p_values,
        is_ood: set.is_ood,
    };
    let mut writer = open_writer(Some(&req.output), set.format, cols)?;
    let (mut i, mut flagged) = (0usize, 0u64);
    merge_rows(&paths, |r| {
        let src = first.sources.get(r.src as usize).ok_or_else(|| {
            OeError::Data(format!("part row: source index {} out of range", r.src))
        })?;
        let class = first.labels.get(r.class as usize).ok_or_else(|| {
            OeError::Data(format!("part row: class index {} out of range", r.class))
        })?;
        let is_ood = match (&fdr_flags, set.alpha, r.p_value) {
            (Some(f), _, _) => f.get(i).copied(),
            (None, Some(a), Some(p)) => Some(p <= a),
            _ => set.threshold.map(|t| f64::from(r.score) > t),
        };
        if is_ood == Some(true) {
            flagged += 1;
        }
        i += 1;
        writer.write(&OutRow {
            source: src,
            line: r.line,
            score: r.score,
            class,
            prob: r.prob,
            is_ood,
            p_value: r.p_value,
        })
    })?;
    if i as u64 != total {
        return Err(OeError::Data(format!(
            "parts hold {i} rows but their records say {total}"
        )));
    }
    writer.finish()?;
    let mut counts = first.counts.clone();
    counts.truncated_tokens = records.iter().map(|r| r.counts.truncated_tokens).sum();
    counts.skipped_long = records.iter().map(|r| r.counts.skipped_long).sum();
    counts.scored = total;
    counts.flagged_ood = flagged;
    if req.remove_parts {
        let _ = std::fs::remove_dir_all(parts_dir(&req.output));
    }
    out.rows = total;
    out.flagged_ood = set.is_ood.then_some(flagged);
    out.decision = match (set.fdr, set.alpha, set.threshold) {
        (Some(q), _, _) => Some(format!("Benjamini-Hochberg, FDR <= {q}")),
        (None, Some(a), _) => Some(format!("p_value <= {a}")),
        (None, None, Some(t)) => Some(format!("score > {}", crate::io::compact_number(t))),
        _ => None,
    };
    out.counts = Some(counts);
    out.output = Some(req.output.clone());
    Ok(out)
}

/// Calls `f` on the rows of all parts in input order (source index, then line: the order an
/// unsharded run writes).
fn merge_rows(paths: &[PathBuf], mut f: impl FnMut(&PartRow) -> Result<()>) -> Result<()> {
    let mut readers: Vec<PartReader> = paths
        .iter()
        .map(|p| PartReader::open(p))
        .collect::<Result<_>>()?;
    let mut heads: Vec<Option<PartRow>> = Vec::with_capacity(readers.len());
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        let h = r.next_row()?;
        if let Some(row) = &h {
            heap.push(std::cmp::Reverse((row.src, row.line, i)));
        }
        heads.push(h);
    }
    let mut last: Option<(u32, u64)> = None;
    while let Some(std::cmp::Reverse((src, line, i))) = heap.pop() {
        if last.is_some_and(|l| l >= (src, line)) {
            return Err(OeError::Data(format!(
                "{}: rows out of order or repeated at source {src} line {line}",
                paths[i].display()
            )));
        }
        last = Some((src, line));
        let row = heads[i]
            .take()
            .ok_or_else(|| OeError::Data("merge: lost a row".into()))?;
        f(&row)?;
        let next = readers[i].next_row()?;
        if let Some(r) = &next {
            heap.push(std::cmp::Reverse((r.src, r.line, i)));
        }
        heads[i] = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_blocks_round_robin() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        for bad in ["4/4", "1", "a/2", "0/0", "-1/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let s = |i| Shard { index: i, count: 3 };
        // Every record belongs to exactly one shard, in blocks of BLOCK.
        for seq in 0..10 * BLOCK {
            let owners: Vec<usize> = (0..3).filter(|&i| s(i).owns(seq)).collect();
            assert_eq!(owners, vec![((seq / BLOCK) % 3) as usize]);
        }
        assert!(s(0).owns(BLOCK - 1) && s(1).owns(BLOCK) && s(0).owns(3 * BLOCK));
    }

    #[test]
    fn rows_round_trip_bit_for_bit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.rows");
        let sources = vec!["a.txt".to_string(), "b\tc.txt".to_string()];
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let mut w = PartRows::open(&p, &sources, &labels, 0, 0).unwrap();
        let rows = [
            (
                1u32,
                7u64,
                -0.0f32,
                1u32,
                f32::MIN_POSITIVE,
                Some(1.0 / 3.0),
            ),
            (0, 2, 0.1, 0, 1.0, None),
        ];
        for &(s, l, sc, c, pr, pv) in &rows {
            w.write(&OutRow {
                source: &sources[s as usize],
                line: l,
                score: sc,
                class: &labels[c as usize],
                prob: pr,
                is_ood: None,
                p_value: pv,
            })
            .unwrap();
        }
        w.finish().unwrap();
        let mut r = PartReader::open(&p).unwrap();
        for &(s, l, sc, c, pr, pv) in &rows {
            let got = r.next_row().unwrap().unwrap();
            assert_eq!((got.src, got.line, got.class), (s, l, c));
            assert_eq!(got.score.to_bits(), sc.to_bits());
            assert_eq!(got.prob.to_bits(), pr.to_bits());
            assert_eq!(got.p_value.map(f64::to_bits), pv.map(f64::to_bits));
        }
        assert!(r.next_row().unwrap().is_none());
        // Reopened for a resume at the first row: the second is cut off.
        let first_len = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .len()
            + 1;
        let w = PartRows::open(&p, &sources, &labels, 1, first_len as u64).unwrap();
        drop(w);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), first_len as u64);
        // A progress record longer than the file is refused.
        let e = PartRows::open(&p, &sources, &labels, 5, 10_000)
            .err()
            .unwrap();
        assert!(e.to_string().contains("delete the part"), "{e}");
    }

    #[test]
    fn merge_interleaves_in_input_order_and_refuses_disorder() {
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, lines: &[(u32, u64)]| {
            let p = d.path().join(name);
            let s: String = lines
                .iter()
                .map(|(s, l)| format!("{s}\t{l}\t3f800000\t0\t3f800000\t-\n"))
                .collect();
            std::fs::write(&p, s).unwrap();
            p
        };
        let a = write("a", &[(0, 1), (0, 5), (1, 1)]);
        let b = write("b", &[(0, 2), (1, 3)]);
        let mut got = vec![];
        merge_rows(&[a.clone(), b], |r| {
            got.push((r.src, r.line));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [(0, 1), (0, 2), (0, 5), (1, 1), (1, 3)]);
        let c = write("c", &[(0, 1)]);
        let e = merge_rows(&[a, c], |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("out of order or repeated"), "{e}");
    }
}
