// y[r, col0 + c] (=, or += when flags bit 0) sum_k x[r, k] * W[c, k] (+ bias[col0 + c] when
// flags bit 1) for the rows c < n of one part of a weight, W in its stored type
// (matmul_dtype.wgsl).
// Register-blocked: each invocation computes a TM x TN block of y straight from storage; the
// block's code is unrolled into named variables by ops/matmul.rs at the body marker below.
// Specialisation (defs): DT, QUANT, TM, TN, WG.
struct Params {
    m: u32,
    k: u32,
    // Rows of this weight part (= columns of y written).
    n: u32,
    // Row stride of y.
    ldy: u32,
    col0: u32,
    // Bytes per weight row (block types).
    rb: u32,
    tiles_n: u32,
    nx: u32,
    // Bit 0: add to y; bit 1: add the bias.
    flags: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> W: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * p.nx * WG;
    let tm = idx / p.tiles_n;
    let tn = idx - tm * p.tiles_n;
    let m0 = tm * TM;
    let n0 = tn * TN;
    if (m0 >= p.m) {
        return;
    }
    let acc_on = (p.flags & 1u) != 0u;
    let bias_on = (p.flags & 2u) != 0u;
//@BODY
}
