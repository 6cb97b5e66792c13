//! Rotary position embedding (HF `rotate_half` layout) in place on `[rows, n_heads * head_dim]`
//! activations, forward and backward (the transposed rotation), against cos/sin tables
//! `[n_pos, head_dim / 2]` as `hone_cpu::ops::rope_tables` makes them.

use hone_core::{Error, Result};

use crate::recorder::{f, grid, Recorder};
use crate::View;

const SRC: &str = include_str!("../kernels/rope.wgsl");
const WG: usize = 256;

fn check(what: &str, v: &View<'_>, elems: usize) -> Result<()> {
    if v.size < elems as u64 * 4 {
        return Err(Error::Gpu(format!(
            "rope: {what} holds {} f32 but needs {elems}",
            v.size / 4
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn rope(
    rec: &mut Recorder<'_>,
    x: View<'_>,
    cos: View<'_>,
    sin: View<'_>,
    rows: usize,
    seq: usize,
    pos0: usize,
    n_heads: usize,
    head_dim: usize,
    sgn: f32,
) -> Result<()> {
    if !head_dim.is_multiple_of(2) {
        return Err(Error::Gpu(format!("rope: head_dim {head_dim} is odd")));
    }
    let half = head_dim / 2;
    let n = rows
        .checked_mul(n_heads)
        .and_then(|v| v.checked_mul(half))
        .ok_or_else(|| Error::Gpu("rope: size overflow".into()))?;
    if n == 0 {
        return Ok(());
    }
    if seq == 0 {
        return Err(Error::Gpu("rope: seq is 0 with rows > 0".into()));
    }
    // The largest position read: pos0 + min(rows, seq) - 1.
    let n_pos = pos0 + rows.min(seq);
    check("x", &x, n * 2)?;
    check("the cos table", &cos, n_pos * half)?;
    check("the sin table", &sin, n_pos * half)?;
    if n * 2 > u32::MAX as usize || n_pos * half > u32::MAX as usize {
        return Err(Error::Gpu(
            "rope: too many elements for one dispatch".into(),
        ));
    }
    let k = rec.gpu().kernel("rope", SRC, "")?;
    let (g, nx) = grid(rec.gpu(), n, WG)?;
    let params = [
        n as u32,
        nx,
        seq as u32,
        pos0 as u32,
        n_heads as u32,
        half as u32,
        f(sgn),
        0,
    ];
    rec.dispatch(&k, &params, &[x, cos, sin], g);
    Ok(())
}

/// RoPE in place: `x` is `[rows, n_heads * head_dim]` row-major, row r at position
/// `pos0 + r % seq`; `cos`/`sin` are `[n_pos, head_dim / 2]` tables covering those positions.
#[allow(clippy::too_many_arguments)]
pub fn rope_forward(
    rec: &mut Recorder<'_>,
    x: View<'_>,
    cos: View<'_>,
    sin: View<'_>,
    rows: usize,
    seq: usize,
    pos0: usize,
    n_heads: usize,
    head_dim: usize,
) -> Result<()> {
    rope(rec, x, cos, sin, rows, seq, pos0, n_heads, head_dim, 1.0)
}

/// Backward of `rope_forward` in place on the gradient (the transposed rotation), row r at
/// position `r % seq`.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    rec: &mut Recorder<'_>,
    dx: View<'_>,
    cos: View<'_>,
    sin: View<'_>,
    rows: usize,
    seq: usize,
    n_heads: usize,
    head_dim: usize,
) -> Result<()> {
    rope(rec, dx, cos, sin, rows, seq, 0, n_heads, head_dim, -1.0)
}
