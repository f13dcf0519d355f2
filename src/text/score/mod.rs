//! Batch scoring of text with a trained model directory (`oe-text score`), and deployment thresholds
//! (`oe-text calibrate`, [`calibrate`]).
//!
//! The scorer streams: a reader thread reads records ([`input`]) and tokenises them in parallel
//! (rayon) in chunks, and hands them over a bounded channel to the inference loop, so reading
//! overlaps inference and memory stays bounded whatever the input size. The inference loop
//! ([`Engine`]) batches texts so that **a text's score does not depend on which other texts share
//! its batch**, bit for bit. The CPU GRU scores each row of a packed batch exactly as alone (its
//! inference product is batch-invariant by construction, `oe_kernels::gemm`), so texts of every
//! length share batches with no filler ([`Engine::mixed_lengths`]). Other models group texts by
//! exact token length (no padding between texts) and run each length in batches of at most a fixed
//! number of rows for that length. libtorch's matrix products give a row the
//! same bits for every batch size from some size on (16 rows with MKL on the CPUs we measured;
//! smaller batches take other kernels): [`probe_free_rows`] checks that on the loaded model, on
//! this machine, once per process, and then partial batches are filled with copies only up to that
//! size. Where the probe fails every partial batch is filled to the full fixed shape. Results are written in input order through a reorder
//! buffer of at most [`ScoreOptions::max_pending`] texts: when it is full, the batch holding the
//! oldest text is run early.
//!
//! Text preprocessing is the model's in-distribution preprocessing: lower-casing as the training
//! data (SST cased, everything else lower-cased, or `run.json`'s `text.lowercase`), whitespace
//! tokens looked up in the model's vocabulary, and a cut to the model's maximum number of tokens
//! (20NG's fixed length 100, a transformer's `max_len`, `text.max_tokens`), counted.

pub mod input;
pub mod monitor;
pub mod output;
pub mod parquet;
pub mod shard;

use crate::detect::score::Score;
use crate::error::{OeError, Result};
use crate::text::data::text::lower;
use crate::text::model_dir::{LoadedModel, RunConfig};
use crate::text::models::TextModel;
use crate::text::tokenize::TextEncoder;
use input::{Counts, InputOptions, OnLong, Record, RecordSink};
use output::{OutRow, RowWriter};
use rayon::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Scoring settings (besides input and output).
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    pub score: Score,
    /// Score with this detector stored in the model directory (`detectors/`, fitted or tuned)
    /// instead of the logit score `score`. Each text's detector score is computed from its own
    /// features row by row, so it does not depend on the batch either.
    pub stored: Option<crate::detect::FeatureDetector>,
    /// Flag texts with `score > threshold` as OOD.
    pub threshold: Option<f64>,
    /// Validation scores for a conformal `p_value` column ([`crate::detect::conformal`]).
    pub p_values: Option<crate::detect::conformal::Conformal>,
    /// Flag texts with `p_value <= alpha` as OOD (needs `p_values`; replaces `threshold`).
    pub alpha: Option<f64>,
    /// Rows of a batch of short texts.
    pub max_batch_rows: usize,
    /// Token budget of a batch: a length-L batch has `clamp(budget / L, 8, max_batch_rows)` rows.
    pub batch_tokens: usize,
    /// Largest reorder buffer (texts read but not yet written).
    pub max_pending: usize,
    /// Texts per chunk handed from the reader thread to the inference loop.
    pub chunk: usize,
    /// Score only this shard's records ([`shard::Shard::owns`]), skipping its first `skip_owned`
    /// (done before a resume), and compute the digest of the whole input.
    pub shard: Option<shard::ShardSel>,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            score: Score::Msp,
            stored: None,
            threshold: None,
            p_values: None,
            alpha: None,
            max_batch_rows: 256,
            batch_tokens: 8192,
            max_pending: 65_536,
            chunk: 2048,
            shard: None,
        }
    }
}

/// How texts become token ids for a model: its in-distribution preprocessing.
#[derive(Clone, Debug)]
pub struct Preprocess {
    pub lowercase: bool,
    /// The model's maximum number of tokens (longer texts are cut, counted, or follow `--on-long`).
    pub max_tokens: Option<usize>,
    /// Every input padded / cut to exactly this many tokens (20NG: 100).
    pub fix_len: Option<usize>,
}

impl Preprocess {
    pub fn of(cfg: &RunConfig) -> Self {
        // The data layer's defaults: SST cased, every other dataset lower-cased.
        let default_lower = !matches!(
            cfg.header.in_dataset.as_str(),
            "sst" | "sst-fine" | "sst-phrases" | "sst-fine-phrases"
        );
        // Every text is cut somewhere: at the model's own limit, or for models without one (the
        // GRU) at the longest training text (one 4 MB line must not cost gigabytes).
        let longest = cfg.model.max_len().is_none().then(|| {
            cfg.max_train_tokens
                .unwrap_or(crate::text::model_dir::DEFAULT_MAX_SCORE_TOKENS)
                .max(1)
        });
        let max_tokens = [
            cfg.in_fix_len,
            cfg.model.max_len(),
            cfg.text.max_tokens,
            longest,
        ]
        .into_iter()
        .flatten()
        .min();
        Self {
            lowercase: cfg.text.lowercase.unwrap_or(default_lower),
            max_tokens,
            fix_len: cfg.in_fix_len,
        }
    }

