//! OOD test sets (README, "The paper's protocol: text"): SNLI, IMDB, Multi30K, WMT16, Yelp, English Web Treebank.
//! Every loader returns texts in file order; casing and truncation are applied by the caller.

use super::text;
use crate::error::{OeError, Result};
use std::path::Path;

/// SNLI test (premises, hypotheses). Prefers the tokenised one-per-line files
/// (`snli/s1.test`, `snli/s2.test`, pairs without gold label already dropped); otherwise the
/// canonical `snli/snli_1.0/snli_1.0_test.jsonl` (raw sentences, `gold_label` `-` dropped, as
/// torchtext's SNLI did).
pub fn snli(root: &Path, split: &str) -> Result<(Vec<String>, Vec<String>)> {
    let d = root.join("snli");
    let s1 = d.join(format!("s1.{split}"));
    let s2 = d.join(format!("s2.{split}"));
    if s1.is_file() || s2.is_file() {
        let b1 = text::read_bytes(&s1)?;
        let b2 = text::read_bytes(&s2)?;
        let p: Vec<String> = text::utf8_lines(&s1, &b1)?
            .into_iter()
            .map(|s| s.trim_end().to_string())
            .collect();
        let h: Vec<String> = text::utf8_lines(&s2, &b2)?
            .into_iter()
            .map(|s| s.trim_end().to_string())
            .collect();
        if p.len() != h.len() {
            return Err(OeError::Data(format!(
                "{} has {} lines but {} has {}",
                s1.display(),
                p.len(),
                s2.display(),
                h.len()
            )));
        }
        return Ok((p, h));
    }
    let jl = d.join("snli_1.0").join(format!("snli_1.0_{split}.jsonl"));
    let bytes = text::read_bytes(&jl)?;
    let mut p = Vec::new();
    let mut h = Vec::new();
    for (i, line) in text::utf8_lines(&jl, &bytes)?.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| OeError::parse(&jl, i + 1, format!("bad JSON: {e}")))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| OeError::parse(&jl, i + 1, format!("no string field `{k}`")))
        };
        if field("gold_label")? == "-" {
            continue;
        }
        p.push(field("sentence1")?);
        h.push(field("sentence2")?);
    }
    Ok((p, h))
}

/// IMDB test reviews: `imdb/aclImdb/test/{pos,neg}/*.txt` or the archive `imdb/aclImdb_v1.tar.gz`.
/// Order: `pos` then `neg` (torchtext's), each by numeric review id. Like torchtext, only the first
/// line of each file is read (reviews are one line). Returns (texts, labels).
pub fn imdb(root: &Path, split: &str) -> Result<(Vec<String>, Vec<String>)> {
    let dir = root.join("imdb").join("aclImdb").join(split);
    let mut docs: Vec<(u8, u64, String)> = Vec::new();
    let parse_name = |name: &str| -> Option<(u8, u64)> {
        let mut parts = name.rsplit('/');
        let file = parts.next()?;
        let lab = parts.next()?;
        let sp = parts.next()?;
        if sp != split || !file.ends_with(".txt") {
            return None;
        }
        let id = file.split('_').next()?.parse().ok()?;
        match lab {
            "pos" => Some((0, id)),
            "neg" => Some((1, id)),
            _ => None,
        }
    };
    let first_line = |name: &str, bytes: &[u8]| -> Result<String> {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| OeError::Data(format!("{name}: invalid UTF-8")))?;
        Ok(s.split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches('\r')
            .to_string())
    };
    if dir.is_dir() {
        for lab in ["pos", "neg"] {
            let d = dir.join(lab);
            for e in std::fs::read_dir(&d).map_err(|e| OeError::io(&d, e))? {
                let p = e.map_err(|e| OeError::io(&d, e))?.path();
                let name = format!("{split}/{lab}/{}", p.file_name().unwrap().to_string_lossy());
                if let Some((l, id)) = parse_name(&name) {
                    let b = std::fs::read(&p).map_err(|e| OeError::io(&p, e))?;
                    docs.push((l, id, first_line(&p.display().to_string(), &b)?));
                }
            }
        }
    } else {
        let ar = root.join("imdb").join("aclImdb_v1.tar.gz");
        let prefix = format!("aclImdb/{split}/");
        let mut raw: Vec<(u8, u64, String, Vec<u8>)> = Vec::new();
        text::for_each_tar_gz_member(
            &ar,
            |n| n.trim_start_matches("./").starts_with(&prefix),
            |name, bytes| {
                if let Some((l, id)) = parse_name(name) {
                    raw.push((l, id, name.to_string(), bytes));
                }
                Ok(())
            },
        )?;
        use rayon::prelude::*;
        docs = raw
            .into_par_iter()
            .map(|(l, id, name, b)| {
                Ok((
                    l,
                    id,
                    first_line(&format!("{}: member {name}", ar.display()), &b)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
    }
    docs.sort_by_key(|d| (d.0, d.1));
    let labels = docs
        .iter()
        .map(|d| if d.0 == 0 { "pos" } else { "neg" }.to_string())
        .collect();
    Ok((docs.into_iter().map(|d| d.2).collect(), labels))
}

/// One text per line (UTF-8), empty lines kept out.
pub fn lines_file(path: &Path) -> Result<Vec<String>> {
    let bytes = text::read_bytes(path)?;
    Ok(text::utf8_lines(path, &bytes)?
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Multi30K OOD texts: `multi30k/oe_train.txt`, a one-column CSV written by Python's csv module
/// (fields with commas or quotes are quoted), read back as torchtext's TabularDataset did.
pub fn multi30k(root: &Path) -> Result<Vec<String>> {
    let p = root.join("multi30k").join("oe_train.txt");
    let bytes = text::read_bytes(&p)?;
    text::utf8_text(&p, &bytes)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            OeError::parse(
                &p,
                e.position().map(|x| x.line() as usize).unwrap_or(0),
                format!("bad CSV row: {e}"),
            )
        })?;
        out.push(rec.get(0).unwrap_or("").to_string());
    }
    Ok(out)
}

/// Yelp Review Full `test.csv` (`"label","text"`, no header); returns (texts, labels).
pub fn yelp(root: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let p = root.join("yelp_review_full_csv").join("test.csv");
    let bytes = text::read_bytes(&p)?;
    text::utf8_text(&p, &bytes)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes.as_slice());
    let (mut t, mut l) = (Vec::new(), Vec::new());
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            OeError::parse(
                &p,
                e.position().map(|x| x.line() as usize).unwrap_or(0),
                format!("bad CSV row: {e}"),
            )
        })?;
        let line = rec.position().map(|x| x.line() as usize).unwrap_or(0);
        if rec.len() < 2 {
            return Err(OeError::parse(&p, line, "expected 2 columns (label, text)"));
        }
        l.push(rec[0].to_string());
        t.push(rec[1].to_string());
    }
    Ok((t, l))
}

