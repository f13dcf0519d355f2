//! In-distribution parsers: SST (PTB trees), TREC, 20 Newsgroups (bydate and the derived
//! "no-short" version), and user CSV / JSON-lines files.

use super::text::{self, finish};
use super::{Labelled, TextOptions};
use crate::error::{OeError, Result};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- SST

/// A PTB tree node: its label and children (leaves are words).
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    Node(String, Vec<Tree>),
    Leaf(String),
}

impl Tree {
    pub fn leaves(&self) -> Vec<&str> {
        let mut out = Vec::new();
        fn rec<'a>(t: &'a Tree, out: &mut Vec<&'a str>) {
            match t {
                Tree::Leaf(w) => out.push(w),
                Tree::Node(_, ch) => ch.iter().for_each(|c| rec(c, out)),
            }
        }
        rec(self, &mut out);
        out
    }

    /// Pre-order list of all subtrees (NLTK `Tree.subtrees()`), root first.
    pub fn subtrees(&self) -> Vec<&Tree> {
        let mut out = Vec::new();
        fn rec<'a>(t: &'a Tree, out: &mut Vec<&'a Tree>) {
            if let Tree::Node(_, ch) = t {
                out.push(t);
                ch.iter().for_each(|c| rec(c, out));
            }
        }
        rec(self, &mut out);
        out
    }

    pub fn label(&self) -> &str {
        match self {
            Tree::Node(l, _) => l,
            Tree::Leaf(_) => "",
        }
    }
}

/// Parses one bracketed tree like NLTK's `Tree.fromstring`: `(label child ...)`, leaves are any
/// other whitespace-free tokens.
pub fn parse_ptb_tree(s: &str) -> std::result::Result<Tree, String> {
    let mut toks = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' | b')' => {
                toks.push(&s[i..i + 1]);
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let st = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'(' && b[i] != b')' {
                    i += 1;
                }
                toks.push(&s[st..i]);
            }
        }
    }
    if toks.is_empty() {
        return Err("empty tree".into());
    }
    let mut pos = 0;
    fn node(toks: &[&str], pos: &mut usize) -> std::result::Result<Tree, String> {
        if toks.get(*pos) != Some(&"(") {
            return Err(format!("expected `(` at token {}", *pos + 1));
        }
        *pos += 1;
        let label = match toks.get(*pos) {
            Some(&t) if t != "(" && t != ")" => t.to_string(),
            _ => return Err("a node has no label".into()),
        };
        *pos += 1;
        let mut ch = Vec::new();
        loop {
            match toks.get(*pos) {
                None => return Err("unbalanced parentheses: missing `)`".into()),
                Some(&")") => {
                    *pos += 1;
                    break;
                }
                Some(&"(") => ch.push(node(toks, pos)?),
                Some(&w) => {
                    ch.push(Tree::Leaf(w.to_string()));
                    *pos += 1;
                }
            }
        }
        if ch.is_empty() {
            return Err(format!("node `{label}` has no children"));
        }
        Ok(Tree::Node(label, ch))
    }
    let t = node(&toks, &mut pos)?;
    if pos != toks.len() {
        return Err("text after the end of the tree (unbalanced parentheses?)".into());
    }
    Ok(t)
}

/// SST label strings as torchtext names them.
pub fn sst_label(raw: &str, fine_grained: bool) -> Option<&'static str> {
    Some(match (raw, fine_grained) {
        ("0", true) => "very negative",
        ("0", false) | ("1", _) => "negative",
        ("2", _) => "neutral",
        ("3", _) => "positive",
        ("4", true) => "very positive",
        ("4", false) => "positive",
        _ => return None,
    })
}

/// SST variants: binary (neutral dropped, the paper's) or 5-class; sentences or all phrases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SstOptions {
    pub fine_grained: bool,
    pub subtrees: bool,
}

