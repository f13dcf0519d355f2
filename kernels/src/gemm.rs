//! A matrix product whose every output element is computed the same way whatever the number of
//! rows, the row's position, or the CPU's vector width: **batch-invariant by construction**.
//!
//! `c[r, j] = (Σ_p a[r, p] · b[p, j]) + bias[j]`, where the sum is one chain of fused multiply-adds
//! in increasing `p`, starting from 0 (`acc ← fma(a[r, p], b[p, j], acc)`), and the bias is added
//! once at the end. Vectorising over `j` or blocking over `r` never changes that chain, so a row's
//! result is the same bits in a batch of 1 or of 1,000, and in the AVX-512, AVX2+FMA and portable
//! (`f32::mul_add`, a correctly rounded fused multiply-add in software or hardware) copies.
//!
//! libtorch's products (MKL) do not promise that: below about 16 rows they take other kernels, so
//! a text scored alone needed 15 filler rows to get its batch's bits. With this product a lone
//! text costs one row.

/// `c` `[m, n]` = `a` `[m, k]` · `b` `[k, n]` (+ `bias` `[n]`), all row-major and contiguous.
/// See the module documentation for the exact order of operations.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if let Some(bias) = bias {
        assert!(bias.len() >= n);
    }
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above); the slices' lengths are checked.
            return unsafe { x86::gemm512(m, k, n, a, b, bias, c) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); the slices' lengths are checked.
            return unsafe { x86::gemm256(m, k, n, a, b, bias, c) };
        }
    }
    portable(m, k, n, a, b, bias, c)
}

