//! `ModelFingerprint`: what a checkpoint remembers about the base model, so that resuming on
//! another model is an error that says what differs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::adapter::fnv1a64;
use crate::spec::ModelSpec;
use crate::tensor::WeightStore;

/// The `ModelSpec` fields that decide the model's function and tensor shapes (token ids and
/// the context length may differ between copies of the same model and are left out).
const ARCH_FIELDS: [&str; 16] = [
    "architecture",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "tie_word_embeddings",
    "attention_bias",
    "qkv_bias",
    "mlp_bias",
    "hidden_act",
];

/// Bytes sampled from each tensor for `weights_fnv1a64`.
const SAMPLE_BYTES: usize = 4096;

/// What a checkpoint records about its base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    /// The architectural fields of the `ModelSpec` (HF names), as JSON.
    pub arch: BTreeMap<String, Value>,
    /// FNV-1a 64 (hex) of the HF names and shapes of every tensor the spec needs.
    pub tensors_fnv1a64: String,
    /// FNV-1a 64 (hex) of each weight's name, type, shape, length and up to 4 KiB sampled
    /// evenly from its bytes; tells two checkpoints of one architecture apart. Absent when the
    /// fingerprint was taken from the spec alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_fnv1a64: Option<String>,
}

impl ModelFingerprint {
    /// The fingerprint of a spec (architecture and tensor names/shapes).
    pub fn of_spec(spec: &ModelSpec) -> Self {
        let json = serde_json::to_value(spec).unwrap_or(Value::Null);
        let arch = ARCH_FIELDS
            .iter()
            .map(|&k| (k.to_string(), json.get(k).cloned().unwrap_or(Value::Null)))
            .collect();
        let mut names = String::new();
        for (name, shape) in spec.expected_tensors() {
            names.push_str(&format!("{name}:{shape:?};"));
        }
        ModelFingerprint {
            arch,
            tensors_fnv1a64: format!("{:016x}", fnv1a64(names.as_bytes())),
            weights_fnv1a64: None,
        }
    }

    /// The fingerprint of a spec and its loaded weights (sampled, so cheap even for big files).
    pub fn of_model(spec: &ModelSpec, weights: &WeightStore) -> Self {
        let mut fp = ModelFingerprint::of_spec(spec);
        let mut buf = Vec::new();
        for (name, t) in &weights.tensors {
            buf.extend_from_slice(
                format!("{name}:{}:{:?}:{};", t.dtype, t.shape, t.data.len()).as_bytes(),
            );
            let bytes = t.data.as_slice();
            if bytes.len() <= SAMPLE_BYTES {
                buf.extend_from_slice(bytes);
            } else {
                let stride = bytes.len() / SAMPLE_BYTES;
                buf.extend((0..SAMPLE_BYTES).map(|i| bytes[i * stride]));
            }
        }
        fp.weights_fnv1a64 = Some(format!("{:016x}", fnv1a64(&buf)));
        fp
    }

    /// `None` when `self` (the checkpoint's) and `current` describe the same model, otherwise
    /// one line saying what differs. The weight hashes are compared only when both have one.
    pub fn difference(&self, current: &ModelFingerprint) -> Option<String> {
        let keys: std::collections::BTreeSet<&String> =
            self.arch.keys().chain(current.arch.keys()).collect();
        let null = Value::Null;
        for k in keys {
            let (a, b) = (
                self.arch.get(k).unwrap_or(&null),
                current.arch.get(k).unwrap_or(&null),
            );
            if a != b {
                return Some(format!(
                    "{k} is {a} in the checkpoint but {b} in this model"
                ));
            }
        }
        if self.tensors_fnv1a64 != current.tensors_fnv1a64 {
            return Some(format!(
                "the tensor names/shapes differ (hash {} in the checkpoint, {} here)",
                self.tensors_fnv1a64, current.tensors_fnv1a64
            ));
        }
        if let (Some(a), Some(b)) = (&self.weights_fnv1a64, &current.weights_fnv1a64) {
            if a != b {
                return Some(format!(
                    "same architecture but different weights (sampled hash {a} in the \
                     checkpoint, {b} here): another checkpoint or conversion of the model?"
                ));
            }
        }
        None
    }
}