    /// Token ids, and whether the text was longer than the model's maximum.
    pub fn encode(&self, vocab: &TextEncoder, text: &str) -> (Vec<i64>, bool) {
        let (mut ids, mut long) = if self.lowercase {
            vocab.encode_checked(&lower(text))
        } else {
            vocab.encode_checked(text)
        };
        if let Some(m) = self.max_tokens {
            long |= ids.len() > m;
            vocab.truncate(&mut ids, m);
        }
        (ids, long)
    }
}

/// One scored text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Anomaly score (higher = more anomalous), computed in float32.
    pub score: f32,
    /// Predicted class index.
    pub class: u32,
    /// Its softmax probability.
    pub prob: f32,
}

/// Each of the first `n` rows' score, predicted class and its probability: `logits` `[≥ n, C]`
/// float32, `scores` `[≥ n]`.
fn scored_rows(logits: &Tensor, scores: &Tensor, n: i64) -> Vec<Scored> {
    let (prob, class) = logits.softmax(-1, Kind::Float).max_dim(-1, false);
    let cpu = |t: &Tensor| t.narrow(0, 0, n).to_device(Device::Cpu).contiguous();
    let scores = Vec::<f32>::try_from(&cpu(scores)).expect("float scores");
    let classes = Vec::<i64>::try_from(&cpu(&class)).expect("int64 classes");
    let probs = Vec::<f32>::try_from(&cpu(&prob)).expect("float probabilities");
    scores
        .into_iter()
        .zip(classes)
        .zip(probs)
        .map(|((score, class), prob)| Scored {
            score,
            class: class as u32,
            prob,
        })
        .collect()
}

struct Slot {
    source: u32,
    line: u64,
    key: usize,
    out: Option<Scored>,
}

/// Length-bucketed, order-preserving batched inference.
pub struct Engine<'m> {
    model: &'m TextModel,
    device: Device,
    score: Score,
    /// A stored detector, its fitted state, the feature sources it reads and the head.
    stored: Option<StoredScorer<'m>>,
    fix_len: Option<usize>,
    max_batch_rows: usize,
    batch_tokens: usize,
    max_pending: usize,
    /// From which batch size results no longer depend on it ([`probe_free_rows`]); `None`: fill
    /// every batch to its fixed shape.
    free_rows: Option<FreeRows>,
    /// Texts of every length share batches, with no filler rows: the model scores each row of a
    /// batch exactly as alone ([`TextModel::scores_rows_alone`]; then `buckets` has one key, 0).
    pub mixed_lengths: bool,
    /// Tokens queued in the shared bucket (with `mixed_lengths`).
    mixed_tokens: usize,
    buckets: HashMap<usize, Vec<(u64, Vec<i64>)>>,
    ring: VecDeque<Slot>,
    /// Sequence number of `ring[0]`.
    base: u64,
    /// Batches run and rows computed (including filler rows).
    pub batches: u64,
    pub rows_computed: u64,
    /// With a reduced precision: the first texts scored again in float32 ([`PrecisionCheck`]).
    pub precision_check: Option<PrecisionCheck>,
    /// The batch the GRU computes on its threads while the caller goes on ([`Engine::settle`]).
    inflight: Option<InFlight>,
}

/// A batch being computed on the fused GRU's threads: its texts' sequence numbers and where its
/// features and logits arrive.
struct InFlight {
    seqs: Vec<u64>,
    rx: std::sync::mpsc::Receiver<(Tensor, Tensor)>,
}

/// How far a reduced [`crate::device::Precision`] moves results: the first
/// [`PrecisionCheck::LIMIT`] texts of a run are scored again in float32 and compared.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PrecisionCheck {
    pub precision: crate::device::Precision,
    /// Texts compared.
    pub texts: u64,
    /// Largest and mean |score − float32 score|.
    pub max_abs_score_diff: f64,
    pub mean_abs_score_diff: f64,
    /// Largest |probability − float32 probability| of the predicted class.
    pub max_abs_prob_diff: f64,
    /// Texts whose predicted class differs from float32's.
    pub class_changes: u64,
    #[serde(skip)]
    sum_abs_score_diff: f64,
}

impl PrecisionCheck {
    /// Texts scored both ways.
    pub const LIMIT: u64 = 2048;

    fn add(&mut self, got: &[Scored], want: &[Scored]) {
        for (g, w) in got.iter().zip(want) {
            let d = (g.score as f64 - w.score as f64).abs();
            // NaN (a score that is not finite either way) counts as the largest move.
            self.max_abs_score_diff = if d.is_nan() {
                f64::INFINITY
            } else {
                self.max_abs_score_diff.max(d)
            };
            self.sum_abs_score_diff += if d.is_nan() { 0.0 } else { d };
            self.max_abs_prob_diff = self
                .max_abs_prob_diff
                .max((g.prob as f64 - w.prob as f64).abs());
            self.class_changes += u64::from(g.class != w.class);
            self.texts += 1;
        }
        self.mean_abs_score_diff = self.sum_abs_score_diff / self.texts.max(1) as f64;
    }

