//! A bfloat16 matrix product for opt-in reduced-precision inference: `c = a · b (+ bias)` with `a`
//! and `b` rounded to bfloat16 (8 significant bits) and every product and sum kept in float32, on
//! CPUs with AVX512_BF16 (`vdpbf16ps`: two bfloat16 products per float32 lane and instruction,
//! twice the multiply-adds of a float32 FMA per cycle).
//!
//! Like [`crate::gemm`] it is **batch-invariant by construction**: each output element is one
//! chain of `vdpbf16ps` steps over `k` in pairs, in increasing order from 0, then the bias; vector
//! blocking over rows and columns never changes that chain, so a row's result is the same bits in
//! a batch of 1 or of 1,000. The results are not float32's: rounding the inputs moves each product
//! by up to about 2⁻⁸ relative, so callers report how far their outputs move.
//!
//! `a` is rounded to bfloat16 here and `b` once, when it is packed ([`Bf16Matrix::new`]), both by
//! the CPU's `vcvtne2ps2bf16`: to nearest even, with subnormal inputs taken as zero
//! ([`to_bf16`] is the same rounding in scalar code; a test checks they agree).

/// Whether this CPU can run [`gemm_bf16`].
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to the nearest bfloat16, ties to even, as its 16 bits; a subnormal `x` gives zero of
/// its sign (as `vcvtne2ps2bf16` does), NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if x != 0.0 && x.abs() < f32::MIN_POSITIVE {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The float32 value of a bfloat16.
#[inline(always)]
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// A `[k, n]` float32 matrix rounded to bfloat16 and laid out for [`gemm_bf16`]: for each pair of
/// rows `(2q, 2q + 1)` and column `j`, the 32-bit word `b[2q, j] | b[2q + 1, j] << 16` (an odd `k`
/// gets a zero row).
#[derive(Clone)]
pub struct Bf16Matrix {
    k: usize,
    n: usize,
    /// `[ceil(k / 2), n]` pairs.
    pairs: Vec<u32>,
}

impl Bf16Matrix {
    /// Packs `b` `[k, n]`, row-major.
    ///
    /// # Panics
    /// When `b` is shorter than `k · n`, or when the CPU cannot run [`gemm_bf16`] ([`supported`]).
    pub fn new(k: usize, n: usize, b: &[f32]) -> Self {
        assert!(b.len() >= k * n);
        assert!(supported(), "Bf16Matrix needs AVX512_BF16");
        let k2 = k.div_ceil(2);
        // Interleave each pair of rows (`[k2, n, 2]`), then round it in one pass.
        let mut inter = vec![0f32; k2 * n * 2];
        for p in 0..k {
            let (q, e) = (p / 2, p % 2);
            for j in 0..n {
                inter[(q * n + j) * 2 + e] = b[p * n + j];
            }
        }
        let mut pairs = vec![0u32; k2 * n];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and AVX512_BF16 (asserted above); `pairs` holds half of
        // `inter`'s (even) length.
        unsafe {
            x86::to_pairs(&inter, &mut pairs)
        };
        Self { k, n, pairs }
    }

    /// Rows `k` and columns `n` of the matrix it holds.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

impl std::fmt::Debug for Bf16Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Matrix {{ k: {}, n: {} }}", self.k, self.n)
    }
}

