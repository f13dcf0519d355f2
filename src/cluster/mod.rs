//! Beyond one machine: sweeps (a grid of training runs, one run directory per point) and Slurm
//! array scripts for sweeps and sharded scoring.
//!
//! Slurm is driven through its stable commands (`sbatch --parsable`, `scontrol`), never linked:
//! - [`sweep`]: a TOML sweep definition expands into points; each point is one `oe-text train`
//!   with its own run directory; a point's state (done / running / failed / interrupted / pending)
//!   is read from its directory alone.
//! - [`slurm`]: array scripts (`--requeue`, `--open-mode=append`, a signal before the time limit,
//!   `exec` so the program itself receives it) whose task runs exactly one point or shard by an
//!   explicit index, and a merge job chained with `afterok`.

pub mod slurm;
pub mod sweep;
