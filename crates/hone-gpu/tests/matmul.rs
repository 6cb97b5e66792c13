//! Products and the embedding gather against the CPU engine, on random inputs, every weight
//! type, odd sizes, accumulate and bias, weights split into parts, and gemm in all four
//! transpose combinations.
//!
//! Tolerances are relative to the largest |value| of the reference: the GPU and the CPU add
//! the same products in different orders (and the GPU may fuse multiply-adds), so results
//! differ by a few f32 rounding errors per term: 1e-5 x sqrt(terms) is far above that and far
//! below any indexing or dequantization mistake (those give errors of order 1).

// The f16 tests run natively only (the browser's SwiftShader has no shader-f16): their helpers
// and imports are unused in the browser build.
#![cfg_attr(target_arch = "wasm32", allow(unused_imports, dead_code))]

use half::{bf16, f16};
use hone_core::{Bytes, DType, TensorEntry};
use hone_cpu::matmul::{matmul_forward, Weight};
use hone_cpu::train::linalg::matmul_backward;
use hone_gpu::ops::matmul::{
    embedding, gemm, gemm_prec, linear_backward_input, linear_backward_input_prec, linear_forward,
    linear_forward_prec, Gemm, GpuWeight, Precision,
};
use hone_gpu::{Arena, Gpu, GpuOptions, Recorder};

mod common;
use common::{gpu, read};

/// xorshift64*: small and deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

/// A `[rows, cols]` tensor of `dtype` with random values: random quants with sane f16 scales
/// for the block types.
fn random_tensor(rng: &mut Rng, name: &str, dtype: DType, rows: usize, cols: usize) -> TensorEntry {
    let n = rows * cols;
    let bytes: Vec<u8> = match dtype {
        DType::F32 => rng.vec(n).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.f()).to_le_bytes())
            .collect(),
        DType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(rng.f()).to_le_bytes())
            .collect(),
        _ => {
            let (bs, ts) = (dtype.block_size(), dtype.type_size());
            let mut out = Vec::with_capacity(n / bs * ts);
            for _ in 0..n / bs {
                let mut b = rng.bytes(ts);
                let put = |b: &mut Vec<u8>, at: usize, v: f32| {
                    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes())
                };
                let d = 0.002 + 0.02 * rng.f().abs();
                let m = 0.05 * rng.f();
                match dtype {
                    DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => put(&mut b, 0, d),
                    DType::Q4_1 | DType::Q5_1 => {
                        put(&mut b, 0, d);
                        put(&mut b, 2, m);
                    }
                    DType::Q4K | DType::Q5K => {
                        put(&mut b, 0, d / 8.0);
                        put(&mut b, 2, m.abs() / 8.0);
                    }
                    DType::Q6K => put(&mut b, 208, d / 8.0),
                    _ => unreachable!(),
                }
                out.extend_from_slice(&b);
            }
            out
        }
    };
    TensorEntry::new(name, vec![rows, cols], dtype, Bytes::from_vec(bytes)).unwrap()
}

/// Columns for a type: odd for floats, whole (super-)blocks otherwise.
fn cols_for(dtype: DType) -> usize {
    match dtype.block_size() {
        1 => 75,
        32 => 96,
        _ => 512,
    }
}

/// max |got - want| / max |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-30);
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want) {
        let e = (g - w).abs();
        assert!(e.is_finite(), "non-finite result {g} (want {w})");
        worst = worst.max(e);
    }
    worst / scale
}

