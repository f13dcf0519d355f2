//! The cross-run report (`oe-text report`): every evaluation's results ([`crate::results`]) under
//! the given directories, text and vision alike, aggregated over seeds and draws ([`aggregate`]),
//! with bootstrap intervals ([`bootstrap`]), plots ([`plots`]) and an offline HTML page ([`html`]);
//! [`command::run_report`] runs it.

pub mod aggregate;
pub mod bootstrap;
pub mod command;
pub mod html;
pub mod near_ood;
pub mod plots;

pub use command::{run_report, ReportOutput, ReportRequest};
