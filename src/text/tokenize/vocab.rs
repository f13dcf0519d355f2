//! Word-level vocabularies exactly as legacy torchtext (~0.3) built them for the reference code.
//!
//! `Field.build_vocab(train, max_size=10000)`: the counter of whitespace tokens (`str.split()`) over the
//! training examples, specials removed from it, `<unk>` = 0 and `<pad>` = 1 first, then tokens by
//! frequency descending with ties in sorted string order (Python compares code points, which is the
//! byte order of UTF-8, i.e. Rust's `str` order), at most `max_size` non-special tokens, `min_freq` = 1.

use crate::error::{OeError, Result};
use rustc_hash::FxHashMap as HashMap;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Counts tokens and sorts them by the torchtext rule: frequency descending, ties in string order.
fn sorted_by_frequency<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut counts: HashMap<&'a str, usize> = HashMap::default();
    for t in items {
        *counts.entry(t).or_insert(0) += 1;
    }
    let mut v: Vec<(&str, usize)> = counts.into_iter().collect();
    v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WordVocabRepr {
    format: String,
    unk: String,
    pad: String,
    tokens: Vec<String>,
}

/// A word vocabulary: `<unk>` = 0, `<pad>` = 1, then the training tokens. Saved as JSON
/// (`{"format": "oe-word-vocab-v1", "tokens": [...]}`), so a model directory is self-contained.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "WordVocabRepr", into = "WordVocabRepr")]
pub struct WordVocab {
    tokens: Vec<String>,
    /// Token → id, with rustc-hash's FxHash rather than SipHash: every token of every text is looked
    /// up here (scoring and evaluation tokenise millions), and the keys are the vocabulary's own,
    /// so a hash that resists chosen keys buys nothing.
    index: HashMap<String, i64>,
}

impl From<WordVocab> for WordVocabRepr {
    fn from(v: WordVocab) -> Self {
        WordVocabRepr {
            format: WordVocab::FORMAT.into(),
            unk: WordVocab::UNK_TOKEN.into(),
            pad: WordVocab::PAD_TOKEN.into(),
            tokens: v.tokens,
        }
    }
}

impl TryFrom<WordVocabRepr> for WordVocab {
    type Error = String;
    fn try_from(r: WordVocabRepr) -> std::result::Result<Self, String> {
        if r.format != WordVocab::FORMAT {
            return Err(format!(
                "unknown vocabulary format `{}` (expected `{}`)",
                r.format,
                WordVocab::FORMAT
            ));
        }
        WordVocab::from_tokens(r.tokens).map_err(|e| e.to_string())
    }
}

impl WordVocab {
    pub const UNK: i64 = 0;
    pub const PAD: i64 = 1;
    pub const UNK_TOKEN: &'static str = "<unk>";
    pub const PAD_TOKEN: &'static str = "<pad>";
    const FORMAT: &'static str = "oe-word-vocab-v1";

    /// torchtext `build_vocab(max_size, min_freq=1)`; tokens are `str::split_whitespace` pieces.
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, max_size: usize) -> Self {
        let sorted = sorted_by_frequency(texts.into_iter().flat_map(str::split_whitespace));
        let mut tokens = vec![Self::UNK_TOKEN.to_string(), Self::PAD_TOKEN.to_string()];
        tokens.extend(
            sorted
                .into_iter()
                .filter(|(t, _)| *t != Self::UNK_TOKEN && *t != Self::PAD_TOKEN)
                .take(max_size)
                .map(|(t, _)| t.to_string()),
        );
        Self::from_tokens(tokens).expect("built vocabulary is valid")
    }

    /// A vocabulary from its full token list (index = position); the first two must be `<unk>`, `<pad>`.
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self> {
        if tokens.len() < 2 || tokens[0] != Self::UNK_TOKEN || tokens[1] != Self::PAD_TOKEN {
            return Err(OeError::Data(
                "a word vocabulary must start with `<unk>`, `<pad>`".into(),
            ));
        }
        let mut index = HashMap::with_capacity_and_hasher(tokens.len(), Default::default());
        for (i, t) in tokens.iter().enumerate() {
            if index.insert(t.clone(), i as i64).is_some() {
                return Err(OeError::Data(format!(
                    "token `{t}` appears twice in the vocabulary"
                )));
            }
        }
        Ok(WordVocab { tokens, index })
    }

    /// Index of one token; out-of-vocabulary tokens give [`Self::UNK`].
    pub fn id(&self, token: &str) -> i64 {
        self.index.get(token).copied().unwrap_or(Self::UNK)
    }

    /// Whitespace tokens to indices, OOV -> 0. No padding, no truncation.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        text.split_whitespace().map(|t| self.id(t)).collect()
    }

    /// Like [`Self::encode`] but keeps only the first `max_tokens` tokens (torchtext `fix_length`).
    pub fn encode_truncated(&self, text: &str, max_tokens: Option<usize>) -> Vec<i64> {
        let it = text.split_whitespace().map(|t| self.id(t));
        match max_tokens {
            Some(n) => it.take(n).collect(),
            None => it.collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Writes the vocabulary as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| OeError::Data(format!("serialising vocabulary: {e}")))?;
        crate::io::write_atomic(path, &json)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| OeError::parse(path, e.line(), e.to_string()))
    }

    /// SHA-256 (hex) of the token list joined by `\n`: identifies a vocabulary independently of
    /// its file formatting.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if i > 0 {
                h.update(b"\n");
            }
            h.update(t.as_bytes());
        }
        crate::io::hex(&h.finalize())
    }
}

