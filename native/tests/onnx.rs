//! `hone auto-opt` end to end: the files it writes, ONNX Runtime GenAI generating from the
//! `--use_ort_genai` folder as `hone generate` does, and the clear errors for bad input.
//! (Numerics against ONNX Runtime in detail are hone-onnx's tests.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hone_core::fixtures::{tiny_gguf_metadata, tiny_spec, tiny_weights, write_model_gguf};
use hone_core::gguf::MetaValue;
use hone_core::{Architecture, DType};

fn hone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(args)
        .output()
        .expect("run hone")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-onnx-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn python() -> PathBuf {
    PathBuf::from(std::env::var_os("HONE_PYTHON").expect(
        "HONE_PYTHON must name a Python with onnxruntime and onnxruntime-genai (make pyenv)",
    ))
}

/// A tiny llama with the tiny GPT-2 tokenizer as GGUF; `edit` changes its metadata.
fn tiny_gguf(dir: &Path, edit: impl FnOnce(&mut Vec<(String, MetaValue)>)) -> PathBuf {
    let spec = tiny_spec(Architecture::Llama, true, 368);
    let weights = tiny_weights(&spec, DType::Q8_0, 4).unwrap();
    let mut meta = tiny_gguf_metadata(&spec, "tiny");
    edit(&mut meta);
    let path = dir.join("tiny.gguf");
    write_model_gguf(&path, &spec, &weights, &meta).unwrap();
    path
}

fn auto_opt(model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "auto-opt",
        "-m",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    hone(&args)
}

/// Asserts a failure with one `error:` line containing every fragment.
fn assert_clear_error(o: &Output, expect: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
}

