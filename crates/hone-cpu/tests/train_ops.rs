//! Each training backward op against central finite differences of its forward, on small
//! random inputs with odd sizes (and GQA for attention).
//!
//! The ops compute in f32, so the differences are taken in f32 with a step of 1e-2 (inputs are
//! O(1)) on the scalar `L = sum(out * R)` accumulated in f64, R random. The rounding noise of L
//! is ~1e-7 |L| / step and the truncation error ~step^2 |f'''| / 6, both well below the
//! tolerance: max |analytic - numeric| <= 1e-3 * max |numeric| per tensor. A wrong term in a
//! backward (a missing scale, a transposed index, a lost accumulation) is O(1) relative.

mod common;

use common::{assert_close, Lcg};
use hone_core::TensorEntry;
use hone_cpu::matmul::{matmul_forward, Weight};
use hone_cpu::ops::{attention_forward as cached_attention, rope_tables, AttentionShape};
use hone_cpu::train::linalg::matmul_backward;
use hone_cpu::train::lora::{lora_backward, lora_forward, LoraShape};
use hone_cpu::train::loss::{cross_entropy, shifted_targets, HeadWeight, LmHead, LossScratch};
use hone_cpu::train::ops::{
    attention_backward, attention_forward, residual_backward, rmsnorm_backward, rmsnorm_forward,
    rmsnorm_recompute, rope_backward, rope_forward_batch, swiglu_backward, swiglu_forward_into,
    SeqAttention,
};

const STEP: f32 = 1e-2;
const TOL: f64 = 1e-3;

/// Central differences of `f` at `x` for every coordinate (the actual f32 step is used).
fn numeric_grad(x: &[f32], f: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            let (hi, lo) = (orig + STEP, orig - STEP);
            x[i] = hi;
            let fp = f(&x);
            x[i] = lo;
            let fm = f(&x);
            x[i] = orig;
            (fp - fm) / (hi as f64 - lo as f64)
        })
        .collect()
}

/// `sum(out * r)` in f64.
fn weigh(out: &[f32], r: &[f32]) -> f64 {
    assert_eq!(out.len(), r.len());
    out.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

fn check(analytic: &[f32], numeric: &[f64], what: &str) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: length");
    let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        scale > 1e-3,
        "{what}: gradient is ~0, the test would prove nothing"
    );
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let e = (a as f64 - n).abs();
        if e > worst || e.is_nan() {
            (worst, at) = (e, i);
        }
    }
    assert!(
        worst <= TOL * scale,
        "{what}: element {at}: analytic {} numeric {} (max error {worst:.3e} > {TOL} x {scale:.3e})",
        analytic[at],
        numeric[at]
    );
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let mut rng = Lcg::new(1);
    for &(rows, c) in &[(3usize, 37usize), (1, 5), (4, 64)] {
        let x = rng.vec(rows * c, 1.5);
        let w: Vec<f32> = rng.vec(c, 0.3).iter().map(|v| 1.0 + v).collect();
        let r = rng.vec(rows * c, 1.0);
        let eps = 1e-5;
        let f = |x: &[f32]| {
            let mut out = vec![0f32; rows * c];
            let mut rstd = vec![0f32; rows];
            rmsnorm_forward(&mut out, &mut rstd, x, &w, eps);
            weigh(&out, &r)
        };
        let mut out = vec![0f32; rows * c];
        let mut rstd = vec![0f32; rows];
        rmsnorm_forward(&mut out, &mut rstd, &x, &w, eps);
        // Same output as the inference op, and the recomputation is bit-identical.
        let mut inference = vec![0f32; rows * c];
        hone_cpu::ops::rmsnorm_forward(&mut inference, &x, &w, eps);
        assert_eq!(
            out, inference,
            "rmsnorm forward differs from the inference op"
        );
        let mut again = vec![0f32; rows * c];
        rmsnorm_recompute(&mut again, &rstd, &x, &w);
        assert_eq!(out, again, "rmsnorm recompute is not bit-identical");
        // The backward accumulates: start from 1 and subtract it.
        let mut dx = vec![1f32; rows * c];
        rmsnorm_backward(&mut dx, &r, &x, &rstd, &w);
        let dx: Vec<f32> = dx.iter().map(|v| v - 1.0).collect();
        check(&dx, &numeric_grad(&x, f), &format!("rmsnorm {rows}x{c}"));
    }
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = Lcg::new(2);
    let (batch, seq, nh, hd) = (2usize, 5usize, 3usize, 8usize);
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 10000f32.powf(-((2 * i) as f32) / hd as f32))
        .collect();
    let (mut cos, mut sin) = (vec![0f32; seq * hd / 2], vec![0f32; seq * hd / 2]);
    rope_tables(&mut cos, &mut sin, &inv, 0, seq);
    let x = rng.vec(batch * seq * nh * hd, 1.0);
    let r = rng.vec(x.len(), 1.0);
    let f = |x: &[f32]| {
        let mut y = x.to_vec();
        rope_forward_batch(&mut y, &cos, &sin, seq, nh, hd);
        weigh(&y, &r)
    };
    let mut dx = r.clone();
    rope_backward(&mut dx, &cos, &sin, seq, nh, hd);
    check(&dx, &numeric_grad(&x, f), "rope");
}

