//! Fused CPU kernels for the small operations around the matrix products: RMS norm,
//! rotary embedding (with the head transpose folded in) and the scaled, masked softmax of
//! attention scores.
//!
//! Composed from candle's elementwise tensor ops, each of these is 5 to 10 operations, each
//! allocating its output; at one token per step (generation) that overhead rivals the
//! matrix products of a 135M-parameter model. The arithmetic is the same as the composed
//! form (and as transformers'), in f32, except that sums of squares accumulate in f64.
//! Other devices keep the composed tensor ops (see `model.rs`).

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp1, InplaceOp2, Layout, Result,
    Shape,
};
use rayon::prelude::*;

/// From this many values on, an op splits its rows over the thread pool; below, waking the
/// pool costs more than the work (one token's scores or feed-forward).
const PARALLEL_VALUES: usize = 1 << 15;

/// `n` zeros for an op's output. A large buffer is cleared by the thread pool: reused heap
/// memory that `vec!` would clear with a memset on the calling thread while the pool waits
/// (the ops below run between the products of a batch of a thousand rows).
fn zeroed(n: usize) -> Vec<f32> {
    if n < PARALLEL_VALUES {
        return vec![0f32; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n));
    v
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what} must be f32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous, got {l:?}")
    };
    Ok(&v[a..b])
}

/// The values of an in-place op's destination (contiguous f32).
fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what} must be f32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous, got {l:?}")
    };
    Ok(&mut v[a..b])
}

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension; `w` is the second operand.
pub struct RmsNorm {
    pub eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "modelgate-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "rms norm input")?;
        let w = f32_slice(s2, l2, "rms norm weight")?;
        let d = w.len();
        if d == 0 || l1.shape().dims().last() != Some(&d) {
            bail!("rms norm weight of {d} for input {:?}", l1.shape());
        }
        let eps = self.eps as f32;
        let norm = |(o, row): (&mut [f32], &[f32])| {
            let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let var = (ss / d as f64) as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
                *o = g * (v * inv);
            }
        };
        let mut out = zeroed(x.len());
        // rows are independent: a prompt's rows are split over the threads
        if x.len() >= PARALLEL_VALUES {
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .with_min_len(4)
                .for_each(norm);
        } else {
            out.chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .for_each(norm);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Rotate-half RoPE of `x [n, heads, head_dim]` (a projection's output, reshaped), written
/// as `[heads, n, head_dim]`, with cos/sin tables `[n, rot / 2]`: the first `rot`
/// dimensions of each head rotate, the rest are copied (partial rotary).
pub struct Rope<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

impl CustomOp1 for Rope<'_> {
    fn name(&self) -> &'static str {
        "modelgate-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rope input")?;
        let (n, heads, hd) = l.shape().dims3()?;
        let half = self.cos.len().checked_div(n).unwrap_or(0);
        if 2 * half > hd || self.cos.len() != n * half || self.sin.len() != n * half {
            bail!(
                "rope tables of {} for input {:?}",
                self.cos.len(),
                l.shape()
            );
        }
        let mut out = zeroed(x.len());
        // head `h` of every position, written as the contiguous block `out[h]`
        let head = |(h, block): (usize, &mut [f32])| {
            for (t, dst) in block.chunks_exact_mut(hd).enumerate() {
                let cos = &self.cos[t * half..(t + 1) * half];
                let sin = &self.sin[t * half..(t + 1) * half];
                let src = &x[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                let (x1, rest) = src.split_at(half);
                let (x2, pass) = rest.split_at(half);
                let (d1, rest) = dst.split_at_mut(half);
                let (d2, dpass) = rest.split_at_mut(half);
                for j in 0..half {
                    d1[j] = x1[j] * cos[j] - x2[j] * sin[j];
                    d2[j] = x2[j] * cos[j] + x1[j] * sin[j];
                }
                dpass.copy_from_slice(pass);
            }
        };
        if hd > 0 && n > 0 {
            if x.len() >= PARALLEL_VALUES {
                out.par_chunks_mut(n * hd).enumerate().for_each(head);
            } else {
                out.chunks_mut(n * hd).enumerate().for_each(head);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((heads, n, hd))))
    }
}

