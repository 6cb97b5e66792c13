//! The PEFT folder format: `adapter_config.json` (every field PEFT 0.21 writes, sorted, two-space
//! indent as `json.dumps(indent=2, sort_keys=True)`) and `adapter_model.safetensors` (F32,
//! `__metadata__ {"format": "pt"}`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use super::{
    lora_b_key, saved_module_key, AdapterTensor, LoraAdapter, LoraConfig, LoraInit,
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, ALL_LINEAR, LINEAR_MODULES, PEFT_PREFIX,
};
use crate::error::{Error, Result};
use crate::hf::{parse_json_object, short, Fields};
use crate::safetensors::{serialize_safetensors, write_atomic, SafetensorsFile, TensorView};
use crate::tensor::Bytes;

/// The PEFT release whose `adapter_config.json` layout hone writes (its `peft_version` field).
pub const PEFT_FORMAT_VERSION: &str = "0.21.2";

/// The PEFT task type of a causal language model adapter.
pub const TASK_TYPE: &str = "CAUSAL_LM";

/// PEFT options that change what the weights mean; hone reads an adapter only when each is
/// absent or at its "off" value (null, false, {} or []).
const UNSUPPORTED_OPTIONS: [&str; 14] = [
    "alora_invocation_tokens",
    "alpha_pattern",
    "exclude_modules",
    "fan_in_fan_out",
    "layer_replication",
    "layers_to_transform",
    "lora_bias",
    "megatron_config",
    "rank_pattern",
    "target_parameters",
    "trainable_token_indices",
    "use_bdlora",
    "use_dora",
    "use_qalora",
];

/// Whether a JSON value means "option not used".
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// A number as PEFT would write it: integers without a fraction.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

impl LoraAdapter {
    /// The `adapter_config.json` PEFT 0.21 would write for this adapter (every field, sorted).
    /// `target_modules` is the sorted list of names, `all-linear` expanded to the seven
    /// projections (PEFT writes the expanded list too).
    pub fn peft_config_json(&self, base_model_name_or_path: &str) -> Value {
        let c = &self.config;
        let mut targets: Vec<String> = Vec::new();
        for t in &c.target_modules {
            if t.eq_ignore_ascii_case(ALL_LINEAR) {
                targets.extend(LINEAR_MODULES.iter().map(|s| s.to_string()));
            } else {
                targets.push(t.clone());
            }
        }
        targets.sort();
        targets.dedup();
        let modules_to_save = if c.modules_to_save.is_empty() {
            Value::Null
        } else {
            Value::from(c.modules_to_save.clone())
        };
        let empty = || Value::Object(Map::new());
        let fields: BTreeMap<&str, Value> = BTreeMap::from([
            ("alora_invocation_tokens", Value::Null),
            ("alpha_pattern", empty()),
            ("arrow_config", Value::Null),
            ("auto_mapping", Value::Null),
            ("base_model_name_or_path", base_model_name_or_path.into()),
            ("bias", c.bias.clone().into()),
            ("corda_config", Value::Null),
            ("ensure_weight_tying", false.into()),
            ("eva_config", Value::Null),
            ("exclude_modules", Value::Null),
            ("fan_in_fan_out", false.into()),
            ("inference_mode", true.into()),
            ("init_lora_weights", c.init_lora_weights.to_json()),
            ("kasa_config", Value::Null),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("loftq_config", empty()),
            ("lora_alpha", number(c.lora_alpha)),
            ("lora_bias", false.into()),
            ("lora_dropout", c.lora_dropout.into()),
            ("lora_ga_config", Value::Null),
            ("megatron_config", Value::Null),
            ("megatron_core", "megatron.core".into()),
            ("modules_to_save", modules_to_save),
            ("monteclora_config", Value::Null),
            ("peft_type", "LORA".into()),
            ("peft_version", PEFT_FORMAT_VERSION.into()),
            ("qalora_group_size", 16.into()),
            ("r", c.r.into()),
            ("rank_pattern", empty()),
            ("revision", Value::Null),
            ("target_modules", targets.into()),
            ("target_parameters", Value::Null),
            ("task_type", TASK_TYPE.into()),
            ("trainable_token_indices", Value::Null),
            ("use_bdlora", Value::Null),
            ("use_dora", false.into()),
            ("use_qalora", false.into()),
            ("use_rslora", c.use_rslora.into()),
            ("velora_config", Value::Null),
        ]);
        // Insert in sorted order: the same text whether or not serde_json keeps insertion order.
        let mut obj = Map::new();
        for (k, v) in fields {
            obj.insert(k.to_string(), v);
        }
        Value::Object(obj)
    }

