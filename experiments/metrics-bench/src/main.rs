//! Times AUROC, AUPR, FPR@TPR (both rules) and detection error from one `Ranking` on 10M scores.

mod error {
    // The one error variant ranking.rs uses, as in the library's src/error.rs.
    #[derive(Debug, thiserror::Error)]
    pub enum OeError {
        #[error("metric input: {0}")]
        Metric(String),
    }
    pub type Result<T, E = OeError> = std::result::Result<T, E>;
}

#[path = "../../../src/metrics/ranking.rs"]
mod ranking;

use ranking::{FprRule, Positive, Ranking};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    // 5:1 in-distribution : OOD, overlapping score distributions, many ties (scores rounded to 1e-4).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let n_ood = n / 6;
    let n_in = n - n_ood;
    let ins: Vec<f64> = (0..n_in).map(|_| (next() * 10_000.0).round() / 10_000.0).collect();
    let oods: Vec<f64> = (0..n_ood).map(|_| ((next() * 0.8 + 0.2) * 10_000.0).round() / 10_000.0).collect();
    let t0 = Instant::now();
    let r = Ranking::new(&ins, &oods, Positive::Ood).expect("valid scores");
    let t_sort = t0.elapsed();
    let auroc = r.auroc();
    let aupr = r.average_precision();
    let fpr_c = r.fpr_at_tpr(0.9, FprRule::Closest).unwrap().fpr;
    let fpr_a = r.fpr_at_tpr(0.9, FprRule::AtLeast).unwrap().fpr;
    let det = r.detection_error();
    let total = t0.elapsed();
    println!(
        "n = {n} ({n_in} in, {n_ood} OOD), {} distinct scores\nranking (one sort per class + merge): {:.3} s\nall metrics total: {:.3} s\nauroc {auroc:.6} aupr_out {aupr:.6} fpr90_closest {fpr_c:.6} fpr90_atleast {fpr_a:.6} detection_error {det:.6}",
        r.len(),
        t_sort.as_secs_f64(),
        total.as_secs_f64()
    );
}
