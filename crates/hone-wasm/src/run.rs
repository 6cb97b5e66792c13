//! A fine-tuning run driven one optimizer step at a time from JS (so the page can pause, resume
//! and cancel between steps). It is built exactly as `hone finetune` builds one: the same
//! `FinetuneConfig`, splits, loader, schedule, LoRA initialisation and `Trainer::run`, so the
//! same seed, data and options give the same adapter.

use hone_core::adapter::{LoraAdapter, LoraConfig};
use hone_core::checkpoint::ModelFingerprint;
use hone_core::data::{Batch, Dataset, Loader};
use hone_core::engine::{Engine, LoraSetup};
use hone_core::finetune::{
    adapter_to_params, pad_id, params_to_adapter, FinetuneConfig, RunBatches, SplitData,
};
use hone_core::schedule::LrSchedule;
use hone_core::trainer::{
    StopCause, TrainEvent, Trainer, TrainerHooks, TrainerOptions, TrainerState,
};
use hone_core::Model;
use hone_cpu::train::{CpuEngine, CpuTrainOptions};
use hone_gpu::engine::{GpuEngine, GpuTrainOptions};
use hone_gpu::{AdapterChoice, Gpu, GpuOptions};
use serde_json::{json, Map, Value};
use wasm_bindgen::prelude::*;

use crate::checkpoint::BrowserCheckpoint;
use crate::{js_err, json_object, WasmAdapter, WasmDataset, WasmModel};

/// The run's configuration: what the page gives (the CLI's option names) over the defaults,
/// with the model and dataset names filled in.
pub(crate) fn config_for(
    config: &str,
    model: &Model,
    dataset: &Dataset,
) -> Result<FinetuneConfig, JsError> {
    let mut given = json_object(config, "finetune options")?;
    take_test_hooks(&mut given).map_err(js_err)?;
    layered_config(given, None, model, dataset)
}

/// Test-only option (not in the option list, not documented for users): the WebGPU device is
/// lost once the run has taken this many optimizer steps (e2e test of the device-lost path).
/// Any other option that is not `hone finetune`'s is still refused.
const LOSE_DEVICE_AFTER_STEPS: &str = "_lose_device_after_steps";

/// Take the test-only hooks out of the page's options.
fn take_test_hooks(given: &mut Map<String, Value>) -> Result<Option<u64>, String> {
    match given.remove(LOSE_DEVICE_AFTER_STEPS) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!("finetune options: {LOSE_DEVICE_AFTER_STEPS} must be a step count, not {v}")
        }),
    }
}

fn layered_config(
    given: Map<String, Value>,
    checkpoint: Option<&Value>,
    model: &Model,
    dataset: &Dataset,
) -> Result<FinetuneConfig, JsError> {
    let mut base = Map::new();
    base.insert(
        "model_name_or_path".into(),
        model.source.display().to_string().into(),
    );
    base.insert(
        "data_name".into(),
        dataset.source.display().to_string().into(),
    );
    base.insert("output_path".into(), "browser".into());
    base.insert("report_to".into(), json!(["none"]));
    let mut layers = vec![("defaults", base)];
    if let Some(Value::Object(m)) = checkpoint {
        let mut m = m.clone();
        m.remove("resume_from_checkpoint");
        layers.push(("checkpoint", m));
    }
    layers.push(("finetune options", given));
    let cfg = FinetuneConfig::from_layers(&layers).map_err(js_err)?;
    cfg.validate().map_err(js_err)?;
    if cfg.bf16 || cfg.fp16 {
        return Err(js_err(
            "bf16/fp16 are not supported yet: the engines train in float32",
        ));
    }
    Ok(cfg)
}

/// Everything prepared before an engine exists: data, loader, schedule, initial adapter.
#[wasm_bindgen]
pub struct RunPlan {
    cfg: FinetuneConfig,
    model: Model,
    lora: LoraConfig,
    setup: LoraSetup,
    loader: Loader,
    eval_batches: Vec<Batch>,
    total: u64,
    schedule: LrSchedule,
    max_seq: usize,
    resume: Option<BrowserCheckpoint>,
    summary: String,
    lose_device_after_steps: Option<u64>,
}