/// Parses one SST tree file (one tree per line).
pub fn parse_sst_file(path: &Path, o: SstOptions, t: &TextOptions) -> Result<Labelled> {
    let bytes = text::read_bytes(path)?;
    let lines = text::utf8_lines(path, &bytes)?;
    let lower = t.lowercase.unwrap_or(false);
    let mut out = Labelled::default();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let tree = parse_ptb_tree(line)
            .map_err(|m| OeError::parse(path, i + 1, format!("bad tree: {m}")))?;
        let nodes = if o.subtrees {
            tree.subtrees()
        } else {
            vec![&tree]
        };
        for n in nodes {
            let label = sst_label(n.label(), o.fine_grained).ok_or_else(|| {
                OeError::parse(
                    path,
                    i + 1,
                    format!("unknown SST label `{}` (expected 0-4)", n.label()),
                )
            })?;
            if !o.fine_grained && label == "neutral" {
                continue;
            }
            out.texts
                .push(finish(&n.leaves().join(" "), lower, t.max_tokens));
            out.labels.push(label.to_string());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- TREC

/// Parses a TREC file as torchtext did: the byte 0xF0 is replaced by a space
/// (`line.replace(b'\xf0', b' ')`), the rest is decoded (latin-1 here, so no byte fails), the
/// first space separates the label `COARSE:fine` from the question.
pub fn parse_trec_file(path: &Path, fine: bool, t: &TextOptions) -> Result<Labelled> {
    let bytes = text::read_bytes(path)?;
    let lower = t.lowercase.unwrap_or(true);
    let mut out = Labelled::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let cleaned: Vec<u8> = raw
            .iter()
            .map(|&b| if b == 0xF0 { b' ' } else { b })
            .collect();
        let line = text::latin1(&cleaned);
        let (label, question) = line
            .split_once(' ')
            .ok_or_else(|| OeError::parse(path, i + 1, "no space after the label"))?;
        let (coarse, _fine) = label.split_once(':').ok_or_else(|| {
            OeError::parse(path, i + 1, format!("label `{label}` is not COARSE:fine"))
        })?;
        if coarse.is_empty() || !coarse.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(OeError::parse(
                path,
                i + 1,
                format!("bad TREC label `{label}`"),
            ));
        }
        out.texts.push(finish(question, lower, t.max_tokens));
        out.labels.push(if fine {
            label.to_string()
        } else {
            coarse.to_string()
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- 20 Newsgroups

/// One bydate document.
pub struct NgDoc {
    pub group: String,
    pub id: u64,
    pub raw: Vec<u8>,
}

/// Reads `20news-bydate-{train,test}` from the archive `20newsgroups/20news-bydate.tar.gz` or the
/// extracted folders next to it; documents sorted by (group, numeric id).
pub fn read_20ng_bydate(dir: &Path) -> Result<(Vec<NgDoc>, Vec<NgDoc>)> {
    let mut train = Vec::new();
    let mut test = Vec::new();
    let extracted = dir.join("20news-bydate-train");
    if extracted.is_dir() {
        for (split, out) in [
            ("20news-bydate-train", &mut train),
            ("20news-bydate-test", &mut test),
        ] {
            let d = dir.join(split);
            if !d.is_dir() {
                return Err(OeError::Data(format!(
                    "missing split folder {}",
                    d.display()
                )));
            }
            for g in read_dir_sorted(&d)? {
                if !g.is_dir() {
                    continue;
                }
                let group = g.file_name().unwrap().to_string_lossy().into_owned();
                for f in read_dir_sorted(&g)? {
                    let id = file_id(&f)?;
                    let raw = std::fs::read(&f).map_err(|e| OeError::io(&f, e))?;
                    out.push(NgDoc {
                        group: group.clone(),
                        id,
                        raw,
                    });
                }
            }
        }
    } else {
        let ar = dir.join("20news-bydate.tar.gz");
        text::for_each_tar_gz_member(
            &ar,
            |_| true,
            |name, raw| {
                let parts: Vec<&str> = name.trim_start_matches("./").split('/').collect();
                if parts.len() != 3 {
                    return Ok(());
                }
                let id = parts[2].parse::<u64>().map_err(|_| {
                    OeError::Data(format!(
                        "{}: member {name}: file name is not a number",
                        ar.display()
                    ))
                })?;
                let doc = NgDoc {
                    group: parts[1].to_string(),
                    id,
                    raw,
                };
                match parts[0] {
                    "20news-bydate-train" => train.push(doc),
                    "20news-bydate-test" => test.push(doc),
                    _ => {}
                }
                Ok(())
            },
        )?;
    }
    for v in [&mut train, &mut test] {
        v.sort_by(|a, b| a.group.cmp(&b.group).then(a.id.cmp(&b.id)));
    }
    if train.is_empty() || test.is_empty() {
        return Err(OeError::Data(format!(
            "{}: 20 Newsgroups bydate train or test split is missing",
            dir.display()
        )));
    }
    Ok((train, test))
}

fn read_dir_sorted(d: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .map_err(|e| OeError::io(d, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn file_id(f: &Path) -> Result<u64> {
    f.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| OeError::Data(format!("{}: file name is not a number", f.display())))
}

/// Splits a Usenet message (latin-1) into its Subject value and body (after the first blank line).
pub fn subject_and_body(raw: &[u8]) -> (String, String) {
    let s = text::latin1(raw).replace("\r\n", "\n");
    let (head, body) = match s.find("\n\n") {
        Some(i) => (&s[..i], &s[i + 2..]),
        None => (&s[..], ""),
    };
    let subject = head
        .lines()
        .find_map(|l| l.strip_prefix("Subject:"))
        .unwrap_or("")
        .trim()
        .to_string();
    (subject, body.to_string())
}

/// Cachopo's "all-terms" + "no-short" transformation: subject prepended to the body, every
/// non-letter turned into a space, lower-cased, words shorter than 3 characters removed.
/// Letters are ASCII a-z (the messages are latin-1; Cachopo's files hold only a-z).
pub fn no_short(subject: &str, body: &str) -> String {
    let mut out = String::with_capacity(subject.len() + body.len());
    for src in [subject, body] {
        for w in src.split(|c: char| !c.is_ascii_alphabetic()) {
            if w.len() >= 3 {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.extend(w.chars().map(|c| c.to_ascii_lowercase()));
            }
        }
    }
    out
}

/// "20ng": Cachopo's `20ng-{train,test}-no-short.txt` when present in `dir`, else derived from
/// bydate with [`no_short`] (documents that become empty are dropped, as in Cachopo's files).
pub fn load_20ng_no_short(
    dir: &Path,
    t: &TextOptions,
) -> Result<(Labelled, Labelled, Labelled, Labelled)> {
    let lower = t.lowercase.unwrap_or(true);
    let max = t.max_tokens.or(Some(100));
    let cach_train = dir.join("20ng-train-no-short.txt");
    let mut full = (Labelled::default(), Labelled::default());
    if cach_train.is_file() {
        for (p, out) in [
            (cach_train, &mut full.0),
            (dir.join("20ng-test-no-short.txt"), &mut full.1),
        ] {
            let bytes = text::read_bytes(&p)?;
            for (i, line) in text::utf8_lines(&p, &bytes)?.into_iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let mut it = line.split_whitespace();
                let label = it.next().unwrap();
                let body: Vec<&str> = it.collect();
                if label.is_empty() {
                    return Err(OeError::parse(&p, i + 1, "no label"));
                }
                out.texts.push(body.join(" "));
                out.labels.push(label.to_string());
            }
        }
    } else {
        let (train, test) = read_20ng_bydate(dir)?;
        for (docs, out) in [(train, &mut full.0), (test, &mut full.1)] {
            for d in docs {
                let (s, b) = subject_and_body(&d.raw);
                let t = no_short(&s, &b);
                if !t.is_empty() {
                    out.texts.push(t);
                    out.labels.push(d.group);
                }
            }
        }
    }
    let cut = |l: &Labelled| Labelled {
        texts: l.texts.iter().map(|s| finish(s, lower, max)).collect(),
        labels: l.labels.clone(),
    };
    let full_cased = |l: Labelled| Labelled {
        texts: l.texts.iter().map(|s| finish(s, lower, None)).collect(),
        labels: l.labels,
    };
    let (tr, te) = (cut(&full.0), cut(&full.1));
    Ok((tr, te, full_cased(full.0), full_cased(full.1)))
}

/// "20ng-bydate": subject + body of every bydate message, whitespace-normalised.
pub fn load_20ng_bydate(dir: &Path, t: &TextOptions) -> Result<(Labelled, Labelled, Labelled)> {
    let lower = t.lowercase.unwrap_or(true);
    let max = t.max_tokens.or(Some(100));
    let (train, test) = read_20ng_bydate(dir)?;
    let mut res = (
        Labelled::default(),
        Labelled::default(),
        Labelled::default(),
    );
    for (docs, out, full) in [
        (train, &mut res.0, Some(&mut res.2)),
        (test, &mut res.1, None),
    ] {
        let mut full = full;
        for d in docs {
            let (s, b) = subject_and_body(&d.raw);
            let joined = format!("{s} {b}");
            let norm = joined.split_whitespace().collect::<Vec<_>>().join(" ");
            out.texts.push(finish(&norm, lower, max));
            out.labels.push(d.group.clone());
            if let Some(f) = full.as_mut() {
                f.texts.push(finish(&norm, lower, None));
                f.labels.push(d.group);
            }
        }
    }
    Ok(res)
}

// ---------------------------------------------------------------- user files

/// Reads a labelled user file: `.csv` (header row) or `.jsonl` / `.json` (one object per line),
/// taking the `text_col` and `label_col` columns.
pub fn read_labelled_file(
    path: &Path,
    text_col: &str,
    label_col: &str,
    t: &TextOptions,
) -> Result<Labelled> {
    let (texts, labels) = read_columns(path, text_col, Some(label_col))?;
    let lower = t.lowercase.unwrap_or(true);
    Ok(Labelled {
        texts: texts
            .iter()
            .map(|s| finish(s, lower, t.max_tokens))
            .collect(),
        labels: labels.unwrap(),
    })
}

fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json" | "ndjson")
    )
}

/// Reads a text column (and optionally a label column) from CSV or JSON-lines.
pub fn read_columns(
    path: &Path,
    text_col: &str,
    label_col: Option<&str>,
) -> Result<(Vec<String>, Option<Vec<String>>)> {
    let bytes = text::read_bytes(path)?;
    // A UTF-8 byte-order mark (spreadsheets write one) is not part of the first column name or
    // text: dropped, silently.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut texts = Vec::new();
    let mut labels = label_col.map(|_| Vec::new());
    // An empty label would become a class named "".
    let label = |line: usize, col: &str, v: String| -> Result<String> {
        if v.trim().is_empty() {
            Err(OeError::parse(
                path,
                line,
                format!("empty label in column `{col}`"),
            ))
        } else {
            Ok(v)
        }
    };
    if is_jsonl(path) {
        for (i, line) in text::utf8_lines(path, bytes)?.into_iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| OeError::parse(path, i + 1, format!("bad JSON: {e}")))?;
            let get = |col: &str| -> Result<String> {
                match v.get(col) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                    Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                    Some(_) => Err(OeError::parse(
                        path,
                        i + 1,
                        format!("field `{col}` is not a string or number"),
                    )),
                    None => Err(OeError::parse(path, i + 1, format!("no field `{col}`"))),
                }
            };
            texts.push(get(text_col)?);
            if let (Some(l), Some(col)) = (labels.as_mut(), label_col) {
                l.push(label(i + 1, col, get(col)?)?);
            }
        }
    } else {
        text::utf8_text(path, bytes)?;
        if let Some(line) = unterminated_quote(bytes) {
            return Err(OeError::parse(
                path,
                line,
                "unterminated quoted field: the `\"` opening it is never closed",
            ));
        }
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes);
        let headers = rdr
            .headers()
            .map_err(|e| OeError::parse(path, 1, format!("bad CSV header: {e}")))?
            .clone();
        let col = |name: &str| {
            let n = headers.iter().filter(|h| h.trim() == name).count();
            if n > 1 {
                return Err(OeError::parse(
                    path,
                    1,
                    format!("column `{name}` appears {n} times in the header; which one to use?"),
                ));
            }
            headers
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| {
                    OeError::parse(
                        path,
                        1,
                        format!(
                            "no column `{name}` in header (columns: {})",
                            headers.iter().collect::<Vec<_>>().join(", ")
                        ),
                    )
                })
        };
        let ti = col(text_col)?;
        let li = label_col.map(col).transpose()?;
        for rec in rdr.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                OeError::parse(path, line, format!("bad CSV row: {e}"))
            })?;
            let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
            let get = |i: usize| {
                rec.get(i)
                    .map(str::to_string)
                    .ok_or_else(|| OeError::parse(path, line, "row is missing a column"))
            };
            texts.push(get(ti)?);
            if let (Some(l), Some(i), Some(col)) = (labels.as_mut(), li, label_col) {
                l.push(label(line, col, get(i)?)?);
            }
        }
    }
    Ok((texts, labels))
}

