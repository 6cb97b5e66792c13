//! SwiGLU, `out = silu(gate) * up`, and its backward; as `hone_cpu::train::ops::swiglu_*`.

use hone_core::Result;

use super::norm::{count, need};
use crate::recorder::{grid, Recorder};
use crate::View;

const FWD: &str = include_str!("../kernels/swiglu.wgsl");
const BWD: &str = include_str!("../kernels/swiglu_backward.wgsl");
const WG: usize = 256;

/// `out[i] = gate[i] / (1 + e^-gate[i]) * up[i]` for `i < n`.
pub fn swiglu_forward(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    gate: View<'_>,
    up: View<'_>,
    n: usize,
) -> Result<()> {
    const OP: &str = "swiglu_forward";
    count(OP, n, 1)?;
    need(OP, "out", &out, n)?;
    need(OP, "gate", &gate, n)?;
    need(OP, "up", &up, n)?;
    if n == 0 {
        return Ok(());
    }
    let k = rec.gpu().kernel("swiglu_forward", FWD, "")?;
    let (g, nx) = grid(rec.gpu(), n, WG)?;
    rec.dispatch(&k, &[n as u32, nx], &[out, gate, up], g);
    Ok(())
}

/// With `s = sigmoid(gate)`: `dup = dout * gate * s`, `dgate = dout * up * s * (1 + gate *
/// (1 - s))`, both overwritten.
pub fn swiglu_backward(
    rec: &mut Recorder<'_>,
    dgate: View<'_>,
    dup: View<'_>,
    dout: View<'_>,
    gate: View<'_>,
    up: View<'_>,
    n: usize,
) -> Result<()> {
    const OP: &str = "swiglu_backward";
    count(OP, n, 1)?;
    need(OP, "dgate", &dgate, n)?;
    need(OP, "dup", &dup, n)?;
    need(OP, "dout", &dout, n)?;
    need(OP, "gate", &gate, n)?;
    need(OP, "up", &up, n)?;
    if n == 0 {
        return Ok(());
    }
    let k = rec.gpu().kernel("swiglu_backward", BWD, "")?;
    let (g, nx) = grid(rec.gpu(), n, WG)?;
    rec.dispatch(&k, &[n as u32, nx], &[dgate, dup, dout, gate, up], g);
    Ok(())
}
