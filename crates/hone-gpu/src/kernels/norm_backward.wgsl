// RMSNorm backward for x only (frozen weight), one workgroup per row:
// dx = rstd * (g * w) - x * (rstd^3 / c * sum(g * w * x)); dinp = dx or dinp += dx.
struct Params { rows: u32, c: u32, nx: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(2) var<storage, read_write> dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> inp: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> weight: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

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
    var acc = 0.0;
    for (var j = lid; j < p.c; j += WG) {
        acc += (dout[base + j] * weight[j]) * inp[base + j];
    }
    let dot = reduce_sum(lid, acc);
    let s = rstd[row];
    let k = dot * (s * s * s) / f32(p.c);
    for (var j = lid; j < p.c; j += WG) {
        let dx = s * (dout[base + j] * weight[j]) - inp[base + j] * k;
        if (p.accumulate != 0u) {
            dinp[base + j] += dx;
        } else {
            dinp[base + j] = dx;
        }
    }
}
