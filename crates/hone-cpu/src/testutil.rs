//! Helpers for unit tests: a seeded generator of test values and a tolerance check.

/// A tiny deterministic generator of test inputs.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }
    /// Uniform in [-scale, scale).
    pub fn next(&mut self, scale: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next(scale)).collect()
    }
}

/// Assert |got - want| <= tol * max(1, rms(want)) element-wise (errors relative to the scale
/// of the whole result: sums with cancellation are not held to a tighter bound than their
/// terms allow), naming the worst element.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let rms = (want.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / want.len().max(1) as f64)
        .sqrt() as f32;
    let scale = rms.max(1.0);
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / scale;
        let err = if err.is_nan() { f32::INFINITY } else { err };
        if err > worst.1 {
            worst = (i, err);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= tol,
        "{what}: element {i}: got {} want {} (error / max(1, rms) = {} > {tol}; rms {rms})",
        got[i],
        want[i],
        worst.1
    );
}
