//! The LoRA path of an adapted linear layer, `y += scale * x @ A^T @ B^T` (x after dropout),
//! with A `[rank, in]` and B `[out, rank]` as PEFT stores them, and its backward: `dA`, `dB`
//! (accumulated) and `dx`.

use super::linalg::{gemm, MatRef};

/// Sizes of one LoRA product: `m` rows of `in_features` in, `out_features` out.
#[derive(Debug, Clone, Copy)]
pub struct LoraShape {
    pub m: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub rank: usize,
}

/// `u[m, rank] = x[m, in] @ A^T` (saved for the backward), then `y[m, out] += scale * u @ B^T`.
pub fn lora_forward(
    y: &mut [f32],
    u: &mut [f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    scale: f32,
    s: LoraShape,
) {
    let LoraShape {
        m,
        in_features: k,
        out_features: n,
        rank: r,
    } = s;
    assert_eq!(x.len(), m * k);
    assert_eq!(y.len(), m * n);
    assert_eq!(u.len(), m * r);
    assert_eq!(a.len(), r * k);
    assert_eq!(b.len(), n * r);
    gemm(u, r, MatRef::new(x, m, k), MatRef::new(a, r, k).t(), 1.0, false, true);
    gemm(y, n, MatRef::new(u, m, r), MatRef::new(b, n, r).t(), scale, true, true);
}

/// Backward of `lora_forward` given `dy [m, out]`, its input `x` and saved `u`:
/// `dB += scale * dy^T @ u`, `du = scale * dy @ B` (into `du`, scratch `[m, rank]`),
/// `dA += du^T @ x`, and `dx (+)= du @ A` (added when `accumulate_dx`).
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dx: &mut [f32],
    accumulate_dx: bool,
    da: &mut [f32],
    db: &mut [f32],
    du: &mut [f32],
    dy: &[f32],
    x: &[f32],
    u: &[f32],
    a: &[f32],
    b: &[f32],
    scale: f32,
    s: LoraShape,
) {
    let LoraShape {
        m,
        in_features: k,
        out_features: n,
        rank: r,
    } = s;
    assert_eq!(dx.len(), m * k);
    assert_eq!(x.len(), m * k);
    assert_eq!(dy.len(), m * n);
    assert_eq!(u.len(), m * r);
    assert_eq!(du.len(), m * r);
    assert_eq!(a.len(), r * k);
    assert_eq!(da.len(), r * k);
    assert_eq!(b.len(), n * r);
    assert_eq!(db.len(), n * r);
    let dy_m = MatRef::new(dy, m, n);
    gemm(db, r, dy_m.t(), MatRef::new(u, m, r), scale, true, true);
    gemm(du, r, dy_m, MatRef::new(b, n, r), scale, false, true);
    let du_m = MatRef::new(du, m, r);
    gemm(da, k, du_m.t(), MatRef::new(x, m, k), 1.0, true, true);
    gemm(dx, k, du_m, MatRef::new(a, r, k), 1.0, accumulate_dx, true);
}