    /// One line for the summary.
    pub fn render(&self) -> String {
        format!(
            "precision {}: the first {} texts scored again in float32: scores moved by at most {:.2e} \
             (mean {:.2e}), the predicted class's probability by at most {:.2e}, predicted class \
             changed for {} of {}",
            self.precision.name(),
            self.texts,
            self.max_abs_score_diff,
            self.mean_abs_score_diff,
            self.max_abs_prob_diff,
            self.class_changes,
            self.texts
        )
    }
}

/// What [`Engine`] needs to score with a stored detector.
struct StoredScorer<'m> {
    detector: crate::detect::FeatureDetector,
    fitted: &'m crate::detect::feature::FeatureDetectors,
    /// Penultimate first, then the detector's own source when different.
    sources: Vec<crate::detect::FeatureSource>,
    head: (Tensor, Tensor),
}

/// Checks that `opts.stored` (when set) is fitted in `m`, with a message saying how to fit it.
pub fn check_stored(m: &LoadedModel, opts: &ScoreOptions) -> Result<()> {
    match opts.stored {
        Some(d) if !m.detectors.as_ref().is_some_and(|x| x.has(d)) => {
            Err(OeError::Config(format!(
            "{}: no fitted {} detector in detectors/ (`oe-text eval --model DIR --score {}` or \
             `oe-text tune --model DIR` fits it)",
            m.dir.display(),
            d.name(),
            d.name()
        )))
        }
        _ => Ok(()),
    }
}

impl<'m> Engine<'m> {
    /// An engine for `m` under `opts` (a stored detector must be fitted: [`check_stored`]).
    pub fn new(m: &'m LoadedModel, opts: &ScoreOptions) -> Self {
        let max_batch_rows = opts.max_batch_rows.max(1);
        let stored = match (opts.stored, m.detectors.as_ref()) {
            (Some(detector), Some(fitted)) if fitted.has(detector) => {
                let mut sources = vec![crate::detect::FeatureSource::Penultimate];
                let own = fitted.settings.source(detector);
                if !sources.contains(&own) {
                    sources.push(own);
                }
                Some(StoredScorer {
                    detector,
                    fitted,
                    sources,
                    head: m.model.head(),
                })
            }
            _ => None,
        };
        let mixed = mixes_lengths(m);
        Self {
            model: &m.model,
            device: m.vs.device(),
            score: opts.score,
            stored,
            fix_len: m.config.in_fix_len,
            max_batch_rows,
            batch_tokens: opts.batch_tokens.max(1),
            max_pending: opts.max_pending.max(1),
            free_rows: if mixed {
                None
            } else {
                free_rows(m, max_batch_rows)
            },
            mixed_lengths: mixed,
            mixed_tokens: 0,
            buckets: HashMap::new(),
            ring: VecDeque::new(),
            base: 0,
            batches: 0,
            rows_computed: 0,
            precision_check: None,
            inflight: None,
        }
    }

    /// With a reduced precision, scores the first [`PrecisionCheck::LIMIT`] texts again in float32
    /// and compares ([`Engine::precision_check`]; `score` does, the service does not).
    pub fn check_precision(&mut self) {
        let p = self.model.precision();
        self.precision_check = (!p.is_default()).then(|| PrecisionCheck {
            precision: p,
            ..Default::default()
        });
    }

    /// Whether batches are still being scored twice ([`PrecisionCheck`]).
    fn checking(&self) -> bool {
        self.precision_check
            .as_ref()
            .is_some_and(|c| c.texts < PrecisionCheck::LIMIT)
    }

    /// Waits for the batch in flight, if any, and records its results.
    pub fn settle(&mut self) {
        let Some(f) = self.inflight.take() else {
            return;
        };
        // A job only fails by panicking (a bug): carry the panic here.
        let (_, logits) =
            f.rx.recv()
                .expect("the GRU's batch job panicked (see the message above)");
        let out = tch::no_grad(|| {
            let logits = logits.to_kind(Kind::Float);
            let scores = self.score.compute(&logits);
            scored_rows(&logits, &scores, f.seqs.len() as i64)
        });
        self.fill(&f.seqs, &out);
    }

    /// Records the results of the texts `seqs` (sequence numbers, in batch order).
    fn fill(&mut self, seqs: &[u64], out: &[Scored]) {
        for (seq, &o) in seqs.iter().zip(out) {
            self.ring[(seq - self.base) as usize].out = Some(o);
        }
    }

    /// Rows of every batch of texts of `key` tokens (a function of the length only).
    pub fn rows_for(&self, key: usize) -> usize {
        (self.batch_tokens / key.max(1)).clamp(8.min(self.max_batch_rows), self.max_batch_rows)
    }

