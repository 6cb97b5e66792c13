//! The CPU engine's training path: backward passes beside their forwards (`ops`), frozen-weight
//! matmul backward (`linalg`), the LoRA path (`lora`), the fused chunked loss (`loss`),
//! dropout with a counter-based RNG (`dropout`), AdamW and clipping (`adamw`), and
//! `CpuEngine`, which implements `hone_core::engine::Engine` with them.

pub mod adamw;
pub mod dropout;
mod engine;
pub mod linalg;
pub mod lora;
pub mod loss;
pub mod ops;
mod par;
mod profile;
pub mod vmath;

pub use engine::{CpuEngine, CpuTrainOptions};
pub use profile::TrainProfile;
