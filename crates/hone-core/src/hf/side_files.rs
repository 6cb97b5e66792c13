//! The optional files of an HF folder: generation_config.json (sampling defaults) and
//! tokenizer_config.json (chat template, special tokens).

use std::path::Path;

use serde_json::{Map, Value};

use super::{read_json_object, short, Fields};
use crate::error::Result;
use crate::model::GenerationDefaults;

/// Read generation_config.json.
pub fn read_generation_config(path: impl AsRef<Path>) -> Result<GenerationDefaults> {
    let path = path.as_ref();
    generation_from_json(path, &read_json_object(path)?)
}

/// Sampling defaults from a parsed generation_config.json object; `path` labels errors.
pub fn generation_from_json(path: &Path, obj: &Map<String, Value>) -> Result<GenerationDefaults> {
    let f = Fields::new(path, obj);
    let temperature = f.f64("temperature")?;
    if let Some(t) = temperature.filter(|t| *t < 0.0) {
        return Err(f.invalid("temperature", format!("must be >= 0, got {t}")));
    }
    let top_p = f.f64("top_p")?;
    if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(f.invalid("top_p", format!("must be in (0, 1], got {p}")));
    }
    let repetition_penalty = f.f64("repetition_penalty")?;
    if let Some(r) = repetition_penalty.filter(|r| *r <= 0.0) {
        return Err(f.invalid("repetition_penalty", format!("must be positive, got {r}")));
    }
    Ok(GenerationDefaults {
        eos_token_id: f.token_ids("eos_token_id")?,
        temperature: temperature.map(|t| t as f32),
        top_k: f.usize("top_k")?,
        top_p: top_p.map(|p| p as f32),
        repetition_penalty: repetition_penalty.map(|r| r as f32),
    })
}

/// Special tokens named in tokenizer_config.json (token strings; ids come from the tokenizer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// Whether encoding prepends bos (absent: the tokenizer.json post-processor decides).
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
}

/// What hone takes from tokenizer_config.json.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub special_tokens: SpecialTokens,
}

/// Read tokenizer_config.json.
pub fn read_tokenizer_config(path: impl AsRef<Path>) -> Result<TokenizerConfig> {
    let path = path.as_ref();
    tokenizer_config_from_json(path, &read_json_object(path)?)
}

/// Chat template and special tokens from a parsed tokenizer_config.json object. A template
/// list (`[{name, template}]`) yields the one named "default", else the first.
pub fn tokenizer_config_from_json(
    path: &Path,
    obj: &Map<String, Value>,
) -> Result<TokenizerConfig> {
    let f = Fields::new(path, obj);
    let chat_template = match f.get("chat_template") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let mut named = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let entry = item.as_object().and_then(|o| {
                    let name = o.get("name")?.as_str()?;
                    let template = o.get("template")?.as_str()?;
                    Some((name, template))
                });
                named.push(entry.ok_or_else(|| {
                    f.invalid(
                        "chat_template",
                        format!(
                            "entry {i} must be {{\"name\": ..., \"template\": ...}}, got {}",
                            short(item)
                        ),
                    )
                })?);
            }
            named
                .iter()
                .find(|(n, _)| *n == "default")
                .or(named.first())
                .map(|(_, t)| t.to_string())
        }
        Some(v) => {
            return Err(f.invalid(
                "chat_template",
                format!(
                    "expected a string or a list of named templates, got {}",
                    short(v)
                ),
            ))
        }
    };
    let token = |key: &str| -> Result<Option<String>> {
        match f.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(f.invalid(key, "an added-token object needs a string 'content'")),
            },
            Some(v) => Err(f.invalid(
                key,
                format!(
                    "expected a token string or {{\"content\": ...}}, got {}",
                    short(v)
                ),
            )),
        }
    };
    Ok(TokenizerConfig {
        chat_template,
        special_tokens: SpecialTokens {
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
            unk_token: token("unk_token")?,
            add_bos_token: f.bool("add_bos_token")?,
            add_eos_token: f.bool("add_eos_token")?,
        },
    })
}
