//! The text data layer: dataset manifests, finding / downloading / verifying the files, and parsers
//! that reproduce the reference preprocessing exactly (README, "The paper's protocol: text").
//!
//! Layout of a data root (the canonical one, as in `shared/data`): `sst/trees/{train,dev,test}.txt`,
//! `trec/{train_5500,TREC_10}.label`, `20newsgroups/20news-bydate.tar.gz` (or its extracted
//! folders, or Cachopo's `20ng-{train,test}-no-short.txt`), `wikitext-2/wiki.*.tokens`,
//! `wikitext-103/wiki.*.tokens`, `snli/s{1,2}.{test,dev}` (or `snli/snli_1.0/*.jsonl`),
//! `imdb/aclImdb_v1.tar.gz` (or `imdb/aclImdb/`), `multi30k/oe_train.txt`, `wmt16/wmt16_sentences`,
//! `yelp_review_full_csv/test.csv`, `eng_web_tbk/<domain>/conll/*.dev.conll` (LDC) or
//! `ewt/en_ewt-ud-dev.conllu` (Universal Dependencies). See `data-manifests/*.toml`.
//!
//! Casing and truncation ([`TextOptions`]) default to the paper's: SST cased, everything else
//! lower-cased; 20NG in-distribution text cut to its first 100 tokens.

pub mod command;
pub mod indist;
pub mod ood;
pub mod text;
pub mod wikitext;

use crate::datasets::manifest;
use crate::error::{OeError, Result};
use crate::text::tokenize::{LabelVocab, WordVocab};
use std::path::{Path, PathBuf};

/// Per-dataset text options; `None` = the paper's default for that dataset (SST cased, everything
/// else lower-cased; 20NG truncated to the first 100 tokens; others untruncated).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextOptions {
    pub lowercase: Option<bool>,
    pub max_tokens: Option<usize>,
    /// Column holding the text in user CSV / JSON-lines files (default `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Column holding the label in user datasets (default `label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
}

impl TextOptions {
    /// The text column of user files.
    pub fn text_col(&self) -> &str {
        self.text_column.as_deref().unwrap_or("text")
    }
    /// The label column of user datasets.
    pub fn label_col(&self) -> &str {
        self.label_column.as_deref().unwrap_or("label")
    }
}

/// Texts with raw string labels, in file order.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Labelled {
    pub texts: Vec<String>,
    pub labels: Vec<String>,
}

impl Labelled {
    pub fn len(&self) -> usize {
        self.texts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct InDistribution {
    pub name: String,
    pub train: Labelled,
    pub dev: Option<Labelled>,
    pub test: Labelled,
    /// The training texts before truncation, when truncation changed them (20NG). The reference
    /// builds the vocabulary from whole documents: torchtext's `fix_length` only cuts at padding
    /// time. Use [`InDistribution::vocab_texts`] / [`InDistribution::build_vocab`].
    pub train_untruncated: Option<Vec<String>>,
}

impl InDistribution {
    /// The texts the reference's `build_vocab` saw (untruncated training texts).
    pub fn vocab_texts(&self) -> impl Iterator<Item = &str> {
        match &self.train_untruncated {
            Some(v) => either_iter(v.iter()),
            None => either_iter(self.train.texts.iter()),
        }
    }

    /// The reference vocabulary: `build_vocab(train, max_size)` (max_size 10,000 in the paper).
    pub fn build_vocab(&self, max_size: usize) -> WordVocab {
        WordVocab::build(self.vocab_texts(), max_size)
    }

    /// Class order of the reference (training frequency desc, ties sorted).
    pub fn label_vocab(&self) -> LabelVocab {
        LabelVocab::build(self.train.labels.iter().map(String::as_str))
    }
}

fn either_iter<'a>(it: std::slice::Iter<'a, String>) -> impl Iterator<Item = &'a str> {
    it.map(String::as_str)
}

/// Names [`load_in_distribution`] accepts (besides user files).
pub const IN_DISTRIBUTION_NAMES: &[&str] = &[
    "sst",
    "sst-fine",
    "sst-phrases",
    "sst-fine-phrases",
    "trec",
    "trec-coarse",
    "20ng",
    "20ng-bydate",
    "clinc150",
];

