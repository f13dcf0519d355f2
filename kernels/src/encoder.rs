//! Row-wise pieces of a BERT encoder layer for `oe`'s batch-invariant CPU inference
//! (`oe::text::models::bert_cpu`, which documents the layer and tests it against libtorch's):
//! residual LayerNorm, GELU and one text's multi-head self-attention.
//!
//! Every function works on one row (or one text's rows) at a time in a fixed order of operations,
//! so a row's result never depends on the other rows of a batch; each is compiled for AVX-512,
//! AVX2 and a portable target with the same IEEE operations in the same order (no fused
//! multiply-adds unless written as such), so the copies give the same bits.

use crate::exp_f32;

// Abramowitz & Stegun, Handbook of Mathematical Functions (1964), formula 7.1.26:
// erf(x) = 1 − (a1·t + a2·t² + a3·t³ + a4·t⁴ + a5·t⁵)·e^(−x²), t = 1 / (1 + p·x), x ≥ 0,
// absolute error at most 1.5e-7.
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_592,
    -0.284_496_736,
    1.421_413_741,
    -1.453_152_027,
    1.061_405_429,
];

/// erf(x) in float32 (A&S 7.1.26 with [`exp_f32`]; absolute error below 2e-7 over the reals),
/// branch-free so that loops over it vectorise.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = ((((ERF_A[4] * t + ERF_A[3]) * t + ERF_A[2]) * t + ERF_A[1]) * t + ERF_A[0]) * t;
    let y = 1.0 - poly * exp_f32(-(a * a));
    // Sign of x without a branch (erf is odd).
    f32::from_bits(y.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// GELU with the exact (erf) form, in place: `x ← x/2 · (1 + erf(x/√2))`.
pub fn gelu_erf(x: &mut [f32]) {
    dispatch!(gelu_erf_k(x))
}

kernel!(gelu_erf_k, fn(x: &mut [f32]) {
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + erf(u * std::f32::consts::FRAC_1_SQRT_2));
    }
});

/// GELU with the tanh approximation, in place:
/// `x ← x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`.
pub fn gelu_tanh(x: &mut [f32]) {
    dispatch!(gelu_tanh_k(x))
}

kernel!(gelu_tanh_k, fn(x: &mut [f32]) {
    const C: f32 = 0.797_884_56; // √(2/π)
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + crate::tanh(C * (u + 0.044_715 * u * u * u)));
    }
});

/// ReLU in place.
pub fn relu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = v.max(0.0);
    }
}

/// Residual LayerNorm of `rows` rows of width `h`, in place: `y ← LN(y + res) · g + b` with the
/// mean and the (biased) variance of each row summed in order, as two passes.
///
/// # Panics
/// When a slice is shorter than `rows · h` (`g`, `b`: `h`).
pub fn add_layer_norm(
    y: &mut [f32],
    res: Option<&[f32]>,
    g: &[f32],
    b: &[f32],
    h: usize,
    eps: f32,
) {
    assert!(g.len() >= h && b.len() >= h && y.len().is_multiple_of(h.max(1)));
    if let Some(r) = res {
        assert!(r.len() >= y.len());
    }
    dispatch!(add_layer_norm_k(y, res, g, b, h, eps))
}

kernel!(add_layer_norm_k, fn(y: &mut [f32], res: Option<&[f32]>, g: &[f32], b: &[f32], h: usize, eps: f32) {
    if h == 0 {
        return;
    }
    for (i, row) in y.chunks_exact_mut(h).enumerate() {
        if let Some(r) = res {
            for (v, &x) in row.iter_mut().zip(&r[i * h..(i + 1) * h]) {
                *v += x;
            }
        }
        let mean = row.iter().sum::<f32>() / h as f32;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &gg), &bb) in row.iter_mut().zip(&g[..h]).zip(&b[..h]) {
            *v = (*v - mean) * inv * gg + bb;
        }
    }
});

