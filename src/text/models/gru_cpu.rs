//! A packed, fused GRU for float32 CPU tensors: the paper's GRU computed with one matrix product per
//! time step, the gate arithmetic in one pass over contiguous buffers, no autograd graph, and a
//! hand-written backward pass for training.
//!
//! **Packing.** A left-padded batch spends most of its steps on padding: every row of a batch of
//! length T runs T steps, though SST's sentences are about half the batch maximum. The reference's
//! semantics (the GRU runs over the pad positions too, from h0 = 0) are kept exactly, without that
//! cost: every row begins with the same pad steps, so the state after k pad steps is one shared
//! trajectory `P[k]` (a one-row GRU over the pad embedding), and a row with p pads starts its real
//! tokens from `P[p]`. Rows are sorted by length, longest first, so at step t the rows that are past
//! their padding are a prefix of that order and each step's matrix product covers exactly them. The
//! work is the sum of the real lengths plus one row per pad step. The backward pass is the exact
//! adjoint: the gradients that reach `P[k]` from every row that started there are summed and carried
//! back along the shared trajectory (by linearity of the backward pass). With
//! [`PadSteps::Skip`] (the `masked` pad mode) there is no trajectory: every row starts from zero.
//!
//! **Equations** (PyTorch's, gate rows ordered r, z, n):
//! `r = σ(W_ir x + b_ir + W_hr h + b_hr)`, `z = σ(W_iz x + b_iz + W_hz h + b_hz)`,
//! `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`, `h' = (h − n) ⊙ z + n`.
//!
//! The sigmoid and tanh are computed from one branch-free exponential ([`exp_f32`], the Cephes
//! polynomial, about 1 ulp), written so that the compiler vectorises it; the arithmetic is the
//! same IEEE operations whatever the vector width the CPU offers, so results do not depend on it.
//! **Products.** Inference (no tape) multiplies with [`oe_kernels::gemm`], whose every output is
//! one fused multiply-add chain in a fixed order: a row's state is the same bits whatever else is
//! in its batch, how many rows the product has, or where the row sits. So a text scored alone costs
//! one row, and texts of different lengths can share a batch ([`PadSteps::Skip`]: each row starts
//! from zero at its first token, exactly as if it ran alone). Training (with a tape) keeps
//! libtorch's products (`addmm`/`mm` into preallocated buffers), for speed on its large batches.
//! Tests compare outputs and gradients with libtorch's own GRU.

use tch::{Device, Kind, Tensor};

/// What the pad steps of a left-padded batch do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadSteps {
    /// The GRU runs over them (the reference's behaviour, `PadMode::Left`).
    Run,
    /// The state stays zero until a row's first token (`PadMode::Masked`).
    Skip,
}

/// One layer's weights: `w_ih [3H, in]`, `w_hh [3H, H]`, `b_ih [3H]`, `b_hh [3H]`.
pub type LayerWeights = [Tensor; 4];

/// Whether the fused path can run these tensors (float32, on the CPU).
pub fn supported(t: &Tensor) -> bool {
    t.device() == Device::Cpu && t.kind() == Kind::Float
}

// The element-wise kernels live in the `oe-kernels` crate (optimised in debug builds too).
pub use oe_kernels::{exp_f32, step_backward, step_forward};
#[cfg(test)]
use oe_kernels::{sigmoid, tanh};

// ---------------------------------------------------------------------------------------------
// Buffers.

/// A float32 CPU buffer: a contiguous libtorch tensor for the matrix products and a slice for the
/// gates. Its data pointer, length and last dimension are read from libtorch once, when it is
/// made: one short text takes ~50 steps per layer, each reading several slices, and each libtorch
/// call (`numel`, `data_ptr`, `size`) cost more than the step's arithmetic.
#[derive(Debug)]
struct Buf {
    t: Tensor,
    ptr: *mut f32,
    len: usize,
    /// Size of the last dimension (the row width of a matrix).
    cols: usize,
}

// SAFETY: `ptr` points into `t`'s storage, which `t` (a `Send` tensor) owns; a `&Buf` hands out
// only shared slices and `slice_mut` takes `&mut self`, as a `Vec<f32>` would.
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

impl Buf {
    /// Wraps a contiguous float32 CPU tensor (what every constructor below makes).
    fn new(t: Tensor) -> Self {
        debug_assert!(
            t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous(),
            "Buf needs a contiguous float32 CPU tensor"
        );
        let len = t.numel();
        let cols = t.size().last().map_or(1, |&c| c.max(0) as usize);
        let ptr = if len == 0 {
            std::ptr::NonNull::<f32>::dangling().as_ptr()
        } else {
            t.data_ptr() as *mut f32
        };
        Buf { t, ptr, len, cols }
    }
    fn zeros(shape: &[i64]) -> Self {
        Buf::new(Tensor::zeros(shape, (Kind::Float, Device::Cpu)))
    }
    /// Uninitialised: for buffers that are written before they are read.
    fn empty(shape: &[i64]) -> Self {
        Buf::new(Tensor::empty(shape, (Kind::Float, Device::Cpu)))
    }
    /// The rows `[start, start + n)` along the first dimension, as a tensor view.
    fn rows(&self, start: usize, n: usize) -> Tensor {
        self.t.narrow(0, start as i64, n as i64)
    }
    fn slice(&self) -> &[f32] {
        // SAFETY: `ptr` and `len` describe the contiguous float32 storage of `t` (checked in
        // `new`), alive as long as `self`; no mutable slice of it exists at the same time
        // (`slice_mut` takes `&mut self`). Empty: a dangling, aligned pointer.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn slice_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `slice`; `&mut self` makes this the only view for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// An uninitialised buffer of `shape` from this thread's scratch `slot` (kept between calls and
    /// grown when too small): for inference, whose buffers die with the call. Allocating and
    /// freeing them per batch cost about 10% (page faults and unmapping, on every batch).
    fn scratch(slot: usize, shape: &[i64]) -> Self {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<Tensor>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let need: i64 = shape.iter().product::<i64>();
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            while s.len() <= slot {
                s.push(Tensor::new());
            }
            if !s[slot].defined() || s[slot].numel() < need.max(1) as usize {
                s[slot] = Tensor::empty([need.max(1) + need / 4], (Kind::Float, Device::Cpu));
            }
            Buf::new(s[slot].narrow(0, 0, need).view(shape))
        })
    }
    /// A contiguous float32 CPU copy (or another handle on the tensor when it already is one:
    /// checking costs no libtorch operation, converting costs three).
    fn from(t: &Tensor) -> Self {
        if t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous() {
            return Buf::new(t.shallow_clone());
        }
        Buf::new(t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous())
    }
    /// Another handle on the same storage.
    fn shallow(&self) -> Self {
        Buf {
            t: self.t.shallow_clone(),
            ..*self
        }
    }
}

/// `a` `[rows, k]` · `bt` `[k, n]` (+ `bias` `[n]`) into `out` `[rows, n]`, the batch-invariant
/// product ([`oe_kernels::gemm`]); `k` and `n` from `bt`'s shape. With `bf16`, the same product
/// with `a` and `bt` (packed in `bf16`) rounded to bfloat16 ([`oe_kernels::bf16::gemm_bf16`],
/// batch-invariant too).
fn gemm_rows(
    a: &[f32],
    rows: usize,
    bt: &Buf,
    bf16: Option<&Bf16Matrix>,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    match bf16 {
        Some(b) => oe_kernels::bf16::gemm_bf16(rows, a, b, bias, out),
        None => {
            let n = bt.cols;
            let k = bt.len / n.max(1);
            oe_kernels::gemm(rows, k, n, a, bt.slice(), bias, out);
        }
    }
}

