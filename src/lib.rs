//! `oe`: anomaly detection with Outlier Exposure (Hendrycks, Mazeika & Dietterich, ICLR 2019).
//!
//! One shared core, two equal wings (`text`, `vision`) over it, and the command-line layer on top;
//! the `oe-text` and `oe-vision` binaries only parse flags, call `request()` and a `run_*`
//! function, and print. Imports point down this list: `cli` → `text`, `vision` → `report`,
//! `results`, `rundir`, `eval` → `detect`, `train`, `datasets`, `paper`, `metrics`, `loss` → `io`,
//! `device`, `error`. `text` and `vision` never import each other.
//!
//! The shared core:
//! - [`error`]: one error type with file / line constructors.
//! - [`io`]: atomic writes (with the usual permissions) and score files.
//! - [`checksum`]: `FILE.sha256` records of the files that define a model, checked on load.
//! - [`device`]: `--device auto|cpu|cuda|cuda:N` and run-time CUDA loading.
//! - [`loss`]: the OE loss (cross-entropy to uniform) and the energy-bounded alternative.
//! - [`metrics`]: AUROC, AUPR, FPR at a TPR level, detection error, calibration; pure Rust.
//! - [`paper`]: the paper's tables (text Tables 8 and 2, vision Table 7) and default settings.
//! - [`datasets`]: dataset manifests, fetching and verification.
//! - [`detect`]: the one [`detect::Detector`] type: logit scores and feature-space detectors;
//!   **higher always means more anomalous**.
//! - [`train`]: the phase driver, progress events, checkpoint files, seeds, optimisers.
//! - [`eval`]: evaluation settings and results shared by both wings, and the one draw formula.
//! - [`rundir`]: the model-directory protocol (shared `run.json` header, finished / interrupted).
//! - [`results`]: the one results schema written per evaluation.
//! - [`report`]: `oe-text report`, aggregating results of any runs (text and vision).
//! - [`progress`]: renders progress events (bars on a terminal, plain lines otherwise).
//! - [`interrupt`]: graceful stops on SIGTERM / SIGUSR1 (preemption, time limits) and Slurm requeue.
//! - [`cluster`]: sweeps (a grid of training runs) and Slurm array scripts for sweeps and sharded scoring.
//!
//! The wings:
//! - [`text`]: datasets, tokenizers, GRU / transformer / MiniLM, training step, protocols, model
//!   directories, calibration, batch scoring, the comparison grid, and the commands.
//! - [`vision`]: image datasets, augmentation, synthetic OOD sets, Wide ResNets, training step,
//!   protocol, model directories, benchmark, and the commands.
//!
//! On top: [`cli`], clap argument structs and their validation into requests.

pub mod checksum;
pub mod cli;
pub mod cluster;
pub mod datasets;
pub mod detect;
pub mod device;
pub mod error;
pub mod eval;
pub mod interrupt;
pub mod io;
pub mod loss;
pub mod metrics;
pub mod paper;
pub mod progress;
pub mod report;
pub mod results;
pub mod rundir;
pub mod text;
pub mod train;
pub mod vision;

pub use error::{OeError, Result};
