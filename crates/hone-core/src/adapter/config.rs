//! `LoraConfig`: the LoRA hyper-parameters, named as in PEFT's `LoraConfig`, and the
//! resolution of `target_modules` against a model spec.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::ModelSpec;

/// The linear projections of a decoder layer that LoRA can target, in the order hone lists
/// them within a layer.
pub const LINEAR_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Shorthand for every linear projection of every layer (never `lm_head`, as in PEFT).
pub const ALL_LINEAR: &str = "all-linear";

/// Modules whose full weights an adapter may train and save (`modules_to_save`).
pub const SAVABLE_MODULES: [&str; 2] = ["lm_head", "embed_tokens"];

/// How the LoRA matrices start (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "InitRepr", into = "InitRepr")]
pub enum LoraInit {
    /// `true`, PEFT's default: A ~ kaiming-uniform(a=√5) = U(-1/√in, 1/√in), B = 0.
    Default,
    /// `"gaussian"`: A ~ N(0, (1/r)²), B = 0.
    Gaussian,
    /// `false`: no LoRA init, both keep `nn.Linear`'s: A ~ U(-1/√in, 1/√in), B ~ U(-1/√r, 1/√r).
    /// The adapter is not the identity at step 0 (PEFT uses this for tests only).
    NoInit,
}

/// The JSON forms of `init_lora_weights`: a bool or a method name.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum InitRepr {
    Bool(bool),
    Name(String),
}

impl TryFrom<InitRepr> for LoraInit {
    type Error = String;
    fn try_from(r: InitRepr) -> std::result::Result<Self, String> {
        match r {
            InitRepr::Bool(true) => Ok(LoraInit::Default),
            InitRepr::Bool(false) => Ok(LoraInit::NoInit),
            InitRepr::Name(s) => LoraInit::parse(&s),
        }
    }
}

impl From<LoraInit> for InitRepr {
    fn from(i: LoraInit) -> Self {
        match i {
            LoraInit::Default => InitRepr::Bool(true),
            LoraInit::NoInit => InitRepr::Bool(false),
            LoraInit::Gaussian => InitRepr::Name("gaussian".into()),
        }
    }
}

impl LoraInit {
    /// Parse a method name as PEFT writes it (`"gaussian"`; `"true"`/`"false"` for the bools).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "true" | "default" => Ok(LoraInit::Default),
            "false" => Ok(LoraInit::NoInit),
            "gaussian" => Ok(LoraInit::Gaussian),
            _ => Err(format!(
                "init_lora_weights '{s}' is not supported; supported: true, \"gaussian\", false"
            )),
        }
    }
    /// The value PEFT writes to `adapter_config.json`.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            LoraInit::Default => true.into(),
            LoraInit::NoInit => false.into(),
            LoraInit::Gaussian => "gaussian".into(),
        }
    }
}

/// LoRA hyper-parameters, field names as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank of the update `B·A`.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r` (or `/ √r` with rsLoRA).
    pub lora_alpha: f64,
    /// Dropout on the LoRA input during training, in [0, 1).
    pub lora_dropout: f64,
    /// Short names (`q_proj`), `all-linear`, or module paths matched as PEFT does (equal, or
    /// ending in `.` + entry: `self_attn.o_proj`, `model.layers.0.mlp.up_proj`).
    pub target_modules: Vec<String>,
    /// rsLoRA: scale by `lora_alpha / √r` instead of `lora_alpha / r`.
    pub use_rslora: bool,
    /// How A and B start.
    pub init_lora_weights: LoraInit,
    /// Modules trained in full and saved with the adapter (`lm_head`, `embed_tokens`).
    pub modules_to_save: Vec<String>,
    /// Which biases train; only `"none"` is supported.
    pub bias: String,
}

impl Default for LoraConfig {
    /// PEFT's defaults (r 8, alpha 8, no dropout; its llama/qwen2 default targets q and v).
    fn default() -> Self {
        LoraConfig {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            use_rslora: false,
            init_lora_weights: LoraInit::Default,
            modules_to_save: Vec::new(),
            bias: "none".into(),
        }
    }
}

/// One linear module that carries a LoRA pair: `y = W·x + scale · B·(A·x)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoraTarget {
    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub module_path: String,
    /// Input width (columns of W and of A).
    pub in_features: usize,
    /// Output width (rows of W and of B).
    pub out_features: usize,
}

/// A module saved in full (`modules_to_save`): its HF weight name and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedModule {
    /// Name as written in `modules_to_save` (`lm_head`).
    pub module: String,
    /// HF weight name, e.g. `lm_head.weight`.
    pub weight_name: String,
    /// Shape `[rows, cols]`.
    pub shape: Vec<usize>,
}