    /// Token budget of a shared-length batch: the fixed-length budget per worker thread of the
    /// fused GRU, which splits the batch between them.
    fn mixed_budget(&self) -> usize {
        self.batch_tokens * crate::text::models::gru_cpu::workers()
    }

    /// Texts read and not yet handed out.
    pub fn pending(&self) -> usize {
        self.ring.len()
    }

    /// Queues one text; runs its length's batch when full, and the oldest text's batch when the
    /// reorder buffer is full.
    pub fn push(&mut self, source: u32, line: u64, ids: Vec<i64>) {
        let key = if self.mixed_lengths {
            0
        } else {
            self.fix_len.unwrap_or(ids.len())
        };
        let seq = self.base + self.ring.len() as u64;
        self.ring.push_back(Slot {
            source,
            line,
            key,
            out: None,
        });
        let b = self.buckets.entry(key).or_default();
        let len = ids.len().max(1);
        b.push((seq, ids));
        let full = b.len() >= self.rows_for(key);
        if self.mixed_lengths {
            self.mixed_tokens += len;
        }
        if full || self.mixed_tokens >= self.mixed_budget() {
            self.run(key, true);
        }
        while self.ring.len() > self.max_pending {
            match self.ring.front() {
                Some(s) if s.out.is_none() => {
                    let k = s.key;
                    self.run(k, true);
                }
                _ => break,
            }
        }
    }

    /// Runs one batch (at most `rows_for(key)` texts) of the bucket `key`. With `overlap`, a batch
    /// the GRU's threads can compute is left in flight while this thread goes on ([`Engine::settle`];
    /// [`Engine::flush`] has nothing to overlap with).
    fn run(&mut self, key: usize, overlap: bool) {
        let rows = self.rows_for(key);
        let budget = self.mixed_budget();
        let Some(bucket) = self.buckets.get_mut(&key).filter(|b| !b.is_empty()) else {
            // Nothing queued: the texts waited for may be in the batch in flight.
            self.settle();
            return;
        };
        let take = if self.mixed_lengths {
            // Up to the row limit and the token budget (at least one text).
            let mut tokens = 0;
            let n = bucket
                .iter()
                .take(rows)
                .take_while(|(_, ids)| {
                    tokens += ids.len().max(1);
                    tokens <= budget
                })
                .count();
            n.max(1)
        } else {
            bucket.len().min(rows)
        };
        let items: Vec<(u64, Vec<i64>)> = bucket.drain(..take).collect();
        if self.mixed_lengths {
            let t: usize = items.iter().map(|(_, ids)| ids.len().max(1)).sum();
            self.mixed_tokens = self.mixed_tokens.saturating_sub(t);
        }
        let mut seqs: Vec<&[i64]> = items.iter().map(|(_, ids)| ids.as_slice()).collect();
        // Fill to the fixed shape, or to the size from which results do not depend on the batch
        // size: a text's result never depends on the batch's other rows.
        let rows = match self.free_rows.map(|f| f.rows_for(key)) {
            _ if self.mixed_lengths => take,
            Some(f) if f < rows => take.max(f),
            _ => rows,
        };
        while seqs.len() < rows {
            seqs.push(seqs[0]);
        }
        // Texts of every length with a logit score: the GRU computes this batch on its threads
        // while this thread records the previous one (the same operations as below, so the same
        // bits).
        if overlap && self.mixed_lengths && self.stored.is_none() && !self.checking() {
            if let Some(rx) = self
                .model
                .outputs_alone_job(&seqs)
                .and_then(crate::text::models::gru_cpu::spawn)
            {
                // This batch has started; record the previous one meanwhile.
                self.settle();
                self.inflight = Some(InFlight {
                    seqs: items.iter().map(|(s, _)| *s).collect(),
                    rx,
                });
                self.batches += 1;
                self.rows_computed += rows as u64;
                return;
            }
        }
        self.settle();
        let compute = || {
            tch::no_grad(|| {
                let outputs = |sources: &[crate::detect::FeatureSource]| {
                    let alone = self
                        .mixed_lengths
                        .then(|| self.model.outputs_alone(&seqs, sources))
                        .flatten();
                    let batch = |seqs: &[&[i64]]| {
                        let b = crate::text::models::TokenBatch::left_padded(
                            seqs,
                            self.fix_len,
                            self.device,
                        );
                        self.model.outputs(&b, sources)
                    };
                    alone.unwrap_or_else(|| {
                        if !self.mixed_lengths {
                            return batch(&seqs);
                        }
                        // Not reached (a model that mixes lengths scores them alone), but never pad
                        // texts of other lengths together: one batch per text.
                        let (f, l): (Vec<Tensor>, Vec<Tensor>) =
                            seqs.iter().map(|s| batch(&[s])).unzip();
                        (Tensor::cat(&f, 0), Tensor::cat(&l, 0))
                    })
                };
                let n = take as i64;
                let (logits, scores) = match &self.stored {
                    None => {
                        let logits = outputs(&[crate::detect::FeatureSource::Penultimate])
                            .1
                            .to_kind(Kind::Float);
                        let scores = self.score.compute(&logits);
                        (logits, scores)
                    }
                    Some(st) => {
                        let (f, logits) = outputs(&st.sources);
                        let logits = logits.to_kind(Kind::Float);
                        let d = f.size()[1] / st.sources.len() as i64;
                        let own_i = st
                            .sources
                            .iter()
                            .position(|s| *s == st.fitted.settings.source(st.detector))
                            .unwrap_or(0) as i64;
                        let (w, bias) = (&st.head.0, &st.head.1);
                        // One row at a time: the same kernels whatever the batch holds.
                        let rows: Vec<Tensor> = (0..n)
                            .map(|i| {
                                let fi = f.narrow(0, i, 1);
                                let pen = fi.narrow(1, 0, d);
                                let own = fi.narrow(1, own_i * d, d);
                                st.fitted
                                    .score(
                                        st.detector,
                                        &own,
                                        &pen,
                                        &logits.narrow(0, i, 1),
                                        (w, bias),
                                    )
                                    .unwrap_or_else(|_| {
                                        Tensor::full([1], f64::NAN, (Kind::Float, pen.device()))
                                    })
                            })
                            .collect();
                        let scores = Tensor::cat(&rows, 0).to_kind(Kind::Float);
                        (logits.narrow(0, 0, n), scores)
                    }
                };
                scored_rows(&logits, &scores, n)
            })
        };
        let out = compute();
        self.batches += 1;
        self.rows_computed += rows as u64;
        if let Some(check) = self
            .precision_check
            .as_mut()
            .filter(|c| c.texts < PrecisionCheck::LIMIT)
        {
            // The same batch in float32 (batch-invariant either way: the comparison is per text).
            let reduced = self.model.precision();
            let back = self.model.set_precision(crate::device::Precision::Float32);
            if back.is_ok() {
                let want = compute();
                let _ = self.model.set_precision(reduced);
                let k = ((PrecisionCheck::LIMIT - check.texts) as usize).min(out.len());
                check.add(&out[..k], &want[..k]);
            }
        }
        let seqs: Vec<u64> = items.iter().map(|(s, _)| *s).collect();
        self.fill(&seqs, &out);
    }

