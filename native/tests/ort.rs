//! `hone generate --engine ort`: generation through ONNX Runtime (the real library, 1.31.1 from
//! PyPI, `make ort-lib`) on models exported by `hone auto-opt`, checked against hone's CPU
//! engine; and every way it can be set up wrong, each one clear line (exit code 1, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hone_core::fixtures::{tiny_gguf_metadata, tiny_spec, tiny_weights, write_model_gguf};
use hone_core::{Architecture, DType};

/// The ONNX Runtime library the Makefile fetched (ORT_DYLIB_PATH).
fn ort_lib() -> PathBuf {
    let p = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .expect("ORT_DYLIB_PATH is not set: run `make ort-lib` and set it (make test does both)");
    assert!(p.is_file(), "{} not found: run `make ort-lib`", p.display());
    p
}

/// `hone` with `ORT_DYLIB_PATH` set to `lib` (or removed when `None`).
fn hone_with_lib(lib: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hone"));
    cmd.args(args);
    match lib {
        Some(l) => cmd.env("ORT_DYLIB_PATH", l),
        None => cmd.env_remove("ORT_DYLIB_PATH"),
    };
    cmd.output().expect("run hone")
}

fn hone(args: &[&str]) -> Output {
    hone_with_lib(Some(&ort_lib()), args)
}

/// `hone generate --engine ort -p hi -m MODEL --tokenizer TOKENIZER EXTRA...`.
fn ort_hi(model: &Path, tokenizer: &Path, extra: &[&str]) -> Vec<String> {
    let head = ["generate", "--engine", "ort", "-p", "hi", "-m"].map(String::from);
    head.into_iter()
        .chain([
            model.display().to_string(),
            "--tokenizer".into(),
            tokenizer.display().to_string(),
        ])
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-ort-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "hone failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A tiny random llama (GQA, f32) as GGUF in `dir`, exported by `hone auto-opt` to `dir/onnx`.
fn tiny_export(dir: &Path) -> (PathBuf, PathBuf) {
    let spec = tiny_spec(Architecture::Llama, true, 368);
    // q/k scaled up: sharp attention, so the text depends on positions and the cache.
    let base = tiny_weights(&spec, DType::F32, 11).unwrap();
    let mut weights = hone_core::WeightStore::new("<tiny sharp model>");
    for (name, t) in &base.tensors {
        let mut v = t.to_f32();
        if name.contains("q_proj.weight") || name.contains("k_proj.weight") {
            v.iter_mut().for_each(|x| *x *= 6.0);
        }
        weights
            .insert(hone_core::TensorEntry::from_f32(name.clone(), t.shape.clone(), &v).unwrap());
    }
    let gguf = dir.join("tiny.gguf");
    write_model_gguf(&gguf, &spec, &weights, &tiny_gguf_metadata(&spec, "tiny")).unwrap();
    let onnx = dir.join("onnx");
    let args = [
        "auto-opt",
        "-m",
        gguf.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
    ];
    stdout_ok(&hone(&args));
    (gguf, onnx)
}

/// The error of a failed run: exit code 1, one line, no panic, containing every `expect`.
fn assert_clear_error(out: &Output, expect: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "expected exit code 1: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for e in expect {
        assert!(lines[0].contains(e), "error lacks {e:?}: {stderr}");
    }
    stderr
}

const PROMPT: &str = "hello world, the";

fn smollm2_path() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("HONE_SMOLLM2_GGUF").expect(
        "HONE_SMOLLM2_GGUF is not set: run `make models` and set it (make test does both)",
    ));
    assert!(p.is_file(), "{} not found: run `make models`", p.display());
    p
}

