//! hone's core compiled to wasm32 and run in Node (wasm-bindgen-test-runner; no
//! `run_in_browser`): the CPU forward of the tiny model suite against transformers' logits, a
//! fine-tuning run through the page's API (`RunPlan` / `startRun` on device "cpu") against the
//! same run driven through hone-core's `Trainer` directly, exact resume from a browser
//! checkpoint, and bad input through the facade ending in errors that name what is wrong.
//!
//! There is no filesystem here: models are built in memory (the same bytes
//! `fixtures::write_tiny_suite` writes, checked by the fixture's fnv1a64) and the reference
//! logits are compiled in.
#![cfg(target_arch = "wasm32")]

use std::path::Path;

use hone_core::adapter::LoraAdapter;
use hone_core::data::{parse_dataset, DataFormat, Dataset};
use hone_core::engine::Engine;
use hone_core::finetune::{
    adapter_to_params, lora_setup, pad_id, params_to_adapter, FinetuneConfig, RunBatches, SplitData,
};
use hone_core::fixtures::{
    fnv1a64, random_lora_adapter, tiny_gguf_metadata, tiny_spec, tiny_suite, tiny_weights,
};
use hone_core::gguf::GgufTensorView;
use hone_core::gguf::{encode_gguf, hf_to_gguf_name, permute_rows_for_gguf, rope_permute_heads};
use hone_core::safetensors::SafetensorsFile;
use hone_core::schedule::LrSchedule;
use hone_core::trainer::{TrainEvent, Trainer, TrainerHooks};
use hone_core::{Architecture, Bytes, DType, Model, ModelSpec, WeightStore};
use hone_cpu::train::{CpuEngine, CpuTrainOptions};
use hone_cpu::{CpuModel, CpuModelOptions};
use hone_wasm::{start_run, RunPlan, WasmAdapter, WasmDataset, WasmModel};
use serde_json::{json, Map, Value};
use wasm_bindgen::{JsError, JsValue};
use wasm_bindgen_test::{console_log, wasm_bindgen_test};

/// The native test's bound (crates/hone-cpu/tests/reference_logits.rs).
const REL_TOL: f32 = 1e-4;

/// The message of a facade error.
fn message(e: JsError) -> String {
    let v: JsValue = e.into();
    String::from(js_sys::Error::from(v).message())
}

/// The value, or a panic with the facade's message.
fn ok<T>(r: Result<T, JsError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {}", message(e)))
}

/// The facade's error message, or a panic when the call succeeded.
fn err<T>(r: Result<T, JsError>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what}: expected an error, the call succeeded"),
        Err(e) => message(e),
    }
}

fn assert_names(msg: &str, parts: &[&str]) {
    console_log!("error: {msg}");
    for p in parts {
        assert!(msg.contains(p), "error does not name '{p}': {msg}");
    }
}

/// Vocabulary of the tiny tokenizer.
fn tiny_vocab() -> usize {
    hone_core::tokenizer::tiny_gpt2_metadata()
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array().map(|a| a.len()))
        .expect("tiny tokenizer vocabulary")
}

/// The bytes of a GGUF file of `weights` (HF names), as `fixtures::write_model_gguf` writes them.
fn gguf_bytes(spec: &ModelSpec, weights: &WeightStore, name: &str) -> Vec<u8> {
    let owned: Vec<(String, Vec<usize>, DType, Vec<u8>)> = weights
        .tensors
        .values()
        .map(|t| {
            let data = match rope_permute_heads(spec, &t.name) {
                Some(n_head) => permute_rows_for_gguf(t.data.as_slice(), t.n_rows(), n_head)
                    .expect("permute rows"),
                None => t.data.as_slice().to_vec(),
            };
            let gname = hf_to_gguf_name(&t.name).expect("GGUF name");
            (gname, t.shape.clone(), t.dtype, data)
        })
        .collect();
    let views: Vec<GgufTensorView<'_>> = owned
        .iter()
        .map(|(n, s, d, b)| GgufTensorView::new(n, s, *d, b))
        .collect();
    encode_gguf(&tiny_gguf_metadata(spec, name), &views).expect("encode GGUF")
}

