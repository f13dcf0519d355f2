//! Batch-invariant CPU inference for the BERT encoder ([`super::bert`]): texts of every length in
//! one packed batch, no padding, each text's outputs bit for bit what it gets scored alone.
//!
//! libtorch's matrix products (MKL) give a row other bits below about 16 rows, so scoring a lone
//! MiniLM text through libtorch needed filler rows, and texts could share a batch only when they
//! had the same length. Here the encoder runs on host buffers with `oe_kernels`:
//! - every linear layer is [`oe_kernels::gemm`]'s product over all tokens of the batch (one fused
//!   multiply-add chain per output, the same whatever the number of rows; the weights packed in
//!   column panels once, [`oe_kernels::packed`]), the query, key and value projections as one
//!   product `[N, H] · [H, 3H]`;
//! - self-attention runs per text over that text's tokens only ([`oe_kernels::encoder::attention`]),
//!   so no key is padding and nothing crosses texts (libtorch masks padded keys with −1e9, whose
//!   exponential underflows to exactly 0: the same function);
//! - residual LayerNorm and GELU are row-wise kernels.
//!
//! The work is split over a pool of worker threads (libtorch's intra-op thread count, `--threads`):
//! a batch's rows in contiguous blocks, or, for a batch too short to give every worker a row group
//! of its own (one short text, as a service scores one request at a time), every step of every
//! layer between the workers as a team (products by columns, attention by heads, LayerNorms by
//! rows; [`Frozen::layers_by_team`]). An element's operations do not depend on the split, so
//! neither do its bits. The results agree with libtorch's forward within float rounding: the tests pin the
//! pooled states of every layer, the penultimate features and the logits within 1e-5 of libtorch on
//! a random encoder (three activations), and the pretrained MiniLM's sentence embeddings within
//! 1e-4 of an independent float64 implementation's (`experiments/minilm_reference.py`) and 1e-5 of
//! libtorch's.
//!
//! Shapes: `N` tokens in the batch (the sum of the texts' lengths), `H` hidden size, `I` the
//! feed-forward width, `C` classes; every matrix is row-major `f32`.

use super::bert::{BertClassifier, HiddenAct};
use crate::detect::{FeatureSource, Pool};
use oe_kernels::packed::{gemm_packed, gemm_packed_part, PackedB};
use tch::{Kind, Tensor};

/// One encoder layer's weights, transposed for `x · W` products.
#[derive(Debug)]
struct Layer {
    /// `[H, 3H]`: query, key and value side by side; bias `[3H]`.
    qkv: PackedB,
    qkv_b: Vec<f32>,
    /// `[H, H]`, bias `[H]`.
    attn_out: PackedB,
    attn_out_b: Vec<f32>,
    attn_ln: (Vec<f32>, Vec<f32>),
    /// `[H, I]`, bias `[I]`.
    inter: PackedB,
    inter_b: Vec<f32>,
    /// `[I, H]`, bias `[H]`.
    out: PackedB,
    out_b: Vec<f32>,
    out_ln: (Vec<f32>, Vec<f32>),
}

/// A [`BertClassifier`]'s weights copied to host buffers for inference (valid while the weights do
/// not change; the classifier drops it when it trains).
#[derive(Debug)]
pub struct Frozen {
    h: usize,
    heads: usize,
    inter: usize,
    classes: usize,
    eps: f32,
    act: HiddenAct,
    max_pos: usize,
    vocab: usize,
    /// `[V, H]`, `[P, H]` and token type 0's row `[H]`.
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    /// The head transposed, `[H, C]`, and its bias `[C]`.
    head: Vec<f32>,
    head_b: Vec<f32>,
    /// BERT's pad id: what an empty text is run as (see [`Frozen::run`]).
    pad_id: i64,
}

/// A float32 tensor's values in row-major order.
fn host(t: &Tensor) -> Vec<f32> {
    let t = t.detach().to_kind(Kind::Float).contiguous().flatten(0, -1);
    Vec::<f32>::try_from(&t).expect("a float32 CPU tensor")
}

/// `w` `[out, in]` (a `torch.nn.Linear` weight) as `[in, out]`, row-major.
fn transposed(w: &Tensor) -> Vec<f32> {
    host(&w.detach().tr())
}

/// `w` `[out, in]` transposed, with its shape `(in, out)`: a matrix for [`PackedB::new_all`].
fn to_pack(w: &Tensor) -> (usize, usize, Vec<f32>) {
    let (o, i) = w.size2().expect("a linear layer's weight is [out, in]");
    (i as usize, o as usize, transposed(w))
}