fn check(what: &str, got: &[f32], want: &[f32], terms: usize) {
    let tol = 1e-5 * (terms as f32).sqrt().max(4.0);
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// Forward and backward through the GPU for one weight, checked against the CPU engine.
async fn forward_backward_case(
    gpu: &Gpu,
    rng: &mut Rng,
    t: &TensorEntry,
    gw: &GpuWeight,
    m: usize,
) {
    let (n, k) = (t.shape[0], t.shape[1]);
    let cw = Weight::from_entry(t);
    let x = rng.vec(m * k);
    let bias = rng.vec(n);
    let y0 = rng.vec(m * n);
    let dy = rng.vec(m * n);
    let dx0 = rng.vec(m * k);
    let arena = Arena::new(gpu);
    let xb = gpu.upload_f32("x", &x).unwrap();
    let bb = gpu.upload_f32("bias", &bias).unwrap();
    let dyb = gpu.upload_f32("dy", &dy).unwrap();
    for (with_bias, acc) in [(false, false), (true, false), (false, true), (true, true)] {
        let yb = gpu.upload_f32("y", &y0).unwrap();
        let mut rec = Recorder::new(gpu, &arena);
        let b = with_bias.then(|| bb.view());
        linear_forward(&mut rec, yb.view(), xb.view(), gw, b, m, acc).unwrap();
        rec.finish().unwrap();
        let got = read(gpu, &yb).await;
        let mut want = vec![0f32; m * n];
        matmul_forward(&mut want, &x, &cw, with_bias.then_some(&bias[..]), m);
        if acc {
            for (w, y) in want.iter_mut().zip(&y0) {
                *w += y;
            }
        }
        let what = format!(
            "{} {} forward m={m} bias={with_bias} acc={acc}",
            t.name, t.dtype
        );
        check(&what, &got, &want, k);

        let dxb = gpu.upload_f32("dx", &dx0).unwrap();
        let mut rec = Recorder::new(gpu, &arena);
        linear_backward_input(&mut rec, dxb.view(), dyb.view(), gw, m, acc).unwrap();
        rec.finish().unwrap();
        let got = read(gpu, &dxb).await;
        let mut want = dx0.clone();
        matmul_backward(&mut want, &dy, &cw, m, acc);
        let what = format!("{} {} backward m={m} acc={acc}", t.name, t.dtype);
        check(&what, &got, &want, n);
    }
}

gpu_test!(
    async fn linear_forward_and_backward_every_type() {
        let gpu = gpu().await;
        eprintln!("adapter: {}", gpu.describe());
        let mut rng = Rng::new(1);
        for dtype in DType::ALL {
            let (n, k) = (45, cols_for(dtype));
            let t = random_tensor(&mut rng, "w", dtype, n, k);
            let gw = GpuWeight::upload(&gpu, &t).unwrap();
            assert_eq!((gw.rows, gw.cols, gw.dtype), (n, k, dtype));
            assert_eq!(gw.n_parts(), 1);
            assert!(gw.bytes() >= t.data.len() as u64);
            for m in [1, 37] {
                forward_backward_case(&gpu, &mut rng, &t, &gw, m).await;
            }
        }
    }
);

gpu_test!(
    async fn linear_main_shapes() {
        let gpu = gpu().await;
        let mut rng = Rng::new(2);
        for (dtype, n, k) in [
            (DType::Q4_1, 192, 576),
            (DType::Q8_0, 576, 1536),
            (DType::F32, 200, 576),
            (DType::Q4K, 64, 1536),
        ] {
            let t = random_tensor(&mut rng, "w", dtype, n, k);
            let gw = GpuWeight::upload(&gpu, &t).unwrap();
            forward_backward_case(&gpu, &mut rng, &t, &gw, 67).await;
        }
    }
);

gpu_test!(
    async fn from_f32_matches_an_f32_entry() {
        let gpu = gpu().await;
        let mut rng = Rng::new(3);
        let (n, k) = (13, 7);
        let v = rng.vec(n * k);
        let t = TensorEntry::from_f32("w", vec![n, k], &v).unwrap();
        let gw = GpuWeight::from_f32(&gpu, "w", n, k, &v).unwrap();
        assert_eq!(gw.bytes(), (n * k * 4) as u64);
        forward_backward_case(&gpu, &mut rng, &t, &gw, 9).await;
        assert!(GpuWeight::from_f32(&gpu, "w", n, k + 1, &v).is_err());
    }
);

gpu_test!(
    async fn weights_split_into_parts() {
        let gpu = gpu().await;
        let mut rng = Rng::new(4);
        for (dtype, n, k) in [
            (DType::Q8_0, 61, 64),
            (DType::F16, 50, 33),
            (DType::Q6K, 21, 256),
            (DType::Q4_1, 30, 96),
        ] {
            let t = random_tensor(&mut rng, "split", dtype, n, k);
            // About a fifth of the rows per part, not dividing the rows evenly.
            let max = (t.row_bytes() * (n / 5 + 1)) as u64 + 3;
            let gw = GpuWeight::upload_with_max_part(&gpu, &t, max).unwrap();
            assert!(gw.n_parts() >= 4, "{dtype}: {} parts", gw.n_parts());
            forward_backward_case(&gpu, &mut rng, &t, &gw, 19).await;
            embedding_case(&gpu, &mut rng, &t, &gw).await;
        }
        // A row larger than a part is an error naming the tensor.
        let t = random_tensor(&mut rng, "wide", DType::Q8_0, 4, 64);
        let e = GpuWeight::upload_with_max_part(&gpu, &t, 60).unwrap_err();
        assert!(e.to_string().contains("wide"), "{e}");
    }
);

async fn embedding_case(gpu: &Gpu, rng: &mut Rng, t: &TensorEntry, gw: &GpuWeight) {
    let (rows, k) = (t.shape[0], t.shape[1]);
    let n_tokens = 29;
    let mut ids: Vec<u32> = (0..n_tokens)
        .map(|_| (rng.u64() % rows as u64) as u32)
        .collect();
    ids[0] = 0;
    ids[1] = rows as u32 - 1;
    ids[5] = rows as u32; // out of range: zeros
    ids[6] = u32::MAX;
    let idb = gpu.upload_u32("ids", &ids).unwrap();
    let outb = gpu
        .upload_f32("out", &vec![f32::NAN; n_tokens * k])
        .unwrap();
    let arena = Arena::new(gpu);
    let mut rec = Recorder::new(gpu, &arena);
    embedding(&mut rec, outb.view(), idb.view(), gw, n_tokens).unwrap();
    rec.finish().unwrap();
    let got = read(gpu, &outb).await;
    let cw = Weight::from_entry(t);
    let mut want = vec![0f32; n_tokens * k];
    for (tok, &id) in ids.iter().enumerate() {
        if (id as usize) < rows {
            hone_cpu::ops::embedding_forward(&mut want[tok * k..(tok + 1) * k], &[id], &cw);
        }
    }
    // Dequantization is exact up to a possibly fused d * q + m: 1e-6 relative.
    let e = rel_err(&got, &want);
    assert!(
        e <= 1e-6,
        "{} {} embedding: relative error {e:e}",
        t.name,
        t.dtype
    );
}

gpu_test!(
    async fn embedding_every_type() {
        let gpu = gpu().await;
        let mut rng = Rng::new(5);
        for dtype in DType::ALL {
            let k = if dtype.block_size() == 1 {
                37
            } else {
                cols_for(dtype)
            };
            let t = random_tensor(&mut rng, "embed", dtype, 23, k);
            let gw = GpuWeight::upload(&gpu, &t).unwrap();
            embedding_case(&gpu, &mut rng, &t, &gw).await;
        }
    }
);

/// Naive reference of `gemm`, in f64.
#[allow(clippy::too_many_arguments)]
fn gemm_ref(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm, alpha: f32, beta: f32) {
    for i in 0..g.m {
        for j in 0..g.n {
            let mut s = 0f64;
            for q in 0..g.k {
                let av = if g.trans_a {
                    a[q * g.m + i]
                } else {
                    a[i * g.k + q]
                };
                let bv = if g.trans_b {
                    b[j * g.k + q]
                } else {
                    b[q * g.n + j]
                };
                s += av as f64 * bv as f64;
            }
            let o = i * g.n + j;
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[o] as f64
            };
            c[o] = (alpha as f64 * s + old) as f32;
        }
    }
}

