//! Projection weights as ONNX Runtime's `MatMulNBits` (com.microsoft): 4-bit values in blocks
//! of 32 along K, a float scale per block, and a zero point per block.
//!
//! `MatMulNBits(A, B, scales, zero_points)` computes `A · Wᵀ` for `W [N, K]` with
//! `W[n, k] = (q[n, k] - zp[n, k/32]) · scale[n, k/32]`; `B` is `[N, K/32, 16]` bytes, value
//! `2j` of a block in the low nibble of byte `j` and value `2j+1` in the high nibble.
//!
//! GGUF blocks map without a detour through f32 where they can: Q4_0 (`d·(q-8)`) keeps its
//! nibbles and scale (zero point 8, ONNX Runtime's default, so the input is omitted); Q4_1
//! (`d·q + m`) keeps its nibbles and scale with zero point 8 and a per-block offset `8d + m`. Any other type is
//! dequantized and quantized per block, asymmetric, with packed 4-bit zero points.

use hone_core::{DType, Error, Result, TensorEntry};

/// Values per block along K.
pub const BLOCK: usize = 32;
/// Bytes per packed block (32 nibbles).
const BLOB: usize = BLOCK / 2;

/// The per-block zero points of an [`Int4Weight`].
#[derive(Debug, Clone, PartialEq)]
pub enum ZeroPoints {
    /// 8 for every block (ONNX Runtime's default: the input is left out).
    Eight,
    /// 8 for every block (the input is left out), plus a float added to every value of the
    /// block, `[N * K/32]`: `W = (q - 8)·scale + offset`. The graph adds the offsets as
    /// `blocksum(x) · offsetsᵀ` next to MatMulNBits, because a float zero-point input sends
    /// ONNX Runtime's CPU kernel to a path ~7x slower.
    Offsets(Vec<f32>),
    /// 4-bit, two blocks per byte (low nibble first), `[N * ceil(K/32 / 2)]`.
    Packed(Vec<u8>),
}

/// A `[N, K]` weight in MatMulNBits layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Weight {
    pub n: usize,
    pub k: usize,
    /// `[N, K/32, 16]`.
    pub packed: Vec<u8>,
    /// `[N * K/32]`.
    pub scales: Vec<f32>,
    pub zero_points: ZeroPoints,
}

impl Int4Weight {
    pub fn blocks_per_row(&self) -> usize {
        self.k / BLOCK
    }

    /// The 4-bit value `k` of row `n`.
    fn q(&self, n: usize, k: usize) -> u8 {
        let byte = self.packed[n * self.k / 2 + k / 2];
        if k.is_multiple_of(2) {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }

    fn zero_point(&self, block: usize) -> f32 {
        match &self.zero_points {
            ZeroPoints::Eight => 8.0,
            ZeroPoints::Offsets(_) => 8.0,
            ZeroPoints::Packed(z) => {
                let per_row = self.blocks_per_row().div_ceil(2);
                let (n, b) = (block / self.blocks_per_row(), block % self.blocks_per_row());
                let byte = z[n * per_row + b / 2];
                f32::from(if b % 2 == 0 { byte & 0x0F } else { byte >> 4 })
            }
        }
    }

    /// The weight these blocks stand for, `[N, K]` row-major (what ONNX Runtime computes with).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        for n in 0..self.n {
            for k in 0..self.k {
                let block = n * self.blocks_per_row() + k / BLOCK;
                let offset = match &self.zero_points {
                    ZeroPoints::Offsets(o) => o[block],
                    _ => 0.0,
                };
                out[n * self.k + k] = (f32::from(self.q(n, k)) - self.zero_point(block))
                    * self.scales[block]
                    + offset;
            }
        }
        out
    }
}

/// Whether `t` (`[N, K]`) can be written as MatMulNBits (K a multiple of the block size).
pub fn fits(t: &TensorEntry) -> bool {
    t.shape.len() == 2 && t.shape[1].is_multiple_of(BLOCK) && t.shape[1] > 0
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Nibbles of a GGUF Q4 block (low = value j, high = value j+16) in MatMulNBits order.
fn repack(qs: &[u8], out: &mut Vec<u8>) {
    let value = |i: usize| {
        if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        }
    };
    for j in 0..BLOB {
        out.push(value(2 * j) | (value(2 * j + 1) << 4));
    }
}

