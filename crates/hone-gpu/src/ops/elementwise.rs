//! Elementwise kernels: `y = a*x + b*y` (axpby), residual adds, scaling.

use hone_core::Result;

use crate::recorder::{f, grid, Recorder};
use crate::View;

const SRC: &str = include_str!("../kernels/elementwise.wgsl");
const WG: usize = 256;

/// `y[i] = alpha * x[i] + beta * y[i]` for `i < n`.
pub fn axpby(
    rec: &mut Recorder<'_>,
    y: View<'_>,
    x: View<'_>,
    alpha: f32,
    beta: f32,
    n: usize,
) -> Result<()> {
    let k = rec.gpu().kernel("axpby", SRC, "")?;
    let (g, nx) = grid(rec.gpu(), n, WG)?;
    rec.dispatch(&k, &[n as u32, nx, f(alpha), f(beta)], &[y, x], g);
    Ok(())
}
