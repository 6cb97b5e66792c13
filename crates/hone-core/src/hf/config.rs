//! `ModelSpec` <-> HF `config.json`, in transformers' field names (both the transformers-4
//! `rope_theta` + `rope_scaling` form and the transformers-5 `rope_parameters` form).

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{parse_json_object, Fields, CONFIG_FILE};
use crate::error::{Error, Result};
use crate::spec::{Architecture, ModelSpec, RopeScaling};
use crate::tensor::DType;

/// RoPE base when a config names none (transformers' default).
const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// RoPE types hone implements, for error messages.
const SUPPORTED_ROPE_TYPES: &str = "default, linear, llama3";

/// Read the `ModelSpec` of `config.json`; `path` is the file or the folder holding it.
pub fn read_config(path: impl AsRef<Path>) -> Result<ModelSpec> {
    let path = path.as_ref();
    let file = if path.is_dir() {
        path.join(CONFIG_FILE)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() && path.is_dir() {
        return Err(Error::format(
            path,
            format!("{CONFIG_FILE} absent: not an HF model folder"),
        ));
    }
    let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
    let obj = parse_json_object(&file, &bytes)?;
    spec_from_config(&file, &obj)
}

/// The `ModelSpec` described by a parsed config.json object; `path` labels errors.
pub fn spec_from_config(path: &Path, config: &Map<String, Value>) -> Result<ModelSpec> {
    let f = Fields::new(path, config);
    let (architecture, arch_name) = architecture(&f)?;
    let hidden_size = f.positive("hidden_size")?;
    let intermediate_size = f.positive("intermediate_size")?;
    let num_hidden_layers = f.positive("num_hidden_layers")?;
    let num_attention_heads = f.positive("num_attention_heads")?;
    let vocab_size = f.positive("vocab_size")?;
    let num_key_value_heads = match f.usize("num_key_value_heads")? {
        None => num_attention_heads,
        Some(0) => return Err(f.invalid("num_key_value_heads", "must be positive, got 0")),
        Some(n) if num_attention_heads % n != 0 => {
            return Err(f.invalid(
                "num_key_value_heads",
                format!("{n} does not divide num_attention_heads {num_attention_heads}"),
            ))
        }
        Some(n) => n,
    };
    let head_dim = match f.usize("head_dim")? {
        Some(d) => d,
        None if hidden_size % num_attention_heads != 0 => {
            return Err(f.invalid(
                "num_attention_heads",
                format!(
                    "hidden_size {hidden_size} is not a multiple of {num_attention_heads} heads, and head_dim is not given"
                ),
            ))
        }
        None => hidden_size / num_attention_heads,
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(f.invalid(
            "head_dim",
            format!("must be a positive even number (RoPE rotates pairs), got {head_dim}"),
        ));
    }
    let max_position_embeddings = match f.usize("max_position_embeddings")? {
        Some(0) => return Err(f.invalid("max_position_embeddings", "must be positive, got 0")),
        Some(n) => n,
        // transformers' class defaults
        None => match architecture {
            Architecture::Llama => 2048,
            Architecture::Qwen2 => 32768,
        },
    };
    let rms_norm_eps = f.f64("rms_norm_eps")?.unwrap_or(1e-6);
    if rms_norm_eps <= 0.0 {
        return Err(f.invalid(
            "rms_norm_eps",
            format!("must be positive, got {rms_norm_eps}"),
        ));
    }
    let (rope_theta, rope_scaling) = rope(&f)?;
    let hidden_act = match f.str("hidden_act")?.unwrap_or("silu") {
        // transformers maps both names to SiLU
        "silu" | "swish" => "silu".to_string(),
        other => {
            return Err(f.invalid(
                "hidden_act",
                format!("activation '{other}' is not supported; supported: silu"),
            ))
        }
    };
    // Qwen2's modeling code fixes the biases (q/k/v yes, o and MLP no) whatever the config says.
    let (attention_bias, qkv_bias, mlp_bias) = match architecture {
        Architecture::Llama => (
            f.bool("attention_bias")?.unwrap_or(false),
            false,
            f.bool("mlp_bias")?.unwrap_or(false),
        ),
        Architecture::Qwen2 => (false, true, false),
    };
    if architecture == Architecture::Qwen2 && f.bool("use_sliding_window")? == Some(true) {
        return Err(f.invalid(
            "use_sliding_window",
            "sliding-window attention is not supported",
        ));
    }
    if arch_name.eq_ignore_ascii_case("mistral") || arch_name == "MistralForCausalLM" {
        if let Some(w) = f.usize("sliding_window")? {
            if w < max_position_embeddings {
                return Err(f.invalid(
                    "sliding_window",
                    format!("sliding-window attention ({w} tokens) is not supported"),
                ));
            }
        }
    }
    Ok(ModelSpec {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        max_position_embeddings,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        qkv_bias,
        mlp_bias,
        hidden_act,
        bos_token_id: f.token_id("bos_token_id")?,
        eos_token_id: f.token_ids("eos_token_id")?,
        pad_token_id: f.token_id("pad_token_id")?,
    })
}

/// The architecture from `model_type`, else `architectures[0]`.
fn architecture(f: &Fields<'_>) -> Result<(Architecture, String)> {
    let class = match f.get("architectures") {
        None => None,
        Some(Value::Array(a)) => match a.first() {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(f.invalid("architectures", "expected a list of class names")),
        },
        Some(_) => return Err(f.invalid("architectures", "expected a list of class names")),
    };
    let name = f
        .str("model_type")?
        .or(class)
        .ok_or_else(|| f.missing("model_type"))?;
    let arch = Architecture::parse(name).ok_or_else(|| Error::UnsupportedArchitecture {
        path: f.path().to_path_buf(),
        arch: name.to_string(),
        supported: Architecture::SUPPORTED.to_string(),
    })?;
    Ok((arch, name.to_string()))
}

/// `(rope_theta, rope_scaling)`. Like transformers 5, a non-empty `rope_scaling` wins over
/// `rope_parameters`, and a theta inside the dict wins over the top-level `rope_theta`.
fn rope(f: &Fields<'_>) -> Result<(f64, Option<RopeScaling>)> {
    let top_theta = f.f64("rope_theta")?;
    let (key, params) = match f.object("rope_scaling")? {
        Some(o) if !o.is_empty() => ("rope_scaling", Some(o)),
        _ => ("rope_parameters", f.object("rope_parameters")?),
    };
    let Some(params) = params else {
        return Ok((top_theta.unwrap_or(DEFAULT_ROPE_THETA), None));
    };
    let p = f.nested(key, params);
    let theta = p
        .f64("rope_theta")?
        .or(top_theta)
        .unwrap_or(DEFAULT_ROPE_THETA);
    if theta <= 0.0 {
        return Err(p.invalid("rope_theta", format!("must be positive, got {theta}")));
    }
    let (type_key, rope_type) = match p.str("rope_type")? {
        Some(t) => ("rope_type", t),
        None => ("type", p.str("type")?.unwrap_or("default")),
    };
    let positive = |k: &str| -> Result<f64> {
        let v = p.f64_req(k)?;
        if v <= 0.0 {
            return Err(p.invalid(k, format!("must be positive, got {v}")));
        }
        Ok(v)
    };
    let scaling = match rope_type {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: positive("factor")?,
        }),
        "llama3" => {
            let low = positive("low_freq_factor")?;
            let high = positive("high_freq_factor")?;
            if high <= low {
                return Err(p.invalid(
                    "high_freq_factor",
                    format!("must exceed low_freq_factor {low}, got {high}"),
                ));
            }
            let original = match p.usize("original_max_position_embeddings")? {
                Some(0) => {
                    return Err(p.invalid("original_max_position_embeddings", "must be positive"))
                }
                Some(n) => n,
                None => return Err(p.missing("original_max_position_embeddings")),
            };
            Some(RopeScaling::Llama3 {
                factor: positive("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            })
        }
        other => {
            return Err(p.invalid(
                type_key,
                format!("RoPE type '{other}' is not supported; supported: {SUPPORTED_ROPE_TYPES}"),
            ))
        }
    };
    Ok((theta, scaling))
}

/// transformers' name of a stored type (`dtype` / `torch_dtype` in config.json).
pub(crate) fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// The config.json object for `spec` whose weights are stored as `dtype`, in transformers'
/// field names (`rope_parameters` for transformers 5, plus `rope_theta` for older readers).
pub fn config_json(spec: &ModelSpec, dtype: DType) -> Value {
    let mut rope = Map::new();
    rope.insert("rope_theta".into(), json!(spec.rope_theta));
    match &spec.rope_scaling {
        None => {
            rope.insert("rope_type".into(), json!("default"));
        }
        Some(RopeScaling::Linear { factor }) => {
            rope.insert("rope_type".into(), json!("linear"));
            rope.insert("factor".into(), json!(factor));
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            rope.insert("rope_type".into(), json!("llama3"));
            rope.insert("factor".into(), json!(factor));
            rope.insert("low_freq_factor".into(), json!(low_freq_factor));
            rope.insert("high_freq_factor".into(), json!(high_freq_factor));
            rope.insert(
                "original_max_position_embeddings".into(),
                json!(original_max_position_embeddings),
            );
        }
    }
    let eos = match spec.eos_token_id.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    let dtype = torch_dtype_name(dtype);
    let mut c = json!({
        "architectures": [spec.architecture.hf_class()],
        "model_type": spec.architecture.model_type(),
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_parameters": Value::Object(rope),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "hidden_act": spec.hidden_act,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": spec.pad_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
    });
    if spec.architecture == Architecture::Llama {
        c["attention_bias"] = json!(spec.attention_bias);
        c["mlp_bias"] = json!(spec.mlp_bias);
    } else {
        c["use_sliding_window"] = json!(false);
    }
    c
}
