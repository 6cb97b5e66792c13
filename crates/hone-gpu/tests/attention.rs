//! RoPE and attention kernels against the CPU engine (`hone-cpu`) on random inputs, plus a
//! finite-difference check of the attention backward and a timing of the real shape.

use hone_cpu::ops::{self as infer, AttentionShape};
use hone_cpu::train::ops::{self as cpu, SeqAttention};
use hone_gpu::ops::attention::{self, AttnShape};
use hone_gpu::ops::rope;
use hone_gpu::{Arena, GBuf, Gpu, Recorder};

mod common;
use common::gpu;

/// A tiny deterministic generator (64-bit LCG, top bits as a uniform in [-1, 1)).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn up(gpu: &Gpu, data: &[f32]) -> GBuf {
    gpu.upload_f32("t", data).unwrap()
}

async fn read_n(gpu: &Gpu, b: &GBuf, n: usize) -> Vec<f32> {
    gpu.read_f32(b, 0, n).await.unwrap()
}

/// Max |got - want| relative to max |want| (and at least 1).
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, &x| m.max(x.abs())).max(1e-3);
    let mut worst = (0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g}");
        let e = (g - w).abs() / scale;
        if e > worst.0 {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: relative error {:.3e} at {} (got {}, want {}; max |want| {scale})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

fn tables(head_dim: usize, n_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let (mut c, mut s) = (vec![0f32; n_pos * half], vec![0f32; n_pos * half]);
    infer::rope_tables(&mut c, &mut s, &inv, 0, n_pos);
    (c, s)
}

gpu_test!(
    async fn rope_forward_and_backward_match_the_cpu() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng(1);
        for &(batch, seq, nh, hd) in &[(2, 7, 3, 6), (3, 33, 9, 64), (1, 5, 2, 10)] {
            let n = batch * seq * nh * hd;
            let (c, s) = tables(hd, seq);
            let x = rng.vec(n, 1.0);
            let (xb, cb, sb) = (up(&gpu, &x), up(&gpu, &c), up(&gpu, &s));
            let dy = rng.vec(n, 1.0);
            let db = up(&gpu, &dy);
            let mut rec = Recorder::new(&gpu, &arena);
            let rows = batch * seq;
            rope::rope_forward(
                &mut rec,
                xb.view(),
                cb.view(),
                sb.view(),
                rows,
                seq,
                0,
                nh,
                hd,
            )
            .unwrap();
            rope::rope_backward(&mut rec, db.view(), cb.view(), sb.view(), rows, seq, nh, hd)
                .unwrap();
            rec.finish().unwrap();
            let mut want = x.clone();
            cpu::rope_forward_batch(&mut want, &c, &s, seq, nh, hd);
            assert_close("rope forward", &read_n(&gpu, &xb, n).await, &want, 1e-6);
            let mut want = dy.clone();
            cpu::rope_backward(&mut want, &c, &s, seq, nh, hd);
            assert_close("rope backward", &read_n(&gpu, &db, n).await, &want, 1e-6);
        }
    }
);

gpu_test!(
    async fn rope_forward_at_an_offset_matches_the_cpu() {
        // Generation: rows at positions pos0.. of tables covering 0..max_len.
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng(2);
        let (nh, hd, max_len, pos0, t) = (3, 10, 64, 41, 5);
        let half = hd / 2;
        let (c, s) = tables(hd, max_len);
        let x = rng.vec(t * nh * hd, 1.0);
        let (xb, cb, sb) = (up(&gpu, &x), up(&gpu, &c), up(&gpu, &s));
        let mut rec = Recorder::new(&gpu, &arena);
        rope::rope_forward(
            &mut rec,
            xb.view(),
            cb.view(),
            sb.view(),
            t,
            t,
            pos0,
            nh,
            hd,
        )
        .unwrap();
        rec.finish().unwrap();
        let mut want = x.clone();
        let r = pos0 * half..(pos0 + t) * half;
        infer::rope_forward(&mut want, &c[r.clone()], &s[r], nh, hd);
        assert_close(
            "rope at pos0",
            &read_n(&gpu, &xb, x.len()).await,
            &want,
            1e-6,
        );
        // Tables too short for the positions: an error, not a panic.
        let mut rec = Recorder::new(&gpu, &arena);
        let e = rope::rope_forward(&mut rec, xb.view(), cb.view(), sb.view(), t, t, 60, nh, hd);
        assert!(e.is_err());
        let e = rope::rope_forward(&mut rec, xb.view(), cb.view(), sb.view(), t, t, 0, nh, 7);
        assert!(e.is_err());
    }
);