gpu_test!(
    async fn gemm_all_transposes_alpha_beta() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(6);
        let shapes = [
            (13, 11, 7),
            (1, 9, 30),
            (37, 8, 75),
            (8, 67, 101),
            // LoRA: x·A, the rank-8 gradient reductions over the tokens.
            (100, 8, 576),
            (8, 576, 1024),
        ];
        for (m, n, k) in shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                    let g = Gemm {
                        m,
                        n,
                        k,
                        trans_a,
                        trans_b,
                    };
                    let a = rng.vec(m * k);
                    let b = rng.vec(k * n);
                    // beta = 0 must ignore C: start from NaN.
                    let c0: Vec<f32> = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        rng.vec(m * n)
                    };
                    let (ab, bb) = (
                        gpu.upload_f32("a", &a).unwrap(),
                        gpu.upload_f32("b", &b).unwrap(),
                    );
                    let cb = gpu.upload_f32("c", &c0).unwrap();
                    let mut rec = Recorder::new(&gpu, &arena);
                    gemm(&mut rec, cb.view(), ab.view(), bb.view(), g, alpha, beta).unwrap();
                    rec.finish().unwrap();
                    let got = read(&gpu, &cb).await;
                    let mut want = c0.clone();
                    gemm_ref(&mut want, &a, &b, g, alpha, beta);
                    check(
                        &format!("gemm {g:?} alpha={alpha} beta={beta}"),
                        &got,
                        &want,
                        k,
                    );
                }
            }
        }
    }
);

