//! `oe-text`: Outlier Exposure for text classifiers. A thin layer over the `oe` library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use oe::cli::{DeviceArgs, EvalCommandArgs, MetricsArgs, TrainArgs};
use oe::progress::{Progress, Style};
use std::process::ExitCode;

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
    Data(oe::data::cli::DataArgs),
    /// AUROC, AUPR, FPR at a TPR level and detection error from two files of anomaly scores.
    Metrics(MetricsArgs),
    /// Show which device --device would select, and why.
    Device(DeviceArgs),
    /// Score text files, directories or standard input with a model directory (streaming, in input
    /// order): anomaly score, predicted class, and is_ood with --threshold.
    Score(Box<oe::scoring::cli::ScoreArgs>),
    /// Store the score threshold that keeps --tpr of held-out in-distribution validation texts.
    Calibrate(oe::scoring::cli::CalibrateArgs),
    /// Aggregate the results of many runs: tables vs the paper, bootstrap intervals, plots, HTML.
    Report(oe::cli::ReportArgs),
    /// Detectors × training (baseline, OE, energy-bounded OE) × model (GRU, transformer, MiniLM) on
    /// every OOD set: trains what is missing, writes compare.csv / compare.md and per-model results.
    Compare(Box<oe::cli::CompareArgs>),
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(args) => {
            let dev = args.device.select(args.quiet)?;
            let req = args.request(dev)?;
            let mut progress = Progress::new(Style::detect(args.quiet));
            let out = oe::pipeline::run_train(&req, &mut progress)
                .with_context(|| format!("training run in {}", req.out_dir.display()))?;
            print!("{}", out.table);
        }
        Command::Compare(args) => {
            let dev = args.train.device.select(args.train.quiet)?;
            let runs = args.runs(dev)?;
            let out_dir = args.out_dir();
            let mut progress = Progress::new(Style::detect(args.train.quiet));
            let out = oe::compare::run_compare(&runs, &args.detectors, &out_dir, &mut progress)
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
            let dev = args.device.select(false)?;
            let cfg = args.eval.config()?;
            let root = args.data.root();
            let (model, test, method) = match (&args.model, &args.weights) {
                (Some(dir), _) => {
                    let mut m = oe::pipeline::LoadedModel::load(dir, dev)?;
                    let text = m.config.text.clone();
                    let ind = oe::data::load_in_distribution(&m.config.in_dataset, &root, &text)?;
                    if cfg.detector.is_some() && m.detectors.is_none() {
                        m.fit_detectors(&ind.train)?;
                    }
                    let method = args.method.clone().unwrap_or_else(|| {
                        if m.config.method == oe::train::Method::Baseline {
                            "baseline".into()
                        } else {
                            "oe".into()
                        }
                    });
                    (m, ind.test, method)
                }
                (None, Some(w)) => {
                    let name = args.in_dataset.clone().context("--weights needs --in")?;
                    let stem = w.file_stem().and_then(|s| s.to_str()).unwrap_or("weights");
                    let out = args.out.clone().unwrap_or_else(|| {
                        std::path::PathBuf::from("runs").join(format!("weights-{stem}"))
                    });
                    let (mut m, ind) = oe::pipeline::import_weights(
                        w,
                        &name,
                        &root,
                        &args.data.text(),
                        &out,
                        dev,
                    )?;
                    if cfg.detector.is_some() && m.detectors.is_none() {
                        m.fit_detectors(&ind.train)?;
                    }
                    let method = args.method.clone().unwrap_or_else(|| {
                        if stem.contains("oe") {
                            "oe".into()
                        } else {
                            "baseline".into()
                        }
                    });
                    (m, ind.test, method)
                }
                (None, None) => anyhow::bail!("give --model DIR or --weights FILE --in NAME"),
            };
            let ood =
                oe::pipeline::load_ood_inputs(args.eval.ood.as_deref(), &root, &model.config.text)?;
            let (report, out) = oe::pipeline::evaluate_model(&model, &test, &ood, &cfg, &method)?;
            print!(
                "{}",
                oe::report::comparison_table(
                    &model.config.in_dataset,
                    &[(method.as_str(), &report)]
                )
            );
            eprintln!("results: {}", out.display());
        }
        Command::Data(args) => oe::data::cli::run_data(&args)?,
        Command::Metrics(args) => {
            let out = oe::cli::run_metrics(&args).context("computing metrics")?;
            print!("{out}");
        }
        Command::Device(args) => {
            let choice = oe::device::resolve(args.device)?;
            println!("{}", choice.description);
        }
        Command::Score(args) => {
            let dev = args.device.select(args.quiet)?;
            let m = oe::pipeline::LoadedModel::load(&args.model, dev)?;
            oe::scoring::cli::run_score(&args, &m).context("scoring")?;
        }
        Command::Calibrate(args) => {
            let dev = args.device.select(false)?;
            let m = oe::pipeline::LoadedModel::load(&args.model, dev)?;
            let (_, line) = oe::scoring::cli::run_calibrate(&args, &m).context("calibrating")?;
            println!("{line}");
        }
        Command::Report(args) => {
            let out = oe::report::run_report(&args).context("building the report")?;
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

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", oe::cli::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
