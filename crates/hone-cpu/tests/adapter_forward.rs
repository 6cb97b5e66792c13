//! A LoRA adapter in the inference model (`CpuModel::set_adapter`, applied unmerged):
//! - logits equal those of a model built from merged f32 weights `W + scale * B @ A` (computed
//!   here in f64) for float and quantized base weights, llama and qwen2, tied and untied heads,
//!   every bias, rsLoRA, partial targets and `modules_to_save`, including PEFT's own file;
//! - prefill then decode through the KV cache equals one forward over the whole sequence;
//! - the NLL from the logits equals the training engine's `eval_loss` with the same adapter, and
//!   PyTorch + PEFT's NLL with its adapters;
//! - an adapter for another model is an error naming the tensor and leaves the model as it was;
//!   `clear_adapter` gives back the base logits bit for bit.
//!
//! Tolerance of logits: max |got - want| <= 1e-5 * max |want|. Both sides compute in f32 and
//! differ only in rounding (the merged weight is rounded to f32 once, the unmerged path sums
//! `W x` and `B (A x)` separately): observed about 1e-7.

mod common;
mod train_common;

use std::path::{Path, PathBuf};

use common::{random_weights, tiny_specs, Lcg};
use hone_core::adapter::{lora_b_key, saved_module_key, LoraAdapter, LoraConfig, LoraInit};
use hone_core::engine::{AdamW, Engine, LoraSetup, MicroBatch, NamedTensor, TrainTarget};
use hone_core::fixtures::{tiny_spec, tiny_weights};
use hone_core::{Architecture, DType, ModelSpec, TensorEntry, WeightStore};
use hone_cpu::train::CpuEngine;
use hone_cpu::{CpuModel, CpuModelOptions};
use train_common::block_on;

const TOL: f64 = 1e-5;

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(rel)
}

fn options(dense: bool) -> CpuModelOptions {
    CpuModelOptions {
        dequantize_at_load: dense,
    }
}

