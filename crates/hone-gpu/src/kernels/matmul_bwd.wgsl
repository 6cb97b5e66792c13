// dx[r, c] (=, or += when flags bit 0) sum_n dy[r, col0 + n] * W[n, c] over the n rows of one
// part of a weight in its stored type (matmul_dtype.wgsl). Each invocation computes TM rows x 4*TKV
// columns of dx (4*TKV divides 32, so a block type's columns stay inside one block), unrolled
// into named variables by ops/matmul.rs at the body marker below.
// Specialisation (defs): DT, QUANT, TM, TKV, WG.
struct Params {
    m: u32,
    k: u32,
    // Rows of this weight part.
    n: u32,
    // Row stride of dy.
    ldy: u32,
    col0: u32,
    rb: u32,
    tiles_k: u32,
    nx: u32,
    // Bit 0: add to dx.
    flags: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> W: array<u32>;

const TK: u32 = 4u * TKV;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.nx * WG;
    let tm = idx / p.tiles_k;
    let tk = idx - tm * p.tiles_k;
    let m0 = tm * TM;
    let k0 = tk * TK;
    if (m0 >= p.m) {
        return;
    }
    let acc_on = (p.flags & 1u) != 0u;
//@BODY
}