/// CLINC150's `data_full.json` under a data root.
pub fn clinc150_file(root: &Path) -> PathBuf {
    root.join("clinc150").join("data_full.json")
}

/// name: "sst" (binary, sentences, neutral dropped), "sst-fine" (5 classes), "sst-phrases" /
/// "sst-fine-phrases" (training on all phrases), "trec" (50 fine labels) / "trec-coarse",
/// "20ng" (no-short, the paper's), "20ng-bydate" (subject + body, no filtering), or a path to a
/// user dataset (a folder with `train.{csv,jsonl}` and `test.*`, optionally `dev.*`, or a train
/// file whose name has `train` as a part, e.g. `reviews_train.csv`; columns `text` and `label`).
/// The files [`load_in_distribution`] reads for `name` (and, with `oe`, [`load_oe_corpus`]), that
/// exist: recorded with their sha256 in every model directory.
pub fn training_files(name: &str, root: &Path, oe: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = match name {
        "sst" | "sst-fine" | "sst-phrases" | "sst-fine-phrases" => {
            ["train.txt", "dev.txt", "test.txt"]
                .iter()
                .map(|f| root.join("sst").join("trees").join(f))
                .collect()
        }
        "trec" | "trec-coarse" => ["train_5500.label", "TREC_10.label"]
            .iter()
            .map(|f| root.join("trec").join(f))
            .collect(),
        "clinc150" => vec![clinc150_file(root)],
        "20ng" | "20ng-bydate" => {
            let d = root.join("20newsgroups");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
                .map_err(|e| OeError::io(&d, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            files
        }
        _ => {
            let (tr, dv, te) = indist::user_split_files(Path::new(name))?;
            std::iter::once(tr)
                .chain(dv)
                .chain(std::iter::once(te))
                .collect()
        }
    };
    match oe {
        Some("wikitext2" | "wikitext-2") => {
            v.push(root.join("wikitext-2").join("wiki.train.tokens"))
        }
        Some("wikitext103" | "wikitext-103") => {
            v.push(root.join("wikitext-103").join("wiki.train.tokens"))
        }
        Some("clinc150-oos-train") => v.push(clinc150_file(root)),
        Some(f) => v.push(PathBuf::from(f)),
        None => {}
    }
    v.retain(|p| p.is_file());
    v.dedup();
    Ok(v)
}

pub fn load_in_distribution(name: &str, root: &Path, opts: &TextOptions) -> Result<InDistribution> {
    let mut untrunc = None;
    let (train, dev, test) = match name {
        "sst" | "sst-fine" | "sst-phrases" | "sst-fine-phrases" => {
            let o = indist::SstOptions {
                fine_grained: name.contains("fine"),
                subtrees: name.ends_with("phrases"),
            };
            let d = root.join("sst").join("trees");
            let flat = indist::SstOptions {
                subtrees: false,
                ..o
            };
            (
                indist::parse_sst_file(&d.join("train.txt"), o, opts)?,
                Some(indist::parse_sst_file(&d.join("dev.txt"), flat, opts)?),
                indist::parse_sst_file(&d.join("test.txt"), flat, opts)?,
            )
        }
        "trec" | "trec-coarse" => {
            let d = root.join("trec");
            let fine = name == "trec";
            (
                indist::parse_trec_file(&d.join("train_5500.label"), fine, opts)?,
                None,
                indist::parse_trec_file(&d.join("TREC_10.label"), fine, opts)?,
            )
        }
        "clinc150" => {
            let c = indist::read_clinc150(&clinc150_file(root), opts)?;
            (c.train, Some(c.val), c.test)
        }
        "20ng" => {
            let (tr, te, full, _) = indist::load_20ng_no_short(&root.join("20newsgroups"), opts)?;
            if full.texts != tr.texts {
                untrunc = Some(full.texts);
            }
            (tr, None, te)
        }
        "20ng-bydate" => {
            let (tr, te, full) = indist::load_20ng_bydate(&root.join("20newsgroups"), opts)?;
            if full.texts != tr.texts {
                untrunc = Some(full.texts);
            }
            (tr, None, te)
        }
        _ => {
            let p = Path::new(name);
            if !(p.exists() || name.contains('/') || name.contains('.')) {
                return Err(OeError::Config(format!(
                    "unknown in-distribution dataset `{name}` (known: {}; or a path to a user dataset)",
                    IN_DISTRIBUTION_NAMES.join(", ")
                )));
            }
            let (tr, dv, te) = indist::user_split_files(p)?;
            let rd =
                |f: &Path| indist::read_labelled_file(f, opts.text_col(), opts.label_col(), opts);
            (rd(&tr)?, dv.as_deref().map(rd).transpose()?, rd(&te)?)
        }
    };
    manifest::check_count(name, "train", train.len())?;
    if let Some(d) = &dev {
        manifest::check_count(name, "dev", d.len())?;
    }
    manifest::check_count(name, "test", test.len())?;
    for (split, l) in [("train", &train), ("test", &test)] {
        if l.is_empty() {
            return Err(OeError::Data(format!("{name}: the {split} split is empty")));
        }
    }
    // Every test label must be a training label: a clear error now beats a wrong index later.
    let lv = LabelVocab::build(train.labels.iter().map(String::as_str));
    for (split, l) in [("dev", dev.as_ref()), ("test", Some(&test))] {
        if let Some(l) = l {
            if let Some((i, bad)) = l
                .labels
                .iter()
                .enumerate()
                .find(|(_, x)| lv.index(x).is_err())
            {
                return Err(OeError::Data(format!(
                    "{name}: {split} example {} has label `{bad}`, which no training example has",
                    i + 1
                )));
            }
        }
    }
    Ok(InDistribution {
        name: name.to_string(),
        train,
        dev,
        test,
        train_untruncated: untrunc,
    })
}

/// An OOD test set in file order with the paper's preprocessing (lower-cased by default).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OodSet {
    pub name: String,
    pub texts: Vec<String>,
    /// SNLI premises (the reference sorts SNLI by (premise, hypothesis) lengths).
    pub premises: Option<Vec<String>>,
}

/// Names [`load_ood`] accepts (besides user files), in the paper's table order.
pub const OOD_NAMES: &[&str] = &[
    "snli",
    "imdb",
    "multi30k",
    "wmt16",
    "yelp",
    "ewt-answers",
    "ewt-email",
    "ewt-newsgroup",
    "ewt-reviews",
    "ewt-weblog",
];

/// OOD sets that belong to one in-distribution dataset (near-OOD): evaluated by default only for
/// it, and accepted by [`load_ood`] for any model.
pub const NEAR_OOD_NAMES: &[(&str, &str)] = &[
    // (in-distribution dataset, OOD set): CLINC150's out-of-scope test queries.
    ("clinc150", "clinc150-oos"),
];

/// Names [`load_ood`] accepts that are validation sets, never a default test set: CLINC150's
/// out-of-scope validation queries (for tuning and thresholds).
pub const VALIDATION_OOD_NAMES: &[&str] = &["clinc150-oos-val"];

/// The validation OOD set of an in-distribution dataset, when it has one (`clinc150-oos-val`).
pub fn validation_ood_for(in_dataset: &str) -> Option<&'static str> {
    (in_dataset == "clinc150").then_some("clinc150-oos-val")
}

