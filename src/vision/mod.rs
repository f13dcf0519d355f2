//! Vision: Wide ResNets trained with Outlier Exposure on CIFAR-10/100, SVHN, Tiny ImageNet or any
//! image folder (README, "The paper's protocol: vision"), sharing the loss ([`crate::loss`]), scores ([`crate::detect::score`]),
//! metrics ([`crate::metrics`]), evaluation types ([`crate::eval`]), progress and checkpoint helpers
//! ([`crate::train`], [`crate::progress`]) and writers ([`crate::report`], [`crate::io`]) with text.

pub mod augment;
pub mod bench;
pub mod data;
pub mod model_dir;
pub mod models;
pub mod pipeline;
pub mod protocol;
pub mod synthetic;
pub mod train;
