//! LoRA adapters: the configuration (`LoraConfig`, PEFT's field names), deterministic
//! initialisation, and the PEFT folder format (`adapter_config.json` +
//! `adapter_model.safetensors`, keys such as
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, A `[r, in]`, B `[out, r]`).

pub mod config;
mod gguf_lora;
pub mod init;
mod merge;
mod peft;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use config::{
    linear_modules, valid_targets, LoraConfig, LoraInit, LoraTarget, SavedModule, ALL_LINEAR,
    LINEAR_MODULES, SAVABLE_MODULES,
};
pub use init::{fnv1a64, SplitMix64};
pub use peft::{PEFT_FORMAT_VERSION, TASK_TYPE};

use crate::error::{Error, Result};
use crate::spec::ModelSpec;
use crate::tensor::WeightStore;

/// File name of the PEFT adapter configuration.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// File name of the PEFT adapter weights.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before every HF module path in the saved keys.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// PEFT key of the A matrix (`[r, in]`) of `module_path`.
pub fn lora_a_key(module_path: &str) -> String {
    format!("{PEFT_PREFIX}{module_path}.lora_A.weight")
}

/// PEFT key of the B matrix (`[out, r]`) of `module_path`.
pub fn lora_b_key(module_path: &str) -> String {
    format!("{PEFT_PREFIX}{module_path}.lora_B.weight")
}

/// PEFT key of a full weight saved through `modules_to_save` (`lm_head.weight` ->
/// `base_model.model.lm_head.weight`).
pub fn saved_module_key(weight_name: &str) -> String {
    format!("{PEFT_PREFIX}{weight_name}")
}

/// One f32 tensor of an adapter: shape (PyTorch order) and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterTensor {
    /// Shape in PyTorch order (`[r, in]` for A, `[out, r]` for B).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl AdapterTensor {
    /// A tensor, checking that the values fill the shape.
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Result<Self> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Invalid(format!("tensor shape {shape:?} overflows")))?;
        if n != values.len() {
            return Err(Error::Invalid(format!(
                "tensor shape {shape:?} needs {n} values, got {}",
                values.len()
            )));
        }
        Ok(AdapterTensor { shape, values })
    }
    /// The values as little-endian bytes (safetensors F32).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// A LoRA adapter: its configuration and its trainable tensors by PEFT key (LoRA pairs and
/// `modules_to_save` weights), all f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// Hyper-parameters (from adapter_config.json when loaded).
    pub config: LoraConfig,
    /// Trainable tensors by PEFT key.
    pub tensors: BTreeMap<String, AdapterTensor>,
    /// `base_model_name_or_path` of the adapter_config.json it was read from, if any.
    pub base_model_name_or_path: Option<String>,
    /// The folder it was read from (labels errors), if any.
    pub source: Option<PathBuf>,
}

impl LoraAdapter {
    /// A fresh adapter for `spec`: each LoRA pair initialised as `config.init_lora_weights`
    /// says, from a per-tensor stream of `seed` (deterministic on every platform, but not
    /// torch's numbers; see `init`). `modules_to_save` start as copies of the base weights, so
    /// `base` is needed when there are any.
    pub fn init(
        config: &LoraConfig,
        spec: &ModelSpec,
        seed: u64,
        base: Option<&WeightStore>,
    ) -> Result<Self> {
        let targets = config.resolve_targets(spec)?;
        let r = config.r;
        let mut tensors = BTreeMap::new();
        for t in &targets {
            let a_key = lora_a_key(&t.module_path);
            let b_key = lora_b_key(&t.module_path);
            let a = init::init_a(
                config.init_lora_weights,
                r,
                t.in_features,
                &mut SplitMix64::for_stream(seed, &a_key),
            );
            let b = init::init_b(
                config.init_lora_weights,
                r,
                t.out_features,
                &mut SplitMix64::for_stream(seed, &b_key),
            );
            tensors.insert(a_key, AdapterTensor::new(vec![r, t.in_features], a)?);
            tensors.insert(b_key, AdapterTensor::new(vec![t.out_features, r], b)?);
        }
        for m in config.resolve_modules_to_save(spec)? {
            let base = base.ok_or_else(|| {
                Error::Invalid(format!(
                    "modules_to_save '{}' starts as a copy of the base weight '{}'; \
                     the base weights are needed to initialise the adapter",
                    m.module, m.weight_name
                ))
            })?;
            // A tied lm_head is the embedding matrix.
            let source_name = if m.weight_name == "lm_head.weight"
                && base.try_get("lm_head.weight").is_none()
                && spec.tie_word_embeddings
            {
                "model.embed_tokens.weight"
            } else {
                m.weight_name.as_str()
            };
            let w = base.get(source_name)?;
            if w.shape != m.shape {
                return Err(Error::tensor(
                    &base.source,
                    source_name,
                    format!(
                        "shape {:?}, expected {:?} from the model config",
                        w.shape, m.shape
                    ),
                ));
            }
            tensors.insert(
                saved_module_key(&m.weight_name),
                AdapterTensor::new(m.shape.clone(), w.to_f32())?,
            );
        }
        Ok(LoraAdapter {
            config: config.clone(),
            tensors,
            base_model_name_or_path: None,
            source: None,
        })
    }

