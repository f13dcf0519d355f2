//! Calibrated decisions checked by what they guarantee, on real data: the paper's released SST GRU
//! fine-tuned with OE scores SST dev + test (in-distribution) and SNLI hypotheses (OOD) with MSP; conformal p-values
//! against a random calibration part of the in-distribution texts must flag held-out
//! in-distribution texts at rate α (within binomial bounds), and Benjamini–Hochberg over a mixture
//! must keep the realised false-discovery proportion at most q·m0/m on average. Then the same
//! decisions through `oe-text calibrate` + `oe-text score --alpha / --fdr`.

use crate::common;
use oe::detect::conformal::{benjamini_hochberg, Conformal};
use oe::text::score::{score_texts, ScoreOptions};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use tch::Device;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("data/sst").is_dir()
        && p.join("reference-models/sst-baseline.safetensors")
            .is_file()
    {
        Some(p)
    } else {
        eprintln!("skipped: ../shared/data/sst or the released SST weights are not present");
        None
    }
}

/// MSP scores of SST dev + test and of SNLI test hypotheses, by the released SST baseline GRU.
fn scores(shared: &Path, dir: &Path) -> (Vec<f64>, Vec<f64>) {
    tch::set_num_threads(1);
    let data = shared.join("data");
    let (m, ind) = oe::text::pipeline::import_weights(
        &shared.join("reference-models/sst-oe-wikitext2-finetune.safetensors"),
        "sst",
        &data,
        &Default::default(),
        oe::train::MethodLabel::Oe,
        dir,
        Device::Cpu,
    )
    .unwrap();
    let mut id_texts = ind.dev.unwrap().texts;
    id_texts.extend(ind.test.texts);
    let ood = oe::text::data::load_ood("snli", &data, &Default::default()).unwrap();
    let opts = ScoreOptions::default();
    let f = |t: &[String]| -> Vec<f64> {
        score_texts(&m, t, &opts)
            .unwrap()
            .iter()
            .map(|s| f64::from(s.score))
            .collect()
    };
    (f(&id_texts), f(&ood.texts))
}

#[test]
fn conformal_false_alarms_and_bh_false_discoveries_stay_within_their_bounds() {
    let Some(shared) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (id, ood) = scores(&shared, tmp.path());
    assert_eq!(id.len(), 872 + 1821);
    let (n_cal, alpha, q) = (1000usize, 0.1, 0.2);
    let (n_id, n_ood) = (300usize, 200usize);
    let splits = 200;
    let mut rates = Vec::new();
    let mut fdps = Vec::new();
    let mut true_flags = 0usize;
    let mut m0_over_m = 0.0;
    for seed in 0..splits {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..id.len()).collect();
        idx.shuffle(&mut rng);
        let cal = Conformal::new(idx[..n_cal].iter().map(|&i| id[i]).collect()).unwrap();
        let held: Vec<f64> = idx[n_cal..].iter().map(|&i| cal.p_value(id[i])).collect();
        let flagged = held.iter().filter(|&&p| p <= alpha).count();
        rates.push(flagged as f64 / held.len() as f64);
        // A mixture of held-out in-distribution texts and OOD texts.
        let mut oi: Vec<usize> = (0..ood.len()).collect();
        oi.shuffle(&mut rng);
        let mut p: Vec<f64> = held[..n_id].to_vec();
        p.extend(oi[..n_ood].iter().map(|&i| cal.p_value(ood[i])));
        let flags = benjamini_hochberg(&p, q);
        let false_flags = flags[..n_id].iter().filter(|&&f| f).count();
        let all_flags = flags.iter().filter(|&&f| f).count();
        fdps.push(false_flags as f64 / all_flags.max(1) as f64);
        true_flags += all_flags - false_flags;
        m0_over_m = n_id as f64 / (n_id + n_ood) as f64;
    }
    // Exact marginal rate of conformal p <= α: ⌊α(n+1)⌋ / (n+1).
    let exact = (alpha * (n_cal + 1) as f64).floor() / (n_cal + 1) as f64;
    let mean = rates.iter().sum::<f64>() / splits as f64;
    let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (splits - 1) as f64).sqrt();
    let se = sd / (splits as f64).sqrt();
    eprintln!("false-alarm rate at α = {alpha}: mean {mean:.4} (exact {exact:.4}), sd {sd:.4}");
    assert!(
        (mean - exact).abs() <= 4.0 * se + 1e-9,
        "mean {mean} vs {exact} (se {se})"
    );
    // Each split's rate within binomial bounds: held-out count ~ Binomial(n_test, α) widened by the
    // calibration part's own sampling, var ≈ α(1−α)(1/n_test + 1/n_cal).
    let n_test = (id.len() - n_cal) as f64;
    let band = 4.0 * (alpha * (1.0 - alpha) * (1.0 / n_test + 1.0 / n_cal as f64)).sqrt();
    let outside = rates.iter().filter(|r| (*r - alpha).abs() > band).count();
    assert!(
        outside <= 2,
        "{outside} of {splits} splits outside α ± {band:.4}"
    );
    let fdr = fdps.iter().sum::<f64>() / splits as f64;
    let fdr_sd = (fdps.iter().map(|x| (x - fdr).powi(2)).sum::<f64>() / (splits - 1) as f64).sqrt();
    let bound = q * m0_over_m;
    eprintln!("Benjamini-Hochberg at q = {q}: realised FDR {fdr:.4} (bound q·m0/m = {bound:.4})");
    assert!(
        fdr <= bound + 3.0 * fdr_sd / (splits as f64).sqrt(),
        "FDR {fdr} above {bound}"
    );
    // Not vacuous: BH does flag OOD texts (MSP of a 2-class model saturates at 0.5, so few OOD
    // texts score above every calibration text; about 2 of 200 per mixture here) and makes false
    // discoveries (the realised FDR is above 0).
    let per_mixture = true_flags as f64 / splits as f64;
    eprintln!("Benjamini-Hochberg: {per_mixture:.2} OOD texts flagged per mixture of {n_ood}");
    assert!(
        per_mixture >= 1.0 && fdr > 0.0,
        "BH flagged {per_mixture} OOD texts per mixture"
    );
}

