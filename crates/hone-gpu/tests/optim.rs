//! The gradient norm, AdamW with clipping, and dropout on the GPU against hone-cpu's
//! `adamw_step`, `grad_norm`, `clip_grads` and `DropoutMask` (masks bit for bit). Tolerances
//! are relative to the largest |value| of the reference.

use hone_core::engine::AdamW;
use hone_cpu::train::adamw as cpu;
use hone_cpu::train::dropout::{self as cpu_dropout, DropoutMask};
use hone_gpu::ops::{adamw, dropout};
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
    async fn grad_norm_matches_the_cpu() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(11);
        for &n in &[1usize, 5, 3000, 1_000_003] {
            let g = rng.vec(n, 0.01);
            let want = cpu::grad_norm(&g);
            let gb = gpu.upload_f32("grads", &g).unwrap();
            let out = gpu.zeros("norm", 1).unwrap();
            let scratch = gpu.zeros("scratch", n.div_ceil(256) + 64).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            adamw::grad_norm(&mut rec, out.view(), gb.view(), n, scratch.view()).unwrap();
            rec.finish().unwrap();
            let got = read(&gpu, &out).await;
            assert_close(&got, &[want], 1e-5, &format!("grad norm, n {n}"));
        }
    }
);

gpu_test!(
    /// Several steps of norm + (clipped) AdamW on the GPU and on the CPU from the same start,
    /// with fresh gradients each step; clipping off, active (max_norm below the norm) and inactive
    /// (above it).
    async fn adamw_with_clipping_matches_the_cpu_over_several_steps() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let hp = AdamW {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let lr = 0.01;
        // The gradients' norm is about 0.61 * step: max_norm 0.5 clips every step, 1.0 all but
        // the first, 1e4 none.
        for (case, clip) in [None, Some(0.5f32), Some(1.0), Some(1e4)]
            .into_iter()
            .enumerate()
        {
            let mut clipped = Vec::new();
            let mut rng = Rng::new(20 + case as u64);
            let n = 70_001;
            let mut p = rng.vec(n, 1.0);
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let pb = gpu.upload_f32("params", &p).unwrap();
            let gb = gpu.zeros("grads", n).unwrap();
            let mb = gpu.zeros("exp_avg", n).unwrap();
            let vb = gpu.zeros("exp_avg_sq", n).unwrap();
            let nb = gpu.zeros("norm", 1).unwrap();
            let scratch = gpu.zeros("scratch", n.div_ceil(256) + 64).unwrap();
            for step in 1..=4u64 {
                let what = format!("clip {clip:?}, step {step}");
                let mut g = rng.vec(n, 0.004 * step as f32);
                // Step 3's gradients come multiplied by a loss scale (--fp16), undone in the step.
                let loss_scale = if step == 3 { 1024.0 } else { 1.0 };
                let scaled: Vec<f32> = g.iter().map(|v| v * loss_scale).collect();
                gpu.write_f32(&gb, 0, &scaled);
                let before = p.clone();
                let norm = cpu::grad_norm(&g);
                if let Some(max) = clip {
                    clipped.push(max / (norm + 1e-6) < 1.0);
                    cpu::clip_grads(&mut g, max, norm);
                }
                cpu::adamw_step(&mut p, &g, &mut m, &mut v, step, lr, &hp);
                let mut rec = Recorder::new(&gpu, &arena);
                adamw::grad_norm(&mut rec, nb.view(), gb.view(), n, scratch.view()).unwrap();
                let c = clip.map(|max| (max, nb.view()));
                adamw::adamw_step(
                    &mut rec,
                    pb.view(),
                    gb.view(),
                    mb.view(),
                    vb.view(),
                    n,
                    step,
                    lr,
                    &hp,
                    c,
                    1.0 / loss_scale,
                )
                .unwrap();
                rec.finish().unwrap();
                let scaled_norm = norm * loss_scale;
                assert_close(
                    &read(&gpu, &nb).await,
                    &[scaled_norm],
                    1e-5,
                    &format!("norm, {what}"),
                );
                let got_p = read(&gpu, &pb).await;
                assert_close(&got_p, &p, 1e-6, &format!("params, {what}"));
                // The update itself, much smaller than the parameters.
                let delta = |x: &[f32]| {
                    x.iter()
                        .zip(&before)
                        .map(|(a, b)| a - b)
                        .collect::<Vec<_>>()
                };
                assert_close(&delta(&got_p), &delta(&p), 1e-5, &format!("update, {what}"));
                assert_close(
                    &read(&gpu, &mb).await,
                    &m,
                    1e-5,
                    &format!("exp_avg, {what}"),
                );
                assert_close(
                    &read(&gpu, &vb).await,
                    &v,
                    1e-5,
                    &format!("exp_avg_sq, {what}"),
                );
                assert!(
                    read(&gpu, &gb).await.iter().all(|&x| x == 0.0),
                    "{what}: grads not zeroed"
                );
            }
            let want: &[bool] = match case {
                0 => &[],
                1 => &[true; 4],
                2 => &[false, true, true, true],
                _ => &[false; 4],
            };
            assert_eq!(clipped, want, "clip {clip:?}: which steps clipped");
        }
    }
);

