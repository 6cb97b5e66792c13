// out[t, c] = table[ids[t], c] for the ids in [r0, r1) held by one part of the table (row
// id - r0 of the part), dequantized (matmul_dtype.wgsl); ids >= rows give zeros when ZERO_OOB
// (the first part's dispatch). One invocation per 4 columns of a token.
// Specialisation (defs): DT, QUANT, WG.
struct Params {
    n_tokens: u32,
    k: u32,
    r0: u32,
    r1: u32,
    rows: u32,
    rb: u32,
    zero_oob: u32,
    nx: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> W: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.nx * WG;
    let groups = (p.k + 3u) / 4u;
    let t = idx / groups;
    if (t >= p.n_tokens) {
        return;
    }
    let c0 = (idx - t * groups) * 4u;
    let id = ids[t];
    var v = vec4<f32>(0.0);
    if (id >= p.rows) {
        if (p.zero_oob == 0u) {
            return;
        }
    } else {
        if (id < p.r0 || id >= p.r1) {
            return;
        }
        let row = id - p.r0;
        if (QUANT) {
            let rb = row * p.rb;
            let b = c0 / 32u;
            v = wv(rb, b, (c0 & 31u) / 4u, bparams(rb, b));
        } else {
            let e = row * p.k;
            let last = p.k - 1u;
            v = vec4<f32>(wf(e + c0), wf(e + min(c0 + 1u, last)), wf(e + min(c0 + 2u, last)), wf(e + min(c0 + 3u, last)));
        }
    }
    let o = t * p.k + c0;
    for (var c = 0u; c < 4u; c++) {
        if (c0 + c < p.k) {
            out[o + c] = v[c];
        }
    }
}
