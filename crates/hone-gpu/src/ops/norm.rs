//! RMSNorm forward (saving each row's `rstd`) and its backward for the input only (the norm
//! weight is frozen), one workgroup per row; as `hone_cpu::train::ops::rmsnorm_*`.
//!
//! Also the argument checks shared by this crate's norm/loss/optimizer/dropout ops: every
//! size is checked against the views before anything is recorded, so a wrong shape is an
//! `Error::Gpu`, never a panic or an out-of-bounds write.

use hone_core::{Error, Result};

use crate::recorder::{f, grid, Recorder};
use crate::View;

const FWD: &str = include_str!("../kernels/norm.wgsl");
const BWD: &str = include_str!("../kernels/norm_backward.wgsl");

/// Fails unless view `v` (argument `what` of `op`) holds at least `n` 4-byte values.
pub(crate) fn need(op: &str, what: &str, v: &View<'_>, n: usize) -> Result<()> {
    let have = v.size / 4;
    if (n as u64) > have {
        return Err(Error::Gpu(format!(
            "{op}: {what} holds {have} values, {n} needed"
        )));
    }
    Ok(())
}

/// `a * b` as a u32 element count (kernels index with u32), or an error naming `op`.
pub(crate) fn count(op: &str, a: usize, b: usize) -> Result<u32> {
    a.checked_mul(b)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n < u32::MAX / 2)
        .ok_or_else(|| {
            Error::Gpu(format!(
                "{op}: {a} x {b} values are too many for one dispatch"
            ))
        })
}

/// `out [rows, c] = (inp * rstd) * weight` with `rstd[row] = 1 / sqrt(mean(inp[row]^2) + eps)`,
/// saved for the backward.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    rstd: View<'_>,
    inp: View<'_>,
    weight: View<'_>,
    rows: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    const OP: &str = "rmsnorm_forward";
    if rows == 0 {
        return Ok(());
    }
    if c == 0 {
        return Err(Error::Gpu(format!("{OP}: rows of width 0")));
    }
    let total = count(OP, rows, c)? as usize;
    need(OP, "out", &out, total)?;
    need(OP, "inp", &inp, total)?;
    need(OP, "rstd", &rstd, rows)?;
    need(OP, "weight", &weight, c)?;
    let k = rec.gpu().kernel("rmsnorm_forward", FWD, "")?;
    let (g, nx) = grid(rec.gpu(), rows, 1)?;
    rec.dispatch(
        &k,
        &[rows as u32, c as u32, nx, f(eps)],
        &[out, rstd, inp, weight],
        g,
    );
    Ok(())
}

/// `dinp [rows, c]` (= or, with `accumulate`, +=) the gradient of RMSNorm with respect to its
/// input: `rstd * (dout * w) - inp * rstd^3 / c * sum(dout * w * inp)` per row.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    rec: &mut Recorder<'_>,
    dinp: View<'_>,
    dout: View<'_>,
    inp: View<'_>,
    rstd: View<'_>,
    weight: View<'_>,
    rows: usize,
    c: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "rmsnorm_backward";
    if rows == 0 {
        return Ok(());
    }
    if c == 0 {
        return Err(Error::Gpu(format!("{OP}: rows of width 0")));
    }
    let total = count(OP, rows, c)? as usize;
    need(OP, "dinp", &dinp, total)?;
    need(OP, "dout", &dout, total)?;
    need(OP, "inp", &inp, total)?;
    need(OP, "rstd", &rstd, rows)?;
    need(OP, "weight", &weight, c)?;
    let k = rec.gpu().kernel("rmsnorm_backward", BWD, "")?;
    let (g, nx) = grid(rec.gpu(), rows, 1)?;
    rec.dispatch(
        &k,
        &[rows as u32, c as u32, nx, accumulate as u32],
        &[dinp, dout, inp, rstd, weight],
        g,
    );
    Ok(())
}
