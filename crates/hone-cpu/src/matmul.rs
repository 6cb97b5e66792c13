//! `y[M,N] = x[M,K] @ W[N,K]^T (+ b)` for weights in any stored type.
//!
//! Quantized and half-precision weights stay in their stored form: a tile of rows is
//! dequantized into a per-thread scratch buffer and multiplied with `gemm`, tiles in parallel.
//! f32 weights (stored, or dequantized at load) go to `gemm` directly.

use std::cell::RefCell;
use std::sync::Arc;

use hone_core::TensorEntry;

use crate::{gemv, parallel};

/// A `[rows, cols]` weight matrix (`[out, in]`, as PyTorch stores a Linear weight).
#[derive(Debug, Clone)]
pub struct Weight {
    /// HF tensor name, for messages.
    pub name: String,
    /// Output features (N).
    pub rows: usize,
    /// Input features (K).
    pub cols: usize,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    /// Stored bytes (memory map or owned), dequantized tile by tile when used.
    Stored(TensorEntry),
    /// f32 values, row-major.
    Dense(Arc<[f32]>),
}

impl Weight {
    /// A weight over a 2-D tensor entry, kept in its stored type.
    pub fn from_entry(t: &TensorEntry) -> Weight {
        let (rows, cols) = (t.n_rows(), t.row_len());
        Weight {
            name: t.name.clone(),
            rows,
            cols,
            storage: Storage::Stored(t.clone()),
        }
    }

    /// The same weight converted to f32 once (memory: 4 bytes per value).
    pub fn to_dense(&self) -> Weight {
        match &self.storage {
            Storage::Dense(_) => self.clone(),
            Storage::Stored(t) => Weight {
                name: self.name.clone(),
                rows: self.rows,
                cols: self.cols,
                storage: Storage::Dense(t.to_f32().into()),
            },
        }
    }

    /// The weight's values as an f32 slice when they are stored as f32 (no copy).
    pub fn dense(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Dense(v) => Some(v),
            Storage::Stored(t) => f32_view(t),
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Dense(v) => v.len() * 4,
            Storage::Stored(t) => t.data.len(),
        }
    }

    /// Dequantize rows `[row_start, row_start + out.len() / cols)` into `out`.
    pub fn rows_f32(&self, row_start: usize, out: &mut [f32]) {
        match &self.storage {
            Storage::Dense(v) => {
                let start = row_start * self.cols;
                out.copy_from_slice(&v[start..start + out.len()]);
            }
            Storage::Stored(t) => match f32_view(t) {
                Some(v) => {
                    let start = row_start * self.cols;
                    out.copy_from_slice(&v[start..start + out.len()]);
                }
                None => t.dequantize_rows(row_start, out),
            },
        }
    }

    /// Force the tiled (dequantize-then-gemm) path even for f32 weights; for tests and
    /// benchmarks of that path.
    pub fn force_tiled(&self) -> TiledWeight<'_> {
        TiledWeight(self)
    }
}

/// A weight that `matmul_forward_tiled` multiplies through the dequantize-a-tile path.
pub struct TiledWeight<'a>(&'a Weight);

/// The bytes of an F32 entry viewed as f32 values, when they are suitably aligned.
fn f32_view(t: &TensorEntry) -> Option<&[f32]> {
    if t.dtype != hone_core::DType::F32 || cfg!(target_endian = "big") {
        return None;
    }
    let bytes = t.data.as_slice();
    if bytes.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0
        || !bytes.len().is_multiple_of(4)
    {
        return None;
    }
    // SAFETY: the pointer is aligned for f32, the length is a whole number of f32 values,
    // every bit pattern is a valid f32, the bytes are little-endian (checked above) and the
    // slice borrows `t`, which keeps the backing buffer alive and immutable.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4) })
}

/// Rows of W dequantized per tile: about 256 KiB of f32, a multiple of 16 rows.
fn tile_rows(cols: usize, m: usize) -> usize {
    let target = if m == 1 { 16 * 1024 } else { 64 * 1024 };
    ((target / cols.max(1)) / 16 * 16).clamp(16, 512)
}

/// `out[m, n] = inp[m, k] @ w[n, k]^T + bias[n]`.
pub fn matmul_forward(out: &mut [f32], inp: &[f32], w: &Weight, bias: Option<&[f32]>, m: usize) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(inp.len(), m * k, "{}: input is not [{m}, {k}]", w.name);
    assert_eq!(out.len(), m * n, "{}: output is not [{m}, {n}]", w.name);
    if m == 0 {
        return;
    }
    match (w.dense(), &w.storage) {
        (Some(wd), _) if m == 1 => gemv_dense(out, inp, wd, k),
        (Some(wd), _) => gemm_f32(out, n, inp, wd, m, n, k, true),
        (None, Storage::Stored(t)) if m == 1 && gemv::has_fused_kernel(t.dtype) => {
            gemv_stored(out, inp, t)
        }
        (None, _) => tiled(out, inp, w, m),
    }
    if let Some(b) = bias {
        add_bias_forward(out, b, m);
    }
}

