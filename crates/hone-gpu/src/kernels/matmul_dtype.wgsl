// Reading weights in their stored type from `W: array<u32>` (the tensor's bytes as uploaded,
// padded to 4 bytes). Appended to every matmul/embedding kernel; the including kernel declares
// `W` and the specialisation constant `DT` (one of the DT_* below), so every branch on DT folds
// away when the pipeline is compiled.
//
// Float types are read value by value (`wf`, element index in the part). Block types are read
// four values at a time: `bparams(rb, b)` gives the scales of the 32-value block `b` of the row
// whose bytes start at `rb`, `wv(rb, b, t, bp)` the values 4t..4t+4 of that block (t < 8).
// K-quant super-blocks of 256 are read as their eight 32-value sub-blocks.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;
const DT_Q8_0: u32 = 3u;
const DT_Q4_0: u32 = 4u;
const DT_Q4_1: u32 = 5u;
const DT_Q5_0: u32 = 6u;
const DT_Q5_1: u32 = 7u;
const DT_Q4K: u32 = 8u;
const DT_Q5K: u32 = 9u;
const DT_Q6K: u32 = 10u;

// Byte `o`.
fn wbyte(o: u32) -> u32 {
    return (W[o >> 2u] >> ((o & 3u) * 8u)) & 0xFFu;
}

// The 4 bytes at any byte offset `o`, little-endian.
fn wu32(o: u32) -> u32 {
    let s = (o & 3u) * 8u;
    let a = W[o >> 2u];
    if (s == 0u) {
        return a;
    }
    let b = W[(o >> 2u) + 1u];
    return (a >> s) | (b << (32u - s));
}

// The f16 at an even byte offset `o`.
fn wf16(o: u32) -> f32 {
    let v = unpack2x16float(W[o >> 2u]);
    return select(v.x, v.y, (o & 2u) != 0u);
}

// Float types: value `e` (element index from the start of the part).
fn wf(e: u32) -> f32 {
    if (DT == DT_F32) {
        return bitcast<f32>(W[e]);
    } else if (DT == DT_F16) {
        let v = unpack2x16float(W[e >> 1u]);
        return select(v.x, v.y, (e & 1u) != 0u);
    } else {
        let w = W[e >> 1u];
        return bitcast<f32>(select(w << 16u, w & 0xFFFF0000u, (e & 1u) != 0u));
    }
}

// 4 unsigned nibbles / bytes of a word, from bit `sh` of each byte.
fn nib4(w: u32, sh: u32) -> vec4<u32> {
    return (vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) >> vec4<u32>(sh)) & vec4<u32>(0xFu);
}