#[wasm_bindgen]
impl RunPlan {
    /// Prepare a run of `model` on `dataset` with `config` (JSON, the CLI's option names); with
    /// `checkpoint` (bytes from `WasmRun.checkpoint`) it continues that run.
    pub fn new(
        model: &WasmModel,
        dataset: &WasmDataset,
        config: &str,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<RunPlan, JsError> {
        let model = &model.model;
        let dataset = &dataset.dataset;
        let resume = checkpoint
            .map(|b| BrowserCheckpoint::from_bytes(&b))
            .transpose()
            .map_err(js_err)?;
        let mut given = json_object(config, "finetune options")?;
        let lose_device_after_steps = take_test_hooks(&mut given).map_err(js_err)?;
        let cfg = layered_config(given, resume.as_ref().map(|c| &c.config), model, dataset)?;
        if let Some(c) = &resume {
            if c.fingerprint != ModelFingerprint::of_model(&model.spec, &model.weights) {
                return Err(js_err(format!(
                    "the checkpoint was made with another model than {}: start a new run",
                    model.source.display()
                )));
            }
        }
        let lora = cfg.lora_config().map_err(js_err)?;
        let setup = hone_core::finetune::lora_setup(&lora, &model.spec).map_err(js_err)?;
        let data_opts = cfg.data_options().map_err(js_err)?;
        let train = SplitData::build(
            dataset,
            &cfg.train_split,
            cfg.max_samples,
            &data_opts,
            model,
        )
        .map_err(js_err)?;
        let eval = cfg
            .eval_split
            .as_ref()
            .map(|s| SplitData::build(dataset, s, cfg.max_eval_samples, &data_opts, model))
            .transpose()
            .map_err(js_err)?;
        let RunBatches {
            loader,
            eval_batches,
            max_seq,
        } = cfg
            .run_batches(&train, eval.as_ref(), pad_id(model))
            .map_err(js_err)?;
        let total = cfg.total_steps(loader.batches_per_epoch());
        let schedule = cfg.schedule(total).map_err(js_err)?;
        if let Some(c) = &resume {
            if c.state.step >= total {
                return Err(js_err(format!(
                    "the checkpoint is at step {} and the run has {total} steps: nothing left to train",
                    c.state.step
                )));
            }
        }
        let summary = format!(
            "train {}{}",
            train.summary(),
            eval.as_ref()
                .map(|e| format!("; eval {}", e.summary()))
                .unwrap_or_default()
        );
        Ok(RunPlan {
            model: model.clone(),
            lora,
            setup,
            loader,
            eval_batches,
            total,
            schedule,
            max_seq,
            resume,
            summary,
            cfg,
            lose_device_after_steps,
        })
    }

    /// Optimizer steps of the whole run.
    #[wasm_bindgen(getter, js_name = totalSteps)]
    pub fn total_steps(&self) -> u64 {
        self.total
    }

    /// One line per split: rows, examples, tokens, truncation.
    #[wasm_bindgen(getter)]
    pub fn summary(&self) -> String {
        self.summary.clone()
    }

    /// The resolved configuration (JSON).
    #[wasm_bindgen(getter)]
    pub fn config(&self) -> String {
        self.cfg.to_json().to_string()
    }
}

/// The trainer on one of the two engines.
enum Inner {
    Cpu(Box<Trainer<CpuEngine>>),
    Gpu(Box<Trainer<GpuEngine>>),
}

macro_rules! with_trainer {
    ($inner:expr, $t:ident => $body:expr) => {
        match $inner {
            Inner::Cpu($t) => $body,
            Inner::Gpu($t) => $body,
        }
    };
}

/// The trainer's hooks in the browser: collect events for JS and keep due checkpoints as bytes.
struct WebHooks {
    schedule: LrSchedule,
    options: TrainerOptions,
    fingerprint: ModelFingerprint,
    config: Value,
    events: Vec<TrainEvent>,
    pending_checkpoint: Option<Vec<u8>>,
    /// `load_best_model_at_end`: the parameters of the best evaluation so far, kept in memory
    /// (the CLI reads them back from that step's checkpoint folder).
    load_best: bool,
    best_params: Option<(u64, Vec<hone_core::engine::NamedTensor>)>,
}

async fn checkpoint_bytes<E: Engine>(
    engine: &E,
    state: &TrainerState,
    fingerprint: &ModelFingerprint,
    config: &Value,
) -> hone_core::Result<Vec<u8>> {
    BrowserCheckpoint {
        state: state.clone(),
        fingerprint: fingerprint.clone(),
        config: config.clone(),
        params: engine.params().await?,
        optimizer: engine.optimizer_state().await?,
    }
    .to_bytes()
}

impl<E: Engine> TrainerHooks<E> for WebHooks {
    fn lr(&self, step: u64) -> f32 {
        self.schedule.lr_at(step) as f32
    }

