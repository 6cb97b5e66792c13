//! The LoRA path of an adapted linear layer, `y += scale * x @ A^T @ B^T` (x after dropout),
//! with A `[rank, in]` and B `[out, rank]` as PEFT stores them, as two products each with its
//! backward: `down` (`u = x @ A^T`) and `up` (`y += scale * u @ B^T`).
//!
//! Projections that read the same input (q/k/v, gate/up) can run `down` once with their A
//! matrices stacked (`[g * rank, in]`), which is why `u` and `du` are strided views: the block
//! of one projection inside the group's `[m, g * rank]` matrix.

use super::linalg::{gemm_split, MatRef};

/// Sizes of one LoRA product: `m` rows of `in_features` in, `out_features` out.
#[derive(Debug, Clone, Copy)]
pub struct LoraShape {
    pub m: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub rank: usize,
}

/// `u[m, rows] = x[m, in] @ a[rows, in]^T`, `u` rows `u_rs` apart (`a` may stack several A).
pub fn lora_down_forward(u: &mut [f32], u_rs: usize, x: &[f32], a: &[f32], m: usize, k: usize) {
    let rows = a.len() / k.max(1);
    assert_eq!(a.len(), rows * k);
    assert_eq!(x.len(), m * k);
    gemm_split(
        u,
        u_rs,
        MatRef::new(x, m, k),
        MatRef::new(a, rows, k).t(),
        1.0,
        false,
    );
}

/// Backward of `lora_down_forward`: `da (+)= du^T @ x` (added when `accumulate_da`) and
/// `dx (+)= du @ a` (added when `accumulate_dx`); `du` is `[m, rows]` with rows `du_rs` apart.
#[allow(clippy::too_many_arguments)]
pub fn lora_down_backward(
    da: &mut [f32],
    accumulate_da: bool,
    dx: &mut [f32],
    accumulate_dx: bool,
    du: &[f32],
    du_rs: usize,
    x: &[f32],
    a: &[f32],
    m: usize,
    k: usize,
) {
    let rows = a.len() / k.max(1);
    assert_eq!(a.len(), rows * k);
    assert_eq!(da.len(), a.len());
    assert_eq!(x.len(), m * k);
    assert_eq!(dx.len(), m * k);
    let du = MatRef::strided(du, 0, m, rows, du_rs);
    gemm_split(da, k, du.t(), MatRef::new(x, m, k), 1.0, accumulate_da);
    gemm_split(dx, k, du, MatRef::new(a, rows, k), 1.0, accumulate_dx);
}

/// `y[m, out] += scale * u[m, rank] @ b[out, rank]^T`, `u` rows `u_rs` apart.
pub fn lora_up_forward(y: &mut [f32], u: &[f32], u_rs: usize, b: &[f32], scale: f32, s: LoraShape) {
    let (m, n, r) = (s.m, s.out_features, s.rank);
    assert_eq!(y.len(), m * n);
    assert_eq!(b.len(), n * r);
    let u = MatRef::strided(u, 0, m, r, u_rs);
    gemm_split(y, n, u, MatRef::new(b, n, r).t(), scale, true);
}

/// Backward of `lora_up_forward`: `db += scale * dy^T @ u` and `du = scale * dy @ b` (written,
/// rows `du_rs` apart).
#[allow(clippy::too_many_arguments)]
pub fn lora_up_backward(
    db: &mut [f32],
    du: &mut [f32],
    du_rs: usize,
    dy: &[f32],
    u: &[f32],
    u_rs: usize,
    b: &[f32],
    scale: f32,
    s: LoraShape,
) {
    let (m, n, r) = (s.m, s.out_features, s.rank);
    assert_eq!(dy.len(), m * n);
    assert_eq!(b.len(), n * r);
    assert_eq!(db.len(), n * r);
    let dy = MatRef::new(dy, m, n);
    gemm_split(
        db,
        r,
        dy.t(),
        MatRef::strided(u, 0, m, r, u_rs),
        scale,
        true,
    );
    gemm_split(du, du_rs, dy, MatRef::new(b, n, r), scale, false);
}

/// The whole path for one projection: `u = x @ A^T` (saved for the backward), then
/// `y += scale * u @ B^T`.
pub fn lora_forward(
    y: &mut [f32],
    u: &mut [f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    scale: f32,
    s: LoraShape,
) {
    assert_eq!(u.len(), s.m * s.rank);
    assert_eq!(a.len(), s.rank * s.in_features);
    lora_down_forward(u, s.rank, x, a, s.m, s.in_features);
    lora_up_forward(y, u, s.rank, b, scale, s);
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
    assert_eq!(u.len(), s.m * s.rank);
    assert_eq!(du.len(), s.m * s.rank);
    lora_up_backward(db, du, s.rank, dy, u, s.rank, b, scale, s);
    lora_down_backward(
        da,
        true,
        dx,
        accumulate_dx,
        du,
        s.rank,
        x,
        a,
        s.m,
        s.in_features,
    );
}
