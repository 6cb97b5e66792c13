//! The context, buffers, recorder and read-back on whatever adapter the machine has
//! (lavapipe in CI).

use hone_gpu::{ops::elementwise, Arena, Recorder};

mod common;
use common::{gpu, read};

gpu_test!(
    async fn axpby_round_trip_and_view_offsets() {
        let gpu = gpu().await;
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
        let y = read(&gpu, &yb).await;
        for i in 0..n {
            let mut want = 2.0 * x[i] - y0[i];
            if (128..192).contains(&i) {
                want += x[i - 128];
            }
            assert_eq!(y[i], want, "element {i}");
        }
    }
);

gpu_test!(
    async fn a_shader_error_is_an_error_not_a_panic() {
        let gpu = gpu().await;
        // Natively the shader is checked when the kernel is made.
        #[cfg(not(target_arch = "wasm32"))]
        {
            let err = gpu.kernel("broken", "fn main( {", "").unwrap_err();
            assert!(err.to_string().contains("kernel broken"), "{err}");
        }
        // The browser compiles asynchronously: the error arrives through the device's
        // uncaptured-error handler and is the next check's error, naming the kernel.
        #[cfg(target_arch = "wasm32")]
        {
            let _ = gpu.kernel("broken", "fn main( {", "");
            let b = gpu.zeros("after", 4).unwrap();
            let _ = gpu.read_all_f32(&b).await;
            let err = gpu.check().unwrap_err().to_string();
            assert!(err.contains("broken"), "{err}");
        }
    }
);

// Profiling is native only (`hone bench-train --profile`).
#[cfg(not(target_arch = "wasm32"))]
gpu_test!(
    /// `bench-train --profile`'s clocks: GPU timestamp queries around each dispatch's pass where
    /// the device has timestamp-query (lavapipe has it), else the wall clock per dispatch. Both
    /// attribute time to the kernel by name; the GPU time of work that was waited for is
    /// positive and below the wall time of the whole run.
    async fn profile_times_kernels_with_gpu_timestamps_or_the_wall_clock() {
        use hone_gpu::context::ProfileClock;
        use hone_gpu::{Gpu, GpuOptions};
        let gpu = Gpu::new_blocking(&GpuOptions::default()).unwrap();
        assert!(
            gpu.has_timestamps(),
            "{} has no timestamp-query",
            gpu.describe()
        );
        let n = 1 << 20;
        let xb = gpu.zeros("x", n).unwrap();
        let yb = gpu.zeros("y", n).unwrap();
        let arena = Arena::new(&gpu);
        for clock in [ProfileClock::GpuTimestamps, ProfileClock::Wall] {
            gpu.start_profile_with(clock).unwrap();
            assert_eq!(gpu.profile_clock(), Some(clock));
            let t = std::time::Instant::now();
            let mut rec = Recorder::new(&gpu, &arena);
            for _ in 0..20 {
                elementwise::axpby(&mut rec, yb.view(), xb.view(), 2.0, -1.0, n).unwrap();
            }
            rec.finish().unwrap();
            gpu.sync().unwrap();
            let wall = t.elapsed().as_secs_f64();
            let prof = gpu.profile();
            eprintln!(
                "{clock:?}: {prof:?} (wall {wall:.4} s) - {}",
                clock.describe()
            );
            assert_eq!(prof.len(), 1, "{prof:?}");
            let (name, secs) = prof[0];
            assert_eq!(name, "axpby");
            assert!(secs > 0.0 && secs <= wall, "{secs} s of {wall} s");
        }
        // More passes than one query set holds: the recorder reads back and carries on.
        gpu.start_profile_with(ProfileClock::GpuTimestamps).unwrap();
        let mut rec = Recorder::new(&gpu, &arena);
        for _ in 0..2100 {
            elementwise::axpby(&mut rec, yb.range(0, 64), xb.range(0, 64), 1.0, 1.0, 64).unwrap();
        }
        rec.finish().unwrap();
        assert!(gpu.profile()[0].1 > 0.0);
        // A device without timestamp-query: start_profile falls back to the wall clock, and GPU
        // time is refused with the device's name.
        let plain = Gpu::new_blocking(&GpuOptions {
            want_timestamps: false,
            ..Default::default()
        })
        .unwrap();
        assert!(!plain.has_timestamps());
        assert_eq!(plain.start_profile(), ProfileClock::Wall);
        let err = plain
            .start_profile_with(ProfileClock::GpuTimestamps)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timestamp-query") && err.contains(&plain.describe()),
            "{err}"
        );
    }
);
