//! `hone finetune`: LoRA fine-tuning on the CPU engine with Olive's / HF's option names.
//!
//! Options come from `--config FILE` (YAML or JSON) and flags (flags win); when resuming, the
//! checkpoint's own configuration fills in whatever neither gives. The output folder gets
//! `adapter/` (PEFT), `checkpoints/checkpoint-N/`, `logs/` (TensorBoard + metrics.jsonl),
//! `hone_config.json` (the resolved configuration) and `train_results.json`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hone_core::adapter::LoraConfig;
use hone_core::checkpoint::{self, checkpoint_name, Checkpoint, ModelFingerprint};
use hone_core::data::{read_dataset, DataFormat};
use hone_core::engine::Engine;
use hone_core::finetune::{
    adapter_to_params, make_checkpoint, optimizer_from_checkpoint, pad_id, resume_differences,
    trainer_state_of, CheckpointMeta, FinetuneConfig, RunBatches, SplitData,
};
use hone_core::schedule::LrSchedule;
use hone_core::tensorboard::{EventWriter, MetricsJsonl, MetricsSink};
use hone_core::trainer::{StopCause, TrainEvent, Trainer, TrainerHooks, TrainerState};
use hone_core::{adapter::LoraAdapter, Model};
use hone_cpu::train::CpuTrainOptions;

use crate::engine::{check_device, open_engine, AnyEngine, EngineRequest};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::block_on;

/// Fine-tune a LoRA adapter (flags as `olive finetune` / HF TrainingArguments).
#[derive(Args, Serialize, Default)]
pub struct FinetuneArgs {
    /// YAML or JSON file of options (the same names as the flags, without `--`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub common: crate::args::ModelDataArgs,
    /// Rows to train on: `train`, `train[:160]`, `train[:80%]`.
    #[arg(long = "train_split")]
    pub train_split: Option<String>,
    /// Rows to evaluate on, e.g. `train[160:]` (none: no evaluation).
    #[arg(long = "eval_split")]
    pub eval_split: Option<String>,
    /// Use at most this many training rows.
    #[arg(long = "max_samples")]
    pub max_samples: Option<usize>,
    /// Use at most this many evaluation rows.
    #[arg(long = "max_eval_samples")]
    pub max_eval_samples: Option<usize>,
    /// Rows longer than max_seq_len: truncate (and count) or error.
    #[arg(long = "long_rows")]
    pub long_rows: Option<String>,

