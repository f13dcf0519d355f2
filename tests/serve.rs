//! `oe-text serve` through a real HTTP client on loopback: scores equal `oe-text score`'s bit for bit
//! under concurrent micro-batched requests, every limit and bad input gets its status and a JSON
//! error naming the field, a full queue answers 503 with Retry-After, a bounded load test has no
//! errors, and SIGTERM lets requests in flight finish before the process exits 0.

use crate::common;
use oe::text::serve::{spawn, ServeRequest};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::Device;

/// The committed old-format model directory, copied (with a stored MSP calibration) into `dir`.
fn model(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-cb7c0ec");
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["run.json", "vocab.json", "model.safetensors"] {
        std::fs::copy(src.join(f), m.join(f)).unwrap();
    }
    let loaded = oe::text::model_dir::LoadedModel::load(&m, Device::Cpu).unwrap();
    let val = oe::text::calibrate::Validation {
        texts: texts(200, 7),
        split: "generated".into(),
        note: "generated validation texts".into(),
    };
    oe::text::calibrate::calibrate(&loaded, &val, oe::detect::Score::Msp, 0.9).unwrap();
    m
}

const WORDS: &[&str] = &[
    "good",
    "great",
    "fine",
    "bad",
    "awful",
    "dull",
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "was",
    "very",
    "stock",
    "market",
    "rain",
    "unknownword",
];

/// `n` single-line texts of 1..=30 words (a few longer than the model's 16 tokens).
pub(crate) fn texts(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    (0..n)
        .map(|_| {
            let k = 1 + next() % 30;
            (0..k)
                .map(|_| WORDS[next() % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// What `oe-text score --threshold auto --p-values` writes for each text: (score, class, prob,
/// p_value, is_ood), as strings parsed to numbers.
pub(crate) fn reference(
    m: &Path,
    texts: &[String],
    dir: &Path,
) -> Vec<(f32, String, f32, f64, bool)> {
    let input = dir.join("ref.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oe-text"))
        .args([
            "score",
            "--quiet",
            "--device",
            "cpu",
            "--threshold",
            "auto",
            "--p-values",
            "--model",
        ])
        .arg(m)
        .arg(&input)
        .output()
        .unwrap();
    common::check(&out);
    let s = String::from_utf8(out.stdout).unwrap();
    let mut lines = s.lines();
    assert_eq!(
        lines.next().unwrap(),
        "source\tline\tscore\tclass\tprob\tp_value\tis_ood"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[2].parse().unwrap(),
                f[3].to_string(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
            )
        })
        .collect()
}

pub(crate) fn server(m: &Path, f: impl FnOnce(&mut ServeRequest)) -> oe::text::serve::Server {
    let mut req = ServeRequest::new(m.to_path_buf(), Device::Cpu);
    req.addr = "127.0.0.1:0".parse().unwrap();
    f(&mut req);
    spawn(req).unwrap()
}

/// A fresh model directory and a service on it with the settings `f` makes.
fn start(
    f: impl FnOnce(&mut ServeRequest),
) -> (tempfile::TempDir, oe::text::serve::Server, String) {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let s = server(&m, f);
    let addr = s.addr.to_string();
    (d, s, addr)
}

/// `GET /metrics`'s body (with the bearer `token`, if any).
fn metrics(addr: &str, token: Option<&str>) -> String {
    let mut r = ureq::get(&format!("http://{addr}/metrics"));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    r.call().unwrap().into_string().unwrap()
}

/// POSTs `body` to `/v1/score`; returns (status, JSON body, Retry-After).
fn post(addr: &str, body: &[u8], token: Option<&str>) -> (u16, serde_json::Value, Option<String>) {
    let mut r = ureq::post(&format!("http://{addr}/v1/score"))
        .timeout(Duration::from_secs(30))
        .set("Content-Type", "application/json");
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match r.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("Retry-After").map(String::from);
    let mut s = String::new();
    resp.into_reader().read_to_string(&mut s).unwrap();
    (
        status,
        serde_json::from_str(&s).unwrap_or(serde_json::Value::Null),
        retry,
    )
}

fn score_body(texts: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "texts": texts })).unwrap()
}