    /// The two files of the PEFT folder as bytes: `adapter_config.json` and
    /// `adapter_model.safetensors` (for the browser, where there is no folder).
    pub fn to_peft_bytes(&self, base_model_name_or_path: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        self.config.validate()?;
        let mut config = serde_json::to_vec_pretty(&self.peft_config_json(base_model_name_or_path))
            .map_err(|e| Error::Invalid(format!("adapter_config.json: {e}")))?;
        config.push(b'\n');
        let bytes: Vec<(&str, &AdapterTensor, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t, t.to_le_bytes()))
            .collect();
        let views: Vec<TensorView<'_>> = bytes
            .iter()
            .map(|(k, t, b)| TensorView::new(k, &t.shape, crate::tensor::DType::F32, b))
            .collect();
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let weights = serialize_safetensors(&views, Some(&metadata))?;
        Ok((config, weights))
    }

    /// Write the PEFT folder `dir` (created if needed): `adapter_model.safetensors` first, then
    /// `adapter_config.json`, each replaced atomically (temporary file, fsync, rename), so a
    /// reader never sees a torn file.
    pub fn save_peft(&self, dir: impl AsRef<Path>, base_model_name_or_path: &str) -> Result<()> {
        let dir = dir.as_ref();
        let (config, weights) = self.to_peft_bytes(base_model_name_or_path)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_atomic(&dir.join(ADAPTER_WEIGHTS_FILE), |w: &mut dyn Write| {
            w.write_all(&weights)
        })?;
        write_atomic(&dir.join(ADAPTER_CONFIG_FILE), |w: &mut dyn Write| {
            w.write_all(&config)
        })
    }

    /// Read a PEFT LoRA folder (written by PEFT or by hone). Weights in F16/BF16 become f32.
    pub fn load_peft(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let config = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let weights = SafetensorsFile::open(&weights_path)?;
        let mut adapter = LoraAdapter::from_peft_parts(&config_path, &config, weights)?;
        adapter.source = Some(dir.to_path_buf());
        Ok(adapter)
    }

    /// Read the two files of a PEFT folder from bytes; the paths only label errors.
    pub fn from_peft_bytes(
        config_path: impl AsRef<Path>,
        config: &[u8],
        weights_path: impl AsRef<Path>,
        weights: Bytes,
    ) -> Result<Self> {
        let weights = SafetensorsFile::from_bytes(weights_path, weights)?;
        LoraAdapter::from_peft_parts(config_path.as_ref(), config, weights)
    }

    fn from_peft_parts(
        config_path: &Path,
        config: &[u8],
        weights: SafetensorsFile,
    ) -> Result<Self> {
        let obj = parse_json_object(config_path, config)?;
        let (config, base) = parse_peft_config(config_path, &obj)?;
        let path = weights.path.clone();
        let mut tensors = BTreeMap::new();
        for t in &weights.tensors {
            let bad = |msg: String| Error::tensor(&path, &t.name, msg);
            if t.shape.len() != 2 {
                return Err(bad(format!(
                    "shape {:?}: adapter tensors are matrices",
                    t.shape
                )));
            }
            let Some(rest) = t.name.strip_prefix(PEFT_PREFIX) else {
                return Err(bad(format!(
                    "not a PEFT key (every key starts with '{PEFT_PREFIX}')"
                )));
            };
            let r = config.r;
            if let Some(module) = rest.strip_suffix(".lora_A.weight") {
                if t.shape[0] != r {
                    return Err(bad(format!(
                        "shape {:?}: lora_A must be [r, in] with r = {r} from {ADAPTER_CONFIG_FILE}",
                        t.shape
                    )));
                }
                if weights.get(&lora_b_key(module)).is_none() {
                    return Err(bad(format!("has no partner '{}'", lora_b_key(module))));
                }
            } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
                if t.shape[1] != r {
                    return Err(bad(format!(
                        "shape {:?}: lora_B must be [out, r] with r = {r} from {ADAPTER_CONFIG_FILE}",
                        t.shape
                    )));
                }
                if weights.get(&super::lora_a_key(module)).is_none() {
                    return Err(bad(format!(
                        "has no partner '{}'",
                        super::lora_a_key(module)
                    )));
                }
            } else if !config.modules_to_save.iter().any(|m| {
                let weight = if m == "lm_head" {
                    "lm_head.weight"
                } else {
                    "model.embed_tokens.weight"
                };
                t.name == saved_module_key(weight)
            }) {
                return Err(bad(
                    "unsupported adapter tensor: hone reads lora_A/lora_B pairs and the \
                     modules_to_save weights (lm_head, embed_tokens)"
                        .into(),
                ));
            }
            tensors.insert(
                t.name.clone(),
                AdapterTensor::new(t.shape.clone(), t.to_f32())?,
            );
        }
        Ok(LoraAdapter {
            config,
            tensors,
            base_model_name_or_path: base,
            source: None,
        })
    }
}