gpu_test!(
    async fn bad_arguments_are_errors_naming_the_tensor() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(7);
        let t = random_tensor(&mut rng, "blk.0.attn_q", DType::Q4_0, 8, 64);
        let gw = GpuWeight::upload(&gpu, &t).unwrap();
        let small = gpu.zeros("small", 10).unwrap();
        let big = gpu.zeros("big", 4096).unwrap();
        let mut rec = Recorder::new(&gpu, &arena);
        let e =
            linear_forward(&mut rec, big.view(), small.view(), &gw, None, 4, false).unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_q"), "{e}");
        let e =
            linear_backward_input(&mut rec, small.view(), big.view(), &gw, 4, false).unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_q"), "{e}");
        let e = embedding(&mut rec, small.view(), big.view(), &gw, 4).unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_q"), "{e}");
        let g = Gemm {
            m: 4,
            n: 4,
            k: 4,
            trans_a: false,
            trans_b: false,
        };
        let sixteen = gpu.zeros("sixteen", 16).unwrap();
        assert!(gemm(
            &mut rec,
            big.view(),
            sixteen.view(),
            sixteen.view(),
            g,
            1.0,
            0.0
        )
        .is_ok());
        let g = Gemm { k: 40, ..g };
        assert!(gemm(&mut rec, big.view(), small.view(), big.view(), g, 1.0, 0.0).is_err());
        rec.finish().unwrap();
        // Not 2-D.
        let t3 = TensorEntry::from_f32("three_d", vec![2, 2, 2], &[0.0; 8]).unwrap();
        let e = GpuWeight::upload(&gpu, &t3).unwrap_err();
        assert!(e.to_string().contains("three_d"), "{e}");
    }
);

#[cfg(not(target_arch = "wasm32"))]
gpu_test!(
    /// GFLOP/s of `linear_forward` at m = 1024, K = 576, N = 1536 (run with `--ignored`).
    #[ignore]
    async fn bench_linear_forward() {
        let gpu = gpu().await;
        eprintln!("adapter: {}", gpu.describe());
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(8);
        let (m, k, n) = (1024, 576, 1536);
        let x = gpu.upload_f32("x", &rng.vec(m * k)).unwrap();
        let y = gpu.zeros("y", m * n).unwrap();
        let dx = gpu.zeros("dx", m * k).unwrap();
        let reps = 5;
        let flops = 2.0 * (m * k * n) as f64;
        let time = |f: &dyn Fn(&mut Recorder<'_>)| {
            let mut rec = Recorder::new(&gpu, &arena);
            f(&mut rec);
            rec.finish().unwrap();
            gpu.sync().unwrap();
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                let mut rec = Recorder::new(&gpu, &arena);
                f(&mut rec);
                rec.finish().unwrap();
                gpu.sync().unwrap();
            }
            flops * reps as f64 / t0.elapsed().as_secs_f64() / 1e9
        };
        for dtype in [DType::Q4_1, DType::F32, DType::Q8_0] {
            let t = random_tensor(&mut rng, "w", dtype, n, k);
            let w = GpuWeight::upload(&gpu, &t).unwrap();
            let fwd =
                time(&|rec| linear_forward(rec, y.view(), x.view(), &w, None, m, false).unwrap());
            let bwd =
                time(&|rec| linear_backward_input(rec, dx.view(), y.view(), &w, m, false).unwrap());
            eprintln!(
                "{dtype}: linear_forward {fwd:.1} GFLOP/s, linear_backward_input {bwd:.1} GFLOP/s"
            );
        }
        let a8 = gpu.zeros("a8", k * 8).unwrap();
        let g = Gemm {
            m,
            n: 8,
            k,
            trans_a: false,
            trans_b: false,
        };
        let gf = time(&|rec| gemm(rec, y.view(), x.view(), a8.view(), g, 1.0, 0.0).unwrap())
            * (8.0 / n as f64);
        let g2 = Gemm {
            m: 8,
            n: k,
            k: m,
            trans_a: true,
            trans_b: false,
        };
        let gf2 = time(&|rec| gemm(rec, a8.view(), y.view(), x.view(), g2, 1.0, 0.0).unwrap())
            * (8.0 / n as f64);
        eprintln!(
        "gemm [1024,576]x[576,8]: {gf:.1} GFLOP/s; [8,1024]x[1024,576] (trans_a): {gf2:.1} GFLOP/s"
    );
    }
);

