//! The engine-independent half of fine-tuning, shared by the command line and the browser:
//! the configuration ([`FinetuneConfig`]), turning a dataset into training items with the
//! model's tokenizer and chat template, the LoRA setup, the step count, and the conversions
//! between engine tensors, PEFT adapters and checkpoints.

mod config;

pub use config::{option_names, FinetuneConfig};

use std::path::Path;

use serde_json::Value;

use crate::adapter::{
    lora_a_key, lora_b_key, saved_module_key, AdapterTensor, LoraAdapter, LoraConfig, LoraInit,
    PEFT_PREFIX,
};
use crate::chat::{ChatMessage, ChatTemplate};
use crate::checkpoint::{AdamWState, Checkpoint, ModelFingerprint};
use crate::data::{
    build_examples, tokenize_examples, Batch, Dataset, Example, ExampleFormat, Examples, Loader,
    LoaderOptions, Message, Padding, Split, Template, TokenizeOptions, Tokenized, TrainItem,
};
use crate::engine::{AdamW, LoraSetup, NamedTensor, OptimizerState, TrainTarget};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::schedule::{warmup_steps_from_arg, warmup_steps_from_ratio, LrSchedule};
use crate::spec::ModelSpec;
use crate::trainer::{TrainerOptions, TrainerState};

/// How dataset rows become examples and tokens: the data half of [`FinetuneConfig`], also
/// used by `hone eval`.
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    pub text_template: Option<String>,
    pub text_field: Option<String>,
    pub use_chat_template: bool,
    pub messages_field: String,
    pub system_prompt: Option<String>,
    pub max_seq_len: usize,
    pub completion_only: bool,
    pub skip_bad_rows: bool,
    pub overflow: crate::data::Overflow,
    pub add_eos_token: bool,
}

impl FinetuneConfig {
    /// The data options of this configuration.
    pub fn data_options(&self) -> Result<DataOptions> {
        Ok(DataOptions {
            text_template: self.text_template.clone(),
            text_field: self.text_field.clone(),
            use_chat_template: self.use_chat_template,
            messages_field: self.messages_field.clone(),
            system_prompt: self.system_prompt.clone(),
            max_seq_len: self.max_seq_len,
            completion_only: self.completion_only,
            skip_bad_rows: self.skip_bad_rows,
            overflow: self.overflow()?,
            add_eos_token: self.add_eos_token,
        })
    }

    /// The LoRA configuration (PEFT's `LoraConfig`).
    pub fn lora_config(&self) -> Result<LoraConfig> {
        let init = LoraInit::parse(&self.init_lora_weights).map_err(Error::Invalid)?;
        let c = LoraConfig {
            r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: self.use_rslora,
            init_lora_weights: init,
            modules_to_save: self.modules_to_save.clone(),
            bias: "none".into(),
        };
        c.validate()?;
        Ok(c)
    }

    /// AdamW's settings.
    pub fn adamw(&self) -> AdamW {
        AdamW {
            beta1: self.adam_beta1 as f32,
            beta2: self.adam_beta2 as f32,
            eps: self.adam_epsilon as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    /// Optimizer steps of the whole run, as HF computes them: `max_steps` when given, else
    /// `ceil(num_train_epochs * max(1, batches_per_epoch / gradient_accumulation_steps))`.
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        if self.max_steps > 0 {
            return self.max_steps as u64;
        }
        let per_epoch = (batches_per_epoch / self.gradient_accumulation_steps).max(1);
        (self.num_train_epochs * per_epoch as f64).ceil().max(1.0) as u64
    }

    /// The learning-rate schedule over `total_steps` (warmup_steps wins over warmup_ratio, as
    /// in HF).
    pub fn schedule(&self, total_steps: u64) -> Result<LrSchedule> {
        let warmup = if self.warmup_steps > 0.0 {
            warmup_steps_from_arg(self.warmup_steps, total_steps)?
        } else {
            warmup_steps_from_ratio(self.warmup_ratio, total_steps)?
        };
        LrSchedule::new(
            self.schedule_kind()?,
            self.learning_rate,
            warmup,
            total_steps,
        )
    }

    /// The trainer loop's options.
    pub fn trainer_options(&self, total_steps: u64) -> TrainerOptions {
        TrainerOptions {
            max_steps: total_steps,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm as f32),
            logging_steps: self.logging_steps,
            eval_steps: self.eval_steps.unwrap_or(0),
            save_steps: self.save_steps,
            early_stopping_patience: self.early_stopping_patience,
            early_stopping_threshold: self.early_stopping_threshold,
            seed: self.seed,
        }
    }
}