#[test]
fn auto_opt_writes_the_decoder_and_refuses_to_overwrite() {
    let dir = temp_dir("write");
    let model = tiny_gguf(&dir, |_| {});
    let out = dir.join("onnx");
    let first = auto_opt(&model, &out, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let bytes = std::fs::read(out.join("model.onnx")).unwrap();
    // fp32 weights: at least the embedding's 368 x 256 floats.
    assert!(bytes.len() > 368 * 256 * 4, "{} bytes", bytes.len());
    assert!(!out.join("genai_config.json").exists());
    assert_clear_error(
        &auto_opt(&model, &out, &[]),
        &["onnx", "not empty", "--overwrite"],
    );
    assert!(auto_opt(&model, &out, &["--overwrite"]).status.success());
    assert_clear_error(
        &auto_opt(&model, &out, &["--precision", "fp8", "--overwrite"]),
        &["--precision fp8", "fp32, fp16 or int4"],
    );
    // int4: MatMulNBits blocks, well under half the fp32 file.
    let o = auto_opt(&model, &out, &["--precision", "int4", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let int4 = std::fs::read(out.join("model.onnx")).unwrap();
    assert!(
        int4.len() * 2 < bytes.len(),
        "{} vs {}",
        int4.len(),
        bytes.len()
    );
    assert!(int4.windows(11).any(|w| w == b"MatMulNBits"));
    assert_clear_error(
        &auto_opt(&model, &out, &["--device", "npu", "--overwrite"]),
        &["--device npu"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_opt_names_an_unsupported_architecture() {
    let dir = temp_dir("arch");
    let model = tiny_gguf(&dir, |meta| {
        for (k, v) in meta.iter_mut() {
            if k == "general.architecture" {
                *v = MetaValue::String("gemma3".into());
            }
        }
    });
    let out = dir.join("onnx");
    assert_clear_error(&auto_opt(&model, &out, &[]), &["gemma3", "llama", "qwen2"]);
    assert!(!out.join("model.onnx").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--use_ort_genai`: onnxruntime-genai loads the folder (our genai_config.json, tokenizer.json,
/// tokenizer_config.json) and greedy-generates the text `hone generate` prints.
#[test]
fn ort_genai_generates_what_hone_generate_prints() {
    let dir = temp_dir("genai");
    let model = tiny_gguf(&dir, |_| {});
    let out = dir.join("onnx");
    let o = auto_opt(&model, &out, &["--use_ort_genai"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "model.onnx",
        "genai_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let tok_cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tok_cfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("im_start"));
    let prompt = "the cat";
    let n = 8;
    let input = serde_json::json!({"max_new_tokens": n, "runs": [{"prompt": prompt}]});
    let inp = dir.join("in.json");
    let res = dir.join("out.json");
    std::fs::write(&inp, input.to_string()).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/hone-onnx/scripts/genai_check.py");
    let py = Command::new(python())
        .arg(&script)
        .arg(&out)
        .arg(&inp)
        .arg(&res)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", stderr(&py));
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    let genai_ids: Vec<u64> = got["runs"][0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(!genai_ids.is_empty());
    let gen = hone(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        prompt,
        "--max_new_tokens",
        &n.to_string(),
        "--temperature",
        "0",
        "-q",
    ]);
    assert!(gen.status.success(), "{}", stderr(&gen));
    let printed = String::from_utf8(gen.stdout).unwrap();
    let want = printed.strip_suffix('\n').unwrap();
    // hone prints the prompt, then the text of the new ids (special tokens skipped).
    let loaded = hone_core::load_model(&model).unwrap();
    let ids: Vec<u32> = genai_ids.iter().map(|&i| i as u32).collect();
    let genai_text = loaded.tokenizer.decode(&ids, true).unwrap();
    assert_eq!(format!("{prompt}{genai_text}"), want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PEFT adapter for `spec` with random A and B (PEFT's init leaves B at zero), saved in `dir`.
fn random_peft(dir: &Path, spec: &hone_core::ModelSpec, r: usize, targets: &[&str], seed: u64) {
    let config = hone_core::adapter::LoraConfig {
        r,
        lora_alpha: 2.0 * r as f64,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };
    let mut adapter = hone_core::adapter::LoraAdapter::init(&config, spec, seed, None).unwrap();
    let mut rng = hone_core::fixtures::SplitMix64(seed);
    for t in adapter.tensors.values_mut() {
        for v in t.values.iter_mut() {
            *v = rng.symmetric(0.3);
        }
    }
    adapter.save_peft(dir, "tiny").unwrap();
}

fn run_genai(dir: &Path, folder: &Path, input: serde_json::Value) -> serde_json::Value {
    let (inp, res) = (dir.join("in.json"), dir.join("out.json"));
    std::fs::write(&inp, input.to_string()).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/hone-onnx/scripts/genai_check.py");
    let py = Command::new(python())
        .arg(&script)
        .arg(folder)
        .arg(&inp)
        .arg(&res)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", stderr(&py));
    serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap()
}

/// `auto-opt --lora_inputs` + `generate-adapter`: two adapters on one exported base, each
/// switched in through onnxruntime-genai's adapter API, generate what `hone generate --adapter`
/// prints; bad adapters are refused naming the tensor.
#[test]
fn generate_adapter_files_switch_adapters_in_ort_genai() {
    let dir = temp_dir("multi");
    let model = tiny_gguf(&dir, |_| {});
    let spec = hone_core::load_model(&model).unwrap().spec;
    let (a1, a2) = (dir.join("tone"), dir.join("style"));
    random_peft(&a1, &spec, 4, &["q_proj", "v_proj", "down_proj"], 1);
    random_peft(&a2, &spec, 8, &["q_proj", "v_proj"], 2);
    let out = dir.join("onnx");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let o = auto_opt(
        &model,
        &out,
        &[
            "--adapter_path",
            &s(&a1),
            "--lora_inputs",
            "--use_ort_genai",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("adapter_weights.onnx_adapter").exists());
    let adapters = dir.join("adapters");
    let gen_adapters = |paths: &str, extra: &[&str]| {
        let mut args = vec![
            "generate-adapter",
            "--base_model_path",
            out.to_str().unwrap(),
            "--adapter_paths",
            paths,
            "--output_path",
            adapters.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        hone(&args)
    };
    let o = gen_adapters(&format!("{},{}", s(&a1), s(&a2)), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(adapters.join("tone.onnx_adapter")).unwrap(),
        std::fs::read(out.join("adapter_weights.onnx_adapter")).unwrap()
    );
    let prompt = "the cat";
    let n = 8;
    let got = run_genai(
        &dir,
        &out,
        serde_json::json!({
            "max_new_tokens": n,
            "adapters": {
                "tone": adapters.join("tone.onnx_adapter"),
                "style": adapters.join("style.onnx_adapter"),
            },
            "runs": [
                {"prompt": prompt, "adapter": "tone"},
                {"prompt": prompt, "adapter": "style"},
                {"prompt": prompt},
            ],
        }),
    );
    let tokenizer = hone_core::load_model(&model).unwrap().tokenizer;
    let mut texts = Vec::new();
    for (i, adapter) in [Some(&a1), Some(&a2), None].iter().enumerate() {
        let ids: Vec<u32> = got["runs"][i]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let genai_text = tokenizer.decode(&ids, true).unwrap();
        let mut args = vec![
            "generate".to_string(),
            "-m".into(),
            s(&model),
            "-p".into(),
            prompt.into(),
            "--max_new_tokens".into(),
            n.to_string(),
            "--temperature".into(),
            "0".into(),
            "-q".into(),
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter".into(), s(a)]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let gen = hone(&argv);
        assert!(gen.status.success(), "{}", stderr(&gen));
        let printed = String::from_utf8(gen.stdout).unwrap();
        assert_eq!(
            format!("{prompt}{genai_text}\n"),
            printed,
            "run {i} ({adapter:?})"
        );
        texts.push(printed);
    }
    assert!(texts[0] != texts[1] && texts[1] != texts[2], "{texts:?}");

    // Bad input, each one clear line.
    assert_clear_error(
        &gen_adapters(&s(&a1), &[]),
        &["tone.onnx_adapter", "exists", "--overwrite"],
    );
    let other = dir.join("other");
    random_peft(&other, &spec, 4, &["o_proj"], 3);
    assert_clear_error(
        &gen_adapters(&s(&other), &[]),
        &[
            "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight",
            "has no input",
        ],
    );
    let plain = dir.join("plain");
    assert!(auto_opt(&model, &plain, &[]).status.success());
    let o = hone(&[
        "generate-adapter",
        "--base_model_path",
        plain.to_str().unwrap(),
        "--adapter_paths",
        &s(&a1),
        "--output_path",
        dir.join("x").to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["no LoRA weights as inputs", "--lora_inputs"]);
    assert_clear_error(
        &auto_opt(&model, &dir.join("y"), &["--lora_inputs"]),
        &["--lora_inputs needs --adapter_path"],
    );
    // An adapter trained on another model (wider MLP), given to auto-opt: merged or as inputs.
    let mut wide = spec.clone();
    wide.intermediate_size = 384;
    let foreign = dir.join("foreign");
    random_peft(&foreign, &wide, 4, &["down_proj"], 5);
    for extra in [&["--lora_inputs"][..], &[][..]] {
        let mut args = vec!["--adapter_path", foreign.to_str().unwrap()];
        args.extend_from_slice(extra);
        assert_clear_error(
            &auto_opt(&model, &dir.join("z"), &args),
            &["foreign", "mlp.down_proj.lora_A.weight"],
        );
    }
    assert!(!dir.join("z/model.onnx").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