/// Checks one response's results against the reference rows for `idx`.
fn check_results(v: &serde_json::Value, want: &[&(f32, String, f32, f64, bool)]) {
    let res = v["results"].as_array().unwrap();
    assert_eq!(res.len(), want.len());
    for (r, w) in res.iter().zip(want) {
        let score = r["score"].as_f64().unwrap() as f32;
        assert_eq!(score.to_bits(), w.0.to_bits(), "score {score} vs {}", w.0);
        assert_eq!(r["class"], w.1.as_str());
        assert_eq!(
            (r["prob"].as_f64().unwrap() as f32).to_bits(),
            w.2.to_bits()
        );
        // The service writes the exact f64; serde_json's default parser here is only accurate to
        // about one unit in the last place (its `float_roundtrip` feature is off).
        let p = r["p_value"].as_f64().unwrap();
        assert!((p - w.3).abs() <= 1e-15 * w.3, "p_value {p} vs {}", w.3);
        assert_eq!(r["is_ood"].as_bool().unwrap(), w.4);
    }
}

/// 6 concurrent clients send their shares of `all` to the service at `addr` in requests of 1..=17
/// texts; every result must be `want`'s row (what `oe-text score` wrote) bit for bit.
pub(crate) fn concurrent_clients_get_the_same_bits(
    addr: &str,
    all: &[String],
    want: &[(f32, String, f32, f64, bool)],
) {
    std::thread::scope(|sc| {
        for c in 0..6usize {
            sc.spawn(move || {
                let mine: Vec<usize> = (0..all.len()).filter(|i| i % 6 == c).collect();
                let mut pos = 0;
                let mut k = c;
                while pos < mine.len() {
                    k = (k * 7 + 3) % 17;
                    let end = (pos + 1 + k).min(mine.len());
                    let idx = &mine[pos..end];
                    let batch: Vec<String> = idx.iter().map(|&i| all[i].clone()).collect();
                    let (st, v, _) = post(addr, &score_body(&batch), None);
                    assert_eq!(st, 200, "{v}");
                    let w: Vec<_> = idx.iter().map(|&i| &want[i]).collect();
                    check_results(&v, &w);
                    pos = end;
                }
            });
        }
    });
}

#[test]
fn service_scores_exactly_like_score_in_any_batch() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let all = texts(300, 1);
    let want = reference(&m, &all, d.path());
    assert_eq!(want.len(), all.len());
    let log = d.path().join("requests.jsonl");
    let s = server(&m, |r| {
        r.max_batch = 32;
        r.max_wait = Duration::from_millis(20);
        r.log = Some(log.clone());
    });
    let addr = s.addr.to_string();
    concurrent_clients_get_the_same_bits(&addr, &all, &want);
    // Batches were shared between clients: the histogram saw batches of more than one request.
    let metrics = metrics(&addr, None);
    assert!(metrics.contains("oe_texts_total 300"), "{metrics}");
    assert!(metrics.contains("oe_requests_total{route=\"/v1/score\",status=\"200\"}"));
    assert!(metrics.contains("oe_batch_texts_count"));
    assert!(metrics.contains("oe_request_seconds_bucket"));
    assert!(metrics.contains("oe_log_dropped_total 0"), "{metrics}");
    s.stop().unwrap();
    // The request log: one line per scored text (never the text), each score one of the
    // reference's; `monitor --window-secs` windows it by time.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 300);
    let scores: std::collections::HashSet<u32> = want.iter().map(|w| w.0.to_bits()).collect();
    for l in &lines {
        assert!(l["time"].as_f64().unwrap() > 1.7e9);
        assert_eq!(l["score_kind"], "msp");
        assert!(l.get("text").is_none());
        let sc = l["score"].as_f64().unwrap() as f32;
        assert!(scores.contains(&sc.to_bits()), "{l}");
    }
    let out = oe::text::score::monitor::run_monitor(&oe::text::score::monitor::MonitorRequest {
        input: log.clone(),
        every: 1000,
        window_secs: Some(1.0),
        alpha: 0.05,
        plot: None,
    })
    .unwrap();
    assert_eq!(out.windows.iter().map(|w| w.rows).sum::<usize>(), 300);
    assert!(out.table.contains("from (UTC)"), "{}", out.table);
}