/// `t` (`[N, K]`, HF layout) as MatMulNBits blocks; see the module docs for which way.
pub fn quantize(t: &TensorEntry) -> Result<Int4Weight> {
    if !fits(t) {
        return Err(Error::Invalid(format!(
            "int4: tensor '{}' of shape {:?} is not a matrix with columns in blocks of {BLOCK}",
            t.name, t.shape
        )));
    }
    let (n, k) = (t.shape[0], t.shape[1]);
    let nb = n * (k / BLOCK);
    let mut packed = Vec::with_capacity(n * k / 2);
    let mut scales = Vec::with_capacity(nb);
    let bytes = t.data.as_slice();
    match t.dtype {
        DType::Q4_0 => {
            for b in bytes.chunks_exact(18).take(nb) {
                scales.push(f16_at(b, 0));
                repack(&b[2..18], &mut packed);
            }
            Ok(Int4Weight {
                n,
                k,
                packed,
                scales,
                zero_points: ZeroPoints::Eight,
            })
        }
        DType::Q4_1 => {
            let mut zps = Vec::with_capacity(nb);
            // d·q + m = d·(q - 8) + (8d + m).
            for b in bytes.chunks_exact(20).take(nb) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                scales.push(d);
                zps.push(8.0 * d + m);
                repack(&b[4..20], &mut packed);
            }
            Ok(Int4Weight {
                n,
                k,
                packed,
                scales,
                zero_points: ZeroPoints::Offsets(zps),
            })
        }
        _ => Ok(quantize_f32(&t.to_f32(), n, k)),
    }
}

/// Asymmetric 4-bit blocks of f32 rows: the block's range (widened to include 0) in 15 steps.
pub fn quantize_f32(w: &[f32], n: usize, k: usize) -> Int4Weight {
    let bpr = k / BLOCK;
    let zp_per_row = bpr.div_ceil(2);
    let mut packed = Vec::with_capacity(n * k / 2);
    let mut scales = Vec::with_capacity(n * bpr);
    let mut zps = vec![0u8; n * zp_per_row];
    for row in 0..n {
        for b in 0..bpr {
            let vals = &w[row * k + b * BLOCK..row * k + (b + 1) * BLOCK];
            let lo = vals.iter().fold(0f32, |m, &v| m.min(v));
            let hi = vals.iter().fold(0f32, |m, &v| m.max(v));
            let scale = if hi > lo { (hi - lo) / 15.0 } else { 1.0 };
            let zp = (-lo / scale).round().clamp(0.0, 15.0);
            let q = |v: f32| ((v / scale).round() + zp).clamp(0.0, 15.0) as u8;
            for j in 0..BLOB {
                packed.push(q(vals[2 * j]) | (q(vals[2 * j + 1]) << 4));
            }
            scales.push(scale);
            let zb = &mut zps[row * zp_per_row + b / 2];
            *zb |= (zp as u8) << (4 * (b % 2));
        }
    }
    Int4Weight {
        n,
        k,
        packed,
        scales,
        zero_points: ZeroPoints::Packed(zps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_core::fixtures::{random_tensor_bytes, SplitMix64};

    fn entry(dtype: DType, n: usize, k: usize, seed: u64) -> TensorEntry {
        let bytes = random_tensor_bytes(&mut SplitMix64(seed), dtype, n * k, 0.05);
        TensorEntry::new("w", vec![n, k], dtype, hone_core::Bytes::from_vec(bytes)).unwrap()
    }

    #[test]
    fn gguf_q4_blocks_map_exactly() {
        for dtype in [DType::Q4_0, DType::Q4_1] {
            let t = entry(dtype, 6, 96, 3);
            let q = quantize(&t).unwrap();
            let want = t.to_f32();
            let got = q.dequantize();
            let worst = want
                .iter()
                .zip(&got)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // Q4_1 goes through zero point -m/d: a rounding step, not a requantization.
            assert!(worst <= 1e-6, "{dtype:?}: {worst}");
        }
    }

    #[test]
    fn f32_blocks_are_within_half_a_step() {
        let t = entry(DType::F32, 5, 64, 9);
        let q = quantize(&t).unwrap();
        assert!(matches!(q.zero_points, ZeroPoints::Packed(_)));
        let want = t.to_f32();
        let got = q.dequantize();
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            let step = q.scales[i / BLOCK];
            assert!(
                (a - b).abs() <= 0.5 * step + 1e-7,
                "{i}: {a} vs {b} (step {step})"
            );
        }
    }

    #[test]
    fn odd_widths_are_refused_naming_the_tensor() {
        let t = entry(DType::F32, 2, 40, 1);
        assert!(!fits(&t));
        assert!(quantize(&t).unwrap_err().to_string().contains("'w'"));
    }
}
