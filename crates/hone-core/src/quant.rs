//! Dequantization of GGUF block formats (and f16/bf16) to f32.

use crate::tensor::DType;

/// Dequantize `bytes` (a whole number of blocks of `dtype`) into `out`
/// (`out.len()` = blocks x block size).
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        _ => todo!("dequantize {dtype}"),
    }
}
