//! Model directories written before the core / wings restructuring still load and score the same:
//! `tests/fixtures/model-cb7c0ec` was written by the binary of commit cb7c0ec (see its README), with
//! that binary's `oe-text score` outputs beside it.

use crate::common;

use oe::text::model_dir::LoadedModel;
use oe::train::{Method, MethodLabel};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Device;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-cb7c0ec")
}

#[test]
fn old_model_directory_loads_with_its_run_json_fields() {
    let m = LoadedModel::load(&fixture(), Device::Cpu).unwrap();
    let h = &m.config.header;
    assert_eq!(h.tool, "oe 0.1.0");
    assert_eq!(h.method, Method::OeFinetune);
    assert_eq!(h.init_from.as_deref(), Some("../baseline"));
    assert_eq!(h.train_examples, 80);
    assert_eq!(m.config.method_label(), MethodLabel::Oe);
    assert_eq!(m.config.model.name(), "transformer");
    assert_eq!(m.labels.names(), ["neg", "pos"]);
    assert!(m.config.tokenizer.is_none());
    // What the directory holds is written back with the same field names (a flattened header).
    let v = serde_json::to_value(&m.config).unwrap();
    let old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("run.json")).unwrap()).unwrap();
    assert_eq!(v, old);
}

#[test]
fn old_model_directory_scores_byte_identically() {
    let dir = fixture();
    for score in ["msp", "energy:2", "maxlogit"] {
        let out = Command::new(env!("CARGO_BIN_EXE_oe-text"))
            .current_dir(&dir)
            .args([
                "score",
                "--model",
                ".",
                "score-input.txt",
                "--quiet",
                "--device",
                "cpu",
            ])
            .args(["--score", score])
            .output()
            .unwrap();
        common::check(&out);
        let want =
            std::fs::read(dir.join(format!("scores-{}.tsv", score.replace(':', "_")))).unwrap();
        let (got, want) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&want),
        );
        if got == want {
            continue;
        }
        // The fixture was written on an Intel CPU; libtorch's MKL products (this is a transformer)
        // take other kernels on other CPUs (AMD EPYC: up to 3e-7 apart). Everything but the last
        // float bits must still agree: the rows, their sources and lines, the classes, and the
        // scores and probabilities within 1e-6.
        let rows = |s: &str| -> Vec<Vec<String>> {
            s.lines()
                .map(|l| l.split('\t').map(String::from).collect())
                .collect()
        };
        let (g, w) = (rows(&got), rows(&want));
        assert_eq!(g.len(), w.len(), "{score}: rows");
        assert_eq!(g[0], w[0], "{score}: header");
        for (i, (a, b)) in g.iter().zip(&w).enumerate().skip(1) {
            assert_eq!(a.len(), 5, "{score} row {i}: {a:?}");
            assert_eq!(
                (&a[0], &a[1], &a[3]),
                (&b[0], &b[1], &b[3]),
                "{score} row {i}"
            );
            for c in [2, 4] {
                let (x, y): (f64, f64) = (a[c].parse().unwrap(), b[c].parse().unwrap());
                assert!(
                    (x - y).abs() <= 1e-6,
                    "{score} row {i} column {c}: {x} vs {y}"
                );
            }
        }
    }
}
