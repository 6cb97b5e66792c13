//! Export tiny Llama (tied) and Qwen2 (untied, q/k/v biases) models, run them with ONNX Runtime
//! through `scripts/onnx_check.py` (the Python named by `HONE_PYTHON`, with numpy, onnx and
//! onnxruntime), and compare every step's logits with hone-cpu's.

mod common;

use std::path::Path;

use common::{cpu_steps, int4_rounded, run_script, temp_dir};
use hone_core::fixtures::{tiny_spec, tiny_weights};
use hone_core::{Architecture, DType, Error, ModelSpec, TensorEntry, WeightStore};
use hone_onnx::{export_decoder, write_decoder, ExportOptions, Precision};
use serde_json::{json, Value};

/// Tolerance on |onnx - cpu| relative to the step's max |logit|.
const REL_TOL: f32 = 1e-4;

const PROMPT: [u32; 7] = [1, 72, 101, 108, 250, 44, 32];
const SHORT_PROMPT: [u32; 4] = [5, 200, 17, 33];
/// Decode tokens for the two batch rows, one step each.
const DECODE: [[u32; 2]; 3] = [[119, 3], [111, 64], [299, 0]];

struct Case {
    name: &'static str,
    prompts: Vec<Vec<u32>>,
    decode: Vec<Vec<u32>>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "single",
            prompts: vec![PROMPT.to_vec()],
            decode: DECODE.iter().map(|d| vec![d[0]]).collect(),
        },
        Case {
            name: "left_padded_batch",
            prompts: vec![PROMPT.to_vec(), SHORT_PROMPT.to_vec()],
            decode: DECODE.iter().map(|d| d.to_vec()).collect(),
        },
    ]
}

/// hone-cpu logits per row of a case: steps[s][b] = rows of vocab logits.
fn reference(spec: &ModelSpec, weights: &WeightStore, case: &Case) -> Vec<Vec<Vec<Vec<f32>>>> {
    let mut steps: Vec<Vec<Vec<Vec<f32>>>> = vec![Vec::new(); 1 + case.decode.len()];
    for (b, prompt) in case.prompts.iter().enumerate() {
        let decode: Vec<u32> = case.decode.iter().map(|toks| toks[b]).collect();
        for (s, rows) in cpu_steps(spec, weights, prompt, &decode)
            .into_iter()
            .enumerate()
        {
            steps[s].push(rows);
        }
    }
    steps
}

fn run_onnx(model: &Path, spec: &ModelSpec, dir: &Path) -> Value {
    let input = json!({
        "num_layers": spec.num_hidden_layers,
        "num_kv_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "pad_id": 0,
        "cases": cases().iter().map(|c| json!({
            "name": c.name, "prompts": c.prompts, "decode": c.decode,
        })).collect::<Vec<_>>(),
    });
    run_script("onnx_check.py", &[model], &input, dir)
}

/// Export, run with ONNX Runtime, compare; returns the worst relative difference.
fn check_model(name: &str, spec: &ModelSpec, weights: &WeightStore) -> f32 {
    check_export(
        name,
        spec,
        weights,
        &ExportOptions::default(),
        weights,
        REL_TOL,
    )
    .0
}

