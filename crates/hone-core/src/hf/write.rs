//! Write an HF model folder that transformers loads: config.json, model.safetensors,
//! generation_config.json, tokenizer_config.json and (when given) tokenizer.json.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::config::config_json;
use super::{
    SpecialTokens, CHAT_TEMPLATE_FILE, CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE, WEIGHTS_FILE,
};
use crate::error::{Error, Result};
use crate::model::GenerationDefaults;
use crate::safetensors::{write_atomic, write_safetensors, TensorView};
use crate::spec::{Architecture, ModelSpec};
use crate::tensor::{DType, WeightStore};

/// The optional parts of a folder written by `write_folder`.
#[derive(Debug, Clone, Default)]
pub struct FolderExtras<'a> {
    /// Contents of tokenizer.json, copied as is.
    pub tokenizer_json: Option<&'a str>,
    /// Jinja chat template, written into tokenizer_config.json.
    pub chat_template: Option<&'a str>,
    /// Special tokens for tokenizer_config.json.
    pub special_tokens: SpecialTokens,
    /// Sampling defaults for generation_config.json (eos falls back to the spec's).
    pub generation: Option<&'a GenerationDefaults>,
}

/// Write `spec` and `weights` as an HF model folder in `dir` (created if needed; each file is
/// replaced atomically). F32/F16/BF16 tensors are stored as they are; quantized ones are
/// dequantized to F32. Every tensor the spec needs must be present with its shape.
pub fn write_folder(
    dir: impl AsRef<Path>,
    spec: &ModelSpec,
    weights: &WeightStore,
    extras: &FolderExtras<'_>,
) -> Result<()> {
    let dir = dir.as_ref();
    check_representable(spec)?;
    weights.check_against(spec)?;

    let stored: Vec<Stored<'_>> = weights
        .tensors
        .values()
        .map(|t| match t.dtype {
            DType::F32 | DType::F16 | DType::BF16 => Stored {
                name: &t.name,
                shape: &t.shape,
                dtype: t.dtype,
                data: Cow::Borrowed(t.data.as_slice()),
            },
            _ => Stored {
                name: &t.name,
                shape: &t.shape,
                dtype: DType::F32,
                data: Cow::Owned(t.to_f32().iter().flat_map(|x| x.to_le_bytes()).collect()),
            },
        })
        .collect();
    let views: Vec<TensorView<'_>> = stored
        .iter()
        .map(|s| TensorView::new(s.name, s.shape, s.dtype, &s.data))
        .collect();
    // config.json names one dtype; the embedding's is the one transformers would load as.
    let dtype = stored
        .iter()
        .find(|s| s.name == "model.embed_tokens.weight")
        .map_or(DType::F32, |s| s.dtype);

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(dir.join(WEIGHTS_FILE), &views, Some(&metadata))?;
    write_json(&dir.join(CONFIG_FILE), &config_json(spec, dtype))?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &generation_json(spec, extras.generation),
    )?;
    if let Some(tok) = extras.tokenizer_json {
        write_atomic(&dir.join(TOKENIZER_FILE), |w| w.write_all(tok.as_bytes()))?;
    }
    write_json(
        &dir.join(TOKENIZER_CONFIG_FILE),
        &tokenizer_config_json(spec, extras),
    )?;
    // transformers prefers chat_template.jinja over tokenizer_config.json: never leave a
    // stale one that would shadow the template just written.
    let jinja = dir.join(CHAT_TEMPLATE_FILE);
    if let (Some(t), true) = (extras.chat_template, jinja.is_file()) {
        write_atomic(&jinja, |w| w.write_all(t.as_bytes()))?;
    }
    Ok(())
}

/// A tensor as it will be stored: borrowed when its type is kept, dequantized otherwise.
struct Stored<'a> {
    name: &'a str,
    shape: &'a [usize],
    dtype: DType,
    data: Cow<'a, [u8]>,
}

/// Reject specs that config.json cannot express for their architecture.
fn check_representable(spec: &ModelSpec) -> Result<()> {
    let ok = match spec.architecture {
        Architecture::Qwen2 => spec.qkv_bias && !spec.attention_bias && !spec.mlp_bias,
        Architecture::Llama => !spec.qkv_bias || spec.attention_bias,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{} config.json cannot express attention_bias={}, qkv_bias={}, mlp_bias={}",
            spec.architecture.hf_class(),
            spec.attention_bias,
            spec.qkv_bias,
            spec.mlp_bias
        )))
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::format(path, format!("cannot serialize: {e}")))?;
    text.push('\n');
    write_atomic(path, |w| w.write_all(text.as_bytes()))
}

fn ids_json(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

fn generation_json(spec: &ModelSpec, gen: Option<&GenerationDefaults>) -> Value {
    let mut g = Map::new();
    let put = |g: &mut Map<String, Value>, k: &str, v: Value| {
        if !v.is_null() {
            g.insert(k.to_string(), v);
        }
    };
    put(&mut g, "bos_token_id", json!(spec.bos_token_id));
    put(&mut g, "pad_token_id", json!(spec.pad_token_id));
    let eos = gen
        .map(|d| d.eos_token_id.as_slice())
        .filter(|e| !e.is_empty())
        .unwrap_or(&spec.eos_token_id);
    put(&mut g, "eos_token_id", ids_json(eos));
    if let Some(d) = gen {
        // f32 -> f64 through the shortest decimal, so 0.7 is written as 0.7.
        let num = |x: Option<f32>| x.and_then(|v| v.to_string().parse::<f64>().ok());
        put(&mut g, "temperature", json!(num(d.temperature)));
        put(&mut g, "top_k", json!(d.top_k));
        put(&mut g, "top_p", json!(num(d.top_p)));
        put(
            &mut g,
            "repetition_penalty",
            json!(num(d.repetition_penalty)),
        );
        // transformers refuses sampling settings unless sampling is on.
        if d.temperature.is_some() || d.top_k.is_some() || d.top_p.is_some() {
            g.insert("do_sample".into(), json!(true));
        }
    }
    Value::Object(g)
}

fn tokenizer_config_json(spec: &ModelSpec, extras: &FolderExtras<'_>) -> Value {
    let mut c = Map::new();
    c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    c.insert(
        "model_max_length".into(),
        json!(spec.max_position_embeddings),
    );
    c.insert("clean_up_tokenization_spaces".into(), json!(false));
    let s = &extras.special_tokens;
    for (k, v) in [
        ("bos_token", &s.bos_token),
        ("eos_token", &s.eos_token),
        ("pad_token", &s.pad_token),
        ("unk_token", &s.unk_token),
    ] {
        if let Some(v) = v {
            c.insert(k.into(), json!(v));
        }
    }
    if let Some(b) = s.add_bos_token {
        c.insert("add_bos_token".into(), json!(b));
    }
    if let Some(b) = s.add_eos_token {
        c.insert("add_eos_token".into(), json!(b));
    }
    if let Some(t) = extras.chat_template {
        c.insert("chat_template".into(), json!(t));
    }
    Value::Object(c)
}
