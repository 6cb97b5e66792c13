// One AdamW step as hone_cpu::train::adamw::adamw_step (torch.optim.AdamW), after the
// gradient is multiplied by inv_scale (a loss scale undone) and by clip_coef() (defined with the specialisation: 1, or
// clip_grad_norm_'s max_norm / (norm + 1e-6) when below 1); then the gradient is zeroed.
struct Params {
    n: u32, nx: u32, step_size: f32, bc2_sqrt: f32, decay: f32, w1: f32, beta2: f32,
    w2: f32, eps: f32, max_norm: f32, inv_scale: f32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.nx * 256u;
    if (i >= p.n) { return; }
    // inv_scale undoes a loss scale (1 in f32: the product is then exact).
    let g = grads[i] * p.inv_scale * clip_coef();
    var w = params[i] * p.decay;
    var m = exp_avg[i];
    m += p.w1 * (g - m);
    let v = exp_avg_sq[i] * p.beta2 + p.w2 * g * g;
    let denom = sqrt(v) / p.bc2_sqrt + p.eps;
    w -= p.step_size * (m / denom);
    params[i] = w;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    grads[i] = 0.0;
}