/// The validation OOD set to use: the one `given`, else `in_dataset`'s own ([`validation_ood_for`]).
pub fn validation_ood_or_own(given: Option<&str>, in_dataset: &str) -> Option<String> {
    given
        .or_else(|| validation_ood_for(in_dataset))
        .map(str::to_string)
}

pub use crate::datasets::split_label;

/// OOD sets: "snli" (test hypotheses, `premises` filled), "imdb" (test reviews), "multi30k"
/// (`oe_train.txt`), "wmt16" (whole lines: the paper's rows are reproduced without the reference's
/// comma cut), "yelp" (Yelp Review Full test), "ewt-<domain>" (dev sentences), "clinc150-oos" /
/// "clinc150-oos-val" (CLINC150's out-of-scope test / validation queries), or a path to a text file
/// (one text per line; `.csv` / `.jsonl` files use the column `text`, or `opts.text_column`).
/// `NAME=SPEC` loads SPEC under the name NAME.
pub fn load_ood(name: &str, root: &Path, opts: &TextOptions) -> Result<OodSet> {
    let (label, name) = split_label(name);
    let lower = opts.lowercase.unwrap_or(true);
    let fin = |v: Vec<String>| -> Vec<String> {
        use rayon::prelude::*;
        v.into_par_iter()
            .map(|s| text::finish(&s, lower, opts.max_tokens))
            .collect()
    };
    let mut premises = None;
    let texts = match name {
        "snli" => {
            let (p, h) = ood::snli(root, "test")?;
            premises = Some(fin(p));
            fin(h)
        }
        "imdb" => fin(ood::imdb(root, "test")?.0),
        "multi30k" => fin(ood::multi30k(root)?),
        "wmt16" => fin(ood::lines_file(
            &root.join("wmt16").join("wmt16_sentences"),
        )?),
        "yelp" => fin(ood::yelp(root)?.0),
        "clinc150-oos" | "clinc150-oos-val" => {
            let c = indist::read_clinc150(&clinc150_file(root), &TextOptions::default())?;
            let raw = if name == "clinc150-oos" {
                c.oos_test
            } else {
                c.oos_val
            };
            fin(raw)
        }
        n if n.starts_with("ewt-") => fin(ood::ewt(root, &n[4..])?),
        _ => {
            let p = Path::new(name);
            if !p.is_file() {
                let known: Vec<&str> = OOD_NAMES
                    .iter()
                    .copied()
                    .chain(NEAR_OOD_NAMES.iter().map(|(_, o)| *o))
                    .chain(VALIDATION_OOD_NAMES.iter().copied())
                    .collect();
                return Err(OeError::Config(format!(
                    "unknown OOD set `{name}` (known: {}; or a path to a text file, optionally as NAME=PATH)",
                    known.join(", ")
                )));
            }
            fin(read_user_texts(p, opts.text_col())?)
        }
    };
    let count_name = if name == "clinc150-oos-val" {
        ("clinc150-oos", "val")
    } else {
        (name, "test")
    };
    manifest::check_count(count_name.0, count_name.1, texts.len())?;
    let shown = label.unwrap_or(name);
    if texts.is_empty() {
        return Err(OeError::Data(format!("OOD set `{shown}` is empty")));
    }
    Ok(OodSet {
        name: shown.to_string(),
        texts,
        premises,
    })
}

