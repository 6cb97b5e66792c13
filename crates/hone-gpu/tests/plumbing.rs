//! The context, buffers, recorder and read-back on whatever adapter the machine has
//! (lavapipe in CI).

use hone_gpu::{ops::elementwise, Arena, Gpu, GpuOptions, Recorder};

#[test]
fn axpby_round_trip_and_view_offsets() {
    let gpu = Gpu::new_blocking(&GpuOptions::default()).expect("a wgpu adapter (lavapipe in CI)");
    eprintln!("adapter: {}", gpu.describe());
    let n = 1000;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let y0: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
    let xb = gpu.upload_f32("x", &x).unwrap();
    let yb = gpu.upload_f32("y", &y0).unwrap();
    let arena = Arena::new(&gpu);
    let mut rec = Recorder::new(&gpu, &arena);
    elementwise::axpby(&mut rec, yb.view(), xb.view(), 2.0, -1.0, n).unwrap();
    // A view starting at element 128 of y, over 64 elements: only those change again.
    elementwise::axpby(&mut rec, yb.range(128, 64), xb.range(0, 64), 1.0, 1.0, 64).unwrap();
    rec.finish().unwrap();
    let y = gpu.read_f32_blocking(&yb).unwrap();
    for i in 0..n {
        let mut want = 2.0 * x[i] - y0[i];
        if (128..192).contains(&i) {
            want += x[i - 128];
        }
        assert_eq!(y[i], want, "element {i}");
    }
}

#[test]
fn a_shader_error_is_an_error_not_a_panic() {
    let gpu = Gpu::new_blocking(&GpuOptions::default()).unwrap();
    let err = gpu.kernel("broken", "fn main( {", "").unwrap_err();
    assert!(err.to_string().contains("kernel broken"), "{err}");
}
