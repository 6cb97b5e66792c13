//! Causal grouped-query attention: the training forward (flash style, online softmax, saving
//! the log-sum-exp of each query's scaled scores), its backward (probabilities recomputed from
//! that log-sum-exp: a query-side kernel for dQ and rowsum(dO * O), a key-side kernel for dK and
//! dV; no atomics), and generation over a KV cache. No kernel ever holds a seq x seq matrix.
//!
//! Each invocation owns one query (or key) row of one head and keeps its head-dim vectors in
//! registers, reading the other side's rows straight from storage; the rows of one workgroup
//! share a head, so those reads are the same for all of them. On CPU-emulated adapters
//! (lavapipe) that beats shared-memory tiling; `Tiles` keeps the sizes in one place.

use hone_core::{Error, Result};

use crate::recorder::{f, grid, Recorder};
use crate::View;

const FWD: &str = include_str!("../kernels/attention_fwd.wgsl");
const BWD_DQ: &str = include_str!("../kernels/attention_bwd_dq.wgsl");
const BWD_DKV: &str = include_str!("../kernels/attention_bwd_dkv.wgsl");
const DECODE: &str = include_str!("../kernels/attention_decode.wgsl");

/// The largest head dimension the kernels are compiled for (each invocation keeps a few
/// head-dim vectors in private memory).
pub const MAX_HEAD_DIM: usize = 256;

/// Shapes of causal attention over a batch of whole sequences.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Work sizes: invocations per workgroup and query (key) rows per invocation, keys per
/// online-softmax block, and the invocations that split the keys of one decode query.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    rows: usize,
    qr: usize,
    key_block: usize,
    decode: usize,
}

thread_local! {
    static TILES: std::cell::Cell<Option<(usize, usize, usize)>> = const { std::cell::Cell::new(None) };
}

/// Test seam: on this thread, use `rows` invocations per workgroup, `qr` rows per invocation
/// and `key_block` keys per softmax block instead of the adapter's choice (`None` restores it),
/// so the sizes another kind of adapter would use can be checked here.
#[doc(hidden)]
pub fn override_tiles(t: Option<(usize, usize, usize)>) {
    TILES.with(|c| c.set(t));
}

fn tiles(rec: &Recorder<'_>, head_dim: usize) -> Tiles {
    let gpu = rec.gpu();
    // lavapipe runs 8 invocations as one SIMD loop and gathers every storage load made inside
    // a loop, so there each invocation takes several rows (every loaded key/query row is used
    // `qr` times) in small workgroups; real GPUs want many threads with few registers each.
    // lavapipe unrolls the head-dim x rows loops: qr 8 at head_dim 64 runs ~10% faster than 4
    // but takes ~80 s instead of ~25 s to compile the three training kernels.
    let (rows, qr) = if gpu.is_software() {
        (8, (256 / head_dim.max(1)).clamp(1, 4))
    } else {
        (64, if head_dim <= 32 { 2 } else { 1 })
    };
    // Decode keeps (head_dim + 2) floats per invocation in workgroup memory.
    let wg_mem = (gpu.limits().max_compute_workgroup_storage_size as usize).clamp(4096, 16384);
    let mut decode = 64;
    while decode > 1 && decode * (head_dim + 2) * 4 > wg_mem {
        decode /= 2;
    }
    let (rows, qr, key_block) = TILES
        .with(|c| c.get())
        .map(|(r, q, k)| (r.clamp(1, 256), q.clamp(1, 16), k.clamp(1, 64)))
        .unwrap_or((rows, qr, 8));
    Tiles {
        rows,
        qr,
        key_block,
        decode,
    }
}

fn err(msg: String) -> Error {
    Error::Gpu(format!("attention: {msg}"))
}

fn check_len(what: &str, v: &View<'_>, elems: usize) -> Result<()> {
    if v.size < elems as u64 * 4 {
        return Err(err(format!(
            "{what} holds {} f32 but needs {elems}",
            v.size / 4
        )));
    }
    Ok(())
}

