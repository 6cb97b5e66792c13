//! RMSNorm, SwiGLU, row gather/scatter, cross-entropy and the sum reduction on the GPU against
//! hone-cpu's training ops (or, for the row-wise cross-entropy, the same arithmetic as
//! `hone_cpu::train::loss::cross_entropy`'s row loop, in f64), on random inputs of odd sizes.
//! Tolerances are relative to the largest |value| of the reference.

use hone_cpu::train::ops as cpu;
use hone_gpu::ops::{loss, norm, swiglu};
use hone_gpu::{Arena, Recorder};

mod common;
use common::{gpu, read};

/// xorshift64*: uniform f32 in [-scale, scale).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// max |got - want| <= tol * max |want| (and the same length, and no NaN).
fn assert_close(got: &[f32], want: &[f32], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max((v as f64).abs()))
        .max(1e-30);
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        assert!(!d.is_nan(), "{what}: NaN at {i} ({g} vs {w})");
        if d > worst {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: element {at}: {} vs {} (error {:.3e} of max |value| {scale:.3e}, tolerance {tol:.1e})",
        got[at],
        want[at],
        worst / scale
    );
}

gpu_test!(
    async fn rmsnorm_forward_and_backward_match_the_cpu() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(1);
        for &(rows, c) in &[(5usize, 7usize), (13, 577), (3, 1), (2, 4099), (66_000, 3)] {
            let eps = 1e-5;
            let x = rng.vec(rows * c, 3.0);
            let w = rng.vec(c, 1.5);
            let dout = rng.vec(rows * c, 1.0);
            let d0 = rng.vec(rows * c, 1.0);
            let (mut out, mut rstd) = (vec![0f32; rows * c], vec![0f32; rows]);
            cpu::rmsnorm_forward(&mut out, &mut rstd, &x, &w, eps);
            let mut dx_set = vec![0f32; rows * c];
            cpu::rmsnorm_backward(&mut dx_set, &dout, &x, &rstd, &w);
            let mut dx_acc = d0.clone();
            cpu::rmsnorm_backward(&mut dx_acc, &dout, &x, &rstd, &w);

            let xb = gpu.upload_f32("x", &x).unwrap();
            let wb = gpu.upload_f32("w", &w).unwrap();
            let gb = gpu.upload_f32("dout", &dout).unwrap();
            let ob = gpu.zeros("out", rows * c).unwrap();
            let rb = gpu.zeros("rstd", rows).unwrap();
            let set = gpu.upload_f32("dx set", &d0).unwrap();
            let acc = gpu.upload_f32("dx acc", &d0).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            let (o, r, xv, wv, g) = (ob.view(), rb.view(), xb.view(), wb.view(), gb.view());
            norm::rmsnorm_forward(&mut rec, o, r, xv, wv, rows, c, eps).unwrap();
            norm::rmsnorm_backward(&mut rec, set.view(), g, xv, r, wv, rows, c, false).unwrap();
            norm::rmsnorm_backward(&mut rec, acc.view(), g, xv, r, wv, rows, c, true).unwrap();
            rec.finish().unwrap();
            let what = format!("rows {rows}, c {c}");
            assert_close(
                &read(&gpu, &ob).await,
                &out,
                1e-5,
                &format!("rmsnorm out, {what}"),
            );
            assert_close(
                &read(&gpu, &rb).await,
                &rstd,
                1e-5,
                &format!("rmsnorm rstd, {what}"),
            );
            assert_close(
                &read(&gpu, &set).await,
                &dx_set,
                1e-5,
                &format!("rmsnorm dx (=), {what}"),
            );
            assert_close(
                &read(&gpu, &acc).await,
                &dx_acc,
                1e-5,
                &format!("rmsnorm dx (+=), {what}"),
            );
        }
    }
);