    /// Every step ends `Trainer::run` (after its evaluation and checkpoint), so that JS gets
    /// control back between steps.
    fn on_event(&mut self, event: &TrainEvent) -> hone_core::Result<bool> {
        self.events.push(event.clone());
        Ok(!matches!(event, TrainEvent::Step { .. }))
    }

    /// Called after every step (the run stops after each): only the checkpoints `save_steps`,
    /// the last step and early stopping ask for are made.
    async fn save_checkpoint(&mut self, engine: &E, state: &TrainerState) -> hone_core::Result<()> {
        if let Some((best, _)) = state.best.filter(|_| self.load_best) {
            if best == state.step && self.best_params.as_ref().map(|b| b.0) != Some(best) {
                self.best_params = Some((best, engine.params().await?));
            }
        }
        let o = &self.options;
        let early = o.early_stopping_patience > 0
            && state.evals_without_improvement >= o.early_stopping_patience;
        let due = (o.save_steps > 0 && state.step.is_multiple_of(o.save_steps))
            || state.step >= o.max_steps
            || early;
        if due {
            self.pending_checkpoint =
                Some(checkpoint_bytes(engine, state, &self.fingerprint, &self.config).await?);
        }
        Ok(())
    }
}

/// A run in progress.
#[wasm_bindgen]
pub struct WasmRun {
    inner: Inner,
    hooks: WebHooks,
    lora: LoraConfig,
    base_name: String,
    device: String,
    fallback_reason: Option<String>,
    done: bool,
    /// Test hook: the step after which the GPU device is reported lost (only when the run
    /// started before it, so a run resumed from that step's checkpoint goes on).
    lose_device_at: Option<u64>,
}

/// The GPU `device` asks for (`auto`: any WebGPU adapter), or None and why not.
async fn open_gpu(device: &str) -> Result<(Option<Gpu>, Option<String>), JsError> {
    match device {
        "cpu" => Ok((None, Some("the CPU engine was asked for".into()))),
        "gpu" | "auto" => match new_gpu().await {
            Ok(g) => Ok((Some(g), None)),
            Err(e) if device == "auto" => Ok((None, Some(format!("no WebGPU: {e}")))),
            Err(e) => Err(js_err(format!("device gpu: {e} (use device cpu)"))),
        },
        other => Err(js_err(format!(
            "invalid device '{other}': use cpu, gpu or auto"
        ))),
    }
}

/// Any WebGPU adapter. wgpu reaches WebGPU through a page's or a worker's `navigator` and
/// panics where the JS global is neither (Node, for one): that is an error saying so instead.
async fn new_gpu() -> hone_core::Result<Gpu> {
    #[cfg(target_arch = "wasm32")]
    {
        let global = js_sys::global();
        let page_or_worker = ["Window", "WorkerGlobalScope"].iter().any(|k| {
            js_sys::Reflect::get(&global, &JsValue::from_str(k)).is_ok_and(|v| !v.is_undefined())
        });
        if !page_or_worker {
            return Err(hone_core::Error::Invalid(
                "WebGPU is only reachable from a page or a Web Worker, and this JavaScript environment is neither".into(),
            ));
        }
    }
    Gpu::new(&GpuOptions {
        adapter: AdapterChoice::Any,
        ..Default::default()
    })
    .await
}

/// What a trainer starts from, whichever engine it drives.
struct TrainerStart {
    params: Vec<hone_core::engine::NamedTensor>,
    optimizer: Option<hone_core::engine::OptimizerState>,
    state: Option<TrainerState>,
    loader: Loader,
    eval_batches: Vec<Batch>,
    options: TrainerOptions,
}

impl TrainerStart {
    /// Load the parameters (and AdamW state when resuming) into `engine` and wrap it.
    async fn trainer<E: Engine>(self, mut engine: E) -> Result<Trainer<E>, JsError> {
        engine.set_params(&self.params).await.map_err(js_err)?;
        if let Some(o) = &self.optimizer {
            engine.set_optimizer_state(o).await.map_err(js_err)?;
        }
        Trainer::new(
            engine,
            self.loader,
            self.eval_batches,
            self.options,
            self.state,
        )
        .map_err(js_err)
    }
}

/// Open the engine (`device`: cpu, gpu or auto) and start (or resume) the planned run.
#[wasm_bindgen(js_name = startRun)]
pub async fn start_run(plan: RunPlan, device: String) -> Result<WasmRun, JsError> {
    let RunPlan {
        cfg,
        model,
        lora,
        setup,
        loader,
        eval_batches,
        total,
        schedule,
        max_seq,
        resume,
        lose_device_after_steps,
        ..
    } = plan;
    let (params, optimizer, state) = match resume {
        Some(c) => (c.params, Some(c.optimizer), Some(c.state)),
        None => {
            let adapter = LoraAdapter::init(&lora, &model.spec, cfg.seed, Some(&model.weights))
                .map_err(js_err)?;
            (adapter_to_params(&adapter).map_err(js_err)?, None, None)
        }
    };
    let start_step = state.as_ref().map_or(0, |s| s.step);
    let lose_device_at = lose_device_after_steps.filter(|&k| start_step < k);
    let options = cfg.trainer_options(total);
    let start = TrainerStart {
        params,
        optimizer,
        state,
        loader,
        eval_batches,
        options: options.clone(),
    };
    // The page's choice wins over the configuration's `device` (default cpu).
    let device = if device.is_empty() {
        cfg.device.clone()
    } else {
        device
    };
    let (gpu, fallback_reason) = open_gpu(&device).await?;
    let inner = match gpu {
        Some(gpu) => {
            // GpuEngine shares the device through an Arc natively; the browser has one thread.
            #[allow(clippy::arc_with_non_send_sync)]
            let gpu = std::sync::Arc::new(gpu);
            let mut e = GpuEngine::new(
                gpu,
                &model.spec,
                &model.weights,
                setup,
                cfg.adamw(),
                GpuTrainOptions {
                    gradient_checkpointing: cfg.gradient_checkpointing,
                    ..Default::default()
                },
            )
            .map_err(js_err)?;
            e.plan(
                cfg.per_device_train_batch_size
                    .max(cfg.per_device_eval_batch_size),
                max_seq,
            )
            .map_err(js_err)?;
            Inner::Gpu(Box::new(start.trainer(e).await?))
        }
        None => {
            let e = CpuEngine::new(
                &model.spec,
                &model.weights,
                setup,
                cfg.adamw(),
                CpuTrainOptions {
                    gradient_checkpointing: cfg.gradient_checkpointing,
                    dequantize_at_load: cfg.dequantize_at_load,
                    ..Default::default()
                },
            )
            .map_err(js_err)?;
            Inner::Cpu(Box::new(start.trainer(e).await?))
        }
    };
    let device = with_trainer!(&inner, t => t.engine.describe());
    Ok(WasmRun {
        hooks: WebHooks {
            schedule,
            options,
            fingerprint: ModelFingerprint::of_model(&model.spec, &model.weights),
            config: cfg.to_json(),
            events: Vec::new(),
            pending_checkpoint: None,
            load_best: cfg.load_best_model_at_end,
            best_params: None,
        },
        inner,
        lora,
        base_name: cfg.model_name_or_path.clone(),
        device,
        fallback_reason,
        done: false,
        lose_device_at,
    })
}

impl WasmRun {
    /// The best evaluation's parameters, when the run has ended with `load_best_model_at_end`
    /// and they were kept in memory (not when the run was resumed after its best step).
    fn best_kept(&self) -> Option<&[hone_core::engine::NamedTensor]> {
        let best = with_trainer!(&self.inner, t => t.state.best).map(|b| b.0);
        match &self.hooks.best_params {
            Some((kept, p)) if self.done && self.hooks.load_best && best == Some(*kept) => Some(p),
            _ => None,
        }
    }
}

#[wasm_bindgen]
impl WasmRun {
    /// The engine it runs on ("gpu: SwiftShader (...)" or "cpu, 1 thread").
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    /// Why the CPU engine was used, when it was.
    #[wasm_bindgen(getter, js_name = fallbackReason)]
    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback_reason.clone()
    }