/// Row by row, `c[r, :] ← fma(a[r, p], b[p, :], c[r, :])` for p in order: the reference chain for
/// every element, in an order the compiler vectorises over the columns (the AVX2 copy is this loop
/// compiled with AVX2 and FMA).
#[inline(always)]
fn portable(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
) {
    for r in 0..m {
        let ar = &a[r * k..(r + 1) * k];
        let cr = &mut c[r * n..(r + 1) * n];
        cr.fill(0.0);
        for (p, &x) in ar.iter().enumerate() {
            let bp = &b[p * n..(p + 1) * n];
            for (y, &w) in cr.iter_mut().zip(bp) {
                *y = x.mul_add(w, *y);
            }
        }
        if let Some(bias) = bias {
            for (y, &w) in cr.iter_mut().zip(&bias[..n]) {
                *y += w;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One block of `R` rows × `V` vectors of 16 columns starting at row `r0`, column `j0`; `mask`
    /// selects which columns of the last vector are read and written (all: `0xffff`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block512<const R: usize, const V: usize>(
        k: usize,
        n: usize,
        a: *const f32,
        b: *const f32,
        bias: Option<*const f32>,
        c: *mut f32,
        r0: usize,
        j0: usize,
        mask: __mmask16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let last_mask = |v: usize| if v + 1 == V { mask } else { 0xffff };
        for p in 0..k {
            let brow = b.add(p * n + j0);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(last_mask(v), brow.add(16 * v));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add((r0 + r) * k + p));
                for v in 0..V {
                    accr[v] = _mm512_fmadd_ps(x, bv[v], accr[v]);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for (v, &x) in accr.iter().enumerate() {
                let m = last_mask(v);
                let y = match bias {
                    Some(bias) => _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, bias.add(j0 + 16 * v))),
                    None => x,
                };
                _mm512_mask_storeu_ps(c.add((r0 + r) * n + j0 + 16 * v), m, y);
            }
        }
    }

    /// Every column block of rows `r0..r0 + R`: blocks of `V` vectors, then single vectors.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn rows512<const R: usize, const V: usize>(
        k: usize,
        n: usize,
        a: *const f32,
        b: *const f32,
        bias: Option<*const f32>,
        c: *mut f32,
        r0: usize,
    ) {
        let mut j = 0;
        while j + 16 * V <= n {
            block512::<R, V>(k, n, a, b, bias, c, r0, j, 0xffff);
            j += 16 * V;
        }
        while j + 16 <= n {
            block512::<R, 1>(k, n, a, b, bias, c, r0, j, 0xffff);
            j += 16;
        }
        if j < n {
            let mask = ((1u32 << (n - j)) - 1) as __mmask16;
            block512::<R, 1>(k, n, a, b, bias, c, r0, j, mask);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm512(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
    ) {
        let (a, b, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let bias = bias.map(<[f32]>::as_ptr);
        // Register blocks of 8 × 48, 4 × 64 and 1 × 128 outputs (24, 16 and 8 accumulators).
        let mut r = 0;
        while r + 8 <= m {
            rows512::<8, 3>(k, n, a, b, bias, cp, r);
            r += 8;
        }
        while r + 4 <= m {
            rows512::<4, 4>(k, n, a, b, bias, cp, r);
            r += 4;
        }
        while r < m {
            rows512::<1, 8>(k, n, a, b, bias, cp, r);
            r += 1;
        }
    }

    /// [`super::portable`] compiled for AVX2 and FMA (vectorised over the columns).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm256(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
    ) {
        super::portable(m, k, n, a, b, bias, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data as data;

    /// The definition, one element at a time: `acc ← fma(a[r, p], b[p, j], acc)` from 0, then + bias.
    fn reference(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    acc = a[r * k + p].mul_add(b[p * n + j], acc);
                }
                c[r * n + j] = bias.map_or(acc, |b| acc + b[j]);
            }
        }
        c
    }

    /// Every shape class the copies distinguish (AVX-512 row blocks of 8, 4 and 1; column blocks
    /// of 48, 64, 128 and 16 and a masked remainder; the portable and AVX2 loop) gives the
    /// definition's bits, and is within float rounding of an f64 sum.
    #[test]
    fn every_copy_gives_the_reference_bits() {
        for &(m, k, n) in &[
            (1, 128, 384),
            (5, 128, 384),
            (21, 128, 384),
            (8, 5, 50),
            (7, 50, 100),
            (3, 17, 2),
            (16, 3, 13),
            (9, 128, 1),
        ] {
            let a = data(m * k, 1);
            let b = data(k * n, 2);
            let bias = data(n, 3);
            for with_bias in [false, true] {
                let bias = with_bias.then_some(bias.as_slice());
                let want = reference(m, k, n, &a, &b, bias);
                let mut port = vec![f32::NAN; m * n];
                portable(m, k, n, &a, &b, bias, &mut port);
                assert!(
                    port.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{m}x{k}x{n} portable"
                );
                let mut got = vec![f32::NAN; m * n];
                gemm(m, k, n, &a, &b, bias, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{m}x{k}x{n} element {i}: {g} vs {w}"
                    );
                }
                // The AVX2 copy too, where the CPU has it (the dispatch above takes the widest).
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut got = vec![f32::NAN; m * n];
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    unsafe { x86::gemm256(m, k, n, &a, &b, bias, &mut got) };
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(g, w)| g.to_bits() == w.to_bits()),
                        "{m}x{k}x{n} AVX2"
                    );
                }
                for r in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k)
                            .map(|p| a[r * k + p] as f64 * b[p * n + j] as f64)
                            .sum::<f64>()
                            + bias.map_or(0.0, |b| b[j] as f64);
                        assert!(
                            (want[r * n + j] as f64 - exact).abs() < 1e-4,
                            "{m}x{k}x{n} ({r},{j})"
                        );
                    }
                }
            }
        }
    }

    /// A row's result does not depend on how many rows the product has or where the row sits.
    #[test]
    fn rows_are_independent_of_the_batch() {
        let (k, n) = (128, 384);
        let b = data(k * n, 5);
        let all = data(13 * k, 6);
        let mut full = vec![0.0; 13 * n];
        gemm(13, k, n, &all, &b, None, &mut full);
        for r in 0..13 {
            let mut one = vec![0.0; n];
            gemm(1, k, n, &all[r * k..(r + 1) * k], &b, None, &mut one);
            assert!(
                one.iter()
                    .zip(&full[r * n..(r + 1) * n])
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "row {r}"
            );
        }
    }
}
