//! `hone finetune` / `hone eval` through the binary on a tiny random model: the output folder,
//! exact resume after SIGKILL (between steps and in the middle of a checkpoint write), and bad
//! input that must end in one clear line with nothing lost.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hone_core::adapter::LoraAdapter;
use hone_core::checkpoint::Checkpoint;
use hone_core::fixtures::{tiny_gguf_metadata, tiny_spec, tiny_weights, write_model_gguf};
use hone_core::{Architecture, DType};
use serde_json::Value;

fn hone_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hone"));
    c.args(args);
    c
}

fn hone(args: &[&str]) -> Output {
    hone_cmd(args).output().expect("run hone")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-ft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny llama GGUF (`seed` changes the weights; `hidden` the shape).
fn tiny_model(dir: &Path, name: &str, seed: u64, arch: Architecture) -> PathBuf {
    let spec = tiny_spec(arch, true, 368);
    let weights = tiny_weights(&spec, DType::Q8_0, seed).unwrap();
    let meta = tiny_gguf_metadata(&spec, "tiny");
    let path = dir.join(name);
    write_model_gguf(&path, &spec, &weights, &meta).unwrap();
    path
}

/// 24 rows `{"q": .., "a": ..}` with a learnable mapping.
fn dataset(dir: &Path) -> PathBuf {
    let words = ["red", "green", "blue", "black", "white", "pink"];
    let mut s = String::new();
    for i in 0..24 {
        let w = words[i % words.len()];
        let label = if i % 2 == 0 { "even" } else { "odd" };
        s.push_str(&format!("{{\"q\": \"{w} {i}\", \"a\": \"{label}\"}}\n"));
    }
    let p = dir.join("data.jsonl");
    std::fs::write(&p, s).unwrap();
    p
}

struct Run {
    model: PathBuf,
    data: PathBuf,
    out: PathBuf,
}

impl Run {
    fn new(tag: &str) -> Run {
        let dir = temp_dir(tag);
        Run {
            model: tiny_model(&dir, "tiny.gguf", 7, Architecture::Llama),
            data: dataset(&dir),
            out: dir.join("out"),
        }
    }

    /// The common arguments plus `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "finetune",
            "-m",
            self.model.to_str().unwrap(),
            "-d",
            self.data.to_str().unwrap(),
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
            "--lr_scheduler_type",
            "cosine",
            "--warmup_steps",
            "2",
            "--logging_steps",
            "1",
            "--eval_steps",
            "3",
            "--save_steps",
            "2",
            "--max_steps",
            "10",
            "-o",
            self.out.to_str().unwrap(),
            "--log_level",
            "warning",
        ];
        a.extend_from_slice(extra);
        a
    }
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "hone failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The failure is exactly one `error: ` line containing every fragment.
fn one_line_error(out: &Output, expect: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for e in expect {
        assert!(lines[0].contains(e), "error lacks {e:?}: {stderr}");
    }
    stderr
}

/// `(step, loss bits)` of every train log line of metrics.jsonl.
fn loss_curve(out: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(out.join("logs/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let loss = v.get("loss")?.as_f64()?;
            Some((v["step"].as_u64().unwrap(), loss.to_bits()))
        })
        .collect()
}

fn adapter_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap()
}