impl DataOptions {
    /// The example format these options describe, for a model with or without a chat template.
    pub fn example_format(&self, model: &Model) -> Result<ExampleFormat> {
        if self.use_chat_template && model.chat_template.is_none() {
            return Err(Error::Invalid(format!(
                "{}: --use_chat_template, but the model has no chat template",
                model.source.display()
            )));
        }
        let template = self
            .text_template
            .as_deref()
            .map(Template::parse)
            .transpose()?;
        Ok(match (template, &self.text_field, self.use_chat_template) {
            (Some(t), _, true) => ExampleFormat::chat_from_template(&t, self.system_prompt.clone()),
            (Some(t), _, false) => ExampleFormat::Template(t),
            (None, Some(f), false) => ExampleFormat::TextField(f.clone()),
            (None, _, true) => ExampleFormat::ChatMessages {
                field: self.messages_field.clone(),
                system: self.system_prompt.clone(),
            },
            (None, None, false) => {
                return Err(Error::Invalid(
                    "give --text_template, --text_field or --use_chat_template".into(),
                ))
            }
        })
    }

    /// Rows of `dataset` as examples (rendered through the chat template when asked).
    pub fn examples(&self, dataset: &Dataset, model: &Model) -> Result<Examples> {
        let format = self.example_format(model)?;
        let template = model
            .chat_template
            .as_deref()
            .map(ChatTemplate::new)
            .transpose()?;
        let bos = model.tokenizer.bos_token.clone().unwrap_or_default();
        let eos = model.tokenizer.eos_token.clone().unwrap_or_default();
        let render = |messages: &[Message], add_generation_prompt: bool| -> Result<String> {
            let Some(t) = &template else {
                return Err(Error::Invalid("the model has no chat template".into()));
            };
            let msgs: Vec<ChatMessage> = messages
                .iter()
                .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
                .collect();
            t.render(&msgs, add_generation_prompt, &bos, &eos)
        };
        let chat: Option<crate::data::ChatRenderer> = if template.is_some() {
            Some(&render)
        } else {
            None
        };
        build_examples(dataset, &format, self.skip_bad_rows, chat)
    }

    /// Tokenize examples for training or loss evaluation.
    pub fn tokenize(
        &self,
        examples: &[Example],
        source: &Path,
        model: &Model,
    ) -> Result<Tokenized> {
        let tok = &model.tokenizer;
        let chat = self.use_chat_template;
        let opts = TokenizeOptions {
            completion_only: self.completion_only,
            // A chat template writes its own bos; otherwise follow the tokenizer's post-processor.
            bos_id: if !chat && tok.add_bos {
                tok.bos_id
            } else {
                None
            },
            eos_id: if !chat && self.add_eos_token {
                tok.eos_token
                    .as_deref()
                    .and_then(|t| tok.token_to_id(t))
                    .or_else(|| model.eos_ids().first().copied())
            } else {
                None
            },
            max_seq_len: Some(self.max_seq_len),
            overflow: self.overflow,
        };
        let encode = |text: &str| tok.encode(text, false);
        tokenize_examples(examples, source, &encode, &opts)
    }
}

/// Training or evaluation items of one split, and what happened on the way.
#[derive(Debug, Clone)]
pub struct SplitData {
    /// The split as given (`train[:160]`).
    pub split: String,
    /// Rows selected.
    pub rows: usize,
    /// The examples (prompt and reference completion per row).
    pub examples: Vec<Example>,
    /// Tokenized items.
    pub tokenized: Tokenized,
    /// One line about skipped rows, if any.
    pub skipped: Option<String>,
}