#[test]
fn limits_bad_input_and_token_get_their_status_and_a_json_error() {
    let (_d, s, addr) = start(|r| {
        r.max_texts = 5;
        r.max_text_bytes = 50;
        r.max_body_bytes = 2000;
        r.token = Some("s3cret-token".into());
    });
    let t = Some("s3cret-token");
    let ok = score_body(&["a good film".to_string()]);
    let (st, v, _) = post(&addr, &ok, None);
    assert_eq!((st, v["field"].as_str()), (401, Some("Authorization")));
    let (st, _, _) = post(&addr, &ok, Some("wrong"));
    assert_eq!(st, 401);
    let (st, v, _) = post(&addr, &ok, t);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["score"], "msp");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "body"),
        (b"{\"texts\": [\"\xff\xfe\"]}".to_vec(), 400, "body"),
        (b"[1, 2]".to_vec(), 422, "body"),
        (b"{\"texts\": 3}".to_vec(), 422, "texts"),
        (b"{\"texts\": [\"ok\", 4]}".to_vec(), 422, "texts[1]"),
        (
            b"{\"texts\": [\"ok\"], \"score\": \"nope\"}".to_vec(),
            422,
            "score",
        ),
        // A detector this model directory does not store, by either name.
        (
            b"{\"texts\": [\"ok\"], \"score\": \"knn\"}".to_vec(),
            422,
            "score",
        ),
        (
            b"{\"texts\": [\"ok\"], \"detector\": \"mahalanobis\"}".to_vec(),
            422,
            "detector",
        ),
        (
            b"{\"texts\": [\"ok\"], \"score\": \"msp\", \"detector\": \"energy\"}".to_vec(),
            422,
            "detector",
        ),
        // A misspelt field is refused rather than ignored (it would silently give MSP).
        (
            b"{\"texts\": [\"ok\"], \"detectr\": \"knn\"}".to_vec(),
            422,
            "detectr",
        ),
        (score_body(&vec!["x".to_string(); 6]), 413, "texts"),
        (score_body(&["y".repeat(51)]), 413, "texts[0]"),
        (score_body(&vec!["z".repeat(40); 5]).repeat(10), 413, "body"),
    ];
    for (body, status, field) in cases {
        let (st, v, _) = post(&addr, &body, t);
        assert_eq!(
            st,
            status,
            "{}: {v}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        assert_eq!(v["field"], field, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // Another score per request, when the model has it (no stored threshold: is_ood is null).
    let (st, v, _) = post(
        &addr,
        b"{\"texts\": [\"a film\"], \"score\": \"energy:2\"}",
        t,
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["results"][0]["is_ood"].is_null() && v["threshold"].is_null());
    // Health and readiness need no token; the model description and metrics do.
    assert_eq!(
        ureq::get(&format!("http://{addr}/healthz"))
            .call()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        ureq::get(&format!("http://{addr}/readyz"))
            .call()
            .unwrap()
            .status(),
        200
    );
    assert!(matches!(
        ureq::get(&format!("http://{addr}/metrics")).call(),
        Err(ureq::Error::Status(401, _))
    ));
    let info: serde_json::Value = serde_json::from_str(
        &ureq::get(&format!("http://{addr}/v1/model"))
            .set("Authorization", "Bearer s3cret-token")
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["labels"], serde_json::json!(["neg", "pos"]));
    assert_eq!(info["model"], "transformer");
    assert_eq!(info["method"], "oe");
    assert_eq!(info["weights_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(info["thresholds"][0]["score"], "msp");
    assert_eq!(info["thresholds"][0]["p_values"], true);
    let metrics = metrics(&addr, Some("s3cret-token"));
    assert!(
        metrics.contains("oe_errors_total{kind=\"too_many_texts\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("s3cret"), "the token never appears");
    s.stop().unwrap();
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // One admitted request at a time, held 600 ms by the batch window.
    let (_d, s, addr) = start(|r| {
        r.queue = 1;
        r.max_batch = 10_000;
        r.max_wait = Duration::from_millis(600);
    });
    let first = {
        let addr = addr.clone();
        std::thread::spawn(move || post(&addr, &score_body(&["a good film".into()]), None))
    };
    std::thread::sleep(Duration::from_millis(200));
    let (st, v, retry) = post(&addr, &score_body(&["a bad film".into()]), None);
    assert_eq!(st, 503, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(v["error"].as_str().unwrap().contains("retry"));
    assert_eq!(first.join().unwrap().0, 200);
    // Once it is answered, the next one is admitted.
    assert_eq!(
        post(&addr, &score_body(&["a bad film".into()]), None).0,
        200
    );
    s.stop().unwrap();
}

/// One text at a time with nothing else admitted: the GRU's service scores it on the HTTP worker
/// instead of the inference thread (`Shared::inline`); the bits must not change, nor the batches
/// of requests that arrive together.
#[test]
fn lone_texts_scored_on_the_http_worker_get_the_same_bits() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    // A GRU (the committed fixture is a transformer, for which the inline path is off).
    crate::scoring::dataset(d.path(), true);
    let m = crate::scoring::train(d.path(), None);
    let all = texts(120, 5);
    let want = reference(&m, &all, d.path());
    let s = server(&m, |_| {});
    let addr = s.addr.to_string();
    for (t, w) in all.iter().zip(&want).take(60) {
        let (st, v, _) = post(&addr, &score_body(std::slice::from_ref(t)), None);
        assert_eq!(st, 200, "{v}");
        check_results(&v, &[w]);
    }
    // One request at a time, nothing else admitted: every one of them took the inline path.
    let metrics = metrics(&addr, None);
    assert!(metrics.contains("oe_inline_texts_total 60\n"), "{metrics}");
    // Lone and concurrent requests mixed: some run inline, others in batches.
    concurrent_clients_get_the_same_bits(&addr, &all, &want);
    s.stop().unwrap();
}

#[test]
fn load_test_has_no_errors_and_every_answer_is_right() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let pool = texts(120, 3);
    let want = reference(&m, &pool, d.path());
    let by_text: HashMap<&str, &(f32, String, f32, f64, bool)> =
        pool.iter().map(String::as_str).zip(want.iter()).collect();
    let s = server(&m, |r| r.queue = 256);
    let addr = s.addr.to_string();
    let until = Instant::now() + Duration::from_secs(2);
    let counts: Vec<usize> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8usize)
            .map(|c| {
                let (pool, by_text, addr) = (&pool, &by_text, &addr);
                sc.spawn(move || {
                    let mut n = 0;
                    let mut i = c * 13;
                    while Instant::now() < until && n < 400 {
                        let k = 1 + (i % 8);
                        let batch: Vec<String> = (0..k)
                            .map(|j| pool[(i + j * 31) % pool.len()].clone())
                            .collect();
                        let (st, v, _) = post(addr, &score_body(&batch), None);
                        assert_eq!(st, 200, "{v}");
                        let w: Vec<_> = batch.iter().map(|t| by_text[t.as_str()]).collect();
                        check_results(&v, &w);
                        n += 1;
                        i += 7;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: usize = counts.iter().sum();
    eprintln!("load test: {total} requests from 8 clients in about 2 s, no errors");
    assert!(total >= 8);
    s.stop().unwrap();
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let d = tempfile::tempdir().unwrap();
    let m = model(d.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_oe-text"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--max-wait-ms",
            "800",
            "--max-batch",
            "10000",
            "--device",
            "cpu",
            "--model",
        ])
        .arg(&m)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "serve exited before listening"
        );
        if let Some(rest) = line.trim().strip_prefix("listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let inflight = {
        let addr = addr.clone();
        std::thread::spawn(move || post(&addr, &score_body(&["a good film".into()]), None))
    };
    std::thread::sleep(Duration::from_millis(250));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (st, v, _) = inflight.join().unwrap();
    assert_eq!(st, 200, "the request in flight is answered: {v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status:?}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(&addr).is_err());
}
