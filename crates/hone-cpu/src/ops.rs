//! The forward ops of a Llama-family decoder, llm.c style: plain functions over f32 slices with
//! explicit shapes (row-major, rows = tokens). Each `*_forward` will get its `*_backward` beside
//! it. Math follows HF `LlamaForCausalLM` / `Qwen2ForCausalLM` in f32.

use std::cell::RefCell;

use crate::matmul::Weight;
use crate::parallel;

/// `out[t, :] = table[tokens[t], :]` (rows dequantized from the table's stored type).
/// Token ids must be < table.rows (the caller checks user input).
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], table: &Weight) {
    let c = table.cols;
    assert_eq!(out.len(), tokens.len() * c);
    for (row, &tok) in out.chunks_exact_mut(c).zip(tokens) {
        table.rows_f32(tok as usize, row);
    }
}

/// RMSNorm over rows of `c`: `out = x * rsqrt(mean(x^2) + eps) * weight` (HF order, f32; the
/// sum of squares is accumulated in f64).
pub fn rmsnorm_forward(out: &mut [f32], inp: &[f32], weight: &[f32], eps: f32) {
    let c = weight.len();
    assert_eq!(out.len(), inp.len());
    assert_eq!(inp.len() % c, 0);
    for (o, x) in out.chunks_exact_mut(c).zip(inp.chunks_exact(c)) {
        let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let var = (ss / c as f64) as f32;
        let r = 1.0 / (var + eps).sqrt();
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(weight) {
            *o = (x * r) * w;
        }
    }
}

/// cos/sin tables `[t, head_dim / 2]` for positions `start..start + t`: the angle is
/// `inv_freq[i] * position` rounded to f32, as HF computes it.
pub fn rope_tables(cos: &mut [f32], sin: &mut [f32], inv_freq: &[f32], start: usize, t: usize) {
    let half = inv_freq.len();
    assert_eq!(cos.len(), t * half);
    assert_eq!(sin.len(), t * half);
    for p in 0..t {
        let pos = (start + p) as f32;
        for (i, &f) in inv_freq.iter().enumerate() {
            let a = f * pos;
            cos[p * half + i] = a.cos();
            sin[p * half + i] = a.sin();
        }
    }
}