/// What [`Frozen::run`] returns for a batch of `n` texts.
#[derive(Debug)]
pub struct Outputs {
    /// Mean-pooled last hidden states `[n, H]` (the penultimate features).
    pub pooled: Vec<f32>,
    /// Logits `[n, C]`.
    pub logits: Vec<f32>,
    /// For each requested `(layer, pool)`: `[n, H]`.
    pub taps: Vec<Vec<f32>>,
}

impl Frozen {
    /// Copies `m`'s weights (they must be on the CPU).
    pub fn new(m: &BertClassifier) -> Self {
        let cfg = m.bert.config().clone();
        let named: std::collections::HashMap<&str, &Tensor> = m
            .bert
            .named_variables()
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        let get = |name: &str| -> &Tensor {
            named
                .get(name)
                .unwrap_or_else(|| panic!("BERT variable {name} (built by BertModel::new)"))
        };
        let ln = |pre: &str| {
            (
                host(get(&format!("{pre}.weight"))),
                host(get(&format!("{pre}.bias"))),
            )
        };
        // Every layer's four weight matrices, packed together into one allocation (huge pages:
        // see `PackedB::new_all`), in layer order.
        let mut mats = Vec::new();
        let mut rest = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let w = |rel: &str| get(&format!("{p}.{rel}.weight"));
            let b = |rel: &str| host(get(&format!("{p}.{rel}.bias")));
            let qkv_w = Tensor::cat(
                &[
                    w("attention.self.query"),
                    w("attention.self.key"),
                    w("attention.self.value"),
                ],
                0,
            );
            let mut qkv_b = b("attention.self.query");
            qkv_b.extend(b("attention.self.key"));
            qkv_b.extend(b("attention.self.value"));
            mats.push(to_pack(&qkv_w));
            mats.push(to_pack(w("attention.output.dense")));
            mats.push(to_pack(w("intermediate.dense")));
            mats.push(to_pack(w("output.dense")));
            rest.push((
                qkv_b,
                b("attention.output.dense"),
                ln(&format!("{p}.attention.output.LayerNorm")),
                b("intermediate.dense"),
                b("output.dense"),
                ln(&format!("{p}.output.LayerNorm")),
            ));
        }
        let mut packed = PackedB::new_all(&mats).into_iter();
        let mut next = || packed.next().expect("four packed matrices a layer");
        let layers = rest
            .into_iter()
            .map(
                |(qkv_b, attn_out_b, attn_ln, inter_b, out_b, out_ln)| Layer {
                    qkv: next(),
                    qkv_b,
                    attn_out: next(),
                    attn_out_b,
                    attn_ln,
                    inter: next(),
                    inter_b,
                    out: next(),
                    out_b,
                    out_ln,
                },
            )
            .collect();
        let (hw, hb) = m.head();
        let h = cfg.hidden_size as usize;
        Self {
            h,
            heads: cfg.num_attention_heads as usize,
            inter: cfg.intermediate_size as usize,
            classes: hw.size()[0] as usize,
            eps: cfg.layer_norm_eps as f32,
            act: cfg.hidden_act,
            max_pos: cfg.max_position_embeddings as usize,
            vocab: cfg.vocab_size as usize,
            word: host(get("embeddings.word_embeddings.weight")),
            position: host(get("embeddings.position_embeddings.weight")),
            token_type0: host(&get("embeddings.token_type_embeddings.weight").get(0)),
            emb_ln: ln("embeddings.LayerNorm"),
            layers,
            head: transposed(&hw),
            head_b: host(&hb),
            pad_id: cfg.pad_token_id,
        }
    }

    /// Runs the encoder and head over `seqs` (token ids, `[CLS]`/`[SEP]` included, any lengths up
    /// to the position table), each text on its own tokens. An empty text is run as one pad token
    /// whose pooled vector is zeros, which is what libtorch computes for a row with no real token.
    /// `taps`: the `(layer, pool)` states to return besides the last layer's mean (layer 0 = the
    /// embeddings' output, `i` = after encoder layer `i`).
    ///
    /// # Panics
    /// When a text is longer than the position table or holds an id outside the vocabulary (the
    /// tokenizer never produces either).
    pub fn run(&self, seqs: &[&[i64]], taps: &[(usize, Pool)]) -> Outputs {
        let pad = [self.pad_id];
        let texts: Vec<&[i64]> = seqs
            .iter()
            .map(|s| if s.is_empty() { &pad[..] } else { *s })
            .collect();
        let mut starts = Vec::with_capacity(texts.len() + 1);
        starts.push(0usize);
        for t in &texts {
            assert!(
                t.len() <= self.max_pos,
                "a BERT input of {} tokens exceeds max_position_embeddings {}",
                t.len(),
                self.max_pos
            );
            starts.push(starts.last().copied().unwrap_or(0) + t.len());
        }
        let n_tok = *starts.last().unwrap_or(&0);
        // A batch too short for every worker to get a row group of its own (one short text, as a
        // service scores one request at a time) is split by columns instead, inside the pool.
        let workers = pool().current_num_threads();
        // The calling thread is one of the team, so it must not be one of the pool's own.
        let on_pool = pool().current_thread_index().is_some();
        let team = (workers > 1 && n_tok < COLUMN_SPLIT_ROWS * workers && !on_pool).then(pool);
        self.forward(&texts, &starts, seqs, taps, team)
    }

    /// [`Frozen::run`]'s forward over `texts` (none empty; text `t` has rows
    /// `starts[t]..starts[t + 1]`). With a `team`, its threads run the layers together (see
    /// [`Frozen::layers_by_team`]); else the rows are split in blocks over the worker pool.
    fn forward(
        &self,
        texts: &[&[i64]],
        starts: &[usize],
        seqs: &[&[i64]],
        taps: &[(usize, Pool)],
        team: Option<&rayon::ThreadPool>,
    ) -> Outputs {
        let h = self.h;
        let n_tok = *starts.last().unwrap_or(&0);
        let n = texts.len();
        let mut tap_out: Vec<Vec<f32>> = taps.iter().map(|_| vec![0.0; n * h]).collect();

        // Embeddings: word + position + token type 0, then LayerNorm.
        let mut x = vec![0.0f32; n_tok * h];
        for (t, ids) in texts.iter().enumerate() {
            for (i, &id) in ids.iter().enumerate() {
                let id = usize::try_from(id).ok().filter(|&v| v < self.vocab);
                let id = id.expect("token id within the BERT vocabulary");
                let row = &mut x[(starts[t] + i) * h..(starts[t] + i + 1) * h];
                let w = &self.word[id * h..(id + 1) * h];
                let p = &self.position[i * h..(i + 1) * h];
                for (((o, &a), &b), &c) in row.iter_mut().zip(w).zip(p).zip(&self.token_type0) {
                    *o = a + b + c;
                }
            }
        }
        let emb_ln = |_: usize, rows: &mut [f32]| {
            let (g, b) = &self.emb_ln;
            oe_kernels::encoder::add_layer_norm(rows, None, g, b, h, self.eps)
        };
        if team.is_some() {
            // A team's batch is short: its LayerNorm costs less than waking a worker for it.
            emb_ln(0, &mut x);
        } else {
            par_blocks(&mut x, h, &emb_ln);
        }
        self.tap(0, &x, starts, seqs, taps, &mut tap_out);

        let mut qkv = vec![0.0f32; n_tok * 3 * h];
        let mut ctx = vec![0.0f32; n_tok * h];
        let scale = 1.0 / ((h / self.heads) as f32).sqrt();
        if let Some(team) = team {
            self.layers_by_team(team, &mut x, starts, seqs, taps, &mut tap_out);
        }
        let layers = if team.is_some() {
            &[][..]
        } else {
            &self.layers[..]
        };
        for (li, l) in layers.iter().enumerate() {
            // Query, key and value of every token: one product.
            par_blocks(&mut qkv, 3 * h, &|r0, out| {
                let rows = out.len() / (3 * h);
                gemm_packed(
                    rows,
                    &x[r0 * h..(r0 + rows) * h],
                    &l.qkv,
                    Some(&l.qkv_b),
                    out,
                );
            });
            // Attention within each text.
            par_texts(&mut ctx, h, starts, &|t, out| {
                let len = starts[t + 1] - starts[t];
                let mut scratch =
                    vec![0.0f32; oe_kernels::encoder::attention_scratch(len, h, self.heads)];
                oe_kernels::encoder::attention(
                    &qkv[starts[t] * 3 * h..starts[t + 1] * 3 * h],
                    len,
                    h,
                    self.heads,
                    scale,
                    out,
                    &mut scratch,
                );
            });
            // Output projection, residual LayerNorm, feed-forward, residual LayerNorm, block by
            // block of rows (the feed-forward's wide buffer stays one block's size).
            par_blocks(&mut x, h, &|r0, xb| self.block_tail(l, &ctx, r0, xb));
            self.tap(li + 1, &x, starts, seqs, taps, &mut tap_out);
        }

        let pooled = self.pool(&x, starts, seqs, Pool::Mean);
        let mut logits = vec![0.0f32; n * self.classes];
        oe_kernels::gemm(
            n,
            h,
            self.classes,
            &pooled,
            &self.head,
            Some(&self.head_b),
            &mut logits,
        );
        Outputs {
            pooled,
            logits,
            taps: tap_out,
        }
    }

    /// For rows `r0..` of the batch (`xb`, the layer's input, overwritten with its output): the
    /// attention output projection of `ctx`, `a = LN(ctx·Wo + b + x)`, then
    /// `x = LN(act(a·Wi + bi)·Wf + bf + a)`.
    fn block_tail(&self, l: &Layer, ctx: &[f32], r0: usize, xb: &mut [f32]) {
        let (h, inter) = (self.h, self.inter);
        let rows = xb.len() / h;
        let mut a = vec![0.0f32; rows * h];
        let ctx = &ctx[r0 * h..(r0 + rows) * h];
        gemm_packed(rows, ctx, &l.attn_out, Some(&l.attn_out_b), &mut a);
        oe_kernels::encoder::add_layer_norm(
            &mut a,
            Some(xb),
            &l.attn_ln.0,
            &l.attn_ln.1,
            h,
            self.eps,
        );
        let mut f = vec![0.0f32; rows * inter];
        gemm_packed(rows, &a, &l.inter, Some(&l.inter_b), &mut f);
        self.activation(&mut f);
        gemm_packed(rows, &f, &l.out, Some(&l.out_b), xb);
        oe_kernels::encoder::add_layer_norm(xb, Some(&a), &l.out_ln.0, &l.out_ln.1, h, self.eps);
    }

    /// The feed-forward's activation, element-wise in place.
    fn activation(&self, f: &mut [f32]) {
        match self.act {
            HiddenAct::Gelu => oe_kernels::encoder::gelu_erf(f),
            HiddenAct::GeluNew => oe_kernels::encoder::gelu_tanh(f),
            HiddenAct::Relu => oe_kernels::encoder::relu(f),
        }
    }

    /// The encoder layers over `x` `[N, H]` (the embeddings' output, overwritten with the last
    /// layer's), run by as many threads as `team` has at once (the caller and the rest from
    /// `team`, [`run_team`]: one thread fewer to wake per forward), each its share of every step,
    /// with a spinning barrier between steps ([`oe_kernels::team`]): the products split by columns
    /// ([`gemm_packed_part`]: each thread reads its share of the weights, for all rows), the
    /// attention by heads, the LayerNorms by rows. For a short batch (one text, as a service
    /// scores one request at a time) the other ways to split cost more: by rows, each thread
    /// would read all the weights for a few rows; a fork-join per step put a thread to sleep and
    /// woke it about 40 times per forward. Each element gets the same operations as in the split
    /// by rows, so the same bits.
    fn layers_by_team(
        &self,
        team: &rayon::ThreadPool,
        x: &mut [f32],
        starts: &[usize],
        seqs: &[&[i64]],
        taps: &[(usize, Pool)],
        tap_out: &mut [Vec<f32>],
    ) {
        use oe_kernels::encoder::{add_layer_norm, attention_heads, attention_scratch};
        use oe_kernels::team::{Barrier, SharedBuf};
        let (h, inter, heads, eps) = (self.h, self.inter, self.heads, self.eps);
        let n_tok = x.len() / h;
        let scale = 1.0 / ((h / heads) as f32).sqrt();
        let (mut qkv, mut ctx) = (vec![0.0f32; n_tok * 3 * h], vec![0.0f32; n_tok * h]);
        let (mut a, mut f) = (vec![0.0f32; n_tok * h], vec![0.0f32; n_tok * inter]);
        let (xs, qs) = (SharedBuf::new(x), SharedBuf::new(&mut qkv));
        let (cs, as_, fs) = (
            SharedBuf::new(&mut ctx),
            SharedBuf::new(&mut a),
            SharedBuf::new(&mut f),
        );
        let parts = team.current_num_threads();
        let barrier = Barrier::new(parts);
        let tap_out = std::sync::Mutex::new(tap_out);
        let act = |v: &mut [f32]| self.activation(v);
        // Every step below: each thread writes only its own part of one buffer (columns, heads
        // or rows), reads only buffers nobody writes in that step, and the barrier after the
        // step makes the writes visible before anyone reads them.
        run_team(team, parts, &|w| {
            let _guard = barrier.guard();
            let (r0, r1) = (n_tok * w / parts, n_tok * (w + 1) / parts);
            let hs = heads * w / parts..heads * (w + 1) / parts;
            let (c0, c1) = (hs.start * (h / heads), hs.end * (h / heads));
            // This thread's rows of `y ← LN(y + res) · g + b`.
            let ln_rows = |y: &SharedBuf, res: &SharedBuf, (g, b): &(Vec<f32>, Vec<f32>)| {
                // SAFETY: the rule above (a LayerNorm step writes `y`'s rows, reads `res`).
                let res = unsafe { &res.read()[r0 * h..r1 * h] };
                add_layer_norm(unsafe { y.write(r0 * h..r1 * h) }, Some(res), g, b, h, eps);
            };
            for (li, l) in self.layers.iter().enumerate() {
                // SAFETY (each `unsafe` block): the rule above.
                unsafe {
                    gemm_packed_part(
                        n_tok,
                        xs.read(),
                        &l.qkv,
                        Some(&l.qkv_b),
                        &qs,
                        w,
                        parts,
                        None,
                    )
                };
                barrier.wait();
                for t in 0..starts.len() - 1 {
                    let (s0, s1) = (starts[t], starts[t + 1]);
                    let len = s1 - s0;
                    let mut out = vec![0.0f32; len * h];
                    let mut scratch = vec![0.0f32; attention_scratch(len, h, heads)];
                    let q = unsafe { &qs.read()[s0 * 3 * h..s1 * 3 * h] };
                    attention_heads(q, len, h, heads, hs.clone(), scale, &mut out, &mut scratch);
                    for r in 0..len {
                        let row = (s0 + r) * h;
                        unsafe { cs.write(row + c0..row + c1) }
                            .copy_from_slice(&out[r * h + c0..r * h + c1]);
                    }
                }
                barrier.wait();
                let out_b = Some(&l.attn_out_b[..]);
                unsafe {
                    gemm_packed_part(n_tok, cs.read(), &l.attn_out, out_b, &as_, w, parts, None)
                };
                barrier.wait();
                ln_rows(&as_, &xs, &l.attn_ln);
                barrier.wait();
                let (inter_b, act) = (
                    Some(&l.inter_b[..]),
                    Some(&act as oe_kernels::packed::Epilogue),
                );
                unsafe {
                    gemm_packed_part(n_tok, as_.read(), &l.inter, inter_b, &fs, w, parts, act)
                };
                barrier.wait();
                let out_b = Some(&l.out_b[..]);
                unsafe { gemm_packed_part(n_tok, fs.read(), &l.out, out_b, &xs, w, parts, None) };
                barrier.wait();
                ln_rows(&xs, &as_, &l.out_ln);
                barrier.wait();
                // The next step only reads `x` too: the taps need no barrier of their own.
                if w == 0 && taps.iter().any(|&(tl, _)| tl == li + 1) {
                    let mut out = tap_out.lock().unwrap_or_else(|e| e.into_inner());
                    self.tap(li + 1, unsafe { xs.read() }, starts, seqs, taps, &mut out);
                }
            }
        });
    }

    /// Each text's `pool` of the states `x` `[N, H]`: the mean over its tokens (summed in order),
    /// or its first token's state. An empty text's mean is zeros.
    fn pool(&self, x: &[f32], starts: &[usize], seqs: &[&[i64]], pool: Pool) -> Vec<f32> {
        let h = self.h;
        let n = starts.len() - 1;
        let mut out = vec![0.0f32; n * h];
        for t in 0..n {
            let o = &mut out[t * h..(t + 1) * h];
            match pool {
                Pool::Cls => o.copy_from_slice(&x[starts[t] * h..(starts[t] + 1) * h]),
                Pool::Mean => {
                    if seqs[t].is_empty() {
                        continue;
                    }
                    for r in starts[t]..starts[t + 1] {
                        for (s, &v) in o.iter_mut().zip(&x[r * h..(r + 1) * h]) {
                            *s += v;
                        }
                    }
                    let c = (starts[t + 1] - starts[t]) as f32;
                    for s in o.iter_mut() {
                        *s /= c;
                    }
                }
            }
        }
        out
    }

    /// Records layer `layer`'s pooled states for every tap that asks for them.
    fn tap(
        &self,
        layer: usize,
        x: &[f32],
        starts: &[usize],
        seqs: &[&[i64]],
        taps: &[(usize, Pool)],
        out: &mut [Vec<f32>],
    ) {
        for (i, &(l, p)) in taps.iter().enumerate() {
            if l == layer {
                out[i] = self.pool(x, starts, seqs, p);
            }
        }
    }

    /// Features of each of `sources` concatenated `[n, S·H]` and logits `[n, C]`, as
    /// [`BertClassifier::features_at`] defines them, each row what its text gets alone.
    pub fn features_and_logits(
        &self,
        seqs: &[&[i64]],
        sources: &[FeatureSource],
    ) -> (Tensor, Tensor) {
        let layers = self.layers.len();
        let mut taps: Vec<(usize, Pool)> = Vec::new();
        for s in sources {
            match *s {
                FeatureSource::Penultimate => {}
                FeatureSource::Layer { layer, pool } if layer <= layers => taps.push((layer, pool)),
                FeatureSource::Layer { .. } => {}
                FeatureSource::LayerMean { pool } => taps.extend((1..=layers).map(|l| (l, pool))),
            }
        }
        taps.sort_by_key(|&(l, p)| (l, p == Pool::Cls));
        taps.dedup();
        let o = self.run(seqs, &taps);
        let (n, h) = (seqs.len(), self.h);
        let find = |l: usize, p: Pool| taps.iter().position(|&t| t == (l, p)).map(|i| &o.taps[i]);
        let parts: Vec<Tensor> = sources
            .iter()
            .map(|s| {
                let v = match *s {
                    FeatureSource::Penultimate => o.pooled.clone(),
                    FeatureSource::Layer { layer, pool } => find(layer, pool)
                        .cloned()
                        .unwrap_or_else(|| vec![0.0; n * h]),
                    FeatureSource::LayerMean { pool } => {
                        let mut m = vec![0.0f32; n * h];
                        for l in 1..=layers {
                            if let Some(v) = find(l, pool) {
                                for (a, &b) in m.iter_mut().zip(v) {
                                    *a += b;
                                }
                            }
                        }
                        for a in m.iter_mut() {
                            *a /= layers as f32;
                        }
                        m
                    }
                };
                Tensor::from_slice(&v).view([n as i64, h as i64])
            })
            .collect();
        let feats = if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else {
            Tensor::cat(&parts, 1)
        };
        let logits = Tensor::from_slice(&o.logits).view([n as i64, self.classes as i64]);
        (feats, logits)
    }
}

