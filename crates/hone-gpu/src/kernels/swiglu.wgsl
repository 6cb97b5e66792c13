// SwiGLU forward: out = gate / (1 + e^-gate) * up (exp's argument clamped as the CPU's).
struct Params { n: u32, nx: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> gate: array<f32>;
@group(0) @binding(3) var<storage, read_write> up: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.nx * 256u;
    if (i >= p.n) { return; }
    let g = gate[i];
    out[i] = g / (1.0 + exp(clamp(-g, -87.3, 88.3))) * up[i];
}