#[test]
fn attention_forward_matches_the_inference_op_and_backward_matches_finite_differences() {
    let mut rng = Lcg::new(3);
    // (batch, seq, heads, kv heads, head_dim): GQA, MHA, MQA, and a sequence longer than one
    // 64-query block.
    for &(batch, seq, nh, nkv, hd) in &[
        (2usize, 7usize, 4usize, 2usize, 8usize),
        (1, 5, 2, 2, 6),
        (1, 70, 3, 1, 4),
    ] {
        let s = SeqAttention {
            batch,
            seq,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let (qd, kvd) = (nh * hd, nkv * hd);
        let q = rng.vec(batch * seq * qd, 1.5);
        let k = rng.vec(batch * seq * kvd, 1.5);
        let v = rng.vec(batch * seq * kvd, 1.0);
        let r = rng.vec(q.len(), 1.0);
        let fwd = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut out = vec![0f32; q.len()];
            let mut lse = vec![0f32; batch * nh * seq];
            attention_forward(&mut out, &mut lse, q, k, v, s);
            (out, lse)
        };
        let (out, lse) = fwd(&q, &k, &v);
        for b in 0..batch {
            let mut want = vec![0f32; seq * qd];
            let shape = AttentionShape {
                t: seq,
                past: 0,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let kv = b * seq * kvd..(b + 1) * seq * kvd;
            let qs = &q[b * seq * qd..(b + 1) * seq * qd];
            cached_attention(&mut want, qs, &k[kv.clone()], &v[kv], shape);
            let got = &out[b * seq * qd..(b + 1) * seq * qd];
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err < 1e-5,
                "{s:?}: forward differs from the inference op by {err}"
            );
        }
        let (mut dq, mut dk, mut dv) = (
            vec![f32::NAN; q.len()],
            vec![f32::NAN; k.len()],
            vec![f32::NAN; v.len()],
        );
        attention_backward(&mut dq, &mut dk, &mut dv, &r, &q, &k, &v, &out, &lse, s);
        let what = format!("{s:?}");
        check(
            &dq,
            &numeric_grad(&q, |x| weigh(&fwd(x, &k, &v).0, &r)),
            &format!("dq {what}"),
        );
        check(
            &dk,
            &numeric_grad(&k, |x| weigh(&fwd(&q, x, &v).0, &r)),
            &format!("dk {what}"),
        );
        check(
            &dv,
            &numeric_grad(&v, |x| weigh(&fwd(&q, &k, x).0, &r)),
            &format!("dv {what}"),
        );
    }
}

#[test]
fn swiglu_and_residual_backward_match_finite_differences() {
    let mut rng = Lcg::new(4);
    let n = 41;
    let gate = rng.vec(n, 3.0);
    let up = rng.vec(n, 1.5);
    let r = rng.vec(n, 1.0);
    let fwd = |g: &[f32], u: &[f32]| {
        let mut out = vec![0f32; n];
        swiglu_forward_into(&mut out, g, u);
        out
    };
    let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
    swiglu_backward(&mut dg, &mut du, &r, &gate, &up);
    check(
        &dg,
        &numeric_grad(&gate, |x| weigh(&fwd(x, &up), &r)),
        "swiglu dgate",
    );
    check(
        &du,
        &numeric_grad(&up, |x| weigh(&fwd(&gate, x), &r)),
        "swiglu dup",
    );

    // x + delta: the gradient of delta is added to the stream's.
    let mut dx = gate.clone();
    residual_backward(&mut dx, &r);
    let want: Vec<f32> = gate.iter().zip(&r).map(|(a, b)| a + b).collect();
    assert_eq!(dx, want);
}

