//! Dequantization of GGUF block formats (and f16/bf16) to f32.
//!
//! Block layouts follow ggml (`ggml-common.h`); every value is computed with the same f32
//! operations in the same order as ggml's reference `dequantize_row_*` (and gguf-py's
//! `gguf.quants`), so results are bit-identical to theirs. Rust never contracts `a * b + c`
//! into an FMA on its own, which keeps that true on every target.
//!
//! The functions sit inside the CPU matmul (tile rows are dequantized on the fly), so they
//! allocate nothing and work block by block with fixed-size inner loops.

use crate::tensor::DType;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Values per super-block of the K-quants.
const QK_K: usize = 256;

/// Dequantize `bytes` (a whole number of blocks of `dtype`) into `out`
/// (`out.len()` = blocks x block size).
///
/// Panics if `bytes.len()` is not `out.len() / block_size * type_size` (a caller bug, not a
/// property of a file: `TensorEntry::new` checks byte lengths when tensors are loaded).
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let bs = dtype.block_size();
    assert!(
        out.len().is_multiple_of(bs) && bytes.len() == out.len() / bs * dtype.type_size(),
        "dequantize {dtype}: {} bytes do not hold {} values",
        bytes.len(),
        out.len()
    );
    match dtype {
        DType::F32 => dequantize_f32(bytes, out),
        DType::F16 => dequantize_f16(bytes, out),
        DType::BF16 => dequantize_bf16(bytes, out),
        DType::Q8_0 => blocks::<34, 32>(bytes, out, q8_0),
        DType::Q4_0 => blocks::<18, 32>(bytes, out, q4_0),
        DType::Q4_1 => blocks::<20, 32>(bytes, out, q4_1),
        DType::Q5_0 => blocks::<22, 32>(bytes, out, q5_0),
        DType::Q5_1 => blocks::<24, 32>(bytes, out, q5_1),
        DType::Q4K => blocks::<144, QK_K>(bytes, out, q4_k),
        DType::Q5K => blocks::<176, QK_K>(bytes, out, q5_k),
        DType::Q6K => blocks::<210, QK_K>(bytes, out, q6_k),
    }
}

/// Little-endian f32 bytes to f32 values (`out.len()` = `bytes.len() / 4`).
pub fn dequantize_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
        *o = f32::from_le_bytes(*c);
    }
}

/// Little-endian IEEE half bytes to f32 values (`out.len()` = `bytes.len() / 2`).
pub fn dequantize_f16(bytes: &[u8], out: &mut [f32]) {
    // Staged through a small aligned buffer so that `half` can use its SIMD conversion
    // (F16C on x86, detected at run time), about 4x faster than value-by-value here.
    const CHUNK: usize = 256;
    let mut halves = [f16::ZERO; CHUNK];
    for (o, b) in out.chunks_mut(CHUNK).zip(bytes.chunks(2 * CHUNK)) {
        let h = &mut halves[..o.len()];
        for (x, c) in h.iter_mut().zip(b.as_chunks::<2>().0) {
            *x = f16::from_le_bytes(*c);
        }
        h.convert_to_f32_slice(o);
    }
}

/// Little-endian bfloat16 bytes to f32 values (`out.len()` = `bytes.len() / 2`).
pub fn dequantize_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
        *o = bf16::from_le_bytes(*c).to_f32();
    }
}

/// Run `f` on each (block bytes, block output) pair; fixed sizes let the compiler unroll and
/// vectorise the per-block loops.
#[inline(always)]
fn blocks<const TS: usize, const BS: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; TS], &mut [f32; BS]),
) {
    let (blocks_in, _) = bytes.as_chunks::<TS>();
    let (blocks_out, _) = out.as_chunks_mut::<BS>();
    for (b, o) in blocks_in.iter().zip(blocks_out) {
        f(b, o);
    }
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q8_0: f16 scale d, 32 x i8; x = d * q.
#[inline(always)]
fn q8_0(b: &[u8; 34], out: &mut [f32; 32]) {
    let d = half_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = d * (q as i8) as f32;
    }
}

