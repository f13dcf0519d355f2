//! `oe-text report` on generated run directories: aggregated numbers, mixed inputs, bootstrap
//! coverage on a case with a known answer, plots and HTML.

use oe::eval::{EvalConfig, EvalReport, MeanStd, Protocol, SetResult};
use oe::metrics::{DetectionMetrics, MetricsConfig};
use oe::report::aggregate::{self, GroupKey};
use oe::report::bootstrap::{self, BootstrapConfig};
use oe::report::command::ReportFormat;
use oe::report::ReportRequest;
use oe::results::{write_eval, RunMeta};
use polars::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

fn normals(rng: &mut ChaCha8Rng, n: usize, mu: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            // Box-Muller.
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            mu + (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect()
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
fn phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + y)
    } else {
        0.5 * (1.0 - y)
    }
}

const DRAWS: usize = 3;

/// Writes `<root>/<run>/eval-msp-<protocol>/...` with the real writer: ID scores N(0,1), OOD sets
/// `snli` and `imdb` N(shift, 1) and N(shift + 0.5, 1), three draws each.
fn make_eval(
    root: &Path,
    run: &str,
    method: &str,
    seed: u64,
    shift: f64,
    protocol: Protocol,
    id_per_ood: usize,
) -> EvalReport {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed * 1000 + method.len() as u64 + (shift * 100.0) as u64);
    let n_in = 300;
    let in_scores = normals(&mut rng, n_in, 0.0);
    let config = EvalConfig {
        protocol,
        repeats: DRAWS,
        id_per_ood,
        ..Default::default()
    };
    let sets = ["snli", "imdb"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let pool = normals(&mut rng, 200, shift + 0.5 * k as f64);
            let n_ood = n_in / id_per_ood;
            let mut draws = Vec::new();
            let mut scores = Vec::new();
            for _ in 0..DRAWS {
                let idx = rand::seq::index::sample(&mut rng, pool.len(), n_ood).into_vec();
                let ood: Vec<f64> = idx.iter().map(|&i| pool[i]).collect();
                draws.push(
                    DetectionMetrics::compute(&in_scores, &ood, &MetricsConfig::default()).unwrap(),
                );
                scores.push(idx.iter().map(|&i| (i, pool[i])).collect());
            }
            let of = |f: fn(&DetectionMetrics) -> f64| {
                MeanStd::of(&draws.iter().map(f).collect::<Vec<_>>())
            };
            SetResult {
                ood_set: name.to_string(),
                n_ood,
                n_available: pool.len(),
                fpr: of(|m| m.fpr),
                auroc: of(|m| m.auroc),
                aupr_out: of(|m| m.aupr),
                aupr_in: Default::default(),
                draws,
                scores,
            }
        })
        .collect();
    let report = EvalReport {
        config,
        n_in,
        in_accuracy: 0.8,
        sets,
        in_scores,
        in_correct: vec![],
        operating_point: None,
        precision: Default::default(),
    };
    let dir = root.join(run);
    let meta = RunMeta {
        in_dataset: "sst".into(),
        method: method.parse().unwrap(),
        model: "gru".into(),
        seed,
        model_dir: dir.display().to_string(),
        paper: oe::paper::Table::Table8,
    };
    write_eval(&dir, &report, None, &meta).unwrap();
    report
}

fn args(
    dirs: Vec<PathBuf>,
    format: ReportFormat,
    output: Option<PathBuf>,
    bootstrap: usize,
) -> ReportRequest {
    ReportRequest {
        run_dirs: dirs,
        by: vec![GroupKey::Dataset, GroupKey::Method, GroupKey::Score],
        format,
        output,
        bootstrap,
        seed: 7,
        level: 0.95,
        plots: None,
        strict: false,
    }
}

fn f64_at(df: &DataFrame, col: &str, i: usize) -> Option<f64> {
    df.column(col).unwrap().f64().unwrap().get(i)
}

fn str_at(df: &DataFrame, col: &str, i: usize) -> String {
    df.column(col)
        .unwrap()
        .str()
        .unwrap()
        .get(i)
        .unwrap_or_default()
        .to_string()
}