#[test]
fn finetune_writes_adapter_checkpoints_logs_and_config() {
    let r = Run::new("layout");
    let out = hone(&r.args(&["--save_total_limit", "2"]));
    ok(&out);
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "hone_config.json",
        "train_results.json",
        "logs/metrics.jsonl",
    ] {
        assert!(r.out.join(f).exists(), "{f} missing");
    }
    // save_total_limit 2 keeps the last two (and the best), at most three.
    let ckpts: Vec<String> = std::fs::read_dir(r.out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(ckpts.contains(&"checkpoint-10".to_string()), "{ckpts:?}");
    assert!(ckpts.len() <= 3, "{ckpts:?}");
    let tb = std::fs::read_dir(r.out.join("logs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents")
        })
        .count();
    assert_eq!(tb, 1, "one TensorBoard event file");
    // TensorBoard's own reader (and tbparse) see the same train losses as metrics.jsonl.
    let python = std::env::var("HONE_PYTHON")
        .expect("HONE_PYTHON is not set: run `make pyenv` (venv with tbparse + tensorboard)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/read_tensorboard.py");
    let tb_out = Command::new(&python)
        .arg(&script)
        .arg(r.out.join("logs"))
        .output()
        .expect("run read_tensorboard.py with HONE_PYTHON");
    assert!(
        tb_out.status.success(),
        "{}",
        String::from_utf8_lossy(&tb_out.stderr)
    );
    let tbv: Value = serde_json::from_slice(&tb_out.stdout).unwrap();
    for reader in ["tbparse", "event_accumulator"] {
        let losses: Vec<(u64, f32)> = tbv[reader]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["tag"] == "train/loss")
            .map(|row| {
                (
                    row["step"].as_u64().unwrap(),
                    row["value"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let want: Vec<(u64, f32)> = loss_curve(&r.out)
            .iter()
            .map(|&(s, bits)| (s, f64::from_bits(bits) as f32))
            .collect();
        assert_eq!(losses, want, "{reader}");
        assert!(tbv[reader]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["tag"] == "eval/loss"));
    }

    // The final adapter is the last step's, and loads as PEFT with the model's module names.
    let adapter = LoraAdapter::load_peft(r.out.join("adapter")).unwrap();
    let last = Checkpoint::load(r.out.join("checkpoints/checkpoint-10")).unwrap();
    assert_eq!(adapter.tensors, last.adapter.tensors);
    assert_eq!(adapter.config.r, 4);
    assert!(adapter
        .tensors
        .keys()
        .any(|k| k == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));

    // The loss falls, evaluation ran at steps 3, 6, 9 and at the end.
    let curve = loss_curve(&r.out);
    assert_eq!(curve.len(), 10);
    let first = f64::from_bits(curve[0].1);
    let last_loss = f64::from_bits(curve[9].1);
    assert!(
        last_loss < first,
        "loss did not fall: {first} -> {last_loss}"
    );
    let text = std::fs::read_to_string(r.out.join("logs/metrics.jsonl")).unwrap();
    let eval_steps: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v.get("eval_loss")?;
            v["step"].as_u64()
        })
        .collect();
    assert_eq!(eval_steps, vec![3, 6, 9, 10]);

    // The resolved configuration records flags and defaults.
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(r.out.join("hone_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["lora_r"], 4);
    assert_eq!(cfg["adam_beta2"], 0.999);
    let res: Value =
        serde_json::from_str(&std::fs::read_to_string(r.out.join("train_results.json")).unwrap())
            .unwrap();
    assert_eq!(res["global_step"], 10);

    // A second run into the same folder is refused instead of mixing two runs.
    let again = hone(&r.args(&[]));
    one_line_error(
        &again,
        &["--resume_from_checkpoint latest", "--overwrite_output_dir"],
    );
}

#[test]
fn config_file_with_flags_overriding_it() {
    let r = Run::new("config");
    let dir = r.out.parent().unwrap().to_path_buf();
    let yaml = dir.join("run.yaml");
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: {}\ndata_name: {}\ntext_template: \"{{q}} = {{a}}\"\nlora_r: 2\ntarget_modules: [q_proj, v_proj]\nmax_steps: 2\nlog_level: warning\nreport_to: none\noutput_path: {}\n",
            r.model.display(),
            r.data.display(),
            r.out.display()
        ),
    )
    .unwrap();
    ok(&hone(&[
        "finetune",
        "--config",
        yaml.to_str().unwrap(),
        "--lora_r",
        "3",
    ]));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(r.out.join("hone_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["lora_r"], 3, "the flag wins over the file");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    let adapter = LoraAdapter::load_peft(r.out.join("adapter")).unwrap();
    assert_eq!(adapter.config.r, 3);
    assert_eq!(adapter.tensors.len(), 2 * 2 * 2, "2 layers x q,v x A,B");
    // No TensorBoard file with report_to none; metrics.jsonl always.
    assert!(!std::fs::read_dir(r.out.join("logs")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("events.out")));

    // An unknown key in the file names the file and the key.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"lora_rank": 8}"#).unwrap();
    let out = hone(&["finetune", "--config", bad.to_str().unwrap()]);
    one_line_error(&out, &["bad.json", "unknown option 'lora_rank'", "lora_r"]);
}

/// Waits until `cond` holds (or panics after 60 s).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn has_entry(dir: &Path, pred: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| pred(&e.file_name().to_string_lossy())))
        .unwrap_or(false)
}