/// Softmax over the last dimension of attention scores `[kv_heads, rep * n, total]` (rows
/// ordered kv head, query head in the group, query), after scaling by `scale`, soft-capping
/// (`cap * tanh(s / cap)`, Gemma 2) and masking keys after each query (causal) or `window`
/// or more positions before it.
pub struct MaskedSoftmax<'a> {
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Queries in the chunk.
    pub n: usize,
    /// Position of the chunk's first query.
    pub pos: usize,
    pub window: usize,
    /// One extra logit per query head (rows `h * n .. (h + 1) * n`) that each row also
    /// normalises over and then drops (gpt-oss's attention sinks).
    pub sinks: Option<&'a [f32]>,
}

impl CustomOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "modelgate-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "attention scores")?;
        let total = *l.shape().dims().last().unwrap_or(&0);
        if total == 0 || self.n == 0 || self.pos + self.n != total {
            bail!(
                "attention scores {:?} for {} queries at {}",
                l.shape(),
                self.n,
                self.pos
            );
        }
        let mut out = zeroed(x.len());
        // Rows are independent: a prompt's scores (heads x queries rows) are split over
        // the threads, one token's few rows stay on the calling thread.
        if x.len() >= PARALLEL_VALUES {
            out.par_chunks_mut(total)
                .zip(x.par_chunks(total))
                .enumerate()
                .with_min_len(8)
                .try_for_each(|(r, (o, row))| self.row(r, o, row))?;
        } else {
            for (r, (o, row)) in out
                .chunks_exact_mut(total)
                .zip(x.chunks_exact(total))
                .enumerate()
            {
                self.row(r, o, row)?;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// In place over a fresh score tensor: a batch's scores (heads x queries x keys per
/// sequence) are not copied into a second, zeroed buffer whose pages the kernel would
/// fault in and clear again for every layer. Same values as [`CustomOp1`]'s output.
impl InplaceOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "modelgate-masked-softmax-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let total = *l.shape().dims().last().unwrap_or(&0);
        if total == 0 || self.n == 0 || self.pos + self.n != total {
            bail!(
                "attention scores {:?} for {} queries at {}",
                l.shape(),
                self.n,
                self.pos
            );
        }
        let x = f32_slice_mut(s, l, "attention scores")?;
        if x.len() >= PARALLEL_VALUES {
            x.par_chunks_mut(total)
                .enumerate()
                .with_min_len(8)
                .try_for_each(|(r, row)| self.row_in_place(r, row))?;
        } else {
            for (r, row) in x.chunks_exact_mut(total).enumerate() {
                self.row_in_place(r, row)?;
            }
        }
        Ok(())
    }
}

impl MaskedSoftmax<'_> {
    /// Softmax of score row `r` over its own buffer `v` (what [`MaskedSoftmax::row`] runs on
    /// its copy), the masked entries set to zero.
    fn row_in_place(&self, r: usize, v: &mut [f32]) -> Result<()> {
        let q = self.pos + r % self.n;
        let lo = (q + 1).saturating_sub(self.window);
        if q >= v.len() {
            bail!("score row {r} of {} keys for query {q}", v.len());
        }
        let (before, rest) = v.split_at_mut(lo);
        let (keys, after) = rest.split_at_mut(q + 1 - lo);
        before.fill(0.0);
        after.fill(0.0);
        // a soft-capped softmax has no sinks (no model has both)
        let sink = match self.sinks {
            Some(sinks) if self.softcap.is_none() => {
                Some(*sinks.get(r / self.n).ok_or_else(|| {
                    candle_core::Error::Msg(format!("no attention sink for row {r}"))
                })?)
            }
            _ => None,
        };
        self.softmax_keys(sink, keys);
        Ok(())
    }

    /// Softmax of one row's visible scores `keys` in place, normalised also over `sink`
    /// (the row's query head's, not written; ignored with a soft cap).
    pub(super) fn softmax_keys(&self, sink: Option<f32>, keys: &mut [f32]) {
        if let Some(cap) = self.softcap {
            for v in keys.iter_mut() {
                *v = (*v * self.scale / cap).tanh() * cap;
            }
            let mut max = f32::NEG_INFINITY;
            for &v in keys.iter() {
                max = max.max(v);
            }
            let mut sum = 0f32;
            for v in keys.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            for v in keys.iter_mut() {
                *v /= sum;
            }
            return;
        }
        let mut max = sink.unwrap_or(f32::NEG_INFINITY);
        for &v in keys.iter() {
            max = max.max(v * self.scale);
        }
        let mut sum = sink.map_or(0.0, |s| (s - max).exp());
        for v in keys.iter_mut() {
            let e = (*v * self.scale - max).exp();
            *v = e;
            sum += e;
        }
        for v in keys.iter_mut() {
            *v /= sum;
        }
    }

    /// Softmax of score row `r` into `o` (entries outside the row's keys zero): the row
    /// copied, then [`MaskedSoftmax::row_in_place`], so both paths run the same operations.
    fn row(&self, r: usize, o: &mut [f32], row: &[f32]) -> Result<()> {
        if o.len() != row.len() {
            bail!(
                "score row {r}: {} outputs for {} scores",
                o.len(),
                row.len()
            );
        }
        o.copy_from_slice(row);
        self.row_in_place(r, o)
    }
}

