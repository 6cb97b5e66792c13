//! The fused, chunked language-model loss: final RMSNorm, the vocabulary head (`lm_head`, or
//! the embedding table when tied), log-softmax and negative log-likelihood, and their backward,
//! over chunks of rows so that the `[tokens, vocab]` logits never exist for the whole batch.
//! Only rows that carry a label are computed at all.

use super::linalg::{gemm, matmul_backward, MatRef};
use super::ops::{rmsnorm_backward, rmsnorm_forward};
use super::par::for_each_chunk_pair;
use super::vmath;
use crate::matmul::{matmul_forward, Weight};

pub use hone_core::engine::shifted_targets;

/// The `[vocab, hidden]` output weight: frozen (any stored type), or a trainable f32 copy
/// (`modules_to_save = ["lm_head"]`), row-major.
#[derive(Debug, Clone, Copy)]
pub enum HeadWeight<'a> {
    Frozen(&'a Weight),
    Trainable(&'a [f32]),
}

/// The model's head: final norm weight and epsilon, and the `[vocab, hidden]` output weight.
#[derive(Debug, Clone, Copy)]
pub struct LmHead<'a> {
    pub norm: &'a [f32],
    pub eps: f32,
    pub weight: HeadWeight<'a>,
}

impl LmHead<'_> {
    /// `logits[r, vocab] = xn[r, hidden] @ W^T`.
    fn logits(&self, logits: &mut [f32], xn: &[f32], r: usize) {
        match self.weight {
            HeadWeight::Frozen(w) => matmul_forward(logits, xn, w, None, r),
            HeadWeight::Trainable(w) => {
                let h = self.norm.len();
                let vocab = w.len() / h;
                gemm(
                    logits,
                    vocab,
                    MatRef::new(xn, r, h),
                    MatRef::new(w, vocab, h).t(),
                    1.0,
                    false,
                    true,
                );
            }
        }
    }

    /// `dxn[r, hidden] = dlogits[r, vocab] @ W`.
    fn backward(&self, dxn: &mut [f32], dlogits: &[f32], r: usize) {
        match self.weight {
            HeadWeight::Frozen(w) => matmul_backward(dxn, dlogits, w, r, false),
            HeadWeight::Trainable(w) => {
                let h = self.norm.len();
                let vocab = w.len() / h;
                gemm(
                    dxn,
                    h,
                    MatRef::new(dlogits, r, vocab),
                    MatRef::new(w, vocab, h),
                    1.0,
                    false,
                    true,
                );
            }
        }
    }

    /// `[vocab, hidden]`, checked against the norm's width.
    fn shape(&self) -> (usize, usize) {
        let h = self.norm.len();
        match self.weight {
            HeadWeight::Frozen(w) => {
                assert_eq!(w.cols, h, "{}: not [vocab, hidden]", w.name);
                (w.rows, h)
            }
            HeadWeight::Trainable(w) => {
                assert!(
                    h > 0 && w.len().is_multiple_of(h),
                    "lm_head copy: {} values are not [vocab, {h}]",
                    w.len()
                );
                (w.len() / h, h)
            }
        }
    }
}

/// Buffers of one chunk of rows, kept between calls (they grow only).
#[derive(Debug, Default)]
pub struct LossScratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    rstd: Vec<f32>,
    logits: Vec<f32>,
    nll: Vec<f64>,
    dxn: Vec<f32>,
    dx: Vec<f32>,
}

impl LossScratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.x.len()
            + self.xn.len()
            + self.rstd.len()
            + self.logits.len()
            + self.dxn.len()
            + self.dx.len())
            + 8 * self.nll.len()
    }
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Summed NLL of `targets` (row of `x [rows, hidden]`, label) through `head`, `chunk_rows` rows
/// at a time. With `grad = Some((dx, scale))`, also writes `dx [rows, hidden]` = the gradient of
/// `scale * nll_sum` with respect to `x` (zero on rows without a target), and, with `dhead`
/// (`[vocab, hidden]`, for a trainable head), adds the gradient of `scale * nll_sum` with
/// respect to the head's weight to it (`dlogits^T @ xn`, chunk by chunk).
pub fn cross_entropy(
    x: &[f32],
    targets: &[(usize, u32)],
    head: LmHead<'_>,
    chunk_rows: usize,
    mut grad: Option<(&mut [f32], f32)>,
    mut dhead: Option<&mut [f32]>,
    sc: &mut LossScratch,
) -> f64 {
    let (vocab, h) = head.shape();
    assert_eq!(x.len() % h, 0);
    if let Some(dw) = dhead.as_deref() {
        assert!(grad.is_some(), "a head gradient needs grad");
        assert_eq!(dw.len(), vocab * h, "head gradient is not [vocab, hidden]");
    }
    if let Some((dx, _)) = grad.as_mut() {
        assert_eq!(dx.len(), x.len());
        dx.fill(0.0);
    }
    let mut total = 0f64;
    for chunk in targets.chunks(chunk_rows.max(1)) {
        let r = chunk.len();
        let xg = grow(&mut sc.x, r * h);
        for (dst, &(row, _)) in xg.chunks_exact_mut(h).zip(chunk) {
            dst.copy_from_slice(&x[row * h..(row + 1) * h]);
        }
        let xn = grow(&mut sc.xn, r * h);
        let rstd = grow(&mut sc.rstd, r);
        rmsnorm_forward(xn, rstd, xg, head.norm, head.eps);
        let logits = grow(&mut sc.logits, r * vocab);
        head.logits(logits, xn, r);
        if sc.nll.len() < r {
            sc.nll.resize(r, 0.0);
        }
        let nll = &mut sc.nll[..r];
        let scale = grad.as_ref().map(|g| g.1);
        // Per row: one exp per logit, kept in place to become the gradient
        // `scale * (softmax - onehot)`.
        for_each_chunk_pair(logits, vocab, nll, 1, |i, row, nll| {
            let target = chunk[i].1 as usize;
            let target_logit = row[target];
            let max = vmath::max(row);
            let sum = vmath::exp_shifted_sum(row, max);
            nll[0] = max as f64 + sum.ln() - target_logit as f64;
            if let Some(scale) = scale {
                let k = (scale as f64 / sum) as f32;
                row.iter_mut().for_each(|v| *v *= k);
                row[target] -= scale;
            }
        });
        total += nll.iter().sum::<f64>();
        if let Some((dx, _)) = grad.as_mut() {
            let dxn = grow(&mut sc.dxn, r * h);
            head.backward(dxn, logits, r);
            if let Some(dw) = dhead.as_deref_mut() {
                // dW[vocab, hidden] += dlogits[r, vocab]^T @ xn[r, hidden] (measured as fast as
                // the logits product itself: the transposed view costs nothing here).
                gemm(
                    dw,
                    h,
                    MatRef::new(logits, r, vocab).t(),
                    MatRef::new(xn, r, h),
                    1.0,
                    true,
                    true,
                );
            }
            let dxg = grow(&mut sc.dx, r * h);
            dxg.fill(0.0);
            rmsnorm_backward(dxg, dxn, xg, rstd, head.norm);
            for (g, &(row, _)) in dxg.chunks_exact(h).zip(chunk) {
                dx[row * h..(row + 1) * h].copy_from_slice(g);
            }
        }
    }
    total
}
