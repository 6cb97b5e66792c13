// Dropout with hone_cpu::train::dropout::DropoutMask's counter-based mask: element i is
// dropped when mix64(key + i * GOLDEN) >> 40 < threshold, else scaled by `scale`
// (SplitMix64's mixer on u32 pairs: WGSL has no u64). out = inp * factor, or out += that.
struct Params {
    n: u32, nx: u32, key_lo: u32, key_hi: u32, threshold: u32, scale: f32, accumulate: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> inp: array<f32>;

// 64-bit values as vec2(lo, hi).
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let w = mul_wide(a.x, b.x);
    return vec2<u32>(w.x, w.y + a.x * b.y + a.y * b.x);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    let carry = select(0u, 1u, lo < a.x);
    return vec2<u32>(lo, a.y + b.y + carry);
}

// z ^ (z >> s) for 0 < s < 32.
fn xorshr(z: vec2<u32>, s: u32) -> vec2<u32> {
    return vec2<u32>(z.x ^ ((z.x >> s) | (z.y << (32u - s))), z.y ^ (z.y >> s));
}

fn mix64(z0: vec2<u32>) -> vec2<u32> {
    var z = mul64(xorshr(z0, 30u), vec2<u32>(0x1ce4e5b9u, 0xbf58476du));
    z = mul64(xorshr(z, 27u), vec2<u32>(0x133111ebu, 0x94d049bbu));
    return xorshr(z, 31u);
}

const GOLDEN: vec2<u32> = vec2<u32>(0x7f4a7c15u, 0x9e3779b9u);

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.nx * 256u;
    if (i >= p.n) { return; }
    let h = mix64(add64(vec2<u32>(p.key_lo, p.key_hi), mul64(vec2<u32>(i, 0u), GOLDEN)));
    let u = h.y >> 8u;
    let f = select(p.scale, 0.0, u < p.threshold);
    let v = inp[i] * f;
    if (p.accumulate != 0u) {
        out[i] += v;
    } else {
        out[i] = v;
    }
}
