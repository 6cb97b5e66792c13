//! hone-wasm: hone in a browser tab. A small wasm-bindgen API over the same hone-core functions
//! the command line uses (model loading, datasets and templates, `FinetuneConfig`, the generic
//! `Trainer`), on the GPU engine through WebGPU or on the CPU engine. The JS shell in `pkg/`
//! runs it inside a Web Worker; every call returns hone's error messages as JS `Error`s.

mod checkpoint;
mod run;

use std::fmt::Display;
use std::path::Path;
use std::sync::Mutex;

use hone_core::adapter::LoraAdapter;
use hone_core::data::{parse_dataset, DataFormat, Dataset};
use hone_core::finetune::FinetuneConfig;
use hone_core::generate::{generate, GenerateOptions};
use hone_core::sampling::SamplingParams;
use hone_core::Model;
use hone_cpu::{CpuModel, CpuModelOptions, CpuSession};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use wasm_bindgen::prelude::*;

pub use checkpoint::BrowserCheckpoint;
pub use run::{checkpoint_info, start_run, RunPlan, WasmRun};

/// The message of the last panic, for the worker to report after a trap.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

/// Install the panic hook (called once when the module starts).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("hone crashed (a bug, please report it): {info}");
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(msg.clone());
        }
        #[cfg(target_arch = "wasm32")]
        console_error(&msg);
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("{msg}");
    }));
}

/// The message of the last panic, if one happened (the module is unusable after it).
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.lock().ok().and_then(|l| l.clone())
}

/// hone's error as a JS `Error` with the same message.
pub(crate) fn js_err(e: impl Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A JSON object given by JS, or an error naming `what`.
pub(crate) fn json_object(text: &str, what: &str) -> Result<Map<String, Value>, JsError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(js_err(format!("{what}: expected a JSON object"))),
        Err(e) => Err(js_err(format!("{what}: {e}"))),
    }
}

/// A loaded model (GGUF bytes).
#[wasm_bindgen]
pub struct WasmModel {
    pub(crate) model: Model,
}

#[wasm_bindgen]
impl WasmModel {
    /// Load a GGUF file held in memory; `name` names it in errors and in the adapter's config.
    #[wasm_bindgen(js_name = fromGguf)]
    pub fn from_gguf(bytes: Vec<u8>, name: &str) -> Result<WasmModel, JsError> {
        let model =
            hone_core::model::load_gguf_bytes(hone_core::Bytes::from_vec(bytes), Path::new(name))
                .map_err(js_err)?;
        Ok(WasmModel { model })
    }

    /// JSON: name, architecture, layers, hidden size, vocabulary, context, chat template.
    pub fn info(&self) -> String {
        let s = &self.model.spec;
        json!({
            "name": self.model.source.display().to_string(),
            "architecture": s.architecture.model_type(),
            "layers": s.num_hidden_layers,
            "hiddenSize": s.hidden_size,
            "vocabSize": s.vocab_size,
            "maxPositions": s.max_position_embeddings,
            "hasChatTemplate": self.model.chat_template.is_some(),
            "weightBytes": self.model.weights.tensors.values().map(|t| t.data.as_slice().len()).sum::<usize>(),
        })
        .to_string()
    }

    /// Generate after `prompt` on the CPU engine (options JSON: max_new_tokens, temperature,
    /// top_k, top_p, repetition_penalty, seed, stop); `on_text` gets each new piece of text.
    /// Returns the whole generated text.
    pub fn generate(
        &self,
        prompt: &str,
        options: &str,
        on_text: &js_sys::Function,
    ) -> Result<String, JsError> {
        self.generate_inner(None, prompt, options, on_text)
    }

    /// `generate` with a LoRA adapter applied.
    #[wasm_bindgen(js_name = generateWithAdapter)]
    pub fn generate_with_adapter(
        &self,
        adapter: &WasmAdapter,
        prompt: &str,
        options: &str,
        on_text: &js_sys::Function,
    ) -> Result<String, JsError> {
        self.generate_inner(Some(&adapter.adapter), prompt, options, on_text)
    }
}

/// Generation options as JS gives them (HF `generate` names).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GenerateArgs {
    max_new_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    seed: u64,
    stop: Vec<String>,
}

impl Default for GenerateArgs {
    fn default() -> Self {
        let g = SamplingParams::greedy();
        GenerateArgs {
            max_new_tokens: 32,
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            repetition_penalty: g.repetition_penalty,
            seed: g.seed,
            stop: Vec::new(),
        }
    }
}