    /// Fine-tuning method: lora.
    #[arg(long)]
    pub method: Option<String>,
    /// LoRA rank.
    #[arg(long = "lora_r")]
    pub lora_r: Option<usize>,
    /// LoRA alpha (scale = alpha / r).
    #[arg(long = "lora_alpha")]
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA input.
    #[arg(long = "lora_dropout")]
    pub lora_dropout: Option<f64>,
    /// Modules to adapt (q_proj,k_proj,... or all-linear).
    #[arg(long = "target_modules", num_args = 1.., value_delimiter = ',')]
    pub target_modules: Option<Vec<String>>,
    /// Modules trained in full and saved with the adapter.
    #[arg(long = "modules_to_save", num_args = 1.., value_delimiter = ',')]
    pub modules_to_save: Option<Vec<String>>,
    /// Rank-stabilised scale alpha / sqrt(r).
    #[arg(long = "use_rslora", num_args = 0..=1, default_missing_value = "true")]
    pub use_rslora: Option<bool>,
    /// LoRA initialisation: true, gaussian, false.
    #[arg(long = "init_lora_weights")]
    pub init_lora_weights: Option<String>,
    /// Seed of initialisation, shuffling and dropout.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Peak learning rate.
    #[arg(
        long = "learning_rate",
        visible_alias = "lr",
        allow_negative_numbers = true
    )]
    pub learning_rate: Option<f64>,
    /// constant, constant_with_warmup, linear, cosine.
    #[arg(long = "lr_scheduler_type")]
    pub lr_scheduler_type: Option<String>,
    /// Warmup steps (below 1: a ratio of the total).
    #[arg(long = "warmup_steps")]
    pub warmup_steps: Option<f64>,
    /// Warmup as a ratio of the total steps.
    #[arg(long = "warmup_ratio")]
    pub warmup_ratio: Option<f64>,
    /// Decoupled weight decay of AdamW.
    #[arg(long = "weight_decay")]
    pub weight_decay: Option<f64>,
    #[arg(long = "adam_beta1")]
    pub adam_beta1: Option<f64>,
    #[arg(long = "adam_beta2")]
    pub adam_beta2: Option<f64>,
    #[arg(long = "adam_epsilon")]
    pub adam_epsilon: Option<f64>,
    /// Clip the global gradient norm (0: off).
    #[arg(long = "max_grad_norm")]
    pub max_grad_norm: Option<f64>,
    /// Optimizer steps (overrides num_train_epochs).
    #[arg(long = "max_steps", allow_negative_numbers = true)]
    pub max_steps: Option<i64>,
    /// Epochs when max_steps is not given.
    #[arg(long = "num_train_epochs")]
    pub num_train_epochs: Option<f64>,
    /// Rows per micro-batch.
    #[arg(long = "per_device_train_batch_size", visible_alias = "batch_size")]
    pub per_device_train_batch_size: Option<usize>,
    /// Rows per evaluation batch.
    #[arg(long = "per_device_eval_batch_size")]
    pub per_device_eval_batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long = "gradient_accumulation_steps")]
    pub gradient_accumulation_steps: Option<usize>,
    /// Recompute activations in the backward pass (less memory, more compute).
    #[arg(long = "gradient_checkpointing", num_args = 0..=1, default_missing_value = "true")]
    pub gradient_checkpointing: Option<bool>,

    /// Evaluate every N steps (default: at the end).
    #[arg(long = "eval_steps")]
    pub eval_steps: Option<u64>,
    /// Log every N steps.
    #[arg(long = "logging_steps")]
    pub logging_steps: Option<u64>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long = "save_steps")]
    pub save_steps: Option<u64>,
    /// Keep at most this many checkpoints (the best is always kept).
    #[arg(long = "save_total_limit")]
    pub save_total_limit: Option<usize>,
    /// Save the adapter of the best evaluation instead of the last step.
    #[arg(long = "load_best_model_at_end", num_args = 0..=1, default_missing_value = "true")]
    pub load_best_model_at_end: Option<bool>,
    /// eval_loss.
    #[arg(long = "metric_for_best_model")]
    pub metric_for_best_model: Option<String>,
    /// Stop after this many evaluations without improvement.
    #[arg(long = "early_stopping_patience")]
    pub early_stopping_patience: Option<u32>,
    /// Smallest eval-loss decrease that counts as an improvement.
    #[arg(long = "early_stopping_threshold")]
    pub early_stopping_threshold: Option<f64>,
    /// Resume from a checkpoint folder or `latest`.
    #[arg(long = "resume_from_checkpoint")]
    pub resume_from_checkpoint: Option<String>,
    /// Output folder.
    #[arg(short = 'o', long = "output_path", visible_alias = "output_dir")]
    pub output_path: Option<String>,
    /// Start over if the output folder holds checkpoints of an earlier run.
    #[arg(long = "overwrite_output_dir", num_args = 0..=1, default_missing_value = "true")]
    pub overwrite_output_dir: Option<bool>,
    /// tensorboard or none.
    #[arg(long = "report_to", num_args = 1.., value_delimiter = ',')]
    pub report_to: Option<Vec<String>>,
    /// TensorBoard folder (default OUTPUT/logs).
    #[arg(long = "logging_dir")]
    pub logging_dir: Option<String>,

    /// bfloat16 compute (not available on the CPU engine: refused).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub bf16: Option<bool>,
    /// Mixed float16 on the GPU engine (f16 products, f32 sums and master weights, dynamic loss
    /// scaling); needs --device gpu and an adapter with shader-f16 (refused otherwise).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub fp16: Option<bool>,
    /// cpu (default), gpu (any wgpu adapter, software ones included) or auto (a hardware GPU
    /// when there is one, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Convert the frozen weights to f32 at load.
    #[arg(long = "dequantize_at_load", num_args = 0..=1, default_missing_value = "true")]
    pub dequantize_at_load: Option<bool>,
    /// debug, info, warning, error, quiet.
    #[arg(long = "log_level")]
    pub log_level: Option<String>,
}