/// An adapter for `spec` with non-zero A and B on `targets` (PEFT's `init_lora_weights=False`:
/// A ~ U(+-1/sqrt(in)), B ~ U(+-1/sqrt(r))), and `modules_to_save` copied from `base` and then
/// moved away from it.
fn random_adapter(
    spec: &ModelSpec,
    base: &WeightStore,
    targets: &[&str],
    modules_to_save: &[&str],
    (r, alpha, rslora): (usize, f64, bool),
    seed: u64,
) -> LoraAdapter {
    let config = LoraConfig {
        r,
        lora_alpha: alpha,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        use_rslora: rslora,
        init_lora_weights: LoraInit::NoInit,
        modules_to_save: modules_to_save.iter().map(|s| s.to_string()).collect(),
        ..LoraConfig::default()
    };
    let mut adapter = LoraAdapter::init(&config, spec, seed, Some(base)).unwrap();
    let mut rng = Lcg::new(seed);
    for m in modules_to_save {
        let name = if *m == "lm_head" {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        let t = adapter.tensors.get_mut(&saved_module_key(name)).unwrap();
        for v in &mut t.values {
            *v += rng.next(0.3);
        }
    }
    adapter
}

/// The base model with the adapter merged, every weight f32: `W + scale * B @ A` (in f64) for
/// each LoRA pair, saved modules in place of their weights. A tied model that saves a module is
/// untied: the saved weight replaces only the one it names, the other keeps the base values.
fn merged(spec: &ModelSpec, base: &WeightStore, adapter: &LoraAdapter) -> (ModelSpec, WeightStore) {
    let scale = adapter.config.scale();
    let mut spec = spec.clone();
    let mut out = WeightStore::new("merged");
    for (name, t) in &base.tensors {
        out.insert(TensorEntry::from_f32(name.clone(), t.shape.clone(), &t.to_f32()).unwrap());
    }
    for t in adapter.targets() {
        let name = format!("{}.weight", t.module_path);
        let w = base.get(&name).unwrap().to_f32();
        let a = &adapter.lora_a(&t.module_path).unwrap().values;
        let b = &adapter.lora_b(&t.module_path).unwrap().values;
        let (k, n, r) = (t.in_features, t.out_features, adapter.config.r);
        let mut wm = vec![0f32; n * k];
        for i in 0..n {
            for j in 0..k {
                let ba: f64 = (0..r)
                    .map(|q| b[i * r + q] as f64 * a[q * k + j] as f64)
                    .sum();
                wm[i * k + j] = (w[i * k + j] as f64 + scale * ba) as f32;
            }
        }
        out.insert(TensorEntry::from_f32(name, vec![n, k], &wm).unwrap());
    }
    let saved = adapter.config.resolve_modules_to_save(&spec).unwrap();
    if spec.tie_word_embeddings && !saved.is_empty() {
        spec.tie_word_embeddings = false;
        let embed = base.get("model.embed_tokens.weight").unwrap();
        out.insert(
            TensorEntry::from_f32("lm_head.weight", embed.shape.clone(), &embed.to_f32()).unwrap(),
        );
    }
    for m in saved {
        let t = &adapter.tensors[&saved_module_key(&m.weight_name)];
        out.insert(TensorEntry::from_f32(m.weight_name, t.shape.clone(), &t.values).unwrap());
    }
    (spec, out)
}

fn random_tokens(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Lcg::new(seed);
    (0..n).map(|_| rng.below(vocab as u32)).collect()
}

fn logits(model: &mut CpuModel, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(tokens.len());
    model.forward(tokens, &mut cache).unwrap().data
}

/// max |got - want| / max |want|.
fn rel_max(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let err = got.iter().zip(want).fold(0f64, |m, (&g, &w)| {
        let e = (g as f64 - w as f64).abs();
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    });
    err / scale
}

/// Logits with the adapter set vs the merged model, and vs the base model (which must differ by
/// far more than the tolerance, so the comparison proves the adapter is applied). Returns the
/// two relative differences.
fn check_against_merged(
    label: &str,
    spec: &ModelSpec,
    base: &WeightStore,
    adapter: &LoraAdapter,
    tokens: &[u32],
) -> (f64, f64) {
    let (mspec, mweights) = merged(spec, base, adapter);
    let want = logits(
        &mut CpuModel::new(&mspec, &mweights, options(false)).unwrap(),
        tokens,
    );
    let mut worst = (0f64, f64::INFINITY);
    for dense in [false, true] {
        let mut model = CpuModel::new(spec, base, options(dense)).unwrap();
        let plain = logits(&mut model, tokens);
        model.set_adapter(adapter).unwrap();
        assert!(model.has_adapter());
        let got = logits(&mut model, tokens);
        let (err, moved) = (rel_max(&got, &want), rel_max(&plain, &want));
        eprintln!("{label} dense={dense}: vs merged {err:.1e}, base vs merged {moved:.1e}");
        assert!(err <= TOL, "{label} dense={dense}: {err:.2e} > {TOL:.0e}");
        assert!(
            moved > 100.0 * TOL,
            "{label} dense={dense}: the adapter barely changes the logits ({moved:.1e})"
        );
        worst = (worst.0.max(err), worst.1.min(moved));
    }
    worst
}

#[test]
fn adapter_logits_equal_the_merged_model_for_float_and_quantized_weights() {
    let cases = [
        (Architecture::Llama, false, DType::F32),
        (Architecture::Llama, false, DType::F16),
        (Architecture::Llama, false, DType::Q8_0),
        (Architecture::Llama, false, DType::Q4_1),
        (Architecture::Qwen2, true, DType::F32),
        (Architecture::Qwen2, true, DType::Q8_0),
        (Architecture::Qwen2, true, DType::Q4_1),
    ];
    // No K-quant: the tiny Q4_K model is ill-conditioned (its f32 logits are already 4-6e-6 from
    // an f64 forward without any adapter), and the LoRA path does not depend on the base type.
    // 70 tokens: the prefill path splits the rows between threads.
    let mut worst = (0f64, f64::INFINITY);
    for (i, (arch, tied, dtype)) in cases.into_iter().enumerate() {
        let spec = tiny_spec(arch, tied, 96);
        let base = tiny_weights(&spec, dtype, 11 + i as u64).unwrap();
        // rsLoRA on every other case: scale = alpha / sqrt(r) = 0.25, else alpha / r = 0.125.
        let hyper = if i % 2 == 0 {
            (8, 1.0, false)
        } else {
            (4, 0.5, true)
        };
        let adapter = random_adapter(&spec, &base, &["all-linear"], &[], hyper, 5 + i as u64);
        let tokens = random_tokens(96, 70, i as u64);
        let label = format!("{arch:?} tied={tied} {dtype}");
        let (e, m) = check_against_merged(&label, &spec, &base, &adapter, &tokens);
        worst = (worst.0.max(e), worst.1.min(m));
    }
    // Biases on every projection (o_proj and the MLP too), small shapes.
    for (name, spec) in tiny_specs() {
        let base = random_weights(&spec, 3);
        let adapter = random_adapter(&spec, &base, &["all-linear"], &[], (2, 3.0, false), 9);
        let tokens = random_tokens(spec.vocab_size, 40, 4);
        let (e, m) = check_against_merged(name, &spec, &base, &adapter, &tokens);
        worst = (worst.0.max(e), worst.1.min(m));
    }
    eprintln!(
        "worst vs merged {:.1e}; smallest base-vs-merged difference {:.1e}",
        worst.0, worst.1
    );
}

#[test]
fn modules_to_save_replace_only_the_weight_they_name() {
    for (arch, tied) in [(Architecture::Llama, false), (Architecture::Qwen2, true)] {
        let spec = tiny_spec(arch, tied, 64);
        let base = tiny_weights(&spec, DType::Q8_0, 2).unwrap();
        let tokens = random_tokens(64, 33, 8);
        for saved in [
            &["lm_head"][..],
            &["embed_tokens"][..],
            &["embed_tokens", "lm_head"][..],
        ] {
            let adapter = random_adapter(
                &spec,
                &base,
                &["q_proj", "v_proj"],
                saved,
                (4, 8.0, false),
                3,
            );
            let label = format!("{arch:?} tied={tied} saves {saved:?}");
            check_against_merged(&label, &spec, &base, &adapter, &tokens);
        }
    }
}

#[test]
fn the_peft_adapter_fixture_with_a_saved_lm_head_equals_its_merged_model() {
    // Saved by PEFT 0.21.2 (scripts/make_peft_fixture.py): all-linear r=4, modules_to_save
    // lm_head, B random; on the tiny llama (bf16 weights, untied head, llama3 rope).
    let dir = fixture("hf-tiny-llama");
    let spec = hone_core::hf::read_config(&dir).unwrap();
    let base = hone_core::hf::read_weights(&dir).unwrap();
    let adapter = LoraAdapter::load_peft(fixture("peft/tiny-llama-adapter")).unwrap();
    assert_eq!(adapter.config.modules_to_save, ["lm_head"]);
    let tokens: Vec<u32> = (0..40u32).map(|i| (7 * i + 3) % 128).collect();
    check_against_merged("peft tiny-llama-adapter", &spec, &base, &adapter, &tokens);
}

#[test]
fn prefill_then_decode_with_the_adapter_equals_one_full_forward() {
    for (arch, tied, dtype) in [
        (Architecture::Llama, false, DType::F32),
        (Architecture::Llama, false, DType::Q4_1),
        (Architecture::Qwen2, true, DType::Q8_0),
    ] {
        let spec = tiny_spec(arch, tied, 80);
        let base = tiny_weights(&spec, dtype, 4).unwrap();
        let adapter = random_adapter(
            &spec,
            &base,
            &["all-linear"],
            &["lm_head"],
            (8, 16.0, false),
            6,
        );
        let tokens = random_tokens(80, 80, 2);
        let mut model = CpuModel::new(&spec, &base, options(false)).unwrap();
        model.set_adapter(&adapter).unwrap();
        let full = logits(&mut model, &tokens);
        // Prefill 66 rows (split between threads), then one token at a time.
        let mut cache = model.new_cache(tokens.len());
        let mut got = model.forward(&tokens[..66], &mut cache).unwrap().data;
        for &t in &tokens[66..] {
            got.extend(model.forward(&[t], &mut cache).unwrap().data);
        }
        let err = rel_max(&got, &full);
        eprintln!("{arch:?} {dtype}: prefill + decode vs one forward {err:.1e}");
        assert!(err <= TOL, "{arch:?} {dtype}: {err:.2e}");
        // forward_last after a prefill equals the last row.
        cache.truncate(70);
        let last = model.forward_last(&tokens[70..], &mut cache).unwrap();
        let v = spec.vocab_size;
        let err = rel_max(last.last(), &full[79 * v..]);
        assert!(err <= TOL, "{arch:?} {dtype}: forward_last {err:.2e}");
    }
}

/// The engine tensors (`{module}.lora_A` / `.lora_B`) and setup of `adapter`.
fn engine_params(adapter: &LoraAdapter) -> (LoraSetup, Vec<NamedTensor>) {
    let targets: Vec<TrainTarget> = adapter
        .targets()
        .into_iter()
        .map(|t| TrainTarget {
            module: t.module_path,
            in_features: t.in_features,
            out_features: t.out_features,
        })
        .collect();
    let mut params = Vec::new();
    for t in &targets {
        for (suffix, m) in [
            ("lora_A", adapter.lora_a(&t.module).unwrap()),
            ("lora_B", adapter.lora_b(&t.module).unwrap()),
        ] {
            params.push(NamedTensor {
                name: format!("{}.{suffix}", t.module),
                shape: m.shape.clone(),
                data: m.values.clone(),
            });
        }
    }
    let setup = LoraSetup {
        rank: adapter.config.r,
        scale: adapter.config.scale() as f32,
        dropout: 0.0,
        targets,
        modules_to_save: Vec::new(),
    };
    (setup, params)
}

/// Summed NLL of the labels (next-token, -100 ignored) from the inference logits of each row,
/// and the number of labelled tokens.
fn inference_nll(model: &mut CpuModel, ids: &[u32], labels: &[i32], seq: usize) -> (f64, usize) {
    let (mut sum, mut tokens) = (0f64, 0);
    for (row_ids, row_labels) in ids.chunks(seq).zip(labels.chunks(seq)) {
        let mut cache = model.new_cache(seq);
        let l = model.forward(row_ids, &mut cache).unwrap();
        for t in 0..seq - 1 {
            let label = row_labels[t + 1];
            if label == -100 {
                continue;
            }
            let row = l.row(t);
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            sum += m + z.ln() - row[label as usize] as f64;
            tokens += 1;
        }
    }
    (sum, tokens)
}

#[test]
fn inference_loss_with_the_adapter_equals_the_training_engine_eval_loss() {
    for (arch, tied, dtype) in [
        (Architecture::Llama, false, DType::F32),
        (Architecture::Qwen2, true, DType::Q8_0),
        (Architecture::Llama, true, DType::Q4_1),
    ] {
        let spec = tiny_spec(arch, tied, 64);
        let base = tiny_weights(&spec, dtype, 7).unwrap();
        let adapter = random_adapter(&spec, &base, &["all-linear"], &[], (4, 8.0, false), 1);
        let (setup, params) = engine_params(&adapter);
        let mut engine =
            CpuEngine::new(&spec, &base, setup, AdamW::default(), Default::default()).unwrap();
        block_on(engine.set_params(&params)).unwrap();
        let (batch, seq) = (3, 24);
        let ids = random_tokens(64, batch * seq, 5);
        let mut labels: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        for b in 0..batch {
            labels[b * seq..b * seq + 3 + b].fill(-100);
        }
        let mb = MicroBatch {
            ids: &ids,
            labels: &labels,
            batch,
            seq,
        };
        let want = block_on(engine.eval_loss(&mb)).unwrap();
        let mut model = CpuModel::new(&spec, &base, options(false)).unwrap();
        let (base_nll, _) = inference_nll(&mut model, &ids, &labels, seq);
        model.set_adapter(&adapter).unwrap();
        let (got, tokens) = inference_nll(&mut model, &ids, &labels, seq);
        assert_eq!(tokens, want.tokens);
        let rel = (got - want.nll_sum).abs() / want.nll_sum;
        let moved = (base_nll - want.nll_sum).abs() / want.nll_sum;
        eprintln!(
            "{arch:?} {dtype}: inference NLL {got} vs engine {} (rel {rel:.1e}); base model \
             {base_nll} (rel {moved:.1e})",
            want.nll_sum
        );
        assert!(rel <= TOL, "{arch:?} {dtype}: rel {rel:.2e}");
        assert!(
            moved > 100.0 * TOL,
            "{arch:?}: adapter barely moves the loss"
        );
    }
}

#[test]
fn inference_loss_with_peft_adapters_matches_pytorch_peft() {
    // scripts/make_train_fixtures.py: PyTorch + PEFT's NLL sum of the first two micro-batches
    // with the imported random adapter (A and B non-zero, r=4, alpha=8, all seven projections).
    for model_name in ["hf-tiny-llama", "hf-tiny-qwen2"] {
        let dir = fixture(model_name);
        let spec = hone_core::hf::read_config(&dir).unwrap();
        let base = hone_core::hf::read_weights(&dir).unwrap();
        let fix = fixture(&format!("train/{model_name}"));
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fix.join("expected.json")).unwrap())
                .unwrap();
        let adapter = LoraAdapter::load_peft(fix.join("init-adapter")).unwrap();
        let mut model = CpuModel::new(&spec, &base, options(false)).unwrap();
        model.set_adapter(&adapter).unwrap();
        let seq = expected["seq"].as_u64().unwrap() as usize;
        let first = &expected["first_step"];
        for j in 0..2 {
            let mb = &expected["micro_batches"][j];
            let ids: Vec<u32> = mb["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let labels: Vec<i32> = mb["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let (got, tokens) = inference_nll(&mut model, &ids, &labels, seq);
            let want = first["nll_sums"][j].as_f64().unwrap();
            assert_eq!(tokens as u64, first["tokens"][j].as_u64().unwrap());
            let rel = (got - want).abs() / want;
            eprintln!("{model_name}: micro-batch {j}: NLL {got} vs PEFT {want} (rel {rel:.1e})");
            assert!(rel <= TOL, "{model_name}: micro-batch {j}: rel {rel:.2e}");
        }
    }
}

