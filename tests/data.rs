//! Integration tests of the data layer: real data from `../shared/data` (skipped with a printed
//! reason when absent), loopback downloads, malformed inputs.

use crate::common::{no_leftovers, serve};
use oe::datasets::{fetch, manifest};
use oe::text::data::{self, TextOptions};
use oe::text::tokenize::{LabelVocab, WordVocab};
use std::path::{Path, PathBuf};

fn shared_data() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"));
    if p.join("SHA256SUMS").is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent", p.display());
        None
    }
}

fn reference_models() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/reference-models"
    ));
    p.is_dir().then_some(p)
}

/// Rows of `embedding.weight` in a safetensors file (header only).
fn embedding_rows(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["embedding.weight"]["shape"][0].as_u64().unwrap() as usize
}

fn label_order(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn sst_matches_the_reference() {
    let Some(root) = shared_data() else { return };
    let d = data::load_in_distribution("sst", &root, &TextOptions::default()).unwrap();
    assert_eq!(
        (d.train.len(), d.dev.as_ref().unwrap().len(), d.test.len()),
        (6920, 872, 1821)
    );
    assert!(
        d.train.texts[0].starts_with("The Rock is destined"),
        "{}",
        d.train.texts[0]
    );
    let v = d.build_vocab(10_000);
    assert_eq!(v.len(), 10_002);
    let lv = d.label_vocab();
    if let Some(rm) = reference_models() {
        assert_eq!(
            lv.names(),
            label_order(&rm.join("logits/sst.label-order.txt"))
        );
        assert_eq!(
            embedding_rows(&rm.join("sst-baseline.safetensors")),
            v.len()
        );
    }
    let f = data::load_in_distribution("sst-fine", &root, &TextOptions::default()).unwrap();
    assert_eq!((f.train.len(), f.test.len()), (8544, 2210));
    assert_eq!(f.label_vocab().len(), 5);
}

#[test]
fn trec_matches_the_reference() {
    let Some(root) = shared_data() else { return };
    let d = data::load_in_distribution("trec", &root, &TextOptions::default()).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (5452, 500));
    assert!(d.dev.is_none());
    let v = d.build_vocab(10_000);
    assert_eq!(v.len(), 8_679);
    assert_eq!(v.tokens()[..4], ["<unk>", "<pad>", "?", "the"]);
    let lv = d.label_vocab();
    assert_eq!(lv.len(), 50);
    if let Some(rm) = reference_models() {
        assert_eq!(
            lv.names(),
            label_order(&rm.join("logits/trec.label-order.txt"))
        );
        assert_eq!(
            embedding_rows(&rm.join("trec-baseline.safetensors")),
            v.len()
        );
    }
    // The 0xF0 byte becomes a space, as in torchtext.
    assert!(
        d.train.texts[65].contains("sister city"),
        "{}",
        d.train.texts[65]
    );
    let c = data::load_in_distribution("trec-coarse", &root, &TextOptions::default()).unwrap();
    assert_eq!(c.label_vocab().len(), 6);
    // Vocabulary save/load keeps indices.
    let dir = tempfile::tempdir().unwrap();
    v.save(&dir.path().join("vocab.json")).unwrap();
    let w = WordVocab::load(&dir.path().join("vocab.json")).unwrap();
    assert_eq!(w.sha256(), v.sha256());
    assert_eq!(w.encode(&d.test.texts[0]), v.encode(&d.test.texts[0]));
}

#[test]
fn twenty_newsgroups_counts() {
    let Some(root) = shared_data() else { return };
    let d = data::load_in_distribution("20ng", &root, &TextOptions::default()).unwrap();
    eprintln!(
        "20ng no-short (derived): train {} test {}",
        d.train.len(),
        d.test.len()
    );
    assert!((11_280..=11_314).contains(&d.train.len()));
    assert!((7_520..=7_532).contains(&d.test.len()));
    assert_eq!(d.label_vocab().len(), 20);
    assert!(d
        .train
        .texts
        .iter()
        .all(|t| t.split_whitespace().count() <= 100));
    assert!(d.train_untruncated.is_some());
    let v = d.build_vocab(10_000);
    assert_eq!(v.len(), 10_002);
    if let Some(rm) = reference_models() {
        assert_eq!(
            embedding_rows(&rm.join("20ng-baseline.safetensors")),
            v.len()
        );
    }
    let b = data::load_in_distribution("20ng-bydate", &root, &TextOptions::default()).unwrap();
    assert_eq!((b.train.len(), b.test.len()), (11_314, 7_532));
}

