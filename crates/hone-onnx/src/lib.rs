//! hone-onnx: write a Llama/Qwen2-family decoder as an ONNX model that ONNX Runtime runs with
//! a KV cache, with the graph inputs and outputs named as ONNX Runtime GenAI and Optimum expect.
//!
//! The ONNX protobuf messages are encoded by hand (`proto`), so the crate depends on nothing
//! but hone-core. Weights are fp32 initializers (quantized weights are dequantized), or with
//! [`Precision::Int4`] the projections are ONNX Runtime `MatMulNBits` blocks ([`int4`]).
//!
//! # Graph inputs and outputs
//! See [`export`]: `input_ids`, `attention_mask`, `position_ids` (int64) and
//! `past_key_values.{i}.key|value` in; `logits` and `present.{i}.key|value` out.
//!
//! # LoRA weights as inputs (multi-adapter models)
//! A model exported with LoRA inputs (`hone auto-opt --adapter_path A --lora_inputs`) takes,
//! for every projection the adapter targets (`model.layers.{l}.self_attn.{q,k,v,o}_proj`,
//! `model.layers.{l}.mlp.{gate,up,down}_proj`), two more float inputs:
//!
//! | input | shape | value |
//! |---|---|---|
//! | `{module}.lora_A.weight` | `[in_features, rank]` | PEFT's `lora_A` (`[r, in]`) transposed |
//! | `{module}.lora_B.weight` | `[rank, out_features]` | PEFT's `lora_B` (`[out, r]`) transposed, times the adapter's scale (`alpha/r`, or `alpha/sqrt(r)` with rsLoRA) |
//!
//! e.g. `model.layers.0.self_attn.q_proj.lora_A.weight`. The projection computes
//! `y = x·Wᵀ (+ bias) + (x·A)·B`. `rank` is a symbolic dimension (its own name per input), so
//! adapters of any rank run on one exported model. Every LoRA input also has an initializer of
//! the same name filled with zeros (rank of the export's adapter): a run that feeds none of
//! them runs the base model, one that feeds them all runs that adapter. Feed A and B of a
//! module together. The scale is folded into B, so the graph has no per-adapter constant.
//!
//! `.onnx_adapter` files (`hone generate-adapter`, and `adapter_weights.onnx_adapter` next to an
//! export with `--lora_inputs`) hold exactly these tensors under these names, in ONNX Runtime's
//! adapter format (FlatBuffers, `adapter_schema.fbs`, file identifier `TORT`, format version 1):
//! load one with `OrtLoraAdapter` (C API `CreateLoraAdapter`, Python `onnxruntime.LoraAdapter`)
//! and make it active for a run with `RunOptions::add_active_adapter`; ONNX Runtime then feeds
//! its tensors as these inputs.

pub mod adapter;
pub mod export;
pub mod genai;
pub mod int4;
pub mod proto;

pub use adapter::{
    adapter_params, check_params_fit, encode_onnx_adapter, write_onnx_adapter, AdapterParam,
    LoraInputs, EXPORT_ADAPTER_FILE,
};
pub use export::{export_decoder, write_decoder, ExportOptions, Precision, OPSET_VERSION};
pub use genai::{genai_config, write_genai_files, GENAI_CONFIG_FILE};
