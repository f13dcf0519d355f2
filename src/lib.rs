//! `oe`: anomaly detection with Outlier Exposure (Hendrycks, Mazeika & Dietterich, ICLR 2019).
//!
//! The library holds everything; the `oe-text` and `oe-vision` binaries only parse flags and call it.
//!
//! - [`loss`]: the OE loss (cross-entropy to uniform) and the energy-bounded alternative.
//! - [`score`]: anomaly scores from logits; **higher always means more anomalous**.
//! - [`metrics`]: AUROC, AUPR, FPR at a TPR level, detection error, calibration; pure Rust.
//! - [`device`]: `--device auto|cpu|cuda|cuda:N` and run-time CUDA loading.
//! - [`io`]: score files and atomic writes.

pub mod cli;
pub mod compare;
pub mod data;
pub mod detectors;
pub mod device;
pub mod error;
pub mod eval;
pub mod io;
pub mod loss;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod paper;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod score;
pub mod scoring;
pub mod tokenize;
pub mod train;
pub mod vision;

pub use error::{OeError, Result};
