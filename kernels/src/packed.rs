//! [`crate::gemm`]'s product with the right-hand matrix packed once into column panels, for large
//! weight matrices that are reused many times (the BERT encoder's layers: `[384, 1152]` to
//! `[1536, 384]`, 0.6 to 2.4 MB each).
//!
//! The row-major `b` `[k, n]` is read by [`crate::gemm`] with a stride of `n` floats per step, one
//! page per row of `b`, and again for every block of rows; here each panel of [`PANEL`] columns is
//! `[k, PANEL]` contiguous (the last one zero-padded), and the register blocks of up to 32 rows run
//! over a panel chunk by chunk of 128 steps, each chunk while it is in L1, the next chunk
//! prefetched meanwhile. For a few rows (one short text: the weights are read once per product,
//! from L3 or memory) that overlap, and the huge pages [`PackedB::new_all`] asks for, matter most. **Each output is the same chain of fused multiply-adds as
//! [`crate::gemm`]** (from 0 in increasing `p`, the bias added once at the end), so the results are
//! the same bits as `gemm`'s and a row's result never depends on the other rows.

/// Columns per panel: three AVX-512 vectors.
pub const PANEL: usize = 48;

/// `b` `[k, n]` packed into `ceil(n / PANEL)` panels of `[k, PANEL]`.
///
/// The panels live in a [`Buffer`], which [`PackedB::new_all`] shares between many matrices.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// The panels are `mem[start..start + ceil(n / PANEL) · k · PANEL]`, `start` a 64-byte boundary.
    mem: std::sync::Arc<Buffer>,
    start: usize,
}

/// Floats of `(k, n)`'s panels.
fn panels_len(k: usize, n: usize) -> usize {
    n.div_ceil(PANEL) * k * PANEL
}

impl PackedB {
    /// Packs the row-major `b` `[k, n]`.
    ///
    /// # Panics
    /// When `b` is shorter than `k · n`.
    pub fn new(k: usize, n: usize, b: &[f32]) -> Self {
        Self::new_all(&[(k, n, b)]).remove(0)
    }

    /// Packs several row-major matrices `(k, n, b)` into one allocation, each starting on a
    /// 64-byte boundary (a cache line: otherwise every 64-byte load of a panel row would straddle
    /// two). An allocation of 2 MiB or more is 2 MiB-aligned and asks Linux for transparent huge
    /// pages (`madvise(MADV_HUGEPAGE)`) before it is written: a forward over MiniLM's 42 MB of
    /// weights for one short text otherwise crosses 10,000 4 KiB pages, one TLB miss each, and
    /// ran 1.4x slower (6.0–7.2 against 4.1–4.5 ms in `packed_and_plain_gflops`). Where huge
    /// pages are off or not available the pages are ordinary ones: the same results, only slower.
    ///
    /// # Panics
    /// When a `b` is shorter than its `k · n`.
    pub fn new_all<B: AsRef<[f32]>>(mats: &[(usize, usize, B)]) -> Vec<Self> {
        Self::pack(mats, true)
    }

    /// [`PackedB::new_all`], with huge pages asked for only when `huge`.
    fn pack<B: AsRef<[f32]>>(mats: &[(usize, usize, B)], huge: bool) -> Vec<Self> {
        let mut offsets = Vec::with_capacity(mats.len());
        let mut len = 0usize;
        for &(k, n, ref b) in mats {
            assert!(b.as_ref().len() >= k * n);
            offsets.push(len);
            len += panels_len(k, n).next_multiple_of(16);
        }
        let mut mem = Buffer::zeroed(len, huge);
        let data = mem.as_mut_slice();
        for (&(k, n, ref b), &off) in mats.iter().zip(&offsets) {
            let (b, data) = (b.as_ref(), &mut data[off..off + panels_len(k, n)]);
            for pi in 0..n.div_ceil(PANEL) {
                let j0 = pi * PANEL;
                let w = PANEL.min(n - j0);
                for p in 0..k {
                    let dst = &mut data[(pi * k + p) * PANEL..(pi * k + p) * PANEL + w];
                    dst.copy_from_slice(&b[p * n + j0..p * n + j0 + w]);
                }
            }
        }
        let mem = std::sync::Arc::new(mem);
        mats.iter()
            .zip(offsets)
            .map(|(&(k, n, _), start)| Self {
                k,
                n,
                mem: mem.clone(),
                start,
            })
            .collect()
    }