/// The folders and files of one run.
struct Outputs {
    root: PathBuf,
    adapter: PathBuf,
    checkpoints: PathBuf,
    logs: PathBuf,
}

impl Outputs {
    fn new(cfg: &FinetuneConfig) -> Outputs {
        let root = PathBuf::from(&cfg.output_path);
        Outputs {
            adapter: root.join("adapter"),
            checkpoints: root.join("checkpoints"),
            logs: cfg
                .logging_dir
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("logs")),
            root,
        }
    }
}

/// The options of one config file as a JSON map.
pub(crate) fn read_config_file(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let value: Value = if ext == "json" {
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
    } else if ext == "yaml" || ext == "yml" {
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
    } else {
        bail!(
            "{}: unknown config format (use .yaml, .yml or .json)",
            path.display()
        );
    };
    match value {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => bail!(
            "{}: expected a mapping of option names to values",
            path.display()
        ),
    }
}

fn as_refs(l: &[(String, Map<String, Value>)]) -> Vec<(&str, Map<String, Value>)> {
    l.iter().map(|(o, m)| (o.as_str(), m.clone())).collect()
}

/// Write pretty JSON atomically (temporary file, fsync, rename).
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = format!("{}\n", serde_json::to_string_pretty(value)?);
    hone_core::safetensors::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    Ok(())
}

/// Layers the options: (checkpoint's config when resuming) < config file < flags.
fn resolve_config(args: &FinetuneArgs) -> Result<(FinetuneConfig, Option<Checkpoint>)> {
    let flags = match serde_json::to_value(args)? {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    };
    let file = match &args.config {
        Some(p) => Some((p.display().to_string(), read_config_file(p)?)),
        None => None,
    };
    let mut layers: Vec<(String, Map<String, Value>)> = Vec::new();
    if let Some(f) = file.clone() {
        layers.push(f);
    }
    layers.push(("command line".to_string(), flags));
    let first = FinetuneConfig::from_layers(&as_refs(&layers))?;
    let Some(resume) = first.resume_from_checkpoint.clone() else {
        return Ok((first, None));
    };
    let outputs = Outputs::new(&first);
    let dir = if resume == "latest" {
        checkpoint::latest(&outputs.checkpoints)?.ok_or_else(|| {
            anyhow!(
                "--resume_from_checkpoint latest: no complete checkpoint in {}",
                outputs.checkpoints.display()
            )
        })?
    } else {
        PathBuf::from(&resume)
    };
    let ckpt = Checkpoint::load(&dir)?;
    let mut base = match &ckpt.training_config {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    // Only what the checkpoint's run decided; where to resume from is today's question.
    base.remove("resume_from_checkpoint");
    base.remove("overwrite_output_dir");
    layers.insert(0, (format!("{} (training config)", dir.display()), base));
    let cfg = FinetuneConfig::from_layers(&as_refs(&layers))?;
    Ok((cfg, Some(ckpt)))
}

/// Progress bar and log lines, muted by `--log_level`.
struct Console {
    bar: ProgressBar,
    /// Print info lines.
    info: bool,
    /// stderr is a terminal (the bar is drawn; lines go through it).
    tty: bool,
}

impl Console {
    fn new(cfg: &FinetuneConfig, total: u64) -> Console {
        let info = matches!(cfg.log_level.as_str(), "debug" | "info");
        let tty = std::io::stderr().is_terminal();
        let bar = if info && tty {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Console { bar, info, tty }
    }

    fn line(&self, s: &str) {
        if !self.info {
            return;
        }
        if self.tty {
            self.bar.println(s);
        } else {
            eprintln!("{s}");
        }
    }
}

/// The Trainer's hooks for the command line: schedule, console, metrics files, checkpoints.
struct CliHooks<'a> {
    cfg: &'a FinetuneConfig,
    config_json: Value,
    outputs: &'a Outputs,
    schedule: LrSchedule,
    lora: LoraConfig,
    fingerprint: ModelFingerprint,
    console: Console,
    sinks: Vec<Box<dyn MetricsSink>>,
    /// Losses since the last log line (HF logs the mean over the logging window).
    window: Vec<f64>,
    start: Instant,
    /// Input tokens (padding excluded) processed by this process, for tokens/s.
    tokens: u64,
    epoch: f64,
    last_eval: Option<f64>,
    last_grad_norm: f32,
    saved: Vec<u64>,
}

impl CliHooks<'_> {
    fn log(&mut self, step: u64, metrics: &[(&str, f64)]) -> hone_core::Result<()> {
        self.sinks.log(step, metrics)
    }
}

