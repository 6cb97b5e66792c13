//! Multi-adapter export: LoRA weights as graph inputs with zero defaults, `.onnx_adapter` files
//! that onnxruntime's `AdapterFormat` reads back tensor for tensor, and two adapters switched
//! per request on one session (onnxruntime `add_active_adapter`, onnxruntime-genai
//! `set_active_adapter`) giving each adapter's own logits and tokens, checked against hone's CPU
//! engine on the merged weights.

mod common;

use std::path::Path;

use common::{cpu_steps, hone_greedy, int4_rounded, run_script, temp_dir, tiny_model};
use hone_core::adapter::{LoraAdapter, LoraConfig};
use hone_core::fixtures::{tiny_spec, SplitMix64};
use hone_core::{Architecture, DType, Model, ModelSpec, WeightStore};
use hone_onnx::adapter::{adapter_params, check_params_fit, write_onnx_adapter, LoraInputs};
use hone_onnx::proto::read_graph_inputs;
use hone_onnx::{write_decoder, write_genai_files, ExportOptions, Precision};
use serde_json::{json, Value};

/// Tolerance on |onnx - cpu| relative to the max |logit| of a run.
const REL_TOL: f32 = 1e-4;
const PROMPT: &str = "the cat sat on the mat";
const DECODE_ID: u32 = 77;

/// An adapter for `spec` with random A and B (PEFT's init leaves B at zero: no effect).
fn random_adapter(
    spec: &ModelSpec,
    r: usize,
    alpha: f64,
    targets: &[&str],
    rslora: bool,
    seed: u64,
) -> LoraAdapter {
    let config = LoraConfig {
        r,
        lora_alpha: alpha,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        use_rslora: rslora,
        ..LoraConfig::default()
    };
    let mut adapter = LoraAdapter::init(&config, spec, seed, None).unwrap();
    let mut rng = SplitMix64(seed);
    for t in adapter.tensors.values_mut() {
        for v in t.values.iter_mut() {
            *v = rng.symmetric(0.3);
        }
    }
    adapter
}

/// hone-cpu logits of the prompt's positions then one decode step, for `weights`.
fn cpu_logits(spec: &ModelSpec, weights: &WeightStore, prompt: &[u32]) -> Vec<Vec<f32>> {
    cpu_steps(spec, weights, prompt, &[DECODE_ID]).concat()
}

/// Worst |got - want| relative to max |want|.
fn rel_diff(got: &Value, want: &[Vec<f32>]) -> f32 {
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let max_ref = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let mut diff = 0f32;
    for (g, w) in got.iter().zip(want) {
        let g = g.as_array().unwrap();
        assert_eq!(g.len(), w.len());
        for (gv, wv) in g.iter().zip(w) {
            diff = diff.max((gv.as_f64().unwrap() as f32 - wv).abs());
        }
    }
    diff / max_ref
}