/// The line of a quoted CSV field that is still open at the end of `bytes` (the `csv` crate reads
/// such a field to the end of the file without complaint), by the rules it parses with: a field
/// starting with `"` is quoted, `""` inside is a quote, the next lone `"` closes it.
fn unterminated_quote(bytes: &[u8]) -> Option<usize> {
    let mut line = 1;
    let mut field_start = true;
    let mut open: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if open.is_some() {
            if b == b'"' {
                if bytes.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    open = None;
                }
            }
        } else if field_start && b == b'"' {
            open = Some(line);
        }
        if b == b'\n' {
            line += 1;
        }
        field_start = open.is_none() && (b == b',' || b == b'\n' || (b == b'\r' && field_start));
        i += 1;
    }
    open
}

/// Where the last `train` of a file name that is a part of its own starts: bounded by the ends of
/// the name or by characters other than letters and digits (`reviews_train.csv`, `train.v2.csv`),
/// so that `restrained_train.csv` gives `restrained_test.csv`, not `restested_train.csv`.
fn train_component(name: &str) -> Option<usize> {
    let bytes = name.as_bytes();
    let apart = |i: usize| bytes.get(i).is_none_or(|b| !b.is_ascii_alphanumeric());
    name.match_indices("train")
        .map(|(i, _)| i)
        .filter(|&i| (i == 0 || apart(i - 1)) && apart(i + "train".len()))
        .last()
}