#[test]
fn sigkill_then_resume_reproduces_the_uninterrupted_run_exactly() {
    // The reference: one uninterrupted run.
    let reference = Run::new("ref");
    ok(&hone(&reference.args(&[])));
    let want_curve = loss_curve(&reference.out);
    let want_adapter = adapter_bytes(&reference.out);
    assert_eq!(want_curve.len(), 10);

    // Killed twice: once right after checkpoint-4 is complete (while step 5 runs), once in the
    // middle of writing checkpoint-8 (files are written slowly so the kill lands inside).
    let r = Run::new("killed");
    let ckpts = r.out.join("checkpoints");
    let mut child = hone_cmd(&r.args(&[]))
        .env("HONE_TEST_CHECKPOINT_PAUSE_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c4 = ckpts.join("checkpoint-4");
    wait_for("checkpoint-4", || c4.join("hone_state.json").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!r.out.join("adapter").exists(), "killed before the end");

    let resume = r.args(&["--resume_from_checkpoint", "latest"]);
    let mut child = hone_cmd(&resume)
        .env("HONE_TEST_CHECKPOINT_PAUSE_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("checkpoint-8 being written", || {
        has_entry(&ckpts, |n| n.starts_with("checkpoint-8.tmp"))
    });
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !ckpts.join("checkpoint-8").exists(),
        "the kill landed inside the write of checkpoint-8"
    );
    // The half-written checkpoint is not taken for a checkpoint.
    assert_eq!(
        hone_core::checkpoint::latest(&ckpts).unwrap(),
        Some(ckpts.join("checkpoint-6"))
    );

    ok(&hone(&resume));
    assert_eq!(loss_curve(&r.out), want_curve, "loss curve differs");
    assert!(
        adapter_bytes(&r.out) == want_adapter,
        "adapter bytes differ"
    );
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let r = Run::new("nan");
    let out = hone(&r.args(&[
        "--learning_rate",
        "1e30",
        "--save_steps",
        "1",
        "--max_grad_norm",
        "0",
    ]));
    let err = one_line_error(&out, &["not finite", "last good checkpoint"]);
    let ckpts = r.out.join("checkpoints");
    let last = hone_core::checkpoint::latest(&ckpts).unwrap().unwrap();
    assert!(err.contains(&last.display().to_string()), "{err}");
    let c = Checkpoint::load(&last).unwrap();
    assert!(c
        .adapter
        .tensors
        .values()
        .all(|t| t.values.iter().all(|x| x.is_finite())));
}

#[test]
fn resume_refuses_another_model_or_lora_shape() {
    let r = Run::new("mismatch");
    ok(&hone(&r.args(&["--max_steps", "2"])));
    let dir = r.out.parent().unwrap().to_path_buf();
    let other = tiny_model(&dir, "other.gguf", 8, Architecture::Llama);
    let ckpt = r.out.join("checkpoints/checkpoint-2");
    let c = ckpt.to_str().unwrap();
    let mut args = r.args(&["--max_steps", "4", "--resume_from_checkpoint", c]);
    let o = other.to_str().unwrap();
    args[2] = o;
    one_line_error(&hone(&args), &["checkpoint-2", "another model"]);
    let args = r.args(&[
        "--max_steps",
        "4",
        "--resume_from_checkpoint",
        c,
        "--lora_r",
        "2",
    ]);
    one_line_error(&hone(&args), &["checkpoint-2", "rank"]);
}

