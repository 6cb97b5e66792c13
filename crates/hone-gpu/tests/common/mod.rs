//! What every GPU test file shares: one test body runs natively (on lavapipe in CI, blocking on
//! the future) and in headless Chromium's WebGPU (SwiftShader) through wasm-bindgen-test, where
//! nothing may block: so each test is an `async fn`, reads are awaited, and `gpu_test!` makes
//! it a `#[test]` or a `#[wasm_bindgen_test]`.

#![allow(dead_code)]

use hone_gpu::{GBuf, Gpu, GpuOptions};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// `gpu_test!(async fn name() { ... });`: a native `#[test]` that blocks on the body, and on
/// wasm32 a `#[wasm_bindgen_test]` that awaits it in the browser.
#[macro_export]
macro_rules! gpu_test {
    ($(#[$m:meta])* async fn $name:ident() $body:block) => {
        #[cfg(not(target_arch = "wasm32"))]
        #[test]
        $(#[$m])*
        fn $name() {
            pollster::block_on(async $body)
        }

        #[cfg(target_arch = "wasm32")]
        #[wasm_bindgen_test::wasm_bindgen_test]
        $(#[$m])*
        async fn $name() $body
    };
}

/// The test adapter: lavapipe natively in CI, WebGPU in the browser.
pub async fn gpu() -> Gpu {
    Gpu::new(&GpuOptions::default())
        .await
        .expect("a wgpu adapter (lavapipe natively, WebGPU in the browser)")
}

/// The whole buffer as f32.
pub async fn read(gpu: &Gpu, b: &GBuf) -> Vec<f32> {
    gpu.read_all_f32(b).await.expect("read back")
}
