//! hone's GPU engine: LoRA training of a frozen base model in WGSL compute shaders through
//! wgpu (Vulkan, Metal, DX12 and GL natively; WebGPU in the browser). Kernels are `.wgsl` files
//! in `kernels/`, each op family beside the Rust that dispatches it (`ops/`), forward and
//! backward side by side, checked against the CPU engine (`hone-cpu`) in `tests/`.

pub mod buffer;
pub mod context;
pub mod engine;
pub mod ops;
pub mod recorder;
pub mod session;

pub use buffer::{align_f32, GBuf, View};
pub use context::{AdapterChoice, Gpu, GpuOptions, Kernel};
pub use recorder::{Arena, Recorder};

/// Give the browser's event loop a turn (map callbacks arrive from it). A macrotask
/// (`setTimeout(0)`), not a microtask: a future that only re-wakes itself runs in the microtask
/// queue forever and the browser never gets to deliver the callback.
#[cfg(target_arch = "wasm32")]
pub(crate) async fn yield_now() {
    #[wasm_bindgen::prelude::wasm_bindgen]
    extern "C" {
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = setTimeout)]
        fn set_timeout(callback: &js_sys::Function, ms: i32);
    }
    let tick = js_sys::Promise::new(&mut |resolve, _reject| set_timeout(&resolve, 0));
    // The promise only resolves (never rejects); a rejection would just end the wait early.
    let _ = wasm_bindgen_futures::JsFuture::from(tick).await;
}