/// Mixed precision (`Precision::F16`, lavapipe has shader-f16): operands rounded to f16 (relative
/// error 2^-11 each), products summed in f32. Against the f64/f32 references the error is a few
/// f16 roundings per term, growing like sqrt(terms): 1e-3 x sqrt(terms / 16), at least 2e-3,
/// of max |value| (observed: about a third of that). Wrong indexing or a sum in f16 would
/// exceed it.
fn half_tol(terms: usize) -> f32 {
    (1e-3 * (terms as f32 / 16.0).sqrt()).max(2e-3)
}

// Chromium's WebGPU here (SwiftShader) has no shader-f16: the f16 path is proven natively on
// lavapipe, which has it; the browser checks the refusal below.
#[cfg(not(target_arch = "wasm32"))]
gpu_test!(
    async fn f16_products_match_f32_within_f16_rounding() {
        let gpu = gpu().await;
        assert!(gpu.has_f16(), "{} has no shader-f16", gpu.describe());
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(21);
        let mut worst = 0f32;
        // The four generated bodies (float / block weights, forward / backward) through a float
        // type, a 32-block and a 256-super-block type (kernels compile for seconds each here).
        let cases = [DType::F16, DType::Q4K]
            .iter()
            .map(|&d| (d, 45, cols_for(d), 37))
            .chain([(DType::Q4_1, 192, 576, 67)]);
        for (dtype, n, k, m) in cases {
            let t = random_tensor(&mut rng, "w", dtype, n, k);
            let gw = GpuWeight::upload(&gpu, &t).unwrap();
            let cw = Weight::from_entry(&t);
            let x = rng.vec(m * k);
            let bias = rng.vec(n);
            let y0 = rng.vec(m * n);
            let dy = rng.vec(m * n);
            let dx0 = rng.vec(m * k);
            let xb = gpu.upload_f32("x", &x).unwrap();
            let bb = gpu.upload_f32("bias", &bias).unwrap();
            let dyb = gpu.upload_f32("dy", &dy).unwrap();
            let yb = gpu.upload_f32("y", &y0).unwrap();
            let dxb = gpu.upload_f32("dx", &dx0).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            let (x_, y_, b_) = (xb.view(), yb.view(), Some(bb.view()));
            linear_forward_prec(&mut rec, y_, x_, &gw, b_, m, true, Precision::F16).unwrap();
            let (dx_, dy_) = (dxb.view(), dyb.view());
            linear_backward_input_prec(&mut rec, dx_, dy_, &gw, m, true, Precision::F16).unwrap();
            rec.finish().unwrap();
            let mut want = vec![0f32; m * n];
            matmul_forward(&mut want, &x, &cw, Some(&bias), m);
            for (w, y) in want.iter_mut().zip(&y0) {
                *w += y;
            }
            let got = read(&gpu, &yb).await;
            let (e, tol) = (rel_err(&got, &want), half_tol(k));
            assert!(e <= tol, "{dtype} f16 forward m={m}: {e:e} > {tol:e}");
            worst = worst.max(e / tol);
            let mut want = dx0.clone();
            matmul_backward(&mut want, &dy, &cw, m, true);
            let got = read(&gpu, &dxb).await;
            let (e, tol) = (rel_err(&got, &want), half_tol(n));
            assert!(e <= tol, "{dtype} f16 backward m={m}: {e:e} > {tol:e}");
            worst = worst.max(e / tol);
        }
        // Every transpose at odd sizes, then the LoRA products (u = x A^T, dA = du^T x).
        let all = [(false, false), (false, true), (true, false), (true, true)];
        let lora = [
            ((100, 8, 576), (false, true)),
            ((8, 576, 100), (true, false)),
        ];
        let cases = all.iter().map(|&t| ((37, 67, 13), t)).chain(lora);
        for ((m, n, k), (trans_a, trans_b)) in cases {
            {
                let g = Gemm {
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                };
                let a = rng.vec(m * k);
                let b = rng.vec(k * n);
                let c0 = rng.vec(m * n);
                let (ab, bb) = (
                    gpu.upload_f32("a", &a).unwrap(),
                    gpu.upload_f32("b", &b).unwrap(),
                );
                let cb = gpu.upload_f32("c", &c0).unwrap();
                let mut rec = Recorder::new(&gpu, &arena);
                let (c_, a_, b_) = (cb.view(), ab.view(), bb.view());
                gemm_prec(&mut rec, c_, a_, b_, g, 0.5, 1.0, Precision::F16).unwrap();
                rec.finish().unwrap();
                let mut want = c0.clone();
                gemm_ref(&mut want, &a, &b, g, 0.5, 1.0);
                let got = read(&gpu, &cb).await;
                let (e, tol) = (rel_err(&got, &want), half_tol(k));
                assert!(e <= tol, "f16 gemm {g:?}: {e:e} > {tol:e}");
                worst = worst.max(e / tol);
            }
        }
        eprintln!("worst f16 error / tolerance: {worst:.3}");
        // Rounding to f16 is really there: the f16 forward differs from the f32 one.
        let t = random_tensor(&mut rng, "w", DType::F32, 16, 64);
        let gw = GpuWeight::upload(&gpu, &t).unwrap();
        let x = rng.vec(4 * 64);
        let xb = gpu.upload_f32("x", &x).unwrap();
        let out = async |prec| {
            let yb = gpu.zeros("y", 4 * 16).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            linear_forward_prec(&mut rec, yb.view(), xb.view(), &gw, None, 4, false, prec).unwrap();
            rec.finish().unwrap();
            read(&gpu, &yb).await
        };
        assert_ne!(out(Precision::F16).await, out(Precision::F32).await);
    }
);

