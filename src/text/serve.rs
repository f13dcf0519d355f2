//! `oe-text serve`: an HTTP scoring service for one model directory (axum on tokio).
//!
//! API (JSON, versioned under `/v1`):
//! - `POST /v1/score` with `{"texts": ["...", ...], "score": "msp"}` (`score` optional: any logit
//!   score, or a feature detector stored in the model directory, also as `"detector"`; default the
//!   service's `--score`) returns `{"score", "threshold", "results": [{"score", "class", "prob",
//!   "is_ood", "p_value"}, ...]}`, one result per text in order. `is_ood` is `score > threshold` at
//!   the threshold `oe-text calibrate` stored for that score (`null` when there is none, as for
//!   feature detectors); `p_value` is the conformal p-value against the stored validation scores.
//! - `GET /v1/model`: what is loaded (dataset, labels, model, method, detectors, thresholds, the
//!   weights' sha256). `GET /healthz` (the process is up), `GET /readyz` (the model is loaded and
//!   the inference loop runs), `GET /metrics` (Prometheus text format).
//!
//! Invariant: **a text's score is exactly the one `oe-text score` gives it**, whatever else is in
//! its batch. Requests are micro-batched by one inference thread that owns the model: a batch
//! takes every request waiting (up to `max_batch` texts; with a `max_wait`, also those arriving
//! until then after its first request), and is scored by
//! [`crate::text::score::score_texts`], the batch-independent path `oe-text score` uses.
//!
//! Limits: at most `queue` requests admitted at once (then 503 with `Retry-After`), a maximum body
//! size (413), texts per request (413) and bytes per text (413), invalid JSON or UTF-8 (400), a
//! request that is not `{"texts": [strings]}`, has a field the API does not know, or names an
//! unknown score or a detector the model directory does not store (422); every error is a JSON
//! object `{"error", "field"}`. With a token, every route but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>` (401). The service stops on the shutdown signal it is given
//! (the binary: SIGTERM or Ctrl-C): it stops accepting, finishes requests in flight, and returns.
//!
//! With `log`, every scored text is appended as one JSON line (`time` in Unix seconds, `request`,
//! `score_kind`, `score`, `class`, `prob`, `is_ood`, `p_value`; never the text) by a writer thread
//! behind a bounded channel: a full channel drops lines (counted in `/metrics`) rather than slowing
//! requests. `oe-text monitor --window-secs` reads it.

use crate::detect::conformal::Conformal;
use crate::detect::{Detector, FeatureDetector, Score};
use crate::error::{OeError, Result};
use crate::text::calibrate::Calibration;
use crate::text::model_dir::LoadedModel;
use crate::text::score::{score_texts, ScoreOptions, Scored};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A validated `oe-text serve` request.
#[derive(Clone, Debug)]
pub struct ServeRequest {
    pub model_dir: PathBuf,
    /// Where to listen (loopback by default).
    pub addr: SocketAddr,
    /// The score of requests that name none.
    pub score: Score,
    /// A batch closes at this many texts...
    pub max_batch: usize,
    /// ...or this long after its first request arrived.
    pub max_wait: Duration,
    /// Requests admitted at once (waiting or being scored); more get 503.
    pub queue: usize,
    pub max_body_bytes: usize,
    pub max_texts: usize,
    pub max_text_bytes: usize,
    /// Bearer token required by `/v1/*` and `/metrics`.
    pub token: Option<String>,
    /// HTTP worker threads (inference has its own thread).
    pub threads: usize,
    pub device: tch::Device,
    /// Append one JSON line per scored text here.
    pub log: Option<PathBuf>,
    /// The arithmetic of the model's products.
    pub precision: crate::device::Precision,
}

