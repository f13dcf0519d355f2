//! Element-wise GRU kernels on `f32` slices, for `oe`'s fused CPU GRU (`oe::text::models::gru_cpu`,
//! which documents the equations and tests these kernels against libtorch's GRU), and the
//! batch-invariant products ([`gemm`], [`packed`], [`bf16`]) and encoder pieces ([`encoder`]) of
//! its CPU inference for the GRU and MiniLM (`oe::text::models::bert_cpu`).
//!
//! A crate of its own so that the root `Cargo.toml` can optimise it in debug builds: unoptimised,
//! these loops run tens of times slower, and `cargo run` (a debug build) trains with them. It has
//! no dependencies and changes rarely, so it costs seconds to build once.
//!
//! The sigmoid and tanh come from one branch-free exponential ([`exp_f32`], the Cephes
//! polynomial), written so that the compiler vectorises it. Each kernel is compiled three times
//! (portable, AVX2, AVX-512) and the widest the CPU has runs; the operations are the same IEEE
//! ones in every copy (Rust never fuses a multiply and an add on its own), so the results do not
//! depend on the copy. The forward step has one more copy, in AVX-512 intrinsics with 8 blocks of
//! 16 units in flight (`step512`: the same operations in the same order, 1.75x faster, since one
//! block alone is bound by its chain's latency).

// `max(..).min(..)` on purpose: it maps NaN to the bound (clamp keeps NaN); the polynomial's
// constants are Cephes' as published; kernels take their buffers as separate slices.
#![allow(
    clippy::manual_clamp,
    clippy::excessive_precision,
    clippy::too_many_arguments
)]

pub mod bf16;
pub mod gemm;
pub mod packed;
#[cfg(target_arch = "x86_64")]
mod step512;
pub mod team;
pub use gemm::gemm;

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two (Cephes): the high part has few mantissa bits, so `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// The polynomial's coefficients, highest degree first.
const EXP_P: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];

/// `e^x` in float32 (Cephes `expf`: range reduction to |r| ≤ ln2/2 and a degree-6 polynomial;
/// relative error about 1e-7). Inputs are clamped to [−87.3, 88.3], so the result is a normal
/// float: `exp_f32(−1e9)` ≈ 1.2e−38, not 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.max(-87.3).min(88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let [c0, c1, c2, c3, c4, c5] = EXP_P;
    let p = (((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5) * r2 + r + 1.0;
    // 2^(n) from the bits: n + 127 is an integer in [1, 254], so adding 2^23 puts it in the low
    // mantissa bits (exactly); shifting them into the exponent field gives 2^n. (A float-to-int
    // cast would do the same, but it is not vectorised: Rust's casts saturate.)
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() & 0x007f_ffff;
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// The logistic function from [`exp_f32`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// tanh from [`exp_f32`]: `1 − 2 / (1 + e^{2x})` (absolute error about 1e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp_f32(2.0 * x))
}

/// `(σ(a), σ(b))` with one division: `1 / ((1 + e^−a)(1 + e^−b))` times the other factor. The
/// arguments are clamped to ±40 (σ(−40) ≈ 4e−18), so the product cannot overflow.
#[inline(always)]
pub fn sigmoid2(a: f32, b: f32) -> (f32, f32) {
    let ea = 1.0 + exp_f32(-a.max(-40.0).min(40.0));
    let eb = 1.0 + exp_f32(-b.max(-40.0).min(40.0));
    let inv = 1.0 / (ea * eb);
    (eb * inv, ea * inv)
}

/// Runs `$body` through a copy compiled for AVX-512 or AVX2 where the CPU has it (the same
/// operations, so the same bits; only faster), else the portable one.
macro_rules! dispatch {
    ($imp:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { $imp::avx512($($arg),*) };
            }
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { $imp::avx2($($arg),*) };
            }
        }
        $imp::portable($($arg),*)
    }};
}

/// Generates `portable`, `avx2` and `avx512` copies of one kernel body.
macro_rules! kernel {
    ($name:ident, fn($($arg:ident: $ty:ty),*) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[inline(always)]
            pub fn portable($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            pub unsafe fn avx2($($arg: $ty),*) { portable($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            pub unsafe fn avx512($($arg: $ty),*) { portable($($arg),*) }
        }
    };
}

/// One unit of the forward step (see [`step_forward`]): returns `(h', r, z, n, W_hn h + b_hn)`.
/// The single definition of the arithmetic, so the blocked and the tail loops give the same bits.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn unit(
    gir: f32,
    giz: f32,
    gin: f32,
    ghr: f32,
    ghz: f32,
    ghn: f32,
    bhr: f32,
    bhz: f32,
    bhn: f32,
    hp: f32,
) -> [f32; 5] {
    let (r, z) = sigmoid2(gir + (ghr + bhr), giz + (ghz + bhz));
    let hn = ghn + bhn;
    let n = tanh(gin + r * hn);
    [(hp - n) * z + n, r, z, n, hn]
}