impl SplitData {
    /// Select `split` of `dataset`, build examples and tokenize them.
    pub fn build(
        dataset: &Dataset,
        split: &str,
        max_samples: Option<usize>,
        opts: &DataOptions,
        model: &Model,
    ) -> Result<SplitData> {
        let s = Split::parse(split)?;
        let rows = dataset.select(Some(&s), max_samples)?;
        if rows.rows.is_empty() {
            return Err(Error::format(
                &dataset.source,
                format!(
                    "split '{split}' selects no rows (the file has {})",
                    dataset.rows.len()
                ),
            ));
        }
        let examples = opts.examples(&rows, model)?;
        let tokenized = opts.tokenize(&examples.examples, &dataset.source, model)?;
        if tokenized.items.is_empty() {
            return Err(Error::format(
                &dataset.source,
                format!(
                    "split '{split}': no example has a token to train on ({} dropped: the prompt fills max_seq_len {} or the completion is empty)",
                    tokenized.dropped.len(),
                    opts.max_seq_len
                ),
            ));
        }
        Ok(SplitData {
            split: split.to_string(),
            rows: rows.rows.len(),
            skipped: examples.skipped_summary(),
            examples: examples.examples,
            tokenized,
        })
    }

    /// A one-line summary: rows, items, label tokens, truncated, dropped, skipped.
    pub fn summary(&self) -> String {
        let items = &self.tokenized.items;
        let tokens: usize = items.iter().map(|i| i.ids.len()).sum();
        let labels: usize = items.iter().map(TrainItem::loss_tokens).sum();
        let longest = items.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let mut s = format!(
            "{}: {} rows -> {} examples, {tokens} tokens ({labels} trained), longest {longest}",
            self.split,
            self.rows,
            items.len()
        );
        if self.tokenized.truncated > 0 {
            s.push_str(&format!(
                ", {} truncated to max_seq_len",
                self.tokenized.truncated
            ));
        }
        if !self.tokenized.dropped.is_empty() {
            s.push_str(&format!(
                ", {} dropped (nothing to train on; first at line {})",
                self.tokenized.dropped.len(),
                self.tokenized.dropped[0]
            ));
        }
        if let Some(k) = &self.skipped {
            s.push_str(&format!(", {k}"));
        }
        s
    }

    /// Fixed evaluation batches of `batch_size` items in order.
    pub fn eval_batches(&self, batch_size: usize, pad_id: u32) -> Vec<Batch> {
        self.tokenized
            .items
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let refs: Vec<&TrainItem> = chunk.iter().collect();
                let seq = chunk.iter().map(|i| i.ids.len()).max().unwrap_or(1);
                Batch::from_items(&refs, pad_id, seq)
            })
            .collect()
    }
}

/// The id written into padding: the tokenizer's pad token, else eos, else 0 (labels of padding
/// are ignored, so only attention sees it, and attention is causal: it never does).
/// What a run's trainer consumes: the training loader (shuffled with the run's seed, each batch
/// padded to its longest example), the eval batches, and the longest example of either split
/// (what an engine plans its buffers for).
pub struct RunBatches {
    pub loader: Loader,
    pub eval_batches: Vec<Batch>,
    pub max_seq: usize,
}

impl FinetuneConfig {
    /// The loader, eval batches and longest example of a run over these splits.
    pub fn run_batches(
        &self,
        train: &SplitData,
        eval: Option<&SplitData>,
        pad_id: u32,
    ) -> Result<RunBatches> {
        let loader = Loader::new(
            train.tokenized.items.clone(),
            LoaderOptions {
                batch_size: self.per_device_train_batch_size,
                shuffle: true,
                seed: self.seed,
                drop_last: false,
                pad_id,
                padding: Padding::Longest,
            },
        )?;
        let eval_batches = eval
            .map(|e| e.eval_batches(self.per_device_eval_batch_size, pad_id))
            .unwrap_or_default();
        let max_seq = train
            .tokenized
            .items
            .iter()
            .chain(eval.iter().flat_map(|e| e.tokenized.items.iter()))
            .map(|t| t.ids.len())
            .max()
            .unwrap_or(1);
        Ok(RunBatches {
            loader,
            eval_batches,
            max_seq,
        })
    }
}

pub fn pad_id(model: &Model) -> u32 {
    model
        .tokenizer
        .pad_id
        .or_else(|| model.eos_ids().first().copied())
        .unwrap_or(0)
}

