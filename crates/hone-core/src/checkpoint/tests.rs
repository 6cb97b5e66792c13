//! Checkpoint tests: exact round trip, detection of unfinished and damaged folders, rotation,
//! resume checks, and a full disk during a save.

use std::path::Path;

use super::*;
use crate::adapter::tests::{temp_dir, tiny_model};
use crate::adapter::{LoraInit, SplitMix64};

fn lora(r: usize, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r,
        lora_alpha: 16.0,
        lora_dropout: 0.1,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        init_lora_weights: LoraInit::NoInit,
        ..LoraConfig::default()
    }
}

/// A checkpoint whose every number is informative: random moments, awkward floats.
fn checkpoint(step: u64) -> Checkpoint {
    let (spec, base) = tiny_model("hf-tiny-llama");
    let mut config = lora(4, &["k_proj", "q_proj"]);
    config.modules_to_save = vec!["lm_head".into()];
    let mut adapter = LoraAdapter::init(&config, &spec, step, Some(&base)).unwrap();
    adapter.base_model_name_or_path = Some("HuggingFaceTB/SmolLM2-135M-Instruct".into());
    let mut g = SplitMix64::new(step);
    let mut optimizer = AdamWState {
        step: step * 2,
        ..AdamWState::default()
    };
    for (k, t) in &adapter.tensors {
        let m: Vec<f32> = (0..t.values.len())
            .map(|_| g.uniform(1e-3) as f32)
            .collect();
        let v: Vec<f32> = (0..t.values.len())
            .map(|_| (g.next_f64() * 1e-6) as f32)
            .collect();
        optimizer.exp_avg.insert(k.clone(), m);
        optimizer.exp_avg_sq.insert(k.clone(), v);
    }
    let first = optimizer.exp_avg.values_mut().next().unwrap();
    first[0] = -0.0;
    first[1] = f32::MIN_POSITIVE / 7.0;
    Checkpoint {
        step,
        epoch: step as f64 / 3.0,
        adapter,
        optimizer,
        scheduler_step: step + 1,
        rng_states: BTreeMap::from([
            ("dropout".into(), u64::MAX - step),
            ("shuffle".into(), 0x0123_4567_89ab_cdef),
        ]),
        data_position: DataPosition {
            epoch: step / 3,
            index: (step % 3 * 4) as usize,
        },
        model_fingerprint: ModelFingerprint::of_model(&spec, &base),
        training_config: serde_json::json!({"learning_rate": 2e-4, "max_steps": 100, "save_steps": 1, "per_device_train_batch_size": 4}),
        loss_history: vec![(1, 2.5), (2, 0.1 + 0.2), (3, f64::NAN), (4, f64::INFINITY)],
        best_metric: Some(1.25),
        best_model_checkpoint: Some("out/checkpoints/checkpoint-1".into()),
        best_global_step: Some(1),
        eval_history: vec![(2, 1.25), (4, f64::NAN)],
        evals_without_improvement: 1,
        tokens_seen: 12345,
    }
}