pub use oe_kernels::bf16::Bf16Matrix;

/// What inference needs besides the weights, fixed while they do not change: per layer the
/// transposed weights and the biases as contiguous buffers ([`FrozenLayer`]), and the first
/// layer's input projection of every vocabulary entry ([`input_table`]). Made once, they cost a
/// lone text's inference no libtorch call.
///
/// With [`Frozen::with_bf16`], also those transposed weights rounded to bfloat16 and packed for
/// [`oe_kernels::bf16::gemm_bf16`]: inference then multiplies in bfloat16 (opt-in, reduced
/// precision; the input table and the gate arithmetic stay float32).
#[derive(Debug)]
pub struct Frozen {
    pub table: Tensor,
    layers: Vec<FrozenLayer>,
    bf16: Option<std::sync::Arc<Vec<[Bf16Matrix; 2]>>>,
}

impl Frozen {
    pub fn new(embedding: &Tensor, layers: &[LayerWeights]) -> Self {
        let layers: Vec<FrozenLayer> = layers.iter().map(FrozenLayer::new).collect();
        let table = table_of(embedding, &layers[0].wi.t, &layers[0].b_ih.t);
        Self {
            table,
            layers,
            bf16: None,
        }
    }

    /// Adds the bfloat16 copies of the transposed weights (the CPU must run
    /// [`oe_kernels::bf16::gemm_bf16`]: [`oe_kernels::bf16::supported`]).
    pub fn with_bf16(mut self) -> Self {
        let pack = |t: &Tensor| {
            let (k, n) = (t.size()[0] as usize, t.size()[1] as usize);
            Bf16Matrix::new(k, n, Buf::new(t.shallow_clone()).slice())
        };
        let packed = self
            .layers
            .iter()
            .map(|f| [pack(&f.wi.t), pack(&f.wh.t)])
            .collect();
        self.bf16 = Some(std::sync::Arc::new(packed));
        self
    }

    /// Whether inference multiplies in bfloat16.
    pub fn has_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// Another handle on the same tensors; without `bf16`, float32 products only.
    pub fn shallow_clone_with(&self, bf16: bool) -> Self {
        Self {
            table: self.table.shallow_clone(),
            layers: self.layers.iter().map(FrozenLayer::shallow).collect(),
            bf16: if bf16 { self.bf16.clone() } else { None },
        }
    }

    pub fn shallow_clone(&self) -> Self {
        self.shallow_clone_with(true)
    }
}

/// One layer's weights for inference: `W_ihᵀ [in, 3H]`, `W_hhᵀ [H, 3H]`, `b_ih [3H]`, `b_hh [3H]`,
/// contiguous float32.
#[derive(Debug)]
struct FrozenLayer {
    wi: Buf,
    wh: Buf,
    b_ih: Buf,
    b_hh: Buf,
}

impl FrozenLayer {
    fn new(w: &LayerWeights) -> Self {
        let [wi, wh] = transposed(w).map(Buf::new);
        let [b_ih, b_hh] = tch::no_grad(|| {
            [2, 3].map(|i| Buf::new(w[i].detach().to_kind(Kind::Float).contiguous()))
        });
        Self { wi, wh, b_ih, b_hh }
    }

    fn shallow(&self) -> Self {
        Self {
            wi: self.wi.shallow(),
            wh: self.wh.shallow(),
            b_ih: self.b_ih.shallow(),
            b_hh: self.b_hh.shallow(),
        }
    }
}

/// Other handles on the same tensors, per layer (for a worker thread or another owner).
pub fn shallow_layers<const N: usize>(layers: &[[Tensor; N]]) -> Vec<[Tensor; N]> {
    layers
        .iter()
        .map(|l| l.each_ref().map(Tensor::shallow_clone))
        .collect()
}

/// `[W_ihᵀ, W_hhᵀ]` of one layer, contiguous float32.
fn transposed(w: &LayerWeights) -> [Tensor; 2] {
    tch::no_grad(|| [0, 1].map(|i| w[i].detach().tr().to_kind(Kind::Float).contiguous()))
}

/// The time layout of a packed batch: rows sorted by length (longest first); at step t the
/// first `n[t]` sorted rows are active and their data sit at rows `off[t]..off[t] + n[t]` of every
/// packed buffer.
#[derive(Clone, Debug)]
pub struct Packing {
    /// Batch rows in sorted order (`order[i]` = the original row of sorted row i).
    pub order: Vec<usize>,
    /// Real length of each sorted row (at most T).
    pub len: Vec<usize>,
    /// Steps T.
    pub steps: usize,
    /// Active rows per step.
    pub n: Vec<usize>,
    /// Offset of each step in the packed buffers; `off[T]` = total active rows N.
    pub off: Vec<usize>,
    /// Pad steps of the shared trajectory (`T − shortest length`).
    pub max_pad: usize,
}

impl Packing {
    /// From each row's real length (the last `len` of `steps` positions are real).
    pub fn new(lengths: &[usize], steps: usize) -> Self {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i].min(steps)));
        let len: Vec<usize> = order.iter().map(|&i| lengths[i].min(steps)).collect();
        let mut n = vec![0usize; steps];
        // Row i is active at steps t >= steps - len[i].
        for &l in &len {
            for c in &mut n[steps - l..] {
                *c += 1;
            }
        }
        let mut off = Vec::with_capacity(steps + 1);
        let mut acc = 0;
        for &c in &n {
            off.push(acc);
            acc += c;
        }
        off.push(acc);
        let max_pad = steps - len.last().copied().unwrap_or(steps);
        Self {
            order,
            len,
            steps,
            n,
            off,
            max_pad,
        }
    }

    /// Total active rows N (the sum of the lengths).
    pub fn total(&self) -> usize {
        self.off[self.steps]
    }

    /// For each packed row, its index into the row-major `[B, T]` token array: packed row
    /// `off[t] + i` holds `tokens[order[i] * T + t]`.
    pub fn gather_index(&self) -> Vec<usize> {
        let t_all = self.steps;
        let mut idx = Vec::with_capacity(self.total());
        for t in 0..t_all {
            for &row in &self.order[..self.n[t]] {
                idx.push(row * t_all + t);
            }
        }
        idx
    }
}

/// What a layer's forward pass keeps for its backward pass.
struct LayerTape {
    /// Real steps: input `[N, in]`, previous states `[N, H]`, hidden projections and gates
    /// `[N, 3H]`.
    x: Tensor,
    hp: Buf,
    gh: Buf,
    gates: Buf,
    /// Pad trajectory: input `[max_pad, in]`, states `P [max_pad + 1, H]`, projections and gates
    /// `[max_pad, 3H]`.
    xp: Tensor,
    p: Buf,
    ghp: Buf,
    gatesp: Buf,
}