/// `y = x · Wᵀ` for a `[2, 4]` weight `name` and one row `x`, in f16 on `gpu`.
async fn f16_forward(gpu: &Gpu, name: &str, w: &[f32], x: &[f32]) -> hone_core::Result<Vec<f32>> {
    let arena = Arena::new(gpu);
    let gw = GpuWeight::from_f32(gpu, name, 2, 4, w)?;
    let (xb, yb) = (gpu.upload_f32("x", x)?, gpu.zeros("y", 2)?);
    let mut rec = Recorder::new(gpu, &arena);
    let (y_, x_) = (yb.view(), xb.view());
    linear_forward_prec(&mut rec, y_, x_, &gw, None, 1, false, Precision::F16)?;
    rec.finish()?;
    gpu.read_all_f32(&yb).await
}

gpu_test!(
    async fn f16_overflow_is_inf_and_no_shader_f16_is_refused() {
        // An input beyond f16's range (65504) gives ±inf, not a clamped or arbitrary value.
        let w = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0];
        // (Natively only: the browser's SwiftShader has no shader-f16.)
        #[cfg(not(target_arch = "wasm32"))]
        {
            let y = f16_forward(&gpu().await, "w", &w, &[1e5, 1.0, 1.0, 1.0])
                .await
                .unwrap();
            assert!(
                y[0].is_infinite() && y[0] > 0.0 && y[1].is_infinite() && y[1] < 0.0,
                "{y:?}"
            );
        }
        // A device opened without shader-f16 (as in the browser): a clear error, no panic.
        let plain = Gpu::new(&GpuOptions {
            want_f16: false,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(!plain.has_f16());
        let name = "model.layers.0.mlp.up_proj.weight";
        let err = f16_forward(&plain, name, &w, &[0.0; 4])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains("shader-f16"), "{err}");
    }
);
