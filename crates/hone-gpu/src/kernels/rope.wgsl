// Rotary embedding in place, HF "rotate_half" layout: within each head the pairs are
// (i, i + half). Forward (sgn = +1): x1' = x1 c - x2 s, x2' = x2 c + x1 s; backward (sgn = -1)
// applies the transposed rotation. Row r is at position pos0 + r % seq; the tables are
// [n_pos, half]. One invocation per (row, head, pair).
struct Params { n: u32, nx: u32, seq: u32, pos0: u32, n_heads: u32, half: u32, sgn: f32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.x + id.y * p.nx * 256u;
    if (t >= p.n) { return; }
    let i = t % p.half;
    let rh = t / p.half;                 // row * n_heads + head
    let r = rh / p.n_heads;
    let pos = p.pos0 + r % p.seq;
    let c = cos_t[pos * p.half + i];
    let s = sin_t[pos * p.half + i] * p.sgn;
    let o = rh * 2u * p.half + i;        // row * width + head * head_dim + i
    let a = x[o];
    let b = x[o + p.half];
    x[o] = a * c - b * s;
    x[o + p.half] = b * c + a * s;
}
