// Cross-entropy over rows of logits, one workgroup per row: nll = max + log(sum e^(x - max))
// - x[target]; with grad != 0 the row becomes scale * (softmax - onehot(target)) as the CPU
// computes it (e^(x - max) * (scale / sum), minus scale at the target). A target at or past
// vocab gives nll = NaN and no one-hot term.
struct Params { rows: u32, vocab: u32, nx: u32, grad: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> nll: array<f32>;
@group(0) @binding(3) var<storage, read_write> targets: array<u32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.nx;
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    let t = targets[row];
    let valid = t < p.vocab;
    var target_logit = 0.0;
    if (lid == 0u && valid) { target_logit = logits[base + t]; }
    // The lowest finite f32, not -inf: browsers' WGSL compilers (Tint) reject a constant
    // expression that evaluates to an infinity or a NaN. exp(lowest - max) is 0 all the same.
    var m = bitcast<f32>(0xff7fffffu);
    for (var j = lid; j < p.vocab; j += WG) {
        m = max(m, logits[base + j]);
    }
    m = reduce_max(lid, m);
    var acc = 0.0;
    for (var j = lid; j < p.vocab; j += WG) {
        acc += exp(logits[base + j] - m);
    }
    let sum = reduce_sum(lid, acc);
    if (lid == 0u) {
        if (valid) {
            nll[row] = m + log(sum) - target_logit;
        } else {
            // NaN from a runtime value (a constant NaN is rejected by Tint, as above).
            nll[row] = bitcast<f32>(0x7fc00000u | (t & 0u));
        }
    }
    if (p.grad != 0u) {
        // The target logit was read before any invocation writes the row.
        storageBarrier();
        let k = p.scale / sum;
        for (var j = lid; j < p.vocab; j += WG) {
            var v = exp(logits[base + j] - m) * k;
            if (j == t) { v -= p.scale; }
            logits[base + j] = v;
        }
    }
}