/// Attention of a few new queries over the cached keys and values in one pass, for
/// generation: `q [heads, n, head_dim]` (rotated), keys and values `[kv_heads, total,
/// head_dim]` (views of the cache, strided by its capacity), output `[n, heads *
/// head_dim]`, ready for the output projection. Per query head: scores are f32 dot
/// products, the softmax is [`MaskedSoftmax`]'s row, the output the probability-weighted
/// sum of values in key order. For one token the composed form is five candle ops with
/// their allocations and a GEMM call each; here it is one loop.
pub struct DecodeAttention<'a> {
    pub softmax: MaskedSoftmax<'a>,
    /// Query heads per key/value head.
    pub rep: usize,
}

/// The operands of an attention op, checked against its softmax and group size: queries
/// `[nh, n, hd]` (contiguous), keys and values `[nkv, total, hd]` (strided views of the
/// cache, rows contiguous), `total = pos + n`.
pub(super) struct AttnOperands<'a> {
    /// The queries' values.
    pub q: &'a [f32],
    /// The keys' and values' storage (read through their layouts).
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub nh: usize,
    pub n: usize,
    pub hd: usize,
    pub total: usize,
}

/// [`AttnOperands`] of the `what` attention op over operands `(storage, layout)`.
pub(super) fn attention_operands<'a>(
    what: &str,
    sm: &MaskedSoftmax<'_>,
    rep: usize,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<AttnOperands<'a>> {
    let q = f32_slice(s1, l1, "queries")?;
    let (CpuStorage::F32(k), CpuStorage::F32(v)) = (s2, s3) else {
        bail!("keys and values must be f32")
    };
    let (nh, n, hd) = l1.shape().dims3()?;
    let (nkv, total, khd) = l2.shape().dims3()?;
    if khd != hd
        || l3.shape().dims3()? != (nkv, total, hd)
        || l2.stride()[2] != 1
        || l3.stride()[2] != 1
        || rep == 0
        || nkv * rep != nh
        || sm.n != n
        || sm.pos + n != total
        || sm.sinks.is_some_and(|s| s.len() < nh)
    {
        bail!(
            "{what} attention of {:?} over {:?} / {:?} at {}",
            l1.shape(),
            l2.shape(),
            l3.shape(),
            sm.pos
        );
    }
    Ok(AttnOperands {
        q,
        k,
        v,
        nh,
        n,
        hd,
        total,
    })
}

/// Element `(a, b, ..)` rows of a 3-d strided view: slice of row `b` of matrix `a`.
fn row3<'s>(v: &'s [f32], l: &Layout, a: usize, b: usize, len: usize) -> &'s [f32] {
    let st = l.stride();
    let at = l.start_offset() + a * st[0] + b * st[1];
    &v[at..at + len]
}

/// From this many multiply-adds of scores (query heads x visible keys x head_dim, summed
/// over the queries) on, [`DecodeAttention`] splits its query heads over the thread pool.
/// SmolLM2-135M (9 heads of 64) crosses it at about 28 keys: below that a layer's
/// attention takes a few microseconds, about what waking the other workers costs.
const PARALLEL_ATTENTION: usize = 1 << 14;