/// The suite's model `file` (`<case>.gguf`), built as `write_tiny_suite` builds it.
fn suite_model_bytes(file: &str) -> Vec<u8> {
    let (i, case) = tiny_suite()
        .into_iter()
        .enumerate()
        .find(|(_, c)| format!("{}.gguf", c.name) == file)
        .unwrap_or_else(|| panic!("{file} is not in the tiny suite"));
    let spec = tiny_spec(case.architecture, case.tied, tiny_vocab());
    let weights = tiny_weights(&spec, case.dtype, 1000 + i as u64).expect("tiny weights");
    gguf_bytes(&spec, &weights, &case.name)
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|x| x.is_finite()), "non-finite logits");
    let max_ref = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max_diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    max_diff / max_ref
}

/// 1. The wasm CPU forward of a float, a quantized and a qwen2 model of the suite equals
/// transformers' (tests/fixtures/logits, the same fixture the native test reads).
#[wasm_bindgen_test]
fn tiny_models_match_transformers_in_wasm() {
    let meta: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/logits/tiny.json")).unwrap();
    let refs = SafetensorsFile::from_bytes(
        "tiny.safetensors",
        Bytes::from_vec(include_bytes!("../../../tests/fixtures/logits/tiny.safetensors").to_vec()),
    )
    .expect("reference logits");
    let wanted = [
        "tiny-llama-f32.gguf",
        "tiny-llama-q4_k.gguf",
        "tiny-llama-untied-q8_0.gguf",
        "tiny-qwen2-f32.gguf",
        "tiny-qwen2-q4_k.gguf",
    ];
    let models = meta["models"].as_array().unwrap();
    for file in wanted {
        let m = models
            .iter()
            .find(|m| m["file"] == file)
            .unwrap_or_else(|| panic!("{file} is not in tests/fixtures/logits/tiny.json"));
        let bytes = suite_model_bytes(file);
        assert_eq!(
            fnv1a64(&bytes),
            m["fnv1a64"].as_str().unwrap(),
            "{file}: the in-memory model differs from the fixture's file"
        );
        // The facade's loader, then the same function underneath it for the weights.
        let wasm_model = ok(WasmModel::from_gguf(bytes.clone(), file), file);
        let info: Value = serde_json::from_str(&wasm_model.info()).unwrap();
        assert_eq!(info["name"], file);
        let model =
            hone_core::model::load_gguf_bytes(Bytes::from_vec(bytes), Path::new(file)).unwrap();
        assert_eq!(
            info["architecture"],
            model.spec.architecture.model_type(),
            "{file}"
        );
        for (j, input) in m["inputs"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<u32> = serde_json::from_value(input.clone()).unwrap();
            let mut cpu =
                CpuModel::new(&model.spec, &model.weights, CpuModelOptions::default()).unwrap();
            let mut cache = cpu.new_cache(ids.len());
            let l = cpu.forward(&ids, &mut cache).unwrap();
            let got: Vec<f32> = (0..ids.len()).flat_map(|i| l.row(i).to_vec()).collect();
            let want = refs.get(&format!("{file}.{j}")).unwrap().to_f32();
            let e = rel_err(&got, &want);
            console_log!("{file} input {j}: rel err {e:.2e}");
            assert!(e <= REL_TOL, "{file} input {j}: {e:.2e} > {REL_TOL:.0e}");
        }
    }
}

/// A tiny llama (Q8_0) in memory.
fn tiny_model_bytes(seed: u64) -> Vec<u8> {
    let spec = tiny_spec(Architecture::Llama, true, tiny_vocab());
    let weights = tiny_weights(&spec, DType::Q8_0, seed).unwrap();
    gguf_bytes(&spec, &weights, "tiny")
}