/// One text's multi-head self-attention over all its tokens (no mask: every key is a real token).
/// `qkv` `[len, 3·h]` holds each token's query, key and value projections side by side (heads of
/// `h / heads` columns each); `ctx` `[len, h]` receives, for each token and head,
/// `Σ_j softmax_j(scale · q·k_j) · v_j`. `scratch` holds at least [`attention_scratch`] floats.
///
/// Each score `q·k_j` is one chain of multiply-adds over the head's dimensions in order (kept
/// separate, not fused), computed for 16 keys at a time from the head's keys transposed into
/// `scratch`; the softmax and the weighted sum run in a fixed order too, so a text's result
/// depends on its own tokens only.
///
/// # Panics
/// When a slice is shorter than its shape says, or `h` is not a multiple of `heads`.
pub fn attention(
    qkv: &[f32],
    len: usize,
    h: usize,
    heads: usize,
    scale: f32,
    ctx: &mut [f32],
    scratch: &mut [f32],
) {
    attention_heads(qkv, len, h, heads, 0..heads, scale, ctx, scratch)
}

/// [`attention`] for the heads `hs` only: writes their columns of `ctx` and no other (so tasks
/// that take different heads of one text can run at the same time, each on its own `ctx`); each
/// head's result is the same bits as [`attention`]'s.
///
/// # Panics
/// As [`attention`], and when `hs` goes past `heads`.
#[allow(clippy::too_many_arguments)]
pub fn attention_heads(
    qkv: &[f32],
    len: usize,
    h: usize,
    heads: usize,
    hs: std::ops::Range<usize>,
    scale: f32,
    ctx: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(heads > 0 && h.is_multiple_of(heads) && hs.end <= heads);
    assert!(
        qkv.len() >= len * 3 * h
            && ctx.len() >= len * h
            && scratch.len() >= attention_scratch(len, h, heads)
    );
    dispatch!(attention_k(qkv, len, h, heads, hs, scale, ctx, scratch))
}

/// Floats of scratch space [`attention`] needs: the head's keys transposed and [`QROWS`] rows of
/// scores, each padded to a multiple of 16 keys (whole vectors; the padding never reaches a
/// result).
pub fn attention_scratch(len: usize, h: usize, heads: usize) -> usize {
    len.next_multiple_of(16) * (h / heads.max(1) + QROWS)
}

/// Query rows [`attention`] computes together: their chains (dot products, max, sum, weighted
/// values) are independent, so interleaving them hides each chain's latency; each row's own
/// operations and their order are those of one row alone, so are its bits.
pub const QROWS: usize = 4;

