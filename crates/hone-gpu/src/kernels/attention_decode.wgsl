// Attention over a KV cache (generation): one workgroup per (new query, head); its DW
// invocations split the keys 0..=pos0+i (key j goes to invocation j % DW), each keeping an
// online softmax, then combine their partial maxima, sums and outputs through workgroup memory.
// defs: HD, DW.
struct Params { n_new: u32, pos0: u32, nh: u32, nkv: u32, group: u32, scale: f32, nx: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kc: array<f32>;
@group(0) @binding(4) var<storage, read> vc: array<f32>;

const HD4: u32 = HD / 4u * 4u;
const NEG: f32 = -1e30;

// e^d for d <= 0 (a score minus a running max), exactly 0 below -87 where f32's e^d is 0 or
// denormal anyway. WGSL's exp() may be arbitrarily wrong for a huge |d| (its error bound grows
// with |d|), and Chromium's SwiftShader is: the masked -1e30 must never reach it.
fn exp_neg(d: f32) -> f32 {
    return select(0.0, exp(max(d, -87.0)), d > -87.0);
}
const STRIDE: u32 = HD + 2u;
var<workgroup> sm: array<f32, DW * STRIDE>;

@compute @workgroup_size(DW)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * p.nx;            // i * nh + h
    if (g >= p.n_new * p.nh) { return; }
    let i = g / p.nh;
    let h = g % p.nh;
    let kvh = h / p.group;
    let qd = p.nh * HD;
    let kvd = p.nkv * HD;
    let qo = i * qd + h * HD;
    var qv = array<f32, HD>();
    for (var d = 0u; d < HD; d++) { qv[d] = q[qo + d] * p.scale; }
    let n_keys = p.pos0 + i + 1u;
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, HD>();
    for (var j = lid.x; j < n_keys; j += DW) {
        let ko = j * kvd + kvh * HD;
        var s0 = 0.0; var s1 = 0.0; var s2 = 0.0; var s3 = 0.0;
        for (var d = 0u; d < HD4; d += 4u) {
            s0 += qv[d] * kc[ko + d];
            s1 += qv[d + 1u] * kc[ko + d + 1u];
            s2 += qv[d + 2u] * kc[ko + d + 2u];
            s3 += qv[d + 3u] * kc[ko + d + 3u];
        }
        for (var d = HD4; d < HD; d++) { s0 += qv[d] * kc[ko + d]; }
        let s = (s0 + s1) + (s2 + s3);
        let mn = max(m, s);
        let c = exp_neg(m - mn);
        let pj = exp_neg(s - mn);
        l = l * c + pj;
        for (var d = 0u; d < HD; d++) { acc[d] = acc[d] * c + pj * vc[ko + d]; }
        m = mn;
    }
    let base = lid.x * STRIDE;
    sm[base] = m;
    sm[base + 1u] = l;
    for (var d = 0u; d < HD; d++) { sm[base + 2u + d] = acc[d]; }
    workgroupBarrier();
    var mm = NEG;
    for (var t = 0u; t < DW; t++) { mm = max(mm, sm[t * STRIDE]); }
    var den = 0.0;
    for (var t = 0u; t < DW; t++) { den += exp_neg(sm[t * STRIDE] - mm) * sm[t * STRIDE + 1u]; }
    let inv = 1.0 / den;
    for (var d = lid.x; d < HD; d += DW) {
        var num = 0.0;
        for (var t = 0u; t < DW; t++) { num += exp_neg(sm[t * STRIDE] - mm) * sm[t * STRIDE + 2u + d]; }
        out[qo + d] = num * inv;
    }
}
