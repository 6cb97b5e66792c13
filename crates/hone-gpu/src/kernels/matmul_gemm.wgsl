// C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C (C not read when beta = 0), f32,
// row-major: op(A) = A [m, k], or A stored [k, m] when TA; op(B) = B [k, n], or B stored
// [n, k] when TB. Each invocation computes a TM x TN block of C straight from storage, unrolled
// into named variables by ops/matmul.rs at the body marker below.
// Specialisation (defs): TA, TB, TM, TN, WG.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    nx: u32,
    alpha: f32,
    beta: f32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> C: array<f32>;
@group(0) @binding(2) var<storage, read> A: array<f32>;
@group(0) @binding(3) var<storage, read> B: array<f32>;

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
//@BODY
}