impl ServeRequest {
    /// Defaults for a model directory: loopback port 8080, MSP, batches of at most 256 texts made of
    /// the requests waiting (no lingering), 64
    /// requests admitted, 1 MiB bodies, 1,024 texts per request, 64 KiB per text, no token.
    pub fn new(model_dir: PathBuf, device: tch::Device) -> Self {
        Self {
            model_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            score: Score::Msp,
            max_batch: 256,
            max_wait: Duration::ZERO,
            queue: 64,
            max_body_bytes: 1 << 20,
            max_texts: 1024,
            max_text_bytes: 64 << 10,
            token: None,
            threads: default_http_threads(),
            device,
            log: None,
            precision: Default::default(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_batch == 0
            || self.queue == 0
            || self.max_texts == 0
            || self.max_text_bytes == 0
            || self.max_body_bytes == 0
            || self.threads == 0
        {
            return Err(OeError::Config(
                "--max-batch, --queue, --max-texts, --max-text-bytes, --max-body-bytes and --threads must be positive".into(),
            ));
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err(OeError::Config("the token is empty".into()));
        }
        Ok(())
    }
}

/// Work for the inference thread.
struct Job {
    texts: Vec<String>,
    score: Detector,
    reply: tokio::sync::oneshot::Sender<std::result::Result<Vec<Scored>, String>>,
}

/// Counters for `/metrics`.
#[derive(Default)]
struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    texts: AtomicU64,
    flagged: AtomicU64,
    latency: Histogram,
    /// Log lines dropped because the log writer fell behind.
    log_dropped: AtomicU64,
    /// Texts scored on their HTTP worker instead of the inference thread ([`Shared::inline`]).
    inline_texts: AtomicU64,
}

const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A Prometheus histogram over fixed buckets.
struct Histogram {
    counts: Mutex<(Vec<u64>, u64, f64)>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: Mutex::new((vec![0; 16], 0, 0.0)),
        }
    }
}

impl Histogram {
    fn observe(&self, buckets: &[f64], v: f64) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                c.0[i] += 1;
            }
        }
        c.1 += 1;
        c.2 += v;
    }

    fn render(&self, name: &str, help: &str, buckets: &[f64], out: &mut String) {
        use std::fmt::Write as _;
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in buckets.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.0[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", c.1);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", c.2, c.1);
    }
}

/// A score's stored threshold and, when the calibration has validation scores, its p-values
/// (shared, not copied, by the requests that use them).
#[derive(Clone)]
struct Stored {
    threshold: f64,
    conformal: Option<Arc<Conformal>>,
}

impl Stored {
    fn of(c: &Calibration, dir: &std::path::Path) -> Self {
        Self {
            threshold: c.threshold,
            conformal: c.conformal(dir).ok().map(Arc::new),
        }
    }
}

/// What the handlers share.
struct Shared {
    jobs: mpsc::SyncSender<Job>,
    /// The model: the inference thread scores batches with it, and (with `inline`) a request of
    /// one text that arrives while nothing else is admitted is scored on its HTTP worker.
    model: Arc<Mutex<LoadedModel>>,
    /// Whether lone one-text requests are scored on the HTTP worker: for the GRU, whose text costs
    /// about what handing it to the inference thread and back costs (the two wake-ups were ~30%
    /// of that thread's time per request). Not for MiniLM (a text costs ~4 ms: the HTTP worker
    /// would stop admitting others meanwhile, and they would lose their batches) nor for requests
    /// of several texts (the same reason).
    inline: bool,
    /// Batch sizes, for `/metrics`.
    batches: Arc<Histogram>,
    admitted: AtomicUsize,
    /// False once shutdown has begun (requests in flight are still answered).
    ready: AtomicBool,
    req: ServeRequest,
    metrics: Metrics,
    /// Calibrations by score name: the default scores' read at start, others on first use.
    calibrations: Mutex<HashMap<String, Option<Stored>>>,
    /// Class names by index.
    labels: Vec<String>,
    /// The feature detectors the model directory stores (fitted), which requests may name.
    detectors: Vec<FeatureDetector>,
    model_info: serde_json::Value,
    /// Lines for the request log's writer thread (one string per request).
    log: Option<mpsc::SyncSender<String>>,
    requests_seen: AtomicU64,
}