/// Checks the head configuration; returns (query width, kv width, group size).
fn heads(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Result<(usize, usize, usize)> {
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(err(format!(
            "{n_heads} query heads cannot share {n_kv_heads} kv heads"
        )));
    }
    if head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(err(format!(
            "head_dim {head_dim} is outside 1..={MAX_HEAD_DIM}"
        )));
    }
    Ok((
        n_heads * head_dim,
        n_kv_heads * head_dim,
        n_heads / n_kv_heads,
    ))
}

/// Element counts of a training call: (q/out elements, k/v elements, lse elements), checked
/// against u32 indexing. `None` when there is nothing to do.
fn seq_sizes(s: &AttnShape) -> Result<Option<(usize, usize, usize, usize)>> {
    let (qd, kvd, group) = heads(s.n_heads, s.n_kv_heads, s.head_dim)?;
    let rows = s
        .batch
        .checked_mul(s.seq)
        .ok_or_else(|| err("size overflow".into()))?;
    if rows == 0 {
        return Ok(None);
    }
    let nq = rows
        .checked_mul(qd)
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or_else(|| err("too many elements for 32-bit indexing".into()))?;
    let nkv = rows * kvd;
    let nl = rows * s.n_heads;
    Ok(Some((nq, nkv, nl, group)))
}

fn defs(hd: usize, t: Tiles) -> String {
    format!(
        "const HD: u32 = {hd}u;\nconst WG: u32 = {}u;\nconst KB: u32 = {}u;\nconst QR: u32 = {}u;",
        t.rows, t.key_block, t.qr
    )
}

/// Causal GQA forward: `q`, `out` `[batch * seq, n_heads * hd]`, `k`, `v`
/// `[batch * seq, n_kv_heads * hd]`; writes `out` and `lse [batch, n_heads, seq]` (the
/// log-sum-exp of each query's scores scaled by 1/sqrt(hd)). Query head h reads kv head
/// h / (n_heads / n_kv_heads).
pub fn attention_forward(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    lse: View<'_>,
    q: View<'_>,
    k: View<'_>,
    v: View<'_>,
    s: AttnShape,
) -> Result<()> {
    let Some((nq, nkv, nl, group)) = seq_sizes(&s)? else {
        return Ok(());
    };
    check_len("out", &out, nq)?;
    check_len("lse", &lse, nl)?;
    check_len("q", &q, nq)?;
    check_len("k", &k, nkv)?;
    check_len("v", &v, nkv)?;
    let t = tiles(rec, s.head_dim);
    let kern = rec
        .gpu()
        .kernel("attention_fwd", FWD, &defs(s.head_dim, t))?;
    let nqb = s.seq.div_ceil(t.rows * t.qr);
    let n_groups = s.batch * s.n_heads * nqb;
    let (g, nx) = grid(rec.gpu(), n_groups, 1)?;
    let params = [
        s.seq as u32,
        s.n_heads as u32,
        s.n_kv_heads as u32,
        group as u32,
        f(1.0 / (s.head_dim as f32).sqrt()),
        nx,
        nqb as u32,
        n_groups as u32,
    ];
    rec.dispatch(&kern, &params, &[out, lse, q, k, v], g);
    Ok(())
}