#[test]
fn bad_input_gets_one_clear_line() {
    let r = Run::new("bad");
    let dir = r.out.parent().unwrap().to_path_buf();
    // A row without the template's field: file, line, field.
    let missing = dir.join("missing.jsonl");
    std::fs::write(
        &missing,
        "{\"q\": \"a\", \"a\": \"b\"}\n{\"q\": \"c\"}\n{\"q\": \"d\", \"a\": \"e\"}\n",
    )
    .unwrap();
    let mut args = r.args(&["--train_split", "train", "--eval_split", "train[:1]"]);
    let m = missing.to_str().unwrap();
    args[4] = m;
    one_line_error(&hone(&args), &["missing.jsonl", "line 2", "'a'"]);
    // --skip_bad_rows skips and counts instead.
    let mut args = r.args(&[
        "--skip_bad_rows",
        "--max_steps",
        "1",
        "--train_split",
        "train",
        "--eval_split",
        "train",
        "--log_level",
        "info",
        "--report_to",
        "none",
    ]);
    args[4] = m;
    let pos = args.iter().position(|a| *a == "-o").unwrap();
    let skip_out = dir.join("skip-out");
    let so = skip_out.to_str().unwrap().to_string();
    args[pos + 1] = &so;
    let out = hone(&args);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped 1 row"), "{stderr}");

    // Rows longer than max_seq_len: an error naming the line when asked.
    one_line_error(
        &hone(&r.args(&["--max_seq_len", "4", "--long_rows", "error"])),
        &["data.jsonl", "line 1", "max_seq_len 4"],
    );
    // Unknown flag (clap) and invalid values.
    let out = hone(&r.args(&["--lora_rank", "8"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lora_rank"));
    one_line_error(
        &hone(&r.args(&["--lora_r", "0"])),
        &["lora_r", "at least 1"],
    );
    one_line_error(
        &hone(&r.args(&["--learning_rate", "0"])),
        &["learning_rate", "> 0"],
    );
    one_line_error(
        &hone(&r.args(&["--learning_rate", "-1"])),
        &["learning_rate"],
    );
    one_line_error(
        &hone(&r.args(&["--target_modules", "qkv_proj"])),
        &["qkv_proj", "q_proj"],
    );
    one_line_error(
        &hone(&r.args(&["--bf16"])),
        &["--bf16", "not supported yet", "float32"],
    );
    // An empty split and an empty file.
    one_line_error(
        &hone(&r.args(&["--train_split", "train[24:]"])),
        &["data.jsonl", "train[24:]", "no rows"],
    );
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let mut args = r.args(&[]);
    let e = empty.to_str().unwrap();
    args[4] = e;
    one_line_error(&hone(&args), &["empty.jsonl", "empty"]);
    // An output folder that cannot be written.
    let blocked = dir.join("blocked");
    std::fs::write(&blocked, "a file, not a folder").unwrap();
    let mut args = r.args(&[]);
    let pos = args.iter().position(|a| *a == "-o").unwrap();
    let b = blocked.join("out");
    let bs = b.to_str().unwrap().to_string();
    args[pos + 1] = &bs;
    one_line_error(&hone(&args), &["output folder", "blocked"]);
}

#[test]
fn eval_and_generate_use_the_trained_adapter() {
    let r = Run::new("eval");
    ok(&hone(&r.args(&["--report_to", "none", "--max_steps", "6"])));
    let dir = r.out.parent().unwrap().to_path_buf();
    let adapter = r.out.join("adapter");
    let config = r.out.join("hone_config.json");
    let result_file = dir.join("eval.json");
    // Data options come from the run's own config; the split is its eval split.
    let out = hone(&[
        "eval",
        "--config",
        config.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--metrics",
        "all",
        "--max_new_tokens",
        "4",
        "--output_file",
        result_file.to_str().unwrap(),
        "--quiet",
    ]);
    ok(&out);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "eval_loss",
        "eval_perplexity",
        "accuracy",
        "macro_f1",
        "bleu",
        "rouge1",
        "rouge2",
        "rougeL",
    ] {
        assert!(line[k].is_number(), "{k} missing: {line}");
    }
    assert_eq!(line["examples"], 4);
    // The eval loss equals the trainer's last evaluation of the same split and adapter.
    let metrics = std::fs::read_to_string(r.out.join("logs/metrics.jsonl")).unwrap();
    let last_eval = metrics
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()?
                .get("eval_loss")?
                .as_f64()
        })
        .next_back()
        .unwrap();
    let got = line["eval_loss"].as_f64().unwrap();
    assert!(
        (got - last_eval).abs() <= 1e-9 * last_eval.abs(),
        "hone eval {got} vs trainer {last_eval}"
    );
    // Without the adapter the loss is the base model's: different.
    let base = hone(&["eval", "--config", config.to_str().unwrap(), "--quiet"]);
    ok(&base);
    let base: Value = serde_json::from_slice(&base.stdout).unwrap();
    assert!((base["eval_loss"].as_f64().unwrap() - got).abs() > 1e-3);

    // `hone generate --adapter` continues a prompt exactly as eval predicted it.
    let full: Value =
        serde_json::from_str(&std::fs::read_to_string(&result_file).unwrap()).unwrap();
    let first = &full["predictions"][0];
    assert_eq!(first["line"], 21);
    let prompt = "blue 20 =";
    let g = hone(&[
        "generate",
        "-m",
        r.model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "-p",
        prompt,
        "--max_new_tokens",
        "4",
        "--stop",
        "\n",
        "-q",
    ]);
    ok(&g);
    let text = String::from_utf8_lossy(&g.stdout);
    assert_eq!(
        text.trim_end_matches('\n')[prompt.len()..].trim(),
        first["prediction"].as_str().unwrap()
    );

    // An adapter made for another model is refused, naming both.
    let foreign =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peft/tiny-llama-adapter");
    let g = hone(&[
        "generate",
        "-m",
        r.model.to_str().unwrap(),
        "--adapter",
        foreign.to_str().unwrap(),
        "-p",
        "x",
    ]);
    one_line_error(&g, &["tiny-llama-adapter", "does not fit", "tiny.gguf"]);
}