#[test]
fn frozen_matmul_backward_matches_finite_differences() {
    let mut rng = Lcg::new(5);
    let (m, n, k) = (3usize, 11usize, 64usize);
    let wv = rng.vec(n * k, 0.5);
    let b = rng.vec(n, 0.5);
    let w = Weight::from_entry(&TensorEntry::from_f32("w", vec![n, k], &wv).unwrap());
    let x = rng.vec(m * k, 1.0);
    let r = rng.vec(m * n, 1.0);
    let f = |x: &[f32]| {
        let mut y = vec![0f32; m * n];
        matmul_forward(&mut y, x, &w, Some(&b), m);
        weigh(&y, &r)
    };
    let mut dx = vec![0f32; m * k];
    matmul_backward(&mut dx, &r, &w, m, false);
    check(&dx, &numeric_grad(&x, f), "matmul dx");
}

#[test]
fn lora_backward_matches_finite_differences() {
    let mut rng = Lcg::new(6);
    let s = LoraShape {
        m: 5,
        in_features: 12,
        out_features: 7,
        rank: 3,
    };
    let scale = 1.7;
    let x = rng.vec(s.m * s.in_features, 1.0);
    let a = rng.vec(s.rank * s.in_features, 0.5);
    let b = rng.vec(s.out_features * s.rank, 0.5);
    let y0 = rng.vec(s.m * s.out_features, 1.0);
    let r = rng.vec(y0.len(), 1.0);
    let fwd = |x: &[f32], a: &[f32], b: &[f32]| {
        let mut y = y0.clone();
        let mut u = vec![0f32; s.m * s.rank];
        lora_forward(&mut y, &mut u, x, a, b, scale, s);
        (weigh(&y, &r), u)
    };
    let (_, u) = fwd(&x, &a, &b);
    // dA, dB accumulate (start at 1) and dx is added to (start at 2).
    let mut da = vec![1f32; a.len()];
    let mut db = vec![1f32; b.len()];
    let mut dx = vec![2f32; x.len()];
    let mut du = vec![0f32; s.m * s.rank];
    lora_backward(
        &mut dx, true, &mut da, &mut db, &mut du, &r, &x, &u, &a, &b, scale, s,
    );
    let minus = |v: &[f32], c: f32| v.iter().map(|x| x - c).collect::<Vec<_>>();
    check(
        &minus(&dx, 2.0),
        &numeric_grad(&x, |v| fwd(v, &a, &b).0),
        "lora dx",
    );
    check(
        &minus(&da, 1.0),
        &numeric_grad(&a, |v| fwd(&x, v, &b).0),
        "lora dA",
    );
    check(
        &minus(&db, 1.0),
        &numeric_grad(&b, |v| fwd(&x, &a, v).0),
        "lora dB",
    );
}