/// Appends what arrives on `rx` to `path` until every sender is gone; flushes whenever the channel
/// is momentarily empty, syncs at the end.
fn log_writer(path: PathBuf, file: std::fs::File, rx: mpsc::Receiver<String>) -> Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| OeError::io(&path, e);
    while let Ok(first) = rx.recv() {
        w.write_all(first.as_bytes()).map_err(io)?;
        while let Ok(more) = rx.try_recv() {
            w.write_all(more.as_bytes()).map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    w.flush().map_err(io)?;
    w.get_ref().sync_all().map_err(io)
}

/// An error response: status and `{"error", "field"}`.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            field: None,
        }
    }
    fn field(mut self, f: impl Into<String>) -> Self {
        self.field = Some(f.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "field": self.field});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// A running service (for tests and embedding): its address, and a way to stop it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Stops accepting, finishes requests in flight, and waits for the service to end.
    pub fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(OeError::Data("the service thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// HTTP worker threads by default: the cores beside the inference thread's, 1 to 4. On 2 cores a
/// second worker only added thread switches (`experiments/bench_serve.sh`, GRU, one text at a
/// time: 976-990 texts/s with 2 workers, 1,117-1,124 with 1; MiniLM unchanged).
pub fn default_http_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, 4)
}

/// Starts the service on its own threads; returns once it listens (or failed to start).
pub fn spawn(req: ServeRequest) -> Result<Server> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr>>();
    let thread = std::thread::spawn(move || {
        let ready_err = ready_tx.clone();
        let r = run(
            &req,
            move |a| {
                let _ = ready_tx.send(Ok(a));
            },
            async move {
                let _ = stop_rx.await;
            },
        );
        if let Err(e) = &r {
            let _ = ready_err.send(Err(OeError::Data(e.to_string())));
        }
        r
    });
    match ready_rx.recv() {
        Ok(Ok(addr)) => Ok(Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(OeError::Data("the service stopped before listening".into())),
        },
    }
}

/// Runs the service until `shutdown` completes: loads the model (on the inference thread), binds,
/// calls `on_ready` with the bound address, serves, then finishes requests in flight.
pub fn run(
    req: &ServeRequest,
    on_ready: impl FnOnce(SocketAddr) + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    req.validate()?;
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(req.queue);
    let (loaded_tx, loaded_rx) = mpsc::channel::<Result<Loaded>>();
    let batch_metrics: Arc<Histogram> = Arc::new(Histogram::default());
    // libtorch's (OpenMP) thread count is per thread: the inference thread takes the caller's
    // (`--threads`), or it would run with one thread per core and spin against the HTTP workers.
    let torch_threads = tch::get_num_threads();
    let inference = {
        let req = req.clone();
        let hist = batch_metrics.clone();
        std::thread::spawn(move || {
            tch::set_num_threads(torch_threads);
            inference_loop(&req, jobs_rx, loaded_tx, &hist)
        })
    };
    let Loaded {
        info: mut model_info,
        detectors,
        model,
        inline,
    } = loaded_rx
        .recv()
        .map_err(|_| OeError::Data("the inference thread stopped while loading".into()))??;
    // The stored calibrations, read once: for `/v1/model` and for the requests.
    let mut calibrations = HashMap::new();
    let mut thresholds = Vec::new();
    for s in Score::all() {
        let c = crate::text::calibrate::load(&req.model_dir, &s).ok();
        if let Some(c) = &c {
            thresholds.push(serde_json::json!({
                "score": s.to_string(),
                "threshold": c.threshold,
                "tpr": c.tpr,
                "n_validation": c.n_validation,
                "split": c.split,
                "p_values": !c.validation_scores.is_empty(),
            }));
        }
        calibrations.insert(s.to_string(), c.map(|c| Stored::of(&c, &req.model_dir)));
    }
    model_info["thresholds"] = serde_json::Value::Array(thresholds);
    let labels = model_info["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let (log, log_thread) = match &req.log {
        Some(p) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| OeError::io(p, e))?;
            let (tx, rx) = mpsc::sync_channel::<String>(4096);
            let path = p.clone();
            (
                Some(tx),
                Some(std::thread::spawn(move || log_writer(path, file, rx))),
            )
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        model,
        inline,
        batches: batch_metrics.clone(),
        detectors,
        log,
        requests_seen: AtomicU64::new(0),
        jobs: jobs_tx,
        admitted: AtomicUsize::new(0),
        ready: AtomicBool::new(true),
        req: req.clone(),
        metrics: Metrics::default(),
        calibrations: Mutex::new(calibrations),
        labels,
        model_info,
    });
    // The HTTP workers score lone requests: the inference thread's libtorch setting on them too
    // (one OpenMP thread where the model runs its own workers).
    let worker_torch_threads = match crate::text::models::gru_cpu::adopted_workers() {
        Some(n) if n > 1 => 1,
        _ => torch_threads,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(req.threads)
        .on_thread_start(move || tch::set_num_threads(worker_torch_threads))
        .enable_all()
        .build()
        .map_err(|e| OeError::Data(format!("starting the HTTP runtime: {e}")))?;
    let served: Result<()> = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(req.addr)
            .await
            .map_err(|e| OeError::Config(format!("cannot listen on {}: {e}", req.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| OeError::Data(format!("listening address: {e}")))?;
        let app = router(shared.clone(), batch_metrics.clone());
        on_ready(addr);
        let draining = shared.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                draining.ready.store(false, Ordering::SeqCst);
            })
            .await
            .map_err(|e| OeError::Data(format!("serving: {e}")))
    });
    // The router (and with it every sender) is gone once serving returns: the loop ends.
    drop(shared);
    drop(rt);
    let looped = inference
        .join()
        .map_err(|_| OeError::Data("the inference thread panicked".into()))?;
    let logged = match log_thread {
        Some(t) => t
            .join()
            .map_err(|_| OeError::Data("the log writer panicked".into()))?,
        None => Ok(()),
    };
    served.and(looped).and(logged)
}

