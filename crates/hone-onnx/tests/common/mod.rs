//! Helpers shared by hone-onnx's tests: temp folders, the Python with ONNX Runtime, and
//! running one of `scripts/*.py` with a JSON input and output.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hone_core::fixtures::{tiny_gguf_metadata, tiny_spec, tiny_weights, write_model_gguf};
use hone_core::generate::{generate, GenerateOptions};
use hone_core::{Architecture, DType, Model, ModelSpec, TensorEntry, WeightStore};
use hone_cpu::{CpuModel, CpuModelOptions, CpuSession};
use serde_json::Value;

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hone-onnx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn python() -> PathBuf {
    match std::env::var_os("HONE_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "HONE_PYTHON is not set: this test runs the exported model with ONNX Runtime and \
             needs a Python with numpy, onnx, onnxruntime and onnxruntime-genai, as `make \
             pyenv` installs it:\n  make pyenv && HONE_PYTHON=$HOME/.cache/hone/pyenv/bin/python \
             cargo test -p hone-onnx"
        ),
    }
}

/// Run `scripts/{script}` with `args`, then `input` (written as JSON into `dir`) and the
/// output path; returns the output JSON. Panics with the script's output on failure.
pub fn run_script(script: &str, args: &[&Path], input: &Value, dir: &Path) -> Value {
    let (inp, out) = (dir.join("input.json"), dir.join("output.json"));
    std::fs::write(&inp, serde_json::to_vec(input).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let py = python();
    let res = Command::new(&py)
        .arg(&script)
        .args(args)
        .arg(&inp)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("HONE_PYTHON={}: cannot run it: {e}", py.display()));
    if !res.status.success() {
        panic!(
            "{} {} failed ({}):\n{}{}",
            py.display(),
            script.display(),
            res.status,
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
    }
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

/// A tiny model with the tiny GPT-2 tokenizer, written as GGUF and loaded back as hone loads it.
pub fn tiny_model(dir: &Path, architecture: Architecture, dtype: DType, seed: u64) -> Model {
    let vocab = hone_core::tokenizer::tiny_gpt2_metadata()
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array().map(|a| a.len()))
        .unwrap();
    let spec = tiny_spec(architecture, architecture == Architecture::Llama, vocab);
    let weights = tiny_weights(&spec, dtype, seed).unwrap();
    let path = dir.join("tiny.gguf");
    write_model_gguf(&path, &spec, &weights, &tiny_gguf_metadata(&spec, "tiny")).unwrap();
    hone_core::load_model(&path).unwrap()
}

/// hone's greedy ids (with `weights`, e.g. an adapter merged in) for `prompt` (tokenized with special tokens, as `hone generate` does).
pub fn hone_greedy(
    model: &Model,
    weights: &WeightStore,
    prompt: &str,
    max_new_tokens: usize,
) -> (Vec<u32>, Vec<u32>) {
    let ids = model.tokenizer.encode(prompt, true).unwrap();
    let cpu = CpuModel::new(
        &model.spec,
        weights,
        CpuModelOptions {
            dequantize_at_load: false,
        },
    )
    .unwrap();
    let mut session = CpuSession::new(cpu, ids.len() + max_new_tokens);
    let opts = GenerateOptions {
        max_new_tokens,
        eos_ids: model.eos_ids(),
        ..GenerateOptions::default()
    };
    let out = generate(&mut session, &model.tokenizer, &ids, &opts, &mut |_| true).unwrap();
    (ids, out.ids)
}

/// hone-cpu logits (weights dequantized at load) of `prompt` then each `decode` token, one
/// step each: `steps[0]` has a row per prompt position, `steps[1..]` one row each.
pub fn cpu_steps(
    spec: &ModelSpec,
    weights: &WeightStore,
    prompt: &[u32],
    decode: &[u32],
) -> Vec<Vec<Vec<f32>>> {
    let mut model = CpuModel::new(
        spec,
        weights,
        CpuModelOptions {
            dequantize_at_load: true,
        },
    )
    .unwrap();
    let mut cache = model.new_cache(prompt.len() + decode.len() + 1);
    let logits = model.forward(prompt, &mut cache).unwrap();
    let mut steps = vec![(0..logits.rows).map(|r| logits.row(r).to_vec()).collect()];
    for &tok in decode {
        let logits = model.forward(&[tok], &mut cache).unwrap();
        assert_eq!(logits.rows, 1);
        steps.push(vec![logits.row(0).to_vec()]);
    }
    steps
}

/// `weights` as an int4 export stands for them: projections through their 4-bit blocks (see
/// `hone_onnx::int4`).
pub fn int4_rounded(weights: &WeightStore) -> WeightStore {
    use hone_onnx::int4;
    let mut out = weights.clone();
    for (name, t) in out.tensors.iter_mut() {
        if !int4::fits(t) {
            continue;
        }
        if !name.ends_with("_proj.weight") {
            continue;
        }
        let values = int4::quantize(t).unwrap().dequantize();
        *t = TensorEntry::from_f32(name.clone(), t.shape.clone(), &values).unwrap();
    }
    out
}