/// Lanes per block of the forward step: fixed-size blocks the compiler turns into vector code
/// whatever `H` is (a loop over a runtime length was partly left scalar).
const LANES: usize = 16;

kernel!(fwd_kernel, fn(h: usize, gi: &[f32], gh: &mut [f32], bh: &[f32], hp: &[f32], out: &mut [f32], gates: &mut [f32], keep: bool) {
    let h3 = 3 * h;
    let rows = out.len() / h.max(1);
    let blocks = h / LANES;
    for row in 0..rows {
        let gi = &gi[row * h3..(row + 1) * h3];
        let gh = &mut gh[row * h3..(row + 1) * h3];
        let hp = &hp[row * h..(row + 1) * h];
        let o = &mut out[row * h..(row + 1) * h];
        let g: &mut [f32] = if keep { &mut gates[row * h3..(row + 1) * h3] } else { &mut [] };
        // Blocks of LANES units, then the rest one by one (the same `unit`).
        let mut j = 0;
        while j < h {
            let w = if j + LANES <= h && j / LANES < blocks { LANES } else { 1 };
            if w == LANES {
                let a = |s: &[f32], off: usize| -> [f32; LANES] {
                    s[off + j..off + j + LANES].try_into().expect("a block")
                };
                let (gir, giz, gin) = (a(gi, 0), a(gi, h), a(gi, 2 * h));
                let (ghr, ghz, ghn) = (a(gh, 0), a(gh, h), a(gh, 2 * h));
                let (bhr, bhz, bhn) = (a(bh, 0), a(bh, h), a(bh, 2 * h));
                let hpv = a(hp, 0);
                let mut res = [[0.0f32; LANES]; 5];
                for l in 0..LANES {
                    let u = unit(gir[l], giz[l], gin[l], ghr[l], ghz[l], ghn[l], bhr[l], bhz[l], bhn[l], hpv[l]);
                    for (k, v) in u.into_iter().enumerate() {
                        res[k][l] = v;
                    }
                }
                o[j..j + LANES].copy_from_slice(&res[0]);
                if keep {
                    gh[2 * h + j..2 * h + j + LANES].copy_from_slice(&res[4]);
                    g[j..j + LANES].copy_from_slice(&res[1]);
                    g[h + j..h + j + LANES].copy_from_slice(&res[2]);
                    g[2 * h + j..2 * h + j + LANES].copy_from_slice(&res[3]);
                }
            } else {
                let u = unit(gi[j], gi[h + j], gi[2 * h + j], gh[j], gh[h + j], gh[2 * h + j], bh[j], bh[h + j], bh[2 * h + j], hp[j]);
                o[j] = u[0];
                if keep {
                    gh[2 * h + j] = u[4];
                    g[j] = u[1];
                    g[h + j] = u[2];
                    g[2 * h + j] = u[3];
                }
            }
            j += w;
        }
    }
});

kernel!(bwd_kernel, fn(h: usize, dh: &[f32], gates: &[f32], gh: &[f32], hp: &[f32], dgi: &mut [f32], dgh: &mut [f32], dhd: &mut [f32]) {
    let h3 = 3 * h;
    for ((dh, hp), ((g, gh), ((dgi, dgh), dhd))) in dh
        .chunks_exact(h)
        .zip(hp.chunks_exact(h))
        .zip(
            gates
                .chunks_exact(h3)
                .zip(gh.chunks_exact(h3))
                .zip(dgi.chunks_exact_mut(h3).zip(dgh.chunks_exact_mut(h3)).zip(dhd.chunks_exact_mut(h))),
        )
    {
        let (gr, rest) = g.split_at(h);
        let (gz, gn) = rest.split_at(h);
        let ghn = &gh[2 * h..];
        let (dir, rest) = dgi.split_at_mut(h);
        let (diz, din) = rest.split_at_mut(h);
        let (dhr, rest) = dgh.split_at_mut(h);
        let (dhz, dhn) = rest.split_at_mut(h);
        for j in 0..h {
            let (r, z, n) = (gr[j], gz[j], gn[j]);
            let d = dh[j];
            let dn = d * (1.0 - z);
            let dz = d * (hp[j] - n);
            let dan = dn * (1.0 - n * n);
            let dar = dan * ghn[j] * r * (1.0 - r);
            let daz = dz * z * (1.0 - z);
            dir[j] = dar;
            diz[j] = daz;
            din[j] = dan;
            dhr[j] = dar;
            dhz[j] = daz;
            dhn[j] = dan * r;
            dhd[j] = d * z;
        }
    }
});

