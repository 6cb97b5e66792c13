//! `hone eval`: loss and perplexity on a split, and generation-based metrics (accuracy, macro
//! F1, corpus BLEU, ROUGE) that compare the greedy completion of each example's prompt with its
//! reference completion, with or without an adapter.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use hone_core::adapter::{LoraAdapter, LoraConfig};
use hone_core::engine::{Engine, MicroBatch};
use hone_core::finetune::{adapter_to_params, lora_setup, pad_id, FinetuneConfig, SplitData};
use hone_core::generate::{generate, GenerateOptions};
use hone_core::metrics;
use hone_core::sampling::SamplingParams;
use hone_core::Model;
use hone_cpu::{CpuModel, CpuModelOptions, CpuSession};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::block_on;
use crate::engine::{open_engine, EngineRequest};

const ALL_METRICS: [&str; 6] = ["loss", "perplexity", "accuracy", "f1", "bleu", "rouge"];

/// Evaluate a model (and adapter) on a dataset split.
#[derive(Args, Serialize)]
pub struct EvalArgs {
    /// A finetune config (YAML/JSON, e.g. OUTPUT/hone_config.json): its model and data options
    /// are the defaults here.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub common: crate::args::ModelDataArgs,
    /// A PEFT adapter folder (e.g. OUTPUT/adapter or a checkpoint folder).
    #[arg(long, visible_alias = "adapter_path")]
    #[serde(skip)]
    pub adapter: Option<PathBuf>,
    /// Rows to evaluate (default: the config's eval_split, else all rows).
    #[arg(long = "eval_split")]
    pub eval_split: Option<String>,
    /// Evaluate at most this many rows.
    #[arg(long = "max_eval_samples", visible_alias = "max_samples")]
    pub max_eval_samples: Option<usize>,
    /// Rows per loss batch.
    #[arg(long = "per_device_eval_batch_size")]
    pub per_device_eval_batch_size: Option<usize>,
    /// Comma-separated: loss, perplexity, accuracy, f1, bleu, rouge (or all).
    #[arg(long, default_value = "loss,perplexity", value_delimiter = ',')]
    #[serde(skip)]
    pub metrics: Vec<String>,
    /// Most tokens generated per example for the generation metrics.
    #[arg(long = "max_new_tokens", default_value_t = 32)]
    #[serde(skip)]
    pub max_new_tokens: usize,
    /// Stop generating at this text (repeatable). Default: a newline, when no reference
    /// completion holds one.
    #[arg(long = "stop")]
    #[serde(skip)]
    pub stop: Vec<String>,
    /// Print this many examples with their prediction.
    #[arg(long, default_value_t = 0)]
    #[serde(skip)]
    pub show: usize,
    /// Write the metrics (and every prediction) to this JSON file.
    #[arg(long = "output_file")]
    #[serde(skip)]
    pub output_file: Option<PathBuf>,
    /// Print only the JSON result line.
    #[arg(short, long)]
    #[serde(skip)]
    pub quiet: bool,
    /// Engine of the loss: cpu, gpu or auto (generation metrics run on the CPU).
    #[arg(long, default_value = "cpu")]
    #[serde(skip)]
    pub device: String,
    /// The loss in mixed float16 on the GPU engine (needs --device gpu and shader-f16).
    #[arg(long)]
    #[serde(skip)]
    pub fp16: bool,
}

/// Keys of a finetune config that matter here; the rest of a training config is ignored.
const DATA_KEYS: [&str; 16] = [
    "model_name_or_path",
    "data_name",
    "data_format",
    "eval_split",
    "text_template",
    "text_field",
    "use_chat_template",
    "messages_field",
    "system_prompt",
    "max_seq_len",
    "max_eval_samples",
    "completion_only",
    "skip_bad_rows",
    "add_eos_token",
    "per_device_eval_batch_size",
    "long_rows",
];

fn resolve(args: &EvalArgs) -> Result<FinetuneConfig> {
    let mut layers: Vec<(String, Map<String, Value>)> = Vec::new();
    if let Some(p) = &args.config {
        let m = crate::finetune::read_config_file(p)?;
        let kept = m
            .into_iter()
            .filter(|(k, _)| DATA_KEYS.contains(&k.as_str()))
            .collect();
        layers.push((p.display().to_string(), kept));
    }
    let flags = match serde_json::to_value(args)? {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    };
    layers.push(("command line".into(), flags));
    let refs: Vec<(&str, Map<String, Value>)> = layers
        .iter()
        .map(|(o, m)| (o.as_str(), m.clone()))
        .collect();
    let cfg = FinetuneConfig::from_layers(&refs)?;
    if cfg.model_name_or_path.is_empty() {
        bail!("no model: give -m/--model_name_or_path (or --config with one)");
    }
    if cfg.data_name.is_empty() {
        bail!("no dataset: give -d/--data_name (or --config with one)");
    }
    Ok(cfg)
}