/// Q4_0: f16 scale d, 16 bytes of nibbles (low nibble = value j, high = value j+16);
/// x = d * (q - 8).
#[inline(always)]
fn q4_0(b: &[u8; 18], out: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = b[2 + j];
        lo[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        hi[j] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: f16 scale d, f16 minimum m, 16 bytes of nibbles; x = d * q + m.
#[inline(always)]
fn q4_1(b: &[u8; 20], out: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = b[4 + j];
        lo[j] = d * (q & 0x0F) as f32 + m;
        hi[j] = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0: f16 scale d, u32 of fifth bits (bit j for value j), 16 bytes of nibbles;
/// x = d * (q - 16).
#[inline(always)]
fn q5_0(b: &[u8; 22], out: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        lo[j] = d * (((q & 0x0F) as u32 | h0) as i32 - 16) as f32;
        hi[j] = d * (((q >> 4) as u32 | h1) as i32 - 16) as f32;
    }
}

/// Q5_1: f16 scale d, f16 minimum m, u32 of fifth bits, 16 bytes of nibbles; x = d * q + m.
#[inline(always)]
fn q5_1(b: &[u8; 24], out: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        lo[j] = d * ((q & 0x0F) as u32 | h0) as f32 + m;
        hi[j] = d * ((q >> 4) as u32 | h1) as f32 + m;
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K super-block, packed in
/// 12 bytes: sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins);
/// sub-blocks 4..8 in the nibbles of bytes 8..12 plus the top 2 bits of bytes 0..8.
#[inline(always)]
fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of nibbles. Eight
/// sub-blocks of 32; bytes 32c..32c+32 hold sub-block 2c (low nibbles) and 2c+1 (high);
/// x = (d * scale) * q - (dmin * min).
#[inline(always)]
fn q4_k(b: &[u8; 144], out: &mut [f32; QK_K]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (sc0, m0) = k_scale_min(scales, 2 * c);
        let (sc1, m1) = k_scale_min(scales, 2 * c + 1);
        let (d0, dm0) = (d * sc0 as f32, dmin * m0 as f32);
        let (d1, dm1) = (d * sc1 as f32, dmin * m1 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = out[64 * c..64 * c + 64].split_at_mut(32);
        for l in 0..32 {
            lo[l] = d0 * (q[l] & 0x0F) as f32 - dm0;
            hi[l] = d1 * (q[l] >> 4) as f32 - dm1;
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits (bit s of byte l belongs to value l of
/// sub-block s); x = (d * scale) * q - (dmin * min).
#[inline(always)]
fn q5_k(b: &[u8; 176], out: &mut [f32; QK_K]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (sc0, m0) = k_scale_min(scales, 2 * c);
        let (sc1, m1) = k_scale_min(scales, 2 * c + 1);
        let (d0, dm0) = (d * sc0 as f32, dmin * m0 as f32);
        let (d1, dm1) = (d * sc1 as f32, dmin * m1 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = out[64 * c..64 * c + 64].split_at_mut(32);
        for l in 0..32 {
            let h0 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h1 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            lo[l] = d0 * ((q[l] & 0x0F) | h0) as f32 - dm0;
            hi[l] = d1 * ((q[l] >> 4) | h1) as f32 - dm1;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 i8 scales (one per 16
/// values), f16 d. Each half of 128 values uses 64 low bytes and 32 high bytes:
/// value 32k + l (k = 0..4, l = 0..32) takes nibble (k / 2) of low byte l + 32 (k % 2) and
/// bits 2k..2k+2 of high byte l; x = (d * scale) * (q - 32).
#[inline(always)]
fn q6_k(b: &[u8; 210], out: &mut [f32; QK_K]) {
    let d = half_at(b, 208);
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc = &b[192..208];
    for half in 0..2 {
        let ql = &ql_all[64 * half..64 * half + 64];
        let qh = &qh_all[32 * half..32 * half + 32];
        let o = &mut out[128 * half..128 * half + 128];
        for k in 0..4 {
            let low = &ql[32 * (k % 2)..32 * (k % 2) + 32];
            let shift = 4 * (k / 2);
            for g in 0..2 {
                let ds = d * (sc[8 * half + 2 * k + g] as i8) as f32;
                for i in 0..16 {
                    let l = 16 * g + i;
                    let q = ((low[l] >> shift) & 0x0F) | (((qh[l] >> (2 * k)) & 3) << 4);
                    o[32 * k + l] = ds * (q as i32 - 32) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../tests/fixtures/quant/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (regenerate with scripts/make_quant_fixtures.py)")
        })
    }

    /// Every type dequantizes bit-identically to gguf-py's `gguf.quants.dequantize` on random
    /// blocks. Exact equality is the right bar: both sides evaluate the same f32 operations in
    /// the same order (no FMA contraction, f16 -> f32 conversion is exact).
    #[test]
    fn every_type_matches_gguf_py_bit_for_bit() {
        for dtype in DType::ALL {
            let stem = dtype.to_string().to_lowercase();
            let bytes = fixture(&format!("{stem}.bin"));
            let want: Vec<f32> = fixture(&format!("{stem}.f32"))
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert!(
                want.len() >= 2 * dtype.block_size(),
                "{dtype}: fixture too small"
            );
            assert_eq!(
                bytes.len(),
                want.len() / dtype.block_size() * dtype.type_size(),
                "{dtype}: fixture sizes disagree"
            );
            let mut got = vec![f32::NAN; want.len()];
            dequantize(dtype, &bytes, &mut got);
            let mut mismatches = 0;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                if g.to_bits() != w.to_bits() {
                    if mismatches < 5 {
                        eprintln!("{dtype}: value {i}: got {g:e}, gguf-py {w:e}");
                    }
                    mismatches += 1;
                }
            }
            assert_eq!(mismatches, 0, "{dtype}: {mismatches} values differ");
            // The fixtures must exercise the values, not just zeros.
            let distinct: std::collections::BTreeSet<u32> =
                want.iter().map(|x| x.to_bits()).collect();
            assert!(
                distinct.len() > want.len() / 8,
                "{dtype}: degenerate fixture"
            );
        }
    }

    #[test]
    fn q4_0_hand_computed_block() {
        // d = 0.5, first byte 0x2F: value 0 = (15 - 8) * 0.5, value 16 = (2 - 8) * 0.5.
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 0x2F;
        let mut out = [0f32; 32];
        dequantize(DType::Q4_0, &b, &mut out);
        assert_eq!(out[0], 3.5);
        assert_eq!(out[16], -3.0);
        assert_eq!(out[1], -4.0);
    }

    #[test]
    #[should_panic(expected = "do not hold")]
    fn wrong_length_is_a_caller_bug() {
        let mut out = [0f32; 32];
        dequantize(DType::Q8_0, &[0u8; 33], &mut out);
    }
}
