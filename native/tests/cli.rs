//! The `hone` binary end to end: generation on the real model, and bad input that must end in
//! one clear line naming the file and the problem (exit code 1, never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hone_core::fixtures::{
    tiny_gguf_metadata, tiny_spec, tiny_weights, write_model_gguf, write_model_hf,
};
use hone_core::gguf::MetaValue;
use hone_core::{load_model, Architecture, DType};

fn hone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(args)
        .output()
        .expect("run hone")
}

fn smollm2_path() -> PathBuf {
    let p = std::env::var("HONE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "{} not found: run `make models` (or set HONE_SMOLLM2_GGUF)",
        p.display()
    );
    p
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny llama written as GGUF (Q8_0) in `dir`.
fn tiny_gguf(dir: &Path, metadata_edit: impl FnOnce(&mut Vec<(String, MetaValue)>)) -> PathBuf {
    let vocab = 368;
    let spec = tiny_spec(Architecture::Llama, true, vocab);
    let weights = tiny_weights(&spec, DType::Q8_0, 7).unwrap();
    let mut meta = tiny_gguf_metadata(&spec, "tiny");
    metadata_edit(&mut meta);
    let path = dir.join("tiny.gguf");
    write_model_gguf(&path, &spec, &weights, &meta).unwrap();
    path
}

/// Runs `hone inspect` on `model` and checks the failure is one line naming `file_part` and
/// containing every `expect` fragment.
fn assert_clear_error(model: &Path, file_part: &str, expect: &[&str]) {
    let out = hone(&["inspect", "-m", model.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(file_part),
        "error does not name {file_part}: {stderr}"
    );
    for e in expect {
        assert!(lines[0].contains(e), "error lacks {e:?}: {stderr}");
    }
}

#[test]
fn generate_on_smollm2_says_paris() {
    let out = hone(&[
        "generate",
        "-m",
        smollm2_path().to_str().unwrap(),
        "-p",
        "The capital of France is",
        "--max_new_tokens",
        "8",
        "--temperature",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("The capital of France is Paris"),
        "got {stdout:?}"
    );
}

#[test]
fn generate_with_chat_template_and_seed_is_reproducible() {
    let dir = temp_dir("chat");
    let model = tiny_gguf(&dir, |_| {});
    let run = || {
        hone(&[
            "generate",
            "-m",
            model.to_str().unwrap(),
            "--chat",
            "-p",
            "hi",
            "--max_new_tokens",
            "12",
            "--temperature",
            "0.9",
            "--top_k",
            "40",
            "--top_p",
            "0.95",
            "--seed",
            "3",
            "-q",
        ])
    };
    let (a, b) = (run(), run());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "same seed, different output");
    assert!(!a.stdout.is_empty());
}

#[test]
fn inspect_prints_spec_tensors_and_tokenizer() {
    let out = hone(&["inspect", "-m", smollm2_path().to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "num_hidden_layers: 30",
        "hidden_size: 576",
        "model.layers.0.self_attn.q_proj.weight",
        "[576, 576]",
        "Q4_1",
        "tokenizer: 49152 tokens",
        "chat template:",
    ] {
        assert!(s.contains(want), "inspect output lacks {want:?}:\n{s}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    assert_clear_error(
        Path::new("/nonexistent/model.gguf"),
        "/nonexistent/model.gguf",
        &["No such file"],
    );
}

#[test]
fn not_a_gguf_is_a_clear_error() {
    let dir = temp_dir("magic");
    let p = dir.join("notes.gguf");
    std::fs::write(&p, b"this is a text file, not a model at all").unwrap();
    assert_clear_error(&p, "notes.gguf", &["not a GGUF"]);
}

#[test]
fn truncated_gguf_is_a_clear_error() {
    let dir = temp_dir("trunc");
    let p = tiny_gguf(&dir, |_| {});
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..200]).unwrap();
    assert_clear_error(&p, "tiny.gguf", &["truncated"]);
}

#[test]
fn tensor_data_past_end_of_file_is_a_clear_error() {
    let dir = temp_dir("pasteof");
    let p = tiny_gguf(&dir, |_| {});
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 4096]).unwrap();
    assert_clear_error(&p, "tiny.gguf", &["blk.1."]);
}

#[test]
fn unsupported_tensor_type_is_named_with_the_supported_list() {
    let dir = temp_dir("qtype");
    let p = tiny_gguf(&dir, |_| {});
    let mut bytes = std::fs::read(&p).unwrap();
    // Patch the type id of `output_norm.weight` (1-d, F32) in the tensor index to Q2_K (10).
    let name = b"output_norm.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    bytes[ty..ty + 4].copy_from_slice(&10u32.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    assert_clear_error(
        &p,
        "tiny.gguf",
        &["output_norm.weight", "Q2_K", "Q4_K", "Q8_0"],
    );
}

#[test]
fn unsupported_architecture_is_named_with_the_supported_list() {
    let dir = temp_dir("arch");
    let p = tiny_gguf(&dir, |meta| {
        for (k, v) in meta.iter_mut() {
            if k == "general.architecture" {
                *v = MetaValue::String("mamba".into());
            }
        }
    });
    assert_clear_error(&p, "tiny.gguf", &["mamba", "llama", "qwen2"]);
}

/// An HF folder of the tiny model, for the folder error cases.
fn tiny_hf(dir: &Path) -> PathBuf {
    let gguf = load_model(&tiny_gguf(dir, |_| {})).unwrap();
    let hf = dir.join("tiny-hf");
    write_model_hf(
        &hf,
        &gguf.spec,
        &gguf.weights,
        &gguf.tokenizer.to_json().unwrap(),
        None,
    )
    .unwrap();
    hf
}

#[test]
fn config_missing_a_field_is_a_clear_error() {
    let dir = temp_dir("config");
    let hf = tiny_hf(&dir);
    let cfg = hf.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&cfg, v.to_string()).unwrap();
    assert_clear_error(&hf, "config.json", &["hidden_size"]);
}

#[test]
fn safetensors_header_that_lies_about_sizes_is_a_clear_error() {
    let dir = temp_dir("lies");
    let hf = tiny_hf(&dir);
    let st = hf.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // Claim model.norm.weight is twice as long as its byte range.
    header["model.norm.weight"]["shape"] = serde_json::json!([512]);
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() < n {
        h.push(b' ');
    }
    assert_eq!(h.len(), n, "patched header must keep its length");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&st, out).unwrap();
    assert_clear_error(&hf, "model.safetensors", &["model.norm.weight"]);
}

#[test]
fn absent_tokenizer_json_is_a_clear_error() {
    let dir = temp_dir("notok");
    let hf = tiny_hf(&dir);
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    assert_clear_error(&hf, "tiny-hf", &["tokenizer.json"]);
}