#[test]
fn score_alpha_and_fdr_through_the_commands() {
    let Some(shared) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("sst-baseline");
    let data = shared.join("data");
    let bin = env!("CARGO_BIN_EXE_oe-text");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .args(["--device", "cpu", "--threads", "1"])
            .output()
            .unwrap();
        common::check(&out);
        out
    };
    let weights = shared.join("reference-models/sst-baseline.safetensors");
    let (w, m, d) = (
        weights.to_str().unwrap(),
        model.to_str().unwrap(),
        data.to_str().unwrap(),
    );
    run(&[
        "eval",
        "--weights",
        w,
        "--in",
        "sst",
        "--method",
        "baseline",
        "--data-dir",
        d,
        "--out",
        m,
        "--ood",
        "snli",
        "--repeats",
        "1",
    ]);
    // Calibrate on the dev split (872 texts): the validation scores are stored.
    run(&[
        "calibrate",
        "--model",
        m,
        "--tpr",
        "0.9",
        "--split",
        "dev",
        "--data-dir",
        d,
    ]);
    let cal = oe::text::calibrate::load(&model, &oe::detect::Score::Msp).unwrap();
    assert_eq!(cal.validation_scores.len(), 872);
    // Score SST test sentences and SNLI hypotheses.
    let input = tmp.path().join("mix.txt");
    let ind = oe::text::data::load_in_distribution("sst", &data, &Default::default()).unwrap();
    let ood = oe::text::data::load_ood("snli", &data, &Default::default()).unwrap();
    let mut lines: Vec<String> = ind.test.texts[..800].to_vec();
    lines.extend(ood.texts[..200].iter().cloned());
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let i = input.to_str().unwrap();
    let a = run(&["score", "--model", m, i, "--alpha", "0.1", "--quiet"]);
    let a = String::from_utf8(a.stdout).unwrap();
    let mut rows = a.lines();
    assert_eq!(
        rows.next().unwrap(),
        "source\tline\tscore\tclass\tprob\tp_value\tis_ood"
    );
    let parsed: Vec<(f64, bool)> = rows
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[5].parse().unwrap(), f[6].parse().unwrap())
        })
        .collect();
    assert_eq!(parsed.len(), 1000);
    assert!(parsed.iter().all(|(p, o)| (*p <= 0.1) == *o));
    assert!(parsed.iter().all(|(p, _)| *p > 0.0 && *p <= 1.0));
    // In-distribution test texts flagged at about α (binomial sd on 800 texts ≈ 0.011).
    let id_rate = parsed[..800].iter().filter(|r| r.1).count() as f64 / 800.0;
    assert!(
        (id_rate - 0.1).abs() < 0.06,
        "SST test flagged at {id_rate}"
    );
    let f = run(&[
        "score", "--model", m, i, "--fdr", "0.1", "--quiet", "--format", "jsonl",
    ]);
    let f = String::from_utf8(f.stdout).unwrap();
    let flags: Vec<(f64, bool)> = f
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["p_value"].as_f64().unwrap(),
                v["is_ood"].as_bool().unwrap(),
            )
        })
        .collect();
    let p: Vec<f64> = flags.iter().map(|x| x.0).collect();
    let want = benjamini_hochberg(&p, 0.1);
    assert_eq!(flags.iter().map(|x| x.1).collect::<Vec<_>>(), want);
    // --alpha and --threshold are exclusive; a level outside (0, 1) is refused.
    let out = std::process::Command::new(bin)
        .args([
            "score", "--model", m, i, "--alpha", "1.5", "--device", "cpu",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--alpha must be in (0, 1)"));
}