/// Rows `i0..i0 + R` of one head's attention (see [`attention_k`]): `kt` the head's keys
/// transposed `[dh, lp]`, `scores` `[R, lp]` scratch, `(qo, vo)` the head's query and value
/// offsets in a `qkv` row, `w = 3H`.
#[inline(always)]
// The loops over keys run outside the loops over rows on purpose: one step of every row's chain,
// then the next step.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn attention_rows<const R: usize>(
    qkv: &[f32],
    (len, lp, w, h, dh): (usize, usize, usize, usize, usize),
    (qo, vo): (usize, usize),
    i0: usize,
    scale: f32,
    kt: &[f32],
    scores: &mut [f32],
    ctx: &mut [f32],
) {
    let (rows, _) = scores.split_at_mut(R * lp);
    let mut sc: [&mut [f32]; R] = {
        let mut it = rows.chunks_exact_mut(lp);
        std::array::from_fn(|_| it.next().expect("R rows of scores"))
    };
    let q: [&[f32]; R] = std::array::from_fn(|r| &qkv[(i0 + r) * w + qo..(i0 + r) * w + qo + dh]);
    // Scores, 16 keys a vector, two vectors at a time while there are two: each accumulator
    // starts at 0 and adds `q[d] · k[d]` in increasing `d`, kept in a register.
    let mut b = 0;
    while b + 32 <= lp {
        key_block::<R, 2>(&q, kt, lp, dh, b, &mut sc);
        b += 32;
    }
    if b < lp {
        key_block::<R, 1>(&q, kt, lp, dh, b, &mut sc);
    }
    let mut max = [f32::NEG_INFINITY; R];
    for s in sc.iter_mut() {
        for x in s.iter_mut() {
            *x *= scale;
        }
    }
    for j in 0..len {
        for r in 0..R {
            max[r] = max[r].max(sc[r][j]);
        }
    }
    for (s, &m) in sc.iter_mut().zip(&max) {
        for x in s.iter_mut() {
            *x = exp_f32(*x - m);
        }
    }
    let mut sum = [0.0f32; R];
    for j in 0..len {
        for r in 0..R {
            sum[r] += sc[r][j];
        }
    }
    let inv: [f32; R] = std::array::from_fn(|r| 1.0 / sum[r]);
    // The weighted values, 32 dimensions at a time (a partial group padded with zero values
    // whose lanes are dropped): each output starts at 0 and adds `p_j · v_j[d]` in increasing `j`.
    for d0 in (0..dh).step_by(32) {
        let width = 32.min(dh - d0);
        let at = |j: usize| j * w + vo + d0;
        let out = if width == 32 {
            weighted_values::<R>(len, &sc, &inv, |j| {
                *<&[f32; 32]>::try_from(&qkv[at(j)..at(j) + 32]).expect("32 values")
            })
        } else {
            weighted_values::<R>(len, &sc, &inv, |j| {
                let mut v = [0.0f32; 32];
                v[..width].copy_from_slice(&qkv[at(j)..at(j) + width]);
                v
            })
        };
        for (r, o) in out.iter().enumerate() {
            let at = (i0 + r) * h + qo + d0;
            ctx[at..at + width].copy_from_slice(&o[..width]);
        }
    }
}

/// `Σ_j (sc[r][j] · inv[r]) · v(j)` for each of `R` rows over 32 dimensions, in registers, from 0
/// in increasing `j`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn weighted_values<const R: usize>(
    len: usize,
    sc: &[&mut [f32]; R],
    inv: &[f32; R],
    v: impl Fn(usize) -> [f32; 32],
) -> [[f32; 32]; R] {
    let mut out = [[0.0f32; 32]; R];
    for j in 0..len {
        let v = v(j);
        for r in 0..R {
            let p = sc[r][j] * inv[r];
            for (o, &x) in out[r].iter_mut().zip(&v) {
                *o += p * x;
            }
        }
    }
    out
}

/// Scores of `R` query rows against keys `b..b + 16 · NB` (`kt` `[dh, lp]`), into `sc`: one
/// accumulator per row and vector, in registers, from 0 in increasing `d`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn key_block<const R: usize, const NB: usize>(
    q: &[&[f32]; R],
    kt: &[f32],
    lp: usize,
    dh: usize,
    b: usize,
    sc: &mut [&mut [f32]; R],
) {
    let mut acc = [[[0.0f32; 16]; NB]; R];
    for d in 0..dh {
        let k: [&[f32; 16]; NB] = std::array::from_fn(|v| {
            let at = d * lp + b + 16 * v;
            kt[at..at + 16].try_into().expect("16 keys")
        });
        for r in 0..R {
            let qd = q[r][d];
            for v in 0..NB {
                for (a, &kv) in acc[r][v].iter_mut().zip(k[v]) {
                    *a += qd * kv;
                }
            }
        }
    }
    for r in 0..R {
        for v in 0..NB {
            sc[r][b + 16 * v..b + 16 * (v + 1)].copy_from_slice(&acc[r][v]);
        }
    }
}