#[test]
fn an_adapter_for_another_model_is_an_error_naming_the_tensor() {
    let spec = tiny_spec(Architecture::Llama, false, 64);
    let base = tiny_weights(&spec, DType::Q8_0, 1).unwrap();
    let tokens = random_tokens(64, 9, 1);
    let mut model = CpuModel::new(&spec, &base, options(false)).unwrap();
    let plain = logits(&mut model, &tokens);

    let mut wider = spec.clone();
    wider.hidden_size = 128;
    wider.head_dim = 32;
    let mut deeper = spec.clone();
    deeper.num_hidden_layers = 3;
    let other = |s: &ModelSpec| {
        random_adapter(
            s,
            &tiny_weights(s, DType::F32, 1).unwrap(),
            &["all-linear"],
            &[],
            (4, 8.0, false),
            2,
        )
    };
    let mut missing_b = random_adapter(&spec, &base, &["all-linear"], &[], (4, 8.0, false), 2);
    let gone = lora_b_key("model.layers.1.mlp.up_proj");
    missing_b.tensors.remove(&gone);
    let mut wrong_head =
        random_adapter(&spec, &base, &["q_proj"], &["lm_head"], (4, 8.0, false), 2);
    let head = saved_module_key("lm_head.weight");
    wrong_head.tensors.get_mut(&head).unwrap().shape = vec![32, 512];
    let bad = [
        (
            "hidden size 128",
            other(&wider),
            "model.layers.0.".to_string(),
        ),
        ("3 layers", other(&deeper), "model.layers.2.".to_string()),
        ("missing B", missing_b, gone),
        ("lm_head of another shape", wrong_head, head),
    ];

    let good = random_adapter(&spec, &base, &["all-linear"], &[], (4, 8.0, false), 3);
    for (what, adapter, names) in &bad {
        let e = model.set_adapter(adapter).unwrap_err().to_string();
        eprintln!("{what}: {e}");
        assert!(
            e.contains(names.as_str()),
            "{what}: '{e}' does not name {names}"
        );
        assert!(!model.has_adapter(), "{what}");
        assert_eq!(
            logits(&mut model, &tokens),
            plain,
            "{what}: base model changed"
        );
    }
    // A failed set_adapter keeps the adapter set before.
    model.set_adapter(&good).unwrap();
    let with_good = logits(&mut model, &tokens);
    assert!(rel_max(&with_good, &plain) > 100.0 * TOL);
    for (what, adapter, _) in &bad {
        assert!(model.set_adapter(adapter).is_err());
        assert!(model.has_adapter());
        assert_eq!(logits(&mut model, &tokens), with_good, "{what}");
    }
}