    /// The path that labels errors about the weights.
    fn weights_path(&self) -> PathBuf {
        match &self.source {
            Some(d) => d.join(ADAPTER_WEIGHTS_FILE),
            None => PathBuf::from(ADAPTER_WEIGHTS_FILE),
        }
    }

    /// A of `module_path`, if the adapter has it.
    pub fn lora_a(&self, module_path: &str) -> Option<&AdapterTensor> {
        self.tensors.get(&lora_a_key(module_path))
    }

    /// B of `module_path`, if the adapter has it.
    pub fn lora_b(&self, module_path: &str) -> Option<&AdapterTensor> {
        self.tensors.get(&lora_b_key(module_path))
    }

    /// Number of trainable values.
    pub fn num_parameters(&self) -> usize {
        self.tensors.values().map(|t| t.values.len()).sum()
    }

    /// The modules that carry a LoRA pair, read from the tensors (no spec needed), in hone's
    /// stable order (layer, then `LINEAR_MODULES` order).
    pub fn targets(&self) -> Vec<LoraTarget> {
        let mut out: Vec<LoraTarget> = self
            .tensors
            .iter()
            .filter_map(|(key, a)| {
                let module = key
                    .strip_prefix(PEFT_PREFIX)?
                    .strip_suffix(".lora_A.weight")?;
                let b = self.lora_b(module)?;
                Some(LoraTarget {
                    module_path: module.to_string(),
                    in_features: *a.shape.get(1)?,
                    out_features: *b.shape.first()?,
                })
            })
            .collect();
        out.sort_by_key(|t| module_order(&t.module_path));
        out
    }

    /// Check that the adapter fits `spec`: every tensor names a module of this model with the
    /// shape it needs, every configured target has both matrices. The error names the first
    /// tensor that does not fit ("adapter for another model?").
    pub fn check_against(&self, spec: &ModelSpec) -> Result<()> {
        let path = self.weights_path();
        let other = "(adapter for another model?)";
        let targets = self.config.resolve_targets(spec).map_err(|e| {
            Error::format(
                self.source
                    .as_deref()
                    .unwrap_or(Path::new("."))
                    .join(ADAPTER_CONFIG_FILE),
                format!("{e} {other}"),
            )
        })?;
        let saved = self.config.resolve_modules_to_save(spec)?;
        let linear: BTreeMap<String, LoraTarget> = linear_modules(spec)
            .into_iter()
            .map(|t| (t.module_path.clone(), t))
            .collect();
        let r = self.config.r;
        for (key, t) in &self.tensors {
            let Some(rest) = key.strip_prefix(PEFT_PREFIX) else {
                return Err(Error::tensor(
                    &path,
                    key,
                    format!("not a PEFT key (every key starts with '{PEFT_PREFIX}')"),
                ));
            };
            let (module, want) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, linear.get(m).map(|l| vec![r, l.in_features]))
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, linear.get(m).map(|l| vec![l.out_features, r]))
            } else {
                (
                    rest,
                    saved
                        .iter()
                        .find(|s| s.weight_name == rest)
                        .map(|s| s.shape.clone()),
                )
            };
            let Some(want) = want else {
                return Err(Error::tensor(
                    &path,
                    key,
                    format!(
                        "this model ({} layers) has no module '{module}' that the adapter \
                         config trains {other}",
                        spec.num_hidden_layers
                    ),
                ));
            };
            if t.shape != want {
                return Err(Error::tensor(
                    &path,
                    key,
                    format!("shape {:?}, this model needs {want:?} {other}", t.shape),
                ));
            }
        }
        for t in &targets {
            for key in [lora_a_key(&t.module_path), lora_b_key(&t.module_path)] {
                if !self.tensors.contains_key(&key) {
                    return Err(Error::tensor(
                        &path,
                        &key,
                        "missing: adapter_config.json targets this module but the weights lack it",
                    ));
                }
            }
        }
        for t in self.targets() {
            if !targets.iter().any(|c| c.module_path == t.module_path) {
                return Err(Error::tensor(
                    &path,
                    lora_a_key(&t.module_path),
                    "adapter_config.json target_modules does not name this module",
                ));
            }
        }
        for s in &saved {
            let key = saved_module_key(&s.weight_name);
            if !self.tensors.contains_key(&key) {
                return Err(Error::tensor(
                    &path,
                    &key,
                    format!("missing: modules_to_save names '{}'", s.module),
                ));
            }
        }
        Ok(())
    }
}

/// Sort key of a module path: layer index, then position in `LINEAR_MODULES`, then the name.
fn module_order(path: &str) -> (usize, usize, String) {
    let layer = path
        .strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    let name = path.rsplit('.').next().unwrap_or("");
    let idx = LINEAR_MODULES
        .iter()
        .position(|m| *m == name)
        .unwrap_or(usize::MAX);
    (layer, idx, path.to_string())
}

#[cfg(test)]
pub(crate) mod tests;
