//! The integration tests, as one test crate (so libtorch and the library link once): one module per
//! area. Tests that need the shared datasets read them from `../shared/data` (or `$OE_DATA_DIR`) and
//! skip, saying why, when they are absent.

mod bert;
mod cli;
mod cluster;
mod common;
mod compare;
mod conformal;
mod data;
mod model_dir;
mod near_ood;
mod report;
mod scoring;
mod serve;
mod slurm;
mod text;
mod vision;
