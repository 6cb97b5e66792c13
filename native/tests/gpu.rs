//! `--device gpu|auto` through the binary on a tiny random model (lavapipe in CI): a GPU
//! fine-tune follows the CPU one step by step, its checkpoint resumes on the CPU engine, a GPU
//! generation with the adapter continues as the CPU one does, a lost device stops the run with
//! the last checkpoint intact, `auto` says what it chose, and `--fp16` follows the CPU run within
//! f16 rounding where the adapter has shader-f16 and is refused clearly where it cannot run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hone_core::checkpoint::Checkpoint;
use hone_core::fixtures::{tiny_gguf_metadata, tiny_spec, tiny_weights, write_model_gguf};
use hone_core::{Architecture, DType};
use serde_json::Value;

fn hone_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hone"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run hone")
}

fn hone(args: &[&str]) -> Output {
    hone_env(args, &[])
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "hone failed: {}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

struct Setup {
    dir: PathBuf,
    model: PathBuf,
    data: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("hone-gpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = tiny_spec(Architecture::Llama, true, 368);
    let weights = tiny_weights(&spec, DType::Q4_1, 3).unwrap();
    let model = dir.join("tiny.gguf");
    write_model_gguf(&model, &spec, &weights, &tiny_gguf_metadata(&spec, "tiny")).unwrap();
    let words = ["red", "green", "blue", "black", "white", "pink"];
    let mut s = String::new();
    for i in 0..24 {
        let label = if i % 2 == 0 { "even" } else { "odd" };
        s.push_str(&format!(
            "{{\"q\": \"{} {i}\", \"a\": \"{label}\"}}\n",
            words[i % 6]
        ));
    }
    let data = dir.join("data.jsonl");
    std::fs::write(&data, s).unwrap();
    Setup { dir, model, data }
}

fn finetune_args<'a>(s: &'a Setup, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "finetune",
        "-m",
        s.model.to_str().unwrap(),
        "-d",
        s.data.to_str().unwrap(),
        "--train_split",
        "train[:20]",
        "--eval_split",
        "train[20:]",
        "--text_template",
        "{q} = {a}",
        "--lora_r",
        "4",
        "--lora_dropout",
        "0.1",
        "--learning_rate",
        "0.01",
        "--per_device_train_batch_size",
        "3",
        "--gradient_accumulation_steps",
        "2",
        "--logging_steps",
        "1",
        "--eval_steps",
        "3",
        "--save_steps",
        "2",
        "--max_steps",
        "6",
        "-o",
        out,
        "--log_level",
        "warning",
    ];
    a.extend_from_slice(extra);
    a
}

/// (step, train loss) and (step, eval loss) of metrics.jsonl.
/// (step, loss) pairs.
type Curve = Vec<(u64, f64)>;

fn losses(out: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(out.join("logs/metrics.jsonl")).unwrap();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        if let Some(l) = v.get("loss").and_then(Value::as_f64) {
            train.push((step, l));
        }
        if let Some(l) = v.get("eval_loss").and_then(Value::as_f64) {
            eval.push((step, l));
        }
    }
    (train, eval)
}

fn assert_close_curves(a: &[(u64, f64)], b: &[(u64, f64)], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    assert!(!a.is_empty(), "{what}: no losses logged");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0, "{what}: steps differ");
        let rel = ((x.1 - y.1) / y.1).abs();
        assert!(
            rel < tol,
            "{what} at step {}: {} vs {} (rel {rel:.2e})",
            x.0,
            x.1,
            y.1
        );
    }
}

