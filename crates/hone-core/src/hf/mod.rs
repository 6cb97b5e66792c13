//! Hugging Face model folders: config.json, (sharded) safetensors, tokenizer files,
//! generation_config.json. Reading (`HfFolder::open`, or `read_config` / `read_weights` for a
//! folder without tokenizer) and writing (`write_folder`).

mod config;
mod side_files;
mod write;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::GenerationDefaults;
use crate::safetensors::SafetensorsFile;
use crate::spec::ModelSpec;
use crate::tensor::WeightStore;

pub use config::{config_json, read_config, spec_from_config};
pub use side_files::{
    generation_from_json, read_generation_config, read_tokenizer_config,
    tokenizer_config_from_json, SpecialTokens, TokenizerConfig,
};
pub use write::{write_folder, FolderExtras};

/// The model configuration file of an HF folder.
pub const CONFIG_FILE: &str = "config.json";
/// The single-file weights of an HF folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of sharded weights (`weight_map`: tensor name -> shard file).
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The tokenizer (HF `tokenizers` format).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Special tokens and the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The chat template as a separate file (transformers >= 4.43 saves it there).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// Default sampling settings.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Everything an HF model folder holds, parsed; the tokenizer itself is built from
/// `tokenizer_json` (and `tokenizer_config`) by `Tokenizer::from_file`.
#[derive(Debug, Clone)]
pub struct HfFolder {
    pub dir: PathBuf,
    pub spec: ModelSpec,
    /// Tensors with their HF names, as stored (a tied model may lack `lm_head.weight`).
    pub weights: WeightStore,
    /// From generation_config.json; eos falls back to config.json's when absent there.
    pub generation: GenerationDefaults,
    /// From chat_template.jinja, else tokenizer_config.json.
    pub chat_template: Option<String>,
    pub tokenizer_json: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub special_tokens: SpecialTokens,
}

impl HfFolder {
    /// Read and check a model folder: config.json, tokenizer.json (required), weights
    /// (checked against the spec), and the optional tokenizer_config.json,
    /// chat_template.jinja and generation_config.json.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::format(
                dir,
                "not a folder (an HF model folder was expected)",
            ));
        }
        let spec = read_config(dir)?;
        let tokenizer_json = dir.join(TOKENIZER_FILE);
        if !tokenizer_json.is_file() {
            return Err(Error::format(
                dir,
                format!("{TOKENIZER_FILE} absent: an HF model folder needs {CONFIG_FILE}, {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}) and {TOKENIZER_FILE}"),
            ));
        }
        let tokenizer_config = Some(dir.join(TOKENIZER_CONFIG_FILE)).filter(|p| p.is_file());
        let tok_cfg = match &tokenizer_config {
            Some(p) => read_tokenizer_config(p)?,
            None => TokenizerConfig::default(),
        };
        let template_file = dir.join(CHAT_TEMPLATE_FILE);
        let chat_template = if template_file.is_file() {
            Some(
                std::fs::read_to_string(&template_file)
                    .map_err(|e| Error::io(&template_file, e))?,
            )
        } else {
            tok_cfg.chat_template
        };
        let generation_path = dir.join(GENERATION_CONFIG_FILE);
        let mut generation = if generation_path.is_file() {
            read_generation_config(&generation_path)?
        } else {
            GenerationDefaults::default()
        };
        if generation.eos_token_id.is_empty() {
            generation.eos_token_id = spec.eos_token_id.clone();
        }
        let weights = read_weights(dir)?;
        weights.check_against(&spec)?;
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            spec,
            weights,
            generation,
            chat_template,
            tokenizer_json,
            tokenizer_config,
            special_tokens: tok_cfg.special_tokens,
        })
    }
}

/// The weights of an HF folder: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists. Names are kept as stored; nothing is checked
/// against a spec (see `WeightStore::check_against`).
pub fn read_weights(dir: impl AsRef<Path>) -> Result<WeightStore> {
    let dir = dir.as_ref();
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return crate::safetensors::read_safetensors(&single);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.is_file() {
        return read_sharded(dir, &index);
    }
    let mut msg = format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in this folder");
    if dir.join("pytorch_model.bin").exists() {
        msg.push_str(" (pytorch_model.bin is not supported: convert it to safetensors)");
    }
    Err(Error::format(dir, msg))
}