impl TrainerHooks<AnyEngine> for CliHooks<'_> {
    fn lr(&self, step: u64) -> f32 {
        self.schedule.lr_at(step) as f32
    }

    fn on_event(&mut self, event: &TrainEvent) -> hone_core::Result<bool> {
        match *event {
            TrainEvent::Step {
                step,
                epoch,
                loss,
                lr,
                grad_norm,
                input_tokens,
                ..
            } => {
                self.epoch = epoch;
                self.window.push(loss);
                self.tokens += input_tokens as u64;
                self.last_grad_norm = grad_norm;
                let secs = self.start.elapsed().as_secs_f64().max(1e-9);
                let tps = self.tokens as f64 / secs;
                self.console.bar.set_position(step);
                self.console
                    .bar
                    .set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
                let log_now = self.cfg.logging_steps > 0
                    && (step.is_multiple_of(self.cfg.logging_steps)
                        || step == self.schedule.total_steps);
                if log_now {
                    let mean = self.window.iter().sum::<f64>() / self.window.len() as f64;
                    self.window.clear();
                    self.log(
                        step,
                        &[
                            ("loss", mean),
                            ("grad_norm", grad_norm as f64),
                            ("learning_rate", lr as f64),
                            ("epoch", epoch),
                        ],
                    )?;
                    self.console.line(&format!(
                        "step {step}/{} | epoch {epoch:.2} | loss {mean:.4} | lr {lr:.3e} | grad_norm {grad_norm:.3} | {tps:.0} tok/s",
                        self.schedule.total_steps
                    ));
                }
            }
            TrainEvent::Eval {
                step,
                loss,
                perplexity,
                best,
            } => {
                self.last_eval = Some(loss);
                self.log(
                    step,
                    &[
                        ("eval_loss", loss),
                        ("eval_perplexity", perplexity),
                        ("epoch", self.epoch),
                    ],
                )?;
                self.console.line(&format!(
                    "eval at step {step}: loss {loss:.4} | perplexity {perplexity:.3}{}",
                    if best { " (best so far)" } else { "" }
                ));
            }
            TrainEvent::EarlyStop { step, best_step } => {
                self.console.line(&format!(
                    "early stopping at step {step}: no eval improvement for {} evaluations (best at step {best_step})",
                    self.cfg.early_stopping_patience
                ));
            }
        }
        Ok(true)
    }

    async fn save_checkpoint(
        &mut self,
        engine: &AnyEngine,
        state: &TrainerState,
    ) -> hone_core::Result<()> {
        let params = engine.params().await?;
        let optimizer = engine.optimizer_state().await?;
        let best_dir = state.best.and_then(|(s, _)| {
            (s == state.step || self.saved.contains(&s))
                .then(|| self.outputs.checkpoints.join(checkpoint_name(s)))
        });
        let ckpt = make_checkpoint(
            state,
            params,
            optimizer,
            CheckpointMeta {
                lora: &self.lora,
                base_model_name_or_path: Some(self.cfg.model_name_or_path.clone()),
                fingerprint: &self.fingerprint,
                training_config: &self.config_json,
                epoch: self.epoch,
                best_model_checkpoint: best_dir.as_ref().map(|p| p.display().to_string()),
            },
        )?;
        let dir = ckpt.save(&self.outputs.checkpoints)?;
        self.saved.push(state.step);
        if let Some(limit) = self.cfg.save_total_limit {
            let removed =
                checkpoint::rotate(&self.outputs.checkpoints, limit, best_dir.as_deref())?;
            self.saved
                .retain(|s| !removed.iter().any(|r| r.ends_with(checkpoint_name(*s))));
        }
        self.sinks.flush()?;
        self.console.line(&format!("saved {}", dir.display()));
        Ok(())
    }
}