/// Bitwise comparison (NaN in the loss history defeats `==`).
fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.adapter.tensors.len(), b.adapter.tensors.len());
    for (k, t) in &a.adapter.tensors {
        assert_eq!(t.shape, b.adapter.tensors[k].shape, "{k}");
        assert_eq!(bits(&t.values), bits(&b.adapter.tensors[k].values), "{k}");
    }
    for (x, y) in [
        (&a.optimizer.exp_avg, &b.optimizer.exp_avg),
        (&a.optimizer.exp_avg_sq, &b.optimizer.exp_avg_sq),
    ] {
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (k, v) in x {
            assert_eq!(bits(v), bits(&y[k]), "{k}");
        }
    }
    let hist = |c: &Checkpoint| {
        c.loss_history
            .iter()
            .map(|(s, l)| (*s, l.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(hist(a), hist(b));
    let evals = |c: &Checkpoint| {
        c.eval_history
            .iter()
            .map(|(s, l)| (*s, l.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(evals(a), evals(b));
    assert_eq!(
        (a.evals_without_improvement, a.tokens_seen),
        (b.evals_without_improvement, b.tokens_seen)
    );
    assert_eq!(a.optimizer.step, b.optimizer.step);
    assert_eq!(
        (a.step, a.epoch.to_bits(), a.scheduler_step),
        (b.step, b.epoch.to_bits(), b.scheduler_step)
    );
    assert_eq!(a.rng_states, b.rng_states);
    assert_eq!(a.data_position, b.data_position);
    assert_eq!(a.model_fingerprint, b.model_fingerprint);
    assert_eq!(a.training_config, b.training_config);
    assert_eq!(
        (a.best_metric, &a.best_model_checkpoint, a.best_global_step),
        (b.best_metric, &b.best_model_checkpoint, b.best_global_step)
    );
    assert_eq!(
        a.adapter.base_model_name_or_path,
        b.adapter.base_model_name_or_path
    );
    let c = &a.adapter.config;
    let d = &b.adapter.config;
    assert_eq!(
        (
            c.r,
            c.lora_alpha,
            c.lora_dropout,
            c.use_rslora,
            c.init_lora_weights
        ),
        (
            d.r,
            d.lora_alpha,
            d.lora_dropout,
            d.use_rslora,
            d.init_lora_weights
        )
    );
    assert_eq!(c.modules_to_save, d.modules_to_save);
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_is_bit_exact_and_the_folder_is_a_peft_adapter() {
    let dir = temp_dir("ckpt-roundtrip");
    let c = checkpoint(7);
    let path = c.save(&dir).unwrap();
    assert_eq!(path, dir.join("checkpoint-7"));
    assert_eq!(names(&dir), ["checkpoint-7"]);
    assert_eq!(
        names(&path),
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "hone_state.json",
            "optimizer.safetensors",
            "trainer_state.json"
        ]
    );
    let back = Checkpoint::load(&path).unwrap();
    assert_same(&c, &back);
    assert_eq!(back.adapter.source.as_deref(), Some(path.as_path()));

    // The folder loads as a plain PEFT adapter, and trainer_state.json reads like HF's.
    let a = LoraAdapter::load_peft(&path).unwrap();
    assert_eq!(a.tensors, c.adapter.tensors);
    let ts: Value =
        serde_json::from_slice(&std::fs::read(path.join(TRAINER_STATE_FILE)).unwrap()).unwrap();
    assert_eq!(ts["global_step"], 7);
    assert_eq!(ts["best_model_checkpoint"], "out/checkpoints/checkpoint-1");
    assert_eq!(ts["max_steps"], 100);
    assert_eq!(ts["train_batch_size"], 4);
    assert_eq!(
        ts["log_history"][1],
        serde_json::json!({"loss": 0.30000000000000004, "step": 2})
    );
    assert_eq!(ts["log_history"][2]["loss"], "NaN");

    // Saving the same step again replaces the folder.
    let mut c2 = checkpoint(7);
    c2.scheduler_step = 99;
    c2.save(&dir).unwrap();
    assert_eq!(names(&dir), ["checkpoint-7"]);
    assert_eq!(Checkpoint::load(&path).unwrap().scheduler_step, 99);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latest_skips_tmp_leftovers_and_incomplete_folders_and_load_names_the_damaged_file() {
    let dir = temp_dir("ckpt-latest");
    assert_eq!(latest(&dir).unwrap(), None);
    assert_eq!(latest(dir.join("absent")).unwrap(), None);
    checkpoint(1).save(&dir).unwrap();
    let two = checkpoint(2).save(&dir).unwrap();
    let copy = |to: &str| {
        let d = dir.join(to);
        std::fs::create_dir_all(&d).unwrap();
        for n in names(&two) {
            std::fs::copy(two.join(&n), d.join(&n)).unwrap();
        }
        d
    };
    // A complete-looking leftover of a killed save and an older-looking non-checkpoint.
    copy("checkpoint-9.tmp-4242");
    copy("checkpoint-8.old-4242");
    copy("checkpoint-x");
    // A final-named folder without hone_state.json.
    let no_state = copy("checkpoint-3");
    std::fs::remove_file(no_state.join(HONE_STATE_FILE)).unwrap();
    // One with a truncated adapter file, one with a flipped byte in the optimizer file.
    let truncated = copy("checkpoint-4");
    let w = truncated.join(ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let flipped = copy("checkpoint-5");
    let o = flipped.join(OPTIMIZER_FILE);
    let mut bytes = std::fs::read(&o).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&o, &bytes).unwrap();
    // A corrupt hone_state.json.
    let bad_state = copy("checkpoint-6");
    std::fs::write(
        bad_state.join(HONE_STATE_FILE),
        b"{\"format\": \"hone-checkpoint\", \"ver",
    )
    .unwrap();

    let steps: Vec<(u64, bool)> = list(&dir)
        .unwrap()
        .iter()
        .map(|e| (e.step, e.complete))
        .collect();
    assert_eq!(
        steps,
        [
            (1, true),
            (2, true),
            (3, false),
            (4, false),
            (5, true),
            (6, false)
        ]
    );
    // checkpoint-5 passes the cheap size check; load() catches the flipped byte.
    assert_eq!(latest(&dir).unwrap(), Some(dir.join("checkpoint-5")));

    let err = |d: &Path| Checkpoint::load(d).unwrap_err().to_string();
    let e = err(&no_state);
    assert!(
        e.contains("checkpoint-3/hone_state.json") && e.contains("incomplete"),
        "{e}"
    );
    let e = err(&truncated);
    assert!(
        e.contains("checkpoint-4/adapter_model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    let e = err(&flipped);
    assert!(
        e.contains("checkpoint-5/optimizer.safetensors") && e.contains("corrupt"),
        "{e}"
    );
    let e = err(&bad_state);
    assert!(
        e.contains("checkpoint-6/hone_state.json") && e.contains("corrupt"),
        "{e}"
    );
    let e = err(&dir.join("checkpoint-77"));
    assert!(
        e.contains("checkpoint-77/hone_state.json") && e.contains("no checkpoint folder"),
        "{e}"
    );
    std::fs::remove_file(two.join(OPTIMIZER_FILE)).unwrap();
    let e = err(&two);
    assert!(
        e.contains("checkpoint-2/optimizer.safetensors") && e.contains("missing"),
        "{e}"
    );

    std::fs::remove_dir_all(&flipped).unwrap();
    assert_eq!(
        latest(&dir).unwrap(),
        Some(dir.join("checkpoint-1")),
        "checkpoint-2 lacks a file now"
    );
    Checkpoint::load(dir.join("checkpoint-1")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rotation_deletes_the_oldest_but_never_the_best() {
    let dir = temp_dir("ckpt-rotate");
    let save_all = || {
        for s in 1..=5 {
            checkpoint(s).save(&dir).unwrap();
        }
    };
    let steps = || {
        list(&dir)
            .unwrap()
            .iter()
            .map(|e| e.step)
            .collect::<Vec<_>>()
    };
    save_all();
    let removed = rotate(&dir, 2, Some(Path::new("out/checkpoints/checkpoint-2"))).unwrap();
    assert_eq!(
        removed,
        [1, 3, 4].map(|s| dir.join(format!("checkpoint-{s}")))
    );
    assert_eq!(steps(), [2, 5]);
    save_all();
    rotate(&dir, 1, Some(&dir.join("checkpoint-3"))).unwrap();
    assert_eq!(
        steps(),
        [3, 5],
        "limit 1 with an older best keeps both, as HF"
    );
    save_all();
    rotate(&dir, 3, Some(&dir.join("checkpoint-5"))).unwrap();
    assert_eq!(steps(), [3, 4, 5]);
    save_all();
    rotate(&dir, 3, Some(&dir.join("checkpoint-2"))).unwrap();
    assert_eq!(steps(), [2, 4, 5], "HF keeps best + the two newest");
    save_all();
    std::fs::remove_file(dir.join("checkpoint-1").join(HONE_STATE_FILE)).unwrap();
    rotate(&dir, 2, None).unwrap();
    assert_eq!(steps(), [1, 4, 5], "incomplete folders are left alone");
    assert!(rotate(&dir, 0, None)
        .unwrap_err()
        .to_string()
        .contains("at least 1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_on_another_model_or_lora_shape_says_what_differs() {
    let dir = temp_dir("ckpt-resume");
    let path = checkpoint(3).save(&dir).unwrap();
    let c = Checkpoint::load(&path).unwrap();
    let (spec, base) = tiny_model("hf-tiny-llama");
    let fp = ModelFingerprint::of_model(&spec, &base);
    let mut same = lora(4, &["q_proj", "k_proj"]);
    same.modules_to_save = vec!["lm_head".into()];
    c.check_resume(&fp, &same, &spec).unwrap();
    // Dropout may change between runs without changing any shape.
    c.check_resume(
        &fp,
        &LoraConfig {
            lora_dropout: 0.0,
            ..same.clone()
        },
        &spec,
    )
    .unwrap();
    c.check_resume(&ModelFingerprint::of_spec(&spec), &same, &spec)
        .unwrap();

    let err = |fp: &ModelFingerprint, l: &LoraConfig| {
        c.check_resume(fp, l, &spec).unwrap_err().to_string()
    };
    let mut wider = spec.clone();
    wider.hidden_size = 96;
    let e = err(&ModelFingerprint::of_spec(&wider), &same);
    assert!(
        e.contains("checkpoint-3")
            && e.contains("another model")
            && e.contains("hidden_size is 64 in the checkpoint but 96"),
        "{e}"
    );
    let (qwen, qwen_w) = tiny_model("hf-tiny-qwen2");
    let e = err(&ModelFingerprint::of_model(&qwen, &qwen_w), &same);
    assert!(
        e.contains("another model") && e.contains("architecture"),
        "{e}"
    );
    let mut other_weights = base.clone();
    let t = other_weights.tensors.get_mut("model.norm.weight").unwrap();
    *t = crate::tensor::TensorEntry::from_f32(&t.name, t.shape.clone(), &vec![0.5; t.numel()])
        .unwrap();
    let e = err(&ModelFingerprint::of_model(&spec, &other_weights), &same);
    assert!(e.contains("different weights"), "{e}");

    let e = err(
        &fp,
        &LoraConfig {
            r: 8,
            ..same.clone()
        },
    );
    assert!(
        e.contains("rank") && e.contains("r = 4 in the checkpoint, 8 in the config"),
        "{e}"
    );
    let e = err(
        &fp,
        &LoraConfig {
            lora_alpha: 32.0,
            ..same.clone()
        },
    );
    assert!(e.contains("scale differs"), "{e}");
    let e = err(
        &fp,
        &LoraConfig {
            target_modules: vec!["q_proj".into(), "k_proj".into(), "v_proj".into()],
            ..same.clone()
        },
    );
    assert!(
        e.contains("targets differ")
            && e.contains("model.layers.0.self_attn.v_proj is trained by the config"),
        "{e}"
    );
    assert!(
        e.contains("q_proj x2, k_proj x2") && e.contains("v_proj x2"),
        "{e}"
    );
    let e = err(
        &fp,
        &LoraConfig {
            target_modules: vec!["q_proj".into()],
            ..same.clone()
        },
    );
    assert!(
        e.contains(
            "model.layers.0.self_attn.k_proj is trained in the checkpoint but not by the config"
        ),
        "{e}"
    );
    let e = err(
        &fp,
        &LoraConfig {
            modules_to_save: vec![],
            ..same.clone()
        },
    );
    assert!(e.contains("modules_to_save differ"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_during_save_names_the_file_and_keeps_the_previous_checkpoint() {
    let dir = temp_dir("ckpt-diskfull");
    let first = checkpoint(1);
    let one = first.save(&dir).unwrap();
    for file in [OPTIMIZER_FILE, HONE_STATE_FILE, ADAPTER_WEIGHTS_FILE] {
        inject_write_failure(Some(file));
        let e = checkpoint(2).save(&dir).unwrap_err();
        inject_write_failure(None);
        let msg = e.to_string();
        let tmp = format!("checkpoint-2.tmp-{}/{file}", std::process::id());
        assert!(
            msg.contains(&tmp) && msg.contains("No space left on device"),
            "{msg}"
        );
        assert!(
            matches!(e, Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
        );
        assert_eq!(
            names(&dir),
            ["checkpoint-1"],
            "no partial folder is left behind"
        );
        assert_eq!(latest(&dir).unwrap(), Some(one.clone()));
    }
    // Replacing a checkpoint of the same step: a failure keeps the old one whole.
    let mut newer = checkpoint(1);
    newer.scheduler_step = 1000;
    inject_write_failure(Some(TRAINER_STATE_FILE));
    assert!(newer.save(&dir).is_err());
    inject_write_failure(None);
    assert_eq!(names(&dir), ["checkpoint-1"]);
    assert_same(&first, &Checkpoint::load(&one).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inconsistent_checkpoints_are_refused_before_anything_is_written() {
    let dir = temp_dir("ckpt-validate");
    let mut c = checkpoint(1);
    let key = c.optimizer.exp_avg.keys().next().unwrap().clone();
    c.optimizer.exp_avg.remove(&key);
    let e = c.save(&dir).unwrap_err().to_string();
    assert!(e.contains("exp_avg") && e.contains(&key), "{e}");
    let mut c = checkpoint(1);
    c.optimizer.exp_avg_sq.values_mut().next().unwrap().pop();
    assert!(c.save(&dir).unwrap_err().to_string().contains("exp_avg_sq"));
    let mut c = checkpoint(1);
    c.epoch = f64::NAN;
    assert!(c.save(&dir).unwrap_err().to_string().contains("epoch"));
    // No optimizer state yet (before the first step) is fine.
    let mut c = checkpoint(1);
    c.optimizer = AdamWState::default();
    let back = Checkpoint::load(c.save(&dir).unwrap()).unwrap();
    assert!(back.optimizer.exp_avg.is_empty() && back.optimizer.step == 0);
    assert!(names(&dir).iter().all(|n| !n.contains(".tmp-")));
    let _ = std::fs::remove_dir_all(&dir);
}
