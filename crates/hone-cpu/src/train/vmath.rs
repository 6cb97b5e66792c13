//! Elementwise kernels whose cost is `exp`: SwiGLU forward and backward and the softmax pieces,
//! written over slices with an `exp` the compiler can vectorize (libm's `expf` is a scalar
//! call), compiled twice on x86_64 (baseline and AVX2+FMA, picked at run time).
//!
//! `exp` follows Cephes' `expf`: `x = n ln2 + r`, `|r| <= ln2 / 2`, a degree-6 polynomial for
//! `e^r`, and `2^n` put into the exponent bits; within 2 ulp of the true value for
//! x in [-87.3, 88.3] (inputs outside are clamped: results below 1.2e-38 or above 2.1e38 are
//! not needed anywhere here).

/// `e^x`, vectorizable (see the module notes for its accuracy and range).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    y * f32::from_bits(((ni + 127) << 23) as u32)
}

/// Define `$name` over slices: a baseline build and, on x86_64, an AVX2+FMA build chosen at
/// run time. Both run the same Rust code (no reassociation or fusing is implied by the target
/// features), so they give identical results.
macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

dispatch! {
    /// `out = silu(gate) * up`, silu(g) = g / (1 + e^-g).
    pub fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

dispatch! {
    /// Backward of `swiglu`: `dup = dout * silu(gate)`,
    /// `dgate = dout * up * s * (1 + gate * (1 - s))` with s = sigmoid(gate).
    pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        let n = dgate.len();
        let (dup, dout, gate, up) = (&mut dup[..n], &dout[..n], &gate[..n], &up[..n]);
        for i in 0..n {
            let (g, u, d) = (gate[i], up[i], dout[i]);
            let s = 1.0 / (1.0 + exp(-g));
            dup[i] = d * (g * s);
            dgate[i] = d * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

dispatch! {
    /// `x[i] = e^(x[i] - shift)` in place; returns the sum of the results (accumulated in f64).
    pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f64 {
        let mut acc = [0f64; 8];
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            for j in 0..8 {
                c[j] = exp(c[j] - shift);
                acc[j] += c[j] as f64;
            }
        }
        let mut sum = 0f64;
        for v in chunks.into_remainder() {
            *v = exp(*v - shift);
            sum += *v as f64;
        }
        acc.iter().sum::<f64>() + sum
    }
}

dispatch! {
    /// Largest value (`-inf` for an empty slice).
    pub fn max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for c in chunks {
            for j in 0..8 {
                acc[j] = acc[j].max(c[j]);
            }
        }
        acc.iter().fold(rest, |m, &v| m.max(v))
    }
}

dispatch! {
    /// `p[i] = e^(s[i] - shift)` and `g[i] = p[i] * (g[i] - d)`: attention's backward through
    /// the softmax, given the scores `s` (overwritten by the probabilities) and `g = dP`.
    pub fn softmax_backward_row(s: &mut [f32], g: &mut [f32], shift: f32, d: f32) {
        let n = s.len();
        let g = &mut g[..n];
        for i in 0..n {
            let p = exp(s[i] - shift);
            s[i] = p;
            g[i] = p * (g[i] - d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_f64() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).to_bits() as i64 - (got as f32).to_bits() as i64;
            worst = worst.max(ulp.unsigned_abs() as f64);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "exp: {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1.3e-38 && exp(-1000.0) >= 0.0);
        assert!(exp(f32::NEG_INFINITY) < 1.3e-38);
    }

    #[test]
    fn slice_kernels_match_scalar_definitions() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.7).collect();
        let up: Vec<f32> = (0..37).map(|i| (i as f32) * 0.1 - 1.0).collect();
        let mut out = vec![0f32; 37];
        swiglu(&mut out, &x, &up);
        for i in 0..37 {
            let want = x[i] as f64 / (1.0 + (-x[i] as f64).exp()) * up[i] as f64;
            assert!(
                (out[i] as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                "{i}"
            );
        }
        let top = x[36];
        assert_eq!(max(&x), top);
        let mut e = x.clone();
        let sum = exp_shifted_sum(&mut e, top);
        let want: f64 = x.iter().map(|&v| (v as f64 - top as f64).exp()).sum();
        assert!((sum - want).abs() < 1e-6 * want);
        assert!((e[36] - 1.0).abs() < 1e-6);
    }
}