/// Rotary embedding in place on `x[t, n_heads, head_dim]`, HF `rotate_half` convention:
/// `x1' = x1 cos - x2 sin`, `x2' = x2 cos + x1 sin` with x1, x2 the two halves of each head.
pub fn rope_forward(x: &mut [f32], cos: &[f32], sin: &[f32], n_heads: usize, head_dim: usize) {
    let half = head_dim / 2;
    let width = n_heads * head_dim;
    assert_eq!(x.len() % width, 0);
    let t = x.len() / width;
    assert_eq!(cos.len(), t * half);
    for (p, row) in x.chunks_exact_mut(width).enumerate() {
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}

/// Shapes of one causal attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// New query positions.
    pub t: usize,
    /// Positions already in the cache before these (query p attends keys 0..=past + p).
    pub past: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

thread_local! {
    /// Per-thread attention scores for one (query, head).
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Causal grouped-query attention. `q[t, n_heads, hd]` (rope applied), `k`, `v`:
/// `[past + t, n_kv_heads, hd]` (the cache, new positions included). `out[t, n_heads, hd]` =
/// softmax(q k^T / sqrt(hd)) v per head, query head h reading kv head h / (n_heads / n_kv_heads).
pub fn attention_forward(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: AttentionShape) {
    let AttentionShape {
        t,
        past,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = s;
    let group = n_heads / n_kv_heads;
    let kv_dim = n_kv_heads * hd;
    let total = past + t;
    assert_eq!(n_heads % n_kv_heads, 0);
    assert_eq!(q.len(), t * n_heads * hd);
    assert_eq!(out.len(), q.len());
    assert!(k.len() >= total * kv_dim && v.len() >= total * kv_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (query position, head): out is [t, n_heads, hd] so chunk i is exactly that.
    parallel::for_each_chunk(out, hd, |i, o| {
        let (p, h) = (i / n_heads, i % n_heads);
        let kvh = h / group;
        let qv = &q[i * hd..(i + 1) * hd];
        let n_keys = past + p + 1;
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in 0..n_keys {
                let kr = &k[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                let sc = dot(qv, kr) * scale;
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let inv = 1.0 / sum;
            o.fill(0.0);
            for (j, &w) in scores.iter().enumerate() {
                let w = w * inv;
                let vr = &v[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                for (o, &x) in o.iter_mut().zip(vr) {
                    *o += w * x;
                }
            }
        });
    });
}

/// Dot product with several accumulators (so the compiler vectorizes it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// SwiGLU in place: `gate = silu(gate) * up`, silu(x) = x / (1 + exp(-x)).
pub fn swiglu_forward(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + (-x).exp()) * u;
    }
}

/// Residual add in place: `x += delta`.
pub fn residual_forward(x: &mut [f32], delta: &[f32]) {
    assert_eq!(x.len(), delta.len());
    for (x, &d) in x.iter_mut().zip(delta) {
        *x += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, Lcg};
    use hone_core::TensorEntry;

    #[test]
    fn embedding_copies_the_rows_of_the_tokens() {
        let mut rng = Lcg::new(2);
        let (v, c) = (11, 7);
        let table = rng.vec(v * c, 1.0);
        let w = Weight::from_entry(&TensorEntry::from_f32("e", vec![v, c], &table).unwrap());
        let toks = [3u32, 0, 10, 3];
        let mut out = vec![0f32; toks.len() * c];
        embedding_forward(&mut out, &toks, &w);
        for (i, &tk) in toks.iter().enumerate() {
            let t = tk as usize;
            assert_eq!(&out[i * c..(i + 1) * c], &table[t * c..(t + 1) * c]);
        }
    }

    #[test]
    fn rmsnorm_matches_the_definition() {
        let mut rng = Lcg::new(3);
        for &c in &[1usize, 5, 64, 577] {
            let rows = 3;
            let x = rng.vec(rows * c, 2.0);
            let w = rng.vec(c, 1.0);
            let eps = 1e-5f32;
            let mut out = vec![0f32; rows * c];
            rmsnorm_forward(&mut out, &x, &w, eps);
            let mut want = vec![0f32; rows * c];
            for r in 0..rows {
                let row = &x[r * c..(r + 1) * c];
                let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                for i in 0..c {
                    want[r * c + i] = (row[i] as f64 * inv * w[i] as f64) as f32;
                }
            }
            assert_close(&out, &want, 1e-6, &format!("rmsnorm c={c}"));
        }
    }

    #[test]
    fn rope_rotates_each_pair_of_halves_by_position_times_frequency() {
        let mut rng = Lcg::new(4);
        for &(hd, nh, t, start) in &[(8usize, 3usize, 5usize, 0usize), (64, 2, 3, 17)] {
            let half = hd / 2;
            let inv: Vec<f32> = (0..half)
                .map(|i| 10000f32.powf(-((2 * i) as f32) / hd as f32))
                .collect();
            let x = rng.vec(t * nh * hd, 1.0);
            let mut cos = vec![0f32; t * half];
            let mut sin = vec![0f32; t * half];
            rope_tables(&mut cos, &mut sin, &inv, start, t);
            let mut got = x.clone();
            rope_forward(&mut got, &cos, &sin, nh, hd);
            // Reference: HF q * cos(emb) + rotate_half(q) * sin(emb), emb = cat(freqs, freqs).
            for p in 0..t {
                for h in 0..nh {
                    let base = (p * nh + h) * hd;
                    for d in 0..hd {
                        let f = inv[d % half] as f64 * (start + p) as f64;
                        let rot = if d < half {
                            -x[base + d + half]
                        } else {
                            x[base + d - half]
                        };
                        let want = x[base + d] as f64 * f.cos() + rot as f64 * f.sin();
                        assert!(
                            (got[base + d] as f64 - want).abs() < 1e-5,
                            "hd {hd} p {p} h {h} d {d}"
                        );
                    }
                }
            }
        }
    }

    /// Plain causal GQA attention: for each query, scores over keys 0..=past+p, softmax, sum.
    fn naive_attention(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape) -> Vec<f32> {
        let hd = s.head_dim;
        let kvd = s.n_kv_heads * hd;
        let mut out = vec![0f32; q.len()];
        for p in 0..s.t {
            for h in 0..s.n_heads {
                let kvh = h * s.n_kv_heads / s.n_heads;
                let qv = &q[(p * s.n_heads + h) * hd..][..hd];
                let n = s.past + p + 1;
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let kr = &k[j * kvd + kvh * hd..][..hd];
                        qv.iter()
                            .zip(kr)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for d in 0..hd {
                    let mut acc = 0f64;
                    for j in 0..n {
                        acc += (scores[j] - m).exp() / z * v[j * kvd + kvh * hd + d] as f64;
                    }
                    out[(p * s.n_heads + h) * hd + d] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_naive_gqa_with_and_without_past() {
        let mut rng = Lcg::new(5);
        for &(nh, nkv, hd, t, past) in &[
            (4usize, 2usize, 8usize, 5usize, 0usize),
            (4, 2, 8, 1, 6),
            (9, 3, 64, 7, 0),
            (9, 3, 64, 3, 11),
            (2, 2, 8, 4, 2),
        ] {
            let s = AttentionShape {
                t,
                past,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let q = rng.vec(t * nh * hd, 1.5);
            let k = rng.vec((past + t) * nkv * hd, 1.5);
            let v = rng.vec((past + t) * nkv * hd, 1.0);
            let mut out = vec![f32::NAN; q.len()];
            attention_forward(&mut out, &q, &k, &v, s);
            let want = naive_attention(&q, &k, &v, s);
            assert_close(&out, &want, 1e-5, &format!("{s:?}"));
        }
    }

    #[test]
    fn swiglu_and_residual_match_the_definitions() {
        let mut rng = Lcg::new(6);
        let g = rng.vec(37, 4.0);
        let u = rng.vec(37, 1.0);
        let mut got = g.clone();
        swiglu_forward(&mut got, &u);
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
            .collect();
        assert_close(&got, &want, 1e-6, "swiglu");

        let mut x = g.clone();
        residual_forward(&mut x, &u);
        let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a + b).collect();
        assert_eq!(x, want);
        let want: f64 = g.iter().zip(&u).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((dot(&g, &u) as f64 - want).abs() < 1e-4 * (1.0 + want.abs()));
    }
}