#[test]
fn clear_adapter_restores_the_base_and_a_second_adapter_replaces_the_first() {
    let spec = tiny_spec(Architecture::Qwen2, true, 64);
    let base = tiny_weights(&spec, DType::Q4_1, 5).unwrap();
    let tokens = random_tokens(64, 40, 3);
    let mut model = CpuModel::new(&spec, &base, options(false)).unwrap();
    assert!(!model.has_adapter());
    let plain = logits(&mut model, &tokens);
    let bytes = model.weight_bytes();

    let first = random_adapter(
        &spec,
        &base,
        &["all-linear"],
        &["lm_head", "embed_tokens"],
        (8, 8.0, false),
        1,
    );
    let second = random_adapter(&spec, &base, &["q_proj", "v_proj"], &[], (2, 4.0, true), 2);
    let mut fresh = CpuModel::new(&spec, &base, options(false)).unwrap();
    fresh.set_adapter(&second).unwrap();
    let want_second = logits(&mut fresh, &tokens);

    model.set_adapter(&first).unwrap();
    assert!(model.weight_bytes() > bytes);
    let with_first = logits(&mut model, &tokens);
    assert!(rel_max(&with_first, &plain) > 100.0 * TOL);
    model.set_adapter(&second).unwrap();
    assert_eq!(logits(&mut model, &tokens), want_second);
    model.clear_adapter();
    assert!(!model.has_adapter());
    assert_eq!(model.weight_bytes(), bytes);
    assert_eq!(logits(&mut model, &tokens), plain);
}

