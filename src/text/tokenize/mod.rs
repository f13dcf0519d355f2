//! Tokenisation: the reference's word-level vocabulary ([`WordVocab`], [`LabelVocab`]) and
//! subword tokenizers from the `tokenizers` crate ([`hf`]).
//!
//! The word-level tokenizer is Python's `str.split()` (torchtext's default), i.e.
//! [`str::split_whitespace`]; casing is decided by the data loaders (`crate::text::data::TextOptions`).

pub mod encoder;
pub mod hf;
pub mod vocab;

pub use encoder::TextEncoder;
pub use vocab::{LabelVocab, WordVocab};

/// The reference's tokenizer: whitespace split.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
}
