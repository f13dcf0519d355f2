//! WikiText → one sentence per example, as `reformat_wikitext.py` of the reference (README, "The paper's protocol: text"):
//!
//! 1. drop lines equal to `" \n"` and heading lines starting with `" ="`; write every other line
//!    followed by an extra `"\n"`;
//! 2. split the whole text into sentences with NLTK punkt (`tokenizers/punkt/english.pickle`);
//! 3. drop sentences that start with `@`, a space, `\n` or a digit, that contain `\n`, or whose
//!    `len(s.split(' '))` is > 60 or < 3.
//!
//! NLTK's pretrained punkt parameters are not available here, so [`punkt_sentences`] re-implements
//! the punkt *tokenisation* algorithm (NLTK 3.4: `_slices_from_text` with its period-context regex,
//! `text_contains_sentbreak` with punkt's word tokeniser and first-pass annotation, and
//! `_realign_boundaries`) with a fixed list of abbreviations instead of the learned ones, and
//! these approximations of the second pass (which needs the learned orthographic statistics):
//! - a known abbreviation (or a token with an inner period such as `U.S.`/`F.C.`) is a break only
//!   when the next token is a capitalised frequent sentence starter (`The`, `He`, `In`, ...);
//! - an initial (`J.`) is a break only when followed by such a sentence starter;
//! - a number ending in a period is not a break when the next token starts lower-case;
//! - collocations are ignored.
//!
//! WikiText is space-tokenised, so nearly every sentence end is a standalone `.`/`?`/`!`, for which
//! punkt's decision does not depend on learned parameters; the approximations touch about 4,400
//! period-final words out of 2 million tokens. Like the real punkt, a decimal written `1 @.@ 5`
//! *is* split after `@.` (the `@` that follows is "non-word" punctuation); the tail starting with
//! `@` is then dropped by the reference's filter.

use rayon::prelude::*;

/// Step 1: the reference's line filter; returns the text fed to punkt.
pub fn reformat_lines(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + raw.len() / 50);
    for line in raw.split_inclusive('\n') {
        if line == " \n" || line.starts_with(" =") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The reference's sentence filter (step 3).
pub fn keep_sentence(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if first == '@' || first == ' ' || first == '\n' || first.is_numeric() {
        return false;
    }
    if s.contains('\n') {
        return false;
    }
    let n = s.split(' ').count();
    (3..=60).contains(&n)
}

/// All steps: filtered sentences, original case, in text order.
pub fn wikitext_sentences(raw: &str) -> Vec<String> {
    let text = reformat_lines(raw);
    // Punkt is sequential, but paragraphs separated by a blank line ("\n\n") whose preceding
    // paragraph ends with sentence-final punctuation are independent; split into chunks at
    // such boundaries and run chunks in parallel. Boundaries are chosen so that the result is
    // identical to a single pass (see `chunk_boundaries`).
    let chunks = chunk_boundaries(&text);
    let parts: Vec<Vec<String>> = chunks
        .par_iter()
        .map(|&(a, b)| {
            let chunk = &text[a..b];
            punkt_sentences(chunk)
                .into_iter()
                .filter(|s| keep_sentence(s))
                .map(str::to_string)
                .collect()
        })
        .collect();
    parts.into_iter().flatten().collect()
}

/// Chunk boundaries: just before a paragraph that starts with " " + an ASCII letter, when the
/// previous paragraph ends with a standalone `.` and a blank line separates them (`" .  \n\n W"`).
/// There punkt always breaks after the `.` (the next token is a plain word), the next sentence
/// starts at the word, and no boundary realignment can cross, so chunks are independent and
/// the concatenated result is identical to a single pass.
fn chunk_boundaries(text: &str) -> Vec<(usize, usize)> {
    let target = text.len() / 64 + 1;
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = target;
    while i < bytes.len() {
        let Some(off) = text[i..].find("\n\n ") else {
            break;
        };
        let nl = i + off;
        let pos = nl + 3; // first byte of the next paragraph's first word
        let before = text[..nl].trim_end();
        if pos < bytes.len() && bytes[pos].is_ascii_alphabetic() && before.ends_with(" .") {
            out.push((start, pos));
            start = pos;
            i = start + target;
        } else {
            i = nl + 1;
        }
    }
    out.push((start, bytes.len()));
    out
}

const SENT_END: [u8; 3] = [b'.', b'?', b'!'];

/// Punkt's `_re_non_word_chars`.
fn is_non_word(c: char) -> bool {
    matches!(
        c,
        '?' | '!' | ')' | '"' | ';' | '}' | ']' | '*' | ':' | '@' | '\'' | '(' | '{' | '['
    )
}

/// Punkt's `_re_word_start` is `[^\(\"\`{\[:;&\#\*@\)}\]\-,]`.
fn is_word_start(c: char) -> bool {
    !matches!(
        c,
        '(' | '"'
            | '`'
            | '{'
            | '['
            | ':'
            | ';'
            | '&'
            | '#'
            | '*'
            | '@'
            | ')'
            | '}'
            | ']'
            | '-'
            | ','
    )
}

/// Abbreviations (lower-case, without the final period) treated as punkt's learned `abbrev_types`.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "no", "nos", "nr", "op", "vs", "v", "inc", "ltd",
    "co", "corp", "bros", "gen", "col", "lt", "sgt", "capt", "cpt", "maj", "adm", "rev", "fr",
    "gov", "sen", "rep", "pres", "prof", "mt", "ft", "ave", "blvd", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "e.g", "i.e", "a.m", "p.m", "pp",
    "al", "etc", "ca", "c", "var", "ssp", "vol", "ch", "fig", "approx", "dept", "est", "u.s",
    "u.k", "u.n", "d.c", "l.a", "messrs", "hon", "cf",
];