    /// Optimizer steps taken.
    #[wasm_bindgen(getter)]
    pub fn step(&self) -> u64 {
        with_trainer!(&self.inner, t => t.state.step)
    }

    /// Optimizer steps of the whole run.
    #[wasm_bindgen(getter, js_name = totalSteps)]
    pub fn total_steps(&self) -> u64 {
        self.hooks.options.max_steps
    }

    /// The run has ended (all steps, or early stopping).
    #[wasm_bindgen(getter)]
    pub fn done(&self) -> bool {
        self.done
    }

    /// Take one optimizer step (with its evaluation and checkpoint when due). Returns JSON
    /// `{events: [...], step, totalSteps, done, stop, checkpoint}` where `events` are the
    /// trainer's (`step`: loss, lr, grad_norm, tokens, input_tokens; `eval`: loss, perplexity).
    #[wasm_bindgen(js_name = trainStep)]
    pub async fn train_step(&mut self) -> Result<String, JsError> {
        if self.done {
            return Err(js_err("the run has ended: start a new one"));
        }
        self.hooks.events.clear();
        if let (Some(k), Inner::Gpu(t)) = (self.lose_device_at, &mut self.inner) {
            if t.state.step >= k {
                t.engine.lose_device_after(0);
                self.lose_device_at = None;
            }
        }
        let hooks = &mut self.hooks;
        let cause = with_trainer!(&mut self.inner, t => t.run(hooks).await).map_err(js_err)?;
        let step = self.step();
        self.done = cause == StopCause::EarlyStopping || step >= self.hooks.options.max_steps;
        Ok(json!({
            "events": self.hooks.events,
            "step": step,
            "totalSteps": self.hooks.options.max_steps,
            "done": self.done,
            "stop": cause,
            "checkpoint": self.hooks.pending_checkpoint.is_some(),
            "adapterFrom": self.adapter_from(),
        })
        .to_string())
    }

