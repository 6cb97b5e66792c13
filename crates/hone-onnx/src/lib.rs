//! hone-onnx: write a Llama/Qwen2-family decoder as an ONNX model that ONNX Runtime runs with
//! a KV cache, with the graph inputs and outputs named as ONNX Runtime GenAI and Optimum expect.
//!
//! The ONNX protobuf messages are encoded by hand (`proto`), so the crate depends on nothing
//! but hone-core. Weights are written as fp32 initializers (quantized weights are dequantized).

pub mod export;
pub mod proto;

pub use export::{export_decoder, write_decoder, ExportOptions, OPSET_VERSION};