/// One forward step for `rows` rows (`hidden` = H): `gi` `[rows, 3H]` (the input projection with
/// its bias), `gh` `[rows, 3H]` (the hidden projection without its bias `bh` `[3H]`; with `keep`
/// its n third gets the bias added in place, for the backward pass), `hp` `[rows, H]` (the previous state) → `out` `[rows, H]`; with `keep`, the gates r,
/// z, n go to `gates` `[rows, 3H]` (ignored otherwise).
#[allow(clippy::too_many_arguments)]
pub fn step_forward(
    hidden: usize,
    gi: &[f32],
    gh: &mut [f32],
    bh: &[f32],
    hp: &[f32],
    out: &mut [f32],
    gates: &mut [f32],
    keep: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if hidden.is_multiple_of(LANES) && hidden > 0 && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above); `step` checks the slices' lengths.
        return unsafe { step512::step(hidden, gi, gh, bh, hp, out, gates, keep) };
    }
    dispatch!(fwd_kernel(hidden, gi, gh, bh, hp, out, gates, keep))
}

/// [`step_forward`] without a tape, with the input projections read from a table: row `i`'s are
/// `table[ids[i]]` (`table` `[V, 3H]`, `ids` `[rows]`), the same bits as `step_forward` on those
/// rows gathered into `[rows, 3H]`, without writing the gathered copy.
///
/// # Panics
/// When an id is outside the table.
pub fn step_forward_table(
    hidden: usize,
    table: &[f32],
    ids: &[usize],
    gh: &mut [f32],
    bh: &[f32],
    hp: &[f32],
    out: &mut [f32],
) {
    let (h, h3) = (hidden, 3 * hidden);
    for (i, &id) in ids.iter().enumerate() {
        step_forward(
            h,
            &table[id * h3..(id + 1) * h3],
            &mut gh[i * h3..(i + 1) * h3],
            bh,
            &hp[i * h..(i + 1) * h],
            &mut out[i * h..(i + 1) * h],
            &mut [],
            false,
        );
    }
}

/// The adjoint of [`step_forward`] for `rows` rows: given `dh` `[rows, H]` (the gradient of the new
/// state) and the step's `gates`, `gh` `[rows, 3H]` and `hp` `[rows, H]`, writes the gradients of the
/// input projection `dgi` and of the hidden projection `dgh` (`[rows, 3H]`) and the direct part of
/// the previous state's gradient `dhd = dh ⊙ z` (`[rows, H]`; the full one adds `dgh · W_hh`).
#[allow(clippy::too_many_arguments)]
pub fn step_backward(
    hidden: usize,
    dh: &[f32],
    gates: &[f32],
    gh: &[f32],
    hp: &[f32],
    dgi: &mut [f32],
    dgh: &mut [f32],
    dhd: &mut [f32],
) {
    dispatch!(bwd_kernel(hidden, dh, gates, gh, hp, dgi, dgh, dhd))
}

kernel!(adam_kernel, fn(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &[f32; 6]) {
    let [w1, b2, one_b2, inv_bc2, eps, step] = *c;
    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = *g;
        // ATen's lerp for a weight below one half: m + w·(g − m).
        *m += w1 * (g - *m);
        *v = *v * b2 + g * g * one_b2;
        let denom = v.sqrt() * inv_bc2 + eps;
        *p -= *m / denom * step;
    }
});

/// One Adam update of one parameter, in one pass (the same operations, in the same order, as
/// PyTorch's single-tensor Adam on the CPU, with ATen's scalar division by a reciprocal):
/// `m ← m + (1 − β1)(g − m)`, `v ← β2 v + (1 − β2) g²`,
/// `p ← p − (m / (√v · (1/√(1 − β2ᵗ)) + ε)) · lr/(1 − β1ᵗ)`.
/// `c` = `[1 − β1, β2, 1 − β2, 1/√(1 − β2ᵗ), ε, lr/(1 − β1ᵗ)]`; all slices the same length.
pub fn adam_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &[f32; 6]) {
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
    dispatch!(adam_kernel(p, g, m, v, c))
}

// After the macros above, which it uses.
pub mod encoder;