impl LoraConfig {
    /// The multiplier of `B·A`: `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.r.max(1) as f64;
        if self.use_rslora {
            self.lora_alpha / r.sqrt()
        } else {
            self.lora_alpha / r
        }
    }

    /// The first invalid field and what is wrong with it.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.r == 0 {
            return Some(("r", "the LoRA rank must be at least 1, got 0".into()));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Some((
                "lora_alpha",
                format!("must be a positive number, got {}", self.lora_alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Some((
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.lora_dropout),
            ));
        }
        if self.target_modules.is_empty() {
            return Some((
                "target_modules",
                format!("is empty; name at least one of {}", valid_targets()),
            ));
        }
        if self.bias != "none" {
            return Some((
                "bias",
                format!(
                    "'{}' is not supported; only \"none\" (biases stay frozen)",
                    self.bias
                ),
            ));
        }
        if let Some(m) = self
            .modules_to_save
            .iter()
            .find(|m| !SAVABLE_MODULES.contains(&m.as_str()))
        {
            return Some((
                "modules_to_save",
                format!(
                    "'{m}' is not supported; supported: {}",
                    SAVABLE_MODULES.join(", ")
                ),
            ));
        }
        None
    }

    /// Check every field: r ≥ 1, alpha > 0, dropout in [0, 1), targets given, bias "none",
    /// known modules_to_save.
    pub fn validate(&self) -> Result<()> {
        match self.problem() {
            None => Ok(()),
            Some((field, msg)) => Err(Error::Invalid(format!(
                "LoRA config: field '{field}': {msg}"
            ))),
        }
    }

    /// The modules LoRA applies to in `spec`, layer by layer, within a layer in the order of
    /// `LINEAR_MODULES`. An entry that matches no linear module is an error naming the valid ones.
    pub fn resolve_targets(&self, spec: &ModelSpec) -> Result<Vec<LoraTarget>> {
        self.validate()?;
        let all = linear_modules(spec);
        let mut used = vec![false; self.target_modules.len()];
        let mut out = Vec::new();
        for t in &all {
            let mut hit = false;
            for (i, entry) in self.target_modules.iter().enumerate() {
                if target_matches(entry, &t.module_path) {
                    used[i] = true;
                    hit = true;
                }
            }
            if hit {
                out.push(t.clone());
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            let entry = &self.target_modules[i];
            let why = if entry == "lm_head" || entry.ends_with(".lm_head") {
                " (lm_head cannot carry LoRA; put it in modules_to_save to train it in full)"
                    .to_string()
            } else {
                format!(
                    " ({} layers: model.layers.0 .. model.layers.{})",
                    spec.num_hidden_layers,
                    spec.num_hidden_layers.saturating_sub(1)
                )
            };
            return Err(Error::Invalid(format!(
                "LoRA target module '{entry}' matches no linear module of this model{why}; valid: {}",
                valid_targets()
            )));
        }
        Ok(out)
    }

    /// The full-weight modules this config saves, with HF weight names and shapes in `spec`.
    pub fn resolve_modules_to_save(&self, spec: &ModelSpec) -> Result<Vec<SavedModule>> {
        self.validate()?;
        let mut out = Vec::new();
        for m in &self.modules_to_save {
            if out.iter().any(|s: &SavedModule| &s.module == m) {
                continue;
            }
            let weight_name = match m.as_str() {
                "lm_head" => "lm_head.weight",
                _ => "model.embed_tokens.weight",
            };
            out.push(SavedModule {
                module: m.clone(),
                weight_name: weight_name.into(),
                shape: vec![spec.vocab_size, spec.hidden_size],
            });
        }
        Ok(out)
    }
}

/// The valid `target_modules` entries, for error messages.
pub fn valid_targets() -> String {
    format!(
        "{}, {ALL_LINEAR} (or module paths such as model.layers.0.self_attn.q_proj)",
        LINEAR_MODULES.join(", ")
    )
}