/// Refuse what the engines cannot do, before loading anything.
fn check_engine_options(cfg: &FinetuneConfig) -> Result<()> {
    if cfg.bf16 {
        bail!(
            "--bf16 is not supported yet: the CPU engine trains in float32, the GPU engine in float32 \
             or, with --fp16 --device gpu, mixed float16 (drop --bf16)"
        );
    }
    check_device(&cfg.device)?;
    if cfg.fp16 && cfg.device == "cpu" {
        bail!(
            "--fp16 (mixed precision) needs the GPU engine: the CPU engine trains in float32; \
             use --device gpu, or drop --fp16"
        );
    }
    Ok(())
}

/// Make the output folder, check that it is writable, and refuse to mix two runs.
fn prepare_output(cfg: &FinetuneConfig, outputs: &Outputs, resuming: bool) -> Result<()> {
    std::fs::create_dir_all(&outputs.root)
        .with_context(|| format!("output folder {}", outputs.root.display()))?;
    let probe = outputs.root.join(".hone-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output folder {} is not writable", outputs.root.display()))?;
    let _ = std::fs::remove_file(&probe);
    // Folders of checkpoint writes that a crash interrupted are never read; clear them away.
    if let Ok(rd) = std::fs::read_dir(&outputs.checkpoints) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().contains(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let existing = checkpoint::list(&outputs.checkpoints).unwrap_or_default();
    if !resuming && existing.iter().any(|e| e.complete) {
        if cfg.overwrite_output_dir {
            for p in [&outputs.checkpoints, &outputs.adapter, &outputs.logs] {
                if p.exists() {
                    std::fs::remove_dir_all(p)
                        .with_context(|| format!("removing {}", p.display()))?;
                }
            }
        } else {
            bail!(
                "{} already holds checkpoints of an earlier run: pass --resume_from_checkpoint latest to continue it, or --overwrite_output_dir to start over",
                outputs.root.display()
            );
        }
    }
    Ok(())
}

/// Keep the lines of `metrics.jsonl` up to `step` (a resumed run rewrites what follows).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

fn load_dataset(cfg: &FinetuneConfig) -> Result<hone_core::data::Dataset> {
    let format = cfg
        .data_format
        .as_deref()
        .map(DataFormat::from_name)
        .transpose()?;
    Ok(read_dataset(Path::new(&cfg.data_name), format)?)
}

