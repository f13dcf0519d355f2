//! `oe-vision`: Outlier Exposure for image classifiers. A thin layer over the `oe` library.

use clap::{Parser, Subcommand};
use oe::cli::{DeviceArgs, MetricsArgs};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "oe-vision",
    version,
    about = "Out-of-distribution detection for image classifiers with Outlier Exposure"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// AUROC, AUPR, FPR at a TPR level (use --tpr 0.95 for the paper's vision FPR95).
    Metrics(MetricsArgs),
    /// Show which device --device would select, and why.
    Device(DeviceArgs),
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
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