/// Class labels in the reference's order: torchtext `Field(sequential=False)` builds a vocabulary
/// `[<unk>, labels by training frequency desc, ties in sorted order]` and the code uses `label - 1`,
/// so class index = rank among the training labels.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelVocab {
    names: Vec<String>,
}

impl LabelVocab {
    pub fn build<'a>(labels: impl IntoIterator<Item = &'a str>) -> Self {
        LabelVocab {
            names: sorted_by_frequency(labels)
                .into_iter()
                .map(|(l, _)| l.to_string())
                .collect(),
        }
    }

    /// A label vocabulary with a given order (e.g. read from a model directory).
    pub fn from_names(names: Vec<String>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if !seen.insert(n) {
                return Err(OeError::Data(format!("label `{n}` appears twice")));
            }
        }
        Ok(LabelVocab { names })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn index(&self, label: &str) -> Result<usize> {
        self.names.iter().position(|n| n == label).ok_or_else(|| {
            OeError::Data(format!(
                "unknown label `{label}`; the training labels are: {}",
                self.names.join(", ")
            ))
        })
    }

    /// Indices of many labels; the error names the position of the first unknown one.
    pub fn indices<'a>(&self, labels: impl IntoIterator<Item = &'a str>) -> Result<Vec<i64>> {
        let map: HashMap<&str, i64> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as i64))
            .collect();
        labels
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                map.get(l).copied().ok_or_else(|| {
                    OeError::Data(format!(
                        "example {}: unknown label `{l}`; the training labels are: {}",
                        i + 1,
                        self.names.join(", ")
                    ))
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchtext_order_and_specials() {
        let v = WordVocab::build(["b a c a", "c b a <unk> Z é"], 10);
        assert_eq!(v.tokens(), ["<unk>", "<pad>", "a", "b", "c", "Z", "é"]);
        assert_eq!(v.encode("a zz b"), vec![2, 0, 3]);
        let v = WordVocab::build(["b a c a", "c b a"], 2);
        assert_eq!(v.tokens(), ["<unk>", "<pad>", "a", "b"]);
        assert_eq!(v.encode_truncated("a b c", Some(2)), vec![2, 3]);
    }

    #[test]
    fn save_load_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let v = WordVocab::build(["x y y"], 10);
        let p = d.path().join("vocab.json");
        v.save(&p).unwrap();
        let w = WordVocab::load(&p).unwrap();
        assert_eq!(w.tokens(), v.tokens());
        assert_eq!(w.sha256(), v.sha256());
        assert_eq!(w.encode("y x q"), vec![2, 3, 0]);
        std::fs::write(&p, b"{\"format\":\"oe-word-vocab-v1\",\"unk\":\"<unk>\",\"pad\":\"<pad>\",\"tokens\":[\"a\"]}").unwrap();
        assert!(WordVocab::load(&p).is_err());
    }

    #[test]
    fn label_order() {
        let l = LabelVocab::build(["pos", "neg", "pos", "b", "a"]);
        assert_eq!(l.names(), ["pos", "a", "b", "neg"]);
        assert_eq!(l.index("neg").unwrap(), 3);
        let e = l.index("zzz").unwrap_err().to_string();
        assert!(e.contains("unknown label `zzz`"), "{e}");
        assert!(l
            .indices(["pos", "q"])
            .unwrap_err()
            .to_string()
            .contains("example 2"));
    }
}