/// Backward of `attention_forward`: writes (overwrites) `dq` (like q), `dk`, `dv` (like k, v)
/// from `dout` and the forward's inputs, output and `lse`. `scratch` has batch * n_heads * seq
/// f32 (for rowsum(dO * O) per query).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    rec: &mut Recorder<'_>,
    dq: View<'_>,
    dk: View<'_>,
    dv: View<'_>,
    dout: View<'_>,
    q: View<'_>,
    k: View<'_>,
    v: View<'_>,
    out: View<'_>,
    lse: View<'_>,
    scratch: View<'_>,
    s: AttnShape,
) -> Result<()> {
    let Some((nq, nkv, nl, group)) = seq_sizes(&s)? else {
        return Ok(());
    };
    for (what, view) in [("dq", &dq), ("dout", &dout), ("q", &q), ("out", &out)] {
        check_len(what, view, nq)?;
    }
    for (what, view) in [("dk", &dk), ("dv", &dv), ("k", &k), ("v", &v)] {
        check_len(what, view, nkv)?;
    }
    check_len("lse", &lse, nl)?;
    check_len("scratch", &scratch, nl)?;
    let t = tiles(rec, s.head_dim);
    let d = defs(s.head_dim, t);
    let scale = f(1.0 / (s.head_dim as f32).sqrt());
    let nb = s.seq.div_ceil(t.rows * t.qr);

    let kq = rec.gpu().kernel("attention_bwd_dq", BWD_DQ, &d)?;
    let n_groups = s.batch * s.n_heads * nb;
    let (g, nx) = grid(rec.gpu(), n_groups, 1)?;
    let params = [
        s.seq as u32,
        s.n_heads as u32,
        s.n_kv_heads as u32,
        group as u32,
        scale,
        nx,
        nb as u32,
        n_groups as u32,
    ];
    rec.dispatch(&kq, &params, &[dq, scratch, q, k, v, dout, out, lse], g);

    let kkv = rec.gpu().kernel("attention_bwd_dkv", BWD_DKV, &d)?;
    let n_groups = s.batch * s.n_kv_heads * nb;
    let (g, nx) = grid(rec.gpu(), n_groups, 1)?;
    let params = [
        s.seq as u32,
        s.n_heads as u32,
        s.n_kv_heads as u32,
        group as u32,
        scale,
        nx,
        nb as u32,
        n_groups as u32,
    ];
    rec.dispatch(&kkv, &params, &[dk, dv, q, k, v, dout, lse, scratch], g);
    Ok(())
}

/// Generation with a KV cache: `q [n_new, n_heads * hd]` for positions `pos0..pos0 + n_new`;
/// `k_cache`, `v_cache` `[max_len, n_kv_heads * hd]` already hold positions
/// `0..pos0 + n_new`; query i attends keys `0..=pos0 + i`. `out` like `q`.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    q: View<'_>,
    k_cache: View<'_>,
    v_cache: View<'_>,
    n_new: usize,
    pos0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<()> {
    let (qd, kvd, group) = heads(n_heads, n_kv_heads, head_dim)?;
    if n_new == 0 {
        return Ok(());
    }
    let nq = n_new
        .checked_mul(qd)
        .ok_or_else(|| err("size overflow".into()))?;
    let nkv = pos0
        .checked_add(n_new)
        .and_then(|n| n.checked_mul(kvd))
        .ok_or_else(|| err("size overflow".into()))?;
    if nq > u32::MAX as usize || nkv > u32::MAX as usize {
        return Err(err("too many elements for 32-bit indexing".into()));
    }
    check_len("out", &out, nq)?;
    check_len("q", &q, nq)?;
    check_len("k_cache", &k_cache, nkv)?;
    check_len("v_cache", &v_cache, nkv)?;
    let t = tiles(rec, head_dim);
    let defs = format!(
        "const HD: u32 = {head_dim}u;\nconst DW: u32 = {}u;",
        t.decode
    );
    let kern = rec.gpu().kernel("attention_decode", DECODE, &defs)?;
    let n_groups = n_new * n_heads;
    let (g, nx) = grid(rec.gpu(), n_groups, 1)?;
    let params = [
        n_new as u32,
        pos0 as u32,
        n_heads as u32,
        n_kv_heads as u32,
        group as u32,
        f(1.0 / (head_dim as f32).sqrt()),
        nx,
        0,
    ];
    rec.dispatch(&kern, &params, &[out, q, k_cache, v_cache], g);
    Ok(())
}
