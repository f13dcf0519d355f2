//! Vision: Wide ResNets trained with Outlier Exposure on CIFAR-10/100, SVHN, Tiny ImageNet or any
//! image folder (protocol.md §3), sharing the loss ([`crate::loss`]), scores ([`crate::score`]),
//! metrics ([`crate::metrics`]), evaluation types ([`crate::eval`]), progress and checkpoint helpers
//! ([`crate::train`], [`crate::progress`]) and writers ([`crate::report`], [`crate::io`]) with text.

pub mod augment;
pub mod bench;
pub mod cli;
pub mod data;
pub mod eval;
pub mod models;
pub mod pipeline;
pub mod report;
pub mod synthetic;
pub mod train;
