//! hone-core: everything that is not a kernel. Model specs and loading (GGUF, safetensors,
//! quantized block formats), tokenizer glue, chat templates, sampling and the generation loop.
//! No GPU and no ONNX Runtime dependency; builds for wasm32.

pub mod adapter;
pub mod chat;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod fixtures;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod model;
pub mod quant;
pub mod safetensors;
pub mod sampling;
pub mod spec;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
pub use model::{load_model, Model};
pub use spec::{Architecture, ModelSpec, RopeScaling};
pub use tensor::{Bytes, DType, TensorEntry, WeightStore};
pub mod data;
pub mod finetune;
pub mod metrics;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;