pub const EWT_DOMAINS: [&str; 5] = ["answers", "email", "newsgroup", "reviews", "weblog"];

/// Sentences of CoNLL-style text: blank lines separate sentences, `#` lines are comments; the
/// word form is column 2. `conllu`: skip multi-word ranges (`1-2`) and empty nodes (`1.1`).
/// Returns (sentence, sent_id) pairs.
pub fn conll_sentences(
    path: &Path,
    bytes: &[u8],
    conllu: bool,
) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut sent_id: Option<String> = None;
    let lines = text::utf8_lines(path, bytes)?;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push((cur.join(" "), sent_id.take()));
                cur.clear();
            }
            sent_id = None;
            continue;
        }
        if conllu && line.starts_with('#') {
            if let Some(id) = line.strip_prefix("# sent_id =") {
                sent_id = Some(id.trim().to_string());
            }
            continue;
        }
        let cols: Vec<&str> = if conllu {
            line.split('\t').collect()
        } else {
            line.split_whitespace().collect()
        };
        if cols.len() < 2 {
            return Err(OeError::parse(
                path,
                i + 1,
                "expected at least 2 columns (ID, FORM)",
            ));
        }
        if conllu && (cols[0].contains('-') || cols[0].contains('.')) {
            continue;
        }
        cur.push(cols[1].to_string());
    }
    if !cur.is_empty() {
        out.push((cur.join(" "), sent_id));
    }
    Ok(out)
}

/// EWT dev sentences of one domain: the LDC layout
/// `eng_web_tbk/<domain>/conll/*_penntrees.dev.conll` (the paper's), else Universal Dependencies
/// `ewt/en_ewt-ud-dev.conllu` filtered by the `sent_id` prefix `<domain>-`.
pub fn ewt(root: &Path, domain: &str) -> Result<Vec<String>> {
    if !EWT_DOMAINS.contains(&domain) {
        return Err(OeError::Config(format!(
            "unknown EWT domain `{domain}` (expected one of {})",
            EWT_DOMAINS.join(", ")
        )));
    }
    let ldc = root.join("eng_web_tbk").join(domain).join("conll");
    if ldc.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&ldc)
            .map_err(|e| OeError::io(&ldc, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".dev.conll"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(OeError::Data(format!(
                "missing split: no *.dev.conll file in {}",
                ldc.display()
            )));
        }
        let mut out = Vec::new();
        for f in files {
            let b = text::read_bytes(&f)?;
            out.extend(conll_sentences(&f, &b, false)?.into_iter().map(|s| s.0));
        }
        return Ok(out);
    }
    let ud = root.join("ewt").join("en_ewt-ud-dev.conllu");
    let b = text::read_bytes(&ud)?;
    let prefix = format!("{domain}-");
    Ok(conll_sentences(&ud, &b, true)?
        .into_iter()
        .filter(|(_, id)| id.as_deref().is_some_and(|i| i.starts_with(&prefix)))
        .map(|(s, _)| s)
        .collect())
}

pub fn ewt_present(root: &Path, domain: &str) -> bool {
    root.join("eng_web_tbk").join(domain).join("conll").is_dir()
        || root.join("ewt").join("en_ewt-ud-dev.conllu").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conllu_parsing() {
        let s = b"# sent_id = answers-1\n# text = I can't\n1\tI\tI\n2-3\tcan't\t_\n2\tca\tcan\n3\tn't\tnot\n\n# sent_id = email-2\n1\tHi\thi\n";
        let v = conll_sentences(Path::new("x.conllu"), s, true).unwrap();
        assert_eq!(
            v[0],
            ("I ca n't".to_string(), Some("answers-1".to_string()))
        );
        assert_eq!(v[1].0, "Hi");
        let e = conll_sentences(Path::new("x.conll"), b"1 a\n2\n", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.conll:2:"), "{e}");
    }
}
