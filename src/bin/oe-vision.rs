//! `oe-vision`: Outlier Exposure for image classifiers. A thin layer over the `oe` library: each
//! command is `args.request()`, then the library's `run_*`, then printing.

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::{device, out, outln};
use oe::cli::vision::{BenchArgs, VisionDataArgs, VisionEvalCommandArgs, VisionTrainArgs};
use oe::cli::{DeviceArgs, MetricsArgs};
use oe::progress::{Progress, Style};
use std::process::ExitCode;

mod common;

#[derive(Parser, Debug)]
#[command(
    name = "oe-vision",
    version,
    about = "Out-of-distribution detection for image classifiers with Outlier Exposure",
    long_about = "Out-of-distribution detection for image classifiers with Outlier Exposure \
(Hendrycks, Mazeika & Dietterich, ICLR 2019): Wide ResNets on CIFAR-10/100, SVHN, Tiny ImageNet or \
image folders, with the paper's defaults (README, \"Vision\"). Anomaly scores are oriented so that higher \
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
    /// Image datasets: list, show where files go, fetch (download + verify + unpack), verify.
    Data(VisionDataArgs),
    /// AUROC, AUPR, FPR at a TPR level (use --tpr 0.95 for the paper's vision FPR95).
    Metrics(MetricsArgs),
    /// Show which device --device would select, and why.
    Device(DeviceArgs),
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(args) => {
            common::keep_freed_memory();
            oe::interrupt::install()?;
            let req = args.request(device(&args.device, args.quiet)?)?;
            let mut progress = Progress::new(Style::detect(args.quiet));
            let out = oe::vision::pipeline::run_train(&req, &mut progress)
                .with_context(|| format!("training run in {}", req.out_dir.display()))?;
            out!("{}", out.table)?;
        }
        Command::Eval(args) => {
            common::keep_freed_memory();
            let req = args.request(device(&args.device, false)?)?;
            let mut progress = Progress::new(Style::detect(false));
            let out = oe::vision::pipeline::run_eval(&req, &mut progress).context("evaluating")?;
            out!("{}", out.table)?;
            eprintln!("results: {}", out.results_dir.display());
        }
        Command::Data(args) => {
            // A signal stops a download cleanly (its staging folder is removed).
            oe::interrupt::install()?;
            let out = oe::vision::data::manifests::run_data(&args.request())?;
            out!("{}", out.text)?;
            if !out.failed.is_empty() {
                anyhow::bail!("verification failed for: {}", out.failed.join(", "));
            }
        }
        Command::Bench(args) => {
            common::keep_freed_memory();
            let r = oe::vision::bench::run(&args.config(), device(&args.device, args.json)?)?;
            if args.json {
                outln!("{}", serde_json::to_string(&r)?)?;
            } else {
                outln!("model {} on {}", r.model, r.device)?;
                outln!(
                    "  train (in {} + OE {} per step): {:.0} images/s ({:.1} ms/step)",
                    r.batch,
                    r.oe_batch,
                    r.train_ips,
                    r.train_step_ms
                )?;
                if let Some(p) = r.train_pipeline_ips {
                    outln!(
                        "  train with CPU augmentation + prefetch ({}): {p:.0} images/s, waited {:.1}% of the time for data",
                        r.pipeline_data.as_deref().unwrap_or("synthetic"),
                        100.0 * r.data_wait_share.unwrap_or(0.0)
                    )?;
                }
                outln!(
                    "  eval (batch {}): {:.0} images/s",
                    r.eval_batch,
                    r.eval_ips
                )?;
            }
        }
        Command::Metrics(args) => out!("{}", oe::metrics::files::run_metrics(&args.request()?)?)?,
        Command::Device(args) => outln!("{}", args.select()?.description)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    common::main(run)
}