/// Keys whose scores are summed together in [`score_keys`].
const SCORE_KEYS: usize = 8;

/// Scores `out[i] = q . key(lo + i)`, each an f32 sum over the head dimensions in order
/// of the separate products `q[d] * key[d]`, from `-0.0` (what `f32::sum` of the products
/// gives, bit for bit). [`SCORE_KEYS`] keys at a time: one key's sum is a chain of
/// dependent additions, so several keys' chains are interleaved to keep the adders busy.
#[inline(always)]
fn score_keys<'k>(q: &[f32], key: impl Fn(usize) -> &'k [f32], lo: usize, out: &mut [f32]) {
    let hd = q.len();
    let done = out.len() - out.len() % SCORE_KEYS;
    let mut blocks = out.chunks_exact_mut(SCORE_KEYS);
    for (b, dst) in (&mut blocks).enumerate() {
        let rows: [&[f32]; SCORE_KEYS] =
            std::array::from_fn(|i| &key(lo + b * SCORE_KEYS + i)[..hd]);
        let mut acc = [-0.0f32; SCORE_KEYS];
        for (d, &x) in q.iter().enumerate() {
            for (a, r) in acc.iter_mut().zip(rows) {
                *a += x * r[d];
            }
        }
        dst.copy_from_slice(&acc);
    }
    for (i, o) in blocks.into_remainder().iter_mut().enumerate() {
        let kr = key(lo + done + i);
        *o = q.iter().zip(kr).map(|(a, b)| a * b).sum();
    }
}

/// `o += p_i * value(lo + i)` over the probabilities `probs` in key order, a multiply then
/// an add per element.
#[inline(always)]
fn add_values<'v>(o: &mut [f32], probs: &[f32], value: impl Fn(usize) -> &'v [f32], lo: usize) {
    for (i, &p) in probs.iter().enumerate() {
        for (o, &x) in o.iter_mut().zip(value(lo + i)) {
            *o += p * x;
        }
    }
}

/// `f()` compiled for AVX2 where the CPU has it (`f` and what it inlines: loops then run
/// eight lanes wide, the same IEEE operations per lane).
#[inline(always)]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return simd.vectorize(f);
    }
    f()
}

impl CustomOp3 for DecodeAttention<'_> {
    fn name(&self) -> &'static str {
        "modelgate-decode-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let AttnOperands {
            q,
            k,
            v,
            nh,
            n,
            hd,
            total,
        } = attention_operands(
            "decode",
            &self.softmax,
            self.rep,
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )?;
        let sm = &self.softmax;
        let rep = self.rep;
        let mut out = vec![0f32; n * nh * hd];
        // output row `c` of `[n, nh, hd]` is query `c / nh` of query head `c % nh`, with a
        // score row of its own (`scores`, the task's scratch, `total` long)
        let head = |scores: &mut Vec<f32>, (c, o): (usize, &mut [f32])| -> Result<()> {
            let (t, h) = (c / nh, c % nh);
            let g = h / rep;
            let qr = &q[(h * n + t) * hd..(h * n + t + 1) * hd];
            let q_pos = sm.pos + t;
            let lo = (q_pos + 1).saturating_sub(sm.window);
            with_avx2(
                #[inline(always)]
                || {
                    score_keys(
                        qr,
                        #[inline(always)]
                        |j| row3(k, l2, g, j, hd),
                        lo,
                        &mut scores[lo..=q_pos],
                    )
                },
            );
            // the softmax row of query head `h`, query `t`; the entries outside the visible
            // keys (stale from another row) are set to zero there
            sm.row_in_place(h * n + t, scores)?;
            with_avx2(
                #[inline(always)]
                || {
                    add_values(
                        o,
                        &scores[lo..=q_pos],
                        #[inline(always)]
                        |j| row3(v, l3, g, j, hd),
                        lo,
                    )
                },
            );
            Ok(())
        };
        if hd > 0 {
            // visible keys summed over the queries: the work of the score and value loops
            let keys: usize = (0..n).map(|t| (sm.pos + t + 1).min(sm.window)).sum();
            if nh * keys * hd >= PARALLEL_ATTENTION {
                out.par_chunks_mut(hd)
                    .enumerate()
                    .try_for_each_init(|| vec![0f32; total], head)?;
            } else {
                let mut scores = vec![0f32; total];
                for row in out.chunks_mut(hd).enumerate() {
                    head(&mut scores, row)?;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, nh * hd))))
    }
}

