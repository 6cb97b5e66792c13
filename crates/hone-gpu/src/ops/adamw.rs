//! AdamW as `torch.optim.AdamW` (`hone_cpu::train::adamw::adamw_step`), with the global
//! gradient norm reduced on the GPU and `clip_grad_norm_`'s scaling fused into the step.

use hone_core::engine::AdamW;
use hone_core::{Error, Result};

use super::norm::{count, need};
use crate::recorder::{f, grid, Recorder};
use crate::View;

const SRC: &str = include_str!("../kernels/adamw.wgsl");
const WG: usize = 256;

const NO_CLIP: &str = "fn clip_coef() -> f32 { return 1.0; }";
const CLIP: &str = "@group(0) @binding(5) var<storage, read_write> gnorm: array<f32>;
fn clip_coef() -> f32 {
    let c = p.max_norm / (gnorm[0] * p.inv_scale + 1e-6);
    return select(1.0, c, c < 1.0);
}";

/// `out[0]` = the global L2 norm of `grads[0..n]` (sum of squares reduced on the GPU in f32).
/// `scratch` holds at least `n.div_ceil(256) + 64` values and overlaps neither `out` nor
/// `grads`.
pub fn grad_norm(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    grads: View<'_>,
    n: usize,
    scratch: View<'_>,
) -> Result<()> {
    super::loss::reduce(rec, "grad_norm", out, grads, n, scratch, true)
}

/// One AdamW update of `params[0..n]` from `grads` with moments `exp_avg`, `exp_avg_sq`;
/// `step` counts updates from 1 including this one (bias corrections in f64 on the CPU, as
/// `adamw_step`). With `clip = Some((max_norm, norm))` each gradient is first scaled by
/// `max_norm / (norm[0] + 1e-6)` when that is below 1. Gradients (and their norm) multiplied by
/// a loss scale are first multiplied by `inv_scale` (1 otherwise: then exactly the f32 step).
/// The gradients are zeroed afterwards.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    rec: &mut Recorder<'_>,
    params: View<'_>,
    grads: View<'_>,
    exp_avg: View<'_>,
    exp_avg_sq: View<'_>,
    n: usize,
    step: u64,
    lr: f32,
    hp: &AdamW,
    clip: Option<(f32, View<'_>)>,
    inv_scale: f32,
) -> Result<()> {
    const OP: &str = "adamw_step";
    if step == 0 {
        return Err(Error::Gpu(format!("{OP}: AdamW steps count from 1")));
    }
    count(OP, n, 1)?;
    need(OP, "params", &params, n)?;
    need(OP, "grads", &grads, n)?;
    need(OP, "exp_avg", &exp_avg, n)?;
    need(OP, "exp_avg_sq", &exp_avg_sq, n)?;
    if let Some((_, norm)) = &clip {
        need(OP, "the norm", norm, 1)?;
    }
    if n == 0 {
        return Ok(());
    }
    // The CPU's scalars, computed the same way.
    let (b1, b2) = (hp.beta1 as f64, hp.beta2 as f64);
    let bias_correction1 = 1.0 - b1.powf(step as f64);
    let bias_correction2 = 1.0 - b2.powf(step as f64);
    let step_size = (lr as f64 / bias_correction1) as f32;
    let bc2_sqrt = bias_correction2.sqrt() as f32;
    let decay = 1.0 - lr * hp.weight_decay;
    let (w1, w2) = (1.0 - hp.beta1, 1.0 - hp.beta2);
    let (g, nx) = grid(rec.gpu(), n, WG)?;
    let max_norm = clip.as_ref().map_or(0.0, |c| c.0);
    let words = [
        n as u32,
        nx,
        f(step_size),
        f(bc2_sqrt),
        f(decay),
        f(w1),
        f(hp.beta2),
        f(w2),
        f(hp.eps),
        f(max_norm),
        f(inv_scale),
    ];
    match clip {
        Some((_, norm)) => {
            let k = rec.gpu().kernel("adamw_step", SRC, CLIP)?;
            rec.dispatch(&k, &words, &[params, grads, exp_avg, exp_avg_sq, norm], g);
        }
        None => {
            let k = rec.gpu().kernel("adamw_step", SRC, NO_CLIP)?;
            rec.dispatch(&k, &words, &[params, grads, exp_avg, exp_avg_sq], g);
        }
    }
    Ok(())
}