/// 24 rows `{"q": .., "a": ..}` with a learnable mapping.
fn dataset_jsonl() -> String {
    let words = ["red", "green", "blue", "black", "white", "pink"];
    (0..24)
        .map(|i| {
            let label = if i % 2 == 0 { "even" } else { "odd" };
            format!(
                "{{\"q\": \"{} {i}\", \"a\": \"{label}\"}}\n",
                words[i % words.len()]
            )
        })
        .collect()
}

const MODEL_NAME: &str = "tiny.gguf";
const DATA_NAME: &str = "rows.jsonl";

fn run_options() -> Value {
    json!({
        "text_template": "{q} = {a}",
        "train_split": "train[:20]",
        "eval_split": "train[20:]",
        "lora_r": 4,
        "lora_dropout": 0.1,
        "learning_rate": 0.01,
        "per_device_train_batch_size": 3,
        "gradient_accumulation_steps": 2,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 2,
        "eval_steps": 3,
        "save_steps": 4,
        "max_steps": 8,
        "seed": 11,
    })
}

/// The train and eval losses of a run's events, in order.
#[derive(Debug, Default, PartialEq)]
struct Losses {
    train: Vec<f64>,
    eval: Vec<f64>,
}

impl Losses {
    fn record(&mut self, event: &TrainEvent) {
        self.record_json(&serde_json::to_value(event).unwrap());
    }
    fn record_json(&mut self, event: &Value) {
        let loss = event["loss"].as_f64();
        match event["event"].as_str() {
            Some("step") => self.train.push(loss.unwrap()),
            Some("eval") => self.eval.push(loss.unwrap()),
            _ => {}
        }
    }
}

/// The schedule as the hooks of `hone finetune` and of the page give it.
struct DirectHooks {
    schedule: LrSchedule,
    losses: Losses,
}

impl<E: Engine> TrainerHooks<E> for DirectHooks {
    fn lr(&self, step: u64) -> f32 {
        self.schedule.lr_at(step) as f32
    }
    fn on_event(&mut self, event: &TrainEvent) -> hone_core::Result<bool> {
        self.losses.record(event);
        Ok(true)
    }
}

/// What the direct run gives: the final and the initial adapter (PEFT safetensors bytes), the
/// resolved configuration and the losses.
struct Direct {
    adapter: Vec<u8>,
    init: Vec<u8>,
    config: Value,
    losses: Losses,
}

/// The same run through hone-core and the CPU engine directly, as `hone finetune` builds it.
async fn direct_run(model: &Model, dataset: &Dataset, options: &Value) -> Direct {
    let mut defaults = Map::new();
    defaults.insert("model_name_or_path".into(), MODEL_NAME.into());
    defaults.insert("data_name".into(), DATA_NAME.into());
    defaults.insert("output_path".into(), "browser".into());
    defaults.insert("report_to".into(), json!(["none"]));
    let given = options.as_object().unwrap().clone();
    let cfg = FinetuneConfig::from_layers(&[("defaults", defaults), ("finetune options", given)])
        .unwrap();
    cfg.validate().unwrap();
    let lora = cfg.lora_config().unwrap();
    let setup = lora_setup(&lora, &model.spec).unwrap();
    let data_opts = cfg.data_options().unwrap();
    let split = |s: &str, max| SplitData::build(dataset, s, max, &data_opts, model).unwrap();
    let train = split(&cfg.train_split, cfg.max_samples);
    let eval = (cfg.eval_split.as_deref()).map(|s| split(s, cfg.max_eval_samples));
    let RunBatches {
        loader,
        eval_batches,
        ..
    } = cfg
        .run_batches(&train, eval.as_ref(), pad_id(model))
        .unwrap();
    let total = cfg.total_steps(loader.batches_per_epoch());
    let init = LoraAdapter::init(&lora, &model.spec, cfg.seed, Some(&model.weights)).unwrap();
    let mut engine = CpuEngine::new(
        &model.spec,
        &model.weights,
        setup,
        cfg.adamw(),
        CpuTrainOptions::default(),
    )
    .unwrap();
    engine
        .set_params(&adapter_to_params(&init).unwrap())
        .await
        .unwrap();
    let mut trainer = Trainer::new(
        engine,
        loader,
        eval_batches,
        cfg.trainer_options(total),
        None,
    )
    .unwrap();
    let mut hooks = DirectHooks {
        schedule: cfg.schedule(total).unwrap(),
        losses: Losses::default(),
    };
    trainer.run(&mut hooks).await.unwrap();
    assert_eq!(trainer.state.step, total);
    let params = trainer.engine.params().await.unwrap();
    let adapter = params_to_adapter(&lora, params, Some(MODEL_NAME.into())).unwrap();
    Direct {
        adapter: adapter.to_peft_bytes(MODEL_NAME).unwrap().1,
        init: init.to_peft_bytes(MODEL_NAME).unwrap().1,
        config: cfg.to_json(),
        losses: hooks.losses,
    }
}