/// The cost of an adapter (r=8 on all seven projections) on SmolLM2-135M Q4_1: prefill 128
/// tokens and decode, without and with it, alternating, best of several runs (the machine may
/// be shared). Ignored by default; run with
/// `cargo test -p hone-cpu --release --test adapter_forward -- --ignored --nocapture`.
#[test]
#[ignore]
fn smollm2_adapter_speed() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/models"))
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let loaded = hone_core::load_model(&path).unwrap();
    let (spec, weights) = (&loaded.spec, &loaded.weights);
    let adapter = random_adapter(spec, weights, &["all-linear"], &[], (8, 16.0, false), 1);
    let mut model = CpuModel::new(spec, weights, options(false)).unwrap();
    let prompt = random_tokens(spec.vocab_size, 128, 1);
    // Seconds of one prefill of the prompt and of one decoded token (after the prompt).
    let run = |model: &mut CpuModel| -> (f64, f64) {
        let mut cache = model.new_cache(256);
        let t0 = std::time::Instant::now();
        model.forward_last(&prompt, &mut cache).unwrap();
        let prefill = t0.elapsed().as_secs_f64();
        let mut decode = f64::INFINITY;
        let mut tok = prompt[127];
        for _ in 0..32 {
            let t0 = std::time::Instant::now();
            let l = model.forward_last(&[tok], &mut cache).unwrap();
            decode = decode.min(t0.elapsed().as_secs_f64());
            tok = hone_core::sampling::argmax(l.last());
        }
        (prefill, decode)
    };
    let (mut base, mut lora) = (
        (f64::INFINITY, f64::INFINITY),
        (f64::INFINITY, f64::INFINITY),
    );
    let best = |a: (f64, f64), b: (f64, f64)| (a.0.min(b.0), a.1.min(b.1));
    for _ in 0..6 {
        model.clear_adapter();
        base = best(base, run(&mut model));
        model.set_adapter(&adapter).unwrap();
        lora = best(lora, run(&mut model));
    }
    println!(
        "SmolLM2-135M Q4_1, {} threads: prefill 128 tokens {:.1} -> {:.1} ms ({:+.1}%), \
         decode {:.2} -> {:.2} ms/token ({:+.1}%)",
        rayon_threads(),
        base.0 * 1e3,
        lora.0 * 1e3,
        (lora.0 / base.0 - 1.0) * 100.0,
        base.1 * 1e3,
        lora.1 * 1e3,
        (lora.1 / base.1 - 1.0) * 100.0
    );
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into())
}