pub fn cmd_finetune(args: FinetuneArgs) -> Result<()> {
    let (cfg, resume) = resolve_config(&args)?;
    cfg.validate()?;
    check_engine_options(&cfg)?;
    let outputs = Outputs::new(&cfg);
    prepare_output(&cfg, &outputs, resume.is_some())?;
    let config_json = cfg.to_json();
    let info = matches!(cfg.log_level.as_str(), "debug" | "info");
    let say = |s: &str| {
        if info {
            eprintln!("{s}");
        }
    };
    say(&format!(
        "[hone] configuration:\n{}",
        serde_json::to_string_pretty(&config_json)?
    ));
    let config_path = outputs.root.join("hone_config.json");
    write_json(&config_path, &config_json)?;

    // Model and data.
    let t0 = Instant::now();
    let model: Model = hone_core::load_model(Path::new(&cfg.model_name_or_path))?;
    let lora = cfg.lora_config()?;
    let setup = hone_core::finetune::lora_setup(&lora, &model.spec)?;
    say(&format!(
        "[hone] model {} ({} layers, hidden {}) loaded in {:.2}s",
        model.source.display(),
        model.spec.num_hidden_layers,
        model.spec.hidden_size,
        t0.elapsed().as_secs_f64()
    ));
    let dataset = load_dataset(&cfg)?;
    let data_opts = cfg.data_options()?;
    let train = SplitData::build(
        &dataset,
        &cfg.train_split,
        cfg.max_samples,
        &data_opts,
        &model,
    )?;
    say(&format!("[hone] train {}", train.summary()));
    let eval = match &cfg.eval_split {
        Some(s) => {
            let e = SplitData::build(&dataset, s, cfg.max_eval_samples, &data_opts, &model)?;
            say(&format!("[hone] eval {}", e.summary()));
            Some(e)
        }
        None => None,
    };
    if let Some(first) = train.examples.first() {
        say(&format!("[hone] first example: {:?}", first.text()));
    }
    let RunBatches {
        loader,
        eval_batches,
        max_seq,
    } = cfg.run_batches(&train, eval.as_ref(), pad_id(&model))?;
    let total = cfg.total_steps(loader.batches_per_epoch());
    let schedule = cfg.schedule(total)?;

    // Engine and adapter.
    let mut engine = open_engine(
        EngineRequest {
            device: &cfg.device,
            cpu: CpuTrainOptions {
                gradient_checkpointing: cfg.gradient_checkpointing,
                dequantize_at_load: cfg.dequantize_at_load,
                ..Default::default()
            },
            plan: Some((
                cfg.per_device_train_batch_size
                    .max(cfg.per_device_eval_batch_size),
                max_seq,
            )),
            fp16: cfg.fp16,
        },
        &model.spec,
        &model.weights,
        setup,
        cfg.adamw(),
        &say,
    )?;
    let fingerprint = ModelFingerprint::of_model(&model.spec, &model.weights);
    let state = match &resume {
        Some(ckpt) => {
            let at = ckpt
                .adapter
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            ckpt.check_resume(&fingerprint, &lora, &model.spec)?;
            for (k, a, b) in resume_differences(&ckpt.training_config, &config_json) {
                say(&format!(
                    "[hone] warning: {k} was {a} in the checkpoint's run and is {b} now; the resumed run will not repeat the original one"
                ));
            }
            block_on(engine.set_params(&adapter_to_params(&ckpt.adapter)?))?;
            block_on(engine.set_optimizer_state(&optimizer_from_checkpoint(ckpt)?))?;
            let state = trainer_state_of(ckpt);
            say(&format!("[hone] resuming from {at} at step {}", state.step));
            if state.step >= total {
                bail!(
                    "{at} is at step {}, and the run has {total} steps: nothing left to train (raise --max_steps or --num_train_epochs)",
                    state.step
                );
            }
            Some(state)
        }
        None => {
            let adapter = LoraAdapter::init(&lora, &model.spec, cfg.seed, Some(&model.weights))?;
            block_on(engine.set_params(&adapter_to_params(&adapter)?))?;
            None
        }
    };
    let start_step = state.as_ref().map_or(0, |s| s.step);

    // Logs.
    std::fs::create_dir_all(&outputs.logs)
        .with_context(|| format!("logs folder {}", outputs.logs.display()))?;
    let metrics_path = outputs.logs.join("metrics.jsonl");
    let mut sinks: Vec<Box<dyn MetricsSink>> = Vec::new();
    if resume.is_some() {
        truncate_metrics(&metrics_path, start_step)?;
        sinks.push(Box::new(MetricsJsonl::append(&metrics_path)?));
    } else {
        sinks.push(Box::new(MetricsJsonl::create(&metrics_path)?));
    }
    if cfg.tensorboard() {
        sinks.push(Box::new(EventWriter::create(&outputs.logs)?));
    }

    let trainable: usize = engine.num_trainable();
    say(&format!(
        "[hone] training {} LoRA parameters (r {}, alpha {}, {} modules) on {} for {total} steps ({} per epoch), batch {} x {} accumulation",
        trainable,
        lora.r,
        lora.lora_alpha,
        lora.resolve_targets(&model.spec)?.len(),
        engine.describe(),
        (loader.batches_per_epoch() / cfg.gradient_accumulation_steps).max(1),
        cfg.per_device_train_batch_size,
        cfg.gradient_accumulation_steps
    ));
    let console = Console::new(&cfg, total);
    console.bar.set_position(start_step);
    let mut hooks = CliHooks {
        cfg: &cfg,
        config_json: config_json.clone(),
        outputs: &outputs,
        schedule,
        lora: lora.clone(),
        fingerprint,
        console,
        sinks,
        window: Vec::new(),
        start: Instant::now(),
        tokens: 0,
        epoch: 0.0,
        last_eval: None,
        last_grad_norm: 0.0,
        saved: checkpoint::list(&outputs.checkpoints)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.complete)
            .map(|e| e.step)
            .collect(),
    };
    let mut trainer = Trainer::new(
        engine,
        loader,
        eval_batches,
        cfg.trainer_options(total),
        state,
    )?;
    let t_train = Instant::now();
    let result = block_on(trainer.run(&mut hooks));
    hooks.console.bar.finish_and_clear();
    let _ = hooks.sinks.flush();
    let cause = result.map_err(|e| {
        let last = checkpoint::latest(&outputs.checkpoints).ok().flatten();
        let kept = match last {
            Some(p) => format!(" (last good checkpoint: {})", p.display()),
            None => String::new(),
        };
        anyhow!("{e}{kept}")
    })?;
    let train_secs = t_train.elapsed().as_secs_f64();

    // The adapter: the best evaluated one or the last.
    let state = &trainer.state;
    let (adapter, from) = match (cfg.load_best_model_at_end, state.best) {
        (true, Some((best_step, _))) => {
            let dir = outputs.checkpoints.join(checkpoint_name(best_step));
            let ckpt = Checkpoint::load(&dir)?;
            (ckpt.adapter, format!("best step {best_step}"))
        }
        _ => {
            let params = block_on(trainer.engine.params())?;
            (
                hone_core::finetune::params_to_adapter(
                    &lora,
                    params,
                    Some(cfg.model_name_or_path.clone()),
                )?,
                format!("step {}", state.step),
            )
        }
    };
    adapter.save_peft(&outputs.adapter, &cfg.model_name_or_path)?;
    let new_tokens = hooks.tokens;
    let results = json!({
        "global_step": state.step,
        "stop": match cause {
            StopCause::MaxSteps => "max_steps",
            StopCause::EarlyStopping => "early_stopping",
            StopCause::Requested => "requested",
        },
        "train_loss": state.loss_history.last().map(|l| l.1),
        "eval_loss": hooks.last_eval,
        "best": state.best.map(|(s, l)| json!({"step": s, "eval_loss": l})),
        "train_runtime_s": train_secs,
        "train_tokens_per_second": new_tokens as f64 / train_secs.max(1e-9),
        "adapter_from": from,
        "tokens_seen": state.tokens_seen,
    });
    write_json(&outputs.root.join("train_results.json"), &results)?;
    say(&format!(
        "[hone] done: {} steps in {:.1}s ({:.0} tok/s), last loss {:.4}{}; adapter ({from}) in {}",
        state.step - start_step,
        train_secs,
        new_tokens as f64 / train_secs.max(1e-9),
        state.loss_history.last().map_or(f64::NAN, |l| l.1),
        hooks
            .last_eval
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default(),
        outputs.adapter.display()
    ));
    Ok(())
}