    /// Runs every queued text (at the end of the input).
    pub fn flush(&mut self) {
        let mut keys: Vec<usize> = self.buckets.keys().copied().collect();
        keys.sort_unstable();
        // Nothing follows these batches to overlap with: run them here (a service's lone batch
        // then costs no hand-over to another thread).
        self.settle();
        for k in keys {
            while self.buckets.get(&k).is_some_and(|b| !b.is_empty()) {
                self.run(k, false);
            }
        }
    }

    /// Hands out finished texts in input order: `(source, line, result)`.
    pub fn drain(&mut self, mut f: impl FnMut(u32, u64, Scored) -> Result<()>) -> Result<()> {
        while let Some(Slot { out: Some(_), .. }) = self.ring.front() {
            let s = self.ring.pop_front().expect("front exists");
            self.base += 1;
            f(s.source, s.line, s.out.expect("finished"))?;
        }
        Ok(())
    }
}

/// From which batch size a model's results do not depend on it: `rows` rows, or (`per_token`)
/// enough rows for `rows` tokens (`ceil(rows / length)`, at least 1), for models whose matrix
/// products run over every token of the batch at once (transformers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FreeRows {
    pub rows: usize,
    pub per_token: bool,
}

impl FreeRows {
    /// The smallest batch for texts of `len` tokens.
    pub fn rows_for(&self, len: usize) -> usize {
        if self.per_token {
            self.rows.div_ceil(len.max(1)).max(1)
        } else {
            self.rows
        }
    }
}

impl std::fmt::Display for FreeRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.per_token {
            write!(f, "{} tokens", self.rows)
        } else {
            write!(f, "{} rows", self.rows)
        }
    }
}

/// Whether `m` scores texts of every length in shared batches ([`Engine::mixed_lengths`]): a model
/// whose rows are scored exactly as alone, without a fixed length (with one, every text has it).
fn mixes_lengths(m: &LoadedModel) -> bool {
    m.config.in_fix_len.is_none() && m.model.scores_rows_alone()
}

/// Runs the batch-size check ([`probe_free_rows`]) for `opts` and makes what the model computes
/// once for inference ([`TextModel::prepare_inference`]) now (a service does it before it reports
/// ready, so that no request pays for it) and returns the check's result.
pub fn prepare(m: &LoadedModel, opts: &ScoreOptions) -> Option<FreeRows> {
    m.model.prepare_inference();
    if mixes_lengths(m) {
        return None;
    }
    free_rows(m, opts.max_batch_rows.max(1))
}

/// [`probe_free_rows`] for `m` up to `max_rows`, cached in the model.
fn free_rows(m: &LoadedModel, max_rows: usize) -> Option<FreeRows> {
    let mut g = match m.row_probe.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some((r, f)) = *g {
        if r >= max_rows {
            return f;
        }
    }
    let f = probe_free_rows(
        &m.model,
        m.vs.device(),
        m.config.in_fix_len,
        m.vocab.len(),
        max_rows,
    );
    *g = Some((max_rows, f));
    f
}