// The 6-bit scale and minimum of sub-block j (0..8) of a Q4_K/Q5_K super-block whose 12 scale
// bytes start at byte `s`.
fn k_scale_min(s: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(wbyte(s + j) & 63u), f32(wbyte(s + j + 4u) & 63u));
    }
    let sc = (wbyte(s + j + 4u) & 0xFu) | ((wbyte(s + j - 4u) >> 6u) << 4u);
    let mn = (wbyte(s + j + 4u) >> 4u) | ((wbyte(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

fn i8f(v: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(v), 0u, 8u));
}

// Scales of block `b` (32 values) of the row starting at byte `rb`.
fn bparams(rb: u32, b: u32) -> vec4<f32> {
    if (DT == DT_Q8_0) {
        return vec4<f32>(wf16(rb + 34u * b), 0.0, 0.0, 0.0);
    } else if (DT == DT_Q4_0) {
        return vec4<f32>(wf16(rb + 18u * b), 0.0, 0.0, 0.0);
    } else if (DT == DT_Q4_1) {
        let v = unpack2x16float(W[(rb + 20u * b) >> 2u]);
        return vec4<f32>(v.x, v.y, 0.0, 0.0);
    } else if (DT == DT_Q5_0) {
        return vec4<f32>(wf16(rb + 22u * b), 0.0, 0.0, 0.0);
    } else if (DT == DT_Q5_1) {
        let v = unpack2x16float(W[(rb + 24u * b) >> 2u]);
        return vec4<f32>(v.x, v.y, 0.0, 0.0);
    } else if (DT == DT_Q4K || DT == DT_Q5K) {
        let o = rb + select(144u, 176u, DT == DT_Q5K) * (b >> 3u);
        let dd = unpack2x16float(W[o >> 2u]);
        let sm = k_scale_min(o + 4u, b & 7u);
        return vec4<f32>(dd.x * sm.x, dd.y * sm.y, 0.0, 0.0);
    } else if (DT == DT_Q6K) {
        let o = rb + 210u * (b >> 3u);
        let d = wf16(o + 208u);
        let j = b & 7u;
        // Half h = j / 4, group k = j % 4: scales 8h + 2k and 8h + 2k + 1.
        let s = o + 192u + 8u * (j >> 2u) + 2u * (j & 3u);
        return vec4<f32>(d * i8f(wbyte(s)), d * i8f(wbyte(s + 1u)), 0.0, 0.0);
    }
    return vec4<f32>(0.0);
}

// Values 4t..4t+4 of block `b` of the row starting at byte `rb`, with `bp = bparams(rb, b)`.
fn wv(rb: u32, b: u32, t: u32, bp: vec4<f32>) -> vec4<f32> {
    if (DT == DT_Q8_0) {
        let w = wu32(rb + 34u * b + 2u + 4u * t);
        let q = vec4<f32>(i8f(w), i8f(w >> 8u), i8f(w >> 16u), i8f(w >> 24u));
        return bp.x * q;
    } else if (DT == DT_Q4_0) {
        let w = wu32(rb + 18u * b + 2u + 4u * (t & 3u));
        let q = vec4<i32>(nib4(w, 4u * (t >> 2u))) - vec4<i32>(8);
        return bp.x * vec4<f32>(q);
    } else if (DT == DT_Q4_1) {
        let w = W[(rb + 20u * b + 4u + 4u * (t & 3u)) >> 2u];
        return bp.x * vec4<f32>(nib4(w, 4u * (t >> 2u))) + bp.y;
    } else if (DT == DT_Q5_0) {
        let o = rb + 22u * b;
        let w = wu32(o + 6u + 4u * (t & 3u));
        let qh = wu32(o + 2u) >> (4u * t);
        let h = (vec4<u32>(qh) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
        let q = vec4<i32>(nib4(w, 4u * (t >> 2u)) | (h << vec4<u32>(4u))) - vec4<i32>(16);
        return bp.x * vec4<f32>(q);
    } else if (DT == DT_Q5_1) {
        let o = rb + 24u * b;
        let w = W[(o + 8u + 4u * (t & 3u)) >> 2u];
        let qh = W[(o + 4u) >> 2u] >> (4u * t);
        let h = (vec4<u32>(qh) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
        let q = nib4(w, 4u * (t >> 2u)) | (h << vec4<u32>(4u));
        return bp.x * vec4<f32>(q) + bp.y;
    } else if (DT == DT_Q4K) {
        let j = b & 7u;
        let o = rb + 144u * (b >> 3u);
        let w = W[(o + 16u + 32u * (j >> 1u) + 4u * t) >> 2u];
        return bp.x * vec4<f32>(nib4(w, 4u * (j & 1u))) - bp.y;
    } else if (DT == DT_Q5K) {
        let j = b & 7u;
        let o = rb + 176u * (b >> 3u);
        let w = W[(o + 48u + 32u * (j >> 1u) + 4u * t) >> 2u];
        let hw = W[(o + 16u + 4u * t) >> 2u];
        let h = (vec4<u32>(hw, hw >> 8u, hw >> 16u, hw >> 24u) >> vec4<u32>(j)) & vec4<u32>(1u);
        let q = nib4(w, 4u * (j & 1u)) | (h << vec4<u32>(4u));
        return bp.x * vec4<f32>(q) - bp.y;
    } else if (DT == DT_Q6K) {
        let j = b & 7u;
        let hf = j >> 2u;
        let k = j & 3u;
        let o = rb + 210u * (b >> 3u);
        let lo = wu32(o + 64u * hf + 32u * (k & 1u) + 4u * t);
        let hi = wu32(o + 128u + 32u * hf + 4u * t);
        let ql = nib4(lo, 4u * (k >> 1u));
        let qh = (vec4<u32>(hi, hi >> 8u, hi >> 16u, hi >> 24u) >> vec4<u32>(2u * k)) & vec4<u32>(3u);
        let q = vec4<i32>(ql | (qh << vec4<u32>(4u))) - vec4<i32>(32);
        return select(bp.x, bp.y, t >= 4u) * vec4<f32>(q);
    }
    return vec4<f32>(0.0);
}

// Values 4s..4s+4 and 16+4s..16+4s+4 (s < 4) of block `b`: the 32-value types keep both
// halves in the same bytes (low and high nibbles), so those are read once.
fn wpair(rb: u32, b: u32, s: u32, bp: vec4<f32>) -> mat2x4<f32> {
    if (DT == DT_Q4_0) {
        let w = wu32(rb + 18u * b + 2u + 4u * s);
        let lo = vec4<i32>(nib4(w, 0u)) - vec4<i32>(8);
        let hi = vec4<i32>(nib4(w, 4u)) - vec4<i32>(8);
        return mat2x4<f32>(bp.x * vec4<f32>(lo), bp.x * vec4<f32>(hi));
    } else if (DT == DT_Q4_1) {
        let w = W[(rb + 20u * b + 4u + 4u * s) >> 2u];
        return mat2x4<f32>(bp.x * vec4<f32>(nib4(w, 0u)) + bp.y, bp.x * vec4<f32>(nib4(w, 4u)) + bp.y);
    } else if (DT == DT_Q5_0 || DT == DT_Q5_1) {
        let one = DT == DT_Q5_1;
        let o = rb + select(22u, 24u, one) * b;
        let w = wu32(o + select(6u, 8u, one) + 4u * s);
        let qh = wu32(o + select(2u, 4u, one)) >> (4u * s);
        let sh = vec4<u32>(0u, 1u, 2u, 3u);
        let hl = ((vec4<u32>(qh) >> sh) & vec4<u32>(1u)) << vec4<u32>(4u);
        let hh = ((vec4<u32>(qh >> 16u) >> sh) & vec4<u32>(1u)) << vec4<u32>(4u);
        let off = select(16.0, 0.0, one);
        let add = select(0.0, bp.y, one);
        let lo = vec4<f32>(nib4(w, 0u) | hl) - off;
        let hi = vec4<f32>(nib4(w, 4u) | hh) - off;
        return mat2x4<f32>(bp.x * lo + add, bp.x * hi + add);
    }
    return mat2x4<f32>(wv(rb, b, s, bp), wv(rb, b, s + 4u, bp));
}
