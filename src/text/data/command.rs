//! The text data commands (`oe-text data list | show NAME | fetch NAME... | verify [NAME...] |
//! bench`): what they report is returned as text for the binary to print.

use crate::datasets::fetch::{self, FetchOptions};
use crate::datasets::manifest::{self, Role};
use crate::error::{OeError, Result};
use std::path::Path;

/// Appends one formatted line to a `String`.
macro_rules! say {
    ($o:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($t)*);
    }};
}

/// A data command.
#[derive(Clone, Debug)]
pub enum DataRequest {
    /// The known datasets, their role and whether their files are present.
    List,
    /// Counts per split and `examples` examples of one dataset.
    Show { name: String, examples: usize },
    /// Download the missing files of `names` as `opts` says.
    Fetch {
        names: Vec<String>,
        opts: FetchOptions,
    },
    /// Re-check files (sha256) and loader counts (default: every dataset present).
    Verify { names: Vec<String> },
    /// Time parsing and tokenising IMDB and extracting WikiText-2 sentences.
    Bench { repeats: usize },
}

/// What a data command reports.
#[derive(Clone, Debug, Default)]
pub struct DataOutput {
    /// The report, for standard output.
    pub text: String,
    /// Datasets that failed verification, or (`show`) loaders that failed: the command fails after
    /// printing the report.
    pub failed: Vec<String>,
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

pub fn run_data(root: &Path, req: &DataRequest) -> Result<DataOutput> {
    let root = root.to_path_buf();
    let mut out = String::new();
    let mut failed = Vec::new();
    match req {
        DataRequest::List => out += &crate::datasets::list(manifest::all(), &root),
        DataRequest::Show { name, examples } => {
            let m = manifest::find(name);
            if let Some(m) = m {
                say!(
                    out,
                    "{} — {}\nrole: {}\n{}\npreprocessing: {}\nlicense: {}\ncitation: {}",
                    m.name,
                    m.title,
                    m.role,
                    m.description,
                    m.preprocessing,
                    m.license,
                    m.citation
                );
            }
            let loads: Vec<String> = match m {
                Some(m) if m.name == *name => m.loads.clone(),
                _ => vec![name.clone()],
            };
            let role = m.map(|m| m.role);
            for l in loads {
                let r: Result<()> = (|| {
                    match role {
                        Some(Role::InDistribution) | None
                            if role.is_some()
                                || super::IN_DISTRIBUTION_NAMES.contains(&l.as_str()) =>
                        {
                            let d = super::load_in_distribution(&l, &root, &Default::default())?;
                            say!(out, "\n[{l}] classes: {}", d.label_vocab().len());
                            let mut splits = vec![("train", &d.train)];
                            if let Some(dev) = &d.dev {
                                splits.push(("dev", dev));
                            }
                            splits.push(("test", &d.test));
                            for (s, x) in splits {
                                say!(out, "  {s}: {} examples", x.len());
                                for i in 0..x.len().min(*examples) {
                                    say!(out, "    [{}] {}", x.labels[i], short(&x.texts[i], 100));
                                }
                            }
                        }
                        Some(Role::OutlierExposure) => {
                            let s = super::load_oe_corpus(&l, &root)?;
                            say!(out, "\n[{l}] {} sentences", s.len());
                            s.iter()
                                .take(*examples)
                                .for_each(|t| say!(out, "    {}", short(t, 100)));
                        }
                        _ => {
                            let s = super::load_ood(&l, &root, &Default::default())?;
                            say!(out, "\n[{l}] test: {} texts", s.texts.len());
                            s.texts
                                .iter()
                                .take(*examples)
                                .for_each(|t| say!(out, "    {}", short(t, 100)));
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    say!(out, "\n[{l}] not loadable: {e}");
                    failed.push(l);
                }
            }
        }
        DataRequest::Fetch { names, opts } => {
            let ms = names
                .iter()
                .map(|n| manifest::get(n))
                .collect::<Result<Vec<_>>>()?;
            out += &fetch::fetch_report(&ms, &root, opts, &super::check_loader_counts)?;
        }
        DataRequest::Bench { repeats } => out += &bench(&root, *repeats)?,
        DataRequest::Verify { names } => {
            if !root.is_dir() {
                return Err(OeError::Data(format!(
                    "data root {} does not exist or is not a folder (point --data-dir or \
                     OE_DATA_DIR at the data root, or fetch with `oe-text data fetch NAME`)",
                    root.display()
                )));
            }
            let ms: Vec<&manifest::Manifest> = if names.is_empty() {
                // Every dataset with any of its files here: a partly deleted one is verified (and
                // fails), not skipped.
                let ms: Vec<_> = manifest::all()
                    .iter()
                    .filter(|m| {
                        m.role != Role::User && m.files.iter().any(|f| root.join(&f.path).exists())
                    })
                    .collect();
                if ms.is_empty() {
                    return Err(OeError::Data(format!(
                        "nothing to verify: no dataset files under the data root {} (fetch with \
                         `oe-text data fetch NAME`, or point --data-dir at the data root)",
                        root.display()
                    )));
                }
                ms
            } else {
                names
                    .iter()
                    .map(|n| manifest::get(n))
                    .collect::<Result<_>>()?
            };
            let mut bad = Vec::new();
            for m in ms {
                let r = fetch::verify_dataset(m, &root, &super::check_loader_counts)?;
                out += &crate::datasets::verify_lines(&r);
                if !r.ok() {
                    bad.push(m.name.clone());
                }
            }
            failed = bad;
        }
    }
    Ok(DataOutput { text: out, failed })
}

/// Times (1) IMDB test: 25,000 reviews parsed from `imdb/aclImdb_v1.tar.gz`, lower-cased and
/// tokenised to indices with the SST vocabulary (or one built from the reviews when SST is
/// absent); (2) WikiText-2 sentence extraction. Reports each run and the best of `repeats`.
pub fn bench(root: &std::path::Path, repeats: usize) -> Result<String> {
    let mut out = String::new();
    use rayon::prelude::*;
    use std::time::Instant;
    let opts = super::TextOptions::default();
    say!(
        out,
        "data root: {}  threads: {}",
        root.display(),
        rayon::current_num_threads()
    );
    let vocab = super::load_in_distribution("sst", root, &opts)
        .map(|d| d.build_vocab(10_000))
        .ok();
    let mut best = [f64::INFINITY; 2];
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let imdb = super::load_ood("imdb", root, &opts)?;
        let v = match &vocab {
            Some(v) => v.clone(),
            None => crate::text::tokenize::WordVocab::build(
                imdb.texts.iter().map(String::as_str),
                10_000,
            ),
        };
        let ids: Vec<Vec<i64>> = imdb.texts.par_iter().map(|s| v.encode(s)).collect();
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let a = t.elapsed().as_secs_f64();
        best[0] = best[0].min(a);
        say!(
            out,
            "imdb test: {} reviews, {tokens} tokens, parse+tokenise {a:.3} s",
            imdb.texts.len()
        );
        let t = Instant::now();
        let s = super::load_oe_corpus("wikitext2", root)?;
        let b = t.elapsed().as_secs_f64();
        best[1] = best[1].min(b);
        say!(out, "wikitext2: {} sentences, extraction {b:.3} s", s.len());
    }
    say!(
        out,
        "best of {}: imdb {:.3} s, wikitext2 {:.3} s (target < 3 s each)",
        repeats.max(1),
        best[0],
        best[1]
    );
    Ok(out)
}