fn router(shared: Arc<Shared>, batches: Arc<Histogram>) -> Router {
    let limit = shared.req.max_body_bytes;
    Router::new()
        .route("/v1/score", post(score_handler))
        .route("/v1/model", get(model_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route(
            "/metrics",
            get(move |s: State<Arc<Shared>>, h: HeaderMap| metrics_handler(s, h, batches.clone())),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// Loads the model, reports what is loaded, then scores batches of jobs until every sender is gone.
/// What the inference thread reports once the model is loaded.
struct Loaded {
    /// `GET /v1/model`'s body (without `thresholds`).
    info: serde_json::Value,
    /// The feature detectors the model directory stores ([`stored_detectors`]).
    detectors: Vec<FeatureDetector>,
    model: Arc<Mutex<LoadedModel>>,
    /// [`Shared::inline`].
    inline: bool,
}

fn inference_loop(
    req: &ServeRequest,
    jobs: mpsc::Receiver<Job>,
    loaded: mpsc::Sender<Result<Loaded>>,
    batch_hist: &Histogram,
) -> Result<()> {
    let m = match LoadedModel::load(&req.model_dir, req.device).and_then(|mut m| {
        m.set_precision(req.precision)?;
        let mut info = model_info(&m)?;
        // The batch-size check runs now, before the service reports ready.
        let free = crate::text::score::prepare(&m, &ScoreOptions::default());
        info["batch_free_from"] = serde_json::json!(free.map(|f| f.to_string()));
        let detectors = stored_detectors(&m);
        let inline = matches!(m.model, crate::text::models::TextModel::Gru(_));
        let m = Arc::new(Mutex::new(m));
        Ok((
            m.clone(),
            Loaded {
                info,
                detectors,
                model: m,
                inline,
            },
        ))
    }) {
        Ok((m, l)) => {
            let _ = loaded.send(Ok(l));
            m
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = loaded.send(Err(e));
            return Err(OeError::Data(msg));
        }
    };
    while let Ok(first) = jobs.recv() {
        let deadline = Instant::now() + req.max_wait;
        let mut n = first.texts.len();
        let mut batch = vec![first];
        // The requests already waiting join at once; then, with a `max_wait`, later ones until it.
        while n < req.max_batch {
            match jobs.try_recv() {
                Ok(j) => {
                    n += j.texts.len();
                    batch.push(j);
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match jobs.recv_timeout(left) {
                Ok(j) => {
                    n += j.texts.len();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        batch_hist.observe(&BATCH_BUCKETS, n as f64);
        // One scoring pass per score kind; each job gets its own texts' results back in order.
        let mut by_score: Vec<(Detector, Vec<Job>)> = Vec::new();
        for j in batch {
            match by_score.iter_mut().find(|(s, _)| *s == j.score) {
                Some((_, v)) => v.push(j),
                None => by_score.push((j.score, vec![j])),
            }
        }
        let m = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (score, group) in by_score {
            let texts: Vec<String> = group.iter().flat_map(|j| j.texts.iter().cloned()).collect();
            match score_with(&m, score, &texts) {
                Ok(all) => {
                    let mut it = all.into_iter();
                    for j in group {
                        let part: Vec<Scored> = it.by_ref().take(j.texts.len()).collect();
                        let _ = j.reply.send(Ok(part));
                    }
                }
                Err(e) => {
                    for j in group {
                        let _ = j.reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `texts` scored by `score` exactly as `oe-text score` scores them.
fn score_with(m: &LoadedModel, score: Detector, texts: &[String]) -> Result<Vec<Scored>> {
    let opts = ScoreOptions {
        score: score.logit().unwrap_or_default(),
        stored: match score {
            Detector::Feature(f) => Some(f),
            Detector::Logit(_) => None,
        },
        ..Default::default()
    };
    score_texts(m, texts, &opts)
}

/// The feature detectors `m`'s directory stores (fitted), which requests may name.
fn stored_detectors(m: &LoadedModel) -> Vec<FeatureDetector> {
    match &m.detectors {
        Some(d) => FeatureDetector::all()
            .into_iter()
            .filter(|f| d.has(*f))
            .collect(),
        None => vec![],
    }
}

/// `GET /v1/model`'s body (its `thresholds` are added by [`run`]).
fn model_info(m: &LoadedModel) -> Result<serde_json::Value> {
    let weights = m.dir.join(crate::rundir::WEIGHTS_FILE);
    let sha = crate::datasets::fetch::sha256_file(&weights)?;
    // Stored (fitted) detectors are listed with their settings (tuned or default); a request may
    // name any of them, as `score` takes them.
    let detectors: Vec<serde_json::Value> = match &m.detectors {
        Some(d) => stored_detectors(m)
            .into_iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "settings": d.settings.describe(f),
                    "tuned": d.settings.tuned.is_some(),
                })
            })
            .collect(),
        None => vec![],
    };
    Ok(serde_json::json!({
        "model_dir": m.dir.display().to_string(),
        "dataset": m.config.header.in_dataset,
        "labels": m.labels.names(),
        "model": m.config.model.name(),
        "precision": m.model.precision().name(),
        "method": m.config.method_label().name(),
        "tool": m.config.header.tool,
        "weights_sha256": sha,
        "scores": Score::all().iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "detectors": detectors,
    }))
}

fn authorised(shared: &Shared, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
    let Some(token) = &shared.req.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time over the token's length.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        )
        .field("Authorization"))
    }
}

/// Releases an admission slot when a request ends, however it ends.
struct Admission<'a>(&'a AtomicUsize);
impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn score_handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let r = score_request(&shared, &headers, body).await;
    let status = match &r {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    let m = &shared.metrics;
    if let Err(e) = &r {
        *m.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(e.kind)
            .or_default() += 1;
    }
    *m.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(("/v1/score".into(), status.as_u16()))
        .or_default() += 1;
    m.latency
        .observe(&LATENCY_BUCKETS, t0.elapsed().as_secs_f64());
    match r {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn score_request(
    shared: &Shared,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> std::result::Result<serde_json::Value, ApiError> {
    authorised(shared, headers)?;
    let req = &shared.req;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {} bytes", req.max_body_bytes),
            )
            .field("body")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()).field("body")
        }
    })?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("not JSON (or not UTF-8): {e}"),
        )
        .field("body")
    })?;
    let unprocessable = |kind, msg: String, field: &str| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, kind, msg).field(field)
    };
    let obj = v.as_object().ok_or_else(|| {
        unprocessable(
            "bad_request",
            "expected a JSON object {\"texts\": [...]}".into(),
            "body",
        )
    })?;
    let arr = obj.get("texts").and_then(|t| t.as_array()).ok_or_else(|| {
        unprocessable(
            "bad_request",
            "`texts` must be an array of strings".into(),
            "texts",
        )
    })?;
    if arr.len() > req.max_texts {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_texts",
            format!("{} texts; at most {} per request", arr.len(), req.max_texts),
        )
        .field("texts"));
    }
    let mut texts = Vec::with_capacity(arr.len());
    for (i, t) in arr.iter().enumerate() {
        let s = t.as_str().ok_or_else(|| {
            unprocessable(
                "bad_request",
                format!("texts[{i}] is not a string"),
                &format!("texts[{i}]"),
            )
        })?;
        if s.len() > req.max_text_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text_too_long",
                format!(
                    "texts[{i}] has {} bytes; at most {}",
                    s.len(),
                    req.max_text_bytes
                ),
            )
            .field(format!("texts[{i}]")));
        }
        texts.push(s.to_string());
    }
    if let Some(k) = obj
        .keys()
        .find(|k| !["texts", "score", "detector"].contains(&k.as_str()))
    {
        return Err(unprocessable(
            "unknown_field",
            format!(
                "unknown field `{k}`; a request has `texts` and optionally `score` or `detector`"
            ),
            k,
        ));
    }
    let named = |field: &str| -> std::result::Result<Option<Detector>, ApiError> {
        match obj.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => s
                .parse::<Detector>()
                .map(Some)
                .map_err(|e| unprocessable("unknown_score", e, field)),
            Some(_) => Err(unprocessable(
                "unknown_score",
                format!("`{field}` must be a string"),
                field,
            )),
        }
    };
    let score = match (named("score")?, named("detector")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(unprocessable(
                "unknown_score",
                format!("`score` ({a}) and `detector` ({b}) disagree; give one"),
                "detector",
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => Detector::Logit(req.score),
    };
    if let Detector::Feature(f) = score {
        if !shared.detectors.contains(&f) {
            let field = if obj.contains_key("detector") {
                "detector"
            } else {
                "score"
            };
            return Err(unprocessable(
                "unknown_score",
                format!(
                    "the model directory stores no fitted `{}` detector (fit it with `oe-text eval \
                     --model DIR --detector {}` or `oe-text tune`); stored: {}",
                    f.name(),
                    f.name(),
                    if shared.detectors.is_empty() {
                        "none".to_string()
                    } else {
                        shared.detectors.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
                    }
                ),
                field,
            ));
        }
    }
    if shared.admitted.fetch_add(1, Ordering::SeqCst) >= req.queue {
        shared.admitted.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            format!(
                "{} requests are waiting or being scored; retry later",
                req.queue
            ),
        ));
    }
    let _slot = Admission(&shared.admitted);
    let n = texts.len();
    // One text alone (nothing else admitted, no `--max-wait-ms` to wait for others), on a model
    // that scores it faster than a hand-off ([`Shared::inline`]): scored here, on the model the
    // inference thread is then not using. Same function, same bits.
    let alone = shared.inline
        && n == 1
        && req.max_wait.is_zero()
        && shared.admitted.load(Ordering::SeqCst) == 1;
    let inline = match alone.then(|| shared.model.try_lock().ok()).flatten() {
        Some(m) => {
            shared.batches.observe(&BATCH_BUCKETS, n as f64);
            shared
                .metrics
                .inline_texts
                .fetch_add(n as u64, Ordering::Relaxed);
            Some(score_with(&m, score, &texts).map_err(|e| e.to_string()))
        }
        None => None,
    };
    let scored = match inline {
        Some(r) => r,
        None => queue(shared, texts, score).await?,
    }
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let (threshold, conformal) = calibration(shared, &score);
    let mut flagged = 0u64;
    // One object per text: the float32 score and probability as `oe-text score` writes them, the
    // class name, `is_ood` at the stored threshold and the conformal p-value (null without them).
    let results: Vec<serde_json::Value> = scored
        .iter()
        .map(|s| {
            let is_ood = threshold.map(|t| f64::from(s.score) > t);
            if is_ood == Some(true) {
                flagged += 1;
            }
            serde_json::json!({
                "score": s.score,
                "class": shared.labels.get(s.class as usize).map_or("", String::as_str),
                "prob": s.prob,
                "is_ood": is_ood,
                "p_value": conformal.as_ref().map(|c| c.p_value(f64::from(s.score))),
            })
        })
        .collect();
    shared.metrics.texts.fetch_add(n as u64, Ordering::Relaxed);
    shared.metrics.flagged.fetch_add(flagged, Ordering::Relaxed);
    let request = shared.requests_seen.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(log) = &shared.log {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let kind = score.to_string();
        let mut lines = String::new();
        for r in &results {
            let line = serde_json::json!({
                "time": (time * 1000.0).round() / 1000.0,
                "request": request,
                "score_kind": kind,
                "score": r["score"],
                "class": r["class"],
                "prob": r["prob"],
                "is_ood": r["is_ood"],
                "p_value": r["p_value"],
            });
            lines += &line.to_string();
            lines.push('\n');
        }
        if log.try_send(lines).is_err() {
            shared
                .metrics
                .log_dropped
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(serde_json::json!({
        "score": score.to_string(),
        "threshold": threshold,
        "results": results,
    }))
}

/// Hands `texts` to the inference thread's queue and waits for their results.
async fn queue(
    shared: &Shared,
    texts: Vec<String>,
    score: Detector,
) -> std::result::Result<std::result::Result<Vec<Scored>, String>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared
        .jobs
        .try_send(Job {
            texts,
            score,
            reply: tx,
        })
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "the inference queue is full; retry later",
            )
        })?;
    rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the inference thread stopped",
        )
    })
}