/// PEFT's rule for a list entry: the module path equals it or ends with `.` + it.
fn target_matches(entry: &str, module_path: &str) -> bool {
    entry.eq_ignore_ascii_case(ALL_LINEAR)
        || module_path == entry
        || module_path
            .strip_suffix(entry)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Every LoRA-capable linear module of `spec`, in hone's stable order.
pub fn linear_modules(spec: &ModelSpec) -> Vec<LoraTarget> {
    let (h, i, q, kv) = (
        spec.hidden_size,
        spec.intermediate_size,
        spec.q_dim(),
        spec.kv_dim(),
    );
    let mut out = Vec::with_capacity(spec.num_hidden_layers * LINEAR_MODULES.len());
    for l in 0..spec.num_hidden_layers {
        for name in LINEAR_MODULES {
            let (group, in_features, out_features) = match name {
                "q_proj" => ("self_attn", h, q),
                "k_proj" | "v_proj" => ("self_attn", h, kv),
                "o_proj" => ("self_attn", q, h),
                "gate_proj" | "up_proj" => ("mlp", h, i),
                _ => ("mlp", i, h),
            };
            out.push(LoraTarget {
                module_path: format!("model.layers.{l}.{group}.{name}"),
                in_features,
                out_features,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Architecture;

    pub(crate) fn tiny_spec() -> ModelSpec {
        ModelSpec {
            architecture: Architecture::Llama,
            vocab_size: 128,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            max_position_embeddings: 512,
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            attention_bias: false,
            qkv_bias: false,
            mlp_bias: false,
            hidden_act: "silu".into(),
            bos_token_id: Some(1),
            eos_token_id: vec![2],
            pad_token_id: None,
        }
    }

    fn cfg(targets: &[&str]) -> LoraConfig {
        LoraConfig {
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            ..LoraConfig::default()
        }
    }

    #[test]
    fn scale_is_alpha_over_r_or_over_sqrt_r_with_rslora() {
        let mut c = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            ..LoraConfig::default()
        };
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 8.0);
    }

    #[test]
    fn validation_names_the_bad_field() {
        let bad = [
            (
                LoraConfig {
                    r: 0,
                    ..LoraConfig::default()
                },
                "'r'",
            ),
            (
                LoraConfig {
                    lora_alpha: 0.0,
                    ..LoraConfig::default()
                },
                "'lora_alpha'",
            ),
            (
                LoraConfig {
                    lora_alpha: -1.0,
                    ..LoraConfig::default()
                },
                "'lora_alpha'",
            ),
            (
                LoraConfig {
                    lora_dropout: 1.0,
                    ..LoraConfig::default()
                },
                "'lora_dropout'",
            ),
            (
                LoraConfig {
                    lora_dropout: -0.1,
                    ..LoraConfig::default()
                },
                "'lora_dropout'",
            ),
            (
                LoraConfig {
                    lora_dropout: f64::NAN,
                    ..LoraConfig::default()
                },
                "'lora_dropout'",
            ),
            (cfg(&[]), "'target_modules'"),
            (
                LoraConfig {
                    bias: "all".into(),
                    ..LoraConfig::default()
                },
                "'bias'",
            ),
            (
                LoraConfig {
                    modules_to_save: vec!["norm".into()],
                    ..LoraConfig::default()
                },
                "'modules_to_save'",
            ),
        ];
        for (c, field) in bad {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        LoraConfig {
            lora_dropout: 0.99,
            ..LoraConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn all_linear_resolves_to_seven_modules_per_layer_in_stable_order() {
        let spec = tiny_spec();
        let t = cfg(&["all-linear"]).resolve_targets(&spec).unwrap();
        assert_eq!(t.len(), 14);
        assert_eq!(t[0].module_path, "model.layers.0.self_attn.q_proj");
        assert_eq!((t[0].in_features, t[0].out_features), (64, 64));
        assert_eq!((t[1].in_features, t[1].out_features), (64, 32));
        assert_eq!(t[6].module_path, "model.layers.0.mlp.down_proj");
        assert_eq!((t[6].in_features, t[6].out_features), (128, 64));
        assert_eq!(t[7].module_path, "model.layers.1.self_attn.q_proj");
        assert!(t.iter().all(|t| !t.module_path.contains("lm_head")));
        // The same set however it is spelled, in the same order.
        let names: Vec<&str> = LINEAR_MODULES.iter().rev().copied().collect();
        assert_eq!(cfg(&names).resolve_targets(&spec).unwrap(), t);
    }

    #[test]
    fn names_suffixes_and_full_paths_match_as_in_peft() {
        let spec = tiny_spec();
        let t = cfg(&["v_proj", "q_proj", "q_proj"])
            .resolve_targets(&spec)
            .unwrap();
        let paths: Vec<&str> = t.iter().map(|t| t.module_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "model.layers.0.self_attn.q_proj",
                "model.layers.0.self_attn.v_proj",
                "model.layers.1.self_attn.q_proj",
                "model.layers.1.self_attn.v_proj"
            ]
        );
        let t = cfg(&["self_attn.o_proj", "model.layers.1.mlp.up_proj"])
            .resolve_targets(&spec)
            .unwrap();
        let paths: Vec<&str> = t.iter().map(|t| t.module_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "model.layers.0.self_attn.o_proj",
                "model.layers.1.self_attn.o_proj",
                "model.layers.1.mlp.up_proj"
            ]
        );
    }

    #[test]
    fn unknown_targets_list_the_valid_ones() {
        let spec = tiny_spec();
        for bad in [
            "qproj",
            "proj",
            "lm_head",
            "model.layers.2.self_attn.q_proj",
            "mlp",
        ] {
            let e = cfg(&["q_proj", bad])
                .resolve_targets(&spec)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
            assert!(
                e.contains("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
                "{e}"
            );
            assert!(e.contains("all-linear"), "{e}");
        }
        let e = cfg(&["lm_head"])
            .resolve_targets(&spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("modules_to_save"), "{e}");
    }

    #[test]
    fn init_lora_weights_reads_and_writes_peft_json_forms() {
        for (json, init) in [
            ("true", LoraInit::Default),
            ("false", LoraInit::NoInit),
            ("\"gaussian\"", LoraInit::Gaussian),
        ] {
            let v: LoraInit = serde_json::from_str(json).unwrap();
            assert_eq!(v, init);
            assert_eq!(serde_json::to_string(&init).unwrap(), json);
            assert_eq!(init.to_json().to_string(), json);
        }
        let e = serde_json::from_str::<LoraInit>("\"pissa\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pissa") && e.contains("gaussian"), "{e}");
    }
}