#[test]
fn wikitext2_sentences() {
    let Some(root) = shared_data() else { return };
    let s = data::load_oe_corpus("wikitext2", &root).unwrap();
    eprintln!("wikitext2 sentences: {}", s.len());
    assert!((60_000..=100_000).contains(&s.len()), "{}", s.len());
    assert!(s
        .iter()
        .all(|x| data::wikitext::keep_sentence(x) && *x == x.to_lowercase()));
}

#[test]
fn ood_sets_present_locally() {
    let Some(root) = shared_data() else { return };
    let avail = data::available_ood_sets(&root);
    for n in ["snli", "imdb", "multi30k", "wmt16"] {
        assert!(avail.contains(&n.to_string()), "{avail:?}");
    }
    let o = TextOptions::default();
    let snli = data::load_ood("snli", &root, &o).unwrap();
    assert_eq!(snli.texts.len(), 9_824);
    assert_eq!(snli.premises.as_ref().unwrap().len(), 9_824);
    assert_eq!(snli.texts[1], "the church is filled with song .");
    let m = data::load_ood("multi30k", &root, &o).unwrap();
    assert_eq!(m.texts.len(), 29_000);
    assert_eq!(
        m.texts[0],
        "two young , white males are outside near many bushes ."
    );
    let w = data::load_ood("wmt16", &root, &o).unwrap();
    assert_eq!(w.texts.len(), 22_191);
    let i = data::load_ood("imdb", &root, &o).unwrap();
    assert_eq!(i.texts.len(), 25_000);
    assert!(i.texts.iter().all(|t| *t == t.to_lowercase()));
    assert!(data::load_ood("yelp", &root, &o).is_err() || avail.contains(&"yelp".to_string()));
}

#[test]
fn manifests_match_sha256sums() {
    let Some(root) = shared_data() else { return };
    let sums: std::collections::HashMap<String, String> =
        std::fs::read_to_string(root.join("SHA256SUMS"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.split_once("  ")
                    .map(|(h, p)| (p.to_string(), h.to_string()))
            })
            .collect();
    let mut n = 0;
    for m in manifest::all() {
        for f in &m.files {
            if let Some(h) = sums.get(&f.path) {
                assert_eq!(f.sha256.as_deref(), Some(h.as_str()), "{}", f.path);
                n += 1;
            }
        }
    }
    assert!(n >= 20, "{n}");
}

// ------------------------------------------------------------------ loopback downloads

fn opts(mirror: String) -> fetch::FetchOptions {
    fetch::FetchOptions {
        mirror: Some(mirror),
        progress: None,
        ..Default::default()
    }
}

#[test]
fn loopback_good_download_then_verify() {
    let Some(shared) = shared_data() else { return };
    let base = serve(shared);
    let dir = tempfile::tempdir().unwrap();
    let m = manifest::get("trec").unwrap();
    let r = fetch::fetch_dataset(
        m,
        dir.path(),
        &opts(format!("{base}/good")),
        &data::check_loader_counts,
    )
    .unwrap();
    assert_eq!(r.len(), 2);
    assert!(
        r.iter().all(|x| matches!(x, fetch::Fetched::Downloaded(_))),
        "{r:?}"
    );
    let v = fetch::verify_dataset(m, dir.path(), &data::check_loader_counts).unwrap();
    assert!(v.ok(), "{v:?}");
    let d = data::load_in_distribution("trec", dir.path(), &TextOptions::default()).unwrap();
    assert_eq!(d.test.len(), 500);
    // Second fetch: nothing to do.
    let r = fetch::fetch_dataset(
        m,
        dir.path(),
        &opts(format!("{base}/good")),
        &data::check_loader_counts,
    )
    .unwrap();
    assert!(r
        .iter()
        .all(|x| matches!(x, fetch::Fetched::AlreadyPresent(_))));
    no_leftovers(dir.path());
}

