//! Matrix-vector products for decoding one token (M = 1), where reading the weights is the
//! cost: f32 rows, and fused dequantize-dot kernels for Q8_0, Q4_0 and Q4_1 that never write
//! the dequantized values out (`dot = sum_b d_b * sum_j q_j x_j (+ m_b * sum_j x_j)`).
//!
//! The kernels are plain Rust with fixed-width lane accumulators, compiled twice on x86_64
//! (baseline and AVX2, picked at run time). Rust never reassociates or fuses float operations,
//! so both builds compute bit-identical results.

use half::f16;
use hone_core::DType;

/// Lanes of the per-row accumulators (fixed, so the summation order never depends on the CPU).
const LANES: usize = 32;

/// Whether `dtype` has a fused kernel here.
pub fn has_fused_kernel(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
}

/// Per-block (32 values) sums of `x`, needed by the Q4_1 kernel's minimum term.
pub fn block_sums(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(x.chunks(32).map(|c| c.iter().sum::<f32>()));
}

/// `out[r] = row_r(w) . x` for the rows of `w_bytes` (whole rows of `dtype`, `k` values each).
/// `xsum` holds `block_sums(x)` (only Q4_1 reads it).
pub fn gemv_rows(dtype: DType, out: &mut [f32], w_bytes: &[u8], x: &[f32], xsum: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { gemv_rows_avx2(dtype, out, w_bytes, x, xsum) };
            return;
        }
    }
    gemv_rows_impl(dtype, out, w_bytes, x, xsum);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemv_rows_avx2(dtype: DType, out: &mut [f32], w_bytes: &[u8], x: &[f32], xsum: &[f32]) {
    gemv_rows_impl(dtype, out, w_bytes, x, xsum);
}

#[inline(always)]
fn gemv_rows_impl(dtype: DType, out: &mut [f32], w_bytes: &[u8], x: &[f32], xsum: &[f32]) {
    let k = x.len();
    let row_bytes = k / dtype.block_size() * dtype.type_size();
    assert_eq!(w_bytes.len(), out.len() * row_bytes);
    for (o, row) in out.iter_mut().zip(w_bytes.chunks_exact(row_bytes)) {
        *o = match dtype {
            DType::F32 => dot_f32_bytes(row, x),
            DType::Q8_0 => dot_q8_0(row, x),
            DType::Q4_0 => dot_q4_0(row, x),
            DType::Q4_1 => dot_q4_1(row, x, xsum),
            _ => unreachable!("no fused kernel for {dtype}"),
        };
    }
}

/// `out[r] = w[r, :] . x` for f32 rows.
pub fn gemv_f32(out: &mut [f32], w: &[f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { gemv_f32_avx2(out, w, x) };
            return;
        }
    }
    gemv_f32_impl(out, w, x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemv_f32_avx2(out: &mut [f32], w: &[f32], x: &[f32]) {
    gemv_f32_impl(out, w, x);
}

#[inline(always)]
fn gemv_f32_impl(out: &mut [f32], w: &[f32], x: &[f32]) {
    let k = x.len();
    assert_eq!(w.len(), out.len() * k);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(k)) {
        *o = dot_f32(row, x);
    }
}

#[inline(always)]
fn hsum(acc: &[f32; LANES]) -> f32 {
    // Pairwise, in a fixed order.
    let mut v = *acc;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

#[inline(always)]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    hsum(&acc) + tail
}

#[inline(always)]
fn dot_f32_bytes(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut tail = 0f32;
    let (rc, xc) = (row.chunks_exact(4 * LANES), x.chunks_exact(LANES));
    for (r, xs) in rc.remainder().chunks_exact(4).zip(xc.remainder()) {
        tail += f32::from_le_bytes([r[0], r[1], r[2], r[3]]) * xs;
    }
    for (r, xs) in rc.zip(xc) {
        for i in 0..LANES {
            let w = f32::from_le_bytes([r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]]);
            acc[i] += w * xs[i];
        }
    }
    hsum(&acc) + tail
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q8_0 block: f16 d, 32 x i8; value = d * q.
#[inline(always)]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (blk, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        let d = half_at(blk, 0);
        let qs = &blk[2..34];
        for j in 0..32 {
            acc[j] += d * ((qs[j] as i8) as f32 * xs[j]);
        }
    }
    hsum(&acc)
}

/// Q4_0 block: f16 d, 16 bytes of nibbles (low = value j, high = value j + 16);
/// value = d * (q - 8).
#[inline(always)]
fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (blk, xs) in row.chunks_exact(18).zip(x.chunks_exact(32)) {
        let d = half_at(blk, 0);
        let qs = &blk[2..18];
        for j in 0..16 {
            let lo = ((qs[j] & 0x0F) as i32 - 8) as f32;
            let hi = ((qs[j] >> 4) as i32 - 8) as f32;
            acc[j] += d * (lo * xs[j]);
            acc[j + 16] += d * (hi * xs[j + 16]);
        }
    }
    hsum(&acc)
}

/// Q4_1 block: f16 d, f16 m, 16 bytes of nibbles; value = d * q + m.
#[inline(always)]
fn dot_q4_1(row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut mins = 0f32;
    for ((blk, xs), &s) in row.chunks_exact(20).zip(x.chunks_exact(32)).zip(xsum) {
        let d = half_at(blk, 0);
        let m = half_at(blk, 2);
        let qs = &blk[4..20];
        for j in 0..16 {
            acc[j] += d * ((qs[j] & 0x0F) as f32 * xs[j]);
            acc[j + 16] += d * ((qs[j] >> 4) as f32 * xs[j + 16]);
        }
        mins += m * s;
    }
    hsum(&acc) + mins
}
