//! The fine-tuning configuration: one flat set of options named as in `olive finetune` and
//! Hugging Face `TrainingArguments`, read from a YAML/JSON file and/or command-line flags
//! (flags win), checked before anything heavy happens.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::data::Overflow;
use crate::error::{Error, Result};
use crate::schedule::ScheduleKind;

/// Everything `hone finetune` takes. Unknown keys are an error; missing keys take the defaults
/// below (HF's where it has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    // -- model and data --
    /// GGUF file or HF folder.
    pub model_name_or_path: String,
    /// Dataset file (JSONL, JSON array, CSV/TSV, plain text).
    pub data_name: String,
    /// Dataset format when the extension does not say (`jsonl`, `json`, `csv`, `tsv`, `text`).
    pub data_format: Option<String>,
    /// Rows to train on, HF datasets slice syntax (`train`, `train[:160]`, `train[:80%]`).
    pub train_split: String,
    /// Rows to evaluate on (none: no evaluation).
    pub eval_split: Option<String>,
    /// Template turning a row into text, e.g. `{phrase} -> {tone}`.
    pub text_template: Option<String>,
    /// Field holding the whole text (plain language modelling).
    pub text_field: Option<String>,
    /// Render rows through the model's chat template (a messages column, or the text template
    /// split into a user turn and an assistant turn).
    pub use_chat_template: bool,
    /// Column holding a conversation, with `use_chat_template` and no text template.
    pub messages_field: String,
    /// System message for chat-formatted rows.
    pub system_prompt: Option<String>,
    /// Longest sequence in tokens.
    pub max_seq_len: usize,
    /// Use at most this many training rows (after the split).
    pub max_samples: Option<usize>,
    /// Use at most this many evaluation rows.
    pub max_eval_samples: Option<usize>,
    /// Loss only on the completion (after the template's last placeholder) or assistant turns.
    pub completion_only: bool,
    /// Skip rows that do not fit the template (counted and reported) instead of failing.
    pub skip_bad_rows: bool,
    /// Rows longer than `max_seq_len`: `truncate` (and count) or `error`.
    pub long_rows: String,
    /// Append the tokenizer's eos token to each text-template example (chat templates end
    /// turns themselves).
    pub add_eos_token: bool,

    // -- method --
    /// `lora` (the only method so far).
    pub method: String,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Module names (`q_proj`, ...) or `all-linear`.
    #[serde(deserialize_with = "string_or_list")]
    pub target_modules: Vec<String>,
    /// Modules trained in full and saved the PEFT way.
    #[serde(deserialize_with = "string_or_list")]
    pub modules_to_save: Vec<String>,
    pub use_rslora: bool,
    /// `true`, `false`, `gaussian`, ... as PEFT's `init_lora_weights`.
    #[serde(deserialize_with = "string_or_bool")]
    pub init_lora_weights: String,
    pub seed: u64,

    // -- optimisation --
    pub learning_rate: f64,
    pub lr_scheduler_type: String,
    /// Steps (>= 1) or, below 1, a ratio of the total (transformers 5).
    pub warmup_steps: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping (0: off).
    pub max_grad_norm: f64,
    /// Optimizer steps (> 0 overrides `num_train_epochs`).
    pub max_steps: i64,
    pub num_train_epochs: f64,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub gradient_checkpointing: bool,

    // -- evaluation, logging, saving --
    /// Evaluate every N steps (none: at the end only).
    pub eval_steps: Option<u64>,
    pub logging_steps: u64,
    pub save_steps: u64,
    pub save_total_limit: Option<usize>,
    pub load_best_model_at_end: bool,
    pub metric_for_best_model: String,
    pub early_stopping_patience: u32,
    pub early_stopping_threshold: f64,
    /// A checkpoint folder, or `latest` (the newest complete one in the output folder).
    pub resume_from_checkpoint: Option<String>,
    pub output_path: String,
    /// Start over when the output folder holds checkpoints of an earlier run.
    pub overwrite_output_dir: bool,
    /// `tensorboard` and/or `none`.
    #[serde(deserialize_with = "string_or_list")]
    pub report_to: Vec<String>,
    /// TensorBoard folder (default: `{output_path}/logs`).
    pub logging_dir: Option<String>,

    // -- precision and engine --
    pub bf16: bool,
    pub fp16: bool,
    /// `cpu` (GPU engine: later).
    pub device: String,
    /// Convert the frozen base weights to f32 once instead of dequantizing tiles per matmul.
    pub dequantize_at_load: bool,
    /// `debug`, `info`, `warning`, `error` (or `quiet`): how much goes to the terminal.
    pub log_level: String,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            model_name_or_path: String::new(),
            data_name: String::new(),
            data_format: None,
            train_split: "train".into(),
            eval_split: None,
            text_template: None,
            text_field: None,
            use_chat_template: false,
            messages_field: "messages".into(),
            system_prompt: None,
            max_seq_len: 1024,
            max_samples: None,
            max_eval_samples: None,
            completion_only: false,
            skip_bad_rows: false,
            long_rows: "truncate".into(),
            add_eos_token: true,
            method: "lora".into(),
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: vec!["all-linear".into()],
            modules_to_save: Vec::new(),
            use_rslora: false,
            init_lora_weights: "true".into(),
            seed: 42,
            learning_rate: 2e-4,
            lr_scheduler_type: "linear".into(),
            warmup_steps: 0.0,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            max_steps: -1,
            num_train_epochs: 3.0,
            per_device_train_batch_size: 4,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            gradient_checkpointing: false,
            eval_steps: None,
            logging_steps: 10,
            save_steps: 500,
            save_total_limit: None,
            load_best_model_at_end: false,
            metric_for_best_model: "eval_loss".into(),
            early_stopping_patience: 0,
            early_stopping_threshold: 0.0,
            resume_from_checkpoint: None,
            output_path: "hone-output".into(),
            overwrite_output_dir: false,
            report_to: vec!["tensorboard".into()],
            logging_dir: None,
            bf16: false,
            fp16: false,
            device: "cpu".into(),
            dequantize_at_load: false,
            log_level: "info".into(),
        }
    }
}