/// The smallest [`FreeRows`] (16 tokens for transformers, else 16, 32 or 64 rows) such that, on
/// this machine and this model, every row of a batch of `r` rows gets the same logits bit for bit
/// for every `r` from it to `max_rows` tried (f, f + 1, f + 5, 2f + 3, the midpoint, max_rows - 1,
/// max_rows), at a few lengths (random token ids, seeded). `None` when no candidate passes: then
/// batches keep their fixed shapes.
pub fn probe_free_rows(
    model: &TextModel,
    device: Device,
    fix_len: Option<usize>,
    vocab_len: usize,
    max_rows: usize,
) -> Option<FreeRows> {
    use rand::{Rng, SeedableRng};
    let recurrent = matches!(model, TextModel::Gru(_));
    let lengths: Vec<usize> = match fix_len {
        Some(f) => vec![f],
        None if recurrent => vec![1, 7, 33],
        // Lengths whose threshold batch is exactly 16 tokens (1 and 16) as well as more: MKL's
        // kernels change at small row counts, at other counts on other CPUs (AMD's EPYC here
        // gave a 16-token lone text other bits than in a larger batch).
        None => vec![1, 3, 9, 16],
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x0e5c_0e5c);
    let hi = vocab_len.max(3) as i64;
    let batches: Vec<Vec<Vec<i64>>> = lengths
        .iter()
        .map(|&l| {
            (0..max_rows)
                .map(|_| (0..l).map(|_| rng.gen_range(2..hi)).collect())
                .collect()
        })
        .collect();
    let logits = |seqs: &[Vec<i64>]| {
        let refs: Vec<&[i64]> = seqs.iter().map(Vec::as_slice).collect();
        tch::no_grad(|| {
            let b = crate::text::models::TokenBatch::left_padded(&refs, fix_len, device);
            model
                .logits(&b, false)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
        })
    };
    let full: Vec<Tensor> = batches.iter().map(|b| logits(b)).collect();
    let mut candidates = Vec::new();
    if !recurrent {
        candidates.extend([16usize, 32, 64].map(|rows| FreeRows {
            rows,
            per_token: true,
        }));
    }
    if recurrent {
        // The CPU GRU's products are batch-invariant: no filler at all.
        candidates.push(FreeRows {
            rows: 1,
            per_token: false,
        });
    }
    candidates.extend([16usize, 32, 64].map(|rows| FreeRows {
        rows,
        per_token: false,
    }));
    'candidate: for c in candidates {
        for ((b, whole), &len) in batches.iter().zip(&full).zip(&lengths) {
            let f = c.rows_for(len);
            if f >= max_rows {
                continue 'candidate;
            }
            let mut sizes = vec![f, f + 1, f + 5, 2 * f + 3, (f + max_rows) / 2, max_rows - 1];
            sizes.retain(|&r| r >= f && r < max_rows);
            sizes.dedup();
            for &r in &sizes {
                let part = logits(&b[..r]);
                if !part.equal(&whole.narrow(0, 0, r as i64)) {
                    continue 'candidate;
                }
            }
        }
        return Some(c);
    }
    None
}

/// Scores in-memory texts through exactly the path `oe-text score` uses (same preprocessing, same
/// batch shapes, so the same float32 scores). Over-long texts are cut.
pub fn score_texts(m: &LoadedModel, texts: &[String], opts: &ScoreOptions) -> Result<Vec<Scored>> {
    check_stored(m, opts)?;
    let pre = Preprocess::of(&m.config);
    let mut eng = Engine::new(m, opts);
    let mut out = Vec::with_capacity(texts.len());
    let vocab = &m.vocab;
    for chunk in texts.chunks(opts.chunk.max(1)) {
        // Small batches (the service's) are tokenised here: waking the thread pool costs more.
        let ids: Vec<Vec<i64>> = if chunk.len() < 256 {
            chunk.iter().map(|t| pre.encode(vocab, t).0).collect()
        } else {
            chunk.par_iter().map(|t| pre.encode(vocab, t).0).collect()
        };
        for ids in ids {
            eng.push(0, 0, ids);
        }
        eng.drain(|_, _, s| {
            out.push(s);
            Ok(())
        })?;
    }
    eng.flush();
    eng.drain(|_, _, s| {
        out.push(s);
        Ok(())
    })?;
    if let Some(i) = out.iter().position(|s| !s.score.is_finite()) {
        return Err(non_finite(
            &format!("text #{}", i + 1),
            out[i].score,
            Some(&texts[i]),
        ));
    }
    Ok(out)
}

/// A non-finite anomaly score is an error, never an in-distribution verdict: it means the model's
/// logits are not finite (a damaged model directory, or weights trained to overflow).
fn non_finite(which: &str, score: f32, text: Option<&str>) -> OeError {
    let t = text
        .map(|t| format!("; text: {:?}", t.chars().take(80).collect::<String>()))
        .unwrap_or_default();
    OeError::Data(format!(
        "{which}: the anomaly score is {score} (the model's logits are not finite; is the model \
         directory damaged?){t}"
    ))
}