fn read_user_texts(p: &Path, text_col: &str) -> Result<Vec<String>> {
    match p.extension().and_then(|e| e.to_str()) {
        Some("csv" | "jsonl" | "json" | "ndjson") => Ok(indist::read_columns(p, text_col, None)?.0),
        _ => ood::lines_file(p),
    }
}

/// The OOD sets an evaluation of `in_dataset` uses when none are named: its own near-OOD set
/// (`clinc150` → `clinc150-oos`) when present, else the paper's far-OOD sets present under `root`.
pub fn default_ood_sets(in_dataset: &str, root: &Path) -> Vec<String> {
    let near: Vec<String> = NEAR_OOD_NAMES
        .iter()
        .filter(|(ind, _)| *ind == in_dataset)
        .filter(|(_, o)| ood_present(o, root))
        .map(|(_, o)| o.to_string())
        .collect();
    if near.is_empty() {
        available_ood_sets(root)
    } else {
        near
    }
}

/// Whether the files of an OOD set are present under `root` (no parsing).
pub fn ood_present(name: &str, root: &Path) -> bool {
    match name {
        "snli" => {
            root.join("snli/s2.test").is_file()
                || root.join("snli/snli_1.0/snli_1.0_test.jsonl").is_file()
        }
        "imdb" => {
            root.join("imdb/aclImdb_v1.tar.gz").is_file() || root.join("imdb/aclImdb/test").is_dir()
        }
        "multi30k" => root.join("multi30k/oe_train.txt").is_file(),
        "wmt16" => root.join("wmt16/wmt16_sentences").is_file(),
        "yelp" => root.join("yelp_review_full_csv/test.csv").is_file(),
        n if n.starts_with("ewt-") => ood::ewt_present(root, &n[4..]),
        "clinc150-oos" | "clinc150-oos-val" => clinc150_file(root).is_file(),
        _ => false,
    }
}