/// The engine's LoRA setup for `lora` on `spec`.
pub fn lora_setup(lora: &LoraConfig, spec: &ModelSpec) -> Result<LoraSetup> {
    Ok(LoraSetup {
        rank: lora.r,
        scale: lora.scale() as f32,
        dropout: lora.lora_dropout as f32,
        targets: lora
            .resolve_targets(spec)?
            .into_iter()
            .map(|t| TrainTarget {
                module: t.module_path,
                in_features: t.in_features,
                out_features: t.out_features,
            })
            .collect(),
        modules_to_save: lora.resolve_modules_to_save(spec)?,
    })
}

/// Engine tensor name of a LoRA matrix: `{module}.lora_A` / `{module}.lora_B`.
fn engine_name(module: &str, which: char) -> String {
    format!("{module}.lora_{which}")
}

/// Whether an engine tensor name is a weight trained in full (`modules_to_save`).
fn is_saved_weight(name: &str) -> bool {
    SAVABLE_WEIGHTS.contains(&name)
}

/// HF weight names of the modules `modules_to_save` may name (`SAVABLE_MODULES`).
const SAVABLE_WEIGHTS: [&str; 2] = ["lm_head.weight", "model.embed_tokens.weight"];

/// The adapter's LoRA matrices, then its `modules_to_save` weights (in key order), as engine
/// tensors.
pub fn adapter_to_params(adapter: &LoraAdapter) -> Result<Vec<NamedTensor>> {
    let mut out = Vec::new();
    for t in adapter.targets() {
        for (which, key) in [
            ('A', lora_a_key(&t.module_path)),
            ('B', lora_b_key(&t.module_path)),
        ] {
            let tensor = adapter
                .tensors
                .get(&key)
                .ok_or_else(|| Error::Invalid(format!("adapter: tensor '{key}' is missing")))?;
            out.push(NamedTensor {
                name: engine_name(&t.module_path, which),
                shape: tensor.shape.clone(),
                data: tensor.values.clone(),
            });
        }
    }
    for (key, tensor) in &adapter.tensors {
        if let Some(name) = key.strip_prefix(PEFT_PREFIX).filter(|n| is_saved_weight(n)) {
            out.push(NamedTensor {
                name: name.to_string(),
                shape: tensor.shape.clone(),
                data: tensor.values.clone(),
            });
        }
    }
    Ok(out)
}

/// PEFT key of an engine tensor name.
fn peft_key(name: &str) -> Result<String> {
    if let Some(m) = name.strip_suffix(".lora_A") {
        Ok(lora_a_key(m))
    } else if let Some(m) = name.strip_suffix(".lora_B") {
        Ok(lora_b_key(m))
    } else if is_saved_weight(name) {
        Ok(saved_module_key(name))
    } else {
        Err(Error::Invalid(format!(
            "engine tensor '{name}' is neither a LoRA matrix nor a modules_to_save weight"
        )))
    }
}

/// An adapter of `config` holding the engine's current parameters.
pub fn params_to_adapter(
    config: &LoraConfig,
    params: Vec<NamedTensor>,
    base_model_name_or_path: Option<String>,
) -> Result<LoraAdapter> {
    let mut tensors = std::collections::BTreeMap::new();
    for p in params {
        tensors.insert(peft_key(&p.name)?, AdapterTensor::new(p.shape, p.data)?);
    }
    Ok(LoraAdapter {
        config: config.clone(),
        tensors,
        base_model_name_or_path,
        source: None,
    })
}

/// The engine's AdamW state as a checkpoint holds it (keyed by PEFT names).
pub fn optimizer_to_checkpoint(state: OptimizerState) -> Result<AdamWState> {
    let map = |v: Vec<NamedTensor>| -> Result<std::collections::BTreeMap<String, Vec<f32>>> {
        v.into_iter()
            .map(|t| Ok((peft_key(&t.name)?, t.data)))
            .collect()
    };
    Ok(AdamWState {
        step: state.step,
        exp_avg: map(state.exp_avg)?,
        exp_avg_sq: map(state.exp_avg_sq)?,
    })
}