thread_local! {
    static A_PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `c` `[m, n]` = bf16(`a` `[m, k]`) · `b` (+ `bias` `[n]`), `a` and `c` row-major and contiguous.
///
/// # Panics
/// When a slice is shorter than its shape says, or when the CPU cannot run it ([`supported`]).
pub fn gemm_bf16(m: usize, a: &[f32], b: &Bf16Matrix, bias: Option<&[f32]>, c: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    assert!(a.len() >= m * k && c.len() >= m * n);
    if let Some(bias) = bias {
        assert!(bias.len() >= n);
    }
    assert!(supported(), "gemm_bf16 needs AVX512_BF16");
    if m == 0 || n == 0 {
        return;
    }
    let k2 = k.div_ceil(2);
    A_PAIRS.with(|cell| {
        let mut ap = cell.borrow_mut();
        if ap.len() < m * k2 {
            ap.resize(m * k2, 0);
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and AVX512_BF16 (asserted above); the lengths are checked.
        unsafe {
            for r in 0..m {
                x86::to_pairs(&a[r * k..(r + 1) * k], &mut ap[r * k2..(r + 1) * k2]);
            }
            x86::gemm(m, k2, n, &ap, &b.pairs, bias, c)
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `src` rounded to bfloat16 in pairs: `dst[q] = bf16(src[2q]) | bf16(src[2q + 1]) << 16`, a
    /// missing last element as zero. `dst.len()` must be `src.len().div_ceil(2)`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn to_pairs(src: &[f32], dst: &mut [u32]) {
        let k = src.len();
        assert_eq!(dst.len(), k.div_ceil(2));
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 32 <= k {
            let lo = _mm512_loadu_ps(s.add(i));
            let hi = _mm512_loadu_ps(s.add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.add(i / 2) as *mut __m512i, v);
            i += 32;
        }
        if i < k {
            let rem = k - i;
            let bits = |n: usize| ((1u64 << n.min(16)) - 1) as __mmask16;
            let lo = _mm512_maskz_loadu_ps(bits(rem), s.add(i));
            let hi = _mm512_maskz_loadu_ps(bits(rem.saturating_sub(16)), s.add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(d.add(i / 2) as *mut i32, bits(rem.div_ceil(2)), v);
        }
    }

    /// `R` rows × `V` vectors of 16 columns at row `r0`, column `j0`; `mask` selects the columns
    /// of the last vector (all: `0xffff`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const V: usize>(
        k2: usize,
        n: usize,
        a: *const u32,
        b: *const u32,
        bias: Option<*const f32>,
        c: *mut f32,
        r0: usize,
        j0: usize,
        mask: __mmask16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let last_mask = |v: usize| if v + 1 == V { mask } else { 0xffff };
        for q in 0..k2 {
            let brow = b.add(q * n + j0);
            let mut bv = [_mm512_setzero_si512(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_epi32(last_mask(v), brow.add(16 * v) as *const i32);
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add((r0 + r) * k2 + q) as i32));
                for v in 0..V {
                    accr[v] = _mm512_dpbf16_ps(
                        accr[v],
                        x,
                        std::mem::transmute::<__m512i, __m512bh>(bv[v]),
                    );
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

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn rows<const R: usize, const V: usize>(
        k2: usize,
        n: usize,
        a: *const u32,
        b: *const u32,
        bias: Option<*const f32>,
        c: *mut f32,
        r0: usize,
    ) {
        let mut j = 0;
        while j + 16 * V <= n {
            block::<R, V>(k2, n, a, b, bias, c, r0, j, 0xffff);
            j += 16 * V;
        }
        while j + 16 <= n {
            block::<R, 1>(k2, n, a, b, bias, c, r0, j, 0xffff);
            j += 16;
        }
        if j < n {
            let mask = ((1u32 << (n - j)) - 1) as __mmask16;
            block::<R, 1>(k2, n, a, b, bias, c, r0, j, mask);
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn gemm(
        m: usize,
        k2: usize,
        n: usize,
        a: &[u32],
        b: &[u32],
        bias: Option<&[f32]>,
        c: &mut [f32],
    ) {
        let (a, b, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let bias = bias.map(<[f32]>::as_ptr);
        // The float32 product's register blocks: 8 × 48, 4 × 64 and 1 × 128 outputs.
        let mut r = 0;
        while r + 8 <= m {
            rows::<8, 3>(k2, n, a, b, bias, cp, r);
            r += 8;
        }
        while r + 4 <= m {
            rows::<4, 4>(k2, n, a, b, bias, cp, r);
            r += 4;
        }
        while r < m {
            rows::<1, 8>(k2, n, a, b, bias, cp, r);
            r += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data as data;

    /// The CPU's rounding (used on the data) is [`to_bf16`]'s, subnormals, ties and odd lengths
    /// included.
    #[test]
    fn the_cpu_rounds_as_to_bf16() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX512_BF16");
            return;
        }
        let mut xs = data(77, 9);
        xs.extend([
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::from_bits(1),
            -f32::from_bits(0x0040_0000),
            f32::MIN_POSITIVE,
            -0.0,
            f32::MAX,
            f32::INFINITY,
        ]);
        for len in [xs.len(), 33, 32, 31, 1] {
            let src = &xs[xs.len() - len..];
            let mut got = vec![0u32; len.div_ceil(2)];
            // SAFETY: the CPU has AVX512_BF16 (checked above); `got` has the length required.
            unsafe { x86::to_pairs(src, &mut got) };
            for (i, &x) in src.iter().enumerate() {
                let w = (got[i / 2] >> (16 * (i % 2))) as u16;
                assert_eq!(w, to_bf16(x), "{x:e} (length {len}, index {i})");
            }
            if len % 2 == 1 {
                assert_eq!(got[len / 2] >> 16, 0, "the missing element is zero");
            }
        }
    }

    /// Rounding pinned to hand-worked bit patterns: 1 + 2⁻⁸ is a tie between 1 and 1 + 2⁻⁷ and goes
    /// to the even one (1); 1 + 3·2⁻⁸ goes up to 1 + 2⁻⁶ (even); just above the tie rounds up.
    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(to_bf16(-f32::from_bits(5)), 0x8000, "subnormals go to zero");
    }

    /// Every row and column block shape: within float32 rounding of the exact (f64) sum of the
    /// bfloat16-rounded products, and each row the same bits alone as in its batch.
    #[test]
    fn products_are_bf16_exact_and_batch_invariant() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX512_BF16");
            return;
        }
        for &(m, k, n) in &[(13, 128, 384), (5, 50, 100), (9, 7, 13), (1, 128, 2)] {
            let a = data(m * k, 1);
            let b = data(k * n, 2);
            let bias = data(n, 3);
            let packed = Bf16Matrix::new(k, n, &b);
            let mut got = vec![f32::NAN; m * n];
            gemm_bf16(m, &a, &packed, Some(&bias), &mut got);
            for r in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|p| {
                            from_bf16(to_bf16(a[r * k + p])) as f64
                                * from_bf16(to_bf16(b[p * n + j])) as f64
                        })
                        .sum::<f64>()
                        + bias[j] as f64;
                    let g = got[r * n + j] as f64;
                    assert!(
                        (g - exact).abs() < 1e-4,
                        "{m}x{k}x{n} ({r},{j}): {g} vs {exact}"
                    );
                }
                let mut one = vec![f32::NAN; n];
                gemm_bf16(1, &a[r * k..(r + 1) * k], &packed, Some(&bias), &mut one);
                assert!(
                    one.iter()
                        .zip(&got[r * n..(r + 1) * n])
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}x{k}x{n} row {r} alone"
                );
            }
        }
    }
}
