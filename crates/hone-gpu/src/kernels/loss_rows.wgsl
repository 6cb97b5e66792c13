// Row gather / scatter over [rows, width]: mode 0 gathers out[i, :] = inp[idx[i], :], mode 1
// scatters out[idx[i], :] = inp[i, :]. Indices at or past `limit` (the rows of the indexed
// side) are skipped.
struct Params { total: u32, width: u32, nx: u32, mode: u32, limit: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> inp: array<f32>;
@group(0) @binding(3) var<storage, read_write> idx: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let e = id.x + id.y * p.nx * 256u;
    if (e >= p.total) { return; }
    let i = e / p.width;
    let j = e - i * p.width;
    let r = idx[i];
    if (r >= p.limit) { return; }
    if (p.mode == 0u) {
        out[e] = inp[r * p.width + j];
    } else {
        out[r * p.width + j] = inp[e];
    }
}
