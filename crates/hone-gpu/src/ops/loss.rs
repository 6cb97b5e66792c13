//! The loss on the GPU: gathering the labelled rows, cross-entropy over rows of logits (the
//! NLL and, in place, its gradient), and the sum reduction that leaves the step's loss in one
//! value for the single read-back (the same reduction gives AdamW's gradient norm).

use hone_core::{Error, Result};

use super::norm::{count, need};
use crate::recorder::{f, grid, Recorder};
use crate::View;

const ROWS: &str = include_str!("../kernels/loss_rows.wgsl");
const XENT: &str = include_str!("../kernels/loss_xent.wgsl");
const REDUCE: &str = include_str!("../kernels/loss_reduce.wgsl");
const WG: usize = 256;
/// Values summed by one workgroup in the first level of a reduction.
const CHUNK: usize = 2048;

#[allow(clippy::too_many_arguments)]
fn rows_op(
    rec: &mut Recorder<'_>,
    op: &str,
    out: View<'_>,
    inp: View<'_>,
    idx: View<'_>,
    n_rows: usize,
    width: usize,
    mode: u32,
) -> Result<()> {
    let total = count(op, n_rows, width)? as usize;
    if total == 0 {
        return Ok(());
    }
    need(op, "idx", &idx, n_rows)?;
    // The indexed side may have any number of rows; indices past them are skipped.
    let (dense, indexed) = if mode == 0 {
        (&out, &inp)
    } else {
        (&inp, &out)
    };
    need(op, if mode == 0 { "out" } else { "inp" }, dense, total)?;
    let limit = (indexed.size / 4 / width as u64).min(u32::MAX as u64) as u32;
    let k = rec.gpu().kernel("loss_rows", ROWS, "")?;
    let (g, nx) = grid(rec.gpu(), total, WG)?;
    rec.dispatch(
        &k,
        &[total as u32, width as u32, nx, mode, limit],
        &[out, inp, idx],
        g,
    );
    Ok(())
}

/// `out[i, :] = inp[idx[i], :]` for `i < n_rows` (`idx` u32; rows of `width`). An index past
/// the rows `inp` holds leaves `out[i, :]` unwritten.
pub fn gather_rows(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    inp: View<'_>,
    idx: View<'_>,
    n_rows: usize,
    width: usize,
) -> Result<()> {
    rows_op(rec, "gather_rows", out, inp, idx, n_rows, width, 0)
}

/// `out[idx[i], :] = inp[i, :]` for `i < n_rows` (`idx` u32 and distinct; rows of `width`). An
/// index past the rows `out` holds is skipped; other rows of `out` are left as they were.
pub fn scatter_rows(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    inp: View<'_>,
    idx: View<'_>,
    n_rows: usize,
    width: usize,
) -> Result<()> {
    rows_op(rec, "scatter_rows", out, inp, idx, n_rows, width, 1)
}

/// Cross-entropy of `logits [rows, vocab]` against `targets` (u32): `nll[i] = logsumexp(row i)
/// - row_i[targets[i]]`. With `grad_scale = Some(s)` the logits become, in place,
/// `s * (softmax - onehot(target))` (as `hone_cpu::train::loss::cross_entropy` computes it).
/// One workgroup per row. A target at or past `vocab` gives `nll = NaN` (and no one-hot term).
pub fn cross_entropy_rows(
    rec: &mut Recorder<'_>,
    logits: View<'_>,
    nll: View<'_>,
    targets: View<'_>,
    rows: usize,
    vocab: usize,
    grad_scale: Option<f32>,
) -> Result<()> {
    const OP: &str = "cross_entropy_rows";
    if rows == 0 {
        return Ok(());
    }
    if vocab == 0 {
        return Err(Error::Gpu(format!("{OP}: a vocabulary of 0")));
    }
    let total = count(OP, rows, vocab)? as usize;
    need(OP, "logits", &logits, total)?;
    need(OP, "nll", &nll, rows)?;
    need(OP, "targets", &targets, rows)?;
    let k = rec.gpu().kernel("cross_entropy_rows", XENT, "")?;
    let (g, nx) = grid(rec.gpu(), rows, 1)?;
    rec.dispatch(
        &k,
        &[
            rows as u32,
            vocab as u32,
            nx,
            grad_scale.is_some() as u32,
            f(grad_scale.unwrap_or(0.0)),
        ],
        &[logits, nll, targets],
        g,
    );
    Ok(())
}

/// `out[0] = sum(x[0..n])` in f32 (`n = 0` gives 0). `scratch` takes the first level's partial
/// sums: at least `n.div_ceil(2048)` values when `n > 2048` (unused otherwise), so the
/// `n.div_ceil(256) + 64` that `adamw::grad_norm` asks for is always enough. It must not
/// overlap `out` or `x`.
pub fn sum(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    x: View<'_>,
    n: usize,
    scratch: View<'_>,
) -> Result<()> {
    reduce(rec, "sum", out, x, n, scratch, false)
}

/// `out[0] = sum(x[0..n])`, or `sqrt(sum(x^2))` with `squares`: a first level where each
/// workgroup sums `CHUNK` values into `scratch`, then one workgroup sums those.
pub(crate) fn reduce(
    rec: &mut Recorder<'_>,
    op: &str,
    out: View<'_>,
    x: View<'_>,
    n: usize,
    scratch: View<'_>,
    squares: bool,
) -> Result<()> {
    count(op, n, 1)?;
    need(op, "x", &x, n)?;
    need(op, "out", &out, 1)?;
    let k = rec.gpu().kernel("loss_reduce", REDUCE, "")?;
    let sq = squares as u32;
    if n <= CHUNK {
        let one = n.max(1) as u32;
        rec.dispatch(&k, &[n as u32, one, 1, 1, sq, sq], &[out, x], [1, 1, 1]);
        return Ok(());
    }
    let parts = n.div_ceil(CHUNK);
    need(op, "scratch", &scratch, parts)?;
    let (g, nx) = grid(rec.gpu(), parts, 1)?;
    rec.dispatch(
        &k,
        &[n as u32, CHUNK as u32, nx, parts as u32, sq, 0],
        &[scratch, x],
        g,
    );
    let p = parts as u32;
    rec.dispatch(&k, &[p, p, 1, 1, 0, sq], &[out, scratch], [1, 1, 1]);
    Ok(())
}
