//! `oe-text data list | show NAME | fetch NAME... | verify [NAME...]`.

use super::fetch::{self, FetchOptions, Fetched, FileStatus};
use super::manifest::{self, Role};
use crate::error::{OeError, Result};
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data root (default: $OE_DATA_DIR, then ~/.cache/oe/data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum DataCommand {
    /// List the known datasets, their role and whether their files are present.
    List,
    /// Counts per split and a few examples of one dataset (manifest or loader name).
    Show {
        name: String,
        /// Examples to print per split.
        #[arg(long, default_value_t = 3)]
        examples: usize,
    },
    /// Download the missing files of datasets (from $OE_DATA_MIRROR when set, else the manifest URLs).
    Fetch {
        #[arg(required = true)]
        names: Vec<String>,
        /// Also fetch optional files.
        #[arg(long)]
        all: bool,
        /// Mirror base URL (overrides $OE_DATA_MIRROR): http://host/path, file:///dir or a folder.
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Re-check the files on disk (sha256) and the loaders' example counts (default: every dataset present).
    Verify { names: Vec<String> },
    /// Benchmark: parse + tokenise the IMDB test split (from the .tar.gz) and extract the
    /// WikiText-2 sentences (experiments/bench_data.sh runs it in release).
    Bench {
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

fn present(m: &manifest::Manifest, root: &std::path::Path) -> bool {
    m.files
        .iter()
        .filter(|f| f.required)
        .all(|f| root.join(&f.path).is_file())
        && m.files.iter().any(|f| f.required)
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

pub fn run_data(args: &DataArgs) -> Result<()> {
    let root = super::resolve_data_root(args.data_dir.as_deref());
    match &args.command {
        DataCommand::List => {
            println!("data root: {}", root.display());
            println!("{:<14} {:<17} {:<8} loads", "name", "role", "present");
            for m in manifest::all() {
                let p = if m.role == Role::User {
                    "-"
                } else if present(m, &root) {
                    "yes"
                } else {
                    "no"
                };
                println!(
                    "{:<14} {:<17} {:<8} {}",
                    m.name,
                    m.role.to_string(),
                    p,
                    m.loads.join(", ")
                );
            }
        }
        DataCommand::Show { name, examples } => {
            let m = manifest::find(name);
            if let Some(m) = m {
                println!(
                    "{} — {}\nrole: {}\n{}\npreprocessing: {}\nlicense: {}\ncitation: {}",
                    m.name, m.title, m.role, m.description, m.preprocessing, m.license, m.citation
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
                            println!("\n[{l}] classes: {}", d.label_vocab().len());
                            let mut splits = vec![("train", &d.train)];
                            if let Some(dev) = &d.dev {
                                splits.push(("dev", dev));
                            }
                            splits.push(("test", &d.test));
                            for (s, x) in splits {
                                println!("  {s}: {} examples", x.len());
                                for i in 0..x.len().min(*examples) {
                                    println!("    [{}] {}", x.labels[i], short(&x.texts[i], 100));
                                }
                            }
                        }
                        Some(Role::OutlierExposure) => {
                            let s = super::load_oe_corpus(&l, &root)?;
                            println!("\n[{l}] {} sentences", s.len());
                            s.iter()
                                .take(*examples)
                                .for_each(|t| println!("    {}", short(t, 100)));
                        }
                        _ => {
                            let s = super::load_ood(&l, &root, &Default::default())?;
                            println!("\n[{l}] test: {} texts", s.texts.len());
                            s.texts
                                .iter()
                                .take(*examples)
                                .for_each(|t| println!("    {}", short(t, 100)));
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    println!("\n[{l}] not loadable: {e}");
                }
            }
        }
        DataCommand::Fetch { names, all, mirror } => {
            let mut opts = FetchOptions::from_env();
            opts.all = *all;
            if mirror.is_some() {
                opts.mirror = mirror.clone();
            }
            for n in names {
                let m = manifest::get(n)?;
                for r in fetch::fetch_dataset(m, &root, &opts)? {
                    match r {
                        Fetched::AlreadyPresent(p) => println!("{}: {p}: present", m.name),
                        Fetched::Downloaded(p) => {
                            println!("{}: {p}: downloaded and verified", m.name)
                        }
                        Fetched::Skipped(p, why) => println!("{}: {p}: skipped ({why})", m.name),
                    }
                }
            }
        }
        DataCommand::Bench { repeats } => bench(&root, *repeats)?,
        DataCommand::Verify { names } => {
            let ms: Vec<&manifest::Manifest> = if names.is_empty() {
                manifest::all()
                    .iter()
                    .filter(|m| m.role != Role::User && present(m, &root))
                    .collect()
            } else {
                names
                    .iter()
                    .map(|n| manifest::get(n))
                    .collect::<Result<_>>()?
            };
            let mut bad = Vec::new();
            for m in ms {
                let r = fetch::verify_dataset(m, &root)?;
                println!("{}:", m.name);
                for (p, s, req) in &r.files {
                    let st = match s {
                        FileStatus::Verified => "sha256 ok".to_string(),
                        FileStatus::Unchecked => "present (checked by counts)".to_string(),
                        FileStatus::Mismatch { expected, actual } => {
                            format!("SHA256 MISMATCH: expected {expected}, got {actual}")
                        }
                        FileStatus::Missing if *req => "MISSING".to_string(),
                        FileStatus::Missing => "absent (optional)".to_string(),
                    };
                    println!("  {p}: {st}");
                }
                match &r.counts {
                    Ok(lines) => lines.iter().for_each(|l| println!("  counts {l}")),
                    Err(e) => println!("  COUNTS FAILED: {e}"),
                }
                if !r.ok() {
                    bad.push(m.name.clone());
                }
            }
            if !bad.is_empty() {
                return Err(OeError::Data(format!(
                    "verification failed for: {}",
                    bad.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Times (1) IMDB test: 25,000 reviews parsed from `imdb/aclImdb_v1.tar.gz`, lower-cased and
/// tokenised to indices with the SST vocabulary (or one built from the reviews when SST is
/// absent); (2) WikiText-2 sentence extraction. Prints each run and the best of `repeats`.
pub fn bench(root: &std::path::Path, repeats: usize) -> Result<()> {
    use rayon::prelude::*;
    use std::time::Instant;
    let opts = super::TextOptions::default();
    println!(
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
            None => {
                crate::tokenize::WordVocab::build(imdb.texts.iter().map(String::as_str), 10_000)
            }
        };
        let ids: Vec<Vec<i64>> = imdb.texts.par_iter().map(|s| v.encode(s)).collect();
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let a = t.elapsed().as_secs_f64();
        best[0] = best[0].min(a);
        println!(
            "imdb test: {} reviews, {tokens} tokens, parse+tokenise {a:.3} s",
            imdb.texts.len()
        );
        let t = Instant::now();
        let s = super::load_oe_corpus("wikitext2", root)?;
        let b = t.elapsed().as_secs_f64();
        best[1] = best[1].min(b);
        println!("wikitext2: {} sentences, extraction {b:.3} s", s.len());
    }
    println!(
        "best of {}: imdb {:.3} s, wikitext2 {:.3} s (target < 3 s each)",
        repeats.max(1),
        best[0],
        best[1]
    );
    Ok(())
}