/// Test data: `len` pseudo-random values in [-1, 1) from a small LCG seeded by `seed`.
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The AVX-512 step (`step512`) gives the portable kernel's bits, with and without the tape,
    /// for H with every block size (8, 4 and 1 blocks of 16) and the portable kernel's own
    /// remainder lanes (H not a multiple of 16: the dispatch's path), on inputs from ±0.5 to
    /// ±200 (both clamps reached) and with ±∞ and NaN among them.
    #[test]
    fn the_step_copies_give_the_same_bits() {
        for &h in &[16usize, 48, 64, 80, 128, 144, 208, 20] {
            for &scale in &[0.5f32, 8.0, 200.0] {
                let rows = 3;
                let mut gi: Vec<f32> = crate::test_data(rows * 3 * h, 1)
                    .iter()
                    .map(|v| v * scale)
                    .collect();
                let gh0: Vec<f32> = crate::test_data(rows * 3 * h, 2)
                    .iter()
                    .map(|v| v * scale)
                    .collect();
                let bh: Vec<f32> = crate::test_data(3 * h, 3);
                let mut hp = crate::test_data(rows * h, 4);
                if scale > 100.0 {
                    gi[1] = f32::INFINITY;
                    gi[h + 2] = f32::NEG_INFINITY;
                    gi[2 * h + 3] = f32::NAN;
                    hp[5] = f32::NAN;
                }
                for keep in [false, true] {
                    type Step<'a> = &'a dyn Fn(&mut [f32], &mut [f32], &mut [f32]);
                    let run = |f: Step| {
                        let (mut gh, mut out, mut g) =
                            (gh0.clone(), vec![0.0; rows * h], vec![0.0; rows * 3 * h]);
                        f(&mut gh, &mut out, &mut g);
                        (gh, out, g)
                    };
                    let want = run(&|gh, out, g| {
                        super::fwd_kernel::portable(h, &gi, gh, &bh, &hp, out, g, keep)
                    });
                    let got =
                        run(&|gh, out, g| super::step_forward(h, &gi, gh, &bh, &hp, out, g, keep));
                    assert_eq!(
                        bits(&got.1),
                        bits(&want.1),
                        "h {h} scale {scale} keep {keep}: states"
                    );
                    assert_eq!(
                        bits(&got.0),
                        bits(&want.0),
                        "h {h} scale {scale} keep {keep}: gh"
                    );
                    assert_eq!(
                        bits(&got.2),
                        bits(&want.2),
                        "h {h} scale {scale} keep {keep}: gates"
                    );
                }
            }
        }
    }

    /// Reading the projections from a table by id gives the bits of the gathered rows.
    #[test]
    fn table_rows_give_the_gathered_bits() {
        for &h in &[128usize, 20] {
            let (v, rows) = (7, 5);
            let table = crate::test_data(v * 3 * h, 1);
            let ids = [3usize, 0, 6, 3, 1];
            let gathered: Vec<f32> = ids
                .iter()
                .flat_map(|&i| table[i * 3 * h..(i + 1) * 3 * h].to_vec())
                .collect();
            let gh0 = crate::test_data(rows * 3 * h, 2);
            let bh = crate::test_data(3 * h, 3);
            let hp = crate::test_data(rows * h, 4);
            let (mut gh_a, mut out_a) = (gh0.clone(), vec![0.0; rows * h]);
            super::step_forward(
                h,
                &gathered,
                &mut gh_a,
                &bh,
                &hp,
                &mut out_a,
                &mut [],
                false,
            );
            let (mut gh_b, mut out_b) = (gh0.clone(), vec![0.0; rows * h]);
            super::step_forward_table(h, &table, &ids, &mut gh_b, &bh, &hp, &mut out_b);
            assert_eq!(bits(&out_a), bits(&out_b), "h {h}");
        }
    }
}

#[cfg(test)]
mod timing {
    /// Timing, not a check: `cargo test --release -p oe-kernels -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn step_forward_ns_per_unit() {
        let h = 128;
        for &rows in &[8usize, 64, 128] {
            let gi = crate::test_data(rows * 3 * h, 1);
            let mut gh = crate::test_data(rows * 3 * h, 2);
            let bh = crate::test_data(3 * h, 3);
            let hp = crate::test_data(rows * h, 4);
            let mut out = vec![0.0; rows * h];
            let reps = 2_000_000 / rows;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                super::step_forward(h, &gi, &mut gh, &bh, &hp, &mut out, &mut [], false);
            }
            let t = t0.elapsed().as_secs_f64() / (reps * rows * h) as f64;
            println!(
                "rows {rows}: {:.3} ns per unit, {:.1} ns per 16",
                t * 1e9,
                t * 16e9
            );
        }
    }
}
