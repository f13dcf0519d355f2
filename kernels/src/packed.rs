//! [`crate::gemm`]'s product with the right-hand matrix packed once into column panels, for large
//! weight matrices that are reused many times (the BERT encoder's layers: `[384, 1152]` to
//! `[1536, 384]`, 0.6 to 2.4 MB each).
//!
//! The row-major `b` `[k, n]` is read by [`crate::gemm`] with a stride of `n` floats per step, one
//! page per row of `b`, and again for every block of rows; here each panel of [`PANEL`] columns is
//! `[k, PANEL]` contiguous (the last one zero-padded), and every block of rows runs over a panel
//! while it is in cache. **Each output is the same chain of fused multiply-adds as
//! [`crate::gemm`]** (from 0 in increasing `p`, the bias added once at the end), so the results are
//! the same bits as `gemm`'s and a row's result never depends on the other rows.

/// Columns per panel: three AVX-512 vectors.
pub const PANEL: usize = 48;

/// `b` `[k, n]` packed into `ceil(n / PANEL)` panels of `[k, PANEL]`.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// The panels start at `buf[start]`, a 64-byte boundary (see [`PackedB::panels`]).
    buf: Vec<f32>,
    start: usize,
}

impl PackedB {
    /// Packs the row-major `b` `[k, n]`.
    ///
    /// # Panics
    /// When `b` is shorter than `k · n`.
    pub fn new(k: usize, n: usize, b: &[f32]) -> Self {
        assert!(b.len() >= k * n);
        let panels = n.div_ceil(PANEL);
        let len = panels * k * PANEL;
        // A large allocation is 16 bytes past a page boundary (the allocator's header), so every
        // 64-byte load of a panel row would straddle two cache lines: start the panels on a
        // 64-byte boundary instead.
        let mut buf = vec![0.0f32; len + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        let data = &mut buf[start..start + len];
        for pi in 0..panels {
            let j0 = pi * PANEL;
            let w = PANEL.min(n - j0);
            for p in 0..k {
                let dst = &mut data[(pi * k + p) * PANEL..(pi * k + p) * PANEL + w];
                dst.copy_from_slice(&b[p * n + j0..p * n + j0 + w]);
            }
        }
        Self { k, n, buf, start }
    }

    /// The panels, `ceil(n / PANEL)` × `[k, PANEL]`, 64-byte aligned.
    fn panels(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.n.div_ceil(PANEL) * self.k * PANEL]
    }

    /// Rows `k` (the inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns `n`.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// `c` `[m, n]` = `a` `[m, k]` · `b` (+ `bias` `[n]`), `a` and `c` row-major and contiguous; the
/// same bits as [`crate::gemm`] on the unpacked `b`.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn gemm_packed(m: usize, a: &[f32], b: &PackedB, bias: Option<&[f32]>, c: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    assert!(a.len() >= m * k && c.len() >= m * n);
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
            return unsafe { x86::packed512(m, a, b, bias, c) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); the slices' lengths are checked.
            return unsafe { x86::packed256(m, a, b, bias, c) };
        }
    }
    portable(m, a, b, bias, c)
}