fn row(df: &DataFrame, method: &str, set: &str) -> usize {
    (0..df.height())
        .find(|&i| str_at(df, "method", i) == method && str_at(df, "ood_set", i) == set)
        .unwrap_or_else(|| panic!("no row {method}/{set}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn aggregates_over_seeds_and_draws_with_paper_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut reports = Vec::new();
    for seed in [1u64, 2] {
        for (method, shift) in [("baseline", 0.8), ("oe", 2.0)] {
            let r = make_eval(
                root,
                &format!("seed{seed}/{method}"),
                method,
                seed,
                shift,
                Protocol::Paper,
                5,
            );
            reports.push((method, r));
        }
    }
    let files = aggregate::find_results(&[root.to_path_buf()]).unwrap();
    assert_eq!(files.len(), 4);
    let agg = aggregate::aggregate(
        &files,
        &[GroupKey::Dataset, GroupKey::Method, GroupKey::Score],
    )
    .unwrap();
    let df = &agg.frame;
    assert_eq!(df.height(), 2 * 3, "{df}");
    assert_eq!(agg.fpr.name, "fpr90_closest_out");
    // The `mean` row is last in each group.
    assert_eq!(str_at(df, "ood_set", 2), "mean");
    assert_eq!(str_at(df, "ood_set", 5), "mean");
    for method in ["baseline", "oe"] {
        let runs: Vec<&EvalReport> = reports
            .iter()
            .filter(|r| r.0 == method)
            .map(|r| &r.1)
            .collect();
        for set in ["snli", "imdb"] {
            let i = row(df, method, set);
            let per_run: Vec<&SetResult> = runs
                .iter()
                .map(|r| r.sets.iter().find(|s| s.ood_set == set).unwrap())
                .collect();
            let all: Vec<f64> = per_run
                .iter()
                .flat_map(|s| s.draws.iter().map(|d| d.auroc))
                .collect();
            let pooled = MeanStd::of(&all);
            assert!(close(f64_at(df, "auroc_mean", i).unwrap(), pooled.mean));
            assert!(close(f64_at(df, "auroc_std", i).unwrap(), pooled.std));
            let fprs: Vec<f64> = per_run
                .iter()
                .flat_map(|s| s.draws.iter().map(|d| d.fpr))
                .collect();
            let fp = MeanStd::of(&fprs);
            assert!(close(
                f64_at(df, "fpr90_closest_out_mean", i).unwrap(),
                fp.mean
            ));
            assert!(close(
                f64_at(df, "fpr90_closest_out_std", i).unwrap(),
                fp.std
            ));
            // Sample standard deviation of the two runs' means.
            let (a, b) = (per_run[0].auroc.mean, per_run[1].auroc.mean);
            assert!(close(
                f64_at(df, "auroc_seed_std", i).unwrap(),
                (a - b).abs() / 2f64.sqrt()
            ));
            // The paper's Table 8 number and our delta in points.
            let paper = oe::paper::nlp_lookup("sst", set, method).unwrap();
            assert_eq!(f64_at(df, "paper_auroc_pct", i), Some(paper.auroc));
            assert!(close(
                f64_at(df, "delta_auroc_pp", i).unwrap(),
                pooled.mean * 100.0 - paper.auroc
            ));
            assert_eq!(str_at(df, "seeds", i), "1,2");
            assert_eq!(df.column("runs").unwrap().u64().unwrap().get(i), Some(2));
            assert_eq!(str_at(df, "warning", i), "");
            assert_eq!(
                df.column("paper_comparable")
                    .unwrap()
                    .bool()
                    .unwrap()
                    .get(i),
                Some(true)
            );
        }
        let i = row(df, method, "mean");
        let want = runs.iter().map(|r| r.mean_over_sets().1).sum::<f64>() / 2.0;
        assert!(close(f64_at(df, "auroc_mean", i).unwrap(), want));
        assert_eq!(
            f64_at(df, "auroc_std", i),
            None,
            "draw-level sd is not defined for mean rows"
        );
        let paper = oe::paper::mean_over(
            oe::paper::Table::Table8,
            "sst",
            method,
            &["imdb".into(), "snli".into()],
        )
        .unwrap();
        assert!(close(
            f64_at(df, "paper_auroc_pct", i).unwrap(),
            paper.auroc
        ));
    }
}

#[test]
fn mixed_protocols_and_ratios_are_flagged_and_strict_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    make_eval(root, "a/baseline", "baseline", 1, 0.8, Protocol::Paper, 5);
    make_eval(root, "b/baseline", "baseline", 2, 0.8, Protocol::Clean, 5);
    make_eval(root, "c/oe", "oe", 1, 2.0, Protocol::Paper, 5);
    make_eval(root, "d/oe", "oe", 2, 2.0, Protocol::Paper, 2);
    let files = aggregate::find_results(&[root.to_path_buf()]).unwrap();
    let agg = aggregate::aggregate(&files, &[GroupKey::Dataset, GroupKey::Method]).unwrap();
    let df = &agg.frame;
    for set in ["snli", "imdb", "mean"] {
        let w = str_at(df, "warning", row(df, "baseline", set));
        assert!(w.contains("mixes protocol: clean, paper"), "{w}");
        let w = str_at(df, "warning", row(df, "oe", set));
        assert!(w.contains("mixes ratio: 1:2, 1:5"), "{w}");
        assert_eq!(
            df.column("paper_comparable")
                .unwrap()
                .bool()
                .unwrap()
                .get(row(df, "oe", set)),
            Some(false)
        );
    }
    // Grouping by protocol and ratio separates them: no warnings.
    let agg = aggregate::aggregate(
        &files,
        &[
            GroupKey::Dataset,
            GroupKey::Method,
            GroupKey::Protocol,
            GroupKey::Ratio,
        ],
    )
    .unwrap();
    assert!(
        agg.warnings.iter().all(|w| w.is_empty()),
        "{:?}",
        agg.warnings
    );
    assert_eq!(agg.frame.height(), 4 * 3);

    // The table shows the warning column; --strict refuses.
    let mut a = args(vec![root.to_path_buf()], ReportFormat::Table, None, 0);
    a.by = vec![GroupKey::Dataset, GroupKey::Method];
    let out = oe::report::run_report(&a).unwrap();
    assert!(
        out.stdout.contains("warning") && out.stdout.contains("mixes protocol"),
        "{}",
        out.stdout
    );
    assert!(!out.warnings.is_empty());
    a.strict = true;
    let err = oe::report::run_report(&a).unwrap_err().to_string();
    assert!(
        err.contains("--strict") && err.contains("mixes protocol"),
        "{err}"
    );
}

#[test]
fn a_directory_without_results_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    make_eval(&good, "baseline", "baseline", 1, 0.8, Protocol::Paper, 5);
    let empty = tmp.path().join("unfinished-run");
    std::fs::create_dir_all(empty.join("baseline")).unwrap();
    let err = aggregate::find_results(&[good.clone(), empty.clone()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unfinished-run") && err.contains("no results"),
        "{err}"
    );
    let err = oe::report::run_report(&args(
        vec![tmp.path().join("nope")],
        ReportFormat::Table,
        None,
        0,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope"), "{err}");
    // A file that is not a results table.
    let bad = tmp.path().join("bad/eval-msp-paper");
    std::fs::create_dir_all(&bad).unwrap();
    let mut df = df!("x" => [1.0f64]).unwrap();
    ParquetWriter::new(std::fs::File::create(bad.join("results.parquet")).unwrap())
        .finish(&mut df)
        .unwrap();
    let err = oe::report::run_report(&args(
        vec![tmp.path().join("bad")],
        ReportFormat::Table,
        None,
        0,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a results table"), "{err}");
}

/// ID ~ N(0, 1), OOD ~ N(d, 1): AUROC = Φ(d/√2); FPR at 90% recall of OOD = 1 − Φ(d − z₀.₉).
/// Over many seeded replications the 95% percentile intervals should cover the truth ~95% of times.
#[test]
fn bootstrap_intervals_cover_the_known_answer_near_nominal() {
    let d = 1.0;
    let true_auroc = phi(d / 2f64.sqrt());
    let z90 = 1.2815515655446004;
    let true_fpr = 1.0 - phi(d - z90);
    let reps = 200;
    let mut hit = [0usize; 2];
    let mut width = 0.0;
    for k in 0..reps {
        let mut rng = ChaCha8Rng::seed_from_u64(10_000 + k);
        let ins = normals(&mut rng, 300, 0.0);
        let oods = normals(&mut rng, 200, d);
        let cfg = BootstrapConfig {
            resamples: 200,
            seed: k,
            ..Default::default()
        };
        let iv = bootstrap::bootstrap_intervals(&ins, &oods, &cfg).unwrap();
        hit[0] += iv.auroc.contains(true_auroc) as usize;
        hit[1] += iv.fpr.contains(true_fpr) as usize;
        width += (iv.auroc.hi - iv.auroc.lo) / reps as f64;
        assert!(iv.auroc.lo <= iv.point[1] && iv.point[1] <= iv.auroc.hi);
    }
    let cov = hit.map(|h| h as f64 / reps as f64);
    // Binomial sd at 0.95 with 200 trials ≈ 0.015.
    assert!(
        (0.89..=0.99).contains(&cov[0]),
        "AUROC coverage {cov:?}, mean width {width}"
    );
    assert!((0.87..=0.995).contains(&cov[1]), "FPR90 coverage {cov:?}");
    // Width ≈ 2·1.96·se(AUROC); se ≈ 0.022 here, so the width is ~0.09.
    assert!((0.05..0.14).contains(&width), "width {width}");
    // Seeded: the same seed gives the same interval, another seed a different one.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (ins, oods) = (normals(&mut rng, 100, 0.0), normals(&mut rng, 50, d));
    let cfg = BootstrapConfig {
        resamples: 100,
        seed: 3,
        ..Default::default()
    };
    let a = bootstrap::bootstrap_intervals(&ins, &oods, &cfg).unwrap();
    assert_eq!(
        a,
        bootstrap::bootstrap_intervals(&ins, &oods, &cfg).unwrap()
    );
    let b =
        bootstrap::bootstrap_intervals(&ins, &oods, &BootstrapConfig { seed: 4, ..cfg }).unwrap();
    assert_ne!(a.auroc, b.auroc);
}

#[test]
fn html_report_with_plots_and_intervals() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    for seed in [1u64, 2] {
        make_eval(
            &runs,
            &format!("s{seed}/baseline"),
            "baseline",
            seed,
            0.8,
            Protocol::Paper,
            5,
        );
        make_eval(
            &runs,
            &format!("s{seed}/oe"),
            "oe",
            seed,
            2.0,
            Protocol::Paper,
            5,
        );
    }
    let page = tmp.path().join("out/report.html");
    let out = oe::report::run_report(&args(
        vec![runs.clone()],
        ReportFormat::Html,
        Some(page.clone()),
        200,
    ))
    .unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.len() > 10_000);
    assert!(html.contains("<table") && html.contains("<svg") && html.contains("AUROC"));
    assert!(html.contains("95% CI"));
    // 2 sets × (ROC + PR) + 4 runs × 2 sets histograms, each as PNG and SVG.
    let plots = tmp.path().join("out/report-plots");
    let pngs: Vec<PathBuf> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(pngs.len(), 2 * 2 + 4 * 2, "{pngs:?}");
    for p in &pngs {
        let bytes = std::fs::read(p).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5_000,
            "{}",
            p.display()
        );
        let svg = std::fs::read_to_string(p.with_extension("svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text") && svg.len() > 2_000);
    }
    assert!(plots.join("roc-sst-gru-msp-paper-snli.png").is_file());
    assert_eq!(out.written[0], page);
    assert!(out.warnings.is_empty());

    // CSV carries the intervals; they bracket the point estimate for AUROC.
    let csv_path = tmp.path().join("out/agg.csv");
    oe::report::run_report(&args(
        vec![runs.clone()],
        ReportFormat::Csv,
        Some(csv_path.clone()),
        200,
    ))
    .unwrap();
    let df = CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(csv_path))
        .unwrap()
        .finish()
        .unwrap();
    for i in 0..df.height() {
        let (lo, m, hi) = (
            f64_at(&df, "auroc_ci_lo", i).unwrap(),
            f64_at(&df, "auroc_mean", i).unwrap(),
            f64_at(&df, "auroc_ci_hi", i).unwrap(),
        );
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        assert!(f64_at(&df, "fpr90_closest_out_ci_lo", i).is_some());
    }
    // Markdown and Parquet.
    let md = oe::report::run_report(&args(vec![runs.clone()], ReportFormat::Md, None, 0))
        .unwrap()
        .stdout;
    assert!(
        md.starts_with("| dataset | method | score | OOD set | runs |"),
        "{md}"
    );
    let pq = tmp.path().join("out/agg.parquet");
    oe::report::run_report(&args(
        vec![runs],
        ReportFormat::Parquet,
        Some(pq.clone()),
        0,
    ))
    .unwrap();
    assert!(std::fs::metadata(pq).unwrap().len() > 1000);
}

/// Overwrites the middle of a Parquet file (its data pages) with garbage, keeping the footer: the
/// schema reads, the data does not.
fn corrupt_pages(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let data_end = n - 8 - footer;
    for b in &mut bytes[8..data_end - 8] {
        *b = 0xA5;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupted_results_page_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    make_eval(&good, "baseline", "baseline", 1, 0.8, Protocol::Paper, 5);
    let bad = tmp.path().join("bad");
    make_eval(&bad, "oe", "oe", 1, 1.2, Protocol::Paper, 5);
    let files = aggregate::find_results(std::slice::from_ref(&bad)).unwrap();
    assert_eq!(files.len(), 1);
    corrupt_pages(&files[0]);
    let err = oe::report::run_report(&args(
        vec![good.clone(), bad.clone()],
        ReportFormat::Table,
        None,
        0,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains(&files[0].display().to_string()), "{err}");
    // Per-example scores too.
    let scores = files[0].with_file_name("scores.parquet");
    corrupt_pages(&scores);
    let err = aggregate::load_scores(scores.parent().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&scores.display().to_string()), "{err}");
    // And the reader `monitor` uses for scored Parquet files.
    let err = oe::text::score::parquet::read_parquet(&scores)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&scores.display().to_string()), "{err}");
}

/// `report -o` a FIFO writes the report into it (a reader gets it) instead of replacing the FIFO.
#[test]
fn report_output_to_a_fifo_writes_into_it() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    make_eval(&run, "baseline", "baseline", 1, 0.8, Protocol::Paper, 5);
    let fifo = tmp.path().join("report.md");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    oe::report::run_report(&args(vec![run], ReportFormat::Md, Some(fifo.clone()), 0)).unwrap();
    let text = reader.join().unwrap();
    assert!(text.contains("snli"), "{text}");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}
