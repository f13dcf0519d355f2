//! Vision models.

pub mod wrn;

pub use wrn::{WideResNet, WrnConfig};