/// Worker threads: the count the CPU kernels took from libtorch when a model was frozen for
/// inference ([`super::gru_cpu::adopt_torch_threads`]), else libtorch's intra-op thread count
/// (`--threads`) when the pool is first used.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = super::gru_cpu::adopted_workers()
            .unwrap_or_else(|| tch::get_num_threads().max(1) as usize);
        super::gru_cpu::worker_pool(threads, "oe-bert", || {})
    })
}

/// Fewest rows a worker gets from a batch's split by rows; a shorter batch is split by columns
/// ([`Frozen::run`]). The packed product runs groups of up to 32 rows over every weight it reads:
/// below that, a worker given part of the rows would read all the weights for fewer rows, where
/// one given part of the columns reads only its share of them for all the rows.
const COLUMN_SPLIT_ROWS: usize = 32;

/// Largest block of [`par_blocks`]. Each block reads every weight of a product once (a panel is
/// then reused from cache by all its rows), so fewer, larger blocks read less; but a block's input
/// rows (`rows · 1536` floats for the feed-forward's second product) and its feed-forward buffer
/// should stay in L2 while a panel runs over them.
const BLOCK_ROWS: usize = 256;

/// Calls `f(first_row, rows)` on blocks of `buf` (`width` floats a row): as few blocks as there
/// are workers and none larger than [`BLOCK_ROWS`], all of about equal size, on the worker pool
/// when there is more than one.
fn par_blocks(buf: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    use rayon::prelude::*;
    let rows = buf.len() / width.max(1);
    let workers = pool().current_num_threads();
    let blocks = rows
        .div_ceil(BLOCK_ROWS)
        .max(workers.max(1))
        .min(rows.max(1));
    let per = rows.div_ceil(blocks).max(1);
    if rows <= per || workers == 1 {
        for (i, b) in buf.chunks_mut(per * width).enumerate() {
            f(i * per, b);
        }
        return;
    }
    pool().install(|| {
        buf.par_chunks_mut(per * width)
            .enumerate()
            .for_each(|(i, b)| f(i * per, b))
    });
}