/// `matmul_forward` through the dequantize-a-tile path whatever the weight's type.
pub fn matmul_forward_tiled(
    out: &mut [f32],
    inp: &[f32],
    w: TiledWeight<'_>,
    bias: Option<&[f32]>,
    m: usize,
) {
    let w = w.0;
    assert_eq!(
        inp.len(),
        m * w.cols,
        "{}: input is not [{m}, {}]",
        w.name,
        w.cols
    );
    assert_eq!(
        out.len(),
        m * w.rows,
        "{}: output is not [{m}, {}]",
        w.name,
        w.rows
    );
    if m == 0 {
        return;
    }
    tiled(out, inp, w, m);
    if let Some(b) = bias {
        add_bias_forward(out, b, m);
    }
}

/// `out[m, n] += bias[n]` for every row.
pub fn add_bias_forward(out: &mut [f32], bias: &[f32], m: usize) {
    let n = bias.len();
    assert_eq!(out.len(), m * n);
    for row in out.chunks_exact_mut(n) {
        for (o, b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// `dst[i, j] = sum_k x[i, k] * w[j, k]` for i < m, j < n, with `dst` rows `dst_stride` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    dst: &mut [f32],
    dst_stride: usize,
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert!(m == 0 || dst.len() >= (m - 1) * dst_stride + n);
    // SAFETY: dst is an exclusive borrow covering every element written (asserted).
    unsafe { gemm_f32_raw(dst.as_mut_ptr(), dst_stride, x, w, m, n, k, parallel) }
}

/// `gemm_f32` into a raw destination.
///
/// # Safety
/// `dst` must be valid for writes at `i * dst_stride + j` for i < m, j < n, and no one else may
/// access those elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32_raw(
    dst: *mut f32,
    dst_stride: usize,
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert!(x.len() >= m * k && w.len() >= n * k);
    let par = if parallel {
        parallel::gemm_parallelism()
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: reads of x (i, kk) at i * k + kk and of w^T (kk, j) at j * k + kk are in bounds
    // (asserted); writes to dst are the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Rows per parallel task of a matrix-vector product: a few tasks per thread.
fn gemv_chunk(n: usize) -> usize {
    n.div_ceil(4 * parallel::threads()).max(8)
}

/// `out[n] = w[n, k] @ x[k]` for f32 rows: row chunks in parallel.
fn gemv_dense(out: &mut [f32], x: &[f32], w: &[f32], k: usize) {
    let chunk = gemv_chunk(out.len());
    parallel::for_each_chunk(out, chunk, |ci, o| {
        let r0 = ci * chunk;
        gemv::gemv_f32(o, &w[r0 * k..(r0 + o.len()) * k], x);
    });
}

/// `out[n] = w[n, k] @ x[k]` with a fused dequantize-dot kernel on the stored bytes.
fn gemv_stored(out: &mut [f32], x: &[f32], t: &TensorEntry) {
    // Block sums of x (Q4_1's minimum term): on the stack for rows up to 8192 values.
    let n_blocks = x.len().div_ceil(32);
    let mut stack = [0f32; 256];
    let mut heap = Vec::new();
    let xsum: &[f32] = if n_blocks <= stack.len() {
        for (s, c) in stack.iter_mut().zip(x.chunks(32)) {
            *s = c.iter().sum();
        }
        &stack[..n_blocks]
    } else {
        gemv::block_sums(x, &mut heap);
        &heap
    };
    let rb = t.row_bytes();
    let bytes = t.data.as_slice();
    let chunk = gemv_chunk(out.len());
    parallel::for_each_chunk(out, chunk, |ci, o| {
        let r0 = ci * chunk;
        gemv::gemv_rows(t.dtype, o, &bytes[r0 * rb..(r0 + o.len()) * rb], x, xsum);
    });
}

thread_local! {
    /// Per-thread scratch for a dequantized tile of weight rows.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Tiles of W's rows, dequantized into per-thread scratch and multiplied, tiles in parallel.
fn tiled(out: &mut [f32], inp: &[f32], w: &Weight, m: usize) {
    let (n, k) = (w.rows, w.cols);
    let rows = tile_rows(k, m);
    let n_tiles = n.div_ceil(rows);
    let out_ptr = parallel::SharedMut::new(out);
    parallel::for_each_index(n_tiles, |t| {
        let r0 = t * rows;
        let nr = rows.min(n - r0);
        TILE.with(|cell| {
            let mut tile = cell.borrow_mut();
            if tile.len() < nr * k {
                tile.resize(nr * k, 0.0);
            }
            let tile = &mut tile[..nr * k];
            w.rows_f32(r0, tile);
            let dst = out_ptr.ptr_at(r0, (m - 1) * n + nr);
            // SAFETY: the range is checked by ptr_at; tile t writes only columns r0..r0+nr of
            // each output row and tiles are disjoint, so no two tasks write the same element.
            unsafe { gemm_f32_raw(dst, n, inp, tile, m, nr, k, false) };
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, Lcg};
    use hone_core::DType;

    fn naive(
        inp: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += inp[i * k + kk] as f64 * w[j * k + kk] as f64;
                }
                out[i * n + j] = s as f32 + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }

    #[test]
    fn matmul_matches_a_naive_product_for_every_path_and_odd_sizes() {
        let mut rng = Lcg::new(1);
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 37, 19),
            (3, 5, 7),
            (7, 600, 33),
            (1, 1100, 64),
            (130, 70, 96),
        ] {
            let x = rng.vec(m * k, 1.0);
            let wv = rng.vec(n * k, 1.0);
            let b = rng.vec(n, 1.0);
            let w = Weight::from_entry(&TensorEntry::from_f32("w", vec![n, k], &wv).unwrap());
            let want = naive(&x, &wv, Some(&b), m, n, k);
            let mut got = vec![f32::NAN; m * n];
            matmul_forward(&mut got, &x, &w, Some(&b), m);
            assert_close(&got, &want, 1e-5, &format!("direct {m}x{n}x{k}"));
            let mut got = vec![f32::NAN; m * n];
            matmul_forward_tiled(&mut got, &x, w.force_tiled(), Some(&b), m);
            assert_close(&got, &want, 1e-5, &format!("tiled {m}x{n}x{k}"));
            let mut got = vec![f32::NAN; m * n];
            matmul_forward(&mut got, &x, &w.to_dense(), Some(&b), m);
            assert_close(&got, &want, 1e-5, &format!("dense {m}x{n}x{k}"));
            let want = naive(&x, &wv, None, m, n, k);
            let mut got = vec![f32::NAN; m * n];
            matmul_forward(&mut got, &x, &w, None, m);
            assert_close(&got, &want, 1e-5, &format!("no bias {m}x{n}x{k}"));
        }
    }

    /// Random bytes of a `[n, k]` tensor of `dtype`, with every f16/bf16 field a small finite
    /// number (so that values are finite).
    fn random_tensor(dtype: DType, n: usize, k: usize, rng: &mut Lcg) -> TensorEntry {
        let vals = n * k;
        let half = |v: f32| half::f16::from_f32(v).to_le_bytes();
        let bytes: Vec<u8> = match dtype {
            DType::F32 => rng
                .vec(vals, 1.0)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DType::F16 => rng.vec(vals, 1.0).iter().flat_map(|&v| half(v)).collect(),
            DType::BF16 => rng
                .vec(vals, 1.0)
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            _ => {
                let (bs, ts) = (dtype.block_size(), dtype.type_size());
                let mut b: Vec<u8> = (0..vals / bs * ts)
                    .map(|_| ((rng.next(1.0) + 1.0) * 127.9) as u8)
                    .collect();
                let halves: &[usize] = match dtype {
                    DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
                    DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
                    DType::Q6K => &[208],
                    _ => unreachable!(),
                };
                for blk in b.chunks_exact_mut(ts) {
                    for &o in halves {
                        blk[o..o + 2].copy_from_slice(&half(rng.next(0.05)));
                    }
                }
                b
            }
        };
        TensorEntry::new("q", vec![n, k], dtype, hone_core::Bytes::from_vec(bytes)).unwrap()
    }

    #[test]
    fn every_stored_type_multiplies_like_its_dequantized_values() {
        let mut rng = Lcg::new(9);
        for dtype in DType::ALL {
            for &(m, n, k) in &[
                (1usize, 37usize, 256usize),
                (1, 130, 512),
                (3, 70, 256),
                (20, 301, 768),
            ] {
                let t = random_tensor(dtype, n, k, &mut rng);
                let wv = t.to_f32();
                assert!(wv.iter().all(|v| v.is_finite()), "{dtype}: bad test data");
                let x = rng.vec(m * k, 1.0);
                let want = naive(&x, &wv, None, m, n, k);
                let w = Weight::from_entry(&t);
                let mut got = vec![f32::NAN; m * n];
                matmul_forward(&mut got, &x, &w, None, m);
                assert_close(&got, &want, 1e-5, &format!("{dtype} {m}x{n}x{k}"));
                let mut got = vec![f32::NAN; m * n];
                matmul_forward_tiled(&mut got, &x, w.force_tiled(), None, m);
                assert_close(&got, &want, 1e-5, &format!("{dtype} tiled {m}x{n}x{k}"));
            }
        }
    }
}
