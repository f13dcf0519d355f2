//! The text wing: classifiers of text and their anomaly detection, over the shared core.
//!
//! - [`data`]: exact parsers of every text dataset (one file per family) and the OOD and OE sets.
//! - [`tokenize`]: the paper's word vocabulary, trained subword vocabularies and pretrained
//!   tokenizers behind one [`tokenize::TextEncoder`].
//! - [`models`]: the paper's GRU, a transformer encoder, a BERT-family encoder for pretrained models.
//! - [`train`]: the text training step on the shared phase driver.
//! - [`protocol`]: the paper's and the clean evaluation protocols.
//! - [`model_dir`]: a text model directory (`run.json`, vocabulary, weights, detectors).
//! - [`calibrate`]: deployment thresholds from validation texts.
//! - [`score`]: streaming, batch-independent scoring of text files.
//! - [`compare`]: the detector × training × model grid.
//! - [`pipeline`]: the commands (`run_train`, `run_eval`, `run_score`).

pub mod calibrate;
pub mod compare;
pub mod data;
pub mod model_dir;
pub mod models;
pub mod pipeline;
pub mod protocol;
pub mod score;
pub mod serve;
pub mod tokenize;
pub mod train;
pub mod tune;