/// A checkpoint's AdamW state for the engine (shapes taken from the adapter).
pub fn optimizer_from_checkpoint(ckpt: &Checkpoint) -> Result<OptimizerState> {
    let shapes: Vec<(String, Vec<usize>)> = adapter_to_params(&ckpt.adapter)?
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect();
    let mut exp_avg = Vec::new();
    let mut exp_avg_sq = Vec::new();
    if ckpt.optimizer.exp_avg.is_empty() {
        return Ok(OptimizerState {
            step: ckpt.optimizer.step,
            exp_avg,
            exp_avg_sq,
        });
    }
    for (name, shape) in shapes {
        let key = peft_key(&name)?;
        let get = |m: &std::collections::BTreeMap<String, Vec<f32>>| {
            m.get(&key).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "checkpoint: optimizer state for '{key}' is missing"
                ))
            })
        };
        exp_avg.push(NamedTensor {
            name: name.clone(),
            shape: shape.clone(),
            data: get(&ckpt.optimizer.exp_avg)?,
        });
        exp_avg_sq.push(NamedTensor {
            name,
            shape,
            data: get(&ckpt.optimizer.exp_avg_sq)?,
        });
    }
    Ok(OptimizerState {
        step: ckpt.optimizer.step,
        exp_avg,
        exp_avg_sq,
    })
}

/// Everything a checkpoint needs besides the engine's tensors.
pub struct CheckpointMeta<'a> {
    pub lora: &'a LoraConfig,
    pub base_model_name_or_path: Option<String>,
    pub fingerprint: &'a ModelFingerprint,
    pub training_config: &'a Value,
    pub epoch: f64,
    /// Folder of the best checkpoint so far, if the best step has been saved.
    pub best_model_checkpoint: Option<String>,
}

/// A checkpoint of the trainer's `state` with the engine's `params` and `optimizer`.
pub fn make_checkpoint(
    state: &TrainerState,
    params: Vec<NamedTensor>,
    optimizer: OptimizerState,
    meta: CheckpointMeta<'_>,
) -> Result<Checkpoint> {
    let adapter = params_to_adapter(meta.lora, params, meta.base_model_name_or_path)?;
    let mut rng_states = std::collections::BTreeMap::new();
    if let Some(seed) = meta.training_config.get("seed").and_then(Value::as_u64) {
        rng_states.insert("seed".to_string(), seed);
    }
    Ok(Checkpoint {
        step: state.step,
        epoch: meta.epoch,
        adapter,
        optimizer: optimizer_to_checkpoint(optimizer)?,
        scheduler_step: state.step,
        rng_states,
        data_position: state.data,
        model_fingerprint: meta.fingerprint.clone(),
        training_config: meta.training_config.clone(),
        loss_history: state.loss_history.clone(),
        best_metric: state.best.map(|b| b.1),
        best_model_checkpoint: meta.best_model_checkpoint,
        best_global_step: state.best.map(|b| b.0),
        eval_history: state.eval_history.clone(),
        evals_without_improvement: state.evals_without_improvement,
        tokens_seen: state.tokens_seen,
    })
}

/// The trainer state a checkpoint resumes.
pub fn trainer_state_of(ckpt: &Checkpoint) -> TrainerState {
    TrainerState {
        step: ckpt.step,
        data: ckpt.data_position,
        loss_history: ckpt.loss_history.clone(),
        eval_history: ckpt.eval_history.clone(),
        best: match (ckpt.best_global_step, ckpt.best_metric) {
            (Some(s), Some(m)) => Some((s, m)),
            _ => None,
        },
        evals_without_improvement: ckpt.evals_without_improvement,
        tokens_seen: ckpt.tokens_seen,
    }
}

