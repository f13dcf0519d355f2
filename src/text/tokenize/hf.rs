//! Subword tokenizers through the `tokenizers` crate: training WordPiece or BPE on the
//! in-distribution training text by the project's definitions (`vocab/wordpiece-10k.json`,
//! `vocab/bpe-10k.json`, compiled in), and reading a Hugging Face `tokenizer.json`.
//!
//! The paper's models are word-level ([`super::WordVocab`]); `oe-text train --tokenizer
//! wordpiece|bpe` trains one of these for a model trained from scratch, and the model directory
//! keeps it as `tokenizer.json`, so it evaluates and scores like any other model.

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

const WORDPIECE_DEFINITION: &str = include_str!("../../../vocab/wordpiece-10k.json");
const BPE_DEFINITION: &str = include_str!("../../../vocab/bpe-10k.json");

/// The project's definition of a subword vocabulary (`vocab/<kind>-10k.json`, compiled in).
pub fn definition(kind: SubwordKind) -> SubwordConfig {
    let (name, text) = match kind {
        SubwordKind::WordPiece => ("vocab/wordpiece-10k.json", WORDPIECE_DEFINITION),
        SubwordKind::Bpe => ("vocab/bpe-10k.json", BPE_DEFINITION),
    };
    let cfg: SubwordConfig =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{name} (compiled in): {e}"));
    assert_eq!(cfg.kind, kind, "{name} defines another kind");
    cfg
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

/// Parses `tokenizer.json` bytes with the file's own padding and truncation switched off (a Hugging
/// Face `tokenizer.json` often pads every text to a fixed length; our batches pad, and long texts are
/// cut by the caller).
pub fn parse_unpadded(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    let mut tk: Tokenizer = std::str::from_utf8(bytes)
        .map_err(|e| OeError::Data(format!("{}: not UTF-8 ({e})", path.display())))?
        .parse()
        .map_err(|e| OeError::Data(format!("{}: not a tokenizer.json ({e})", path.display())))?;
    tk.with_padding(None);
    tk.with_truncation(None)
        .map_err(|e| OeError::Config(format!("{}: {e}", path.display())))?;
    Ok(tk)
}

/// The `tokenizer.json` text of a tokenizer (what a model directory stores).
pub fn to_json(tk: &Tokenizer) -> Result<String> {
    tk.to_string(false)
        .map_err(|e| tk_err("writing tokenizer.json", e))
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
                vocab_size: 60,
                ..definition(kind)
            };
            let tk = train_subword(TEXTS, &cfg).unwrap();
            assert_eq!(tk.token_to_id(SUBWORD_UNK), Some(0));
            assert_eq!(tk.token_to_id(SUBWORD_PAD), Some(1));
            let ids = tk
                .encode("The movie was WONDERFUL", true)
                .unwrap()
                .get_ids()
                .to_vec();
            assert!(!ids.is_empty());
            // Lower-cased by the definition's normaliser: the same ids as lower-case text.
            let lower = tk
                .encode("the movie was wonderful", true)
                .unwrap()
                .get_ids()
                .to_vec();
            assert_eq!(ids, lower);
            let json = to_json(&tk).unwrap();
            let tk2 = parse_unpadded(json.as_bytes(), Path::new("tokenizer.json")).unwrap();
            assert_eq!(
                tk2.encode("The movie was WONDERFUL", true)
                    .unwrap()
                    .get_ids(),
                ids.as_slice()
            );
        }
    }

    #[test]
    fn project_definitions_parse() {
        for (f, kind) in [
            ("wordpiece-10k.json", SubwordKind::WordPiece),
            ("bpe-10k.json", SubwordKind::Bpe),
        ] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("vocab").join(f);
            let from_file = load_subword_config(&p).unwrap();
            assert_eq!(from_file.vocab_size, 10_000);
            assert_eq!(from_file.kind, kind);
            assert_eq!(definition(kind).vocab_size, 10_000);
        }
        assert_eq!("BPE".parse::<SubwordKind>().unwrap(), SubwordKind::Bpe);
        assert!("sentencepiece".parse::<SubwordKind>().is_err());
    }

    #[test]
    fn bad_tokenizer_json_is_an_error() {
        let e = parse_unpadded(b"{not json", Path::new("x/tokenizer.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
