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
        &["--precision fp8"],
    );
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