#[test]
fn chat_datasets_train_through_the_models_chat_template() {
    let dir = temp_dir("chat");
    let spec = tiny_spec(Architecture::Llama, true, 368);
    let weights = tiny_weights(&spec, DType::Q8_0, 7).unwrap();
    let meta = tiny_gguf_metadata(&spec, "tiny");
    assert!(meta.iter().any(|(k, _)| k == "tokenizer.chat_template"));
    let model = dir.join("chat.gguf");
    write_model_gguf(&model, &spec, &weights, &meta).unwrap();
    let data = dir.join("chat.jsonl");
    let mut rows = String::new();
    for i in 0..8 {
        rows.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"is {i} even?\"}}, {{\"role\": \"assistant\", \"content\": \"{}\"}}]}}\n",
            if i % 2 == 0 { "yes" } else { "no" }
        ));
    }
    std::fs::write(&data, rows).unwrap();
    let out = dir.join("out");
    let run = |extra: &[&str], out: &Path| {
        let mut a = vec![
            "finetune",
            "-m",
            model.to_str().unwrap(),
            "-d",
            data.to_str().unwrap(),
            "--use_chat_template",
            "--completion_only",
            "--max_steps",
            "2",
            "--report_to",
            "none",
            "-o",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        hone(&a)
    };
    // A messages column.
    let o = run(&[], &out);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("<|im_start|>assistant") && stderr.contains("is 0 even?"),
        "{stderr}"
    );
    // 8 rows, completion-only: the trained tokens are the assistant turns only (yes/no +
    // the end-of-turn marker), far fewer than all tokens.
    let summary = stderr.lines().find(|l| l.contains("[hone] train")).unwrap();
    assert!(summary.contains("8 rows -> 8 examples"), "{summary}");
    // A text template rendered as a user turn and an assistant turn.
    let rows: String = (0..8)
        .map(|i| {
            format!(
                "{{\"q\": \"is {i} odd?\", \"a\": \"{}\"}}\n",
                if i % 2 == 1 { "yes" } else { "no" }
            )
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let o = run(&["--text_template", "{q} {a}"], &dir.join("out2"));
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("<|im_start|>user\\nis 0 odd?"), "{stderr}");
    // A model without a chat template is refused with --use_chat_template.
    let plain = dir.join("plain.gguf");
    let no_template: Vec<_> = meta
        .iter()
        .filter(|(k, _)| k != "tokenizer.chat_template")
        .cloned()
        .collect();
    write_model_gguf(&plain, &spec, &weights, &no_template).unwrap();
    let mut a = vec![
        "finetune",
        "-m",
        plain.to_str().unwrap(),
        "-d",
        data.to_str().unwrap(),
        "--use_chat_template",
        "--text_template",
        "{q} {a}",
        "--log_level",
        "warning",
        "-o",
    ];
    let o3 = dir.join("out3");
    a.push(o3.to_str().unwrap());
    one_line_error(&hone(&a), &["plain.gguf", "no chat template"]);
}

/// Logits `[T, vocab]` written by `hone logits`.
fn logits_of(model: &Path, adapter: Option<&Path>, prompt: &str, out: &Path) -> Vec<f32> {
    let mut args = vec![
        "logits",
        "-m",
        model.to_str().unwrap(),
        "-p",
        prompt,
        "-o",
        out.to_str().unwrap(),
    ];
    if let Some(a) = adapter {
        args.push("--adapter");
        args.push(a.to_str().unwrap());
    }
    ok(&hone(&args));
    let f = hone_core::safetensors::SafetensorsFile::open(out).unwrap();
    f.get("logits").unwrap().to_f32()
}

