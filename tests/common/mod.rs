//! Generated fixtures shared by the integration tests: labelled CSV splits and one-text-per-line
//! files, small enough to train on in seconds, and the training request that uses them; a loopback
//! HTTP file server for download tests.
#![allow(dead_code)] // each test crate uses part of this module

use oe::eval::EvalConfig;
use oe::text::models::ModelConfig;
use oe::text::pipeline::TrainRequest;
use oe::text::train::TrainConfig;
use oe::train::Method;
use std::path::{Path, PathBuf};

const WORDS: &[&str] = &[
    "the", "good", "fine", "great", "movie", "bad", "awful", "poor", "film", "plot", "actor",
    "was", "very", "not", "quite", "story", "history", "war", "king", "river",
];

/// A deterministic pseudo-random sentence of 1..=`max_words` words (an LCG over `i` and `salt`).
pub fn sentence(i: u64, salt: u64, max_words: usize) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(salt);
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let n = 1 + next() % max_words;
    (0..n)
        .map(|_| WORDS[next() % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text,label` CSV rows `off..off + n` of a two-class set: even rows `pos` ("the good fine great
/// movie ..."), odd rows `neg` ("the bad awful poor movie ..."), each followed by `sentence(row)`.
pub fn labelled_csv(n: usize, off: usize, sentence: impl Fn(u64) -> String) -> String {
    let mut s = String::from("text,label\n");
    for i in off..off + n {
        let (w, l) = if i % 2 == 0 {
            ("good fine great", "pos")
        } else {
            ("bad awful poor", "neg")
        };
        s += &format!("\"the {w} movie {}\",{l}\n", sentence(i as u64));
    }
    s
}

/// Writes `dir/{name}.csv` (`text,label`) for each `(name, rows)`, quoting every text.
pub fn write_splits(dir: &Path, splits: &[(&str, Vec<(String, &str)>)]) {
    for (name, rows) in splits {
        let mut s = String::from("text,label\n");
        for (t, l) in rows {
            s += &format!("\"{t}\",{l}\n");
        }
        std::fs::write(dir.join(format!("{name}.csv")), s).unwrap();
    }
}

/// Writes `n` lines `f(0..n)` to `path`.
pub fn write_lines(path: &Path, n: usize, f: impl Fn(usize) -> String) {
    let s: String = (0..n).map(|i| f(i) + "\n").collect();
    std::fs::write(path, s).unwrap();
}

/// Training on the generated dataset in `d` (its CSV splits; OE fine-tuning with `d/oe.txt`;
/// evaluation on `d/ood.txt` with `repeats` draws), on the CPU, into `out`, with `train` for both
/// phases; no calibration, nothing resumed.
pub fn request(
    d: &Path,
    out: &Path,
    model: ModelConfig,
    train: TrainConfig,
    repeats: usize,
) -> TrainRequest {
    TrainRequest {
        in_dataset: d.display().to_string(),
        oe_corpus: Some(d.join("oe.txt").display().to_string()),
        oe_method: Method::OeFinetune,
        data_root: d.to_path_buf(),
        out_dir: out.to_path_buf(),
        text: Default::default(),
        vocab_max_size: 10_000,
        tokenizer: None,
        model,
        baseline: train.clone(),
        oe: train,
        eval: EvalConfig {
            repeats,
            ..Default::default()
        },
        ood_sets: Some(vec![d.join("ood.txt").display().to_string()]),
        resume: false,
        device: tch::Device::Cpu,
        holdout: None,
        calibrate_tpr: None,
        oe_dir: None,
        evaluate: true,
        auto_pairing: false,
        export_ids: None,
    }
}

/// Requires a finished command to have succeeded, showing its standard error when it did not.
pub fn check(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serves `root` over HTTP on 127.0.0.1: `/good/<p>` the file, `/corrupt/<p>` with one byte
/// flipped, `/truncate/<p>` half the bytes with the full Content-Length, `/slow/<p>` half the bytes
/// then the rest 20 s later, anything else 404.
pub fn serve(root: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                r.read_line(&mut first).unwrap();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (mode, rel) = path[1..].split_once('/').unwrap_or(("", ""));
                let file = root.join(rel);
                match (mode, std::fs::read(&file)) {
                    ("slow", Ok(b)) if !rel.contains("..") => {
                        // Half the bytes, then a long pause (a download to interrupt).
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        );
                        let _ = s.write_all(&b[..b.len() / 2]);
                        let _ = s.flush();
                        std::thread::sleep(std::time::Duration::from_secs(20));
                        let _ = s.write_all(&b[b.len() / 2..]);
                    }
                    ("good" | "corrupt" | "truncate", Ok(mut b)) if !rel.contains("..") => {
                        let len = b.len();
                        if mode == "corrupt" {
                            b[len / 2] ^= 0x20;
                        }
                        if mode == "truncate" {
                            b.truncate(len / 2);
                        }
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = s.write_all(&b);
                    }
                    _ => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
                    }
                }
                let _ = s.flush();
            });
        }
    });
    format!("http://{addr}")
}

/// Fails when any `.oe-*` temporary or staging file is left under `dir`.
pub fn no_leftovers(dir: &Path) {
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!n.starts_with(".oe-"), "leftover {}", e.display());
    }
}

/// Every path under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}