/// Export `weights` with `opts`, run with ONNX Runtime, compare with hone-cpu on `reference_weights`
/// within `tol`; returns the worst relative difference and the file size.
fn check_export(
    name: &str,
    spec: &ModelSpec,
    weights: &WeightStore,
    opts: &ExportOptions,
    reference_weights: &WeightStore,
    tol: f32,
) -> (f32, u64) {
    let dir = temp_dir(name);
    let path = dir.join("model.onnx");
    write_decoder(&path, spec, weights, opts).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let onnx = run_onnx(&path, spec, &dir);
    let mut worst = 0f32;
    for (ci, case) in cases().iter().enumerate() {
        let want = reference(spec, reference_weights, case);
        let got = &onnx["cases"][ci]["steps"];
        for (s, rows_b) in want.iter().enumerate() {
            for (b, rows) in rows_b.iter().enumerate() {
                let got_rows = got[s][b].as_array().expect("onnx rows");
                assert_eq!(got_rows.len(), rows.len(), "{name} {} step {s}", case.name);
                let max_ref = rows
                    .iter()
                    .flatten()
                    .fold(0f32, |m, &v| m.max(v.abs()))
                    .max(1e-6);
                let mut max_diff = 0f32;
                for (r, row) in rows.iter().enumerate() {
                    let g = got_rows[r].as_array().expect("onnx row");
                    assert_eq!(g.len(), spec.vocab_size);
                    for (v, gv) in row.iter().zip(g) {
                        let gv = gv.as_f64().expect("number") as f32;
                        max_diff = max_diff.max((v - gv).abs());
                    }
                }
                let rel = max_diff / max_ref;
                eprintln!(
                    "{name} {} step {s} row {b}: max |diff| {max_diff:.3e}, max |logit| \
                     {max_ref:.3}, relative {rel:.3e}",
                    case.name
                );
                assert!(
                    rel <= tol,
                    "{name} {} step {s} batch row {b}: max |onnx - cpu| = {max_diff} is \
                     {rel:.3e} of max |logit| {max_ref} (tolerance {tol})",
                    case.name
                );
                worst = worst.max(rel);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    (worst, size)
}

fn int4_options() -> ExportOptions {
    let mut opts = ExportOptions::default();
    opts.precision = Precision::Int4;
    opts
}

#[test]
fn int4_from_gguf_q4_blocks_matches_cpu_on_the_same_blocks() {
    // Q4_0 (llama) and Q4_1 (qwen2, biases) blocks go into MatMulNBits as they are: ONNX
    // Runtime must give hone-cpu's logits on the very same quantized weights.
    for (arch, dtype, name) in [
        (Architecture::Llama, DType::Q4_0, "int4_q4_0"),
        (Architecture::Qwen2, DType::Q4_1, "int4_q4_1"),
    ] {
        let spec = tiny_spec(arch, arch == Architecture::Llama, 300);
        let weights = tiny_weights(&spec, dtype, 13).unwrap();
        let rounded = int4_rounded(&weights);
        let (worst, int4_size) =
            check_export(name, &spec, &weights, &int4_options(), &rounded, REL_TOL);
        let fp32_size = export_decoder(&spec, &weights, &ExportOptions::default())
            .unwrap()
            .len() as u64;
        eprintln!(
            "{name}: worst relative difference {worst:.3e}, {int4_size} bytes (fp32 {fp32_size})"
        );
        assert!(int4_size * 2 < fp32_size, "{int4_size} vs fp32 {fp32_size}");
    }
}

#[test]
fn int4_from_f32_matches_cpu_on_the_rounded_weights() {
    let spec = tiny_spec(Architecture::Llama, false, 300);
    let weights = tiny_weights(&spec, DType::F32, 17).unwrap();
    let rounded = int4_rounded(&weights);
    let (worst, _) = check_export(
        "int4_f32",
        &spec,
        &weights,
        &int4_options(),
        &rounded,
        REL_TOL,
    );
    eprintln!("int4 from f32 vs rounded weights: {worst:.3e}");
    // Against the unrounded f32 model: 4-bit rounding of uniform random weights moves the
    // logits by up to ~15% of their largest value here (stated tolerance 30%).
    let (lossy, _) = check_export(
        "int4_f32_vs_f32",
        &spec,
        &weights,
        &int4_options(),
        &weights,
        0.3,
    );
    eprintln!("int4 from f32 vs f32 weights: {lossy:.3e}");
    assert!(
        lossy > worst,
        "rounding should show against the f32 weights"
    );
}

#[test]
fn llama_tied_matches_cpu() {
    let spec = tiny_spec(Architecture::Llama, true, 300);
    let weights = tiny_weights(&spec, DType::F32, 7).unwrap();
    let worst = check_model("llama_tied", &spec, &weights);
    eprintln!("llama_tied worst relative difference {worst:.3e}");
}

#[test]
fn qwen2_untied_with_biases_matches_cpu() {
    let spec = tiny_spec(Architecture::Qwen2, false, 300);
    assert!(spec.has_qkv_bias());
    let weights = tiny_weights(&spec, DType::F32, 11).unwrap();
    let worst = check_model("qwen2_untied", &spec, &weights);
    eprintln!("qwen2_untied worst relative difference {worst:.3e}");
}

#[test]
fn quantized_weights_are_dequantized() {
    // Q8_0 weights: the export dequantizes with to_f32, hone-cpu uses the same values.
    let spec = tiny_spec(Architecture::Llama, false, 300);
    let weights = tiny_weights(&spec, DType::Q8_0, 3).unwrap();
    let worst = check_model("llama_q8_0", &spec, &weights);
    eprintln!("llama_q8_0 worst relative difference {worst:.3e}");
}

#[test]
fn rejects_unsupported_activation_naming_it() {
    let mut spec = tiny_spec(Architecture::Llama, true, 300);
    let weights = tiny_weights(&spec, DType::F32, 1).unwrap();
    spec.hidden_act = "gelu".into();
    let err = export_decoder(&spec, &weights, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidField { .. }), "{err}");
    assert!(err.to_string().contains("gelu"), "{err}");
}

#[test]
fn rejects_missing_weight_naming_it() {
    let spec = tiny_spec(Architecture::Llama, true, 300);
    let mut weights = tiny_weights(&spec, DType::F32, 1).unwrap();
    weights.tensors.remove("model.layers.1.mlp.up_proj.weight");
    let err = export_decoder(&spec, &weights, &ExportOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn write_is_atomic_and_leaves_no_temp_file() {
    let spec = tiny_spec(Architecture::Llama, true, 300);
    let weights = tiny_weights(&spec, DType::F32, 1).unwrap();
    let dir = temp_dir("atomic");
    let path = dir.join("m.onnx");
    write_decoder(&path, &spec, &weights, &ExportOptions::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes,
        export_decoder(&spec, &weights, &ExportOptions::default()).unwrap()
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.onnx")]);
    // A folder that does not exist: an I/O error naming the path, no panic.
    let err = write_decoder(
        &dir.join("missing/m.onnx"),
        &spec,
        &weights,
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mha_with_llama3_rope_scaling_matches_cpu() {
    // No GQA repeat (kv heads == heads) and scaled RoPE frequencies.
    let mut spec = tiny_spec(Architecture::Llama, true, 300);
    spec.num_key_value_heads = spec.num_attention_heads;
    spec.rope_scaling = Some(hone_core::RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    });
    let weights = tiny_weights(&spec, DType::F32, 5).unwrap();
    let worst = check_model("llama_mha_rope_scaled", &spec, &weights);
    eprintln!("llama_mha_rope_scaled worst relative difference {worst:.3e}");
}

/// A real model (GGUF file or HF folder) named by `HONE_ONNX_REAL_MODEL`, e.g.
/// SmolLM2-135M-Instruct.Q4_1.gguf: run with
/// `HONE_ONNX_REAL_MODEL=PATH cargo test -p hone-onnx -- --ignored`.
#[test]
#[ignore = "needs HONE_ONNX_REAL_MODEL (a GGUF file or HF folder)"]
fn real_model_matches_cpu() {
    let path = std::env::var_os("HONE_ONNX_REAL_MODEL")
        .expect("HONE_ONNX_REAL_MODEL must name a GGUF file or HF folder for this test");
    let model = hone_core::load_model(Path::new(&path)).unwrap();
    let worst = check_model("real", &model.spec, &model.weights);
    eprintln!("real model worst relative difference {worst:.3e}");
}

#[test]
fn fp16_weights_match_cpu_on_the_rounded_weights() {
    // Weights stored as fp16 and cast to fp32 in the graph: ONNX Runtime must give hone-cpu's
    // logits on the same weights rounded to fp16; the file is about half the fp32 one.
    let spec = tiny_spec(Architecture::Qwen2, false, 300);
    let weights = tiny_weights(&spec, DType::F32, 19).unwrap();
    let mut rounded = weights.clone();
    for (name, t) in rounded.tensors.iter_mut() {
        let v: Vec<f32> = t
            .to_f32()
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        *t = TensorEntry::from_f32(name.clone(), t.shape.clone(), &v).unwrap();
    }
    let mut opts = ExportOptions::default();
    opts.precision = Precision::Fp16;
    let (worst, size) = check_export("fp16", &spec, &weights, &opts, &rounded, REL_TOL);
    let fp32 = export_decoder(&spec, &weights, &ExportOptions::default())
        .unwrap()
        .len() as u64;
    eprintln!("fp16: worst relative difference {worst:.3e}, {size} bytes (fp32 {fp32})");
    assert!(size * 10 < fp32 * 6, "{size} vs fp32 {fp32}");
}

/// The real model with `--precision int4` (SmolLM2's Q4_1 projections kept as blocks):
/// `HONE_ONNX_REAL_MODEL=PATH cargo test -p hone-onnx -- --ignored`.
#[test]
#[ignore = "needs HONE_ONNX_REAL_MODEL (a GGUF file or HF folder)"]
fn real_model_int4_matches_cpu() {
    let path = std::env::var_os("HONE_ONNX_REAL_MODEL")
        .expect("HONE_ONNX_REAL_MODEL must name a GGUF file or HF folder for this test");
    let model = hone_core::load_model(Path::new(&path)).unwrap();
    let rounded = int4_rounded(&model.weights);
    let (worst, size) = check_export(
        "real_int4",
        &model.spec,
        &model.weights,
        &int4_options(),
        &rounded,
        REL_TOL,
    );
    eprintln!("real model int4: worst relative difference {worst:.3e}, {size} bytes");
}