/// The two operands of an in-place elementwise op, `[what1]` written over: same shape,
/// contiguous f32.
fn operands_mut<'a>(
    (s1, l1, what1): (&'a mut CpuStorage, &Layout, &str),
    (s2, l2, what2): (&'a CpuStorage, &Layout, &str),
) -> Result<(&'a mut [f32], &'a [f32])> {
    if l1.shape() != l2.shape() {
        bail!(
            "{what1} {:?} and {what2} {:?} differ",
            l1.shape(),
            l2.shape()
        );
    }
    Ok((f32_slice_mut(s1, l1, what1)?, f32_slice(s2, l2, what2)?))
}

/// `f(a_i, b_i)` for every pair, in place into `a`: over the thread pool for a batch of
/// rows, on the calling thread below [`PARALLEL_VALUES`] (one element's operations either
/// way, so the same bits).
fn zip_in_place(a: &mut [f32], b: &[f32], f: impl Fn(&mut f32, f32) + Sync + Send) {
    if a.len() >= PARALLEL_VALUES {
        a.par_iter_mut()
            .zip(b.par_iter())
            .with_min_len(4096)
            .for_each(|(a, &b)| f(a, b));
    } else {
        a.iter_mut().zip(b).for_each(|(a, &b)| f(a, b));
    }
}

/// `a + b` elementwise (the residual adds), split over the thread pool for a batch of rows
/// rather than run by candle's own barrier-synchronised split with the calling thread
/// waiting in it. The same f32 additions.
pub struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "modelgate-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, "addend")?;
        let b = f32_slice(s2, l2, "addend")?;
        if l1.shape() != l2.shape() {
            bail!("addends {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let out = if a.len() >= PARALLEL_VALUES {
            let mut out = Vec::with_capacity(a.len());
            a.par_iter()
                .zip(b.par_iter())
                .with_min_len(4096)
                .map(|(&a, &b)| a + b)
                .collect_into_vec(&mut out);
            out
        } else {
            a.iter().zip(b).map(|(&a, &b)| a + b).collect()
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `b += a` in place into the second addend's buffer when it is a fresh product output
/// that nothing else holds (the residual adds of a batch): no new buffer of a batch's
/// hidden states to fault in per add. f32 addition commutes, so the same bits as `a + b`.
impl InplaceOp2 for Add {
    fn name(&self) -> &'static str {
        "modelgate-add-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (a, b) = operands_mut((s1, l1, "addend"), (s2, l2, "addend"))?;
        zip_in_place(a, b, |a, b| *a += b);
        Ok(())
    }
}

/// `act(g) * u` elementwise for the gated feed-forward, `g` the first operand: SiLU
/// (`g / (1 + exp(-g))`, candle's formula) times the up projection, in one pass and, for
/// a prompt, split over the threads. Same f32 operations as candle's `silu` then `mul`.
pub struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "modelgate-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, "gate")?;
        let u = f32_slice(s2, l2, "up")?;
        if l1.shape() != l2.shape() {
            bail!("gate {:?} and up {:?} differ", l1.shape(), l2.shape());
        }
        let f = |(o, (&g, &u)): (&mut f32, (&f32, &f32))| *o = g / (1.0 + (-g).exp()) * u;
        let mut out = zeroed(g.len());
        if g.len() >= PARALLEL_VALUES {
            out.par_iter_mut()
                .zip(g.par_iter().zip(u.par_iter()))
                .with_min_len(4096)
                .for_each(f);
        } else {
            out.iter_mut().zip(g.iter().zip(u)).for_each(f);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// [`SiluMul`] in place into the gate projection's output (a fresh tensor of a batch's
/// `[rows, ffn]`, the largest activation of a layer): the same f32 operations, one buffer
/// of that size less to fault in and clear per layer.
impl InplaceOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "modelgate-silu-mul-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (g, u) = operands_mut((s1, l1, "gate"), (s2, l2, "up"))?;
        zip_in_place(g, u, |g, u| *g = *g / (1.0 + (-*g).exp()) * u);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Storage, Tensor};

    #[test]
    fn rms_norm_matches_the_formula() {
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [0., 0., 0., 1.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 0.5, 2., 1.], &Device::Cpu).unwrap();
        let y = x
            .apply_op2_no_bwd(&w, &RmsNorm { eps: 1e-5 })
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inv = 1.0 / (7.5f32 + 1e-5).sqrt();
        assert!((y[0][2] - 3.0 * inv * 2.0).abs() < 1e-6);
        assert!((y[1][3] - 1.0 / (0.25f32 + 1e-5).sqrt()).abs() < 1e-5);
    }

    #[test]
    fn rope_transposes_and_rotates() {
        // n = 2 positions, 1 head of 4: position 0 has angle 0 (identity)
        let x = Tensor::new(&[[[1f32, 2., 3., 4.]], [[1., 2., 3., 4.]]], &Device::Cpu).unwrap();
        let cos = [1f32, 1., 0., 1.];
        let sin = [0f32, 0., 1., 0.];
        let y = x
            .apply_op1_no_bwd(&Rope {
                cos: &cos,
                sin: &sin,
            })
            .unwrap();
        assert_eq!(y.dims(), &[1, 2, 4]);
        let y = y.to_vec3::<f32>().unwrap();
        assert_eq!(y[0][0], vec![1., 2., 3., 4.]);
        // first pair rotated by 90 degrees: (1, 3) -> (-3, 1); second unchanged
        assert_eq!(y[0][1], vec![-3., 2., 1., 4.]);
    }

    #[test]
    fn partial_rope_passes_the_tail_through() {
        // one head of 6, tables for 4 rotated dimensions (half 2): the last 2 are copied
        let x = Tensor::new(&[[[1f32, 2., 3., 4., 5., 6.]]], &Device::Cpu).unwrap();
        let (cos, sin) = ([0f32, 1.], [1f32, 0.]);
        let y = x
            .apply_op1_no_bwd(&Rope {
                cos: &cos,
                sin: &sin,
            })
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        // pair (1, 3) rotated by 90 degrees, pair (2, 4) unchanged, 5 and 6 untouched
        assert_eq!(y[0][0], vec![-3., 2., 1., 4., 5., 6.]);
    }

    #[test]
    fn soft_capping_bounds_scores_before_the_softmax() {
        let s = Tensor::new(&[[[0f32, 1000.]]], &Device::Cpu).unwrap();
        let p = s
            .apply_op1_no_bwd(&MaskedSoftmax {
                scale: 1.0,
                softcap: Some(1.0),
                n: 1,
                pos: 1,
                window: usize::MAX,
                sinks: None,
            })
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        // capped to (0, tanh(1000) = 1): softmax of (0, 1)
        let want = 1.0 / (1.0 + 1f32.exp());
        assert!((p[0][0][0] - want).abs() < 1e-6, "{:?}", p);
    }

    #[test]
    fn silu_mul_is_silu_then_mul() {
        for len in [7usize, 40_000] {
            let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 6.0).collect();
            let u: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let g = Tensor::from_vec(g, len, &Device::Cpu).unwrap();
            let u = Tensor::from_vec(u, len, &Device::Cpu).unwrap();
            let got = g.apply_op2_no_bwd(&u, &SiluMul).unwrap();
            let want = (g.silu().unwrap() * &u).unwrap();
            assert_eq!(
                got.to_vec1::<f32>().unwrap(),
                want.to_vec1::<f32>().unwrap()
            );
            // in place into the gate: the same bits
            g.inplace_op2(&u, &SiluMul).unwrap();
            assert_eq!(g.to_vec1::<f32>().unwrap(), want.to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn add_is_candles_add() {
        for len in [7usize, 40_000] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 6.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() * 1e-3).collect();
            let a = Tensor::from_vec(a, len, &Device::Cpu).unwrap();
            let b = Tensor::from_vec(b, len, &Device::Cpu).unwrap();
            let got = a.apply_op2_no_bwd(&b, &Add).unwrap();
            let want = (&a + &b).unwrap();
            assert_eq!(
                got.to_vec1::<f32>().unwrap(),
                want.to_vec1::<f32>().unwrap()
            );
            // in place into the second addend (as the residual adds run): the same bits
            b.inplace_op2(&a, &Add).unwrap();
            assert_eq!(b.to_vec1::<f32>().unwrap(), want.to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn large_score_blocks_split_over_threads_give_the_same_rows() {
        // 3 heads x 200 queries over 200 keys: above the parallel threshold
        let (h, n) = (3usize, 200usize);
        let v: Vec<f32> = (0..h * n * n).map(|i| (i as f32 * 0.013).sin()).collect();
        let s = Tensor::from_vec(v.clone(), (h, n, n), &Device::Cpu).unwrap();
        let op = MaskedSoftmax {
            scale: 0.5,
            softcap: None,
            n,
            pos: 0,
            window: 50,
            sinks: None,
        };
        let got = s.apply_op1_no_bwd(&op).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f32>().unwrap();
        for (r, row) in v.chunks_exact(n).enumerate() {
            let mut want = vec![0f32; n];
            op.row(r, &mut want, row).unwrap();
            assert_eq!(&got[r * n..(r + 1) * n], &want[..]);
        }
        s.inplace_op1(&op).unwrap();
        let inplace = s.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(inplace, got);
    }

    #[test]
    fn in_place_softmax_gives_the_ops_bits() {
        // causal, windowed, soft-capped and with sinks; a few rows and a parallel block
        let sinks = [0.3f32, -1.25];
        for (h, n, pos) in [(2usize, 3usize, 2usize), (2, 150, 0)] {
            let total = pos + n;
            let v: Vec<f32> = (0..h * n * total)
                .map(|i| (i as f32 * 0.071).sin() * 9.0)
                .collect();
            for (softcap, window, sink) in [
                (None, usize::MAX, false),
                (Some(5.0f32), 40, false),
                (None, 3, true),
            ] {
                let op = MaskedSoftmax {
                    scale: 0.37,
                    softcap,
                    n,
                    pos,
                    window,
                    sinks: sink.then_some(&sinks[..]),
                };
                let s = Tensor::from_vec(v.clone(), (h, n, total), &Device::Cpu).unwrap();
                let want = s.apply_op1_no_bwd(&op).unwrap();
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                s.inplace_op1(&op).unwrap();
                let got = s.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
                assert!(want.contains(&0.0) && want.iter().any(|&p| p > 0.0));
            }
        }
    }

    /// The decode attention loop as it was before heads were split over threads and keys
    /// scored eight at a time: the reference the op must match bit for bit. `[n, nh * hd]`.
    fn serial_decode(op: &DecodeAttention<'_>, q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f32> {
        let ((s1, l1), (s2, l2), (s3, l3)) = (
            q.storage_and_layout(),
            k.storage_and_layout(),
            v.storage_and_layout(),
        );
        let (Storage::Cpu(s1), Storage::Cpu(s2), Storage::Cpu(s3)) = (&*s1, &*s2, &*s3) else {
            panic!("cpu tensors")
        };
        let AttnOperands {
            q,
            k,
            v,
            nh,
            n,
            hd,
            total,
        } = attention_operands("decode", &op.softmax, op.rep, (s1, l1), (s2, l2), (s3, l3))
            .unwrap();
        let sm = &op.softmax;
        let mut out = vec![0f32; n * nh * hd];
        let mut scores = vec![0f32; total];
        let mut probs = vec![0f32; total];
        for h in 0..nh {
            let g = h / op.rep;
            for t in 0..n {
                let qr = &q[(h * n + t) * hd..(h * n + t + 1) * hd];
                let q_pos = sm.pos + t;
                let lo = (q_pos + 1).saturating_sub(sm.window);
                for (j, sc) in scores.iter_mut().enumerate().take(q_pos + 1).skip(lo) {
                    let kr = row3(k, l2, g, j, hd);
                    *sc = qr.iter().zip(kr).map(|(a, b)| a * b).sum();
                }
                let r = (h % op.rep) * n + t;
                probs.fill(0.0);
                sm.row(r + g * op.rep * n, &mut probs, &scores).unwrap();
                let o = &mut out[(t * nh + h) * hd..(t * nh + h + 1) * hd];
                for (j, &p) in probs.iter().enumerate().take(q_pos + 1).skip(lo) {
                    let vr = row3(v, l3, g, j, hd);
                    for (o, &x) in o.iter_mut().zip(vr) {
                        *o += p * x;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn decode_attention_gives_the_serial_loops_bits() {
        let sinks = [0.3f32, -1.25, 2.0, 0.0];
        let bits = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        let pools: Vec<rayon::ThreadPool> = [1usize, 2, 3]
            .iter()
            .map(|&t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
            })
            .collect();
        let mut parallel = false;
        // (query heads, kv heads, head dim, queries, position): GQA and plain, one and
        // several queries, caches short (serial) and long (split over the threads), head
        // dims with and without a remainder of keys
        for (nh, nkv, hd, n, pos) in [
            (4usize, 2usize, 16usize, 1usize, 0usize),
            (4, 2, 16, 1, 5),
            (4, 1, 16, 3, 300),
            (3, 3, 24, 1, 901),
            (4, 2, 64, 2, 77),
        ] {
            let total = pos + n;
            // the cache holds more rows than are filled: keys and values are strided views
            let cap = total + 7;
            let q: Vec<f32> = (0..nh * n * hd)
                .map(|i| (i as f32 * 0.37).sin() * 3.0)
                .collect();
            let kv = |c: f32| -> Tensor {
                let x: Vec<f32> = (0..nkv * cap * hd)
                    .map(|i| (i as f32 * c).cos() * 2.5)
                    .collect();
                Tensor::from_vec(x, (nkv, cap, hd), &Device::Cpu)
                    .unwrap()
                    .narrow(1, 0, total)
                    .unwrap()
            };
            let (k, v) = (kv(0.113), kv(0.071));
            let q = Tensor::from_vec(q, (nh, n, hd), &Device::Cpu).unwrap();
            for (softcap, window, sink) in [
                (None, usize::MAX, false),
                (None, 40, false),
                (Some(5.0f32), 50, false),
                (None, usize::MAX, true),
            ] {
                let op = || DecodeAttention {
                    softmax: MaskedSoftmax {
                        scale: 0.37,
                        softcap,
                        n,
                        pos,
                        window,
                        sinks: sink.then_some(&sinks[..]),
                    },
                    rep: nh / nkv,
                };
                let keys: usize = (0..n).map(|t| (pos + t + 1).min(window)).sum();
                parallel |= nh * keys * hd >= PARALLEL_ATTENTION;
                let want = serial_decode(&op(), &q, &k, &v);
                assert_eq!(want.len(), n * nh * hd);
                let want: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
                assert!(want.iter().any(|&b| f32::from_bits(b) != 0.0));
                for pool in &pools {
                    let got = pool.install(|| q.apply_op3_no_bwd(&k, &v, &op()).unwrap());
                    assert_eq!(bits(&got), want, "{nh}/{nkv} heads of {hd}, {n} at {pos}");
                }
            }
        }
        assert!(parallel, "no case crosses the parallel threshold");
    }

    #[test]
    fn masked_softmax_is_causal_and_windowed() {
        let s = Tensor::new(&[[[1f32, 2., 3.], [1., 2., 3.]]], &Device::Cpu).unwrap();
        let p = s
            .apply_op1_no_bwd(&MaskedSoftmax {
                scale: 1.0,
                softcap: None,
                n: 2,
                pos: 1,
                window: usize::MAX,
                sinks: None,
            })
            .unwrap();
        let p = p.to_vec3::<f32>().unwrap();
        assert_eq!(p[0][0][2], 0.0);
        assert!((p[0][0][0] + p[0][0][1] - 1.0).abs() < 1e-6);
        let full = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let e = full.exp().unwrap();
        let want = (e.clone() / e.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for j in 0..3 {
            assert!((p[0][1][j] - want[j]).abs() < 1e-6);
        }
        let w = s
            .apply_op1_no_bwd(&MaskedSoftmax {
                scale: 1.0,
                softcap: None,
                n: 2,
                pos: 1,
                window: 2,
                sinks: None,
            })
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(w[0][1][0], 0.0);
        assert!((w[0][1][1] + w[0][1][2] - 1.0).abs() < 1e-6);
    }
}
