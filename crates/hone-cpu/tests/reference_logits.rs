//! The CPU forward against transformers' fp32 forward of the same files
//! (fixtures: scripts/make_logits_fixtures.py), and GGUF vs HF-folder agreement.
//!
//! Tolerance: max |hone - transformers| / max |transformers| over the compared logits.
//! Both sides compute in f32 from identical dequantized weights; they differ only in the order
//! of f32 sums (gemm blocking vs MKL, attention and norm reductions), which over 30 layers
//! leaves ~1e-5 relative. 1e-4 is the bound (the aim); what each case reached is printed.

mod common;

use std::path::{Path, PathBuf};

use hone_core::fixtures::{fnv1a64, tiny_suite, write_model_hf, write_tiny_suite};
use hone_core::safetensors::SafetensorsFile;
use hone_core::{load_model, Model};
use hone_cpu::{CpuModel, CpuModelOptions};

const REL_TOL: f32 = 1e-4;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// All-position logits, [tokens.len() * vocab].
fn logits_all(model: &Model, tokens: &[u32], opts: CpuModelOptions) -> Vec<f32> {
    let mut cpu = CpuModel::new(&model.spec, &model.weights, opts).unwrap();
    let mut cache = cpu.new_cache(tokens.len());
    let l = cpu.forward(tokens, &mut cache).unwrap();
    (0..tokens.len()).flat_map(|i| l.row(i).to_vec()).collect()
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let max_ref = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max_diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(got.iter().all(|x| x.is_finite()), "non-finite logits");
    max_diff / max_ref
}

#[test]
fn smollm2_logits_match_transformers() {
    let model = load_model(&common::smollm2_path()).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("logits/smollm2.json")).unwrap())
            .unwrap();
    let refs = SafetensorsFile::open(fixture("logits/smollm2.safetensors")).unwrap();
    let stride = meta["vocab_stride"].as_u64().unwrap() as usize;
    let vocab = model.spec.vocab_size;
    for (i, p) in meta["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            model.tokenizer.encode(text, true).unwrap(),
            ids,
            "token ids of prompt {i}"
        );
        for opts in [
            CpuModelOptions::default(),
            CpuModelOptions {
                dequantize_at_load: true,
            },
        ] {
            let all = logits_all(&model, &ids, opts);
            let strided: Vec<f32> = (0..ids.len())
                .flat_map(|t| (0..vocab).step_by(stride).map(move |v| (t, v)))
                .map(|(t, v)| all[t * vocab + v])
                .collect();
            let last = &all[(ids.len() - 1) * vocab..];
            let e1 = rel_err(
                &strided,
                &refs.get(&format!("p{i}.strided")).unwrap().to_f32(),
            );
            let e2 = rel_err(last, &refs.get(&format!("p{i}.last")).unwrap().to_f32());
            eprintln!("smollm2 prompt {i} ({opts:?}): rel err all positions (strided vocab) {e1:.2e}, last position {e2:.2e}");
            assert!(
                e1 <= REL_TOL && e2 <= REL_TOL,
                "prompt {i}: {e1:.2e} / {e2:.2e} > {REL_TOL:.0e}"
            );
            assert_eq!(
                hone_core::sampling::argmax(last) as u64,
                p["greedy_next"].as_u64().unwrap()
            );
        }
    }
}

#[test]
fn tiny_models_of_every_tensor_type_match_transformers() {
    let dir = temp_dir("tiny-ref");
    write_tiny_suite(&dir).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("logits/tiny.json")).unwrap())
            .unwrap();
    let refs = SafetensorsFile::open(fixture("logits/tiny.safetensors")).unwrap();
    let models = meta["models"].as_array().unwrap();
    assert_eq!(
        models.len(),
        tiny_suite().len(),
        "fixture and suite disagree: rerun scripts/make_logits_fixtures.py"
    );
    for m in models {
        let file = m["file"].as_str().unwrap();
        let path = dir.join(file);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            fnv1a64(&bytes),
            m["fnv1a64"].as_str().unwrap(),
            "{file}: the tiny-model generator changed; rerun scripts/make_logits_fixtures.py"
        );
        let model = load_model(&path).unwrap();
        for (j, input) in m["inputs"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<u32> = input
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = logits_all(&model, &ids, CpuModelOptions::default());
            let want = refs.get(&format!("{file}.{j}")).unwrap().to_f32();
            let e = rel_err(&got, &want);
            eprintln!("{file} input {j}: rel err {e:.2e}");
            assert!(e <= REL_TOL, "{file} input {j}: {e:.2e} > {REL_TOL:.0e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_and_hf_folder_of_the_same_model_give_the_same_logits() {
    let dir = temp_dir("gguf-vs-hf");
    let cases = write_tiny_suite(&dir).unwrap();
    for (case, _) in cases {
        let gguf = load_model(&dir.join(format!("{}.gguf", case.name))).unwrap();
        let hf_dir = dir.join(format!("{}-hf", case.name));
        let tok_json = gguf.tokenizer.to_json().unwrap();
        write_model_hf(
            &hf_dir,
            &gguf.spec,
            &gguf.weights,
            &tok_json,
            gguf.chat_template.as_deref(),
        )
        .unwrap();
        let hf = load_model(&hf_dir).unwrap();
        assert_eq!(
            hf.spec, gguf.spec,
            "{}: spec differs between GGUF and HF folder",
            case.name
        );
        let text = "Hello, world! 123";
        let ids = gguf.tokenizer.encode(text, true).unwrap();
        assert_eq!(
            hf.tokenizer.encode(text, true).unwrap(),
            ids,
            "{}: token ids differ",
            case.name
        );
        let a = logits_all(&gguf, &ids, CpuModelOptions::default());
        let b = logits_all(&hf, &ids, CpuModelOptions::default());
        let e = rel_err(&a, &b);
        assert!(
            e <= 1e-6,
            "{}: GGUF vs HF folder rel err {e:.2e}",
            case.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// HF folders saved by transformers itself: bf16 weights + llama3 rope scaling + untied head
/// (llama), and q/k/v biases + tied head (qwen2). No tokenizer there: spec and weights only.
#[test]
fn hf_folders_saved_by_transformers_match_its_logits() {
    let input: Vec<u32> = (0..40u32).map(|i| (7 * i + 3) % 128).collect();
    let refs = SafetensorsFile::open(fixture("logits/hf.safetensors")).unwrap();
    for name in ["hf-tiny-llama", "hf-tiny-qwen2"] {
        let dir = fixture(name);
        let spec = hone_core::hf::read_config(&dir).unwrap();
        let weights = hone_core::hf::read_weights(&dir).unwrap();
        let mut cpu = CpuModel::new(&spec, &weights, CpuModelOptions::default()).unwrap();
        let mut cache = cpu.new_cache(input.len());
        let l = cpu.forward(&input, &mut cache).unwrap();
        let got: Vec<f32> = (0..input.len()).flat_map(|i| l.row(i).to_vec()).collect();
        let e = rel_err(&got, &refs.get(name).unwrap().to_f32());
        eprintln!("{name}: rel err {e:.2e}");
        assert!(e <= REL_TOL, "{name}: {e:.2e} > {REL_TOL:.0e}");
    }
}
