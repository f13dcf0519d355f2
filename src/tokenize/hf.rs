//! Subword tokenizers through the `tokenizers` crate: training WordPiece or BPE on the
//! in-distribution training text, and loading / saving a Hugging Face `tokenizer.json`.
//!
//! The paper's models are word-level ([`super::WordVocab`]); these are for the project's
//! extension models. A trained tokenizer is saved as `tokenizer.json` next to the model so that
//! a model directory is self-contained.

use crate::error::{OeError, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, Tokenizer};

/// Which subword model to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubwordKind {
    WordPiece,
    Bpe,
}

impl std::str::FromStr for SubwordKind {
    type Err = OeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "wordpiece" => Ok(SubwordKind::WordPiece),
            "bpe" => Ok(SubwordKind::Bpe),
            _ => Err(OeError::Config(format!(
                "unknown subword tokenizer `{s}` (expected wordpiece or bpe)"
            ))),
        }
    }
}

/// Options for [`train_subword`]. Special tokens: `[UNK]` (id 0) and `[PAD]` (id 1), matching the
/// word-level convention unk = 0, pad = 1.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SubwordConfig {
    pub kind: SubwordKind,
    pub vocab_size: usize,
    pub min_frequency: u64,
    /// Lower-case (and strip accents) in the normaliser.
    pub lowercase: bool,
}

impl Default for SubwordConfig {
    fn default() -> Self {
        SubwordConfig {
            kind: SubwordKind::WordPiece,
            vocab_size: 10_000,
            min_frequency: 1,
            lowercase: true,
        }
    }
}

/// Reads a [`SubwordConfig`] (JSON, e.g. `vocab/wordpiece-10k.json`).
pub fn load_subword_config(path: &Path) -> Result<SubwordConfig> {
    let bytes = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| OeError::parse(path, e.line(), e.to_string()))
}

pub const SUBWORD_UNK: &str = "[UNK]";
pub const SUBWORD_PAD: &str = "[PAD]";

fn tk_err(what: &str, e: impl std::fmt::Display) -> OeError {
    OeError::Data(format!("{what}: {e}"))
}

/// Trains a subword tokenizer on `texts` (BERT normaliser, whitespace/punctuation pre-tokeniser).
pub fn train_subword<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    cfg: &SubwordConfig,
) -> Result<Tokenizer> {
    if cfg.vocab_size < 3 {
        return Err(OeError::Config(
            "subword vocab_size must be at least 3".into(),
        ));
    }
    let specials = vec![
        AddedToken::from(SUBWORD_UNK, true),
        AddedToken::from(SUBWORD_PAD, true),
    ];
    let (mut tk, mut trainer): (Tokenizer, TrainerWrapper) = match cfg.kind {
        SubwordKind::WordPiece => {
            let model = WordPiece::builder()
                .unk_token(SUBWORD_UNK.into())
                .build()
                .map_err(|e| tk_err("building WordPiece", e))?;
            let trainer = WordPieceTrainer::builder()
                .vocab_size(cfg.vocab_size)
                .min_frequency(cfg.min_frequency)
                .show_progress(false)
                .special_tokens(specials)
                .build();
            (Tokenizer::new(model), trainer.into())
        }
        SubwordKind::Bpe => {
            let model = BPE::builder()
                .unk_token(SUBWORD_UNK.into())
                .build()
                .map_err(|e| tk_err("building BPE", e))?;
            let trainer = BpeTrainer::builder()
                .vocab_size(cfg.vocab_size)
                .min_frequency(cfg.min_frequency)
                .show_progress(false)
                .special_tokens(specials)
                .build();
            (Tokenizer::new(model), trainer.into())
        }
    };
    tk.with_normalizer(Some(BertNormalizer::new(
        true,
        true,
        Some(cfg.lowercase),
        cfg.lowercase,
    )))
    .map_err(|e| tk_err("normaliser", e))?;
    tk.with_pre_tokenizer(Some(Whitespace {}));
    if cfg.kind == SubwordKind::WordPiece {
        tk.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    }
    let texts: Vec<&str> = texts.into_iter().collect();
    tk.train(&mut trainer, texts.into_iter())
        .map_err(|e| tk_err("training the subword tokenizer", e))?;
    Ok(tk)
}

/// Loads a Hugging Face `tokenizer.json`.
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
    parse_tokenizer_json(&bytes, path)
}

/// Parses `tokenizer.json` bytes read from `path` (named in errors).
pub fn parse_tokenizer_json(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_bytes(bytes)
        .map_err(|e| OeError::parse(path, 1, format!("not a usable tokenizer.json: {e}")))
}

/// Parses `tokenizer.json` bytes with the file's own padding and truncation switched off (a Hugging
/// Face `tokenizer.json` often pads every text to a fixed length; our batches pad, and long texts are
/// cut by the caller).
pub fn parse_unpadded(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    let mut tk = parse_tokenizer_json(bytes, path)?;
    tk.with_padding(None);
    tk.with_truncation(None)
        .map_err(|e| OeError::Config(format!("{}: {e}", path.display())))?;
    Ok(tk)
}

/// Saves a tokenizer as `tokenizer.json`, atomically.
pub fn save_tokenizer_json(tk: &Tokenizer, path: &Path) -> Result<()> {
    let s = tk
        .to_string(true)
        .map_err(|e| tk_err("serialising the tokenizer", e))?;
    crate::io::write_atomic(path, s.as_bytes())
}

/// Token ids of one text (no special tokens added).
pub fn encode_ids(tk: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let enc = tk
        .encode(text, false)
        .map_err(|e| tk_err("encoding text", e))?;
    Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
}

/// Token ids of many texts, in parallel.
pub fn encode_batch_ids(tk: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<i64>>> {
    use rayon::prelude::*;
    texts.par_iter().map(|t| encode_ids(tk, t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXTS: [&str; 4] = [
        "the movie was wonderful and the acting was wonderful",
        "the plot was terrible",
        "wonderful wonderful terrible",
        "an unbelievably boring movie",
    ];

    #[test]
    fn trains_wordpiece_and_bpe_and_roundtrips_json() {
        for kind in [SubwordKind::WordPiece, SubwordKind::Bpe] {
            let cfg = SubwordConfig {
                kind,
                vocab_size: 60,
                ..Default::default()
            };
            let tk = train_subword(TEXTS, &cfg).unwrap();
            assert_eq!(tk.token_to_id(SUBWORD_UNK), Some(0));
            assert_eq!(tk.token_to_id(SUBWORD_PAD), Some(1));
            let ids = encode_ids(&tk, "The movie was WONDERFUL").unwrap();
            assert!(!ids.is_empty());
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("tokenizer.json");
            save_tokenizer_json(&tk, &p).unwrap();
            let tk2 = load_tokenizer_json(&p).unwrap();
            assert_eq!(encode_ids(&tk2, "The movie was WONDERFUL").unwrap(), ids);
        }
    }

    #[test]
    fn project_definitions_parse() {
        for f in ["wordpiece-10k.json", "bpe-10k.json"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("vocab").join(f);
            assert_eq!(load_subword_config(&p).unwrap().vocab_size, 10_000);
        }
    }

    #[test]
    fn bad_tokenizer_json_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokenizer.json");
        std::fs::write(&p, b"{not json").unwrap();
        let e = load_tokenizer_json(&p).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