/// A tokenised record on its way to inference.
struct Encoded {
    source: u32,
    line: u64,
    ids: Vec<i64>,
}

enum Msg {
    Chunk(Vec<Encoded>),
}

/// The reader thread's sink: collects records into chunks, tokenises them in parallel, applies the
/// token-length policy and sends them on.
struct ChunkSink<'a> {
    buf: Vec<Record>,
    shard: Option<shard::ShardSel>,
    /// Records seen (all shards').
    seq: u64,
    /// This shard's records seen, those skipped on a resume included.
    owned: u64,
    digest: Option<shard::InputDigest>,
    /// Stopped on a stop request ([`crate::interrupt`]).
    stopped: bool,
    chunk: usize,
    counts: Counts,
    tx: mpsc::SyncSender<Msg>,
    pre: &'a Preprocess,
    vocab: &'a TextEncoder,
    on_long: OnLong,
    sources: &'a [PathBuf],
}

impl ChunkSink<'_> {
    fn send(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let recs = std::mem::take(&mut self.buf);
        let (pre, vocab) = (self.pre, self.vocab);
        let enc: Vec<(Encoded, bool)> = recs
            .into_par_iter()
            .map(|r| {
                let (ids, long) = pre.encode(vocab, &r.text);
                (
                    Encoded {
                        source: r.source,
                        line: r.line,
                        ids,
                    },
                    long,
                )
            })
            .collect();
        let mut out = Vec::with_capacity(enc.len());
        for (e, long) in enc {
            if long {
                match self.on_long {
                    OnLong::Truncate => self.counts.truncated_tokens += 1,
                    OnLong::Skip => {
                        self.counts.skipped_long += 1;
                        continue;
                    }
                    OnLong::Fail => {
                        return Err(OeError::parse(
                            &self.sources[e.source as usize],
                            e.line as usize,
                            format!(
                                "longer than the model's maximum of {} tokens (--on-long truncate|skip to go on)",
                                self.pre.max_tokens.unwrap_or(0)
                            ),
                        ))
                    }
                }
            }
            out.push(e);
        }
        self.tx
            .send(Msg::Chunk(out))
            .map_err(|_| OeError::Data("scoring stopped".into()))
    }
}

impl RecordSink for ChunkSink<'_> {
    fn record(&mut self, r: Record) -> Result<()> {
        if crate::interrupt::requested() {
            self.stopped = true;
            self.send()?;
            return Err(OeError::Interrupted("scoring stopped".into()));
        }
        if let Some(d) = &mut self.digest {
            d.update(&r);
        }
        let seq = self.seq;
        self.seq += 1;
        if let Some(sel) = &self.shard {
            if !sel.shard.owns(seq) {
                return Ok(());
            }
            self.owned += 1;
            if self.owned <= sel.skip_owned {
                return Ok(());
            }
        }
        self.buf.push(r);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(())
    }
    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }
}

/// What a scoring run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScoreSummary {
    pub counts: Counts,
    pub sources: usize,
    pub seconds: f64,
    pub lines_per_second: f64,
    pub batches: u64,
    /// Rows computed, filler rows of partial batches included.
    pub rows_computed: u64,
    /// Batch size from which results were checked not to depend on it ([`probe_free_rows`]);
    /// `None`: partial batches were filled to their fixed shapes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_rows: Option<FreeRows>,
    /// Texts of every length shared batches ([`Engine::mixed_lengths`]): no filler rows at all.
    pub mixed_lengths: bool,
    pub threshold: Option<f64>,
    /// The decision rule when it is not a score threshold (`p_value <= 0.05`, ...).
    pub decision: Option<String>,
    /// Set when a stop request ended the run early: rows were written (not finished) for this many
    /// of the shard's records (of all records without a shard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_after: Option<u64>,
    /// With a shard: this shard's records (those skipped on a resume included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owned: Option<u64>,
    /// With a shard: the digest of every record of the input ([`shard::InputDigest`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_digest: Option<String>,
    /// With a reduced precision: how far it moved the first texts' results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_check: Option<PrecisionCheck>,
}

impl ScoreSummary {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}\n{} sources, {:.2} s, {:.0} lines/s, {} batches ({:.1}% filler rows; {})",
            self.counts.summary(),
            self.sources,
            self.seconds,
            self.lines_per_second,
            self.batches,
            100.0 * (self.rows_computed.saturating_sub(self.counts.scored)) as f64
                / self.rows_computed.max(1) as f64,
            match self.free_rows {
                _ if self.mixed_lengths =>
                    "texts of every length share batches, each scored as alone".to_string(),
                Some(f) => format!("partial batches filled to {f}"),
                None => "partial batches filled to their fixed shapes".to_string(),
            }
        );
        let rule = match (&self.decision, self.threshold) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(t)) => Some(format!("score > {}", crate::io::compact_number(t))),
            (None, None) => None,
        };
        if let Some(rule) = rule {
            s += &format!(
                "\nflagged OOD ({rule}): {} of {} ({:.2}%)",
                self.counts.flagged_ood,
                self.counts.scored,
                100.0 * self.counts.flagged_ood as f64 / self.counts.scored.max(1) as f64
            );
        }
        if let Some(c) = &self.precision_check {
            s += &format!("\n{}", c.render());
        }
        s
    }
}

