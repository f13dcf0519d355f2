//! Flags of `oe-text sweep` and the Slurm options shared with `score --slurm`.

use crate::cli::text::TrainArgs;
use crate::cluster::slurm::SlurmOptions;
use crate::cluster::sweep::Point;
use crate::error::{OeError, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Slurm resources and scheduling (for `sweep slurm` and `score --slurm`).
#[derive(Args, Clone, Debug, Default)]
pub struct SlurmArgs {
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit per task (Slurm syntax, e.g. 4:00:00); tasks get SIGUSR1 --signal-secs before it.
    #[arg(long)]
    pub time: Option<String>,
    /// GPUs per task.
    #[arg(long)]
    pub gpus: Option<u32>,
    /// CPUs per task.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory per task (e.g. 8G).
    #[arg(long)]
    pub mem: Option<String>,
    /// Most array tasks running at once.
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// Seconds before the time limit at which a task is warned (SIGUSR1) to checkpoint.
    #[arg(long, default_value_t = 120)]
    pub signal_secs: u32,
    /// Submit with sbatch after writing the scripts.
    #[arg(long)]
    pub submit: bool,
}

impl SlurmArgs {
    pub fn options(&self) -> Result<SlurmOptions> {
        if self.max_parallel == Some(0) || self.cpus == Some(0) {
            return Err(OeError::Config(
                "--max-parallel and --cpus must be positive".into(),
            ));
        }
        Ok(SlurmOptions {
            partition: self.partition.clone(),
            time: self.time.clone(),
            gpus: self.gpus,
            cpus: self.cpus,
            mem: self.mem.clone(),
            max_parallel: self.max_parallel,
            signal_secs: self.signal_secs,
        })
    }
}

/// `oe-text sweep`.
#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub command: SweepCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum SweepCommand {
    /// List the points of a sweep file (index, name, run directory, train flags) and write
    /// OUT/sweep.json.
    Plan { sweep: PathBuf },
    /// Run one point (--index, as a Slurm array task does) or every unfinished point one after the
    /// other; finished points are skipped, interrupted ones resume.
    Run {
        /// The sweep file (TOML: [fixed] flags and a [grid] of values).
        sweep: PathBuf,
        /// The point to run (0-based).
        #[arg(long)]
        index: Option<usize>,
    },
    /// Count done / running / failed / interrupted / pending points from the run directories.
    Status {
        /// The sweep file (TOML: [fixed] flags and a [grid] of values).
        sweep: PathBuf,
        /// List every point, not only those not done.
        #[arg(long)]
        all: bool,
    },
    /// Write OUT/slurm/sweep.sbatch: one array task per unfinished point (--requeue,
    /// --open-mode=append, a signal before the time limit); --submit submits it.
    Slurm {
        /// The sweep file (TOML: [fixed] flags and a [grid] of values).
        sweep: PathBuf,
        #[command(flatten)]
        slurm: SlurmArgs,
    },
}

#[derive(Parser, Debug)]
#[command(name = "oe-text train", no_binary_name = true)]
struct TrainOnly {
    #[command(flatten)]
    args: TrainArgs,
}

/// The `oe-text train` flags of a sweep point, parsed and checked as the command line would be.
pub fn point_train_args(sweep_file: &std::path::Path, p: &Point) -> Result<TrainArgs> {
    TrainOnly::try_parse_from(&p.args)
        .map(|t| t.args)
        .map_err(|e| {
            OeError::Config(format!(
                "{}: point {} ({}): {}",
                sweep_file.display(),
                p.index,
                p.name,
                e.render().to_string().trim()
            ))
        })
}