/// Capitalised words that punkt's orthographic statistics mark as sentence starters.
const SENT_STARTERS: &[&str] = &[
    "the",
    "a",
    "an",
    "he",
    "she",
    "it",
    "they",
    "we",
    "i",
    "in",
    "on",
    "at",
    "this",
    "that",
    "these",
    "those",
    "his",
    "her",
    "their",
    "its",
    "but",
    "and",
    "however",
    "after",
    "when",
    "while",
    "during",
    "as",
    "there",
    "following",
    "although",
    "since",
    "by",
    "for",
    "from",
    "with",
    "to",
    "of",
    "one",
    "both",
    "other",
    "many",
    "some",
    "several",
    "despite",
    "if",
];

fn is_number_type(tok: &str) -> bool {
    // `^-?[\.,]?\d[\d,\.-]*\.?$`
    let t = tok.strip_prefix('-').unwrap_or(tok);
    let t = t.strip_prefix(['.', ',']).unwrap_or(t);
    let mut cs = t.chars();
    match cs.next() {
        Some(c) if c.is_ascii_digit() => {}
        _ => return false,
    }
    cs.all(|c| c.is_ascii_digit() || matches!(c, ',' | '.' | '-'))
}

fn multichar_len(cs: &[char], i: usize) -> Option<usize> {
    let n = cs.len();
    if cs[i] == '-' {
        let mut j = i;
        while j < n && cs[j] == '-' {
            j += 1;
        }
        if j - i >= 2 {
            return Some(j - i);
        }
        return None;
    }
    if cs[i] == '.' {
        let mut j = i;
        while j < n && cs[j] == '.' {
            j += 1;
        }
        if j - i >= 2 {
            return Some(j - i);
        }
        // (?:\.\s){2,}\.
        let mut k = i;
        let mut reps = 0;
        while k + 1 < n && cs[k] == '.' && cs[k + 1].is_whitespace() {
            k += 2;
            reps += 1;
        }
        // backtrack until a '.' follows
        while reps >= 2 {
            if k < n && cs[k] == '.' {
                return Some(k + 1 - i);
            }
            k -= 2;
            reps -= 1;
        }
    }
    None
}