kernel!(attention_k, fn(qkv: &[f32], len: usize, h: usize, heads: usize, hs: std::ops::Range<usize>, scale: f32, ctx: &mut [f32], scratch: &mut [f32]) {
    let dh = h / heads;
    let w = 3 * h;
    // Keys padded to whole vectors: the padded lanes hold zero keys, are computed alongside and
    // never read (each lane is its own chain, so the real lanes' bits do not change).
    let lp = len.next_multiple_of(16);
    let (kt, scores) = scratch.split_at_mut(lp * dh);
    kt.fill(0.0);
    let dims = (len, lp, w, h, dh);
    for hd in hs {
        let (qo, ko, vo) = (hd * dh, h + hd * dh, 2 * h + hd * dh);
        // This head's keys transposed: kt[d][j].
        for j in 0..len {
            for d in 0..dh {
                kt[d * lp + j] = qkv[j * w + ko + d];
            }
        }
        let mut i = 0;
        while i + QROWS <= len {
            attention_rows::<QROWS>(qkv, dims, (qo, vo), i, scale, kt, scores, ctx);
            i += QROWS;
        }
        while i < len {
            attention_rows::<1>(qkv, dims, (qo, vo), i, scale, kt, scores, ctx);
            i += 1;
        }
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    /// erf against values from the series erf(x) = 2/√π Σ (−1)ⁿ x^(2n+1) / (n! (2n+1)), summed
    /// in f64 here (an independent computation), over [−4, 4].
    #[test]
    fn erf_matches_the_series() {
        let series = |x: f64| {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in -400..=400 {
            let x = i as f64 / 100.0;
            let got = erf(x as f32) as f64;
            assert!(
                (got - series(x)).abs() < 3e-7,
                "erf({x}) = {got}, series {}",
                series(x)
            );
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(20.0), 1.0);
        assert_eq!(erf(-20.0), -1.0);
    }

    #[test]
    fn layer_norm_rows_are_normalised_and_independent() {
        let h = 5;
        let mut y: Vec<f32> = (0..3 * h).map(|i| (i * i % 7) as f32 - 2.0).collect();
        let res: Vec<f32> = (0..3 * h).map(|i| i as f32 * 0.1).collect();
        let g = vec![1.0; h];
        let b = vec![0.0; h];
        let mut alone = y[h..2 * h].to_vec();
        add_layer_norm(&mut y, Some(&res), &g, &b, h, 1e-12);
        add_layer_norm(&mut alone, Some(&res[h..2 * h]), &g, &b, h, 1e-12);
        assert_eq!(&y[h..2 * h], &alone[..]);
        for row in y.chunks(h) {
            let m: f32 = row.iter().sum::<f32>() / h as f32;
            let v: f32 = row.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / h as f32;
            assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5, "{m} {v}");
        }
    }

    /// One query row at a time, each chain in order: the kernel as it was before it interleaved
    /// [`QROWS`] rows (its bits are what `oe-text score` printed for MiniLM then).
    fn attention_one_row_at_a_time(
        qkv: &[f32],
        len: usize,
        h: usize,
        heads: usize,
        scale: f32,
        ctx: &mut [f32],
    ) {
        let (dh, w, lp) = (h / heads, 3 * h, len.next_multiple_of(16));
        let mut kt = vec![0.0f32; lp * dh];
        let mut scores = vec![0.0f32; lp];
        for hd in 0..heads {
            let (qo, ko, vo) = (hd * dh, h + hd * dh, 2 * h + hd * dh);
            for j in 0..len {
                for d in 0..dh {
                    kt[d * lp + j] = qkv[j * w + ko + d];
                }
            }
            for i in 0..len {
                let q = &qkv[i * w + qo..i * w + qo + dh];
                scores.fill(0.0);
                for (d, &qd) in q.iter().enumerate() {
                    for (s, &k) in scores.iter_mut().zip(&kt[d * lp..(d + 1) * lp]) {
                        *s += qd * k;
                    }
                }
                let mut max = f32::NEG_INFINITY;
                for s in scores.iter_mut() {
                    *s *= scale;
                }
                for &s in &scores[..len] {
                    max = max.max(s);
                }
                for s in scores.iter_mut() {
                    *s = exp_f32(*s - max);
                }
                let mut sum = 0.0f32;
                for &s in &scores[..len] {
                    sum += s;
                }
                let inv = 1.0 / sum;
                let out = &mut ctx[i * h + qo..i * h + qo + dh];
                out.fill(0.0);
                for (j, &p) in scores[..len].iter().enumerate() {
                    let p = p * inv;
                    for (o, &x) in out.iter_mut().zip(&qkv[j * w + vo..j * w + vo + dh]) {
                        *o += p * x;
                    }
                }
            }
        }
    }

    /// Rows interleaved or one at a time, the same bits: every length around the [`QROWS`]
    /// blocks and the 16-key vectors, heads of 32 (MiniLM's), 160 (five groups of 32 dimensions)
    /// and 14 (a partial group), in the dispatched and the portable kernel.
    #[test]
    fn interleaved_rows_give_each_row_its_own_bits() {
        for &(h, heads) in &[(64, 2), (320, 2), (42, 3)] {
            for len in [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 22, 33] {
                let qkv: Vec<f32> = crate::test_data(len * 3 * h, len as u32)
                    .iter()
                    .map(|x| 3.0 * x)
                    .collect();
                let mut want = vec![f32::NAN; len * h];
                attention_one_row_at_a_time(&qkv, len, h, heads, 0.17, &mut want);
                let mut scratch = vec![0.0; attention_scratch(len, h, heads)];
                let mut got = vec![f32::NAN; len * h];
                attention(&qkv, len, h, heads, 0.17, &mut got, &mut scratch);
                let same = |x: &[f32]| x.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same(&got), "h {h}, len {len}: dispatched");
                let mut port = vec![f32::NAN; len * h];
                attention_k::portable(&qkv, len, h, heads, 0..heads, 0.17, &mut port, &mut scratch);
                assert!(same(&port), "h {h}, len {len}: portable");
                // Head by head into one buffer (as tasks sharing a text's heads do): the same.
                let mut split = vec![f32::NAN; len * h];
                for hd in 0..heads {
                    attention_heads(
                        &qkv,
                        len,
                        h,
                        heads,
                        hd..hd + 1,
                        0.17,
                        &mut split,
                        &mut scratch,
                    );
                }
                assert!(same(&split), "h {h}, len {len}: head by head");
            }
        }
    }

    /// Timing, not a check: one MiniLM layer's attention (12 heads of 32) over a 25-token text;
    /// `cargo test --release -p oe-kernels -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn attention_us() {
        let (len, h, heads) = (25, 384, 12);
        let qkv = crate::test_data(len * 3 * h, 3);
        let mut ctx = vec![0.0; len * h];
        let mut scratch = vec![0.0; attention_scratch(len, h, heads)];
        let reps = 20_000;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            attention(&qkv, len, h, heads, 0.17, &mut ctx, &mut scratch);
        }
        let t = t0.elapsed().as_secs_f64() / reps as f64;
        println!(
            "attention of {len} tokens, {heads} heads of {}: {:.2} us",
            h / heads,
            t * 1e6
        );
    }

    /// Attention against the definition in f64 on a small random case.
    #[test]
    fn attention_is_softmax_weighted_values() {
        let (len, h, heads) = (4, 6, 2);
        let qkv: Vec<f32> = (0..len * 3 * h)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let mut ctx = vec![0.0; len * h];
        let mut scratch = vec![0.0; attention_scratch(len, h, heads)];
        attention(&qkv, len, h, heads, 0.5, &mut ctx, &mut scratch);
        let dh = h / heads;
        for hd in 0..heads {
            for i in 0..len {
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..dh)
                            .map(|d| {
                                qkv[i * 3 * h + hd * dh + d] as f64
                                    * qkv[j * 3 * h + h + hd * dh + d] as f64
                            })
                            .sum::<f64>()
                            * 0.5
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..dh {
                    let want: f64 = (0..len)
                        .map(|j| (s[j] - m).exp() / z * qkv[j * 3 * h + 2 * h + hd * dh + d] as f64)
                        .sum();
                    let got = ctx[i * h + hd * dh + d] as f64;
                    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                }
            }
        }
    }
}