gpu_test!(
    async fn swiglu_forward_and_backward_match_the_cpu() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(2);
        for &n in &[1usize, 1000, 70_001] {
            let mut gate = rng.vec(n, 8.0);
            if n > 10 {
                // Past exp's clamp on both sides.
                gate[3] = -120.0;
                gate[4] = 95.0;
            }
            let up = rng.vec(n, 2.0);
            let dout = rng.vec(n, 1.0);
            let mut out = vec![0f32; n];
            cpu::swiglu_forward_into(&mut out, &gate, &up);
            let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
            cpu::swiglu_backward(&mut dg, &mut du, &dout, &gate, &up);

            let gb = gpu.upload_f32("gate", &gate).unwrap();
            let ub = gpu.upload_f32("up", &up).unwrap();
            let db = gpu.upload_f32("dout", &dout).unwrap();
            // Outputs start as garbage: the backward overwrites.
            let ob = gpu.upload_f32("out", &rng.vec(n, 1.0)).unwrap();
            let dgb = gpu.upload_f32("dgate", &rng.vec(n, 1.0)).unwrap();
            let dub = gpu.upload_f32("dup", &rng.vec(n, 1.0)).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            swiglu::swiglu_forward(&mut rec, ob.view(), gb.view(), ub.view(), n).unwrap();
            swiglu::swiglu_backward(
                &mut rec,
                dgb.view(),
                dub.view(),
                db.view(),
                gb.view(),
                ub.view(),
                n,
            )
            .unwrap();
            rec.finish().unwrap();
            assert_close(
                &read(&gpu, &ob).await,
                &out,
                1e-5,
                &format!("swiglu out, n {n}"),
            );
            assert_close(
                &read(&gpu, &dgb).await,
                &dg,
                1e-5,
                &format!("swiglu dgate, n {n}"),
            );
            assert_close(
                &read(&gpu, &dub).await,
                &du,
                1e-5,
                &format!("swiglu dup, n {n}"),
            );
        }
    }
);

gpu_test!(
    async fn gather_and_scatter_rows_move_exact_rows() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(3);
        let (rows, width, picked) = (37usize, 577usize, 11usize);
        let src = rng.vec(rows * width, 5.0);
        // Distinct indices, in a shuffled order.
        let mut all: Vec<u32> = (0..rows as u32).collect();
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i + 1));
        }
        let idx = all[..picked].to_vec();
        let sb = gpu.upload_f32("src", &src).unwrap();
        let ib = gpu.upload_u32("idx", &idx).unwrap();
        let gb = gpu.zeros("gathered", picked * width).unwrap();
        let base = rng.vec(rows * width, 1.0);
        let tb = gpu.upload_f32("scattered", &base).unwrap();
        let mut rec = Recorder::new(&gpu, &arena);
        loss::gather_rows(&mut rec, gb.view(), sb.view(), ib.view(), picked, width).unwrap();
        loss::scatter_rows(&mut rec, tb.view(), gb.view(), ib.view(), picked, width).unwrap();
        rec.finish().unwrap();
        let gathered = read(&gpu, &gb).await;
        let scattered = read(&gpu, &tb).await;
        let mut want_g = Vec::new();
        let mut want_s = base.clone();
        for (i, &r) in idx.iter().enumerate() {
            let r = r as usize;
            want_g.extend_from_slice(&src[r * width..(r + 1) * width]);
            want_s[r * width..(r + 1) * width].copy_from_slice(&src[r * width..(r + 1) * width]);
            assert_eq!(
                &gathered[i * width..(i + 1) * width],
                &src[r * width..(r + 1) * width]
            );
        }
        assert_eq!(gathered, want_g);
        assert_eq!(scattered, want_s);
    }
);

/// `hone_cpu::train::loss::cross_entropy`'s per-row arithmetic, in f64: the NLL of each row and
/// the gradient `scale * (softmax - onehot)`.
fn cross_entropy_ref(
    logits: &[f32],
    targets: &[u32],
    vocab: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut nll = Vec::new();
    let mut grad = Vec::new();
    for (row, &t) in logits.chunks_exact(vocab).zip(targets) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        nll.push((max + sum.ln() - row[t as usize] as f64) as f32);
        for (j, &v) in row.iter().enumerate() {
            let mut g = (v as f64 - max).exp() / sum * scale as f64;
            if j == t as usize {
                g -= scale as f64;
            }
            grad.push(g as f32);
        }
    }
    (nll, grad)
}

