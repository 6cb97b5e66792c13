//! Dropout on the LoRA input with a counter-based RNG: whether element `i` of stream `s` is kept
//! is a pure function of `(seed, s, i)`, so the masks are the same whatever the threading, and
//! the backward pass (or a recomputation for gradient checkpointing) regenerates them instead of
//! storing them.

use crate::parallel;

/// SplitMix64's output function: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A dropout mask source: probability `p` of dropping, and the key of one stream (one LoRA
/// input of one micro-batch).
#[derive(Debug, Clone, Copy)]
pub struct DropoutMask {
    key: u64,
    /// Values below this (24-bit uniform) are dropped.
    threshold: u32,
    /// `1 / (1 - p)`, the scale of kept values.
    keep_scale: f32,
}

impl DropoutMask {
    /// The mask of stream `stream` under `seed`, dropping with probability `p` (0 <= p < 1).
    pub fn new(seed: u64, stream: u64, p: f32) -> Self {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability {p} not in [0, 1)"
        );
        DropoutMask {
            key: mix64(seed ^ mix64(stream.wrapping_add(GOLDEN))),
            threshold: (p as f64 * (1u64 << 24) as f64).round() as u32,
            keep_scale: 1.0 / (1.0 - p),
        }
    }

    /// The multiplier of element `i`: 0 when dropped, `1 / (1 - p)` when kept.
    #[inline]
    pub fn factor(&self, i: u64) -> f32 {
        let u = (mix64(self.key.wrapping_add(i.wrapping_mul(GOLDEN))) >> 40) as u32;
        if u < self.threshold {
            0.0
        } else {
            self.keep_scale
        }
    }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `out[i] = inp[i] * mask.factor(i)`.
pub fn dropout_forward(out: &mut [f32], inp: &[f32], mask: DropoutMask) {
    assert_eq!(out.len(), inp.len());
    parallel::for_each_chunk(out, CHUNK, |c, o| {
        let start = c * CHUNK;
        for (j, (o, &x)) in o.iter_mut().zip(&inp[start..]).enumerate() {
            *o = x * mask.factor((start + j) as u64);
        }
    });
}

/// `dinp[i] += dout[i] * mask.factor(i)` (the mask is its own Jacobian).
pub fn dropout_backward(dinp: &mut [f32], dout: &[f32], mask: DropoutMask) {
    assert_eq!(dinp.len(), dout.len());
    parallel::for_each_chunk(dinp, CHUNK, |c, d| {
        let start = c * CHUNK;
        for (j, (d, &g)) in d.iter_mut().zip(&dout[start..]).enumerate() {
            *d += g * mask.factor((start + j) as u64);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_drop_about_p_and_depend_only_on_seed_stream_and_index() {
        let n = 200_000;
        let inp = vec![1f32; n];
        for &p in &[0.0f32, 0.1, 0.5] {
            let mask = DropoutMask::new(7, 3, p);
            let mut out = vec![0f32; n];
            dropout_forward(&mut out, &inp, mask);
            let dropped = out.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
            assert!(
                (dropped - p as f64).abs() < 0.005,
                "p {p}: dropped {dropped}"
            );
            let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            assert!((mean - 1.0).abs() < 0.01, "p {p}: mean {mean}");
            // Same element, same answer, computed alone.
            for i in [0usize, 17, 99_999, n - 1] {
                assert_eq!(out[i], mask.factor(i as u64));
            }
        }
        let a = DropoutMask::new(7, 3, 0.5);
        let b = DropoutMask::new(7, 4, 0.5);
        let c = DropoutMask::new(8, 3, 0.5);
        let same = |x: DropoutMask, y: DropoutMask| {
            (0..1000u64).filter(|&i| x.factor(i) == y.factor(i)).count()
        };
        assert!(
            same(a, b) < 600 && same(a, c) < 600,
            "streams look correlated"
        );
    }

    #[test]
    fn backward_applies_the_forward_mask() {
        let mask = DropoutMask::new(1, 2, 0.3);
        let g: Vec<f32> = (0..5000).map(|i| i as f32 * 0.01).collect();
        let mut d = vec![1f32; g.len()];
        dropout_backward(&mut d, &g, mask);
        for (i, (&d, &g)) in d.iter().zip(&g).enumerate() {
            assert_eq!(d, 1.0 + g * mask.factor(i as u64));
        }
    }
}