/// One layer's outputs: real steps `[N, H]` and the pad trajectory `P [max_pad + 1, H]`.
struct LayerOut {
    out: Buf,
    p: Buf,
    tape: Option<LayerTape>,
}

/// A layer's input: the inputs themselves, or (inference on the first layer) their projections.
enum Input<'a> {
    /// `[N, in]` for the real steps and `[max_pad, in]` for the pad trajectory.
    X(&'a Tensor, &'a Tensor),
    /// Their projections `x · W_ihᵀ + b_ih` read from the first layer's table (inference): the
    /// table `[V, 3H]`, each packed row's token id `[N]` (checked against `V` by the caller), and
    /// the pad steps' projections `[max_pad, 3H]`. The step kernel reads the table rows in place:
    /// gathering them into an `[N, 3H]` copy first was 6–7% of scoring's time.
    Table(&'a Tensor, &'a [usize], Tensor),
}

/// The input projections `[rows, 3H]` of a layer's real steps: a packed buffer, or table rows by
/// token id.
enum Projections<'a> {
    Rows(Buf),
    Table(Buf, &'a [usize]),
}

impl Projections<'_> {
    /// One step's forward for the packed rows `o..o + n` (see [`step_forward`]; inference only
    /// for a table).
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        hdim: usize,
        o: usize,
        n: usize,
        gh: &mut [f32],
        bh: &[f32],
        hp: &[f32],
        out: &mut [f32],
        gates: &mut [f32],
        keep: bool,
    ) {
        let h3 = 3 * hdim;
        match self {
            Projections::Rows(gi) => step_forward(
                hdim,
                &gi.slice()[o * h3..(o + n) * h3],
                gh,
                bh,
                hp,
                out,
                gates,
                keep,
            ),
            Projections::Table(table, ids) => {
                debug_assert!(!keep, "a tape needs the layer's inputs");
                oe_kernels::step_forward_table(hdim, table.slice(), &ids[o..o + n], gh, bh, hp, out)
            }
        }
    }
}

/// One layer's forward pass over a packed batch. With `keep` (only for [`Input::X`]), what the
/// backward pass needs. `layer` numbers its scratch buffers.
/// `wt`: the layer's frozen weights (inference only; [`Frozen`]); `wb`: the transposed weights'
/// bfloat16 copies,
/// when inference multiplies in bfloat16.
#[allow(clippy::too_many_arguments)]
fn run_layer(
    w: &LayerWeights,
    wt: Option<&FrozenLayer>,
    wb: Option<&[Bf16Matrix; 2]>,
    input: Input,
    pack: &Packing,
    pad: PadSteps,
    keep: bool,
    layer: usize,
) -> LayerOut {
    let hdim = w[1].size()[1] as usize;
    let h3 = 3 * hdim;
    let (n_all, mp) = (pack.total(), pack.max_pad);
    // Inference: the batch-invariant product, over contiguous transposed weights (the frozen
    // ones, or made here).
    let made;
    let frozen: Option<&FrozenLayer> = match (keep, wt) {
        (true, _) => None,
        (false, Some(f)) => Some(f),
        (false, None) => {
            made = FrozenLayer::new(w);
            Some(&made)
        }
    };
    let b_hh_own;
    let bh = match frozen {
        Some(f) => f.b_hh.slice(),
        None => {
            b_hh_own = Buf::from(&w[3]);
            b_hh_own.slice()
        }
    };
    let inv = frozen.map(|f| (&f.wi, &f.wh, &f.b_ih));
    // libtorch's transposed views, for the products with a tape only (one call each).
    let w_hh_t = inv.is_none().then(|| w[1].tr());
    // Rows `d0..d0 + rows` of `gh` = rows `s0..s0 + rows` of `hp` · W_hhᵀ (libtorch's product with
    // a tape). Inference works on the buffers' slices: a tensor view per step cost more than the
    // step's arithmetic for one short text (each view is a libtorch call with autograd metadata).
    let hidden_product = |hp: &Buf, s0: usize, gh: &mut Buf, d0: usize, rows: usize| match &inv {
        Some((_, wh, _)) => gemm_rows(
            &hp.slice()[s0 * hdim..(s0 + rows) * hdim],
            rows,
            wh,
            wb.map(|w| &w[1]),
            None,
            &mut gh.slice_mut()[d0 * h3..(d0 + rows) * h3],
        ),
        None => {
            let w_hh_t = w_hh_t
                .as_ref()
                .expect("W_hhᵀ without the inference weights");
            let _ = hp.rows(s0, rows).mm_out(&gh.rows(d0, rows), w_hh_t);
        }
    };
    // Inference reuses this thread's buffers (slots per layer); a tape keeps its own.
    let buf = |k: usize, shape: &[i64]| {
        if keep {
            Buf::empty(shape)
        } else {
            Buf::scratch(layer * 4 + k, shape)
        }
    };
    let (gi, gip, x, x_pad) = match input {
        Input::X(x, xp) => {
            let mut gi = buf(0, &[n_all as i64, h3 as i64]);
            let gip = match &inv {
                Some((wi, _, b_ih)) => {
                    let (xb, xpb) = (Buf::from(x), Buf::from(xp));
                    let wib = wb.map(|w| &w[0]);
                    gemm_rows(
                        xb.slice(),
                        n_all,
                        wi,
                        wib,
                        Some(b_ih.slice()),
                        gi.slice_mut(),
                    );
                    let mut gip = Buf::empty(&[mp as i64, h3 as i64]);
                    gemm_rows(
                        xpb.slice(),
                        mp,
                        wi,
                        wib,
                        Some(b_ih.slice()),
                        gip.slice_mut(),
                    );
                    gip
                }
                None => {
                    let w_ih_t = w[0].tr();
                    let _ = w[2].addmm_out(&gi.t, x, &w_ih_t);
                    Buf::new(w[2].addmm(xp, &w_ih_t))
                }
            };
            (
                Projections::Rows(gi),
                gip,
                Some(x.shallow_clone()),
                Some(xp.shallow_clone()),
            )
        }
        Input::Table(table, ids, gip) => (
            Projections::Table(Buf::new(table.shallow_clone()), ids),
            Buf::new(gip),
            None,
            None,
        ),
    };

    // The shared pad trajectory P[0] = 0, P[k + 1] = GRU(x_pad[k], P[k]).
    let mut p = Buf::zeros(&[mp as i64 + 1, hdim as i64]);
    let mut ghp = Buf::empty(&[if keep { mp } else { 1 }.max(1) as i64, h3 as i64]);
    let mut gatesp = Buf::empty(&[if keep { mp } else { 0 } as i64, h3 as i64]);
    if pad == PadSteps::Run && mp > 0 {
        for k in 0..mp {
            let gk = if keep { k } else { 0 };
            hidden_product(&p, k, &mut ghp, gk, 1);
            let gi_s = &gip.slice()[k * h3..(k + 1) * h3];
            let gh_s = &mut ghp.slice_mut()[gk * h3..(gk + 1) * h3];
            let ps = p.slice_mut();
            let (before, after) = ps.split_at_mut((k + 1) * hdim);
            let hp = &before[k * hdim..];
            let out = &mut after[..hdim];
            let mut none = [];
            let gates: &mut [f32] = if keep {
                &mut gatesp.slice_mut()[k * h3..(k + 1) * h3]
            } else {
                &mut none
            };
            step_forward(hdim, gi_s, gh_s, bh, hp, out, gates, keep);
        }
    }

    // Real steps.
    let mut out = buf(1, &[n_all as i64, hdim as i64]);
    let rows_max = pack.n.iter().copied().max().unwrap_or(0);
    let rows = if keep { n_all } else { rows_max }.max(1) as i64;
    let mut hp = buf(2, &[rows, hdim as i64]);
    let mut gh = buf(3, &[rows, h3 as i64]);
    let mut gates = Buf::empty(&[if keep { n_all } else { 0 } as i64, h3 as i64]);
    for t in 0..pack.steps {
        let n = pack.n[t];
        if n == 0 {
            continue;
        }
        let o = pack.off[t];
        let base = if keep { o } else { 0 };
        // Previous states: the rows active at t − 1 from their outputs, the rows starting now from
        // the pad trajectory after t pad steps.
        let n_prev = if t == 0 { 0 } else { pack.n[t - 1] };
        if !keep && t > 0 && n_prev == n {
            // Every row continues: read the previous states where the last step wrote them.
            let po = pack.off[t - 1];
            hidden_product(&out, po, &mut gh, 0, n);
            let gh_s = &mut gh.slice_mut()[..n * h3];
            let (before, after) = out.slice_mut().split_at_mut(o * hdim);
            let hp_s = &before[po * hdim..(po + n) * hdim];
            gi.step(
                hdim,
                o,
                n,
                gh_s,
                bh,
                hp_s,
                &mut after[..n * hdim],
                &mut [],
                false,
            );
            continue;
        }
        {
            let (src, hps) = (
                out.slice(),
                &mut hp.slice_mut()[base * hdim..(base + n) * hdim],
            );
            if n_prev > 0 {
                let po = pack.off[t - 1];
                hps[..n_prev * hdim].copy_from_slice(&src[po * hdim..(po + n_prev) * hdim]);
            }
            let start: &[f32] = match pad {
                PadSteps::Run if n_prev < n => &p.slice()[t * hdim..(t + 1) * hdim],
                _ => &[],
            };
            for r in n_prev..n {
                let dst = &mut hps[r * hdim..(r + 1) * hdim];
                if start.is_empty() {
                    dst.fill(0.0);
                } else {
                    dst.copy_from_slice(start);
                }
            }
        }
        hidden_product(&hp, base, &mut gh, base, n);
        let mut none = [];
        let gates_s: &mut [f32] = if keep {
            &mut gates.slice_mut()[o * h3..(o + n) * h3]
        } else {
            &mut none
        };
        let gh_s = &mut gh.slice_mut()[base * h3..(base + n) * h3];
        let hp_s = &hp.slice()[base * hdim..(base + n) * hdim];
        let out_s = &mut out.slice_mut()[o * hdim..(o + n) * hdim];
        gi.step(hdim, o, n, gh_s, bh, hp_s, out_s, gates_s, keep);
    }
    let tape = keep.then(|| LayerTape {
        x: x.expect("a tape needs the layer's inputs"),
        hp,
        gh,
        gates,
        xp: x_pad.expect("a tape needs the layer's inputs"),
        p: Buf::new(p.t.shallow_clone()),
        ghp,
        gatesp,
    });
    LayerOut { out, p, tape }
}

