// One level of a sum reduction: workgroup g sums x[g * chunk .. min((g + 1) * chunk, count)]
// (squared when `square`), takes the square root when `root`, and writes out[g].
struct Params { count: u32, chunk: u32, nx: u32, groups: u32, square: u32, root: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * p.nx;
    if (g >= p.groups) { return; }
    let start = g * p.chunk;
    let end = min(start + p.chunk, p.count);
    var acc = 0.0;
    for (var j = start + lid; j < end; j += WG) {
        let v = x[j];
        if (p.square != 0u) { acc += v * v; } else { acc += v; }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var r = red[0];
        if (p.root != 0u) { r = sqrt(r); }
        out[g] = r;
    }
}