fn read_sharded(dir: &Path, index: &Path) -> Result<WeightStore> {
    let json = read_json_object(index)?;
    let map = match json.get("weight_map") {
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(Error::invalid_field(
                index,
                "weight_map",
                "expected an object of tensor name -> shard file",
            ))
        }
        None => return Err(Error::missing(index, "weight_map")),
    };
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::invalid_field(index, format!("weight_map.{name}"), "expected a file name")
        })?;
        let plain = !file.is_empty()
            && Path::new(file)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(Error::invalid_field(
                index,
                format!("weight_map.{name}"),
                format!("shard '{file}' is not a file inside the model folder"),
            ));
        }
        by_shard.entry(file).or_default().push(name);
    }
    let mut store = WeightStore::new(index);
    for (file, names) in by_shard {
        let shard_path = dir.join(file);
        if !shard_path.is_file() {
            return Err(Error::format(
                index,
                format!(
                    "shard '{file}' (holding '{}' and {} more tensors) is missing from {}",
                    names[0],
                    names.len() - 1,
                    dir.display()
                ),
            ));
        }
        let shard = SafetensorsFile::open(&shard_path)?;
        for name in names {
            let t = shard.get(name).ok_or_else(|| {
                Error::tensor(
                    &shard_path,
                    name,
                    format!("{WEIGHTS_INDEX_FILE} places it in this shard, but it is absent"),
                )
            })?;
            store.insert(t.clone());
        }
    }
    Ok(store)
}

/// Read a JSON file that must hold an object.
pub(crate) fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_json_object(path, &bytes)
}

/// Parse JSON bytes that must hold an object; `path` labels errors.
pub(crate) fn parse_json_object(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::format(
            path,
            format!("expected a JSON object, got {}", short(&other)),
        )),
        Err(e) => Err(Error::format(path, format!("invalid JSON: {e}"))),
    }
}

/// A JSON value for an error message, cut to a readable length.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// Typed access to the fields of one JSON object, with errors that name the file and the
/// field (`prefix` names nested objects, e.g. `rope_parameters.`). JSON `null` counts as absent.
pub(crate) struct Fields<'a> {
    path: &'a Path,
    prefix: String,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(path: &'a Path, obj: &'a Map<String, Value>) -> Self {
        Fields {
            path,
            prefix: String::new(),
            obj,
        }
    }
    /// The fields of a nested object, for error messages named `key.field`.
    pub(crate) fn nested(&self, key: &str, obj: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            path: self.path,
            prefix: format!("{}{key}.", self.prefix),
            obj,
        }
    }
    pub(crate) fn path(&self) -> &'a Path {
        self.path
    }
    pub(crate) fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    pub(crate) fn missing(&self, key: &str) -> Error {
        Error::missing(self.path, self.name(key))
    }
    pub(crate) fn invalid(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::invalid_field(self.path, self.name(key), msg)
    }
    fn expected(&self, key: &str, what: &str, v: &Value) -> Error {
        self.invalid(key, format!("expected {what}, got {}", short(v)))
    }
    pub(crate) fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| self.expected(key, "a non-negative integer", v))
            })
            .transpose()
    }
    /// A required integer > 0.
    pub(crate) fn positive(&self, key: &str) -> Result<usize> {
        match self.usize(key)? {
            None => Err(self.missing(key)),
            Some(0) => Err(self.invalid(key, "must be positive, got 0")),
            Some(n) => Ok(n),
        }
    }
    pub(crate) fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.expected(key, "a number", v))
            })
            .transpose()
    }
    pub(crate) fn f64_req(&self, key: &str) -> Result<f64> {
        self.f64(key)?.ok_or_else(|| self.missing(key))
    }
    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.expected(key, "true or false", v))
            })
            .transpose()
    }
    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.expected(key, "a string", v)))
            .transpose()
    }
    pub(crate) fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        self.get(key)
            .map(|v| {
                v.as_object()
                    .ok_or_else(|| self.expected(key, "an object", v))
            })
            .transpose()
    }
    fn id(&self, key: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| self.expected(key, "a token id (integer >= 0)", v))
    }
    /// A single token id.
    pub(crate) fn token_id(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| self.id(key, v)).transpose()
    }
    /// A token id or a list of them (`eos_token_id`); empty when absent.
    pub(crate) fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(|v| self.id(key, v)).collect(),
            Some(v) => Ok(vec![self.id(key, v)?]),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
