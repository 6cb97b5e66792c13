// SwiGLU backward: s = sigmoid(gate), dup = dout * (gate * s),
// dgate = dout * up * s * (1 + gate * (1 - s)).
struct Params { n: u32, nx: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(2) var<storage, read_write> dup: array<f32>;
@group(0) @binding(3) var<storage, read_write> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> gate: array<f32>;
@group(0) @binding(5) var<storage, read_write> up: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.nx * 256u;
    if (i >= p.n) { return; }
    let g = gate[i];
    let u = up[i];
    let d = dout[i];
    let s = 1.0 / (1.0 + exp(clamp(-g, -87.3, 88.3)));
    dup[i] = d * (g * s);
    dgate[i] = d * u * s * (1.0 + g * (1.0 - s));
}