    /// The panels, `ceil(n / PANEL)` × `[k, PANEL]`, 64-byte aligned.
    fn panels(&self) -> &[f32] {
        &self.mem.as_slice()[self.start..self.start + panels_len(self.k, self.n)]
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

/// An owned, zero-initialised `f32` buffer aligned to 64 bytes, or to 2 MiB (with transparent huge
/// pages asked for, on Linux) from 2 MiB up; see [`PackedB::new_all`].
struct Buffer {
    ptr: std::ptr::NonNull<f32>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: `Buffer` owns its allocation like a `Vec<f32>`; it is only written through `&mut self`.
unsafe impl Send for Buffer {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for Buffer {}

impl Buffer {
    const HUGE: usize = 2 << 20;

    /// `len` zeros; from 2 MiB up with huge pages asked for when `huge`.
    fn zeroed(len: usize, huge: bool) -> Self {
        let bytes = (len.max(1) * 4).next_multiple_of(64);
        let (bytes, align) = if huge && bytes >= Self::HUGE {
            (bytes.next_multiple_of(Self::HUGE), Self::HUGE)
        } else {
            (bytes, 64)
        };
        let layout =
            std::alloc::Layout::from_size_align(bytes, align).expect("a valid buffer layout");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        if align == Self::HUGE {
            // Best effort: without huge pages (disabled, or none free) the pages are 4 KiB ones.
            // SAFETY: the range is this allocation, page-aligned; the advice changes no contents.
            unsafe { libc::madvise(raw.cast(), bytes, libc::MADV_HUGEPAGE) };
        }
        // Written only now, after the advice, so that the first touch faults in huge pages.
        // SAFETY: `raw` is valid for `bytes` bytes; zero bits are a valid `f32` (0.0).
        unsafe { std::ptr::write_bytes(raw, 0, bytes) };
        Self {
            ptr: ptr.cast(),
            len,
            layout,
        }
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: `ptr` is valid for `len` initialised floats while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` is the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) }
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Buffer({} floats, {}-byte aligned)",
            self.len,
            self.layout.align()
        )
    }
}

/// `c` `[m, n]` = `a` `[m, k]` · `b` (+ `bias` `[n]`), `a` and `c` row-major and contiguous; the
/// same bits as [`crate::gemm`] on the unpacked `b`.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn gemm_packed(m: usize, a: &[f32], b: &PackedB, bias: Option<&[f32]>, c: &mut [f32]) {
    check(m, a, b, bias, c);
    // SAFETY: the lengths are checked; `c` is borrowed mutably for the whole call.
    unsafe { panels(m, a, b, bias, c.as_mut_ptr(), 0..b.n.div_ceil(PANEL)) }
}

/// An element-wise function [`gemm_packed_part`] applies to its outputs.
pub type Epilogue<'a> = &'a dyn Fn(&mut [f32]);

/// Part `part` of `parts` of [`gemm_packed`]'s product, for a team of threads that each take one
/// (see [`crate::team`]): all `m` rows over the part's share of the panels (columns), written to
/// `c` `[m, n]`, then `epilogue` (if any) on those columns row by row while they are in cache (an
/// element-wise activation). Each thread then reads only its share of the weights, which is what
/// splits one short text's products across cores (a few rows: every weight is read once per
/// product; a thread given part of the rows would read all of them). Each output is the same
/// chain of operations as [`gemm_packed`]'s, so the bits are the same whatever `parts`. Returns
/// the part's columns.
///
/// # Safety
/// No other thread reads `c`, or writes the part's columns of it, during the call.
///
/// # Panics
/// When a slice is shorter than its shape says, or `part >= parts`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed_part(
    m: usize,
    a: &[f32],
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &crate::team::SharedBuf<'_>,
    part: usize,
    parts: usize,
    epilogue: Option<Epilogue<'_>>,
) -> std::ops::Range<usize> {
    assert!(part < parts);
    assert!(a.len() >= m * b.k && c.len() >= m * b.n);
    if let Some(bias) = bias {
        assert!(bias.len() >= b.n);
    }
    let (n, np) = (b.n, b.n.div_ceil(PANEL));
    let (p0, p1) = (np * part / parts, np * (part + 1) / parts);
    let (j0, j1) = (p0 * PANEL, (p1 * PANEL).min(n));
    // SAFETY: the lengths are checked; the part's columns are this thread's (the caller's).
    unsafe { panels(m, a, b, bias, c.as_mut_ptr(), p0..p1) };
    if let Some(f) = epilogue {
        for r in 0..m {
            // SAFETY: as above: row `r`'s columns `j0..j1` are this part's alone.
            f(unsafe { c.write(r * n + j0..r * n + j1) });
        }
    }
    j0..j1
}

/// The shape checks of [`gemm_packed`].
fn check(m: usize, a: &[f32], b: &PackedB, bias: Option<&[f32]>, c: &[f32]) {
    let (k, n) = (b.k, b.n);
    assert!(a.len() >= m * k && c.len() >= m * n);
    if let Some(bias) = bias {
        assert!(bias.len() >= n);
    }
}

/// Columns of panels `ps` of `c` `[m, n]` (`n = b.n()`), in the best copy the CPU runs.
///
/// # Safety
/// `a` holds `m · k` floats, `bias` (if any) `n`; `c` is valid for writes of `m · n` floats and
/// nothing else reads or writes those panels' columns meanwhile.
unsafe fn panels(
    m: usize,
    a: &[f32],
    b: &PackedB,
    bias: Option<&[f32]>,
    c: *mut f32,
    ps: std::ops::Range<usize>,
) {
    if m == 0 || b.n == 0 || ps.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above); the rest is the caller's.
            return unsafe { x86::packed512(m, a, b, bias, c, ps) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); the rest is the caller's.
            return unsafe { x86::packed256(m, a, b, bias, c, ps) };
        }
    }
    // SAFETY: the caller's.
    unsafe { portable(m, a, b, bias, c, ps) }
}

/// Panel by panel, row by row: `acc[j] ← fma(a[r, p], panel[p, j], acc[j])` for p in order.
///
/// # Safety
/// As [`panels`].
#[inline(always)]
unsafe fn portable(
    m: usize,
    a: &[f32],
    b: &PackedB,
    bias: Option<&[f32]>,
    c: *mut f32,
    ps: std::ops::Range<usize>,
) {
    let (k, n) = (b.k, b.n);
    for pi in ps {
        let panel = &b.panels()[pi * k * PANEL..(pi + 1) * k * PANEL];
        let j0 = pi * PANEL;
        let w = PANEL.min(n - j0);
        for r in 0..m {
            let mut acc = [0.0f32; PANEL];
            for (p, &x) in a[r * k..(r + 1) * k].iter().enumerate() {
                for (y, &v) in acc.iter_mut().zip(&panel[p * PANEL..(p + 1) * PANEL]) {
                    *y = x.mul_add(v, *y);
                }
            }
            // SAFETY: row `r`'s columns `j0..j0 + w` lie within `c` `[m, n]` (the caller's).
            let out = unsafe { std::slice::from_raw_parts_mut(c.add(r * n + j0), w) };
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
    /// Rows of a panel (`k` steps) per chunk: 128 × 192 bytes = 24 KB, which stays in L1 while
    /// every register block of a row group runs over it.
    const KC: usize = 128;
    /// What a register block prefetches ([`block`]'s `PF`): bit `i < 3`, line `i` of each row
    /// of the next chunk into L2; [`T0`], this chunk's rows ahead into L1.
    const T0: u8 = 8;

    /// `PF` of block `i` of `nb` in a chunk: the first block brings this chunk into L1 and, with
    /// the second and third, the next chunk into L2, one line of its rows each (all three when
    /// it is alone; two and one for two blocks).
    fn prefetches(i: usize, nb: usize) -> u8 {
        match (nb, i) {
            (1, _) => T0 | 0b111,
            (2, 0) => T0 | 0b011,
            (2, _) => 0b100,
            (_, 0) => T0 | 0b001,
            (_, 1) => 0b010,
            (_, 2) => 0b100,
            _ => 0,
        }
    }

    /// Rows per group: the accumulators of a group's blocks wait in a 6 KB buffer between chunks.
    const GROUP: usize = 32;

    /// Steps `p0..p1` of rows `r0..r0 + R` over one panel (columns `j0..j0 + PANEL`). The
    /// accumulators start at zero when `p0 == 0`, else from `acc_in` (`[R, PANEL]`, stored there by
    /// the previous chunk: a float32 store and load are exact, so each output is still one chain
    /// of fused multiply-adds from 0 in increasing `p`). After the last step (`p1 == k`) the bias
    /// is added and the rows are stored to `c` (masked to `n`), else back to `acc_in`. `PF`: issue
    /// the panel prefetches (the first block of a chunk reads the panel from memory; the others
    /// find it in L1).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize, const PF: u8>(t: Tile) {
        let Tile {
            k,
            n,
            p0,
            p1,
            a,
            panel,
            bias,
            c,
            r0,
            j0,
            acc: acc_in,
        } = t;
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        if p0 > 0 {
            for (r, accr) in acc.iter_mut().enumerate() {
                for (v, x) in accr.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(acc_in.add(r * PANEL + 16 * v));
                }
            }
        }
        for p in p0..p1 {
            let row = panel.add(p * PANEL);
            if PF & T0 != 0 {
                // The panel's rows PREFETCH steps ahead (three cache lines a row), from L2 (or
                // memory) into L1.
                let ahead = row.wrapping_add(PREFETCH * PANEL) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128));
            }
            // The next chunk (the rest of the panel, then the next panel: they follow in memory)
            // into L2, KC steps ahead, so that it streams in while this chunk is computed from L1
            // rather than after it; its rows' three lines are shared out between the first
            // blocks of the chunk (spread over their time, see `prefetches`).
            let far = row.wrapping_add(KC * PANEL) as *const i8;
            for line in 0..3 {
                if PF & (1 << line) != 0 {
                    _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64 * line));
                }
            }
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
        if p1 < k {
            for (r, accr) in acc.iter().enumerate() {
                for (v, x) in accr.iter().enumerate() {
                    _mm512_storeu_ps(acc_in.add(r * PANEL + 16 * v), *x);
                }
            }
            return;
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

    /// What one call of [`block`] works on: `a` `[m, k]`, one panel at columns `j0..` of `c`
    /// `[m, n]`, steps `p0..p1`, rows from `r0`, and its accumulators' place between chunks.
    #[derive(Clone, Copy)]
    struct Tile {
        k: usize,
        n: usize,
        p0: usize,
        p1: usize,
        a: *const f32,
        panel: *const f32,
        bias: Option<*const f32>,
        c: *mut f32,
        r0: usize,
        j0: usize,
        acc: *mut f32,
    }

    /// Register blocks in a group of `rows` rows: one per 8 rows or part of it.
    fn block_count(rows: usize) -> usize {
        rows.div_ceil(8).max(1)
    }

    /// Register blocks of `rows` rows: [`block_count`] blocks of near-equal size (22 rows: 8, 7,
    /// 7 rather than 8, 8, 4, 1, 1; a block of fewer than 3 rows waits on its accumulators'
    /// latency), as `(first row, rows)`.
    fn blocks(rows: usize) -> impl Iterator<Item = (usize, usize)> {
        let nb = block_count(rows);
        let (base, extra) = (rows / nb, rows % nb);
        (0..nb).scan(0, move |r, b| {
            let len = base + usize::from(b < extra);
            let out = (*r, len);
            *r += len;
            Some(out)
        })
    }

    /// Row groups of `m` rows: as few as hold at most [`GROUP`] rows, of near-equal size (33
    /// rows: 17 and 16, rather than 32 and a lone row that would stream every weight again for
    /// itself), as `(first row, rows)`.
    fn groups(m: usize) -> impl Iterator<Item = (usize, usize)> {
        let ng = m.div_ceil(GROUP).max(1);
        let (base, extra) = (m / ng, m % ng);
        (0..ng).scan(0, move |r, g| {
            let len = base + usize::from(g < extra);
            let out = (*r, len);
            *r += len;
            Some(out)
        })
    }

    /// Panels `ps` of the product (see [`super::panels`] for the contract).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn packed512(
        m: usize,
        a: &[f32],
        b: &PackedB,
        bias: Option<&[f32]>,
        cp: *mut f32,
        ps: std::ops::Range<usize>,
    ) {
        let (k, n) = (b.k, b.n);
        let a = a.as_ptr();
        let bias = bias.map(<[f32]>::as_ptr);
        let mut acc = [0.0f32; GROUP * PANEL];
        // Rows in groups; each group runs over its panels in memory order, chunk by chunk, every
        // block of the group over a chunk while it is in L1 (the group's rows of `a` stay in
        // L1 or L2 meanwhile).
        for (g0, g) in groups(m) {
            for pi in ps.clone() {
                let panel = b.panels().as_ptr().add(pi * k * PANEL);
                let j0 = pi * PANEL;
                for p0 in (0..k).step_by(KC) {
                    let p1 = (p0 + KC).min(k);
                    let nb = block_count(g);
                    for (i, (r, len)) in blocks(g).enumerate() {
                        let pf = prefetches(i, nb);
                        let t = Tile {
                            k,
                            n,
                            p0,
                            p1,
                            a,
                            panel,
                            bias,
                            c: cp,
                            r0: g0 + r,
                            j0,
                            acc: acc.as_mut_ptr().add(r * PANEL),
                        };
                        macro_rules! go {
                            ($($rows:literal)*) => {
                                match (len, pf) {
                                    $(($rows, 0b1111) => block::<$rows, 0b1111>(t),
                                      ($rows, 0b1011) => block::<$rows, 0b1011>(t),
                                      ($rows, 0b1001) => block::<$rows, 0b1001>(t),
                                      ($rows, 0b0010) => block::<$rows, 0b0010>(t),
                                      ($rows, 0b0100) => block::<$rows, 0b0100>(t),
                                      ($rows, _) => block::<$rows, 0>(t),)*
                                    _ => unreachable!("blocks are 1 to 8 rows"),
                                }
                            };
                        }
                        go!(1 2 3 4 5 6 7 8);
                    }
                }
            }
        }
    }

    /// [`super::portable`] compiled for AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn packed256(
        m: usize,
        a: &[f32],
        b: &PackedB,
        bias: Option<&[f32]>,
        c: *mut f32,
        ps: std::ops::Range<usize>,
    ) {
        // SAFETY: the caller's.
        unsafe { super::portable(m, a, b, bias, c, ps) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data as data;

    /// Panels start on a 64-byte boundary (a cache line), whatever the allocation's alignment.
    #[test]
    fn panels_are_cache_line_aligned() {
        let shapes = [(384, 1152), (7, 5), (1536, 384), (3, 17)];
        for &(k, n) in &shapes {
            let pb = PackedB::new(k, n, &data(k * n, 1));
            assert_eq!(pb.panels().as_ptr() as usize % 64, 0, "{k}x{n}");
        }
        // Packed together (2 MiB-aligned from 2 MiB up): every matrix's panels on a line too.
        let mats: Vec<_> = shapes
            .iter()
            .map(|&(k, n)| (k, n, data(k * n, 2)))
            .collect();
        let all = PackedB::new_all(&mats);
        assert_eq!(all[0].panels().as_ptr() as usize % (2 << 20), 0);
        for (pb, &(k, n)) in all.iter().zip(&shapes) {
            assert_eq!(pb.panels().as_ptr() as usize % 64, 0, "{k}x{n} in new_all");
        }
    }

    /// Matrices packed together give the same products as each packed alone: the same panels
    /// (padding columns zero), whatever their neighbours.
    #[test]
    fn packed_together_or_alone_give_the_same_bits() {
        let shapes = [(13, 100), (64, 48), (7, 5)];
        let mats: Vec<_> = shapes
            .iter()
            .map(|&(k, n)| (k, n, data(k * n, 5)))
            .collect();
        for (pb, (k, n, b)) in PackedB::new_all(&mats).iter().zip(&mats) {
            let (k, n) = (*k, *n);
            assert_eq!((pb.k(), pb.n()), (k, n));
            let alone = PackedB::new(k, n, b);
            assert_eq!(pb.panels(), alone.panels(), "{k}x{n}");
            let a = data(9 * k, 6);
            let (mut x, mut y) = (vec![0.0; 9 * n], vec![1.0; 9 * n]);
            gemm_packed(9, &a, pb, None, &mut x);
            gemm_packed(9, &a, &alone, None, &mut y);
            assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
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
            (33, 20, 60),
            (70, 9, 50),
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
                // SAFETY: `port` holds `m · n` floats, borrowed mutably for the call.
                unsafe { portable(m, &a, &pb, bias, port.as_mut_ptr(), 0..n.div_ceil(PANEL)) };
                assert!(same(&port), "{m}x{k}x{n} portable");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut got = vec![f32::NAN; m * n];
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    unsafe {
                        x86::packed256(m, &a, &pb, bias, got.as_mut_ptr(), 0..n.div_ceil(PANEL))
                    };
                    assert!(same(&got), "{m}x{k}x{n} AVX2");
                }
            }
        }
    }
}

#[cfg(test)]
mod part_tests {
    use super::*;
    use crate::team::{Barrier, SharedBuf};
    use crate::test_data as data;

    /// Split between a team of threads by columns, with an element-wise epilogue: the bits of
    /// `gemm_packed` followed by the epilogue over the whole output, for teams of 1 to 6 (more
    /// threads than panels included) and shapes with a partial last panel.
    #[test]
    fn split_by_columns_gives_the_same_bits() {
        let square = |x: &mut [f32]| x.iter_mut().for_each(|v| *v = *v * *v - 1.0);
        for &(m, k, n) in &[(1, 384, 1152), (25, 40, 200), (3, 7, 5), (40, 16, 97)] {
            let (a, b, bias) = (data(m * k, 1), data(k * n, 2), data(n, 3));
            let pb = PackedB::new(k, n, &b);
            let mut want = vec![0.0; m * n];
            gemm_packed(m, &a, &pb, Some(&bias), &mut want);
            square(&mut want);
            for parts in 1..=6 {
                let mut got = vec![f32::NAN; m * n];
                let mut covered = vec![];
                {
                    let c = SharedBuf::new(&mut got);
                    let barrier = Barrier::new(parts);
                    std::thread::scope(|s| {
                        let handles: Vec<_> = (0..parts)
                            .map(|part| {
                                let (a, pb, bias, c, barrier) = (&a, &pb, &bias, &c, &barrier);
                                s.spawn(move || {
                                    // SAFETY: each thread writes its own columns; nobody reads
                                    // `c` until the scope ends.
                                    let cols = unsafe {
                                        gemm_packed_part(
                                            m,
                                            a,
                                            pb,
                                            Some(bias),
                                            c,
                                            part,
                                            parts,
                                            Some(&square),
                                        )
                                    };
                                    barrier.wait();
                                    cols
                                })
                            })
                            .collect();
                        for hd in handles {
                            covered.push(hd.join().expect("a part"));
                        }
                    });
                }
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{m}x{k}x{n} in {parts} parts");
                let widths: usize = covered.iter().map(|r| r.len()).sum();
                assert_eq!(
                    widths, n,
                    "{m}x{k}x{n}: the parts' columns cover the output once"
                );
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

    /// Timing, not a check: `cargo test --release -p oe-kernels -- --ignored --nocapture`
    /// (`OE_M=N` sets the rows of the MiniLM forward).
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
        // A MiniLM forward's weights (6 layers, 42 MB) for a 25-token text (`OE_M` rows if set),
        // products in turn.
        let m: usize = std::env::var("OE_M")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(25);
        let shapes = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];
        let mats: Vec<_> = (0..6)
            .flat_map(|l| {
                shapes
                    .iter()
                    .map(move |&(k, n)| (k, n, crate::test_data(k * n, 10 + l)))
            })
            .collect();
        let a = vec![0.1f32; m * 1536];
        let mut c = vec![0.0f32; m * 1536];
        let f: f64 = shapes
            .iter()
            .map(|&(k, n)| 2.0 * (m * k * n) as f64)
            .sum::<f64>()
            * 6.0;
        // Split between a team of `OE_TEAM` threads (2 unless set) by columns, a barrier after
        // each product, as `bert_cpu` runs a short batch.
        let team: usize = std::env::var("OE_TEAM")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let packed = super::PackedB::pack(&mats, true);
        for _ in 0..3 {
            let reps = 50;
            let mut c = vec![0.0f32; m * 1536];
            let barrier = crate::team::Barrier::new(team);
            let shared = crate::team::SharedBuf::new(&mut c);
            let t0 = std::time::Instant::now();
            std::thread::scope(|s| {
                for part in 0..team {
                    let (a, packed, shared, barrier) = (&a, &packed, &shared, &barrier);
                    s.spawn(move || {
                        for _ in 0..reps {
                            for b in packed {
                                // SAFETY: each thread writes its own columns; nobody reads `c`.
                                unsafe {
                                    super::gemm_packed_part(m, a, b, None, shared, part, team, None)
                                };
                                barrier.wait();
                            }
                        }
                    });
                }
            });
            let t = t0.elapsed().as_secs_f64() / reps as f64;
            println!(
                "forward of {m} rows by a team of {team}: {:.2} ms, {:.1} GFLOP/s",
                t * 1e3,
                f / t / 1e9
            );
        }
        // Alternately, so that both see the same machine: one allocation with huge pages (as
        // `bert_cpu` packs), and the same without.
        for round in 0..4 {
            let huge = round % 2 == 0;
            let packed = super::PackedB::pack(&mats, huge);
            let reps = 50;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                for b in &packed {
                    super::gemm_packed(m, &a, b, None, &mut c);
                }
            }
            let t = t0.elapsed().as_secs_f64() / reps as f64;
            println!(
                "forward of {m} rows over 42 MB of weights, huge pages {}: {:.2} ms, {:.1} GFLOP/s",
                if huge { "asked" } else { "not asked" },
                t * 1e3,
                f / t / 1e9
            );
        }
    }
}