#[test]
fn fused_cross_entropy_matches_a_plain_reference_and_finite_differences() {
    let mut rng = Lcg::new(7);
    let (batch, seq, h, vocab) = (2usize, 4usize, 16usize, 50usize);
    let rows = batch * seq;
    let x = rng.vec(rows * h, 1.0);
    let norm: Vec<f32> = rng.vec(h, 0.3).iter().map(|v| 1.0 + v).collect();
    let wv = rng.vec(vocab * h, 1.0);
    let w = Weight::from_entry(&TensorEntry::from_f32("lm_head", vec![vocab, h], &wv).unwrap());
    let head = LmHead {
        norm: &norm,
        eps: 1e-5,
        weight: HeadWeight::Frozen(&w),
    };
    let labels = [-100, 3, 7, -100, 5, -100, 49, 0];
    let targets = shifted_targets(&labels, batch, seq, vocab).unwrap();
    // Position t predicts label t + 1; -100 and each row's last position are skipped.
    // Position t predicts label t + 1; -100 and each row's first label are never targets.
    assert_eq!(targets, vec![(0, 3), (1, 7), (5, 49), (6, 0)]);
    let scale = 0.37f32;
    let mut sc = LossScratch::default();
    let f = |x: &[f32]| {
        let mut sc = LossScratch::default();
        scale as f64 * cross_entropy(x, &targets, head, 3, None, None, &mut sc)
    };
    let mut dx = vec![f32::NAN; x.len()];
    let nll = cross_entropy(&x, &targets, head, 3, Some((&mut dx, scale)), None, &mut sc);

    // Plain f64 reference: normalize, logits, log-softmax.
    let mut want = 0f64;
    for &(row, label) in &targets {
        let xr = &x[row * h..(row + 1) * h];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        let logits: Vec<f64> = (0..vocab)
            .map(|j| {
                (0..h)
                    .map(|i| xr[i] as f64 * inv * norm[i] as f64 * wv[j * h + i] as f64)
                    .sum()
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
        want += lse - logits[label as usize];
    }
    assert!(
        (nll - want).abs() <= 1e-5 * want.abs(),
        "nll {nll} vs reference {want}"
    );
    check(&dx, &numeric_grad(&x, f), "cross-entropy dx");
    for (row, g) in dx.chunks(h).enumerate() {
        if !targets.iter().any(|&(r, _)| r == row) {
            assert!(
                g.iter().all(|&v| v == 0.0),
                "row {row} has no target but a gradient"
            );
        }
    }
}

/// A trainable head (`modules_to_save = ["lm_head"]`): the same loss and dx as the frozen head
/// of the same values, and dW (accumulated over chunks, added to what is there) against central
/// differences of the loss in the weight.
#[test]
fn trainable_head_gradient_matches_finite_differences() {
    let mut rng = Lcg::new(17);
    let (batch, seq, h, vocab) = (2usize, 5usize, 8usize, 30usize);
    let x = rng.vec(batch * seq * h, 1.0);
    let norm: Vec<f32> = rng.vec(h, 0.3).iter().map(|v| 1.0 + v).collect();
    let wv = rng.vec(vocab * h, 1.0);
    let labels = [-100, 3, 7, 11, 5, -100, 29, 0, 2, 2];
    let targets = shifted_targets(&labels, batch, seq, vocab).unwrap();
    let scale = 0.61f32;
    let trainable = |w: &[f32], grad: Option<(&mut [f32], f32)>, dw: Option<&mut [f32]>| {
        let head = LmHead {
            norm: &norm,
            eps: 1e-5,
            weight: HeadWeight::Trainable(w),
        };
        cross_entropy(&x, &targets, head, 3, grad, dw, &mut LossScratch::default())
    };
    let mut dx = vec![f32::NAN; x.len()];
    let mut dw = vec![0.25f32; wv.len()];
    let nll = trainable(&wv, Some((&mut dx, scale)), Some(&mut dw));
    let frozen =
        Weight::from_entry(&TensorEntry::from_f32("lm_head", vec![vocab, h], &wv).unwrap());
    let head = LmHead {
        norm: &norm,
        eps: 1e-5,
        weight: HeadWeight::Frozen(&frozen),
    };
    let mut dx_frozen = vec![f32::NAN; x.len()];
    let nll_frozen = cross_entropy(
        &x,
        &targets,
        head,
        3,
        Some((&mut dx_frozen, scale)),
        None,
        &mut LossScratch::default(),
    );
    assert!((nll - nll_frozen).abs() <= 1e-6 * nll.abs());
    assert_close(&dx, &dx_frozen, 1e-6, "dx trainable vs frozen head");
    let dw: Vec<f32> = dw.iter().map(|v| v - 0.25).collect();
    let numeric = numeric_grad(&wv, |w| scale as f64 * trainable(w, None, None));
    check(&dw, &numeric, "trainable lm_head dW");
}

#[test]
fn labels_outside_the_vocabulary_are_errors() {
    assert!(shifted_targets(&[0, 50], 1, 2, 50).is_err());
    assert!(shifted_targets(&[0, -5], 1, 2, 50).is_err());
    assert!(shifted_targets(&[0, 1, 2], 1, 2, 50).is_err());
    assert_eq!(
        shifted_targets(&[9, -100, 4], 1, 3, 50).unwrap(),
        vec![(1, 4)]
    );
}
