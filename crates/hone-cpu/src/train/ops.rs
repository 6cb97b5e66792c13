//! Training ops, llm.c style: each backward beside the forward it differentiates, plain
//! functions over f32 slices with explicit shapes (row-major, rows = tokens, batch rows of
//! `seq` tokens one after another). The forwards that the inference path already has
//! (`crate::ops`) are reused; the ones here also save what their backward needs (RMSNorm's
//! reciprocal RMS, attention's log-sum-exp) or run over a whole batch of sequences.
//!
//! Frozen parameters (embedding table, norm weights, projection weights and biases) get no
//! gradient: the embedding needs no backward at all (its table is frozen and token ids are not
//! differentiable), RMSNorm's backward computes `dx` only, a matmul's backward only `dX`.

use std::cell::RefCell;

use super::linalg::{gemm, gemm_raw, MatRef};
use super::par::{for_each_chunk_pair, rows_per_task};
use super::vmath;
use crate::ops::{dot, rope_forward};
use crate::parallel::{self, SharedMut};

/// RMSNorm over rows of `c = weight.len()` as `crate::ops::rmsnorm_forward` (same operations in
/// the same order), also saving each row's `rstd = 1 / sqrt(mean(x^2) + eps)`.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], eps: f32) {
    let c = weight.len();
    assert_eq!(out.len(), inp.len());
    assert_eq!(inp.len(), rstd.len() * c);
    let rows = rows_per_task(rstd.len());
    for_each_chunk_pair(out, rows * c, rstd, rows, |i, out, rstd| {
        let inp = &inp[i * rows * c..];
        for ((o, x), r) in out
            .chunks_exact_mut(c)
            .zip(inp.chunks_exact(c))
            .zip(rstd.iter_mut())
        {
            let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let var = (ss / c as f64) as f32;
            *r = 1.0 / (var + eps).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(weight) {
                *o = (x * *r) * w;
            }
        }
    });
}

/// The output of `rmsnorm_forward` again from its input and saved `rstd` (bit-identical), for
/// backward passes that need the normalized input without having stored it.
pub fn rmsnorm_recompute(out: &mut [f32], rstd: &[f32], inp: &[f32], weight: &[f32]) {
    let c = weight.len();
    assert_eq!(out.len(), inp.len());
    assert_eq!(inp.len(), rstd.len() * c);
    let rows = rows_per_task(rstd.len());
    parallel::for_each_chunk(out, rows * c, |i, out| {
        let inp = &inp[i * rows * c..];
        let rstd = &rstd[i * rows..];
        for ((o, x), &r) in out.chunks_exact_mut(c).zip(inp.chunks_exact(c)).zip(rstd) {
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(weight) {
                *o = (x * r) * w;
            }
        }
    });
}

/// Backward of RMSNorm for `x` only (the weight is frozen):
/// `dinp += rstd * (g * w) - x * rstd^3 / c * sum(g * w * x)` per row, `g = dout`.
pub fn rmsnorm_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32], rstd: &[f32], weight: &[f32]) {
    let c = weight.len();
    assert_eq!(dinp.len(), inp.len());
    assert_eq!(dout.len(), inp.len());
    assert_eq!(inp.len(), rstd.len() * c);
    let rows = rows_per_task(rstd.len());
    parallel::for_each_chunk(dinp, rows * c, |i, dinp| {
        let start = i * rows;
        for (r, dx) in dinp.chunks_exact_mut(c).enumerate() {
            let row = start + r;
            let x = &inp[row * c..(row + 1) * c];
            let g = &dout[row * c..(row + 1) * c];
            let s = rstd[row];
            let dot: f64 = g
                .iter()
                .zip(weight)
                .zip(x)
                .map(|((&g, &w), &x)| (g * w) as f64 * x as f64)
                .sum();
            let k = (dot * (s as f64).powi(3) / c as f64) as f32;
            for (((dx, &g), &w), &x) in dx.iter_mut().zip(g).zip(weight).zip(x) {
                *dx += s * (g * w) - x * k;
            }
        }
    });
}

/// RoPE over a batch: `x` is `[batch * seq, n_heads * head_dim]`, each sequence starting at
/// position 0; `cos`/`sin` are `[seq, head_dim / 2]` tables (`crate::ops::rope_tables`).
pub fn rope_forward_batch(
    x: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    seq: usize,
    n_heads: usize,
    head_dim: usize,
) {
    let per_seq = seq * n_heads * head_dim;
    assert_eq!(x.len() % per_seq, 0);
    for s in x.chunks_exact_mut(per_seq) {
        rope_forward(s, cos, sin, n_heads, head_dim);
    }
}