/// Panel by panel, row by row: `acc[j] ← fma(a[r, p], panel[p, j], acc[j])` for p in order.
#[inline(always)]
fn portable(m: usize, a: &[f32], b: &PackedB, bias: Option<&[f32]>, c: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    for (pi, panel) in b.panels().chunks_exact(k * PANEL).enumerate() {
        let j0 = pi * PANEL;
        let w = PANEL.min(n - j0);
        for r in 0..m {
            let mut acc = [0.0f32; PANEL];
            for (p, &x) in a[r * k..(r + 1) * k].iter().enumerate() {
                for (y, &v) in acc.iter_mut().zip(&panel[p * PANEL..(p + 1) * PANEL]) {
                    *y = x.mul_add(v, *y);
                }
            }
            let out = &mut c[r * n + j0..r * n + j0 + w];
            match bias {
                Some(bias) => {
                    for ((o, &y), &bb) in out.iter_mut().zip(&acc).zip(&bias[j0..j0 + w]) {
                        *o = y + bb;
                    }
                }
                None => out.copy_from_slice(&acc[..w]),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedB, PANEL};
    use std::arch::x86_64::*;

    /// Rows of a panel to prefetch ahead.
    const PREFETCH: usize = 12;
    /// Rows of a panel to prefetch into L2, further ahead.
    const PREFETCH_FAR: usize = 64;

    /// Rows `r0..r0 + R` of one panel (columns `j0..j0 + PANEL`, the stores masked to `n`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize>(
        k: usize,
        n: usize,
        a: *const f32,
        panel: *const f32,
        bias: Option<*const f32>,
        c: *mut f32,
        r0: usize,
        j0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        for p in 0..k {
            let row = panel.add(p * PANEL);
            // The panel's rows PREFETCH steps ahead (three cache lines a row): a panel is read
            // from memory by the first block of rows, which the hardware prefetcher alone does
            // not keep up with (a 25-row forward over MiniLM's 42 MB of weights ran at half the
            // warm speed). Past the panel's end it stays inside the allocation or is harmless.
            let ahead = row.wrapping_add(PREFETCH * PANEL) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128));
            let far = row.wrapping_add(PREFETCH_FAR * PANEL) as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(far);
            _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(128));
            let bv = [
                _mm512_loadu_ps(row),
                _mm512_loadu_ps(row.add(16)),
                _mm512_loadu_ps(row.add(32)),
            ];
            for (r, accr) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add((r0 + r) * k + p));
                for v in 0..3 {
                    accr[v] = _mm512_fmadd_ps(x, bv[v], accr[v]);
                }
            }
        }
        for v in 0..3 {
            let j = j0 + 16 * v;
            if j >= n {
                break;
            }
            let mask: __mmask16 = if n - j >= 16 {
                0xffff
            } else {
                ((1u32 << (n - j)) - 1) as __mmask16
            };
            let bb = bias.map(|b| _mm512_maskz_loadu_ps(mask, b.add(j)));
            for (r, accr) in acc.iter().enumerate() {
                let y = match bb {
                    Some(bb) => _mm512_add_ps(accr[v], bb),
                    None => accr[v],
                };
                _mm512_mask_storeu_ps(c.add((r0 + r) * n + j), mask, y);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn packed512(m: usize, a: &[f32], b: &PackedB, bias: Option<&[f32]>, c: &mut [f32]) {
        let (k, n) = (b.k, b.n);
        let (a, cp) = (a.as_ptr(), c.as_mut_ptr());
        let bias = bias.map(<[f32]>::as_ptr);
        for pi in 0..n.div_ceil(PANEL) {
            let panel = b.panels().as_ptr().add(pi * k * PANEL);
            let j0 = pi * PANEL;
            // Register blocks of 8 × 48 outputs (24 accumulators), then 4 and 1 rows.
            let mut r = 0;
            while r + 8 <= m {
                block::<8>(k, n, a, panel, bias, cp, r, j0);
                r += 8;
            }
            while r + 4 <= m {
                block::<4>(k, n, a, panel, bias, cp, r, j0);
                r += 4;
            }
            while r < m {
                block::<1>(k, n, a, panel, bias, cp, r, j0);
                r += 1;
            }
        }
    }

    /// [`super::portable`] compiled for AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn packed256(m: usize, a: &[f32], b: &PackedB, bias: Option<&[f32]>, c: &mut [f32]) {
        super::portable(m, a, b, bias, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data as data;

    /// Panels start on a 64-byte boundary (a cache line), whatever the allocation's alignment.
    #[test]
    fn panels_are_cache_line_aligned() {
        for &(k, n) in &[(384, 1152), (7, 5), (1536, 384)] {
            let pb = PackedB::new(k, n, &data(k * n, 1));
            assert_eq!(pb.panels().as_ptr() as usize % 64, 0, "{k}x{n}");
        }
    }

    /// The packed product gives `gemm`'s bits (itself pinned to the element-wise definition) in
    /// every copy, for row counts hitting each register block and panel widths with a remainder.
    #[test]
    fn packed_gives_gemm_bits_in_every_copy() {
        for &(m, k, n) in &[
            (1, 384, 1152),
            (13, 64, 100),
            (21, 33, 48),
            (9, 7, 5),
            (8, 16, 97),
        ] {
            let a = data(m * k, 1);
            let b = data(k * n, 2);
            let bias = data(n, 3);
            let pb = PackedB::new(k, n, &b);
            for bias in [None, Some(bias.as_slice())] {
                let mut want = vec![0.0; m * n];
                crate::gemm(m, k, n, &a, &b, bias, &mut want);
                let mut got = vec![f32::NAN; m * n];
                gemm_packed(m, &a, &pb, bias, &mut got);
                let same = |x: &[f32]| x.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same(&got), "{m}x{k}x{n} dispatched");
                let mut port = vec![f32::NAN; m * n];
                portable(m, &a, &pb, bias, &mut port);
                assert!(same(&port), "{m}x{k}x{n} portable");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut got = vec![f32::NAN; m * n];
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    unsafe { x86::packed256(m, &a, &pb, bias, &mut got) };
                    assert!(same(&got), "{m}x{k}x{n} AVX2");
                }
            }
        }
    }
}