/// Worker threads of the fused GRU (0: not set, one). See [`set_workers`].
static WORKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Smallest part of a batch a worker takes in [`Gru::forward_split`]: below it, handing the part
/// to another thread costs more than it saves. (Results do not depend on the split.)
pub const MIN_PART_ROWS: usize = 64;

/// Sets how many threads the fused GRU uses (inference splits a batch over them, training runs
/// its passes on them) and makes libtorch's own intra-op pool one thread, so they do not compete:
/// `n = 0` takes every core. Returns the number set.
pub fn set_workers(n: usize) -> usize {
    let n = if n == 0 {
        std::thread::available_parallelism().map_or(1, |c| c.get())
    } else {
        n
    };
    WORKERS.store(n, std::sync::atomic::Ordering::Relaxed);
    if n > 1 {
        tch::set_num_threads(1);
    }
    n
}

/// Takes libtorch's intra-op thread count (`--threads`, or libtorch's default: every core) as the
/// fused GRU's worker count, once per process, and makes libtorch's pool one thread. Called when a
/// GRU is built for the CPU. Returns the worker count.
pub fn adopt_torch_threads() -> usize {
    let cur = WORKERS.load(std::sync::atomic::Ordering::Relaxed);
    if cur == 0 {
        return set_workers(tch::get_num_threads().max(1) as usize);
    }
    if cur > 1 {
        tch::set_num_threads(1);
    }
    cur
}

/// Gives libtorch its threads back (the count [`adopt_torch_threads`] took) for models that use
/// libtorch's own kernels, built after a CPU GRU in the same process (`oe-text compare`).
pub fn release_torch_threads() {
    let cur = WORKERS.load(std::sync::atomic::Ordering::Relaxed);
    if cur > 1 {
        tch::set_num_threads(cur as i32);
    }
}

/// The worker count [`set_workers`] or [`adopt_torch_threads`] set, if either ran.
pub fn adopted_workers() -> Option<usize> {
    Some(WORKERS.load(std::sync::atomic::Ordering::Relaxed)).filter(|&n| n > 0)
}

/// The fused GRU's worker threads ([`set_workers`]; one when never set).
pub fn workers() -> usize {
    WORKERS.load(std::sync::atomic::Ordering::Relaxed).max(1)
}

impl Gru {
    /// Another handle on the same tensors.
    pub fn shallow_clone(&self) -> Self {
        Self {
            embedding: self.embedding.shallow_clone(),
            layers: shallow_layers(&self.layers),
            pad_id: self.pad_id,
            pad: self.pad,
            frozen: self.frozen.as_ref().map(Frozen::shallow_clone),
        }
    }

    /// [`Gru::forward`] without a tape, with the batch's rows split into contiguous parts of about
    /// equal work (real tokens, at least [`MIN_PART_ROWS`] rows' worth) run on up to [`workers`]
    /// threads. Each part is a batch of its own; inference's products are batch-invariant, so the
    /// split never changes a row's result.
    pub fn forward_split(&self, tokens: &[i64], lengths: &[usize], steps: usize) -> Tensor {
        let b = lengths.len();
        // Work per row: its real steps, plus one for the pad steps' shared trajectory.
        let cost: Vec<usize> = lengths.iter().map(|&l| l.min(steps) + 1).collect();
        let total: usize = cost.iter().sum();
        let per_row = total.div_ceil(b.max(1)).max(1);
        let parts = workers()
            .min(total / (MIN_PART_ROWS * per_row).max(1))
            .min(b)
            .max(1);
        if parts == 1 {
            return self.forward(tokens, lengths, steps, false).0;
        }
        // Cut where the running cost passes each part's share.
        let mut cuts = vec![0usize];
        let mut acc = 0;
        for (i, &c) in cost.iter().enumerate() {
            acc += c;
            if cuts.len() < parts && acc * parts >= total * cuts.len() && i + 1 < b {
                cuts.push(i + 1);
            }
        }
        cuts.push(b);
        let jobs: Vec<Box<dyn FnOnce() -> Tensor + Send + '_>> = cuts
            .windows(2)
            .map(|w| {
                let (s, e) = (w[0], w[1]);
                // Tensors are not `Sync`: each part gets its own handles; the ids are borrowed.
                let gru = self.shallow_clone();
                let (tok, len) = (&tokens[s * steps..e * steps], &lengths[s..e]);
                Box::new(move || gru.forward(tok, len, steps, false).0)
                    as Box<dyn FnOnce() -> Tensor + Send + '_>
            })
            .collect();
        Tensor::cat(&run_parallel(jobs), 0)
    }
}