/// Backward of RoPE in place on the gradient (the transpose of each 2x2 rotation):
/// `dx1 = dy1 cos + dy2 sin`, `dx2 = dy2 cos - dy1 sin`. Shapes as `rope_forward_batch`.
pub fn rope_backward(
    dx: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    seq: usize,
    n_heads: usize,
    head_dim: usize,
) {
    let half = head_dim / 2;
    let width = n_heads * head_dim;
    assert_eq!(dx.len() % (seq * width), 0);
    assert_eq!(cos.len(), seq * half);
    assert_eq!(sin.len(), seq * half);
    for (row_index, row) in dx.chunks_exact_mut(width).enumerate() {
        let p = row_index % seq;
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(head_dim) {
            let (d1, d2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (d1[i], d2[i]);
                d1[i] = a * c[i] + b * s[i];
                d2[i] = b * c[i] - a * s[i];
            }
        }
    }
}

/// Shapes of causal attention over a batch of whole sequences (no KV cache).
#[derive(Debug, Clone, Copy)]
pub struct SeqAttention {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl SeqAttention {
    fn dims(&self) -> (usize, usize, usize) {
        assert!(self.n_kv_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads));
        (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
            self.n_heads / self.n_kv_heads,
        )
    }
}

/// Query rows per block: keys beyond a block's last query are never touched, so causal
/// attention costs about (1 + BLOCK / seq) / 2 of the full square.
const QUERY_BLOCK: usize = 32;

thread_local! {
    /// Per-thread scores/probabilities and their gradient for one block of queries.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (a, b) = &mut *guard;
        if a.len() < len {
            a.resize(len, 0.0);
            b.resize(len, 0.0);
        }
        f(&mut a[..len], &mut b[..len])
    })
}

/// Causal grouped-query attention over `batch` sequences: `q [batch * seq, n_heads * hd]`
/// (rope applied), `k`, `v` `[batch * seq, n_kv_heads * hd]`; `out` like `q`; saves
/// `lse [batch, n_heads, seq]`, the log-sum-exp of each query's scaled scores, from which the
/// backward recomputes the probabilities. Query head h reads kv head h / (n_heads / n_kv_heads).
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: SeqAttention,
) {
    let (qd, kvd, group) = s.dims();
    let (t, hd, nh) = (s.seq, s.head_dim, s.n_heads);
    assert_eq!(q.len(), s.batch * t * qd);
    assert_eq!(out.len(), q.len());
    assert_eq!(k.len(), s.batch * t * kvd);
    assert_eq!(v.len(), k.len());
    assert_eq!(lse.len(), s.batch * nh * t);
    if t == 0 || hd == 0 {
        return;
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let out = SharedMut::new(out);
    parallel::for_each_chunk(lse, t, |task, lse| {
        let (b, h) = (task / nh, task % nh);
        let kvh = h / group;
        let qm = MatRef::strided(q, b * t * qd + h * hd, t, hd, qd);
        let km = MatRef::strided(k, b * t * kvd + kvh * hd, t, hd, kvd);
        let vm = MatRef::strided(v, b * t * kvd + kvh * hd, t, hd, kvd);
        let dst = out.ptr_at(b * t * qd + h * hd, (t - 1) * qd + hd);
        with_scratch(QUERY_BLOCK.min(t) * t, |scores, _| {
            for i0 in (0..t).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(t - i0);
                let nk = i0 + rows;
                let p = &mut scores[..rows * nk];
                gemm(
                    p,
                    nk,
                    qm.rows(i0, rows),
                    km.rows(0, nk).t(),
                    scale,
                    false,
                    false,
                );
                for (r, row) in p.chunks_exact_mut(nk).enumerate() {
                    let valid = i0 + r + 1;
                    let (live, masked) = row.split_at_mut(valid);
                    let max = vmath::max(live);
                    let sum = vmath::exp_shifted_sum(live, max) as f32;
                    let inv = 1.0 / sum;
                    live.iter_mut().for_each(|x| *x *= inv);
                    masked.fill(0.0);
                    lse[i0 + r] = max + sum.ln();
                }
                // SAFETY: task (b, h) alone writes rows b*t + i0.. of columns h*hd..(h+1)*hd
                // (ptr_at checked the whole range), and `out` is not read here.
                unsafe {
                    gemm_raw(
                        dst.add(i0 * qd),
                        qd,
                        MatRef::new(p, rows, nk),
                        vm.rows(0, nk),
                        1.0,
                        false,
                        false,
                    )
                };
            }
        });
    });
}

