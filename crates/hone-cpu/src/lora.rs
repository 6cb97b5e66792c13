//! LoRA on an inference linear layer, unmerged: `y = x @ W^T + b + scale * (x @ A^T) @ B^T`,
//! with A `[rank, in]` and B `[out, rank]` as PEFT stores them. The base weight stays as it was
//! loaded (quantized or not); the two thin products cost `m * rank * (in + out)` next to the
//! base matmul's `m * in * out`.

use std::cell::RefCell;

use hone_core::adapter::AdapterTensor;
use hone_core::{Error, Result};

use crate::{gemv, parallel};

/// The low-rank update of one linear layer.
#[derive(Debug, Clone)]
pub(crate) struct LoraDelta {
    /// A `[rank, in]`, row-major.
    a: Vec<f32>,
    /// B transposed, `[rank, out]`, row-major: the decode update is then `rank` contiguous
    /// axpys.
    b_t: Vec<f32>,
    rank: usize,
    in_features: usize,
    out_features: usize,
    scale: f32,
}

impl LoraDelta {
    /// The update of `module` (a `[out_features, in_features]` layer) from its A and B,
    /// checking their shapes and values; errors name the module.
    pub(crate) fn new(
        module: &str,
        a: &AdapterTensor,
        b: &AdapterTensor,
        scale: f32,
        in_features: usize,
        out_features: usize,
    ) -> Result<LoraDelta> {
        let rank = a.shape.first().copied().unwrap_or(0);
        if rank == 0 || a.shape != [rank, in_features] || b.shape != [out_features, rank] {
            return Err(Error::Invalid(format!(
                "LoRA of '{module}': A {:?} and B {:?} do not fit a layer of {in_features} in, \
                 {out_features} out (A must be [rank, {in_features}], B [{out_features}, rank])",
                a.shape, b.shape
            )));
        }
        if !scale.is_finite() {
            return Err(Error::Invalid(format!(
                "LoRA of '{module}': scale {scale} is not finite"
            )));
        }
        for (which, t) in [("lora_A", a), ("lora_B", b)] {
            if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!(
                    "LoRA of '{module}': {which} value {i} is {}",
                    t.values[i]
                )));
            }
        }
        let mut b_t = vec![0f32; rank * out_features];
        for (j, row) in b.values.chunks_exact(rank).enumerate() {
            for (q, &v) in row.iter().enumerate() {
                b_t[q * out_features + j] = v;
            }
        }
        Ok(LoraDelta {
            a: a.values.clone(),
            b_t,
            rank,
            in_features,
            out_features,
            scale,
        })
    }

    /// Bytes held by A and B.
    pub(crate) fn bytes(&self) -> usize {
        (self.a.len() + self.b_t.len()) * 4
    }

    /// `y[m, out] += scale * (x[m, in] @ A^T) @ B^T`.
    pub(crate) fn forward(&self, y: &mut [f32], x: &[f32], m: usize) {
        let (k, n, r) = (self.in_features, self.out_features, self.rank);
        assert_eq!(x.len(), m * k, "LoRA: input is not [{m}, {k}]");
        assert_eq!(y.len(), m * n, "LoRA: output is not [{m}, {n}]");
        if m == 0 {
            return;
        }
        if m == 1 {
            // Decode: `u = A x`, then `y += scale * u_q * B[:, q]` for each q; too small to be
            // worth threads.
            with_scratch(r, |u| {
                gemv::gemv_f32(u, &self.a, x);
                for (&uq, bq) in u.iter().zip(self.b_t.chunks_exact(n)) {
                    let c = self.scale * uq;
                    for (yj, &b) in y.iter_mut().zip(bq) {
                        *yj += c * b;
                    }
                }
            });
            return;
        }
        // Prefill: blocks of rows in parallel, both products of a block in one task (the
        // `[rows, rank]` intermediate stays in that thread's scratch).
        let parts = (m / 32).clamp(1, 2 * parallel::threads());
        let rows = m.div_ceil(parts);
        parallel::for_each_chunk(y, rows * n, |ci, y_rows| {
            let (r0, mr) = (ci * rows, y_rows.len() / n);
            let x_rows = &x[r0 * k..(r0 + mr) * k];
            with_scratch(mr * r, |u| {
                gemm_nt(u, x_rows, &self.a, mr, r, k);
                gemm_nn(y_rows, u, &self.b_t, mr, n, r, self.scale);
            });
        });
    }
}