/// Step `run` until it is done or has taken `until` steps; the losses.
async fn steps(run: &mut hone_wasm::WasmRun, until: u64) -> Losses {
    let mut losses = Losses::default();
    while !run.done() && run.step() < until {
        let out: Value = serde_json::from_str(&ok(run.train_step().await, "trainStep")).unwrap();
        out["events"]
            .as_array()
            .unwrap()
            .iter()
            .for_each(|e| losses.record_json(e));
        assert_eq!(out["step"], run.step());
        assert_eq!(out["done"], run.done());
    }
    losses
}

/// The adapter of `run` (PEFT safetensors bytes).
async fn adapter_bytes(run: &hone_wasm::WasmRun) -> Vec<u8> {
    ok(
        ok(run.adapter().await, "adapter").safetensors(),
        "safetensors",
    )
}

/// 2. A run in wasm on the CPU engine through the page's API: the loss falls, the losses and
/// the adapter are bit-identical to the same run driven through hone-core's Trainer, and the
/// run interrupted (a checkpoint at step 3, the one save_steps makes at step 4) and resumed
/// from the checkpoint bytes ends on the same adapter.
#[wasm_bindgen_test]
async fn browser_run_on_cpu_equals_the_trainer_and_resumes_exactly() {
    let bytes = tiny_model_bytes(7);
    let data = dataset_jsonl();
    let options = run_options().to_string();
    let model = ok(WasmModel::from_gguf(bytes.clone(), MODEL_NAME), "model");
    let dataset = ok(
        WasmDataset::parse(data.as_bytes(), DATA_NAME, None),
        "dataset",
    );
    assert_eq!(dataset.rows(), 24);

    let plan = ok(RunPlan::new(&model, &dataset, &options, None), "plan");
    assert_eq!(plan.total_steps(), 8);
    let plan_config = plan.config();
    let mut run = ok(start_run(plan, "cpu".into()).await, "startRun");
    assert!(run.device().starts_with("cpu"), "{}", run.device());
    let losses = steps(&mut run, u64::MAX).await;
    assert!(run.done());
    console_log!("losses {losses:?}");
    let train = &losses.train;
    assert_eq!(train.len(), 8);
    assert_eq!(losses.eval.len(), 3, "eval at steps 3, 6 and 8");
    assert!(
        train[6..].iter().sum::<f64>() < train[..2].iter().sum::<f64>() * 0.9,
        "the train loss did not fall: {train:?}"
    );
    assert!(
        losses.eval[2] < losses.eval[0],
        "the eval loss did not fall: {:?}",
        losses.eval
    );
    let adapter = ok(run.adapter().await, "adapter");
    let wasm_bytes = ok(adapter.safetensors(), "safetensors");
    let config: Value = serde_json::from_slice(&ok(adapter.config_json(), "configJson")).unwrap();
    assert_eq!(config["base_model_name_or_path"], MODEL_NAME);
    assert_eq!(config["r"], 4);
    let again = ok(
        WasmAdapter::from_peft(&ok(adapter.config_json(), "configJson"), wasm_bytes.clone()),
        "fromPeft of the run's adapter",
    );
    assert!(ok(again.safetensors(), "safetensors") == wasm_bytes);

    // The same run through hone-core's Trainer and hone-cpu's engine directly.
    let core_model =
        hone_core::model::load_gguf_bytes(Bytes::from_vec(bytes.clone()), Path::new(MODEL_NAME))
            .unwrap();
    let core_data = parse_dataset(data.as_bytes(), DATA_NAME, DataFormat::Jsonl).unwrap();
    let direct = direct_run(&core_model, &core_data, &run_options()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&plan_config).unwrap(),
        direct.config,
        "the page resolved another configuration"
    );
    assert_eq!(losses, direct.losses, "losses differ from the Trainer's");
    assert!(
        wasm_bytes == direct.adapter,
        "the page's adapter differs from the Trainer's"
    );
    assert!(wasm_bytes != direct.init, "the adapter did not change");

    // Interrupted: paused at step 3 (`checkpoint`), and the checkpoint save_steps made at 4.
    let plan = ok(RunPlan::new(&model, &dataset, &options, None), "plan");
    let mut first = ok(start_run(plan, "cpu".into()).await, "startRun");
    assert_eq!(steps(&mut first, 3).await.train[..], train[..3]);
    let ckpt3 = ok(first.checkpoint().await, "checkpoint");
    assert!(
        first.take_checkpoint().is_none(),
        "no checkpoint is due at step 3"
    );
    steps(&mut first, 4).await;
    let ckpt4 = first
        .take_checkpoint()
        .expect("save_steps 4: a checkpoint at step 4");
    drop(first);
    for (k, ckpt) in [(3, &ckpt3), (4, &ckpt4)] {
        let plan = ok(
            RunPlan::new(&model, &dataset, &options, Some(ckpt.clone())),
            "resumed plan",
        );
        let mut resumed = ok(start_run(plan, "cpu".into()).await, "resumed startRun");
        assert_eq!(resumed.step(), k);
        let tail = steps(&mut resumed, u64::MAX).await;
        assert_eq!(
            tail.train[..],
            train[k as usize..],
            "train losses after step {k}"
        );
        assert!(
            adapter_bytes(&resumed).await == wasm_bytes,
            "resumed at step {k}, the run ended on another adapter"
        );
        assert_names(
            &err(resumed.train_step().await, "step after the end"),
            &["ended"],
        );
    }

    // A checkpoint cut short, and one of another model.
    assert_names(
        &err(
            RunPlan::new(
                &model,
                &dataset,
                &options,
                Some(ckpt3[..ckpt3.len() - 5].to_vec()),
            ),
            "truncated checkpoint",
        ),
        &["checkpoint", "truncated"],
    );
    let other = ok(
        WasmModel::from_gguf(tiny_model_bytes(8), "other.gguf"),
        "other model",
    );
    assert_names(
        &err(
            RunPlan::new(&other, &dataset, &options, Some(ckpt3)),
            "checkpoint of another model",
        ),
        &["other.gguf"],
    );
}