/// Punkt's word tokeniser (`_word_tokenize_fmt`).
fn punkt_words(s: &str) -> Vec<String> {
    let cs: Vec<char> = s.chars().collect();
    let n = cs.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if cs[i].is_whitespace() {
            i += 1;
            continue;
        }
        if let Some(l) = multichar_len(&cs, i) {
            out.push(cs[i..i + l].iter().collect());
            i += l;
            continue;
        }
        if is_word_start(cs[i]) {
            let mut j = i + 1;
            while j < n {
                let c = cs[j];
                let ends = c.is_whitespace()
                    || is_non_word(c)
                    || multichar_len(&cs, j).is_some()
                    || (c == ','
                        && (j + 1 == n
                            || cs[j + 1].is_whitespace()
                            || is_non_word(cs[j + 1])
                            || multichar_len(&cs, j + 1).is_some()));
                if ends {
                    break;
                }
                j += 1;
            }
            out.push(cs[i..j].iter().collect());
            i = j;
            continue;
        }
        out.push(cs[i].to_string());
        i += 1;
    }
    out
}

fn is_initial(tok: &str) -> bool {
    let mut cs = tok.chars();
    matches!((cs.next(), cs.next(), cs.next()), (Some(c), Some('.'), None) if c.is_alphabetic())
}

fn first_upper(tok: &str) -> bool {
    tok.chars().next().is_some_and(char::is_uppercase)
}

fn first_lower(tok: &str) -> bool {
    tok.chars().next().is_some_and(char::is_lowercase)
}

fn is_starter(tok: &str) -> bool {
    first_upper(tok) && SENT_STARTERS.contains(&tok.to_lowercase().as_str())
}

/// `text_contains_sentbreak`: does any token but the last end a sentence?
fn contains_sentbreak(context: &str) -> bool {
    let toks = punkt_words(context);
    for (k, tok) in toks.iter().enumerate() {
        if k + 1 == toks.len() {
            break;
        }
        let next = &toks[k + 1];
        let t = tok.as_str();
        let brk = if t == "." || t == "?" || t == "!" {
            true
        } else if t.len() >= 2 && t.bytes().all(|b| b == b'.') {
            false // ellipsis
        } else if t.ends_with('.') && !t.ends_with("..") {
            let stem = t[..t.len() - 1].to_lowercase();
            let last = stem.rsplit('-').next().unwrap_or("");
            let abbr = ABBREVIATIONS.contains(&stem.as_str())
                || ABBREVIATIONS.contains(&last)
                || (stem.contains('.') && stem.chars().any(char::is_alphabetic));
            if abbr || is_initial(t) {
                is_starter(next)
            } else if is_number_type(t) {
                !(first_lower(next) || matches!(next.as_str(), ";" | ":" | "," | "." | "!" | "?"))
            } else {
                true
            }
        } else {
            false
        };
        if brk {
            return true;
        }
    }
    false
}