    /// Which parameters `adapter` gives: the best evaluation's when the run has ended with
    /// `load_best_model_at_end` (as `hone finetune` saves), else the current ones.
    #[wasm_bindgen(getter, js_name = adapterFrom)]
    pub fn adapter_from(&self) -> String {
        let step = self.step();
        let best = with_trainer!(&self.inner, t => t.state.best);
        match (self.done && self.hooks.load_best, best) {
            (true, Some((b, loss))) if self.best_kept().is_some() => {
                format!("best step {b} (eval loss {loss:.4})")
            }
            (true, Some((b, _))) => format!(
                "step {step}: the best evaluation (step {b}) was before this run was resumed, \
                 and its weights are not kept across a reload"
            ),
            _ => format!("step {step}"),
        }
    }

    /// The checkpoint the last step made (save_steps, the last step), taken out.
    #[wasm_bindgen(js_name = takeCheckpoint)]
    pub fn take_checkpoint(&mut self) -> Option<Vec<u8>> {
        self.hooks.pending_checkpoint.take()
    }

    /// A checkpoint of the run as it stands now (for pause and page unload).
    pub async fn checkpoint(&self) -> Result<Vec<u8>, JsError> {
        let h = &self.hooks;
        with_trainer!(&self.inner, t => checkpoint_bytes(&t.engine, &t.state, &h.fingerprint, &h.config).await)
            .map_err(js_err)
    }

    /// The adapter (PEFT): as it stands, or the best evaluation's (see `adapterFrom`).
    pub async fn adapter(&self) -> Result<WasmAdapter, JsError> {
        let params = match self.best_kept() {
            Some(p) => p.to_vec(),
            None => with_trainer!(&self.inner, t => t.engine.params().await).map_err(js_err)?,
        };
        let adapter =
            params_to_adapter(&self.lora, params, Some(self.base_name.clone())).map_err(js_err)?;
        Ok(WasmAdapter {
            adapter,
            base: self.base_name.clone(),
        })
    }
}

/// Check checkpoint bytes (from OPFS) in full before a resume is offered: JSON
/// `{step}`, or an error saying what is wrong (truncated, foreign, another format version).
#[wasm_bindgen(js_name = checkpointInfo)]
pub fn checkpoint_info(bytes: &[u8]) -> Result<String, JsError> {
    let c = BrowserCheckpoint::from_bytes(bytes).map_err(js_err)?;
    Ok(json!({ "step": c.state.step }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_test_hook_is_taken_out_and_other_unknown_options_are_still_refused() {
        let mut given = options(r#"{"lora_r": 4, "_lose_device_after_steps": 2}"#);
        assert_eq!(take_test_hooks(&mut given), Ok(Some(2)));
        assert_eq!(given, options(r#"{"lora_r": 4}"#));
        assert!(FinetuneConfig::from_layers(&[("finetune options", given)]).is_ok());

        let mut bogus = options(r#"{"_lose_device_after_steps": 1, "_lose_device": 1}"#);
        assert_eq!(take_test_hooks(&mut bogus), Ok(Some(1)));
        let err = FinetuneConfig::from_layers(&[("finetune options", bogus)]).unwrap_err();
        assert!(err.to_string().contains("_lose_device"), "{err}");

        let mut bad = options(r#"{"_lose_device_after_steps": "two"}"#);
        let err = take_test_hooks(&mut bad).unwrap_err();
        assert!(err.contains("must be a step count"), "{err}");
        assert_eq!(take_test_hooks(&mut options("{}")), Ok(None));
    }
}