/// The fused GRU's own thread pool ([`workers`] threads, each with one libtorch intra-op thread:
/// that setting is per thread, and setting it is not cheap), apart from rayon's global pool so that
/// tokenising input on the global pool never delays a batch.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| worker_pool(workers(), "oe-gru", || tch::set_num_threads(1)))
}

/// A pool of `threads` threads named `{name}-{i}`, each running `start` first; where no threads
/// can be had, a one-thread pool that runs its jobs on the caller's thread (rayon's fallback).
pub(crate) fn worker_pool(threads: usize, name: &'static str, start: fn()) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(move |i| format!("{name}-{i}"))
        .start_handler(move |_| start())
        .build()
        .unwrap_or_else(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
                .expect("a one-thread pool on the current thread")
        })
}

/// Starts `job` on the fused GRU's pool without gradient tracking and returns at once; the result
/// arrives on the receiver (its sender is dropped if the job panics). `None` with a single worker
/// thread (then nothing runs beside the caller: call the job directly).
pub fn spawn<T: Send + 'static>(
    job: Box<dyn FnOnce() -> T + Send + 'static>,
) -> Option<std::sync::mpsc::Receiver<T>> {
    if workers() <= 1 {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    pool().spawn(move || {
        let _ = tx.send(tch::no_grad(job));
    });
    Some(rx)
}

/// Runs `jobs` on the fused GRU's pool without gradient tracking; results in `jobs`' order. One
/// job runs on the caller's thread.
pub fn run_parallel<T: Send>(jobs: Vec<Box<dyn FnOnce() -> T + Send + '_>>) -> Vec<T> {
    use rayon::prelude::*;
    if jobs.len() <= 1 {
        return jobs.into_iter().map(|j| tch::no_grad(j)).collect();
    }
    pool().install(|| jobs.into_par_iter().map(|j| tch::no_grad(j)).collect())
}

/// The first layer's input projections of every vocabulary entry, `embedding · W_ihᵀ + b_ih`
/// `[V, 3H]`: inference then looks rows up instead of multiplying (the projection is 11% of the
/// GRU's multiply-adds). Computed with the inference product, so a looked-up row is the same bits
/// as the product per token. Valid while the weights do not change.
pub fn input_table(embedding: &Tensor, first: &LayerWeights) -> Tensor {
    let [wi, _] = transposed(first);
    table_of(embedding, &wi, &first[2])
}

/// [`input_table`] from the first layer's transposed input weights `wi_t` `[E, 3H]` and bias.
fn table_of(embedding: &Tensor, wi_t: &Tensor, b_ih: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let e = Buf::from(&embedding.detach());
        let b = Buf::from(&b_ih.detach());
        let (v, h3) = (e.t.size()[0], wi_t.size()[1]);
        let mut t = Buf::empty(&[v, h3]);
        gemm_rows(
            e.slice(),
            v as usize,
            &Buf::new(wi_t.shallow_clone()),
            None,
            Some(b.slice()),
            t.slice_mut(),
        );
        t.t
    })
}

/// `x · wᵀ + b` for inference with the batch-invariant product: `x` `[B, H]`, `w` `[C, H]`, `b`
/// `[C]` → `[B, C]` (a classification head whose logits do not depend on the batch).
pub fn linear_rows(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let xb = Buf::from(x);
        let wt = Buf::new(w.detach().tr().to_kind(Kind::Float).contiguous());
        let bb = Buf::from(&b.detach());
        let (rows, c) = (xb.t.size()[0], wt.t.size()[1]);
        let mut out = Buf::empty(&[rows, c]);
        gemm_rows(
            xb.slice(),
            rows as usize,
            &wt,
            None,
            Some(bb.slice()),
            out.slice_mut(),
        );
        out.t
    })
}

/// A GRU's parameters and how it treats pad steps: what the fused path runs. It holds handles on
/// the model's tensors (shallow clones), so it is cheap to build and can move to a worker thread.
pub struct Gru {
    /// `[V, E]`.
    pub embedding: Tensor,
    pub layers: Vec<LayerWeights>,
    /// The pad token: its embedding row feeds the pad steps, and gets no gradient.
    pub pad_id: i64,
    pub pad: PadSteps,
    /// Inference only: [`Frozen`] of these weights.
    pub frozen: Option<Frozen>,
}

/// What [`Gru::forward`] keeps for [`Gru::backward`].
pub struct Tape {
    pack: Packing,
    /// Packed token ids `[N]`.
    tokens: Tensor,
    layers: Vec<LayerTape>,
}

