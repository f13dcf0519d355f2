//! `oe-text`: Outlier Exposure for text classifiers. A thin layer over the `oe` library: each
//! command is `args.request()`, then the library's `run_*`, then printing.

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::device;
use oe::cli::text::{CompareArgs, EvalCommandArgs, TrainArgs};
use oe::cli::{DeviceArgs, MetricsArgs};
use oe::progress::{Progress, Style};
use std::process::ExitCode;

mod common;

#[derive(Parser, Debug)]
#[command(
    name = "oe-text",
    version,
    about = "Out-of-distribution detection for text classifiers with Outlier Exposure",
    long_about = "Out-of-distribution detection for text classifiers with Outlier Exposure \
(Hendrycks, Mazeika & Dietterich, ICLR 2019).\n\nAnomaly scores are oriented so that higher always \
means more anomalous; every metric names its positive class (OOD-positive by default, as the paper)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a baseline and (with --oe) an OE model, then evaluate both against every OOD set.
    Train(Box<TrainArgs>),
    /// Evaluate a model directory (or released weights) against OOD sets.
    Eval(Box<EvalCommandArgs>),
    /// Datasets: list, show, fetch, verify.
    Data(oe::cli::data::DataArgs),
    /// AUROC, AUPR, FPR at a TPR level and detection error from two files of anomaly scores.
    Metrics(MetricsArgs),
    /// Show which device --device would select, and why.
    Device(DeviceArgs),
    /// Score text files, directories or standard input with a model directory (streaming, in input
    /// order): anomaly score, predicted class, and is_ood with --threshold.
    Score(Box<oe::cli::score::ScoreArgs>),
    /// Serve the model over HTTP (JSON): POST /v1/score, GET /v1/model, /healthz, /readyz, /metrics.
    Serve(Box<oe::cli::score::ServeArgs>),
    /// Drift in a scored file: OOD rate, small-p-value share and p-value histogram per window.
    Monitor(oe::cli::score::MonitorArgs),
    /// Store the score threshold that keeps --tpr of held-out in-distribution validation texts.
    Calibrate(oe::cli::score::CalibrateArgs),
    /// Aggregate the results of many runs (text and vision): tables vs the paper, bootstrap
    /// intervals, plots, HTML.
    Report(oe::cli::report::ReportArgs),
    /// Detectors × training (baseline, OE, energy-bounded OE) × model (GRU, transformer, MiniLM) on
    /// every OOD set: trains what is missing, writes compare.csv / compare.md and per-model results.
    Compare(Box<CompareArgs>),
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(args) => {
            let req = args.request(device(&args.device, args.quiet)?)?;
            let mut progress = Progress::new(Style::detect(args.quiet));
            let out = oe::text::pipeline::run_train(&req, &mut progress)
                .with_context(|| format!("training run in {}", req.out_dir.display()))?;
            print!("{}", out.table);
        }
        Command::Compare(args) => {
            let runs = args.runs(device(&args.train.device, args.train.quiet)?)?;
            let out_dir = args.out_dir();
            let mut progress = Progress::new(Style::detect(args.train.quiet));
            let out =
                oe::text::compare::run_compare(&runs, &args.detectors, &out_dir, &mut progress)
                    .with_context(|| format!("comparison in {}", out_dir.display()))?;
            print!("{}", out.table);
            eprintln!(
                "results: {} and {} (per-model results: oe-text report {})",
                out.csv.display(),
                out.markdown.display(),
                out_dir.display()
            );
        }
        Command::Eval(args) => {
            let req = args.request(device(&args.device, false)?)?;
            let mut progress = Progress::new(Style::detect(false));
            let out = oe::text::pipeline::run_eval(&req, &mut progress).context("evaluating")?;
            print!("{}", out.table);
            eprintln!("results: {}", out.results_dir.display());
        }
        Command::Data(args) => {
            let (root, req) = args.request();
            let out = oe::text::data::command::run_data(&root, &req)?;
            print!("{}", out.text);
            if !out.failed.is_empty() {
                anyhow::bail!("verification failed for: {}", out.failed.join(", "));
            }
        }
        Command::Metrics(args) => {
            let out =
                oe::metrics::files::run_metrics(&args.request()?).context("computing metrics")?;
            print!("{out}");
        }
        Command::Device(args) => println!("{}", args.select()?.description),
        Command::Score(args) => {
            let req = args.request(device(&args.device, args.quiet)?)?;
            let out = oe::text::pipeline::run_score(&req).context("scoring")?;
            if !args.quiet {
                if let Some(n) = &out.threshold_note {
                    eprintln!("{n}");
                }
                eprintln!("{}", out.summary.render());
                if let Some(p) = &out.output {
                    eprintln!("wrote {}", p.display());
                }
            }
        }
        Command::Serve(args) => {
            let req = args.request(device(&args.device, false)?)?;
            oe::text::serve::run(
                &req,
                |addr| {
                    eprintln!(
                        "listening on http://{addr} (POST /v1/score; SIGTERM or Ctrl-C stops)"
                    )
                },
                shutdown_signal(),
            )
            .context("serving")?;
            eprintln!("stopped: requests in flight were answered");
        }
        Command::Monitor(args) => {
            let out = oe::text::score::monitor::run_monitor(&args.request()?)?;
            print!("{}", out.table);
            if let Some(p) = out.plot {
                eprintln!("wrote {}", p.display());
            }
        }
        Command::Calibrate(args) => {
            let req = args.request(device(&args.device, false)?)?;
            let (_, line) = oe::text::calibrate::run_calibrate(&req).context("calibrating")?;
            println!("{line}");
        }
        Command::Report(args) => {
            let out = oe::report::run_report(&args.request()).context("building the report")?;
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", out.stdout);
            if let Some(first) = out.written.first() {
                eprintln!(
                    "wrote {} file(s), e.g. {}",
                    out.written.len(),
                    first.display()
                );
            }
        }
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    common::main(run)
}