/// Scores every record of `inputs` (already expanded into files, `-` = standard input) and writes one
/// row per scored record, in input order, to `writer` (only the records of `opts.shard` with one).
/// On a stop request ([`crate::interrupt`]) reading stops, every record read is scored and written,
/// `writer` is **not** finished, and the summary's `stopped_after` says how far it got.
pub fn score_stream(
    m: &LoadedModel,
    inputs: &[PathBuf],
    in_opts: &InputOptions,
    opts: &ScoreOptions,
    writer: &mut dyn RowWriter,
) -> Result<ScoreSummary> {
    let t0 = Instant::now();
    let pre = Preprocess::of(&m.config);
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let labels = m.labels.names();
    let mut eng = Engine::new(m, opts);
    eng.check_precision();
    let mut flagged = 0u64;
    let mut scored = 0u64;
    let threshold = opts.threshold;
    let conformal = opts.p_values.as_ref();
    if opts.alpha.is_some() && conformal.is_none() {
        return Err(OeError::Config(
            "flagging by p-value needs the validation scores of a calibration".into(),
        ));
    }
    let (tx, rx) = mpsc::sync_channel::<Msg>(4);
    let vocab = &m.vocab;
    let pre_ref = &pre;
    let shard_sel = opts.shard;
    let result: Result<(Counts, ReadEnd)> = std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<(Counts, ReadEnd)> {
            let mut sink = ChunkSink {
                buf: Vec::new(),
                shard: shard_sel,
                seq: 0,
                owned: 0,
                digest: shard_sel.map(|_| shard::InputDigest::new()),
                stopped: false,
                chunk: opts.chunk.max(1),
                counts: Counts::default(),
                tx,
                pre: pre_ref,
                vocab,
                on_long: in_opts.on_long,
                sources: inputs,
            };
            let mut read_all = || -> Result<()> {
                for (i, p) in inputs.iter().enumerate() {
                    input::read_source(i as u32, p, in_opts, &mut sink)?;
                }
                sink.send()
            };
            match read_all() {
                Err(OeError::Interrupted(_)) if sink.stopped => {}
                r => r?,
            }
            let end = ReadEnd {
                seen: if shard_sel.is_some() {
                    sink.owned
                } else {
                    sink.seq
                },
                stopped: sink.stopped,
                digest: sink.digest.take().map(|d| d.finish()),
            };
            Ok((sink.counts, end))
        });
        let mut write = |src: u32, line: u64, s: Scored| -> Result<()> {
            if !s.score.is_finite() {
                return Err(non_finite(
                    &format!("{} line {line}", names[src as usize]),
                    s.score,
                    None,
                ));
            }
            let p_value = conformal.map(|c| c.p_value(f64::from(s.score)));
            let is_ood = match (opts.alpha, p_value) {
                (Some(a), Some(p)) => Some(p <= a),
                _ => threshold.map(|t| f64::from(s.score) > t),
            };
            if is_ood == Some(true) {
                flagged += 1;
            }
            scored += 1;
            writer.write(&OutRow {
                source: &names[src as usize],
                line,
                score: s.score,
                class: &labels[s.class as usize],
                prob: s.prob,
                is_ood,
                p_value,
            })
        };
        let mut main = || -> Result<()> {
            for msg in rx.iter() {
                let Msg::Chunk(chunk) = msg;
                for e in chunk {
                    eng.push(e.source, e.line, e.ids);
                }
                eng.drain(&mut write)?;
            }
            Ok(())
        };
        let main_result = main();
        // On an error here the reader stops at its next send (the receiver is gone).
        drop(rx);
        let counts = reader
            .join()
            .map_err(|_| OeError::Data("the reader thread panicked".into()))?;
        main_result?;
        let counts = counts?;
        eng.flush();
        eng.drain(&mut write)?;
        Ok(counts)
    });
    let (mut counts, end) = result?;
    if !end.stopped {
        writer.finish()?;
    }
    counts.scored = scored;
    counts.flagged_ood = flagged;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(ScoreSummary {
        lines_per_second: counts.read as f64 / seconds.max(1e-9),
        counts,
        sources: inputs.len(),
        seconds,
        batches: eng.batches,
        rows_computed: eng.rows_computed,
        free_rows: eng.free_rows,
        mixed_lengths: eng.mixed_lengths,
        threshold,
        decision: opts.alpha.map(|a| format!("p_value <= {a}")),
        stopped_after: end.stopped.then_some(end.seen),
        owned: shard_sel.map(|_| end.seen),
        input_digest: end.digest,
        precision_check: eng.precision_check.clone(),
    })
}

/// How reading ended.
struct ReadEnd {
    /// Records seen (with a shard: the shard's, those skipped on a resume included).
    seen: u64,
    stopped: bool,
    digest: Option<String>,
}
