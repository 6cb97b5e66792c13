//! The files ONNX Runtime GenAI reads next to the decoder: `genai_config.json` (model type,
//! sizes, input/output names, special token ids, search defaults) and the tokenizer
//! (`tokenizer.json` and `tokenizer_config.json` with the chat template and special tokens).

use std::path::Path;

use hone_core::{Error, Model, Result};
use serde_json::{json, Value};

/// File name of ONNX Runtime GenAI's configuration.
pub const GENAI_CONFIG_FILE: &str = "genai_config.json";

/// `genai_config.json` for `model` exported as `onnx_file` (a file name in the same folder).
///
/// The graph concatenates the past and the new keys/values, so `past_present_share_buffer` is
/// false. Search defaults are greedy (as `hone generate`), with the model's own sampling
/// defaults filled in for callers that turn sampling on.
pub fn genai_config(model: &Model, onnx_file: &str) -> Value {
    let spec = &model.spec;
    let eos = model.eos_ids();
    let bos = model.tokenizer.bos_id.or(spec.bos_token_id);
    let pad = model
        .tokenizer
        .pad_id
        .or_else(|| eos.first().copied())
        .unwrap_or(0);
    let eos_value = match eos.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let g = &model.generation;
    json!({
        "model": {
            "type": spec.architecture.model_type(),
            "context_length": spec.max_position_embeddings,
            "vocab_size": spec.vocab_size,
            "bos_token_id": bos.unwrap_or(pad),
            "eos_token_id": eos_value,
            "pad_token_id": pad,
            "decoder": {
                "filename": onnx_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "num_attention_heads": spec.num_attention_heads,
                "num_key_value_heads": spec.num_key_value_heads,
                "num_hidden_layers": spec.num_hidden_layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value"
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"
                }
            }
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": false,
            "early_stopping": true,
            "length_penalty": 1.0,
            "max_length": spec.max_position_embeddings,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": false,
            "repetition_penalty": g.repetition_penalty.unwrap_or(1.0),
            "temperature": g.temperature.unwrap_or(1.0),
            "top_k": g.top_k.unwrap_or(50),
            "top_p": g.top_p.unwrap_or(1.0)
        }
    })
}

/// Write `genai_config.json`, `tokenizer.json` and `tokenizer_config.json` into `dir` (which
/// holds, or will hold, `onnx_file`).
pub fn write_genai_files(dir: &Path, model: &Model, onnx_file: &str) -> Result<()> {
    let pretty = |v: &Value, path: &Path| {
        serde_json::to_string_pretty(v)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    };
    let config_path = dir.join(GENAI_CONFIG_FILE);
    let text = pretty(&genai_config(model, onnx_file), &config_path)?;
    write(&config_path, text.as_bytes())?;
    let tokenizer_path = dir.join("tokenizer.json");
    write(&tokenizer_path, model.tokenizer.to_json()?.as_bytes())?;
    let tok_config_path = dir.join("tokenizer_config.json");
    let tok_config = model.tokenizer.config_json(model.chat_template.as_deref());
    write(
        &tok_config_path,
        pretty(&tok_config, &tok_config_path)?.as_bytes(),
    )
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
