
// Mixed precision (`--fp16`): operands are rounded to f16 before they are multiplied; sums stay
// f32. Appended to the matmul kernels compiled with `enable f16;`. A value beyond f16's range
// becomes ±inf (a plain conversion of it is undefined in WGSL), so that an overflow reaches the
// loss scaler as a non-finite gradient norm instead of a silently clamped value.

fn h1(v: f32) -> f16 {
    // sign * 65504 * 2 overflows at run time to ±inf (not a constant, which may not be inf).
    let big = f16(sign(v)) * 65504.0h;
    return select(f16(v), big * 2.0h, abs(v) > 65504.0);
}

fn h4(v: vec4<f32>) -> vec4<f16> {
    let big = vec4<f16>(sign(v)) * 65504.0h;
    return select(vec4<f16>(v), big * 2.0h, abs(v) > vec4<f32>(65504.0));
}
