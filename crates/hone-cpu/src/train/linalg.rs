//! Matrix products for training: a checked wrapper over `gemm` for strided f32 views, and the
//! backward of a matmul with a frozen weight (`dX = dY @ W`, no `dW`), dequantizing tiles of a
//! stored (quantized or half) weight as the forward does.

use std::cell::RefCell;

use crate::matmul::Weight;
use crate::parallel;

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// `rows x cols` values starting at `data[offset]`, rows `rs` apart (contiguous rows).
    pub fn strided(data: &'a [f32], offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        MatRef {
            data: &data[offset.min(data.len())..],
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (a view, nothing moves).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `start..start + n`.
    pub fn rows(self, start: usize, n: usize) -> Self {
        assert!(start + n <= self.rows, "rows out of range");
        MatRef {
            data: &self.data[(start * self.rs).min(self.data.len())..],
            rows: n,
            ..self
        }
    }

    /// Columns `start..start + n`.
    pub fn cols(self, start: usize, n: usize) -> Self {
        assert!(start + n <= self.cols, "columns out of range");
        MatRef {
            data: &self.data[(start * self.cs).min(self.data.len())..],
            cols: n,
            ..self
        }
    }

    /// One past the largest index read.
    fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }

    fn check(&self, what: &str) {
        assert!(
            self.span() <= self.data.len(),
            "{what}: a {}x{} view with strides ({}, {}) reads past {} values",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + alpha * a[m, k] @ b[k, n]`, `dst` rows `dst_rs` apart;
/// `parallel` uses every thread inside the product (leave it off inside parallel tasks).
pub fn gemm(
    dst: &mut [f32],
    dst_rs: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    parallel: bool,
) {
    let (m, n) = (a.rows, b.cols);
    assert!(n <= dst_rs || m <= 1, "destination rows overlap");
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * dst_rs + n,
        "destination too small"
    );
    // SAFETY: every element written (i * dst_rs + j, i < m, j < n) is inside `dst` (asserted),
    // which is borrowed exclusively, so nothing else reads or writes it.
    unsafe { gemm_raw(dst.as_mut_ptr(), dst_rs, a, b, alpha, accumulate, parallel) }
}

/// `gemm` into a raw destination, for parallel tasks writing disjoint parts of one buffer.
///
/// # Safety
/// `dst` must be valid for reads and writes at `i * dst_rs + j` for i < a.rows, j < b.cols, no
/// other thread may access those elements during the call, and they must not overlap `a` or `b`.
pub unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    parallel: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    a.check("lhs");
    b.check("rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i, columns 0..n, are the caller's promise.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0) };
            }
        }
        return;
    }
    let par = if parallel {
        parallel::gemm_parallelism()
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: reads of a and b stay within their slices (checked above); writes to dst are the
    // caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// `gemm` split by the caller across threads (each part single-threaded), along the longer of
/// the output's two sides: for the skinny products of LoRA (one side = rank), which `gemm`
/// itself runs on one thread.
pub fn gemm_split(
    dst: &mut [f32],
    dst_rs: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
) {
    let (m, n) = (a.rows, b.cols);
    let threads = parallel::threads();
    let side = m.max(n);
    let parts = (side / 64).clamp(1, 2 * threads);
    if threads == 1 || parts == 1 {
        gemm(dst, dst_rs, a, b, alpha, accumulate, false);
        return;
    }
    assert!(n <= dst_rs || m <= 1, "destination rows overlap");
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * dst_rs + n,
        "destination too small"
    );
    let per = side.div_ceil(parts);
    let shared = parallel::SharedMut::new(dst);
    parallel::for_each_index(side.div_ceil(per), |i| {
        let (start, len) = (i * per, per.min(side - i * per));
        if m >= n {
            let ptr = shared.ptr_at(start * dst_rs, (len - 1) * dst_rs + n);
            // SAFETY: part i alone writes rows start..start + len (checked by ptr_at), and the
            // destination does not overlap a or b (it was an exclusive borrow).
            unsafe { gemm_raw(ptr, dst_rs, a.rows(start, len), b, alpha, accumulate, false) };
        } else {
            let ptr = shared.ptr_at(start, (m - 1) * dst_rs + len);
            // SAFETY: part i alone writes columns start..start + len of every row.
            unsafe { gemm_raw(ptr, dst_rs, a, b.cols(start, len), alpha, accumulate, false) };
        }
    });
}

thread_local! {
    /// Dequantized tile of a stored weight for `matmul_backward`.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Values of W dequantized per tile in `matmul_backward` (8 MiB of f32): whole per-layer
/// weights of small models in one piece, the vocabulary head in a few.
const TILE_VALUES: usize = 1 << 21;

/// Backward of `out[m, n] = inp[m, k] @ W[n, k]^T (+ b)` for a frozen W:
/// `dinp[m, k] (+)= dout[m, n] @ W[n, k]`. No gradient for W or b.
pub fn matmul_backward(dinp: &mut [f32], dout: &[f32], w: &Weight, m: usize, accumulate: bool) {
    matmul_backward_tiles(dinp, dout, w, m, accumulate, TILE_VALUES);
}

/// `matmul_backward` with tiles of about `tile_values` values for stored weights.
fn matmul_backward_tiles(
    dinp: &mut [f32],
    dout: &[f32],
    w: &Weight,
    m: usize,
    accumulate: bool,
    tile_values: usize,
) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(dout.len(), m * n, "{}: dout is not [{m}, {n}]", w.name);
    assert_eq!(dinp.len(), m * k, "{}: dinp is not [{m}, {k}]", w.name);
    if let Some(wd) = w.dense() {
        gemm(
            dinp,
            k,
            MatRef::new(dout, m, n),
            MatRef::new(wd, n, k),
            1.0,
            accumulate,
            true,
        );
        return;
    }
    let tile_rows = (tile_values / k.max(1)).clamp(1, n.max(1));
    TILE.with(|cell| {
        let mut tile = cell.borrow_mut();
        let need = tile_rows * k;
        if tile.len() < need {
            tile.resize(need, 0.0);
        }
        let per_task = super::par::rows_per_task(tile_rows);
        for r0 in (0..n).step_by(tile_rows) {
            let nr = tile_rows.min(n - r0);
            let t = &mut tile[..nr * k];
            parallel::for_each_chunk(t, per_task * k, |c, rows| {
                w.rows_f32(r0 + c * per_task, rows);
            });
            gemm(
                dinp,
                k,
                MatRef::strided(dout, r0, m, nr, n),
                MatRef::new(t, nr, k),
                1.0,
                accumulate || r0 > 0,
                true,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, Lcg};
    use hone_core::{Bytes, DType, TensorEntry};

    #[test]
    fn gemm_handles_transposed_and_strided_views() {
        let mut rng = Lcg::new(11);
        let (m, k, n) = (5, 7, 3);
        let a = rng.vec(m * k, 1.0);
        let bt = rng.vec(n * k, 1.0); // b^T stored [n, k]
        let mut dst = vec![1f32; m * 4];
        gemm(
            &mut dst,
            4,
            MatRef::new(&a, m, k),
            MatRef::new(&bt, n, k).t(),
            0.5,
            true,
            false,
        );
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|kk| a[i * k + kk] * bt[j * k + kk]).sum();
                assert!((dst[i * 4 + j] - (1.0 + 0.5 * s)).abs() < 1e-5);
            }
            assert_eq!(dst[i * 4 + 3], 1.0, "column outside n was written");
        }
    }

    #[test]
    fn split_gemm_matches_the_whole_product_along_either_side() {
        let mut rng = Lcg::new(13);
        for &(m, k, n) in &[(300usize, 5usize, 7usize), (6, 9, 500), (130, 3, 129)] {
            let a = rng.vec(m * k, 1.0);
            let b = rng.vec(k * n, 1.0);
            let mut want = vec![0.5f32; m * n];
            gemm(
                &mut want,
                n,
                MatRef::new(&a, m, k),
                MatRef::new(&b, k, n),
                2.0,
                true,
                false,
            );
            let mut got = vec![0.5f32; m * n];
            gemm_split(
                &mut got,
                n,
                MatRef::new(&a, m, k),
                MatRef::new(&b, k, n),
                2.0,
                true,
            );
            assert_close(&got, &want, 1e-6, &format!("{m}x{k}x{n}"));
        }
    }

    #[test]
    fn matmul_backward_is_dout_times_w_for_dense_and_quantized_weights() {
        let mut rng = Lcg::new(12);
        for &(m, n, k) in &[(3usize, 5usize, 32usize), (17, 70, 64), (9, 300, 96)] {
            let wv = rng.vec(n * k, 1.0);
            let dense = TensorEntry::from_f32("w", vec![n, k], &wv).unwrap();
            // Q8_0 of the same values (block of 32: f16 scale + 32 int8).
            let mut q = Vec::new();
            for blk in wv.chunks(32) {
                let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
                let d = amax / 127.0;
                q.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                let d = half::f16::from_f32(d).to_f32();
                for &v in blk {
                    q.push((v / d).round().clamp(-127.0, 127.0) as i8 as u8);
                }
            }
            let quant =
                TensorEntry::new("wq", vec![n, k], DType::Q8_0, Bytes::from_vec(q)).unwrap();
            let dout = rng.vec(m * n, 1.0);
            for entry in [dense, quant] {
                let wf = entry.to_f32();
                let mut want = vec![0f32; m * k];
                for i in 0..m {
                    for kk in 0..k {
                        want[i * k + kk] = (0..n)
                            .map(|j| dout[i * n + j] as f64 * wf[j * k + kk] as f64)
                            .sum::<f64>() as f32;
                    }
                }
                let w = Weight::from_entry(&entry);
                let mut got = vec![f32::NAN; m * k];
                matmul_backward(&mut got, &dout, &w, m, false);
                assert_close(&got, &want, 1e-5, &format!("{} {m}x{n}x{k}", entry.name));
                // Several tiles, the last one partial.
                let mut got = vec![f32::NAN; m * k];
                matmul_backward_tiles(&mut got, &dout, &w, m, false, 3 * k);
                assert_close(
                    &got,
                    &want,
                    1e-5,
                    &format!("{} tiles {m}x{n}x{k}", entry.name),
                );
                let mut acc = vec![1f32; m * k];
                matmul_backward(&mut acc, &dout, &w, m, true);
                let want1: Vec<f32> = want.iter().map(|v| v + 1.0).collect();
                assert_close(&acc, &want1, 1e-5, "accumulate");
            }
        }
    }
}