impl WasmModel {
    fn generate_inner(
        &self,
        adapter: Option<&LoraAdapter>,
        prompt: &str,
        options: &str,
        on_text: &js_sys::Function,
    ) -> Result<String, JsError> {
        let args: GenerateArgs =
            serde_json::from_value(Value::Object(json_object(options, "generate options")?))
                .map_err(|e| js_err(format!("generate options: {e}")))?;
        let sampling = SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        };
        sampling.validate().map_err(js_err)?;
        let model = &self.model;
        let ids = model.tokenizer.encode(prompt, true).map_err(js_err)?;
        if ids.is_empty() {
            return Err(js_err("the prompt is empty after tokenization"));
        }
        let mut cpu = CpuModel::new(&model.spec, &model.weights, CpuModelOptions::default())
            .map_err(js_err)?;
        if let Some(a) = adapter {
            cpu.set_adapter(a).map_err(js_err)?;
        }
        let max_len = (ids.len() + args.max_new_tokens).min(model.spec.max_position_embeddings);
        let mut session = CpuSession::new(cpu, max_len);
        let opts = GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            sampling,
            stop_strings: args.stop,
            eos_ids: model.eos_ids(),
        };
        let mut callback_error = None;
        let out = generate(
            &mut session,
            &model.tokenizer,
            &ids,
            &opts,
            &mut |piece: &str| match on_text.call1(&JsValue::NULL, &JsValue::from_str(piece)) {
                Ok(v) => v.as_bool() != Some(false),
                Err(e) => {
                    callback_error = Some(e);
                    false
                }
            },
        )
        .map_err(js_err)?;
        if let Some(e) = callback_error {
            return Err(js_err(format!(
                "the generate callback threw: {}",
                e.dyn_ref::<js_sys::Error>()
                    .map(|e| String::from(e.message()))
                    .or_else(|| e.as_string())
                    .unwrap_or_else(|| format!("{e:?}"))
            )));
        }
        Ok(out.text)
    }
}

/// A dataset parsed from bytes (JSONL, JSON array, CSV, TSV or text).
#[wasm_bindgen]
pub struct WasmDataset {
    pub(crate) dataset: Dataset,
}

#[wasm_bindgen]
impl WasmDataset {
    /// Parse `bytes`; `format` (jsonl, json, csv, tsv, text) or else `name`'s extension says how.
    pub fn parse(bytes: &[u8], name: &str, format: Option<String>) -> Result<WasmDataset, JsError> {
        let format = match format.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => DataFormat::from_name(f),
            None => DataFormat::from_path(Path::new(name)),
        }
        .map_err(js_err)?;
        let dataset = parse_dataset(bytes, name, format).map_err(js_err)?;
        Ok(WasmDataset { dataset })
    }

    /// Number of rows.
    #[wasm_bindgen(getter)]
    pub fn rows(&self) -> usize {
        self.dataset.rows.len()
    }

    /// The first `n` rows of `train_split` rendered as the run will see them (config JSON with
    /// the CLI's option names: text_template, completion_only, ...), as a JSON array of
    /// `{line, prompt, completion}`. A row the template cannot render is an error naming its line.
    pub fn preview(&self, model: &WasmModel, config: &str, n: usize) -> Result<String, JsError> {
        let cfg = run::config_for(config, &model.model, &self.dataset)?;
        let rows = self
            .dataset
            .select(
                Some(&hone_core::data::Split::parse(&cfg.train_split).map_err(js_err)?),
                Some(n),
            )
            .map_err(js_err)?;
        let opts = cfg.data_options().map_err(js_err)?;
        let examples = opts.examples(&rows, &model.model).map_err(js_err)?;
        let list: Vec<Value> = examples
            .examples
            .iter()
            .map(|e| json!({"line": e.line, "prompt": e.prompt(), "completion": e.completion()}))
            .collect();
        Ok(Value::Array(list).to_string())
    }
}

/// A LoRA adapter (from a run or from PEFT files).
#[wasm_bindgen]
pub struct WasmAdapter {
    pub(crate) adapter: LoraAdapter,
    pub(crate) base: String,
}

#[wasm_bindgen]
impl WasmAdapter {
    /// Read PEFT files (`adapter_config.json`, `adapter_model.safetensors`).
    #[wasm_bindgen(js_name = fromPeft)]
    pub fn from_peft(config: &[u8], weights: Vec<u8>) -> Result<WasmAdapter, JsError> {
        let adapter = LoraAdapter::from_peft_bytes(
            Path::new("adapter_config.json"),
            config,
            Path::new("adapter_model.safetensors"),
            hone_core::Bytes::from_vec(weights),
        )
        .map_err(js_err)?;
        let base = adapter.base_model_name_or_path.clone().unwrap_or_default();
        Ok(WasmAdapter { adapter, base })
    }

    /// `adapter_config.json` bytes (PEFT).
    #[wasm_bindgen(js_name = configJson)]
    pub fn config_json(&self) -> Result<Vec<u8>, JsError> {
        Ok(self.adapter.to_peft_bytes(&self.base).map_err(js_err)?.0)
    }

    /// `adapter_model.safetensors` bytes (PEFT).
    pub fn safetensors(&self) -> Result<Vec<u8>, JsError> {
        Ok(self.adapter.to_peft_bytes(&self.base).map_err(js_err)?.1)
    }
}

/// The option names `finetune` takes (the CLI's), as a JSON array.
#[wasm_bindgen(js_name = optionNames)]
pub fn option_names() -> String {
    Value::from(hone_core::finetune::option_names()).to_string()
}

/// The defaults of every option, as JSON.
#[wasm_bindgen(js_name = defaultConfig)]
pub fn default_config() -> String {
    FinetuneConfig::default().to_json().to_string()
}