#[cfg(test)]
mod timing {
    /// GFLOP/s of the packed and the plain product on `shapes` `(m, k, n)`, with `a`, `b` and `c`
    /// on 64-byte boundaries or not (unaligned 64-byte loads and stores straddle two lines).
    fn products(shapes: &[(usize, usize, usize)], aligned: bool) {
        for &(m, k, n) in shapes {
            let (a0, b0, mut c0) = (
                crate::test_data(m * k + 16, 1),
                crate::test_data(k * n + 16, 2),
                vec![0.0f32; m * n + 16],
            );
            let at = |v: &[f32]| {
                if aligned {
                    v.as_ptr().align_offset(64)
                } else {
                    0
                }
            };
            let (a, b, co) = (&a0[at(&a0)..][..m * k], &b0[at(&b0)..][..k * n], at(&c0));
            let c = &mut c0[co..][..m * n];
            let pb = super::PackedB::new(k, n, b);
            let f = 2.0 * (m * k * n) as f64;
            let reps = (2e9 / f).clamp(5.0, 5000.0) as usize;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                super::gemm_packed(m, a, &pb, None, c);
            }
            let tp = t0.elapsed().as_secs_f64() / reps as f64;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                crate::gemm(m, k, n, a, b, None, c);
            }
            let tg = t0.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{m}x{k}x{n}: packed {:.1} GFLOP/s, plain {:.1} GFLOP/s",
                f / tp / 1e9,
                f / tg / 1e9
            );
        }
    }

    /// Timing, not a check: `cargo test --release -p oe-kernels -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn packed_and_plain_gflops() {
        // MiniLM's products, on `Vec` buffers as `bert_cpu`'s (not aligned).
        products(
            &[
                (2048, 384, 1152),
                (2048, 1536, 384),
                (12, 384, 1152),
                (12, 1536, 384),
            ],
            false,
        );
        // The GRU's: a step's hidden product (rows of a worker's part × 128 × 384) and the second
        // layer's input projection over a part's tokens, on libtorch's 64-byte aligned tensors.
        products(
            &[
                (8, 128, 384),
                (32, 128, 384),
                (64, 128, 384),
                (128, 128, 384),
                (3300, 128, 384),
            ],
            true,
        );
        // A MiniLM forward's weights (6 layers, 42 MB) for a 25-token text, products in turn.
        let m = 25;
        let shapes = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];
        let layers: Vec<Vec<super::PackedB>> = (0..6)
            .map(|_| {
                shapes
                    .iter()
                    .map(|&(k, n)| super::PackedB::new(k, n, &vec![0.01; k * n]))
                    .collect()
            })
            .collect();
        let a = vec![0.1f32; m * 1536];
        let mut c = vec![0.0f32; m * 1536];
        let reps = 50;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            for l in &layers {
                for b in l {
                    super::gemm_packed(m, &a, b, None, &mut c);
                }
            }
        }
        let t = t0.elapsed().as_secs_f64() / reps as f64;
        let f: f64 = shapes
            .iter()
            .map(|&(k, n)| 2.0 * (m * k * n) as f64)
            .sum::<f64>()
            * 6.0;
        println!(
            "forward of {m} rows over 42 MB of weights: {:.2} ms, {:.1} GFLOP/s",
            t * 1e3,
            f / t / 1e9
        );
    }
}