fn load_adapter(dir: &Path, model: &Model) -> Result<LoraAdapter> {
    let adapter = LoraAdapter::load_peft(dir)?;
    adapter.check_against(&model.spec).with_context(|| {
        format!(
            "adapter {} does not fit model {}",
            dir.display(),
            model.source.display()
        )
    })?;
    Ok(adapter)
}

/// Mean token loss of the split, through the training engine's (dropout-free) forward: with the
/// adapter, or with a zero LoRA that leaves the base model unchanged.
fn split_loss(
    model: &Model,
    adapter: Option<&LoraAdapter>,
    data: &SplitData,
    batch_size: usize,
    device: &str,
    fp16: bool,
) -> Result<(f64, usize)> {
    let (config, params) = match adapter {
        Some(a) => (a.config.clone(), adapter_to_params(a)?),
        None => {
            let c = LoraConfig {
                r: 1,
                target_modules: vec!["q_proj".into()],
                ..Default::default()
            };
            let zero = LoraAdapter::init(&c, &model.spec, 0, None)?;
            (c, adapter_to_params(&zero)?)
        }
    };
    let mut engine = open_engine(
        EngineRequest {
            device,
            fp16,
            ..Default::default()
        },
        &model.spec,
        &model.weights,
        lora_setup(&config, &model.spec)?,
        Default::default(),
        &|s: &str| eprintln!("{s}"),
    )?;
    block_on(engine.set_params(&params))?;
    let mut nll = 0.0;
    let mut tokens = 0;
    for b in data.eval_batches(batch_size, pad_id(model)) {
        let l = block_on(engine.eval_loss(&MicroBatch {
            ids: &b.ids,
            labels: &b.labels,
            batch: b.batch,
            seq: b.seq,
        }))?;
        nll += l.nll_sum;
        tokens += l.tokens;
    }
    Ok((nll, tokens))
}

