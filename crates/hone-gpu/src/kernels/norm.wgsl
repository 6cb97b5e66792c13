// RMSNorm forward, one workgroup per row of c values: rstd = 1 / sqrt(mean(x^2) + eps),
// out = (x * rstd) * w (the CPU's order of operations).
struct Params { rows: u32, c: u32, nx: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(3) var<storage, read_write> inp: array<f32>;
@group(0) @binding(4) var<storage, read_write> weight: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

// Sum of `v` over the workgroup (every invocation gets it).
fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.nx;
    if (row >= p.rows) { return; }
    let base = row * p.c;
    var ss = 0.0;
    for (var j = lid; j < p.c; j += WG) {
        let v = inp[base + j];
        ss += v * v;
    }
    let total = reduce_sum(lid, ss);
    let r = 1.0 / sqrt(total / f32(p.c) + p.eps);
    if (lid == 0u) { rstd[row] = r; }
    for (var j = lid; j < p.c; j += WG) {
        out[base + j] = (inp[base + j] * r) * weight[j];
    }
}