/// A list given as a list, a single string, or a comma-separated string.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        One(String),
        Many(Vec<String>),
    }
    let items = match Repr::deserialize(d)? {
        Repr::One(s) => vec![s],
        Repr::Many(v) => v,
    };
    Ok(items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A value given as a string or a bool (`init_lora_weights: false`).
fn string_or_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Bool(bool),
        Name(String),
    }
    Ok(match Repr::deserialize(d)? {
        Repr::Bool(b) => b.to_string(),
        Repr::Name(s) => s,
    })
}

/// The names of every option, in declaration order.
pub fn option_names() -> Vec<String> {
    match serde_json::to_value(FinetuneConfig::default()) {
        Ok(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

impl FinetuneConfig {
    /// Build from layers of options, later layers winning: e.g. the config file's keys, then the
    /// flags given on the command line. `origin` names each layer in errors (`"config.yaml"`,
    /// `"command line"`). Unknown keys and wrongly typed values are errors naming the key.
    pub fn from_layers(layers: &[(&str, Map<String, Value>)]) -> Result<Self> {
        let known = option_names();
        let mut merged = Map::new();
        for (origin, layer) in layers {
            for (k, v) in layer {
                if !known.iter().any(|n| n == k) {
                    let hint = closest(k, &known)
                        .map(|c| format!("; did you mean '{c}'?"))
                        .unwrap_or_default();
                    return Err(Error::Invalid(format!(
                        "{origin}: unknown option '{k}'{hint}"
                    )));
                }
                if v.is_null() {
                    continue;
                }
                // Check each key alone so a type error names the key and where it came from.
                let mut one = Map::new();
                one.insert(k.clone(), v.clone());
                if let Err(e) = serde_json::from_value::<FinetuneConfig>(Value::Object(one)) {
                    let msg = e.to_string();
                    return Err(Error::Invalid(format!(
                        "{origin}: option '{k}' = {v}: {}",
                        msg.split(" at line").next().unwrap_or(&msg)
                    )));
                }
                merged.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(Value::Object(merged))
            .map_err(|e| Error::Invalid(format!("configuration: {e}")))
    }

    /// The configuration as JSON (for printing, saving and checkpoints).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// How long rows are handled.
    pub fn overflow(&self) -> Result<Overflow> {
        match self.long_rows.as_str() {
            "truncate" => Ok(Overflow::Truncate),
            "error" => Ok(Overflow::Error),
            other => Err(bad(
                "long_rows",
                other,
                "must be 'truncate' or 'error'".into(),
            )),
        }
    }

    /// The learning-rate schedule's kind.
    pub fn schedule_kind(&self) -> Result<ScheduleKind> {
        self.lr_scheduler_type.parse()
    }

    /// Check every value that can be checked without the model or the data. The error names the
    /// option and says what is allowed.
    pub fn validate(&self) -> Result<()> {
        if self.model_name_or_path.is_empty() {
            return Err(Error::Invalid(
                "no model: give --model_name_or_path (-m) or model_name_or_path in the config file"
                    .into(),
            ));
        }
        if self.data_name.is_empty() {
            return Err(Error::Invalid(
                "no dataset: give --data_name (-d) or data_name in the config file".into(),
            ));
        }
        if self.method != "lora" {
            return Err(bad(
                "method",
                &self.method,
                "only 'lora' is supported so far (qlora, dora and full fine-tuning are planned)"
                    .into(),
            ));
        }
        if self.text_template.is_some() && self.text_field.is_some() {
            return Err(Error::Invalid(
                "give either --text_template or --text_field, not both".into(),
            ));
        }
        if !self.use_chat_template && self.text_template.is_none() && self.text_field.is_none() {
            return Err(Error::Invalid(
                "how should rows become text? give --text_template \"{field} ...\", --text_field NAME, or --use_chat_template (with a messages column)".into(),
            ));
        }
        if self.lora_r == 0 {
            return Err(bad(
                "lora_r",
                "0",
                "the LoRA rank must be at least 1".into(),
            ));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(bad(
                "lora_alpha",
                &self.lora_alpha.to_string(),
                "must be > 0".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad(
                "lora_dropout",
                &self.lora_dropout.to_string(),
                "must be in [0, 1)".into(),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(bad(
                "learning_rate",
                &self.learning_rate.to_string(),
                "must be > 0".into(),
            ));
        }
        self.schedule_kind()?;
        self.overflow()?;
        if !(self.warmup_steps.is_finite() && self.warmup_steps >= 0.0) {
            return Err(bad(
                "warmup_steps",
                &self.warmup_steps.to_string(),
                "must be >= 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(bad(
                "warmup_ratio",
                &self.warmup_ratio.to_string(),
                "must be in [0, 1]".into(),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight_decay",
                &self.weight_decay.to_string(),
                "must be >= 0".into(),
            ));
        }
        for (name, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(name, &v.to_string(), "must be in [0, 1)".into()));
            }
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            return Err(bad(
                "adam_epsilon",
                &self.adam_epsilon.to_string(),
                "must be > 0".into(),
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(bad(
                "max_grad_norm",
                &self.max_grad_norm.to_string(),
                "must be >= 0 (0 turns clipping off)".into(),
            ));
        }
        if self.max_steps == 0 || self.max_steps < -1 {
            return Err(bad(
                "max_steps",
                &self.max_steps.to_string(),
                "must be > 0, or -1 to train for num_train_epochs".into(),
            ));
        }
        if self.max_steps < 0 && !(self.num_train_epochs.is_finite() && self.num_train_epochs > 0.0)
        {
            return Err(bad(
                "num_train_epochs",
                &self.num_train_epochs.to_string(),
                "must be > 0 (or give max_steps)".into(),
            ));
        }
        for (name, v) in [
            (
                "per_device_train_batch_size",
                self.per_device_train_batch_size,
            ),
            (
                "per_device_eval_batch_size",
                self.per_device_eval_batch_size,
            ),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return Err(bad(name, "0", "must be at least 1".into()));
            }
        }
        if self.max_seq_len < 2 {
            return Err(bad(
                "max_seq_len",
                &self.max_seq_len.to_string(),
                "must be at least 2 (a token and the one it predicts)".into(),
            ));
        }
        if self.max_samples == Some(0) || self.max_eval_samples == Some(0) {
            return Err(Error::Invalid(
                "max_samples / max_eval_samples must be at least 1".into(),
            ));
        }
        if self.eval_steps == Some(0) {
            return Err(bad(
                "eval_steps",
                "0",
                "must be at least 1 (leave it out to evaluate at the end only)".into(),
            ));
        }
        if self.save_steps == 0 {
            return Err(bad("save_steps", "0", "must be at least 1".into()));
        }
        if self.save_total_limit == Some(0) {
            return Err(bad(
                "save_total_limit",
                "0",
                "must be at least 1 (leave it out to keep every checkpoint)".into(),
            ));
        }
        if self.metric_for_best_model != "eval_loss" && self.metric_for_best_model != "loss" {
            return Err(bad(
                "metric_for_best_model",
                &self.metric_for_best_model,
                "only 'eval_loss' is supported during training (use `hone eval` for generation metrics)".into(),
            ));
        }
        if (self.load_best_model_at_end || self.early_stopping_patience > 0)
            && self.eval_split.is_none()
        {
            return Err(Error::Invalid(
                "load_best_model_at_end and early_stopping_patience need an --eval_split".into(),
            ));
        }
        if self.load_best_model_at_end {
            if let Some(e) = self.eval_steps {
                if !self.save_steps.is_multiple_of(e) {
                    return Err(Error::Invalid(format!(
                        "load_best_model_at_end needs save_steps ({}) to be a multiple of eval_steps ({e}), so the best evaluated step has a checkpoint",
                        self.save_steps
                    )));
                }
            }
        }
        if !(self.early_stopping_threshold.is_finite() && self.early_stopping_threshold >= 0.0) {
            return Err(bad(
                "early_stopping_threshold",
                &self.early_stopping_threshold.to_string(),
                "must be >= 0".into(),
            ));
        }
        for r in &self.report_to {
            if r != "tensorboard" && r != "none" && r != "all" {
                return Err(bad(
                    "report_to",
                    r,
                    "supported: tensorboard, none (metrics.jsonl is always written)".into(),
                ));
            }
        }
        match self.log_level.as_str() {
            "debug" | "info" | "warning" | "error" | "critical" | "passive" | "quiet" => {}
            other => {
                return Err(bad(
                    "log_level",
                    other,
                    "one of debug, info, warning, error, quiet".into(),
                ))
            }
        }
        if self.output_path.is_empty() {
            return Err(bad("output_path", "", "must name a folder".into()));
        }
        Ok(())
    }

    /// Whether TensorBoard event files are written.
    pub fn tensorboard(&self) -> bool {
        self.report_to
            .iter()
            .any(|r| r == "tensorboard" || r == "all")
            && !self.report_to.iter().any(|r| r == "none")
    }
}

fn bad(option: &str, value: &str, why: String) -> Error {
    Error::Invalid(format!("invalid {option} '{value}': {why}"))
}

/// The known name closest to `name` (edit distance at most a third of its length).
fn closest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let d = |a: &str, b: &str| -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, &cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    };
    known
        .iter()
        .map(|k| (d(name, k), k))
        .filter(|(dist, _)| *dist <= name.len().div_ceil(3))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layer(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn later_layers_win_and_defaults_fill_the_rest() {
        let file = layer(
            json!({"model_name_or_path": "m.gguf", "data_name": "d.jsonl",
            "lora_r": 16, "text_template": "{a}", "target_modules": "q_proj, v_proj"}),
        );
        let flags = layer(json!({"lora_r": 4, "report_to": "none"}));
        let c = FinetuneConfig::from_layers(&[("c.yaml", file), ("command line", flags)]).unwrap();
        assert_eq!(c.lora_r, 4);
        assert_eq!(c.target_modules, vec!["q_proj", "v_proj"]);
        assert_eq!(c.report_to, vec!["none"]);
        assert!(!c.tensorboard());
        assert_eq!(c.learning_rate, 2e-4);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_and_mistyped_keys_name_the_key_and_origin() {
        let e = FinetuneConfig::from_layers(&[("c.yaml", layer(json!({"lora_rank": 8})))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.yaml") && e.contains("'lora_rank'"), "{e}");
        assert!(e.contains("did you mean 'lora_r'"), "{e}");
        let e = FinetuneConfig::from_layers(&[("c.json", layer(json!({"lora_r": "eight"})))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("'lora_r'"), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        let base = FinetuneConfig {
            model_name_or_path: "m".into(),
            data_name: "d".into(),
            text_template: Some("{a}".into()),
            ..Default::default()
        };
        base.validate().unwrap();
        let cases: Vec<(FinetuneConfig, &str)> = vec![
            (
                FinetuneConfig {
                    lora_r: 0,
                    ..base.clone()
                },
                "lora_r",
            ),
            (
                FinetuneConfig {
                    learning_rate: 0.0,
                    ..base.clone()
                },
                "learning_rate",
            ),
            (
                FinetuneConfig {
                    learning_rate: -1e-4,
                    ..base.clone()
                },
                "learning_rate",
            ),
            (
                FinetuneConfig {
                    lr_scheduler_type: "cosine_restarts".into(),
                    ..base.clone()
                },
                "lr_scheduler_type",
            ),
            (
                FinetuneConfig {
                    method: "dora".into(),
                    ..base.clone()
                },
                "method",
            ),
            (
                FinetuneConfig {
                    long_rows: "drop".into(),
                    ..base.clone()
                },
                "long_rows",
            ),
            (
                FinetuneConfig {
                    load_best_model_at_end: true,
                    ..base.clone()
                },
                "eval_split",
            ),
            (
                FinetuneConfig {
                    max_steps: 0,
                    ..base.clone()
                },
                "max_steps",
            ),
        ];
        for (c, name) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }
}