/// The real model (SmolLM2-135M, Q4_1 GGUF exported to fp32 ONNX): greedy, sampled and
/// penalised text through ONNX Runtime equals the CPU engine's, token for token.
#[test]
fn generation_through_ort_equals_the_cpu_engine_on_smollm2() {
    let dir = temp_dir("smollm2");
    let gguf = smollm2_path();
    let onnx = dir.join("onnx");
    let (g, o) = (gguf.to_str().unwrap(), onnx.to_str().unwrap());
    stdout_ok(&hone(&["auto-opt", "-m", g, "-o", o]));
    for sampling in [
        &["--temperature", "0"][..],
        &[
            "--temperature",
            "0.8",
            "--top_k",
            "40",
            "--top_p",
            "0.95",
            "--seed",
            "7",
        ][..],
        &["--temperature", "0", "--repetition_penalty", "1.3"][..],
    ] {
        let prompt = "The capital of France is";
        let common = [
            &["-p", prompt, "--max_new_tokens", "24", "-q"][..],
            sampling,
        ]
        .concat();
        let cpu = stdout_ok(&hone(&[&["generate", "-m", g][..], &common].concat()));
        let ort_args = [
            &[
                "generate",
                "--engine",
                "ort",
                "--ep",
                "cpu",
                "-m",
                o,
                "--tokenizer",
                g,
            ][..],
            &common,
        ]
        .concat();
        let ort = stdout_ok(&hone(&ort_args));
        assert!(cpu.len() > prompt.len() + 5, "too little text: {cpu:?}");
        assert_eq!(ort, cpu, "ort and the CPU engine differ with {sampling:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_json_in_the_onnx_folder_is_used_and_the_stats_line_names_the_provider() {
    let dir = temp_dir("folder");
    let (gguf, onnx) = tiny_export(&dir);
    let model = hone_core::load_model(&gguf).unwrap();
    std::fs::write(
        onnx.join("tokenizer.json"),
        model.tokenizer.to_json().unwrap(),
    )
    .unwrap();
    let common = ["-p", PROMPT, "--max_new_tokens", "16"];
    let cpu = stdout_ok(&hone(
        &[
            &["generate", "-q", "-m", gguf.to_str().unwrap()][..],
            &common,
        ]
        .concat(),
    ));
    // model.onnx named as a file: its folder holds the tokenizer.
    let file = onnx.join("model.onnx");
    let out = hone(
        &[
            &["generate", "--engine", "ort", "-m", file.to_str().unwrap()][..],
            &common,
        ]
        .concat(),
    );
    assert_eq!(stdout_ok(&out), cpu);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CPUExecutionProvider"), "{stderr}");
    assert!(stderr.contains("ONNX Runtime 1.31.1"), "{stderr}");
    assert!(stderr.contains("tok/s"), "{stderr}");
}

#[test]
fn an_execution_provider_the_library_lacks_is_refused_with_the_ones_it_has() {
    let dir = temp_dir("ep");
    let (gguf, onnx) = tiny_export(&dir);
    let run = |ep: &str| hone(&strs(&ort_hi(&onnx, &gguf, &["--ep", ep])));
    // The PyPI CPU wheel has the CPU provider (and Azure's), no XNNPACK, no QNN.
    for ep in ["xnnpack", "qnn", "OpenVINOExecutionProvider"] {
        assert_clear_error(
            &run(ep),
            &[
                "has no",
                "it has:",
                "CPUExecutionProvider (--ep cpu)",
                "libonnxruntime.so.1.31.1",
            ],
        );
    }
    assert_clear_error(
        &run("tpu"),
        &["--ep tpu", "unknown execution provider", "xnnpack", "qnn"],
    );
}

#[test]
fn a_missing_or_old_onnx_runtime_library_says_where_it_looked_and_what_is_needed() {
    let dir = temp_dir("lib");
    let (gguf, onnx) = tiny_export(&dir);
    let owned = ort_hi(&onnx, &gguf, &[]);
    let args = strs(&owned);
    let nowhere = dir.join("no-such-libonnxruntime.so");
    assert_clear_error(
        &hone_with_lib(Some(&nowhere), &args),
        &[
            "ONNX Runtime library not found",
            "ORT_DYLIB_PATH=",
            "no-such-libonnxruntime.so",
            "1.31",
        ],
    );
    // Unset: the folder of the binary is searched (the test binary's folder has no library).
    let exe_dir = Path::new(env!("CARGO_BIN_EXE_hone")).parent().unwrap();
    assert_clear_error(
        &hone_with_lib(None, &args),
        &[
            "ORT_DYLIB_PATH is not set",
            "next to the binary",
            &exe_dir.display().to_string(),
        ],
    );
    // Not a library at all.
    assert_clear_error(
        &hone_with_lib(Some(&gguf), &args),
        &[
            "ONNX Runtime library",
            "tiny.gguf",
            "ORT_DYLIB_PATH must point to libonnxruntime",
        ],
    );
    let old = std::env::var_os("HONE_ORT_OLD_DYLIB")
        .map(PathBuf::from)
        .expect(
        "HONE_ORT_OLD_DYLIB is not set: `make ort-lib` fetches ONNX Runtime 1.19.2 for this test",
    );
    assert!(
        old.is_file(),
        "{} missing: run `make ort-lib`",
        old.display()
    );
    assert_clear_error(
        &hone_with_lib(Some(&old), &args),
        &[
            "is version 1.19.2",
            "hone needs 1.31 or newer",
            "ORT_DYLIB_PATH",
        ],
    );
}

/// The exported model with its input `attention_mask` renamed `attention_masx` (same length,
/// so the protobuf stays valid; the nodes that read it are renamed with it).
fn write_model_without_attention_mask(exported: &Path, path: &Path) {
    let mut bytes = std::fs::read(exported.join("model.onnx")).unwrap();
    let (from, to) = (b"attention_mask", b"attention_masx");
    let mut renamed = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            renamed += 1;
        }
    }
    assert!(renamed > 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_models_and_options_are_clear_errors() {
    let dir = temp_dir("bad");
    let (gguf, onnx) = tiny_export(&dir);
    let (g, o) = (gguf.to_str().unwrap(), onnx.to_str().unwrap());
    let generate = |extra: &[&str]| {
        hone(
            &[
                &["generate", "--engine", "ort", "-p", "hi", "--tokenizer", g][..],
                extra,
            ]
            .concat(),
        )
    };

    let no_mask = dir.join("no_mask.onnx");
    write_model_without_attention_mask(&onnx, &no_mask);
    assert_clear_error(
        &generate(&["-m", no_mask.to_str().unwrap()]),
        &[
            "no_mask.onnx",
            "no input 'attention_mask'",
            "its inputs: input_ids, attention_masx",
        ],
    );
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_clear_error(
        &generate(&["-m", empty.to_str().unwrap()]),
        &["no model.onnx in this folder"],
    );
    // No tokenizer.json next to the model and no --tokenizer.
    assert_clear_error(
        &hone(&["generate", "--engine", "ort", "-p", "hi", "-m", o]),
        &["no tokenizer.json", "--tokenizer"],
    );
    // A tokenizer with more tokens than the model has logits.
    let model = hone_core::load_model(&gguf).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&model.tokenizer.to_json().unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    for i in 0..100 {
        vocab.insert(format!("extra{i}"), serde_json::json!(368 + i));
    }
    let big_tok = dir.join("big-tokenizer.json");
    std::fs::write(&big_tok, json.to_string()).unwrap();
    assert_clear_error(
        &hone(&strs(&ort_hi(&onnx, &big_tok, &[]))),
        &[
            "big-tokenizer.json",
            "468 tokens",
            "368 logits",
            "another model",
        ],
    );
    // Options of the other engine.
    assert_clear_error(
        &generate(&["-m", o, "--device", "gpu"]),
        &["--device gpu", "--ep"],
    );
    assert_clear_error(
        &generate(&["-m", o, "--adapter", dir.to_str().unwrap()]),
        &["--adapter", ".onnx_adapter file", "not a PEFT folder"],
    );
    assert_clear_error(
        &hone(&["generate", "-m", g, "-p", "hi", "--ep", "cpu"]),
        &["--ep and --tokenizer go with --engine ort"],
    );
    assert_clear_error(
        &hone(&["generate", "--engine", "tract", "-m", g, "-p", "hi"]),
        &["--engine tract", "hone", "ort"],
    );
}

/// A PEFT adapter for `spec` with random A and B, saved in `dir`.
fn random_peft(dir: &Path, spec: &hone_core::ModelSpec, r: usize, targets: &[&str], seed: u64) {
    let adapter = hone_core::fixtures::random_lora_adapter(spec, r, targets, seed, 0.5).unwrap();
    adapter.save_peft(dir, "tiny").unwrap();
}

/// `hone generate --engine ort --adapter X.onnx_adapter` on a model exported with LoRA inputs
/// prints what `hone generate --adapter PEFT` prints on the CPU engine, for two adapters (files
/// of `hone generate-adapter`) and for none (the zero defaults: the base model).
#[test]
fn onnx_adapters_generate_what_the_cpu_engine_does_with_the_peft_adapters() {
    let dir = temp_dir("adapters");
    let (gguf, _) = tiny_export(&dir);
    let spec = hone_core::load_model(&gguf).unwrap().spec;
    let (a1, a2) = (dir.join("tone"), dir.join("style"));
    random_peft(&a1, &spec, 4, &["q_proj", "v_proj", "down_proj"], 1);
    random_peft(&a2, &spec, 8, &["q_proj", "v_proj"], 2);
    let (onnx, files) = (dir.join("lora-onnx"), dir.join("adapters"));
    let p = |p: &Path| p.display().to_string();
    let export = [
        "auto-opt",
        "-m",
        &p(&gguf),
        "--adapter_path",
        &p(&a1),
        "--lora_inputs",
        "-o",
        &p(&onnx),
    ];
    stdout_ok(&hone(&export));
    let paths = format!("{},{}", p(&a1), p(&a2));
    let split = [
        "generate-adapter",
        "--base_model_path",
        &p(&onnx),
        "--adapter_paths",
        &paths,
        "--output_path",
        &p(&files),
    ];
    stdout_ok(&hone(&split));
    let mut texts = Vec::new();
    for (peft, file) in [
        (Some(&a1), Some(files.join("tone.onnx_adapter"))),
        (Some(&a2), Some(files.join("style.onnx_adapter"))),
        (None, None),
    ] {
        let common = ["-p", PROMPT, "--max_new_tokens", "12", "-q"];
        let mut cpu_args = vec!["generate".to_string(), "-m".into(), p(&gguf)];
        cpu_args.extend(common.iter().map(|s| s.to_string()));
        if let Some(a) = peft {
            cpu_args.extend(["--adapter".into(), p(a)]);
        }
        let cpu = stdout_ok(&hone(&strs(&cpu_args)));
        let mut ort_args = ort_hi(&onnx, &gguf, &[]);
        ort_args.truncate(3); // generate --engine ort
        ort_args.extend(["-m".into(), p(&onnx), "--tokenizer".into(), p(&gguf)]);
        ort_args.extend(common.iter().map(|s| s.to_string()));
        if let Some(f) = &file {
            ort_args.extend(["--adapter".into(), p(f)]);
        }
        let ort = stdout_ok(&hone(&strs(&ort_args)));
        assert_eq!(ort, cpu, "adapter {file:?}");
        texts.push(cpu);
    }
    assert!(
        texts[0] != texts[2] && texts[1] != texts[2],
        "the adapters change nothing: {texts:?}"
    );
    // A file that is not an adapter.
    let mut bad = ort_hi(&onnx, &gguf, &["--adapter"]);
    bad.push(p(&gguf));
    assert_clear_error(
        &hone(&strs(&bad)),
        &["tiny.gguf", "could not load the adapter"],
    );
}
