//! Evaluation metrics in pure Rust on `f64` slices (no tensors).
//!
//! Conventions, stated once and used everywhere:
//! - Inputs are *anomaly scores*: higher means more out-of-distribution (OOD).
//! - The positive class of every ranking metric is explicit ([`Positive`]). The paper's choice, and the
//!   default, is OOD-positive: AUPR is then "AUPR-Out" and "FPR at N% TPR" is the fraction of
//!   in-distribution examples flagged when N% of the OOD examples are flagged.
//! - With ID-positive, the scores are negated (in-distribution examples are ranked by *normality*), so
//!   AUPR is "AUPR-In" and FPR is the fraction of OOD examples accepted when N% of ID is accepted.
//!
//! [`ranking::Ranking`] sorts once and serves AUROC, AUPR, FPR-at-TPR and detection error.

pub mod calibration;
pub mod files;
pub mod ranking;

pub use calibration::{
    calibration_error, soft_f1, tune_temperature, CalibrationConfig, CalibrationError,
};
pub use ranking::{
    level_name, DetectionMetrics, FprAtTpr, FprRule, MetricsConfig, Positive, Ranking,
};