/// 3. Bad input through the facade: errors name the file, the row and field, the tensor, the
/// option.
#[wasm_bindgen_test]
async fn bad_input_gets_errors_that_name_it() {
    let bytes = tiny_model_bytes(7);
    // A GGUF cut short, and something that is not a GGUF.
    let cut = bytes[..bytes.len() / 2].to_vec();
    assert_names(
        &err(WasmModel::from_gguf(cut, "half.gguf"), "truncated GGUF"),
        &["half.gguf", "truncated"],
    );
    assert_names(
        &err(
            WasmModel::from_gguf(b"PK\x03\x04 a zip file".to_vec(), "archive.gguf"),
            "not a GGUF",
        ),
        &["archive.gguf", "not a GGUF"],
    );
    let model = ok(WasmModel::from_gguf(bytes, MODEL_NAME), "model");

    // A row without the template's field: the file, its line and the field are named.
    let rows = [
        r#"{"q": "red 1", "a": "odd"}"#,
        r#"{"q": "blue 2", "a": "even"}"#,
        r#"{"q": "pink 3", "answer": "odd"}"#,
    ]
    .join("\n");
    let dataset = ok(
        WasmDataset::parse(rows.as_bytes(), DATA_NAME, None),
        "dataset",
    );
    let config = json!({"text_template": "{q} = {a}"}).to_string();
    let good: Value =
        serde_json::from_str(&ok(dataset.preview(&model, &config, 2), "preview")).unwrap();
    assert_eq!(good.as_array().unwrap().len(), 2, "{good}");
    assert_eq!(good[1]["line"], 2, "{good}");
    let preview = err(dataset.preview(&model, &config, 10), "preview");
    assert_names(&preview, &[DATA_NAME, "line 3", "'a'"]);
    let plan = err(RunPlan::new(&model, &dataset, &config, None), "plan");
    assert_names(&plan, &[DATA_NAME, "line 3", "'a'"]);

    // Unknown option names: finetune and generate options, and the device.
    let unknown = err(
        RunPlan::new(&model, &dataset, r#"{"lora_rank": 4}"#, None),
        "unknown option",
    );
    assert_names(&unknown, &["lora_rank"]);
    let names: Vec<String> = serde_json::from_str(&hone_wasm::option_names()).unwrap();
    assert!(names.iter().any(|n| n == "lora_r"), "{names:?}");
    let defaults: Value = serde_json::from_str(&hone_wasm::default_config()).unwrap();
    assert!(defaults.get("lora_r").is_some(), "{defaults}");
    let on_text = js_sys::Function::new_no_args("return true");
    assert_names(
        &err(
            model.generate("red 1 =", r#"{"max_tokens": 3}"#, &on_text),
            "unknown generate option",
        ),
        &["max_tokens"],
    );
    let one_step = json!({"text_template": "{q}", "max_steps": 1}).to_string();
    let plan = ok(RunPlan::new(&model, &dataset, &one_step, None), "plan");
    assert_names(
        &err(start_run(plan, "tpu".into()).await, "unknown device"),
        &["tpu"],
    );

    // Node has no WebGPU: "auto" falls back to the CPU engine and says why, "gpu" is an error.
    let plan = ok(RunPlan::new(&model, &dataset, &one_step, None), "plan");
    let auto = ok(start_run(plan, "auto".into()).await, "auto device");
    assert!(auto.device().starts_with("cpu"), "{}", auto.device());
    let reason = auto.fallback_reason().expect("a fallback reason");
    assert_names(&reason, &["WebGPU"]);
    let plan = ok(RunPlan::new(&model, &dataset, &one_step, None), "plan");
    assert_names(
        &err(start_run(plan, "gpu".into()).await, "gpu device"),
        &["device gpu", "use device cpu"],
    );

    // An adapter made for another model shape: the tensor that does not fit is named.
    let mut spec = tiny_spec(Architecture::Llama, true, tiny_vocab());
    spec.intermediate_size = 384;
    let foreign = random_lora_adapter(&spec, 4, &["down_proj"], 5, 0.01).unwrap();
    let (config_json, weights) = foreign.to_peft_bytes("another-model").unwrap();
    let adapter = ok(WasmAdapter::from_peft(&config_json, weights), "fromPeft");
    let shape = err(
        model.generate_with_adapter(&adapter, "red 1 =", r#"{"max_new_tokens": 2}"#, &on_text),
        "adapter of another shape",
    );
    assert_names(&shape, &["layers.0.mlp.down_proj.lora_A", "[4, 384]"]);

    // A callback that throws ends generation with its message (not a dump of the JS value).
    let throws = js_sys::Function::new_no_args("throw new Error('stop here')");
    let thrown = err(
        model.generate("red 1 =", r#"{"max_new_tokens": 2}"#, &throws),
        "throwing callback",
    );
    assert_eq!(thrown, "the generate callback threw: stop here");

    // The callback gets every piece of the generated text.
    let pieces = js_sys::Array::new();
    let collect = js_sys::Function::new_with_args("p", "this.push(p); return true");
    let collect = collect.bind0(&pieces);
    let text = ok(
        model.generate("red 1 =", r#"{"max_new_tokens": 6}"#, &collect),
        "generate",
    );
    assert!(pieces.length() > 0, "no piece reached the callback");
    let joined: String = pieces.iter().filter_map(|p| p.as_string()).collect();
    assert_eq!(joined, text);
}

/// `load_best_model_at_end` in the page: a run whose eval loss is best before the last step
/// (a learning rate high enough to overshoot) ends with the best evaluation's adapter, the one
/// it had at that step, and says so; without the option the adapter is the last step's.
#[wasm_bindgen_test]
async fn load_best_model_at_end_gives_the_best_evaluations_adapter() {
    let model = ok(
        WasmModel::from_gguf(tiny_model_bytes(7), MODEL_NAME),
        "model",
    );
    let data = dataset_jsonl();
    let dataset = ok(
        WasmDataset::parse(data.as_bytes(), DATA_NAME, None),
        "dataset",
    );
    let mut options = run_options();
    options["learning_rate"] = json!(0.3);
    options["lr_scheduler_type"] = json!("constant");
    options["eval_steps"] = json!(1);
    options["max_steps"] = json!(5);
    options["load_best_model_at_end"] = json!(true);
    let plan = ok(
        RunPlan::new(&model, &dataset, &options.to_string(), None),
        "plan",
    );
    let mut run = ok(start_run(plan, "cpu".into()).await, "startRun");
    let mut by_step = Vec::new();
    let mut evals = Vec::new();
    while !run.done() {
        let out: Value = serde_json::from_str(&ok(run.train_step().await, "trainStep")).unwrap();
        for e in out["events"].as_array().unwrap() {
            if e["event"] == "eval" {
                evals.push(e["loss"].as_f64().unwrap());
            }
        }
        if !run.done() {
            assert_eq!(run.adapter_from(), format!("step {}", run.step()));
            by_step.push(adapter_bytes(&run).await);
        } else {
            by_step.push(Vec::new()); // the last step's adapter is read below
        }
    }
    let (best_i, best) =
        evals.iter().enumerate().fold(
            (0, f64::INFINITY),
            |b, (i, &l)| if l < b.1 { (i, l) } else { b },
        );
    console_log!("eval losses {evals:?}: best at step {}", best_i + 1);
    assert!(
        best_i + 1 < evals.len(),
        "the best evaluation is the last step's: {evals:?} (raise the learning rate)"
    );
    assert_eq!(
        run.adapter_from(),
        format!("best step {} (eval loss {best:.4})", best_i + 1)
    );
    let end = adapter_bytes(&run).await;
    assert!(end == by_step[best_i], "not the best step's adapter");

    // Without the option: the last step's adapter, not the best one's.
    options["load_best_model_at_end"] = json!(false);
    let plan = ok(
        RunPlan::new(&model, &dataset, &options.to_string(), None),
        "plan",
    );
    let mut last = ok(start_run(plan, "cpu".into()).await, "startRun");
    steps(&mut last, u64::MAX).await;
    assert_eq!(last.adapter_from(), "step 5");
    let last_bytes = adapter_bytes(&last).await;
    assert!(
        last_bytes != end,
        "the last step's adapter equals the best one's"
    );
}