/// Sentence spans (`sentences_from_text` with `realign_boundaries=True`) of `text`.
pub fn punkt_sentences(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    // Non-whitespace runs.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut run_start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = run_start.take() {
                runs.push((s, i));
            }
        } else if run_start.is_none() {
            run_start = Some(i);
        }
    }
    if let Some(s) = run_start {
        runs.push((s, text.len()));
    }
    // _slices_from_text
    let mut slices: Vec<(usize, usize)> = Vec::new();
    let mut last_break = 0usize;
    for (r, &(a, b)) in runs.iter().enumerate() {
        let next_run = runs.get(r + 1).copied();
        let mut p = a;
        while p < b {
            // Longest match of \S*[.?!] starting at p with the lookahead.
            let mut found = None;
            let mut q = b;
            while q > p {
                if SENT_END.contains(&bytes[q - 1]) {
                    let ok = if q == b {
                        next_run.is_some()
                    } else {
                        text[q..].chars().next().is_some_and(is_non_word)
                    };
                    if ok {
                        found = Some(q);
                        break;
                    }
                }
                q -= 1;
                while q > p && !text.is_char_boundary(q) {
                    q -= 1;
                }
            }
            let Some(q) = found else { break };
            let (after, next_tok_start) = if q == b {
                let (na, nb) = next_run.expect("checked");
                (&text[q..nb], Some(na))
            } else {
                let c = text[q..].chars().next().expect("checked");
                (&text[q..q + c.len_utf8()], None)
            };
            let mut context = String::with_capacity(q - p + after.len());
            context.push_str(&text[p..q]);
            context.push_str(after);
            if contains_sentbreak(&context) {
                slices.push((last_break, q));
                last_break = next_tok_start.unwrap_or(q);
            }
            p = q;
        }
    }
    slices.push((last_break, text.trim_end().len().max(last_break)));
    // _realign_boundaries
    let mut out = Vec::with_capacity(slices.len());
    let mut realign = 0usize;
    for k in 0..slices.len() {
        let (s1, e1) = (slices[k].0 + realign, slices[k].1);
        let s1 = s1.min(e1.max(s1));
        let Some(&(s2, e2)) = slices.get(k + 1) else {
            if s1 < e1 {
                out.push(&text[s1..e1]);
            }
            continue;
        };
        match boundary_realignment(&text[s2..e2.max(s2)]) {
            Some((kept, end)) => {
                out.push(&text[s1..s2 + kept]);
                realign = end;
            }
            None => {
                realign = 0;
                if s1 < e1 {
                    out.push(&text[s1..e1]);
                }
            }
        }
    }
    out
}

/// `re.match(r'["\')\]}]+?(?:\s+|(?=--)|$)', s, re.MULTILINE)`: (len of group.rstrip(), match end).
fn boundary_realignment(s: &str) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let closer = |c: u8| matches!(c, b'"' | b'\'' | b')' | b']' | b'}');
    let mut i = 0;
    while i < b.len() && closer(b[i]) {
        i += 1;
        // lazy: try to finish after i closers
        let rest = &s[i..];
        let ws: usize = rest
            .char_indices()
            .find(|(_, c)| !c.is_whitespace())
            .map(|(k, _)| k)
            .unwrap_or(rest.len());
        if ws > 0 {
            return Some((i, i + ws));
        }
        if rest.starts_with("--") || rest.is_empty() || rest.starts_with('\n') {
            return Some((i, i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_punkt_on_wikitext_style_text() {
        let t = " The cat sat . It was 1 @.@ 5 m tall . \" Yes , \" he said . \n\n The U.S. Army left . J. Smith came .\n\n";
        let s = punkt_sentences(t);
        assert_eq!(
            s,
            vec![
                " The cat sat .",
                "It was 1 @.",
                "@ 5 m tall . \"",
                "Yes , \" he said .",
                "The U.S. Army left .",
                "J. Smith came ."
            ]
        );
    }

    #[test]
    fn reference_filters() {
        let raw = " = Title = \n \n First para without end\n Second one here . Another one is here .\n \n = = Sec = = \n 3 starts with digit . ok ok ok .\n";
        let s = wikitext_sentences(raw);
        assert_eq!(s, vec!["Another one is here .", "ok ok ok ."]);
        assert!(!keep_sentence("a b"));
        assert!(keep_sentence("a b c"));
        assert!(!keep_sentence(&"a ".repeat(61)));
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let mut raw = String::new();
        for i in 0..3000 {
            raw.push_str(&format!(
                " Para {i} has words . And \" quoted \" text ( yes ) . \n \n"
            ));
            if i % 7 == 0 {
                raw.push_str(" A list item without end\n");
            }
        }
        let text = reformat_lines(&raw);
        let single: Vec<String> = punkt_sentences(&text)
            .into_iter()
            .filter(|s| keep_sentence(s))
            .map(str::to_string)
            .collect();
        assert_eq!(wikitext_sentences(&raw), single);
        assert!(chunk_boundaries(&text).len() > 1);
    }
}
