//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay `p -= lr * wd * p`, bias
//! corrections computed in f64 and applied as f32 scalars, `eps` added outside the square
//! root), and global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`.

use hone_core::engine::AdamW;

/// One AdamW update of `params` from `grads` with moments `exp_avg`, `exp_avg_sq`; `step` is
/// the 1-based count of updates including this one.
pub fn adamw_step(
    params: &mut [f32],
    grads: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    step: u64,
    lr: f32,
    hp: &AdamW,
) {
    let n = params.len();
    assert!(grads.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n);
    assert!(step >= 1, "AdamW steps count from 1");
    let (b1, b2) = (hp.beta1 as f64, hp.beta2 as f64);
    let bias_correction1 = 1.0 - b1.powf(step as f64);
    let bias_correction2 = 1.0 - b2.powf(step as f64);
    let step_size = (lr as f64 / bias_correction1) as f32;
    let bc2_sqrt = bias_correction2.sqrt() as f32;
    let decay = 1.0 - lr * hp.weight_decay;
    let (w1, w2) = (1.0 - hp.beta1, 1.0 - hp.beta2);
    for i in 0..n {
        let g = grads[i];
        params[i] *= decay;
        // torch's lerp_(grad, 1 - beta1) for a weight below 0.5.
        exp_avg[i] += w1 * (g - exp_avg[i]);
        exp_avg_sq[i] = exp_avg_sq[i] * hp.beta2 + w2 * g * g;
        let denom = exp_avg_sq[i].sqrt() / bc2_sqrt + hp.eps;
        params[i] -= step_size * (exp_avg[i] / denom);
    }
}

/// Global L2 norm of the gradients (accumulated in f64).
pub fn grad_norm(grads: &[f32]) -> f32 {
    grads
        .iter()
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt() as f32
}

/// Scale `grads` by `max_norm / (norm + 1e-6)` when that is below 1 (`clip_grad_norm_`).
pub fn clip_grads(grads: &mut [f32], max_norm: f32, norm: f32) {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        grads.iter_mut().for_each(|g| *g *= coef);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three steps against the textbook algorithm (Loshchilov & Hutter, as torch documents it)
    /// in f64; the PyTorch comparison itself is the loss-curve fixture (tests/train_peft.rs).
    #[test]
    fn adamw_matches_the_closed_form_of_the_first_steps() {
        let hp = AdamW {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut p = vec![0.5f32, -1.0, 2.0];
        let (mut m, mut v) = (vec![0f32; 3], vec![0f32; 3]);
        let mut want = p.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (mut mw, mut vw) = (vec![0f64; 3], vec![0f64; 3]);
        for step in 1..=3u64 {
            let g = [0.1 * step as f32, -0.2, 0.3 / step as f32];
            adamw_step(&mut p, &g, &mut m, &mut v, step, 0.1, &hp);
            // The textbook algorithm in f64.
            for i in 0..3 {
                let gi = g[i] as f64;
                want[i] *= 1.0 - 0.1 * 0.1;
                mw[i] = 0.9 * mw[i] + 0.1 * gi;
                vw[i] = 0.99 * vw[i] + 0.01 * gi * gi;
                let mh = mw[i] / (1.0 - 0.9f64.powi(step as i32));
                let vh = vw[i] / (1.0 - 0.99f64.powi(step as i32));
                want[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for i in 0..3 {
            assert!(
                (p[i] as f64 - want[i]).abs() < 1e-6,
                "{i}: {} vs {}",
                p[i],
                want[i]
            );
        }
    }

    #[test]
    fn clipping_scales_only_above_the_limit() {
        let mut g = vec![3f32, 4.0];
        let n = grad_norm(&g);
        assert!((n - 5.0).abs() < 1e-6);
        clip_grads(&mut g, 10.0, n);
        assert_eq!(g, vec![3.0, 4.0]);
        clip_grads(&mut g, 1.0, n);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-6);
    }
}