#[test]
fn merge_writes_a_folder_with_the_adapters_logits() {
    let r = Run::new("merge");
    ok(&hone(&r.args(&[
        "--report_to",
        "none",
        "--max_steps",
        "4",
        "--modules_to_save",
        "lm_head",
    ])));
    let dir = r.out.parent().unwrap().to_path_buf();
    let adapter = r.out.join("adapter");
    let merged = dir.join("merged");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "merge".to_string(),
            "-m".into(),
            r.model.display().to_string(),
            "--adapter_path".into(),
            adapter.display().to_string(),
            "-o".into(),
            merged.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = args(&[]);
    ok(&hone(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(merged.join(f).exists(), "{f}");
    }
    let prompt = "green 7 =";
    let with_adapter = logits_of(&r.model, Some(&adapter), prompt, &dir.join("a.st"));
    let from_merged = logits_of(&merged, None, prompt, &dir.join("m.st"));
    let base = logits_of(&r.model, None, prompt, &dir.join("b.st"));
    let scale = with_adapter.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = |x: &[f32], y: &[f32]| x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff(&with_adapter, &from_merged) <= 1e-5 * scale,
        "merged {} vs adapter (scale {scale})",
        diff(&with_adapter, &from_merged)
    );
    assert!(
        diff(&with_adapter, &base) > 1e-3 * scale,
        "the adapter changes the logits"
    );
    // The same merge as one GGUF file (copying the base's metadata and tokenizer).
    let merged_gguf = dir.join("merged.gguf");
    let a = [
        "merge",
        "-m",
        r.model.to_str().unwrap(),
        "--adapter_path",
        adapter.to_str().unwrap(),
        "-o",
        merged_gguf.to_str().unwrap(),
        "--format",
        "gguf",
    ];
    ok(&hone(&a));
    let from_gguf = logits_of(&merged_gguf, None, prompt, &dir.join("g.st"));
    assert!(diff(&with_adapter, &from_gguf) <= 1e-5 * scale);
    // The saved head unties the tied tiny model.
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
    // An existing output is kept unless --overwrite.
    let a = args(&[]);
    one_line_error(
        &hone(&a.iter().map(String::as_str).collect::<Vec<_>>()),
        &["merged", "--overwrite"],
    );
    let a = args(&["--overwrite"]);
    ok(&hone(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    // llama.cpp's LoRA GGUF holds LoRA pairs only: an adapter with a saved head is refused
    // with a pointer to merging.
    let lora_gguf = dir.join("lora.gguf");
    let export = |adapter: &Path| {
        hone(&[
            "export-adapter",
            "-m",
            r.model.to_str().unwrap(),
            "--adapter_path",
            adapter.to_str().unwrap(),
            "--format",
            "gguf",
            "-o",
            lora_gguf.to_str().unwrap(),
        ])
    };
    one_line_error(&export(&adapter), &["modules_to_save", "hone merge"]);
    // A LoRA-only checkpoint exports: two tensors per adapted weight, named as llama.cpp wants.
    let lora_only = dir.join("lora-only");
    ok(&hone(&r.args(&[
        "--report_to",
        "none",
        "--max_steps",
        "1",
        "-o",
        lora_only.to_str().unwrap(),
    ])));
    ok(&export(&lora_only.join("adapter")));
    let f = hone_core::gguf::GgufFile::open(&lora_gguf).unwrap();
    assert_eq!(
        f.tensors.len(),
        2 * 7 * 2,
        "2 layers x 7 projections x (a, b)"
    );
    assert!(f
        .tensors
        .iter()
        .any(|t| t.name == "blk.1.ffn_gate.weight.lora_b"));
    // An adapter for another model is refused, naming the tensor.
    let foreign =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peft/tiny-llama-adapter");
    let out = hone(&[
        "merge",
        "-m",
        r.model.to_str().unwrap(),
        "--adapter_path",
        foreign.to_str().unwrap(),
        "-o",
        dir.join("m2").to_str().unwrap(),
    ]);
    one_line_error(&out, &["does not fit", "tensor"]);
}