/// Backward of `attention_forward`: writes `dq` (like q) and `dk`, `dv` (like k, v) from
/// `dout` and the forward's inputs, output and `lse`. With `P` the probabilities:
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(dO * O))`, `dQ = scale dS K`,
/// `dK = scale dS^T Q`, summed over the query heads that share a kv head.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    s: SeqAttention,
) {
    let (qd, kvd, group) = s.dims();
    let (t, hd, nh, nkv) = (s.seq, s.head_dim, s.n_heads, s.n_kv_heads);
    assert_eq!(q.len(), s.batch * t * qd);
    for x in [&*dq, dout, out] {
        assert_eq!(x.len(), q.len());
    }
    assert_eq!(k.len(), s.batch * t * kvd);
    for x in [&*dk, &*dv, v] {
        assert_eq!(x.len(), k.len());
    }
    assert_eq!(lse.len(), s.batch * nh * t);
    dk.fill(0.0);
    dv.fill(0.0);
    if t == 0 || hd == 0 {
        return;
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let (dq, dk, dv) = (SharedMut::new(dq), SharedMut::new(dk), SharedMut::new(dv));
    // One task per (sequence, kv head): it owns that kv head's dk/dv columns and the dq columns
    // of its query heads, so no two tasks write the same element.
    parallel::for_each_index(s.batch * nkv, |task| {
        let (b, kvh) = (task / nkv, task % nkv);
        let kv_off = b * t * kvd + kvh * hd;
        let km = MatRef::strided(k, kv_off, t, hd, kvd);
        let vm = MatRef::strided(v, kv_off, t, hd, kvd);
        let dk_ptr = dk.ptr_at(kv_off, (t - 1) * kvd + hd);
        let dv_ptr = dv.ptr_at(kv_off, (t - 1) * kvd + hd);
        with_scratch(QUERY_BLOCK.min(t) * t, |pbuf, dpbuf| {
            for h in kvh * group..(kvh + 1) * group {
                let q_off = b * t * qd + h * hd;
                let qm = MatRef::strided(q, q_off, t, hd, qd);
                let dom = MatRef::strided(dout, q_off, t, hd, qd);
                let dq_ptr = dq.ptr_at(q_off, (t - 1) * qd + hd);
                let lse = &lse[(b * nh + h) * t..(b * nh + h + 1) * t];
                for i0 in (0..t).step_by(QUERY_BLOCK) {
                    let rows = QUERY_BLOCK.min(t - i0);
                    let nk = i0 + rows;
                    let p = &mut pbuf[..rows * nk];
                    let dp = &mut dpbuf[..rows * nk];
                    gemm(
                        p,
                        nk,
                        qm.rows(i0, rows),
                        km.rows(0, nk).t(),
                        scale,
                        false,
                        false,
                    );
                    gemm(
                        dp,
                        nk,
                        dom.rows(i0, rows),
                        vm.rows(0, nk).t(),
                        1.0,
                        false,
                        false,
                    );
                    for (r, (prow, dprow)) in p
                        .chunks_exact_mut(nk)
                        .zip(dp.chunks_exact_mut(nk))
                        .enumerate()
                    {
                        let i = i0 + r;
                        let valid = i + 1;
                        let d = dot(
                            &dout[q_off + i * qd..q_off + i * qd + hd],
                            &out[q_off + i * qd..q_off + i * qd + hd],
                        );
                        vmath::softmax_backward_row(
                            &mut prow[..valid],
                            &mut dprow[..valid],
                            lse[i],
                            d,
                        );
                        prow[valid..].fill(0.0);
                        dprow[valid..].fill(0.0);
                    }
                    let (p, ds) = (MatRef::new(p, rows, nk), MatRef::new(dp, rows, nk));
                    // SAFETY: this task alone owns kv head kvh's columns of dk/dv for sequence b
                    // and head h's columns of dq (ranges checked by ptr_at); none of them is
                    // read through another view here.
                    unsafe {
                        gemm_raw(dv_ptr, kvd, p.t(), dom.rows(i0, rows), 1.0, true, false);
                        gemm_raw(
                            dq_ptr.add(i0 * qd),
                            qd,
                            ds,
                            km.rows(0, nk),
                            scale,
                            false,
                            false,
                        );
                        gemm_raw(dk_ptr, kvd, ds.t(), qm.rows(i0, rows), scale, true, false);
                    }
                }
            }
        });
    });
}

/// SwiGLU into a separate output, `out = silu(gate) * up` (as `crate::ops::swiglu_forward`
/// up to the last bit of `exp`), keeping `gate` for the backward.
pub fn swiglu_forward_into(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert_eq!(out.len(), gate.len());
    assert_eq!(up.len(), gate.len());
    let chunk = out.len().div_ceil(4 * parallel::threads()).max(1024);
    parallel::for_each_chunk(out, chunk, |i, o| {
        let range = i * chunk..i * chunk + o.len();
        vmath::swiglu(o, &gate[range.clone()], &up[range]);
    });
}

/// Backward of `out = silu(gate) * up`: `dup = dout * silu(gate)`,
/// `dgate = dout * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)))`.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let n = gate.len();
    assert!(dgate.len() == n && dup.len() == n && dout.len() == n && up.len() == n);
    let chunk = n.div_ceil(4 * parallel::threads()).max(1024);
    for_each_chunk_pair(dgate, chunk, dup, chunk, |i, dg, du| {
        let range = i * chunk..i * chunk + dg.len();
        vmath::swiglu_backward(
            dg,
            du,
            &dout[range.clone()],
            &gate[range.clone()],
            &up[range],
        );
    });
}

/// Backward of the residual add `x += delta`: the gradient flows unchanged to both, so the
/// branch's gradient is added to the stream's: `dx += ddelta`.
pub fn residual_backward(dx: &mut [f32], ddelta: &[f32]) {
    assert_eq!(dx.len(), ddelta.len());
    for (d, &g) in dx.iter_mut().zip(ddelta) {
        *d += g;
    }
}