gpu_test!(
    async fn adamw_rejects_bad_arguments() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let b = gpu.zeros("b", 100).unwrap();
        let s = gpu.zeros("s", 10).unwrap();
        let hp = AdamW::default();
        let mut rec = Recorder::new(&gpu, &arena);
        let (b, s) = (b.view(), s.view());
        assert!(adamw::adamw_step(&mut rec, b, b, b, b, 100, 0, 1e-3, &hp, None, 1.0).is_err());
        assert!(adamw::adamw_step(&mut rec, b, b, s, b, 100, 1, 1e-3, &hp, None, 1.0).is_err());
        assert!(adamw::grad_norm(&mut rec, b, s, 100, b).is_err());
        assert!(dropout::dropout_forward(&mut rec, b, b, 100, 1, 2, 1.0).is_err());
        assert!(dropout::dropout_forward(&mut rec, b, b, 100, 1, 2, -0.1).is_err());
        assert!(dropout::dropout_backward(&mut rec, s, b, 100, 1, 2, 0.1, true).is_err());
        assert_eq!(rec.dispatches, 0);
        rec.finish().unwrap();
    }
);

gpu_test!(
    async fn dropout_masks_are_bit_identical_to_the_cpu() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng::new(30);
        let n = 70_001;
        let x = rng.vec(n, 3.0);
        let d0 = rng.vec(n, 1.0);
        let xb = gpu.upload_f32("x", &x).unwrap();
        for &(seed, stream, p) in &[
            (0u64, 0u64, 0.1f32),
            (7, 3, 0.5),
            (u64::MAX, 1 << 40, 0.1),
            (0x1234_5678_9abc_def0, 12_345, 0.5),
            (42, 0, 0.0),
        ] {
            let what = format!("seed {seed}, stream {stream}, p {p}");
            let mask = DropoutMask::new(seed, stream, p);
            let mut out = vec![0f32; n];
            cpu_dropout::dropout_forward(&mut out, &x, mask);
            let mut acc = d0.clone();
            cpu_dropout::dropout_backward(&mut acc, &x, mask);
            let set: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, &g)| g * mask.factor(i as u64))
                .collect();

            let ob = gpu.upload_f32("out", &d0).unwrap();
            let sb = gpu.upload_f32("dinp set", &d0).unwrap();
            let ab = gpu.upload_f32("dinp acc", &d0).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            dropout::dropout_forward(&mut rec, ob.view(), xb.view(), n, seed, stream, p).unwrap();
            dropout::dropout_backward(&mut rec, sb.view(), xb.view(), n, seed, stream, p, false)
                .unwrap();
            dropout::dropout_backward(&mut rec, ab.view(), xb.view(), n, seed, stream, p, true)
                .unwrap();
            rec.finish().unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let got = read(&gpu, &ob).await;
            let first = got
                .iter()
                .zip(&out)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                first.is_none(),
                "{what}: forward differs first at {first:?}"
            );
            assert_eq!(bits(&got), bits(&out), "{what}: forward");
            assert_eq!(
                bits(&read(&gpu, &sb).await),
                bits(&set),
                "{what}: backward (=)"
            );
            assert_eq!(
                bits(&read(&gpu, &ab).await),
                bits(&acc),
                "{what}: backward (+=)"
            );
            let dropped = out.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            assert!(
                (dropped - p as f64).abs() < 0.01,
                "{what}: dropped {dropped}"
            );
        }
    }
);

gpu_test!(
    /// Past 65535 * 256 elements the kernels run on a 2-D grid: the masks still follow the element
    /// index.
    async fn dropout_on_a_two_dimensional_grid() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let n = (1usize << 24) + 4097;
        let x = vec![1f32; n];
        let xb = gpu.upload_f32("x", &x).unwrap();
        let ob = gpu.zeros("out", n).unwrap();
        let mut rec = Recorder::new(&gpu, &arena);
        dropout::dropout_forward(&mut rec, ob.view(), xb.view(), n, 9, 4, 0.25).unwrap();
        rec.finish().unwrap();
        let got = read(&gpu, &ob).await;
        let mask = DropoutMask::new(9, 4, 0.25);
        let first = (0..n).find(|&i| got[i] != mask.factor(i as u64));
        assert!(first.is_none(), "element {first:?} differs");
    }
);