/// Names of OOD sets whose files are present under root, in the paper's order.
pub fn available_ood_sets(root: &Path) -> Vec<String> {
    OOD_NAMES
        .iter()
        .filter(|n| ood_present(n, root))
        .map(|s| s.to_string())
        .collect()
}

/// OE corpus: "wikitext2" | "wikitext103" → filtered sentences (lower-cased), or a path to a text
/// file (one text per line, lower-cased).
pub fn load_oe_corpus(name: &str, root: &Path) -> Result<Vec<String>> {
    let sents = match name {
        "wikitext2" | "wikitext-2" | "wikitext103" | "wikitext-103" => {
            let dir = if name.contains("103") {
                "wikitext-103"
            } else {
                "wikitext-2"
            };
            let p = root.join(dir).join("wiki.train.tokens");
            let bytes = text::read_bytes(&p)?;
            let raw = text::utf8_text(&p, &bytes)?;
            wikitext::wikitext_sentences(raw)
        }
        "clinc150-oos-train" => {
            indist::read_clinc150(&clinc150_file(root), &TextOptions::default())?.oos_train
        }
        _ => {
            let p = Path::new(name);
            if !p.is_file() {
                return Err(OeError::Config(format!(
                    "unknown OE corpus `{name}` (known: wikitext2, wikitext103, clinc150-oos-train; or a path to a text file)"
                )));
            }
            read_user_texts(p, "text")?
        }
    };
    use rayon::prelude::*;
    let out: Vec<String> = sents.into_par_iter().map(|s| text::lower(&s)).collect();
    let canonical = if name.contains("103") {
        "wikitext103"
    } else if name == "clinc150-oos-train" {
        "clinc150-oos"
    } else {
        "wikitext2"
    };
    if !Path::new(name).is_file() {
        manifest::check_count(canonical, "train", out.len())?;
    }
    if out.is_empty() {
        return Err(OeError::Data(format!("OE corpus `{name}` is empty")));
    }
    Ok(out)
}

/// Counts check of the loaders of a manifest against a (staging) root.
pub fn check_loader_counts(
    m: &crate::datasets::manifest::Manifest,
    root: &Path,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for name in &m.loads {
        if name.starts_with("sst-") || name == "trec-coarse" {
            continue; // variants share their files with the main loader
        }
        // CLINC150 is one manifest with in-distribution, OOD and OE loaders.
        if name == "clinc150-oos-train" {
            let s = load_oe_corpus(name, root)?;
            lines.push(format!("{name}: {} queries", s.len()));
            continue;
        }
        if name.starts_with("clinc150-oos") {
            let s = load_ood(name, root, &Default::default())?;
            lines.push(format!("{name}: {}", s.texts.len()));
            continue;
        }
        match m.role {
            crate::datasets::manifest::Role::InDistribution => {
                let d = load_in_distribution(name, root, &Default::default())?;
                lines.push(format!(
                    "{name}: train {} / dev {} / test {}",
                    d.train.len(),
                    d.dev
                        .as_ref()
                        .map(|x| x.len().to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.test.len()
                ));
            }
            crate::datasets::manifest::Role::OodTest => {
                if ood_present(name, root) {
                    let s = load_ood(name, root, &Default::default())?;
                    lines.push(format!("{name}: {}", s.texts.len()));
                }
            }
            crate::datasets::manifest::Role::OutlierExposure => {
                let s = load_oe_corpus(name, root)?;
                lines.push(format!("{name}: {} sentences", s.len()));
            }
            crate::datasets::manifest::Role::User => {}
        }
    }
    Ok(lines)
}