/// Finds the split files of a user dataset: `path` is a folder holding `train.*`, `test.*` and
/// optionally `dev.*`/`valid.*` (`.csv`, `.jsonl`), or a train file whose name has `train` as a
/// part of its own (the others found by replacing the last such part with `test` / `dev` / `valid`,
/// see [`train_component`]).
pub fn user_split_files(path: &Path) -> Result<(PathBuf, Option<PathBuf>, PathBuf)> {
    let find_in = |dir: &Path, stems: &[&str]| -> Option<PathBuf> {
        for s in stems {
            for ext in ["csv", "jsonl", "json", "ndjson"] {
                let p = dir.join(format!("{s}.{ext}"));
                if p.is_file() {
                    return Some(p);
                }
            }
        }
        None
    };
    if path.is_dir() {
        let train = find_in(path, &["train"]).ok_or_else(|| {
            OeError::Data(format!(
                "missing split: no train.csv or train.jsonl in {}",
                path.display()
            ))
        })?;
        let test = find_in(path, &["test"]).ok_or_else(|| {
            OeError::Data(format!(
                "missing split: no test.csv or test.jsonl in {}",
                path.display()
            ))
        })?;
        return Ok((train, find_in(path, &["dev", "valid", "validation"]), test));
    }
    if !path.is_file() {
        return Err(OeError::Data(format!(
            "{}: no such dataset file or folder",
            path.display()
        )));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(at) = train_component(name) else {
        return Err(OeError::Data(format!(
            "{}: a user dataset is a folder with train/test files or a file whose name has `train` \
             as a part of its own (`train.csv`, `reviews_train.csv`, `train-2024.jsonl`)",
            path.display()
        )));
    };
    let sib =
        |w: &str| path.with_file_name(format!("{}{w}{}", &name[..at], &name[at + "train".len()..]));
    let test = sib("test");
    if !test.is_file() {
        return Err(OeError::Data(format!(
            "missing split: {} has no test file {}",
            path.display(),
            test.display()
        )));
    }
    let dev = ["dev", "valid"]
        .iter()
        .map(|w| sib(w))
        .find(|p| p.is_file());
    Ok((path.to_path_buf(), dev, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptb_trees() {
        let t = parse_ptb_tree("(3 (2 (2 The) (2 Rock)) (4 (2 rocks) (2 .)))").unwrap();
        assert_eq!(t.leaves(), vec!["The", "Rock", "rocks", "."]);
        assert_eq!(t.subtrees().len(), 7);
        assert_eq!(t.label(), "3");
        for bad in ["(3 (2 a)", "(3 (2 a)))", "(3 )", "( (2 a))", "", "word"] {
            assert!(parse_ptb_tree(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sibling_split_files_replace_only_the_train_part() {
        let d = tempfile::tempdir().unwrap();
        let csv = b"text,label\na,x\n";
        for (train, test, dev) in [
            (
                "restrained_train.csv",
                "restrained_test.csv",
                "restrained_dev.csv",
            ),
            ("train.csv", "test.csv", "dev.csv"),
            (
                "train_trains.jsonl",
                "test_trains.jsonl",
                "dev_trains.jsonl",
            ),
            (
                "a-train-train.v2.csv",
                "a-train-test.v2.csv",
                "a-train-dev.v2.csv",
            ),
        ] {
            let tr = csv_file(d.path(), train, csv);
            csv_file(d.path(), test, csv);
            csv_file(d.path(), dev, csv);
            let (a, b, c) = user_split_files(&tr).unwrap();
            assert_eq!(a, tr);
            assert_eq!(b.unwrap(), d.path().join(dev), "{train}");
            assert_eq!(c, d.path().join(test), "{train}");
        }
        // `restested_train.csv` (the old guess) is not taken for the test file.
        let tr = csv_file(d.path(), "strained_train.csv", csv);
        csv_file(d.path(), "stested_train.csv", csv);
        let e = user_split_files(&tr).unwrap_err().to_string();
        assert!(e.contains("strained_test.csv"), "{e}");
        let tr = csv_file(d.path(), "restrained.csv", csv);
        let e = user_split_files(&tr).unwrap_err().to_string();
        assert!(e.contains("`train` as a part"), "{e}");
    }

    fn csv_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn bad_labelled_csvs_name_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        for (name, content, line, what) in [
            (
                "empty-label.csv",
                &b"text,label\na,x\nb,\nc,y\n"[..],
                3,
                "empty label in column `label`",
            ),
            (
                "blank-label.jsonl",
                b"{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\" \"}\n",
                2,
                "empty label",
            ),
            (
                "dup.csv",
                b"text,label,text\na,x,b\n",
                1,
                "column `text` appears 2 times",
            ),
            (
                "open-quote.csv",
                b"text,label\na,x\n\"b, and the rest,y\nc,z\n",
                3,
                "unterminated quoted field",
            ),
            (
                "open-quote-last.csv",
                b"text,label\r\na,x\r\nb,\"y",
                3,
                "unterminated quoted field",
            ),
        ] {
            let p = csv_file(d.path(), name, content);
            let e = read_columns(&p, "text", Some("label"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{}:{line}:", p.display())) && e.contains(what),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn good_csvs_still_read_and_a_bom_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = csv_file(
            d.path(),
            "bom.csv",
            b"\xEF\xBB\xBFtext,label\n\"say \"\"hi\"\", \nthen go\",x\nb\"c,y\n",
        );
        let (t, l) = read_columns(&p, "text", Some("label")).unwrap();
        assert_eq!(t, ["say \"hi\", \nthen go", "b\"c"]);
        assert_eq!(l.unwrap(), ["x", "y"]);
        // Text first: the BOM is not glued to the first text.
        let p = csv_file(
            d.path(),
            "bom-text.csv",
            b"\xEF\xBB\xBFlabel,text\nx,hello\n",
        );
        let (t, _) = read_columns(&p, "text", Some("label")).unwrap();
        assert_eq!(t, ["hello"]);
        let p = csv_file(
            d.path(),
            "bom-text.jsonl",
            b"\xEF\xBB\xBF{\"text\":\"hi\"}\n",
        );
        assert_eq!(read_columns(&p, "text", None).unwrap().0, ["hi"]);
        // Duplicate columns that are not used are fine; an empty text is (it is not a class).
        let p = csv_file(d.path(), "dup-other.csv", b"x,text,x\n1,,2\n");
        assert_eq!(read_columns(&p, "text", None).unwrap().0, [""]);
    }

    #[test]
    fn no_short_rule() {
        let (s, b) = subject_and_body(b"From: x@y.z\nSubject: Re: GPUs are fast!\nLines: 3\n\nI think it's 3x faster: ok?\nYes\n");
        assert_eq!(s, "Re: GPUs are fast!");
        assert_eq!(no_short(&s, &b), "gpus are fast think faster yes");
    }
}

// ---------------------------------------------------------------- CLINC150

/// The six splits of CLINC150's `data_full.json` (Larson et al., EMNLP 2019), in file order:
/// 150 in-scope intents × 100 / 20 / 30 queries (train / val / test) and out-of-scope queries
/// 100 / 100 / 1,000 (label `oos`).
#[derive(Clone, Debug, Default)]
pub struct Clinc150 {
    pub train: Labelled,
    pub val: Labelled,
    pub test: Labelled,
    pub oos_train: Vec<String>,
    pub oos_val: Vec<String>,
    pub oos_test: Vec<String>,
}

/// Reads `data_full.json`: an object with the keys `train`, `val`, `test`, `oos_train`, `oos_val`,
/// `oos_test`, each a list of `[text, intent]` pairs. In-scope splits must not contain `oos`;
/// out-of-scope splits must contain only `oos`. Texts get [`finish`] (lower-cased by default).
pub fn read_clinc150(path: &Path, t: &TextOptions) -> Result<Clinc150> {
    let bytes = text::read_bytes(path)?;
    let raw = text::utf8_text(path, &bytes)?;
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| OeError::parse(path, e.line(), format!("invalid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        OeError::Data(format!(
            "{}: expected a JSON object with the keys train, val, test, oos_train, oos_val, oos_test",
            path.display()
        ))
    })?;
    let lower = t.lowercase.unwrap_or(true);
    let split = |key: &str, want_oos: bool| -> Result<Labelled> {
        let list = obj.get(key).and_then(|x| x.as_array()).ok_or_else(|| {
            OeError::Data(format!(
                "{}: key `{key}` is missing or not a list",
                path.display()
            ))
        })?;
        let mut out = Labelled::default();
        for (i, e) in list.iter().enumerate() {
            let pair = e.as_array().filter(|a| a.len() == 2);
            let (text, label) = match pair.map(|a| (a[0].as_str(), a[1].as_str())) {
                Some((Some(x), Some(l))) => (x, l),
                _ => {
                    return Err(OeError::Data(format!(
                        "{}: `{key}` entry {} is not a [text, intent] pair of strings",
                        path.display(),
                        i + 1
                    )))
                }
            };
            if (label == "oos") != want_oos {
                return Err(OeError::Data(format!(
                    "{}: `{key}` entry {} has intent `{label}`{}",
                    path.display(),
                    i + 1,
                    if want_oos {
                        ", but out-of-scope splits hold only `oos`"
                    } else {
                        ", but `oos` belongs in the oos_* splits"
                    }
                )));
            }
            out.texts.push(finish(text, lower, t.max_tokens));
            out.labels.push(label.to_string());
        }
        Ok(out)
    };
    Ok(Clinc150 {
        train: split("train", false)?,
        val: split("val", false)?,
        test: split("test", false)?,
        oos_train: split("oos_train", true)?.texts,
        oos_val: split("oos_val", true)?.texts,
        oos_test: split("oos_test", true)?.texts,
    })
}
