//! One interface over the ways a model directory turns text into token ids: the paper's word-level
//! vocabulary ([`WordVocab`], saved as `vocab.json`) and a subword tokenizer (saved as a Hugging
//! Face `tokenizer.json`): a pretrained model's own, or one trained from the training text by the
//! definitions in `vocab/` ([`super::hf`]), so training, evaluation and scoring are written once.

use super::WordVocab;
use crate::error::{OeError, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokenizers::Tokenizer;

/// File name of a word vocabulary in a model directory.
pub const VOCAB_FILE: &str = "vocab.json";
/// File name of a subword tokenizer in a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Text → token ids for one model.
pub enum TextEncoder {
    /// Whitespace tokens looked up in the paper's frequency vocabulary (`<unk>` = 0, `<pad>` = 1).
    Word(WordVocab),
    /// A subword tokenizer; ids include its special tokens, if it adds any (`[CLS] ... [SEP]` for
    /// a pretrained BERT; none for one trained by [`super::hf::train_subword`]).
    Subword {
        tokenizer: Box<Tokenizer>,
        /// The `tokenizer.json` bytes as saved (the hash is over these).
        json: Vec<u8>,
        /// The model's longest input: longer texts are cut by [`TextEncoder::encode`].
        max_len: Option<usize>,
        /// The tokenizer ends every text with a special token (`[SEP]`), which a cut keeps.
        ends_with_special: bool,
    },
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextEncoder::Word(v) => write!(f, "TextEncoder::Word({} entries)", v.len()),
            TextEncoder::Subword { tokenizer, .. } => write!(
                f,
                "TextEncoder::Subword({} entries)",
                tokenizer.get_vocab_size(true)
            ),
        }
    }
}

impl TextEncoder {
    /// Loads a pretrained model's `tokenizer.json` (its own padding and truncation switched off:
    /// batches are padded by the caller, texts longer than `max_len` ids cut by
    /// [`TextEncoder::encode`]).
    pub fn subword_from_file(path: &Path, max_len: Option<usize>) -> Result<Self> {
        let json = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
        Self::subword_from_json(json, path, max_len)
    }

    fn subword_from_json(json: Vec<u8>, origin: &Path, max_len: Option<usize>) -> Result<Self> {
        let tk = super::hf::parse_unpadded(&json, origin)?;
        let ends_with_special = tk.get_post_processor().is_some();
        Ok(TextEncoder::Subword {
            tokenizer: Box::new(tk),
            json,
            max_len,
            ends_with_special,
        })
    }