struct Case {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

fn case(rng: &mut Rng, s: AttnShape) -> Case {
    let rows = s.batch * s.seq;
    Case {
        q: rng.vec(rows * s.n_heads * s.head_dim, 1.5),
        k: rng.vec(rows * s.n_kv_heads * s.head_dim, 1.5),
        v: rng.vec(rows * s.n_kv_heads * s.head_dim, 1.0),
        dout: rng.vec(rows * s.n_heads * s.head_dim, 1.0),
    }
}

/// GPU forward + backward: (out, lse, dq, dk, dv).
#[allow(clippy::type_complexity)]
async fn gpu_attention(
    gpu: &Gpu,
    arena: &Arena,
    c: &Case,
    s: AttnShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let nl = s.batch * s.n_heads * s.seq;
    let (qb, kb, vb, db) = (
        up(gpu, &c.q),
        up(gpu, &c.k),
        up(gpu, &c.v),
        up(gpu, &c.dout),
    );
    let ob = gpu.zeros("out", c.q.len()).unwrap();
    let lb = gpu.zeros("lse", nl).unwrap();
    let sb = gpu.zeros("scratch", nl).unwrap();
    // Garbage in the gradients: the backward overwrites them.
    let dqb = up(gpu, &vec![7.0; c.q.len()]);
    let dkb = up(gpu, &vec![7.0; c.k.len()]);
    let dvb = up(gpu, &vec![7.0; c.k.len()]);
    let mut rec = Recorder::new(gpu, arena);
    attention::attention_forward(
        &mut rec,
        ob.view(),
        lb.view(),
        qb.view(),
        kb.view(),
        vb.view(),
        s,
    )
    .unwrap();
    attention::attention_backward(
        &mut rec,
        dqb.view(),
        dkb.view(),
        dvb.view(),
        db.view(),
        qb.view(),
        kb.view(),
        vb.view(),
        ob.view(),
        lb.view(),
        sb.view(),
        s,
    )
    .unwrap();
    rec.finish().unwrap();
    (
        read_n(gpu, &ob, c.q.len()).await,
        read_n(gpu, &lb, nl).await,
        read_n(gpu, &dqb, c.q.len()).await,
        read_n(gpu, &dkb, c.k.len()).await,
        read_n(gpu, &dvb, c.k.len()).await,
    )
}

gpu_test!(
    async fn attention_forward_and_backward_match_the_cpu() {
        // (batch, seq, n_heads, n_kv_heads, head_dim)
        let shapes = [
            (1, 1, 1, 1, 4),
            (2, 7, 4, 2, 6),
            (1, 33, 3, 3, 10),
            (2, 45, 8, 2, 64),
            (1, 70, 6, 1, 16),
            (3, 19, 4, 4, 5),
            (1, 40, 2, 1, 128),
        ];
        check_attention(None, 3, &shapes).await;
    }
);

gpu_test!(
    async fn attention_with_other_work_sizes_matches_the_cpu() {
        // What a real GPU gets (64 invocations, one row each), and odd sizes.
        let shapes = [(2, 7, 4, 2, 6), (1, 70, 6, 1, 10), (3, 19, 4, 4, 5)];
        check_attention(Some((64, 1, 8)), 7, &shapes).await;
        check_attention(Some((16, 3, 5)), 8, &shapes).await;
    }
);

async fn check_attention(
    tiles: Option<(usize, usize, usize)>,
    seed: u64,
    shapes: &[(usize, usize, usize, usize, usize)],
) {
    attention::override_tiles(tiles);
    let gpu = gpu().await;
    eprintln!("adapter: {}, tiles {tiles:?}", gpu.describe());
    let arena = Arena::new(&gpu);
    let mut rng = Rng(seed);
    for &(batch, seq, n_heads, n_kv_heads, head_dim) in shapes {
        let s = AttnShape {
            batch,
            seq,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        let cs = SeqAttention {
            batch,
            seq,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        let c = case(&mut rng, s);
        let (out, lse, dq, dk, dv) = gpu_attention(&gpu, &arena, &c, s).await;
        let nl = batch * n_heads * seq;
        let (mut wout, mut wlse) = (vec![0f32; c.q.len()], vec![0f32; nl]);
        cpu::attention_forward(&mut wout, &mut wlse, &c.q, &c.k, &c.v, cs);
        let (mut wdq, mut wdk, mut wdv) = (
            vec![0f32; c.q.len()],
            vec![0f32; c.k.len()],
            vec![0f32; c.k.len()],
        );
        cpu::attention_backward(
            &mut wdq, &mut wdk, &mut wdv, &c.dout, &c.q, &c.k, &c.v, &wout, &wlse, cs,
        );
        let what = format!("{s:?}");
        assert_close(&format!("out {what}"), &out, &wout, 1e-5);
        assert_close(&format!("lse {what}"), &lse, &wlse, 1e-5);
        assert_close(&format!("dq {what}"), &dq, &wdq, 1e-4);
        assert_close(&format!("dk {what}"), &dk, &wdk, 1e-4);
        assert_close(&format!("dv {what}"), &dv, &wdv, 1e-4);
    }
    attention::override_tiles(None);
}

/// Naive f64 causal GQA attention, loss = sum(w * out).
fn loss64(q: &[f64], k: &[f64], v: &[f64], w: &[f64], s: AttnShape) -> f64 {
    let (hd, nh, nkv, t) = (s.head_dim, s.n_heads, s.n_kv_heads, s.seq);
    let (qd, kvd, g) = (nh * hd, nkv * hd, nh / nkv);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut loss = 0.0;
    for b in 0..s.batch {
        for h in 0..nh {
            let kh = h / g;
            for i in 0..t {
                let qo = (b * t + i) * qd + h * hd;
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        let ko = (b * t + j) * kvd + kh * hd;
                        (0..hd).map(|d| q[qo + d] * k[ko + d]).sum::<f64>() * scale
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for (j, x) in sc.iter().enumerate() {
                    let pj = (x - m).exp() / z;
                    let vo = (b * t + j) * kvd + kh * hd;
                    for d in 0..hd {
                        loss += pj * v[vo + d] * w[qo + d];
                    }
                }
            }
        }
    }
    loss
}

gpu_test!(
    async fn attention_backward_matches_finite_differences() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng(4);
        let s = AttnShape {
            batch: 2,
            seq: 5,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 6,
        };
        let c = case(&mut rng, s);
        let (_, _, dq, dk, dv) = gpu_attention(&gpu, &arena, &c, s).await;
        let to64 = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let (q, k, v, w) = (to64(&c.q), to64(&c.k), to64(&c.v), to64(&c.dout));
        let h = 1e-5;
        let fd = |which: usize, idx: usize| {
            let mut xs = [q.clone(), k.clone(), v.clone()];
            xs[which][idx] += h;
            let lp = loss64(&xs[0], &xs[1], &xs[2], &w, s);
            xs[which][idx] -= 2.0 * h;
            let lm = loss64(&xs[0], &xs[1], &xs[2], &w, s);
            ((lp - lm) / (2.0 * h)) as f32
        };
        for (which, (name, got)) in [("dq", &dq), ("dk", &dk), ("dv", &dv)].iter().enumerate() {
            let want: Vec<f32> = (0..got.len()).map(|i| fd(which, i)).collect();
            assert_close(name, got, &want, 1e-4);
        }
    }
);

gpu_test!(
    async fn attention_decode_matches_the_cpu_over_a_kv_cache() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng(5);
        // (n_new, pos0, n_heads, n_kv_heads, head_dim, max_len)
        for &(n_new, pos0, nh, nkv, hd) in &[
            (1, 0, 2, 1, 6),
            (1, 37, 9, 3, 64),
            (5, 37, 4, 2, 10),
            (19, 0, 3, 3, 16),
            (2, 300, 4, 1, 128),
        ] {
            let max_len = pos0 + n_new + 9;
            let (qd, kvd) = (nh * hd, nkv * hd);
            let q = rng.vec(n_new * qd, 1.5);
            // The cache beyond pos0 + n_new holds garbage that must not be read.
            let mut kc = rng.vec(max_len * kvd, 1.5);
            let mut vc = rng.vec(max_len * kvd, 1.0);
            for x in kc[(pos0 + n_new) * kvd..]
                .iter_mut()
                .chain(vc[(pos0 + n_new) * kvd..].iter_mut())
            {
                *x = 1e30;
            }
            let (qb, kb, vb) = (up(&gpu, &q), up(&gpu, &kc), up(&gpu, &vc));
            let ob = gpu.zeros("out", q.len()).unwrap();
            let mut rec = Recorder::new(&gpu, &arena);
            attention::attention_decode(
                &mut rec,
                ob.view(),
                qb.view(),
                kb.view(),
                vb.view(),
                n_new,
                pos0,
                nh,
                nkv,
                hd,
            )
            .unwrap();
            rec.finish().unwrap();
            let mut want = vec![0f32; q.len()];
            let shape = AttentionShape {
                t: n_new,
                past: pos0,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let n = (pos0 + n_new) * kvd;
            infer::attention_forward(&mut want, &q, &kc[..n], &vc[..n], shape);
            assert_close(
                &format!("decode n_new {n_new} pos0 {pos0} heads {nh}/{nkv} hd {hd}"),
                &read_n(&gpu, &ob, q.len()).await,
                &want,
                1e-5,
            );
        }
    }
);

gpu_test!(
    async fn bad_shapes_are_errors_not_panics() {
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let b = gpu.zeros("b", 1024).unwrap();
        let small = gpu.zeros("small", 8).unwrap();
        let mut rec = Recorder::new(&gpu, &arena);
        let s = AttnShape {
            batch: 1,
            seq: 4,
            n_heads: 3,
            n_kv_heads: 2,
            head_dim: 8,
        };
        let v = b.view();
        assert!(attention::attention_forward(&mut rec, v, v, v, v, v, s).is_err());
        let s = AttnShape { n_kv_heads: 1, ..s };
        assert!(attention::attention_forward(&mut rec, v, small.view(), v, v, v, s).is_err());
        let s0 = AttnShape { head_dim: 0, ..s };
        assert!(attention::attention_forward(&mut rec, v, v, v, v, v, s0).is_err());
        let sw = AttnShape {
            head_dim: 1000,
            ..s
        };
        assert!(attention::attention_forward(&mut rec, v, v, v, v, v, sw).is_err());
        let sm = small.view();
        assert!(attention::attention_backward(&mut rec, v, v, v, v, v, v, v, v, v, sm, s).is_err());
        assert!(attention::attention_decode(&mut rec, v, v, sm, sm, 1, 10, 3, 1, 8).is_err());
        assert!(attention::attention_decode(&mut rec, v, v, v, v, 1, 0, 3, 0, 8).is_err());
        // Empty shapes are nothing to do.
        let se = AttnShape { seq: 0, ..s };
        attention::attention_forward(&mut rec, v, v, v, v, v, se).unwrap();
        rec.finish().unwrap();
    }
);

#[cfg(not(target_arch = "wasm32"))]
/// CPU time of this process in ms (Linux; 0 elsewhere).
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() * 10.0
}

// Timing is for the native bench (`cargo test --release -- --nocapture attention_timing`).
#[cfg(not(target_arch = "wasm32"))]
gpu_test!(
    async fn attention_timing_of_the_real_shape() {
        // SmolLM2-135M: batch 4, seq 256, 9 heads / 3 kv heads, head_dim 64; one layer.
        let gpu = gpu().await;
        let arena = Arena::new(&gpu);
        let mut rng = Rng(6);
        let s = AttnShape {
            batch: 4,
            seq: 256,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
        };
        let c = case(&mut rng, s);
        let nl = s.batch * s.n_heads * s.seq;
        let (qb, kb, vb, db) = (
            up(&gpu, &c.q),
            up(&gpu, &c.k),
            up(&gpu, &c.v),
            up(&gpu, &c.dout),
        );
        let ob = gpu.zeros("out", c.q.len()).unwrap();
        let lb = gpu.zeros("lse", nl).unwrap();
        let sb = gpu.zeros("scratch", nl).unwrap();
        let dqb = gpu.zeros("dq", c.q.len()).unwrap();
        let dkb = gpu.zeros("dk", c.k.len()).unwrap();
        let dvb = gpu.zeros("dv", c.k.len()).unwrap();
        let run = |fwd: bool, bwd: bool| {
            let mut rec = Recorder::new(&gpu, &arena);
            if fwd {
                attention::attention_forward(
                    &mut rec,
                    ob.view(),
                    lb.view(),
                    qb.view(),
                    kb.view(),
                    vb.view(),
                    s,
                )
                .unwrap();
            }
            if bwd {
                attention::attention_backward(
                    &mut rec,
                    dqb.view(),
                    dkb.view(),
                    dvb.view(),
                    db.view(),
                    qb.view(),
                    kb.view(),
                    vb.view(),
                    ob.view(),
                    lb.view(),
                    sb.view(),
                    s,
                )
                .unwrap();
            }
            rec.finish().unwrap();
            gpu.sync().unwrap();
        };
        run(true, true); // compile + warm up
        let reps = 3;
        // Wall time, and this process's CPU time (lavapipe runs in-process: a steadier number
        // when other work shares the cores).
        let time = |fwd: bool, bwd: bool| {
            let (t0, c0) = (std::time::Instant::now(), cpu_ms());
            for _ in 0..reps {
                run(fwd, bwd);
            }
            let n = reps as f64;
            (t0.elapsed().as_secs_f64() * 1000.0 / n, (cpu_ms() - c0) / n)
        };
        let (f, b) = (time(true, false), time(false, true));
        eprintln!(
            "attention {s:?} on {}: forward {:.1} ms (cpu {:.1}), backward {:.1} ms (cpu {:.1}), \
         total {:.1} ms per layer",
            gpu.describe(),
            f.0,
            f.1,
            b.0,
            b.1,
            f.0 + b.0
        );
        // Sanity: the result matches the CPU.
        let cs = SeqAttention {
            batch: s.batch,
            seq: s.seq,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
        };
        let (mut wout, mut wlse) = (vec![0f32; c.q.len()], vec![0f32; nl]);
        cpu::attention_forward(&mut wout, &mut wlse, &c.q, &c.k, &c.v, cs);
        assert_close(
            "out (real shape)",
            &read_n(&gpu, &ob, c.q.len()).await,
            &wout,
            1e-5,
        );
    }
);