thread_local! {
    /// Per-thread scratch for `x @ A^T` (`[rows, rank]`).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Call `f` with this thread's scratch, `len` values long (grown, never shrunk).
fn with_scratch(len: usize, f: impl FnOnce(&mut [f32])) {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len]);
    });
}

/// `dst[i, j] = sum_kk x[i, kk] * w[j, kk]` for `dst` `[m, n]`, `x` `[m, k]`, `w` `[n, k]`,
/// single-threaded.
fn gemm_nt(dst: &mut [f32], x: &[f32], w: &[f32], m: usize, n: usize, k: usize) {
    assert!(dst.len() == m * n && x.len() == m * k && w.len() == n * k);
    crate::matmul::gemm_f32(dst, n, x, w, m, n, k, false);
}

/// `dst[i, j] += scale * sum_q u[i, q] * w[q, j]` for `dst` `[m, n]`, `u` `[m, r]`, `w`
/// `[r, n]`, single-threaded.
fn gemm_nn(dst: &mut [f32], u: &[f32], w: &[f32], m: usize, n: usize, r: usize, scale: f32) {
    assert!(dst.len() == m * n && u.len() == m * r && w.len() == r * n);
    // SAFETY: dst (m x n, row stride n), u (m x r, row stride r) and w (r x n, row stride n)
    // lie within the slices (asserted); dst is an exclusive borrow, so it does not alias u or w.
    unsafe {
        gemm::gemm(
            m,
            n,
            r,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            u.as_ptr(),
            1,
            r as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, Lcg};

    /// `y + scale * x @ (B @ A)^T` in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        y: &[f32],
        x: &[f32],
        a: &[f32],
        b: &[f32],
        scale: f32,
        m: usize,
        k: usize,
        n: usize,
        r: usize,
    ) -> Vec<f32> {
        let mut out = y.to_vec();
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for q in 0..r {
                    let u: f64 = (0..k)
                        .map(|kk| x[i * k + kk] as f64 * a[q * k + kk] as f64)
                        .sum();
                    s += u * b[j * r + q] as f64;
                }
                out[i * n + j] += (scale as f64 * s) as f32;
            }
        }
        out
    }

    #[test]
    fn delta_adds_scaled_b_a_x_for_decode_and_prefill_sizes() {
        let mut rng = Lcg::new(3);
        for &(m, k, n, r) in &[
            (1, 7, 5, 1),
            (1, 64, 96, 8),
            (2, 33, 17, 3),
            (31, 40, 24, 4),
            (70, 64, 130, 8),
            (257, 48, 20, 16),
        ] {
            let a = AdapterTensor::new(vec![r, k], rng.vec(r * k, 1.0)).unwrap();
            let b = AdapterTensor::new(vec![n, r], rng.vec(n * r, 1.0)).unwrap();
            let d = LoraDelta::new("m", &a, &b, 0.75, k, n).unwrap();
            let x = rng.vec(m * k, 1.0);
            let y0 = rng.vec(m * n, 1.0);
            let want = naive(&y0, &x, &a.values, &b.values, 0.75, m, k, n, r);
            let mut got = y0.clone();
            d.forward(&mut got, &x, m);
            assert_close(&got, &want, 1e-5, &format!("{m}x{k}x{n} r{r}"));
        }
    }

    #[test]
    fn shapes_that_do_not_fit_the_layer_are_errors_naming_the_module() {
        let a = AdapterTensor::new(vec![2, 4], vec![0.0; 8]).unwrap();
        let b = AdapterTensor::new(vec![3, 2], vec![0.0; 6]).unwrap();
        assert!(LoraDelta::new("p", &a, &b, 1.0, 4, 3).is_ok());
        for (k, n) in [(5, 3), (4, 4)] {
            let e = LoraDelta::new("model.layers.0.mlp.up_proj", &a, &b, 1.0, k, n)
                .unwrap_err()
                .to_string();
            assert!(e.contains("model.layers.0.mlp.up_proj"), "{e}");
        }
        let nan = AdapterTensor::new(vec![3, 2], vec![0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]).unwrap();
        let e = LoraDelta::new("q", &a, &nan, 1.0, 4, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora_B") && e.contains("NaN"), "{e}");
    }
}