/// Runs `member(w)` for every `w` in `0..parts` at once, `0` on the calling thread and the others
/// on `pool` (which must have at least `parts - 1` threads and not be the caller's own pool, so
/// that every member runs even while the others spin), and returns when all have returned.
fn run_team(pool: &rayon::ThreadPool, parts: usize, member: &(dyn Fn(usize) + Sync)) {
    pool.in_place_scope(|s| {
        for w in 1..parts {
            s.spawn(move |_| member(w));
        }
        member(0);
    });
}

/// Calls `f(text, rows)` on each text's rows of `buf` (`width` floats a row; text `t` has rows
/// `starts[t]..starts[t + 1]`), on the worker pool when there are several texts.
fn par_texts(
    buf: &mut [f32],
    width: usize,
    starts: &[usize],
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    use rayon::prelude::*;
    let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(starts.len());
    let mut rest = buf;
    for t in 0..starts.len().saturating_sub(1) {
        let (a, b) = rest.split_at_mut((starts[t + 1] - starts[t]) * width);
        parts.push((t, a));
        rest = b;
    }
    if parts.len() <= 1 || pool().current_num_threads() == 1 {
        for (t, p) in parts {
            f(t, p);
        }
        return;
    }
    pool().install(|| parts.into_par_iter().for_each(|(t, p)| f(t, p)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::models::bert::{BertBatch, BertClassifierConfig, BertConfig};
    use tch::{nn, Device};

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 50,
            hidden_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            intermediate_size: 40,
            max_position_embeddings: 40,
            ..Default::default()
        }
    }

    fn texts() -> Vec<Vec<i64>> {
        // Lengths 1..=33 and a repeat, ids from a fixed pattern (pad id 0 never appears inside).
        let mut v: Vec<Vec<i64>> = (1..=33usize)
            .map(|l| (0..l).map(|i| 1 + ((i * 7 + l * 3) % 49) as i64).collect())
            .collect();
        v.push(v[4].clone());
        v
    }

    /// libtorch's forward, one text at a time (right-padded batch of one: no padding at all).
    fn reference(
        m: &BertClassifier,
        seqs: &[Vec<i64>],
        sources: &[FeatureSource],
    ) -> (Tensor, Tensor) {
        let (f, l): (Vec<Tensor>, Vec<Tensor>) = seqs
            .iter()
            .map(|s| {
                let b = BertBatch::right_padded(&[s.as_slice()], 0, None, Device::Cpu);
                tch::no_grad(|| m.features_at(&b, sources))
            })
            .unzip();
        (Tensor::cat(&f, 0), Tensor::cat(&l, 0))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn packed_encoder_matches_libtorch_and_is_batch_invariant() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = BertClassifierConfig::default();
        for act in [HiddenAct::Gelu, HiddenAct::GeluNew, HiddenAct::Relu] {
            let bc = BertConfig {
                hidden_act: act,
                ..tiny()
            };
            let m = BertClassifier::new(&(vs.root() / format!("{act:?}")), &bc, &cfg, 3);
            let frozen = Frozen::new(&m);
            let seqs = texts();
            let refs: Vec<&[i64]> = seqs.iter().map(Vec::as_slice).collect();
            let sources = [
                FeatureSource::Penultimate,
                FeatureSource::Layer {
                    layer: 0,
                    pool: Pool::Mean,
                },
                FeatureSource::Layer {
                    layer: 1,
                    pool: Pool::Cls,
                },
                FeatureSource::LayerMean { pool: Pool::Mean },
            ];
            let (f, l) = frozen.features_and_logits(&refs, &sources);
            let (rf, rl) = reference(&m, &seqs, &sources);
            assert_eq!(f.size(), rf.size());
            assert!(
                max_diff(&f, &rf) < 1e-5,
                "{act:?} features differ by {}",
                max_diff(&f, &rf)
            );
            assert!(
                max_diff(&l, &rl) < 1e-5,
                "{act:?} logits differ by {}",
                max_diff(&l, &rl)
            );
            // Each text alone, and the batch reversed: the same bits.
            for (i, s) in refs.iter().enumerate() {
                let (fa, la) = frozen.features_and_logits(&[s], &sources);
                assert!(
                    fa.equal(&f.narrow(0, i as i64, 1)),
                    "{act:?} text {i}: features"
                );
                assert!(
                    la.equal(&l.narrow(0, i as i64, 1)),
                    "{act:?} text {i}: logits"
                );
            }
            let rev: Vec<&[i64]> = refs.iter().rev().copied().collect();
            let (fr, _) = frozen.features_and_logits(&rev, &sources);
            assert!(fr.flip([0]).equal(&f));
        }
    }

    /// The forward by a team (what a short batch gets on several workers) gives the bits of the
    /// split by rows, whatever the team's size (more threads than heads included), on pools of
    /// its own so that the team runs whatever the machine's cores.
    #[test]
    fn split_by_columns_gives_the_bits_of_split_by_rows() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BertClassifier::new(&vs.root(), &tiny(), &BertClassifierConfig::default(), 3);
        let frozen = Frozen::new(&m);
        let seqs = texts();
        let taps = [(0, Pool::Mean), (1, Pool::Cls), (2, Pool::Mean)];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for batch in [&seqs[0..1], &seqs[4..5], &seqs[32..33], &seqs[1..4]] {
            let refs: Vec<&[i64]> = batch.iter().map(Vec::as_slice).collect();
            let starts: Vec<usize> = std::iter::once(0)
                .chain(refs.iter().scan(0, |n, t| {
                    *n += t.len();
                    Some(*n)
                }))
                .collect();
            let rows = frozen.forward(&refs, &starts, &refs, &taps, None);
            for threads in [2, 3, 4] {
                let team = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a thread pool");
                let split = frozen.forward(&refs, &starts, &refs, &taps, Some(&team));
                let what = format!("{} texts, a team of {threads}", refs.len());
                assert_eq!(bits(&split.logits), bits(&rows.logits), "{what}: logits");
                assert_eq!(bits(&split.pooled), bits(&rows.pooled), "{what}: pooled");
                for (a, b) in split.taps.iter().zip(&rows.taps) {
                    assert_eq!(bits(a), bits(b), "{what}: taps");
                }
            }
        }
    }

    /// Timing, not a check: a MiniLM-sized encoder (6 layers, 384 wide, 12 heads) over one text
    /// of `OE_LEN` tokens (31 unless set), as a service scores a lone request, on the pool of
    /// libtorch's threads (`OE_THREADS`, or the default), each forward after a pause of
    /// `OE_GAP_US` microseconds (0 unless set; a service's workers sleep between requests):
    /// `cargo test --release --lib -- --ignored --nocapture minilm_one_text_ms`.
    #[test]
    #[ignore]
    fn minilm_one_text_ms() {
        if let Some(t) = std::env::var("OE_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tch::set_num_threads(t);
        }
        let len: usize = std::env::var("OE_LEN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(31);
        let gap: u64 = std::env::var("OE_GAP_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bc = BertConfig {
            vocab_size: 1000,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BertClassifier::new(&vs.root(), &bc, &BertClassifierConfig::default(), 6);
        let frozen = Frozen::new(&m);
        let text: Vec<i64> = (0..len as i64).map(|i| 1 + (i * 37) % 999).collect();
        for round in 0..5 {
            let reps = 200;
            let mut busy = std::time::Duration::ZERO;
            for _ in 0..reps {
                if gap > 0 {
                    std::thread::sleep(std::time::Duration::from_micros(gap));
                }
                let t0 = std::time::Instant::now();
                std::hint::black_box(frozen.run(&[&text], &[]));
                busy += t0.elapsed();
            }
            let t = busy.as_secs_f64() / reps as f64;
            println!(
                "round {round}: {len} tokens on {} workers: {:.3} ms",
                pool().current_num_threads(),
                t * 1e3
            );
        }
    }

    #[test]
    fn an_empty_text_is_what_libtorch_gives_a_row_without_tokens() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = BertClassifier::new(&vs.root(), &tiny(), &BertClassifierConfig::default(), 2);
        let frozen = Frozen::new(&m);
        let (f, l) = frozen.features_and_logits(&[&[], &[5, 6]], &[FeatureSource::Penultimate]);
        // libtorch: a one-position batch whose only position is padding.
        let b = BertBatch {
            input_ids: Tensor::from_slice(&[0i64]).view([1, 1]),
            attention_mask: Tensor::from_slice(&[0i64]).view([1, 1]),
        };
        let (rf, rl) = tch::no_grad(|| m.features_and_logits(&b, false));
        assert_eq!(f.narrow(0, 0, 1).abs().max().double_value(&[]), 0.0);
        assert!(max_diff(&f.narrow(0, 0, 1), &rf) < 1e-6);
        assert!(max_diff(&l.narrow(0, 0, 1), &rl) < 1e-6);
    }
}
