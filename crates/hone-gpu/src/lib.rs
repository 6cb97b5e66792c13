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

/// Give the browser's event loop a turn (map callbacks arrive from it).
#[cfg(target_arch = "wasm32")]
pub(crate) async fn yield_now() {
    struct Yield(bool);
    impl std::future::Future for Yield {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0 {
                std::task::Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        }
    }
    Yield(false).await
}
