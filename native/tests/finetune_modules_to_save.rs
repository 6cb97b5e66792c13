//! `hone finetune --modules_to_save` through the binary on a tiny random model with tied
//! embeddings: the trained copy is saved the PEFT way next to the LoRA pairs, it moved while the
//! base weights did not, and a run resumed from a checkpoint (AdamW moments of the copy
//! included) ends with the same adapter as the uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hone_core::adapter::LoraAdapter;
use hone_core::checkpoint::Checkpoint;
use hone_core::fixtures::{tiny_gguf_metadata, tiny_spec, tiny_weights, write_model_gguf};
use hone_core::{Architecture, DType};

fn hone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(args)
        .output()
        .expect("run hone")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "hone failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn setup(tag: &str) -> (PathBuf, PathBuf, hone_core::WeightStore) {
    let dir = std::env::temp_dir().join(format!("hone-mts-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = tiny_spec(Architecture::Llama, true, 368);
    let weights = tiny_weights(&spec, DType::Q8_0, 7).unwrap();
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
    std::fs::write(dir.join("data.jsonl"), s).unwrap();
    (dir, model, weights)
}

fn args<'a>(data: &'a str, model: &'a Path, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "finetune",
        "-m",
        model.to_str().unwrap(),
        "-d",
        data,
        "--train_split",
        "train[:20]",
        "--text_template",
        "{q} = {a}",
        "--lora_r",
        "4",
        "--learning_rate",
        "0.01",
        "--weight_decay",
        "0.01",
        "--per_device_train_batch_size",
        "3",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--modules_to_save",
        "lm_head",
        "--log_level",
        "warning",
        "-o",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn lm_head_trains_as_a_peft_copy_and_resumes_exactly() {
    let (dir, model, weights) = setup("lm_head");
    let data = dir.join("data.jsonl");
    let data = data.to_str().unwrap();
    let full = dir.join("full");
    let full_s = full.to_str().unwrap();
    ok(&hone(&args(data, &model, full_s, &[])));
    let adapter = LoraAdapter::load_peft(full.join("adapter")).unwrap();
    assert_eq!(adapter.config.modules_to_save, ["lm_head"]);
    let head = &adapter.tensors["base_model.model.lm_head.weight"];
    let embed = weights.get("model.embed_tokens.weight").unwrap().to_f32();
    assert_eq!(head.shape, [368, embed.len() / 368]);
    let moved = head
        .values
        .iter()
        .zip(&embed)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "the lm_head copy did not train ({moved})");
    assert!(!adapter
        .tensors
        .contains_key("base_model.model.model.embed_tokens.weight"));

    // Resume the full run's step-2 checkpoint into another folder: the same adapter at the end,
    // byte for byte.
    let ckpt = full.join("checkpoints/checkpoint-2");
    let c = Checkpoint::load(&ckpt).unwrap();
    let key = "base_model.model.lm_head.weight";
    assert!(c.adapter.tensors.contains_key(key));
    for m in [&c.optimizer.exp_avg, &c.optimizer.exp_avg_sq] {
        assert!(m[key].iter().any(|&v| v != 0.0), "no AdamW state for {key}");
    }
    let resumed = dir.join("resumed");
    let resumed_s = resumed.to_str().unwrap();
    ok(&hone(&args(
        data,
        &model,
        resumed_s,
        &["--resume_from_checkpoint", ckpt.to_str().unwrap()],
    )));
    let log = std::fs::read_to_string(resumed.join("logs/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["step"], 3,
        "the resumed run did not start after step 2: {log}"
    );
    let bytes = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        bytes(&full) == bytes(&resumed),
        "resumed run ended elsewhere"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