impl Gru {
    /// The GRU's output for a left-padded batch: the top layer's state after the last step, `[B, H]`
    /// in the batch's row order, and with `keep` the tape for [`Gru::backward`].
    ///
    /// `tokens`: the batch row-major (`B × steps` ids, each row's real tokens the last `lengths[b]`
    /// of its `steps`).
    pub fn forward(
        &self,
        tokens: &[i64],
        lengths: &[usize],
        steps: usize,
        keep: bool,
    ) -> (Tensor, Option<Tape>) {
        let (embedding, layers, pad_id, pad, table) = (
            &self.embedding,
            &self.layers,
            self.pad_id,
            self.pad,
            self.frozen.as_ref().map(|f| &f.table),
        );
        let pack = Packing::new(lengths, steps);
        let b = lengths.len();
        let idx = pack.gather_index();
        let packed: Vec<i64> = idx.iter().map(|&k| tokens[k]).collect();
        // The first layer's table rows, by packed row (inference with a table): ids are checked
        // against the table, as `index_select` checked them.
        let table_ids: Vec<usize> = match table {
            Some(tb) if !keep => {
                let v = tb.size()[0];
                packed
                    .iter()
                    .map(|&id| {
                        assert!(
                            (0..v).contains(&id),
                            "token id {id} outside the vocabulary of {v}"
                        );
                        id as usize
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let tok = Tensor::from_slice(&packed);
        let mp = pack.max_pad as i64;
        // The first layer's inputs: the tokens' embeddings `[N, E]` and the pad steps' `[max_pad,
        // E]`, or nothing when it reads the table. Later layers read the layer below's outputs.
        let (mut x, mut x_pad) = match table {
            Some(_) if !keep => (Tensor::new(), Tensor::new()),
            _ => (
                embedding.index_select(0, &tok).contiguous(),
                pad_rows(embedding, pad_id, mp),
            ),
        };
        let mut tapes = Vec::new();
        let mut top = None;
        for (l, w) in layers.iter().enumerate() {
            let input = match table {
                Some(tb) if l == 0 && !keep => {
                    Input::Table(tb, &table_ids, pad_rows(tb, pad_id, mp))
                }
                _ => Input::X(&x, &x_pad),
            };
            let wt = self.frozen.as_ref().map(|f| &f.layers[l]);
            let wb = match (&self.frozen, keep) {
                (Some(f), false) => f.bf16.as_ref().map(|b| &b[l]),
                _ => None,
            };
            let lo = run_layer(w, wt, wb, input, &pack, pad, keep, l);
            x = lo.out.t.shallow_clone();
            x_pad = lo.p.rows(1, pack.max_pad);
            if let Some(t) = lo.tape {
                tapes.push(t);
            }
            top = Some((lo.out, lo.p));
        }
        let (out, p) = top.expect("at least one layer");
        // Rows with real tokens end at the last step's packed rows; empty rows at P[T] (all pads).
        let n_last = pack.n[steps - 1];
        if !keep {
            // Inference: copy each row's last state into place (the same values as the views,
            // concatenation and gather below, without their libtorch calls).
            let hd = out.cols;
            let (o, ps) = (out.slice(), p.slice());
            let mut last = vec![0f32; b * hd];
            for (i, &row) in pack.order.iter().enumerate() {
                let src = if i < n_last {
                    let r = pack.off[steps - 1] + i;
                    &o[r * hd..(r + 1) * hd]
                } else {
                    match pad {
                        PadSteps::Run => &ps[steps * hd..(steps + 1) * hd],
                        PadSteps::Skip => continue, // zeros
                    }
                };
                last[row * hd..(row + 1) * hd].copy_from_slice(src);
            }
            return (Tensor::from_slice(&last).view([b as i64, hd as i64]), None);
        }
        let hdim = out.t.size()[1];
        let mut parts = vec![out.rows(pack.off[steps - 1], n_last)];
        if n_last < b {
            let end = match pad {
                PadSteps::Run => p.rows(steps, 1),
                PadSteps::Skip => Tensor::zeros([1, hdim], (Kind::Float, Device::Cpu)),
            };
            parts.push(end.expand([(b - n_last) as i64, hdim], false));
        }
        let sorted = Tensor::cat(&parts, 0);
        let mut inv = vec![0i64; b];
        for (i, &row) in pack.order.iter().enumerate() {
            inv[row] = i as i64;
        }
        let last = sorted.index_select(0, &Tensor::from_slice(&inv));
        let tape = keep.then(|| Tape {
            pack,
            tokens: tok,
            layers: tapes,
        });
        (last, tape)
    }
}

/// Row `pad_id` of `t` `[V, D]` repeated `mp` times, contiguous `[mp, D]` (the pad steps' inputs).
/// With no pad steps (a lone text, or texts of one length), one libtorch call instead of four.
fn pad_rows(t: &Tensor, pad_id: i64, mp: i64) -> Tensor {
    if mp == 0 {
        return Tensor::zeros([0, t.size()[1]], (t.kind(), t.device()));
    }
    t.get(pad_id)
        .unsqueeze(0)
        .expand([mp, t.size()[1]], false)
        .contiguous()
}

/// Gradients of the GRU's parameters: the embedding `[V, E]` and per layer
/// `[dW_ih, dW_hh, db_ih, db_hh]`, the shapes of [`LayerWeights`].
pub struct Grads {
    pub embedding: Tensor,
    pub layers: Vec<[Tensor; 4]>,
}

impl Gru {
    /// The gradients of `Σ dlast ⊙ last` (the backward pass of [`Gru::forward`] with `keep`):
    /// `dlast` `[B, H]` in the batch's row order.
    pub fn backward(&self, tape: &Tape, dlast: &Tensor) -> Grads {
        let (embedding, layers, pad_id, pad) =
            (&self.embedding, &self.layers, self.pad_id, self.pad);
        let pack = &tape.pack;
        let steps = pack.steps;
        let hdim = layers[0][1].size()[1];
        let order: Vec<i64> = pack.order.iter().map(|&i| i as i64).collect();
        let dsorted = Buf::from(&dlast.index_select(0, &Tensor::from_slice(&order)));
        let n_all = pack.total() as i64;
        let mp = pack.max_pad as i64;
        let n_last = pack.n[steps - 1];
        // Gradient of the top layer's outputs and of its pad trajectory.
        let mut dout = Buf::zeros(&[n_all, hdim]);
        dout.rows(pack.off[steps - 1], n_last)
            .copy_(&dsorted.rows(0, n_last));
        let mut dp = Buf::zeros(&[mp + 1, hdim]);
        if pad == PadSteps::Run && n_last < pack.order.len() {
            let rest = dsorted
                .rows(n_last, pack.order.len() - n_last)
                .sum_dim_intlist([0i64].as_slice(), true, Kind::Float);
            dp.rows(steps, 1).copy_(&rest);
        }
        let mut grads = Vec::with_capacity(layers.len());
        let mut dx = Tensor::new();
        for (l, (w, t)) in layers.iter().zip(&tape.layers).enumerate().rev() {
            let (dxl, dxp, g) = layer_backward(t, w, pack, pad, &mut dout, &mut dp);
            grads.push(g);
            if l > 0 {
                dout = Buf::new(dxl);
                dp = Buf::zeros(&[mp + 1, hdim]);
                if mp > 0 {
                    dp.rows(1, pack.max_pad).copy_(&dxp);
                }
            } else {
                dx = dxl;
            }
        }
        grads.reverse();
        // Embedding: the real tokens' rows; the pad row gets none (PyTorch's `padding_idx`).
        let mut demb = embedding.zeros_like();
        if n_all > 0 {
            let _ = demb.index_add_(0, &tape.tokens, &dx);
        }
        if pad_id >= 0 && pad_id < demb.size()[0] {
            let _ = demb.get(pad_id).fill_(0.0);
        }
        Grads {
            embedding: demb,
            layers: grads,
        }
    }
}

/// One layer's backward pass: `dout` `[N, H]` and `dp` `[max_pad + 1, H]` hold the gradients of its
/// outputs (both are used as scratch). Returns the gradients of its inputs, `[N, in]` and
/// `[max_pad, in]`, and of its weights.
fn layer_backward(
    t: &LayerTape,
    w: &LayerWeights,
    pack: &Packing,
    pad: PadSteps,
    dout: &mut Buf,
    dp: &mut Buf,
) -> (Tensor, Tensor, [Tensor; 4]) {
    let hdim = w[1].size()[1] as usize;
    let h3 = 3 * hdim;
    let n_all = pack.total();
    let rows_max = pack.n.iter().copied().max().unwrap_or(0).max(1);
    let mut dh = Buf::zeros(&[rows_max as i64, hdim as i64]);
    let mut dhd = Buf::zeros(&[rows_max as i64, hdim as i64]);
    let mut dgi = Buf::zeros(&[n_all as i64, h3 as i64]);
    let mut dgh = Buf::zeros(&[n_all as i64, h3 as i64]);
    for s in (0..pack.steps).rev() {
        let n = pack.n[s];
        if n == 0 {
            continue;
        }
        let o = pack.off[s];
        {
            let d = &mut dh.slice_mut()[..n * hdim];
            for (a, b) in d.iter_mut().zip(&dout.slice()[o * hdim..(o + n) * hdim]) {
                *a += *b;
            }
        }
        step_backward(
            hdim,
            &dh.slice()[..n * hdim],
            &t.gates.slice()[o * h3..(o + n) * h3],
            &t.gh.slice()[o * h3..(o + n) * h3],
            &t.hp.slice()[o * hdim..(o + n) * hdim],
            &mut dgi.slice_mut()[o * h3..(o + n) * h3],
            &mut dgh.slice_mut()[o * h3..(o + n) * h3],
            &mut dhd.slice_mut()[..n * hdim],
        );
        let _ = dhd
            .rows(0, n)
            .addmm_out(&dh.rows(0, n), &dgh.rows(o, n), &w[1]);
        // Rows that start at step s began from P[s]: their gradient goes to the trajectory.
        let n_prev = if s == 0 { 0 } else { pack.n[s - 1] };
        if pad == PadSteps::Run && n_prev < n {
            let add =
                dh.rows(n_prev, n - n_prev)
                    .sum_dim_intlist([0i64].as_slice(), true, Kind::Float);
            let _ = dp.rows(s, 1).g_add_(&add);
        }
    }
    let sum0 = |b: &Buf| b.t.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    let mut d_w_hh = dgh.t.tr().mm(&t.hp.t);
    let mut d_b_hh = sum0(&dgh);
    let mut d_w_ih = dgi.t.tr().mm(&t.x);
    let mut d_b_ih = sum0(&dgi);
    let dx = dgi.t.mm(&w[0]);
    let mp = pack.max_pad;
    let in_dim = w[0].size()[1];
    let mut dxp = Tensor::zeros([mp as i64, in_dim], (Kind::Float, Device::Cpu));
    if pad == PadSteps::Run && mp > 0 {
        let mut dgip = Buf::zeros(&[mp as i64, h3 as i64]);
        let mut dghp = Buf::zeros(&[mp as i64, h3 as i64]);
        let mut d1 = Buf::zeros(&[1, hdim as i64]);
        for k in (0..mp).rev() {
            {
                let dps = dp.slice();
                step_backward(
                    hdim,
                    &dps[(k + 1) * hdim..(k + 2) * hdim],
                    &t.gatesp.slice()[k * h3..(k + 1) * h3],
                    &t.ghp.slice()[k * h3..(k + 1) * h3],
                    &t.p.slice()[k * hdim..(k + 1) * hdim],
                    &mut dgip.slice_mut()[k * h3..(k + 1) * h3],
                    &mut dghp.slice_mut()[k * h3..(k + 1) * h3],
                    d1.slice_mut(),
                );
            }
            let prev = d1.t.addmm(&dghp.rows(k, 1), &w[1]);
            let _ = dp.rows(k, 1).g_add_(&prev);
        }
        d_w_hh += dghp.t.tr().mm(&t.p.rows(0, mp));
        d_b_hh += sum0(&dghp);
        d_w_ih += dgip.t.tr().mm(&t.xp);
        d_b_ih += sum0(&dgip);
        dxp = dgip.t.mm(&w[0]);
    }
    (dx, dxp, [d_w_ih, d_w_hh, d_b_ih, d_b_hh])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random weights (seeded libtorch RNG), an embedding with a zero pad row 1, and a batch with
    /// lengths `lens` left-padded to `steps`, as row-major ids.
    fn setup(
        seed: i64,
        lens: &[usize],
        steps: usize,
    ) -> (Tensor, Vec<LayerWeights>, Vec<i64>, Tensor) {
        tch::manual_seed(seed);
        let (v, e, h) = (23, 5, 8);
        let emb = Tensor::randn([v, e], (Kind::Float, Device::Cpu));
        let _ = emb.get(1).fill_(0.0);
        let layers: Vec<LayerWeights> = (0..2)
            .map(|l| {
                let inp = if l == 0 { e } else { h };
                let u = |s: &[i64]| Tensor::rand(s, (Kind::Float, Device::Cpu)) * 0.8 - 0.4;
                [u(&[3 * h, inp]), u(&[3 * h, h]), u(&[3 * h]), u(&[3 * h])]
            })
            .collect();
        let mut ids = vec![1i64; lens.len() * steps];
        let mut k = 0;
        for (b, &l) in lens.iter().enumerate() {
            for t in steps - l..steps {
                ids[b * steps + t] = 2 + (k * 7 % 21) as i64;
                k += 1;
            }
        }
        let tokens = Tensor::from_slice(&ids).view([lens.len() as i64, steps as i64]);
        (emb, layers, ids, tokens)
    }

    /// libtorch's GRU (`at::gru`, every position, from h0 = 0): the last step's top state.
    fn libtorch_last(emb: &Tensor, layers: &[LayerWeights], tokens: &Tensor) -> Tensor {
        let x = Tensor::embedding(emb, tokens, 1, false, false);
        let b = x.size()[0];
        let h0 = Tensor::zeros([2, b, layers[0][1].size()[1]], (Kind::Float, Device::Cpu));
        let params: Vec<&Tensor> = layers.iter().flat_map(|l| l.iter()).collect();
        let (out, _) = x.gru(&h0, &params, true, 2, 0.0, true, false, true);
        out.select(1, -1)
    }

    /// The fused GRU over these weights (pad id 1).
    fn gru(emb: &Tensor, layers: &[LayerWeights], pad: PadSteps, frozen: Option<Frozen>) -> Gru {
        Gru {
            embedding: emb.shallow_clone(),
            layers: shallow_layers(layers),
            pad_id: 1,
            pad,
            frozen,
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(exp_f32(-1e9) > 0.0 && exp_f32(-1e9) < 1e-37);
        assert!(exp_f32(1e9).is_finite());
        assert_eq!(tanh(40.0), 1.0);
        assert_eq!(tanh(-40.0), -1.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn packing_orders_rows_longest_first() {
        let p = Packing::new(&[2, 5, 0, 5, 3], 5);
        assert_eq!(p.order, vec![1, 3, 4, 0, 2]);
        assert_eq!(p.n, vec![2, 2, 3, 4, 4]);
        assert_eq!(p.off, vec![0, 2, 4, 7, 11, 15]);
        assert_eq!(p.max_pad, 5);
        assert_eq!(p.gather_index()[..4], [5, 15, 6, 16]);
    }

    /// The fused, packed GRU against libtorch's `at::gru` and its autograd, on a batch with a long
    /// tail of lengths, an empty row and equal lengths: states within 1e-5, every gradient within
    /// 1e-5 (the loss is `Σ R ⊙ last` for a random R, so `dlast = R`).
    #[test]
    fn forward_and_gradients_match_libtorch() {
        for (seed, lens, steps) in [
            (1, vec![7usize, 3, 7, 1, 0, 5, 2], 7usize),
            (2, vec![4, 4, 4], 4),
            (3, vec![9, 1], 12),
        ] {
            let (emb, layers, ids, tokens) = setup(seed, &lens, steps);
            let net = gru(&emb, &layers, PadSteps::Run, None);
            let (ours, tape) = net.forward(&ids, &lens, steps, true);
            // libtorch with autograd over every parameter.
            let emb_g = emb.copy().set_requires_grad(true);
            let layers_g: Vec<LayerWeights> = layers
                .iter()
                .map(|l| l.each_ref().map(|w| w.copy().set_requires_grad(true)))
                .collect();
            let want = libtorch_last(&emb_g, &layers_g, &tokens);
            let d = max_diff(&ours, &want.detach());
            assert!(d < 1e-5, "seed {seed}: states differ by {d}");
            let r = Tensor::randn(want.size(), (Kind::Float, Device::Cpu));
            (&want * &r).sum(Kind::Float).backward();
            let g = net.backward(tape.as_ref().expect("tape"), &r);
            // PyTorch's embedding gradient with padding_idx = 1.
            let ge = emb_g.grad();
            let _ = ge.get(1).fill_(0.0);
            let d = max_diff(&g.embedding, &ge);
            assert!(d < 1e-5, "seed {seed}: embedding gradient differs by {d}");
            for (l, (mine, theirs)) in g.layers.iter().zip(&layers_g).enumerate() {
                for (i, (a, b)) in mine.iter().zip(theirs.iter()).enumerate() {
                    let want = b.grad();
                    assert!(
                        want.abs().max().double_value(&[]) > 1e-3,
                        "vacuous gradient"
                    );
                    let d = max_diff(a, &want);
                    assert!(
                        d < 1e-5,
                        "seed {seed}: layer {l} parameter {i} differs by {d}"
                    );
                }
            }
        }
    }

    /// Masked pad steps: each row equals the GRU run on its real tokens alone.
    #[test]
    fn skipped_pad_steps_equal_each_row_alone() {
        let lens = vec![6usize, 2, 4, 0];
        let (emb, layers, ids, _) = setup(4, &lens, 6);
        let (ours, _) = gru(&emb, &layers, PadSteps::Skip, None).forward(&ids, &lens, 6, false);
        for (b, &l) in lens.iter().enumerate() {
            let want = if l == 0 {
                Tensor::zeros([8], (Kind::Float, Device::Cpu))
            } else {
                let row: Vec<i64> = ids[b * 6 + 6 - l..(b + 1) * 6].to_vec();
                let t = Tensor::from_slice(&row).view([1, l as i64]);
                libtorch_last(&emb, &layers, &t).get(0)
            };
            let d = max_diff(&ours.get(b as i64), &want);
            assert!(d < 1e-5, "row {b}: {d}");
        }
    }

    /// A row's result is the same bits whatever shares its batch: alone, among rows of its length
    /// or of other lengths (with skipped pad steps, each row starts from zero at its first token),
    /// with or without the frozen input table (what `oe-text score` and `serve` rely on).
    #[test]
    fn inference_rows_are_batch_invariant() {
        let lens: Vec<usize> = (0..40).map(|i| [5usize, 1, 9, 3, 7, 0][i % 6]).collect();
        let steps = 9;
        let (emb, layers, ids, _) = setup(5, &lens, steps);
        for frozen in [false, true] {
            let f = || frozen.then(|| Frozen::new(&emb, &layers));
            let (all, _) =
                gru(&emb, &layers, PadSteps::Skip, f()).forward(&ids, &lens, steps, false);
            assert!(all.abs().max().double_value(&[]) > 1e-3);
            for b in [0usize, 1, 2, 5, 17, 39] {
                let l = lens[b];
                let row = &ids[b * steps + steps - l..(b + 1) * steps];
                let (one, _) =
                    gru(&emb, &layers, PadSteps::Skip, f()).forward(row, &[l], l.max(1), false);
                assert!(
                    one.get(0).equal(&all.get(b as i64)),
                    "row {b} (length {l}), frozen {frozen}"
                );
            }
            // Equal lengths under the reference's pad steps: any subset of rows.
            let same: Vec<usize> = vec![4; 23];
            let (emb2, layers2, ids2, _) = setup(8, &same, 6);
            let (whole, _) =
                gru(&emb2, &layers2, PadSteps::Run, None).forward(&ids2, &same, 6, false);
            let (part, _) = gru(&emb2, &layers2, PadSteps::Run, None).forward(
                &ids2[6 * 7..6 * 10],
                &same[7..10],
                6,
                false,
            );
            assert!(part.equal(&whole.narrow(0, 7, 3)));
        }
    }

    /// bfloat16 products (opt-in): each row the same bits alone as in its batch, under both pad
    /// modes, and within bfloat16's rounding of float32's states (inputs rounded to 8 significant
    /// bits: a few 1e-3 on these states of size about 0.5).
    #[test]
    fn bf16_inference_is_batch_invariant_and_near_float32() {
        if !oe_kernels::bf16::supported() {
            eprintln!("skipped: this CPU lacks AVX512_BF16");
            return;
        }
        let lens: Vec<usize> = (0..37).map(|i| [5usize, 1, 9, 3, 7, 0][i % 6]).collect();
        let steps = 9;
        let (emb, layers, ids, _) = setup(11, &lens, steps);
        for pad in [PadSteps::Skip, PadSteps::Run] {
            let f32s = || Some(Frozen::new(&emb, &layers));
            let bf = || Some(Frozen::new(&emb, &layers).with_bf16());
            let (want, _) = gru(&emb, &layers, pad, f32s()).forward(&ids, &lens, steps, false);
            let (all, _) = gru(&emb, &layers, pad, bf()).forward(&ids, &lens, steps, false);
            let diff = max_diff(&all, &want);
            assert!(
                diff > 0.0 && diff < 2e-2,
                "{pad:?}: bf16 moved the states by {diff}"
            );
            for b in [0usize, 1, 2, 5, 17, 36] {
                let l = lens[b];
                let (row, n) = match pad {
                    PadSteps::Skip => (&ids[b * steps + steps - l..(b + 1) * steps], l.max(1)),
                    PadSteps::Run => (&ids[b * steps..(b + 1) * steps], steps),
                };
                let (one, _) = gru(&emb, &layers, pad, bf()).forward(row, &[l], n, false);
                assert!(one.get(0).equal(&all.get(b as i64)), "{pad:?} row {b}");
            }
        }
    }

    /// Inference through the first layer's projection table equals the product per token bit for
    /// bit, padded rows included.
    #[test]
    fn the_input_table_gives_the_same_states() {
        let lens = vec![6usize, 2, 6, 0, 4];
        let (emb, layers, ids, _) = setup(6, &lens, 6);
        let (plain, _) = gru(&emb, &layers, PadSteps::Run, None).forward(&ids, &lens, 6, false);
        let (tab, _) = gru(
            &emb,
            &layers,
            PadSteps::Run,
            Some(Frozen::new(&emb, &layers)),
        )
        .forward(&ids, &lens, 6, false);
        assert!(plain.equal(&tab) && plain.abs().max().double_value(&[]) > 1e-3);
        // Within float rounding of libtorch's product.
        let t = input_table(&emb, &layers[0]);
        let want = layers[0][2].addmm(&emb, &layers[0][0].tr());
        assert!(max_diff(&t, &want) < 1e-6);
    }

    /// The head's batch-invariant product equals libtorch's linear to rounding, row by row alone.
    #[test]
    fn linear_rows_is_the_linear_layer_and_batch_invariant() {
        tch::manual_seed(9);
        let x = Tensor::randn([7, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([3], (Kind::Float, Device::Cpu));
        let all = linear_rows(&x, &w, &b);
        assert!(max_diff(&all, &x.linear(&w, Some(&b))) < 1e-5);
        for r in 0..7 {
            assert!(linear_rows(&x.narrow(0, r, 1), &w, &b).equal(&all.narrow(0, r, 1)));
        }
    }
}