    /// Trains a subword tokenizer on the training texts by `cfg` ([`super::hf::train_subword`]);
    /// texts longer than `max_len` ids are cut by [`TextEncoder::encode`].
    pub fn train_subword<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        cfg: &super::hf::SubwordConfig,
        max_len: Option<usize>,
    ) -> Result<Self> {
        let tk = super::hf::train_subword(texts, cfg)?;
        let json = super::hf::to_json(&tk)?.into_bytes();
        Self::subword_from_json(json, Path::new(TOKENIZER_FILE), max_len)
    }

    /// Loads whichever of `vocab.json` / `tokenizer.json` the model directory `dir` holds
    /// (`max_len`: the model's longest input, for a subword tokenizer).
    pub fn load_dir(dir: &Path, max_len: Option<usize>) -> Result<Self> {
        let tk = dir.join(TOKENIZER_FILE);
        if tk.exists() {
            return Self::subword_from_file(&tk, max_len);
        }
        Ok(TextEncoder::Word(WordVocab::load(&dir.join(VOCAB_FILE))?))
    }

    /// Writes the encoder into the model directory `dir` (atomically).
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        match self {
            TextEncoder::Word(v) => v.save(&dir.join(VOCAB_FILE)),
            TextEncoder::Subword { json, .. } => {
                crate::io::write_atomic(&dir.join(TOKENIZER_FILE), json)
            }
        }
    }

    /// Token ids of `text` as the model takes them: all words for a word vocabulary (callers apply
    /// `fix_length`); for a subword tokenizer, with its special tokens and cut to its `max_len`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        self.encode_checked(text).0
    }

    /// [`TextEncoder::encode`], and whether the text was cut. A subword tokenizer that fails on a
    /// text (it does not for valid UTF-8) yields no ids.
    pub fn encode_checked(&self, text: &str) -> (Vec<i64>, bool) {
        match self {
            TextEncoder::Word(v) => (v.encode(text), false),
            TextEncoder::Subword {
                tokenizer, max_len, ..
            } => {
                let mut ids: Vec<i64> = tokenizer
                    .encode(text, true)
                    .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
                    .unwrap_or_default();
                let cut = max_len.is_some_and(|m| ids.len() > m);
                if let Some(m) = max_len {
                    self.truncate(&mut ids, *m);
                }
                (ids, cut)
            }
        }
    }

    /// Cuts `ids` to at most `max` tokens: the first `max` (torchtext's `fix_length` for words);
    /// for a tokenizer that ends texts with a special token, the first `max - 1` ids and the last one
    /// (its `[SEP]`), as Hugging Face's truncation does for one sequence.
    pub fn truncate(&self, ids: &mut Vec<i64>, max: usize) {
        if ids.len() <= max {
            return;
        }
        match self {
            TextEncoder::Subword {
                ends_with_special: true,
                ..
            } => {
                *ids = crate::text::models::bert::truncate_keep_last(std::mem::take(ids), Some(max))
            }
            _ => ids.truncate(max),
        }
    }

    /// Token ids cut to `max` tokens when given.
    pub fn encode_truncated(&self, text: &str, max: Option<usize>) -> Vec<i64> {
        let mut ids = self.encode(text);
        if let Some(m) = max {
            self.truncate(&mut ids, m);
        }
        ids
    }

    /// Number of token ids (the embedding table's rows).
    pub fn len(&self) -> usize {
        match self {
            TextEncoder::Word(v) => v.len(),
            TextEncoder::Subword { tokenizer, .. } => tokenizer.get_vocab_size(true),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hex sha256 identifying the vocabulary (recorded in `run.json`, checked on load).
    pub fn sha256(&self) -> String {
        match self {
            TextEncoder::Word(v) => v.sha256(),
            TextEncoder::Subword { json, .. } => crate::io::hex(&Sha256::digest(json)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A three-word WordLevel tokenizer with `[CLS]`/`[SEP]` added by a template post-processor,
    /// written by hand (the format is Hugging Face's `tokenizer.json`).
    fn tiny_tokenizer_json() -> &'static str {
        r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
    "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6}, "unk_token": "[UNK]"}
}"#
    }

    #[test]
    fn subword_encoder_adds_specials_truncates_keeping_sep_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, tiny_tokenizer_json()).unwrap();
        let enc = TextEncoder::subword_from_file(&p, Some(5)).unwrap();
        assert_eq!(enc.encode("A b zz"), vec![2, 4, 5, 1, 3]);
        assert_eq!(enc.encode_checked("a b c a"), (vec![2, 4, 5, 6, 3], true));
        assert_eq!(enc.encode_truncated("a b c", Some(4)), vec![2, 4, 5, 3]);
        assert_eq!(enc.len(), 7);
        let out = tempfile::tempdir().unwrap();
        enc.save_dir(out.path()).unwrap();
        let back = TextEncoder::load_dir(out.path(), Some(5)).unwrap();
        assert_eq!(back.sha256(), enc.sha256());
        assert_eq!(back.encode("c"), vec![2, 6, 3]);
    }

    #[test]
    fn word_encoder_truncates_at_the_end() {
        let v = WordVocab::build(["a b b c c c"], 10);
        let enc = TextEncoder::Word(v);
        let ids = enc.encode_truncated("c b a a", Some(2));
        assert_eq!(ids, enc.encode("c b"));
        let dir = tempfile::tempdir().unwrap();
        enc.save_dir(dir.path()).unwrap();
        assert_eq!(
            TextEncoder::load_dir(dir.path(), None).unwrap().sha256(),
            enc.sha256()
        );
    }

    #[test]
    fn trained_subword_encoder_cuts_at_the_end_and_round_trips() {
        use crate::text::tokenize::hf::{definition, SubwordConfig, SubwordKind};
        let texts = [
            "the film was good",
            "the film was bad",
            "a good film",
            "a bad plot",
        ];
        for kind in [SubwordKind::WordPiece, SubwordKind::Bpe] {
            let cfg = SubwordConfig {
                vocab_size: 50,
                ..definition(kind)
            };
            let enc = TextEncoder::train_subword(texts, &cfg, Some(3)).unwrap();
            let (full, cut) = enc.encode_checked("the film was good");
            assert!(cut && full.len() == 3, "{kind:?}: {full:?}");
            let mut all = TextEncoder::train_subword(texts, &cfg, None)
                .unwrap()
                .encode("the film was good");
            assert!(all.len() > 3);
            all.truncate(3);
            assert_eq!(
                full, all,
                "{kind:?}: no special token, so the first ids are kept"
            );
            let out = tempfile::tempdir().unwrap();
            enc.save_dir(out.path()).unwrap();
            let back = TextEncoder::load_dir(out.path(), Some(3)).unwrap();
            assert_eq!(back.sha256(), enc.sha256());
            assert_eq!(back.encode("a bad film"), enc.encode("a bad film"));
        }
    }

    #[test]
    fn not_a_tokenizer_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{nope").unwrap();
        let e = TextEncoder::subword_from_file(&p, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