pub fn cmd_eval(args: EvalArgs) -> Result<()> {
    let cfg = resolve(&args)?;
    let mut wanted: Vec<String> = Vec::new();
    for m in &args.metrics {
        let m = m.trim().to_ascii_lowercase();
        if m == "all" {
            wanted.extend(ALL_METRICS.iter().map(|s| s.to_string()));
        } else if ALL_METRICS.contains(&m.as_str()) {
            wanted.push(m);
        } else if !m.is_empty() {
            bail!(
                "unknown metric '{m}'; supported: {}, all",
                ALL_METRICS.join(", ")
            );
        }
    }
    wanted.dedup();
    let t0 = Instant::now();
    let model = hone_core::load_model(Path::new(&cfg.model_name_or_path))?;
    let adapter = args
        .adapter
        .as_deref()
        .map(|d| load_adapter(d, &model))
        .transpose()?;
    let format = cfg
        .data_format
        .as_deref()
        .map(hone_core::data::DataFormat::from_name)
        .transpose()?;
    let dataset = hone_core::data::read_dataset(Path::new(&cfg.data_name), format)?;
    let split = cfg.eval_split.clone().unwrap_or_else(|| "train".into());
    let data = SplitData::build(
        &dataset,
        &split,
        cfg.max_eval_samples,
        &cfg.data_options()?,
        &model,
    )?;
    if !args.quiet {
        eprintln!("[hone] eval {}", data.summary());
    }
    let mut result = Map::new();
    result.insert("model".into(), json!(cfg.model_name_or_path));
    result.insert(
        "adapter".into(),
        json!(args.adapter.as_ref().map(|p| p.display().to_string())),
    );
    result.insert("split".into(), json!(split));
    result.insert("examples".into(), json!(data.examples.len()));

    if wanted.iter().any(|m| m == "loss" || m == "perplexity") {
        let (nll, tokens) = split_loss(
            &model,
            adapter.as_ref(),
            &data,
            cfg.per_device_eval_batch_size,
            &args.device,
            args.fp16,
        )?;
        if tokens == 0 {
            bail!("no label tokens to compute a loss on");
        }
        let loss = nll / tokens as f64;
        if wanted.iter().any(|m| m == "loss") {
            result.insert("eval_loss".into(), json!(loss));
        }
        if wanted.iter().any(|m| m == "perplexity") {
            result.insert(
                "eval_perplexity".into(),
                json!(metrics::perplexity_from_sum(nll, tokens)?),
            );
        }
        result.insert("eval_tokens".into(), json!(tokens));
    }

    let gen_metrics: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|m| ["accuracy", "f1", "bleu", "rouge"].contains(m))
        .collect();
    let mut predictions: Vec<Value> = Vec::new();
    if !gen_metrics.is_empty() {
        let (preds, refs) = generate_all(&model, adapter.as_ref(), &data, &args)?;
        if let Some(name) = gen_metrics
            .iter()
            .find(|_| refs.iter().all(|r| r.is_empty()))
        {
            bail!(
                "{name} needs reference completions, but every example's completion is empty: give a --text_template whose last placeholder is the answer (e.g. \"{{question}} -> {{answer}}\")"
            );
        }
        for m in &gen_metrics {
            match *m {
                "accuracy" => {
                    result.insert("accuracy".into(), json!(metrics::accuracy(&preds, &refs)?));
                }
                "f1" => {
                    result.insert("macro_f1".into(), json!(metrics::macro_f1(&preds, &refs)?));
                }
                "bleu" => {
                    let b = metrics::corpus_bleu(&preds, &refs)?;
                    result.insert("bleu".into(), json!(b.score));
                }
                "rouge" => {
                    let r = metrics::rouge(&preds, &refs)?;
                    result.insert("rouge1".into(), json!(r.rouge1));
                    result.insert("rouge2".into(), json!(r.rouge2));
                    result.insert("rougeL".into(), json!(r.rouge_l));
                }
                _ => {}
            }
        }
        for (i, (ex, (p, r))) in data
            .examples
            .iter()
            .zip(preds.iter().zip(&refs))
            .enumerate()
        {
            if i < args.show && !args.quiet {
                eprintln!(
                    "[{}] line {}: {:?}\n    predicted {:?} | reference {:?}",
                    i + 1,
                    ex.line,
                    ex.prompt(),
                    p,
                    r
                );
            }
            predictions.push(json!({"line": ex.line, "prediction": p, "reference": r}));
        }
    }
    result.insert("eval_runtime_s".into(), json!(t0.elapsed().as_secs_f64()));
    let line = Value::Object(result.clone());
    println!("{line}");
    if let Some(path) = &args.output_file {
        let mut full = result;
        full.insert("predictions".into(), Value::Array(predictions));
        let text = format!("{}\n", serde_json::to_string_pretty(&Value::Object(full))?);
        hone_core::safetensors::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    }
    Ok(())
}

/// Greedy completions of every example's prompt, and the trimmed references.
fn generate_all(
    model: &Model,
    adapter: Option<&LoraAdapter>,
    data: &SplitData,
    args: &EvalArgs,
) -> Result<(Vec<String>, Vec<String>)> {
    let refs: Vec<String> = data
        .examples
        .iter()
        .map(|e| e.completion().trim().to_string())
        .collect();
    let stop = if args.stop.is_empty() && !refs.iter().any(|r| r.contains('\n')) {
        vec!["\n".to_string()]
    } else {
        args.stop.clone()
    };
    let mut cpu = CpuModel::new(&model.spec, &model.weights, CpuModelOptions::default())?;
    if let Some(a) = adapter {
        cpu.set_adapter(a)?;
    }
    let longest = data
        .examples
        .iter()
        .map(|e| e.prompt().len())
        .max()
        .unwrap_or(0);
    let max_len = (longest + args.max_new_tokens + 8).min(model.spec.max_position_embeddings);
    let mut session = CpuSession::new(cpu, max_len);
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams::greedy(),
        stop_strings: stop,
        eos_ids: model.eos_ids(),
    };
    let tok = &model.tokenizer;
    let mut preds = Vec::with_capacity(refs.len());
    for ex in &data.examples {
        let prompt = ex.prompt();
        let mut ids = Vec::new();
        if tok.add_bos && !prompt.starts_with(tok.bos_token.as_deref().unwrap_or("\u{0}")) {
            ids.extend(tok.bos_id);
        }
        ids.extend(tok.encode(&prompt, false)?);
        if ids.is_empty() {
            bail!("{}: line {}: the prompt is empty", data.split, ex.line);
        }
        let out = generate(&mut session, tok, &ids, &opts, &mut |_| true)?;
        preds.push(out.text.trim().to_string());
    }
    Ok((preds, refs))
}
