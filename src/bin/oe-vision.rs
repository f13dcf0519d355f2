//! `oe-vision`: Outlier Exposure for image classifiers. A thin layer over the `oe` library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use oe::cli::{DeviceArgs, MetricsArgs};
use oe::progress::{Progress, Style};
use oe::vision::cli::{BenchArgs, VisionEvalCommandArgs, VisionTrainArgs};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "oe-vision",
    version,
    about = "Out-of-distribution detection for image classifiers with Outlier Exposure",
    long_about = "Out-of-distribution detection for image classifiers with Outlier Exposure \
(Hendrycks, Mazeika & Dietterich, ICLR 2019): Wide ResNets on CIFAR-10/100, SVHN, Tiny ImageNet or \
image folders, with the paper's defaults (protocol.md §3). Anomaly scores are oriented so that higher \
means more anomalous; FPR is at 95% TPR with OOD as the positive class."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a baseline and (with --oe) an OE model, then evaluate both against the OOD sets.
    Train(Box<VisionTrainArgs>),
    /// Evaluate a model directory against OOD sets.
    Eval(Box<VisionEvalCommandArgs>),
    /// Images per second of WRN training and evaluation steps on synthetic data.
    Bench(BenchArgs),
    /// AUROC, AUPR, FPR at a TPR level (use --tpr 0.95 for the paper's vision FPR95).
    Metrics(MetricsArgs),
    /// Show which device --device would select, and why.
    Device(DeviceArgs),
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(args) => {
            let dev = args.device.select(args.quiet)?;
            let req = args.request(dev)?;
            let mut progress = Progress::new(Style::detect(args.quiet));
            let out = oe::vision::pipeline::run_train(&req, &mut progress)
                .with_context(|| format!("training run in {}", req.out_dir.display()))?;
            print!("{}", out.table);
        }
        Command::Eval(args) => {
            let dev = args.device.select(false)?;
            let cfg = args.eval.config()?;
            let m = oe::vision::pipeline::VisionModel::load(&args.model, dev)?;
            let root = args.data.root();
            let opts = oe::vision::data::InOptions {
                svhn_extra: false,
                size: Some(m.config.image_size),
            };
            let ind = oe::vision::data::load_in_distribution(&m.config.in_dataset, &root, &opts)?;
            let mut test = ind.test;
            if let Some(n) = args.max_test {
                test = oe::vision::pipeline::sample(&test, n);
            }
            let val = (m.config.validation_examples > 0).then(|| {
                let idx =
                    oe::vision::data::validation_indices(&m.config.in_dataset, ind.train.len());
                ind.train.subset(&idx)
            });
            let method = args.method.clone().unwrap_or_else(|| {
                if m.config.method == oe::train::Method::Baseline {
                    "baseline".into()
                } else {
                    "oe".into()
                }
            });
            let mut progress = Progress::new(Style::detect(false));
            let ood = oe::vision::pipeline::build_ood_sets(
                args.eval.ood.as_deref(),
                &m.config.in_dataset,
                &root,
                m.config.preset,
                m.config.image_size,
                test.len(),
                &cfg,
                &mut progress,
            )?;
            let (report, out) = oe::vision::pipeline::evaluate_model(
                &m,
                &test,
                val.as_ref(),
                &ood,
                &cfg,
                &method,
                !args.eval.no_calibration,
            )?;
            print!(
                "{}",
                oe::vision::report::comparison_table(
                    &m.config.in_dataset,
                    &[(method.as_str(), &report)]
                )
            );
            eprintln!("results: {}", out.display());
        }
        Command::Bench(args) => {
            let dev = args.device.select(args.json)?;
            let r = oe::vision::bench::run(&args.config(), dev)?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("model {} on {}", r.model, r.device);
                println!(
                    "  train (in {} + OE {} per step): {:.0} images/s ({:.1} ms/step)",
                    r.batch, r.oe_batch, r.train_ips, r.train_step_ms
                );
                if let Some(p) = r.train_pipeline_ips {
                    println!("  train with CPU augmentation + prefetch: {p:.0} images/s");
                }
                println!(
                    "  eval (batch {}): {:.0} images/s",
                    r.eval_batch, r.eval_ips
                );
            }
        }
        Command::Metrics(args) => print!("{}", oe::cli::run_metrics(&args)?),
        Command::Device(args) => println!("{}", oe::device::resolve(args.device)?.description),
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