/// A `LoraConfig` and `base_model_name_or_path` from an `adapter_config.json` object; missing
/// fields take PEFT's defaults, options hone does not implement are errors naming the field.
pub(crate) fn parse_peft_config(
    path: &Path,
    obj: &Map<String, Value>,
) -> Result<(LoraConfig, Option<String>)> {
    let f = Fields::new(path, obj);
    match f.str("peft_type")? {
        Some("LORA") => {}
        Some(other) => {
            return Err(f.invalid(
                "peft_type",
                format!("'{other}' is not a LoRA adapter; hone reads peft_type \"LORA\""),
            ))
        }
        None => return Err(f.missing("peft_type")),
    }
    if let Some(t) = f.str("task_type")? {
        if t != TASK_TYPE {
            return Err(f.invalid(
                "task_type",
                format!("'{t}' is not supported; hone reads {TASK_TYPE} adapters"),
            ));
        }
    }
    for key in UNSUPPORTED_OPTIONS {
        if let Some(v) = obj.get(key) {
            if !is_off(v) {
                return Err(f.invalid(key, format!("{} is not supported by hone", short(v))));
            }
        }
    }
    let defaults = LoraConfig::default();
    let target_modules = match f.get("target_modules") {
        None => defaults.target_modules.clone(),
        Some(Value::String(s)) if s.eq_ignore_ascii_case(ALL_LINEAR) => vec![ALL_LINEAR.into()],
        Some(Value::String(s)) => {
            return Err(f.invalid(
                "target_modules",
                format!("regular expression '{s}' is not supported; list the module names"),
            ))
        }
        Some(v) => string_list(&f, "target_modules", v)?,
    };
    let modules_to_save = match f.get("modules_to_save") {
        None => Vec::new(),
        Some(v) => string_list(&f, "modules_to_save", v)?,
    };
    let init_lora_weights = match f.get("init_lora_weights") {
        None => LoraInit::Default,
        Some(Value::Bool(true)) => LoraInit::Default,
        Some(Value::Bool(false)) => LoraInit::NoInit,
        Some(Value::String(s)) => {
            LoraInit::parse(s).map_err(|m| f.invalid("init_lora_weights", m))?
        }
        Some(v) => {
            return Err(f.invalid(
                "init_lora_weights",
                format!("expected true, false or a name, got {}", short(v)),
            ))
        }
    };
    let config = LoraConfig {
        r: f.usize("r")?.unwrap_or(defaults.r),
        lora_alpha: f.f64("lora_alpha")?.unwrap_or(defaults.lora_alpha),
        lora_dropout: f.f64("lora_dropout")?.unwrap_or(defaults.lora_dropout),
        target_modules,
        use_rslora: f.bool("use_rslora")?.unwrap_or(false),
        init_lora_weights,
        modules_to_save,
        bias: f.str("bias")?.unwrap_or("none").to_string(),
    };
    if let Some((field, msg)) = config.problem() {
        return Err(f.invalid(field, msg));
    }
    let base = f.str("base_model_name_or_path")?.map(str::to_string);
    Ok((config, base))
}

fn string_list(f: &Fields<'_>, key: &str, v: &Value) -> Result<Vec<String>> {
    v.as_array()
        .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
        .ok_or_else(|| f.invalid(key, format!("expected a list of names, got {}", short(v))))
}