gpu_test!(
    async fn cross_entropy_rows_matches_the_cpu_arithmetic() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(4);
        for &(rows, vocab, spread) in &[
            (7usize, 1000usize, 4.0f32),
            (3, 49_152, 12.0),
            (2, 262_144, 8.0),
        ] {
            for scale in [None, Some(1.0 / rows as f32)] {
                let logits = rng.vec(rows * vocab, spread);
                let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
                let (nll, grad) = cross_entropy_ref(&logits, &targets, vocab, scale.unwrap_or(0.0));
                let lb = gpu.upload_f32("logits", &logits).unwrap();
                let nb = gpu.zeros("nll", rows).unwrap();
                let tb = gpu.upload_u32("targets", &targets).unwrap();
                let sb = gpu.zeros("loss", 1).unwrap();
                let scratch = gpu.zeros("scratch", 64).unwrap();
                let mut rec = Recorder::new(&gpu, &arena);
                loss::cross_entropy_rows(
                    &mut rec,
                    lb.view(),
                    nb.view(),
                    tb.view(),
                    rows,
                    vocab,
                    scale,
                )
                .unwrap();
                loss::sum(&mut rec, sb.view(), nb.view(), rows, scratch.view()).unwrap();
                rec.finish().unwrap();
                let what = format!("rows {rows}, vocab {vocab}, grad scale {scale:?}");
                let got_nll = read(&gpu, &nb).await;
                assert_close(&got_nll, &nll, 1e-5, &format!("nll, {what}"));
                let total: f64 = nll.iter().map(|&v| v as f64).sum();
                assert_close(
                    &read(&gpu, &sb).await,
                    &[total as f32],
                    1e-5,
                    &format!("loss, {what}"),
                );
                let got = read(&gpu, &lb).await;
                match scale {
                    // Without a gradient the logits are left as they were.
                    None => assert_eq!(got, logits, "{what}: logits changed"),
                    Some(_) => assert_close(&got, &grad, 1e-5, &format!("dlogits, {what}")),
                }
            }
        }
    }
);

gpu_test!(
    async fn a_target_past_the_vocabulary_gives_nan_not_a_fault() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let (rows, vocab) = (2, 100);
        let logits: Vec<f32> = (0..rows * vocab).map(|i| (i % 7) as f32).collect();
        let lb = gpu.upload_f32("logits", &logits).unwrap();
        let nb = gpu.zeros("nll", rows).unwrap();
        let tb = gpu.upload_u32("targets", &[5, 100]).unwrap();
        let mut rec = Recorder::new(&gpu, &arena);
        loss::cross_entropy_rows(
            &mut rec,
            lb.view(),
            nb.view(),
            tb.view(),
            rows,
            vocab,
            Some(1.0),
        )
        .unwrap();
        rec.finish().unwrap();
        let nll = read(&gpu, &nb).await;
        assert!(nll[0].is_finite() && nll[1].is_nan(), "{nll:?}");
    }
);

gpu_test!(
    async fn sum_reduces_any_length() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(5);
        for &n in &[0usize, 1, 1000, 2048, 2049, 100_003, 1_000_001] {
            let x: Vec<f32> = rng.vec(n, 1.0).iter().map(|v| v + 0.25).collect();
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            let abs: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
            let xb = gpu.upload_f32("x", &x).unwrap();
            let out = gpu.upload_f32("out", &[7.0]).unwrap();
            let scratch = gpu.zeros("scratch", n.div_ceil(256) + 64).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            loss::sum(&mut rec, out.view(), xb.view(), n, scratch.view()).unwrap();
            rec.finish().unwrap();
            let got = read(&gpu, &out).await[0] as f64;
            assert!(
                (got - want).abs() <= 1e-6 * abs.max(1.0),
                "n {n}: {got} vs {want} (sum of |x| {abs})"
            );
        }
    }
);

gpu_test!(
    async fn wrong_sizes_are_errors_not_panics() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let small = gpu.zeros("small", 10).unwrap();
        let big = gpu.zeros("big", 1000).unwrap();
        let huge = gpu.zeros("huge", 100_000).unwrap();
        let mut rec = Recorder::new(&gpu, &arena);
        let (s, b) = (small.view(), big.view());
        let errs = [
            norm::rmsnorm_forward(&mut rec, s, b, b, b, 4, 7, 1e-5),
            norm::rmsnorm_forward(&mut rec, b, b, b, b, 4, 0, 1e-5),
            norm::rmsnorm_backward(&mut rec, b, b, b, b, s, 2, 11, true),
            swiglu::swiglu_forward(&mut rec, b, s, b, 11),
            swiglu::swiglu_backward(&mut rec, b, b, b, b, s, 11),
            loss::gather_rows(&mut rec, s, b, b, 2, 7),
            loss::scatter_rows(&mut rec, b, s, b, 2, 7),
            loss::cross_entropy_rows(&mut rec, b, s, b, 11, 10, None),
            loss::cross_entropy_rows(&mut rec, b, b, b, usize::MAX / 2, 4, None),
            loss::sum(&mut rec, b, s, 11, b),
            // 49 partial sums do not fit a scratch of 10.
            loss::sum(&mut rec, b, huge.view(), 100_000, s),
        ];
        for (i, e) in errs.into_iter().enumerate() {
            let e = e.expect_err(&format!("case {i} should fail"));
            assert!(matches!(e, hone_core::Error::Gpu(_)), "case {i}: {e}");
        }
        assert_eq!(rec.dispatches, 0);
        rec.finish().unwrap();
    }
);