/// Options that change the numbers of a run: resuming with any of them changed cannot reproduce
/// the uninterrupted run. Returns `(option, checkpoint value, current value)` of each difference.
pub fn resume_differences(
    checkpoint_config: &Value,
    current: &Value,
) -> Vec<(String, Value, Value)> {
    const NUMERIC: [&str; 22] = [
        "data_name",
        "train_split",
        "text_template",
        "text_field",
        "use_chat_template",
        "max_seq_len",
        "max_samples",
        "completion_only",
        "lora_dropout",
        "seed",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "warmup_ratio",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
    ];
    NUMERIC
        .iter()
        .filter_map(|k| {
            let a = checkpoint_config.get(*k).cloned().unwrap_or(Value::Null);
            let b = current.get(*k).cloned().unwrap_or(Value::Null);
            (a != b).then(|| (k.to_string(), a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{tiny_spec, tiny_weights};

    #[test]
    fn params_adapter_and_optimizer_round_trip() {
        for (tied, saved) in [
            (false, vec![]),
            (true, vec!["lm_head".to_string()]),
            (
                false,
                vec!["embed_tokens".to_string(), "lm_head".to_string()],
            ),
        ] {
            round_trip(tied, saved);
        }
    }

    fn round_trip(tied: bool, modules_to_save: Vec<String>) {
        let spec = tiny_spec(crate::Architecture::Llama, tied, 64);
        let weights = tiny_weights(&spec, crate::DType::F32, 1).unwrap();
        let cfg = FinetuneConfig {
            lora_r: 2,
            init_lora_weights: "gaussian".into(),
            modules_to_save: modules_to_save.clone(),
            ..Default::default()
        };
        let lora = cfg.lora_config().unwrap();
        let adapter = LoraAdapter::init(&lora, &spec, 3, Some(&weights)).unwrap();
        let params = adapter_to_params(&adapter).unwrap();
        assert_eq!(params.len(), adapter.tensors.len());
        assert!(params[0].name.ends_with(".lora_A"));
        let setup = lora_setup(&lora, &spec).unwrap();
        assert_eq!(
            2 * setup.targets.len() + setup.modules_to_save.len(),
            params.len()
        );
        assert_eq!(setup.modules_to_save.len(), modules_to_save.len());
        for m in &setup.modules_to_save {
            let p = params.iter().find(|p| p.name == m.weight_name).unwrap();
            assert_eq!(p.shape, m.shape);
            assert_eq!(
                peft_key(&p.name).unwrap(),
                format!("base_model.model.{}", m.weight_name)
            );
            // A fresh copy of the base weight (the embedding when lm_head is tied).
            let src = if tied {
                "model.embed_tokens.weight"
            } else {
                m.weight_name.as_str()
            };
            assert_eq!(p.data, weights.get(src).unwrap().to_f32());
        }
        assert!(peft_key("model.norm.weight").is_err());
        let back = params_to_adapter(&lora, params.clone(), None).unwrap();
        assert_eq!(back.tensors, adapter.tensors);

        let opt = OptimizerState {
            step: 3,
            exp_avg: params.clone(),
            exp_avg_sq: params.clone(),
        };
        let state = TrainerState {
            step: 3,
            best: Some((2, 1.5)),
            tokens_seen: 99,
            ..Default::default()
        };
        let fp = ModelFingerprint::of_model(&spec, &weights);
        let config = cfg.to_json();
        let ckpt = make_checkpoint(
            &state,
            params,
            opt.clone(),
            CheckpointMeta {
                lora: &lora,
                base_model_name_or_path: None,
                fingerprint: &fp,
                training_config: &config,
                epoch: 0.5,
                best_model_checkpoint: None,
            },
        )
        .unwrap();
        assert_eq!(optimizer_from_checkpoint(&ckpt).unwrap(), opt);
        assert_eq!(trainer_state_of(&ckpt), state);
        assert_eq!(ckpt.rng_states["seed"], 42);
    }

    #[test]
    fn total_steps_follow_hf() {
        let c = FinetuneConfig {
            num_train_epochs: 3.0,
            gradient_accumulation_steps: 4,
            ..Default::default()
        };
        // 40 batches / 4 = 10 updates per epoch, 3 epochs.
        assert_eq!(c.total_steps(40), 30);
        // 3 batches / 4 rounds down to 0 -> at least 1 per epoch.
        assert_eq!(c.total_steps(3), 3);
        let c = FinetuneConfig {
            num_train_epochs: 1.5,
            ..Default::default()
        };
        assert_eq!(c.total_steps(5), 8);
        let c = FinetuneConfig {
            max_steps: 7,
            ..Default::default()
        };
        assert_eq!(c.total_steps(100), 7);
    }

    #[test]
    fn resume_differences_name_numeric_options_only() {
        let a = FinetuneConfig::default().to_json();
        let b = FinetuneConfig {
            learning_rate: 1e-3,
            logging_steps: 1,
            ..Default::default()
        }
        .to_json();
        let d = resume_differences(&a, &b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "learning_rate");
    }
}