struct Setup {
    dir: std::path::PathBuf,
    model: Model,
    /// The base weights the export stands for (int4: through its blocks).
    reference: WeightStore,
    adapters: Vec<(&'static str, LoraAdapter)>,
}

/// A tiny llama exported with the first adapter's LoRA inputs (q, v, down at rank 4), and two
/// adapters: rank 4 on q/v/down, and rank 8 rsLoRA on q/v only (its down_proj inputs keep the
/// zero defaults), written as `.onnx_adapter` files into `dir`.
fn setup(name: &str) -> Setup {
    setup_with(name, DType::F32, Precision::Fp32)
}

/// [`setup`] with base weights of `dtype` exported at `precision`.
fn setup_with(name: &str, dtype: DType, precision: Precision) -> Setup {
    let dir = temp_dir(name);
    let model = tiny_model(&dir, Architecture::Llama, dtype, 5);
    let a1 = random_adapter(
        &model.spec,
        4,
        8.0,
        &["q_proj", "v_proj", "down_proj"],
        false,
        1,
    );
    let a2 = random_adapter(&model.spec, 8, 16.0, &["q_proj", "v_proj"], true, 2);
    let mut opts = ExportOptions::default();
    opts.precision = precision;
    opts.lora = Some(LoraInputs::for_adapter(&a1, &model.spec).unwrap());
    let out = dir.join("onnx");
    std::fs::create_dir_all(&out).unwrap();
    write_decoder(&out.join("model.onnx"), &model.spec, &model.weights, &opts).unwrap();
    let inputs = read_graph_inputs(&std::fs::read(out.join("model.onnx")).unwrap()).unwrap();
    let adapters = vec![("a1", a1), ("a2", a2)];
    for (n, a) in &adapters {
        let params = adapter_params(a).unwrap();
        check_params_fit(&params, &inputs, &out.join("model.onnx"), Path::new(n)).unwrap();
        write_onnx_adapter(&dir.join(format!("{n}.onnx_adapter")), &params).unwrap();
    }
    let reference = match precision {
        Precision::Int4 => int4_rounded(&model.weights),
        _ => model.weights.clone(),
    };
    Setup {
        dir,
        model,
        reference,
        adapters,
    }
}

#[test]
fn onnxruntime_reads_adapters_back_and_switches_them_per_run() {
    check_ort_adapters(setup("adapters_ort"));
}

#[test]
fn int4_base_with_lora_inputs_switches_adapters() {
    // Q4_0 base weights kept as MatMulNBits blocks, LoRA on top in fp32: hone-cpu merges the
    // adapters into the dequantized weights, which is the same function.
    check_ort_adapters(setup_with("adapters_int4", DType::Q4_0, Precision::Int4));
}

fn check_ort_adapters(s: Setup) {
    let spec = &s.model.spec;
    let prompt = s.model.tokenizer.encode(PROMPT, true).unwrap();
    let input = json!({
        "num_layers": spec.num_hidden_layers,
        "num_kv_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "prompt": prompt,
        "decode": DECODE_ID,
        "adapters": {
            "a1": s.dir.join("a1.onnx_adapter"),
            "a2": s.dir.join("a2.onnx_adapter"),
        },
        "runs": [null, "a1", "a2", "a1", null],
    });
    let got = run_script(
        "adapter_check.py",
        &[&s.dir.join("onnx/model.onnx")],
        &input,
        &s.dir,
    );

    // Read back: the same names, shapes and values (f32 exactly).
    for (n, a) in &s.adapters {
        let back = &got["adapters"][n];
        assert_eq!(back["format_version"], 1);
        let params = adapter_params(a).unwrap();
        let read = back["params"].as_object().unwrap();
        assert_eq!(read.len(), params.len(), "{n}: parameter count");
        for p in &params {
            let t = &read[&p.name];
            let dims: Vec<i64> = t["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            assert_eq!(dims, p.dims, "{n} {}", p.name);
            let values: Vec<f32> = t["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(values, p.values, "{n} {}", p.name);
        }
    }

    // Each run's logits against hone-cpu on the base / merged weights.
    let base = cpu_logits(spec, &s.reference, &prompt);
    let merged: Vec<Vec<Vec<f32>>> = s
        .adapters
        .iter()
        .map(|(_, a)| {
            let (mspec, mw) = a.merge_into(spec, &s.reference).unwrap();
            cpu_logits(&mspec, &mw, &prompt)
        })
        .collect();
    let runs = got["runs"].as_array().unwrap();
    for (i, want) in [&base, &merged[0], &merged[1], &merged[0], &base]
        .iter()
        .enumerate()
    {
        let rel = rel_diff(&runs[i], want);
        eprintln!("run {i}: relative difference {rel:.3e}");
        assert!(rel <= REL_TOL, "run {i}: {rel:.3e} > {REL_TOL}");
    }
    // The adapters matter: their logits are far from the base's and from each other's.
    for (a, b) in [
        (&base, &merged[0]),
        (&base, &merged[1]),
        (&merged[0], &merged[1]),
    ] {
        let d = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d > 1e-2, "an adapter barely changes the logits ({d})");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn ort_genai_switches_adapters_per_generator() {
    let s = setup("adapters_genai");
    let out = s.dir.join("onnx");
    write_genai_files(&out, &s.model, "model.onnx").unwrap();
    let n = 10;
    let input = json!({
        "max_new_tokens": n,
        "adapters": {
            "a1": s.dir.join("a1.onnx_adapter"),
            "a2": s.dir.join("a2.onnx_adapter"),
        },
        "runs": [
            {"prompt": PROMPT},
            {"prompt": PROMPT, "adapter": "a1"},
            {"prompt": PROMPT, "adapter": "a2"},
            {"prompt": PROMPT, "adapter": "a1"},
        ],
    });
    let got = run_script("genai_check.py", &[&out], &input, &s.dir);
    let eos = s.model.eos_ids();
    let weights: Vec<WeightStore> = std::iter::once(s.model.weights.clone())
        .chain(
            s.adapters
                .iter()
                .map(|(_, a)| a.merge_into(&s.model.spec, &s.model.weights).unwrap().1),
        )
        .collect();
    let mut seen = Vec::new();
    for (i, w) in [0usize, 1, 2, 1].iter().enumerate() {
        let (_, want) = hone_greedy(&s.model, &weights[*w], PROMPT, n);
        let mut ids: Vec<u32> = got["runs"][i]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        if ids.last().is_some_and(|id| eos.contains(id)) {
            ids.pop();
        }
        eprintln!("run {i}: hone {want:?} genai {ids:?}");
        assert_eq!(ids, want, "run {i}");
        seen.push(ids);
    }
    assert!(
        seen[0] != seen[1] && seen[1] != seen[2],
        "adapters should change the greedy tokens: {seen:?}"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn adapter_for_another_model_names_the_tensor() {
    let s = setup("adapters_mismatch");
    let model_path = s.dir.join("onnx/model.onnx");
    let inputs = read_graph_inputs(&std::fs::read(&model_path).unwrap()).unwrap();
    // Another model: a wider MLP, so down_proj's A has other input features.
    let mut other = tiny_spec(Architecture::Llama, true, s.model.spec.vocab_size);
    other.intermediate_size = 384;
    let wide = random_adapter(&other, 4, 8.0, &["down_proj"], false, 3);
    let err = check_params_fit(
        &adapter_params(&wide).unwrap(),
        &inputs,
        &model_path,
        Path::new("wide"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"),
        "{err}"
    );
    assert!(err.contains("another model"), "{err}");
    // Other target modules: o_proj has no inputs in this export.
    let o = random_adapter(&s.model.spec, 4, 8.0, &["o_proj"], false, 4);
    let err = check_params_fit(
        &adapter_params(&o).unwrap(),
        &inputs,
        &model_path,
        Path::new("o"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("self_attn.o_proj.lora_A.weight"), "{err}");
    assert!(err.contains("has no input"), "{err}");
    // A model without LoRA inputs.
    let plain = s.dir.join("plain.onnx");
    write_decoder(
        &plain,
        &s.model.spec,
        &s.model.weights,
        &ExportOptions::default(),
    )
    .unwrap();
    let plain_inputs = read_graph_inputs(&std::fs::read(&plain).unwrap()).unwrap();
    let err = check_params_fit(
        &adapter_params(&o).unwrap(),
        &plain_inputs,
        &plain,
        Path::new("o"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--lora_inputs"), "{err}");
    let _ = std::fs::remove_dir_all(&s.dir);
}