#[test]
fn gpu_finetune_follows_the_cpu_run_and_its_checkpoint_resumes_on_the_cpu() {
    let s = setup("follow");
    let cpu_out = s.dir.join("cpu");
    let gpu_out = s.dir.join("gpu");
    let (c, g) = (cpu_out.to_str().unwrap(), gpu_out.to_str().unwrap());
    ok(&hone(&finetune_args(&s, c, &["--device", "cpu"])));
    let stderr = ok(&hone(&finetune_args(
        &s,
        g,
        &["--device", "gpu", "--log_level", "info"],
    )));
    assert!(stderr.contains("planned GPU memory"), "{stderr}");
    let (ct, ce) = losses(&cpu_out);
    let (gt, ge) = losses(&gpu_out);
    assert_close_curves(&gt, &ct, 1e-3, "train loss");
    assert_close_curves(&ge, &ce, 1e-3, "eval loss");

    // The GPU run's checkpoint-2 continues on the CPU engine and ends where the CPU run ended.
    let resumed = s.dir.join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoints")).unwrap();
    let src = gpu_out.join("checkpoints/checkpoint-2");
    let dst = resumed.join("checkpoints/checkpoint-2");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    Checkpoint::load(&dst).expect("the GPU engine's checkpoint loads");
    std::fs::create_dir_all(resumed.join("logs")).unwrap();
    std::fs::copy(
        gpu_out.join("logs/metrics.jsonl"),
        resumed.join("logs/metrics.jsonl"),
    )
    .unwrap();
    let r = resumed.to_str().unwrap();
    ok(&hone(&finetune_args(
        &s,
        r,
        &["--device", "cpu", "--resume_from_checkpoint", "latest"],
    )));
    let (rt, _) = losses(&resumed);
    assert_close_curves(&rt, &ct, 1e-3, "train loss resumed on the cpu");

    // Greedy generation with the GPU-trained adapter: the same text on both engines.
    let adapter = gpu_out.join("adapter");
    let gen = |device: &str| {
        let out = hone(&[
            "generate",
            "-m",
            s.model.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "-p",
            "red 3 =",
            "--max_new_tokens",
            "12",
            "--device",
            device,
            "-q",
        ]);
        ok(&out);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (on_cpu, on_gpu) = (gen("cpu"), gen("gpu"));
    assert!(on_cpu.len() > "red 3 =".len() + 2, "{on_cpu:?}");
    assert_eq!(on_gpu, on_cpu);

    // `hone eval --device gpu` with the adapter: the CPU's loss on the eval split.
    let config = gpu_out.join("hone_config.json");
    let eval = |device: &str| {
        let out = hone(&[
            "eval",
            "--config",
            config.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--device",
            device,
            "--quiet",
        ]);
        ok(&out);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["eval_loss"].as_f64().unwrap()
    };
    let (lc, lg) = (eval("cpu"), eval("gpu"));
    assert!(
        ((lg - lc) / lc).abs() < 1e-4,
        "eval loss gpu {lg} vs cpu {lc}"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_lost_device_stops_the_run_and_the_last_checkpoint_survives() {
    let s = setup("lost");
    let out = s.dir.join("out");
    let o = out.to_str().unwrap();
    // Steps take 2 micro-batches; the device is lost in the 11th, during step 6.
    let res = hone_env(
        &finetune_args(&s, o, &["--device", "gpu", "--eval_steps", "100"]),
        &[("HONE_TEST_GPU_LOSE_AFTER", "10")],
    );
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("device was lost"), "{stderr}");
    assert!(stderr.contains("last good checkpoint"), "{stderr}");
    assert!(stderr.contains("checkpoint-4"), "{stderr}");
    let ck = Checkpoint::load(out.join("checkpoints/checkpoint-4")).unwrap();
    assert_eq!(ck.step, 4);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn auto_says_which_device_it_chose() {
    let s = setup("auto");
    let out = s.dir.join("out");
    let res = hone(&finetune_args(
        &s,
        out.to_str().unwrap(),
        &[
            "--device",
            "auto",
            "--max_steps",
            "1",
            "--log_level",
            "info",
        ],
    ));
    let stderr = ok(&res);
    let hardware = hone_gpu::Gpu::new_blocking(&hone_gpu::GpuOptions {
        adapter: hone_gpu::AdapterChoice::Hardware,
        ..Default::default()
    });
    match hardware {
        // CI: lavapipe is the only adapter, and it is software.
        Err(_) => assert!(stderr.contains("using the CPU"), "{stderr}"),
        Ok(gpu) => assert!(stderr.contains(&gpu.describe()), "{stderr}"),
    }
    let bad = hone(&finetune_args(
        &s,
        out.to_str().unwrap(),
        &["--device", "tpu"],
    ));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("use cpu, gpu or auto"), "{stderr}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn no_adapter_is_an_error_for_gpu_and_a_fallback_for_auto() {
    let s = setup("none");
    let out = s.dir.join("out");
    // On Linux wgpu has no DX12 backend: restricting it to DX12 leaves no adapter at all.
    let none = [("WGPU_BACKEND", "dx12")];
    let res = hone_env(
        &finetune_args(&s, out.to_str().unwrap(), &["--device", "gpu"]),
        &none,
    );
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no GPU adapter"), "{stderr}");
    assert!(stderr.contains("--device cpu"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let res = hone_env(
        &finetune_args(
            &s,
            out.to_str().unwrap(),
            &[
                "--device",
                "auto",
                "--max_steps",
                "1",
                "--log_level",
                "info",
                "--overwrite_output_dir",
            ],
        ),
        &none,
    );
    let stderr = ok(&res);
    assert!(stderr.contains("using the CPU"), "{stderr}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// `--fp16` through the binary: a GPU fine-tune in mixed precision follows the CPU (f32) run
/// within f16 rounding (5e-3 relative: f32 agrees to 1e-3 here, a broken f16 path by far
/// more), `hone eval --fp16` gives the CPU's loss as closely, and it is refused where it cannot
/// run: on the CPU engine, and on an adapter without shader-f16 (llvmpipe through GL).
#[test]
fn fp16_follows_the_cpu_run_and_is_refused_where_it_cannot_run() {
    let s = setup("fp16");
    let (cpu_out, h_out) = (s.dir.join("cpu"), s.dir.join("fp16"));
    let (c, h) = (cpu_out.to_str().unwrap(), h_out.to_str().unwrap());
    let short = ["--max_steps", "2", "--eval_steps", "2"];
    ok(&hone(&finetune_args(
        &s,
        c,
        &[&short[..], &["--device", "cpu"]].concat(),
    )));
    let stderr = ok(&hone(&finetune_args(
        &s,
        h,
        &[
            &short[..],
            &["--device", "gpu", "--fp16", "--log_level", "info"],
        ]
        .concat(),
    )));
    assert!(stderr.contains("fp16: f16 products"), "{stderr}");
    let (ct, ce) = losses(&cpu_out);
    let (ht, he) = losses(&h_out);
    assert_close_curves(&ht, &ct, 5e-3, "fp16 train loss");
    assert_close_curves(&he, &ce, 5e-3, "fp16 eval loss");

    let config = h_out.join("hone_config.json");
    let adapter = h_out.join("adapter");
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--config",
            config.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--quiet",
        ];
        a.extend_from_slice(extra);
        let out = hone(&a);
        ok(&out);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["eval_loss"].as_f64().unwrap()
    };
    let (lc, lh) = (
        eval(&["--device", "cpu"]),
        eval(&["--device", "gpu", "--fp16"]),
    );
    assert!(
        ((lh - lc) / lc).abs() < 5e-3,
        "fp16 eval loss {lh} vs cpu {lc}"
    );

    let refused = |args: Vec<&str>, env: &[(&str, &str)], want: &[&str]| {
        let res = hone_env(&args, env);
        let stderr = String::from_utf8_lossy(&res.stderr).to_string();
        assert_eq!(res.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for w in want {
            assert!(stderr.contains(w), "missing {w:?} in {stderr}");
        }
    };
    let o = s.dir.join("refused");
    let o = o.to_str().unwrap();
    refused(
        finetune_args(&s, o, &["--device", "cpu", "--fp16"]),
        &[],
        &["--fp16", "GPU engine", "float32"],
    );
    refused(
        finetune_args(&s, o, &["--device", "gpu", "--fp16"]),
        &[("WGPU_BACKEND", "gl")],
        &["--fp16", "shader-f16", "Gl"],
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}