/// The stored threshold and validation scores of `score` (read once, then kept).
fn calibration(shared: &Shared, score: &Detector) -> (Option<f64>, Option<Arc<Conformal>>) {
    // Calibrations are stored for logit scores.
    let Detector::Logit(score) = score else {
        return (None, None);
    };
    let mut map = shared
        .calibrations
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let entry = map.entry(score.to_string()).or_insert_with(|| {
        crate::text::calibrate::load(&shared.req.model_dir, score)
            .ok()
            .map(|c| Stored::of(&c, &shared.req.model_dir))
    });
    match entry {
        Some(st) => (Some(st.threshold), st.conformal.clone()),
        None => (None, None),
    }
}

async fn model_handler(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorised(&shared, &headers) {
        return e.into_response();
    }
    Json(shared.model_info.clone()).into_response()
}

async fn ready_handler(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
    }
}

async fn metrics_handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    batches: Arc<Histogram>,
) -> Response {
    if let Err(e) = authorised(&shared, &headers) {
        return e.into_response();
    }
    use std::fmt::Write as _;
    let m = &shared.metrics;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP oe_requests_total HTTP requests by route and status.\n# TYPE oe_requests_total counter");
    for ((route, code), n) in m.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(
            out,
            "oe_requests_total{{route=\"{route}\",status=\"{code}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP oe_errors_total Failed requests by kind.\n# TYPE oe_errors_total counter"
    );
    for (kind, n) in m.errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(out, "oe_errors_total{{kind=\"{kind}\"}} {n}");
    }
    let texts = m.texts.load(Ordering::Relaxed);
    let flagged = m.flagged.load(Ordering::Relaxed);
    let _ = writeln!(out, "# HELP oe_texts_total Texts scored.\n# TYPE oe_texts_total counter\noe_texts_total {texts}");
    let _ = writeln!(out, "# HELP oe_ood_total Texts flagged OOD at the stored threshold.\n# TYPE oe_ood_total counter\noe_ood_total {flagged}");
    let rate = if texts > 0 {
        flagged as f64 / texts as f64
    } else {
        0.0
    };
    let _ = writeln!(out, "# HELP oe_ood_rate Share of scored texts flagged OOD.\n# TYPE oe_ood_rate gauge\noe_ood_rate {rate}");
    let _ = writeln!(
        out,
        "# HELP oe_log_dropped_total Request-log lines dropped because the log writer fell behind.\n# TYPE oe_log_dropped_total counter\noe_log_dropped_total {}",
        m.log_dropped.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP oe_inline_texts_total Texts scored on their HTTP worker (a lone one-text request; GRU models) rather than by the inference thread.\n# TYPE oe_inline_texts_total counter\noe_inline_texts_total {}",
        m.inline_texts.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP oe_queue_admitted Requests waiting or being scored.\n# TYPE oe_queue_admitted gauge\noe_queue_admitted {}",
        shared.admitted.load(Ordering::SeqCst)
    );
    m.latency.render(
        "oe_request_seconds",
        "Latency of /v1/score.",
        &LATENCY_BUCKETS,
        &mut out,
    );
    batches.render(
        "oe_batch_texts",
        "Texts per inference batch.",
        &BATCH_BUCKETS,
        &mut out,
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
