//! hone-cpu: the CPU engine. A Llama-family forward pass written as explicit ops on f32
//! buffers (`ops`), matmuls over weights kept in their stored type (`matmul`), the model with
//! its KV cache and an optional LoRA adapter (`model`, `lora`), and a session that the
//! generation loop drives (`session`).

mod gemv;
mod lora;
pub mod matmul;
pub mod model;
pub mod ops;
mod parallel;
pub mod session;
#[cfg(test)]
mod testutil;
pub mod train;

pub use matmul::Weight;
pub use model::{CpuModel, CpuModelOptions, KvCache, Logits};
pub use session::CpuSession;