#[test]
fn loopback_corrupted_truncated_and_missing_files_leave_nothing() {
    let Some(shared) = shared_data() else { return };
    let base = serve(shared);
    let m = manifest::get("wmt16").unwrap();
    for (mode, what) in [
        ("corrupt", "sha256"),
        ("truncate", "truncated"),
        ("nothing", "404"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let e = fetch::fetch_dataset(
            m,
            dir.path(),
            &opts(format!("{base}/{mode}")),
            &data::check_loader_counts,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(what), "{mode}: {e}");
        assert!(!dir.path().join("wmt16/wmt16_sentences").exists(), "{mode}");
        no_leftovers(dir.path());
        assert!(!data::ood_present("wmt16", dir.path()));
    }
    // A direct download of an archive-backed file (count-verified) through the mirror too.
    let dir = tempfile::tempdir().unwrap();
    let snli = manifest::get("snli").unwrap();
    fetch::fetch_dataset(
        snli,
        dir.path(),
        &opts(format!("{base}/good")),
        &data::check_loader_counts,
    )
    .unwrap();
    assert_eq!(
        data::load_ood("snli", dir.path(), &TextOptions::default())
            .unwrap()
            .texts
            .len(),
        9_824
    );
}

// ------------------------------------------------------------------ malformed inputs

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn malformed_sst_and_trec_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let o = TextOptions::default();
    let so = data::indist::SstOptions {
        fine_grained: false,
        subtrees: false,
    };
    let p = write(d.path(), "bad.txt", b"(3 (2 a) (3 b))\n(2 (2 c) (2 d)\n");
    let e = data::indist::parse_sst_file(&p, so, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.txt:2:") && e.contains("bad tree"), "{e}");
    let p = write(d.path(), "label.txt", b"(3 (2 a) (3 b))\n(7 (2 c) (2 d))\n");
    let e = data::indist::parse_sst_file(&p, so, &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label.txt:2:") && e.contains("unknown SST label"),
        "{e}"
    );
    let p = write(
        d.path(),
        "utf.txt",
        b"(3 (2 a) (3 b))\n(3 (2 \xff) (2 d))\n",
    );
    let e = data::indist::parse_sst_file(&p, so, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("utf.txt:2:") && e.contains("UTF-8"), "{e}");
    let p = write(d.path(), "t.label", b"HUM:ind Who is it ?\nnolabel\n");
    let e = data::indist::parse_trec_file(&p, true, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("t.label:2:"), "{e}");
}

#[test]
fn count_mismatch_missing_split_and_unknown_label() {
    let d = tempfile::tempdir().unwrap();
    let o = TextOptions::default();
    // SST files with too few trees: the manifest's count is strict.
    for s in ["train", "dev", "test"] {
        write(
            d.path(),
            &format!("sst/trees/{s}.txt"),
            b"(3 (2 good) (3 film))\n(1 (2 bad) (1 film))\n",
        );
    }
    let e = data::load_in_distribution("sst", d.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("loaded 2 examples") && e.contains("6920"), "{e}");
    // Missing split.
    let e = data::load_in_distribution("trec", d.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing file") && e.contains("train_5500.label"),
        "{e}"
    );
    let u = d.path().join("user");
    write(&u, "train.csv", b"text,label\nhello there,a\nbye now,b\n");
    let e = data::load_in_distribution(u.to_str().unwrap(), d.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing split"), "{e}");
    // Unknown label in test.
    write(&u, "test.csv", b"text,label\nhi,c\n");
    let e = data::load_in_distribution(u.to_str().unwrap(), d.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label `c`"), "{e}");
    write(&u, "test.csv", b"text,label\nHi There,a\n");
    let x = data::load_in_distribution(u.to_str().unwrap(), d.path(), &o).unwrap();
    assert_eq!(x.test.texts, vec!["hi there"]);
    let lv = LabelVocab::build(x.train.labels.iter().map(String::as_str));
    assert!(lv.index("zzz").is_err());
    // JSON lines and a missing column.
    let j = write(
        d.path(),
        "u2/train.jsonl",
        b"{\"text\": \"A b\", \"label\": 1}\n{\"text\": \"c\", \"label\": 2}\n",
    );
    write(
        d.path(),
        "u2/test.jsonl",
        b"{\"txt\": \"A b\", \"label\": 1}\n",
    );
    let e = data::load_in_distribution(j.to_str().unwrap(), d.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test.jsonl:1:") && e.contains("no field `text`"),
        "{e}"
    );
    // User OOD text file and OE corpus.
    let t = write(d.path(), "ood.txt", b"One\n\nTwo Three\n");
    assert_eq!(
        data::load_ood(t.to_str().unwrap(), d.path(), &o)
            .unwrap()
            .texts,
        vec!["one", "two three"]
    );
    assert_eq!(
        data::load_oe_corpus(t.to_str().unwrap(), d.path())
            .unwrap()
            .len(),
        2
    );
    let bad = write(d.path(), "bad.txt", b"ok\n\xfe\n");
    let e = data::load_ood(bad.to_str().unwrap(), d.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.txt:2:"), "{e}");
}

#[test]
fn data_root_resolution() {
    let p = oe::datasets::resolve_data_root(Some(Path::new("/x/y")));
    assert_eq!(p, PathBuf::from("/x/y"));
    let q = oe::datasets::resolve_data_root(None);
    assert!(
        q.ends_with("oe/data")
            || std::env::var_os("OE_DATA_DIR").is_some()
            || q.ends_with(".oe-data")
    );
}

#[test]
fn downloads_without_a_checksum_are_refused_unless_insecure() {
    // IMDB's canonical archive has no published checksum (the manifest's sha256 is the mirror
    // copy's): from its URL it is refused before anything is downloaded.
    let dir = tempfile::tempdir().unwrap();
    let opts = fetch::FetchOptions {
        progress: None,
        ..Default::default()
    };
    let m = manifest::get("imdb").unwrap();
    let e = fetch::fetch_dataset(m, dir.path(), &opts, &data::check_loader_counts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no checksum") && e.contains("--insecure"), "{e}");
    no_leftovers(dir.path());
    // With --insecure the download is attempted (and fails here: no network).
    let e = fetch::fetch_dataset(
        m,
        dir.path(),
        &fetch::FetchOptions {
            insecure: true,
            timeout: std::time::Duration::from_secs(2),
            ..opts.clone()
        },
        &data::check_loader_counts,
    )
    .unwrap_err()
    .to_string();
    assert!(!e.contains("no checksum"), "{e}");
    // The vision wing's Tiny ImageNet, through the command.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_oe-vision"))
        .args(["data", "fetch", "tinyimagenet", "--data-dir"])
        .arg(dir.path())
        .env_remove("OE_DATA_MIRROR")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("tiny-imagenet-200.zip") && e.contains("--insecure"),
        "{e}"
    );
}

/// An image-folder archive whose member header declares 100 GB (followed by a few bytes) is read
/// without reserving the declared size (which aborted the process).
#[test]
fn image_archive_with_a_huge_declared_member_does_not_abort() {
    let d = tempfile::tempdir().unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("cat/a.png").unwrap();
    h.set_size(100 << 30);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(b"\x89PNG truncated");
    let p = d.path().join("images.tar");
    std::fs::write(&p, raw).unwrap();
    // Reaching this point at all is the check; what comes back is the (short) member or an error.
    match oe::vision::data::folder::scan(&p) {
        Ok(v) => assert!(v.len() <= 1),
        Err(e) => assert!(e.to_string().contains("images.tar"), "{e}"),
    }
}
