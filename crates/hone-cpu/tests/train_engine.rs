//! Whole-model behaviour of `CpuEngine` on tiny random models: LoRA gradients against finite
//! differences of the loss (f32 and quantized base weights, with and without dropout), gradient
//! checkpointing giving the same gradients, the training forward agreeing with the inference
//! forward, planned buffers reused across shapes, optimizer state round trips, and errors
//! instead of panics on bad input.

mod common;
mod train_common;

use common::{random_weights, spec, Lcg};
use hone_core::engine::{AdamW, Engine, LoraSetup, MicroBatch, NamedTensor, SavedModule};
use hone_core::{Architecture, DType, ModelSpec, WeightStore};
use hone_cpu::train::{CpuEngine, CpuTrainOptions};
use hone_cpu::{CpuModel, CpuModelOptions};
use train_common::{all_targets, block_on, quantize_store, random_lora};

/// A micro-batch of random ids; labels = ids except a prompt of -100 at the start of each row
/// and one -100 inside the second row.
fn random_batch(vocab: usize, batch: usize, seq: usize, seed: u64) -> (Vec<u32>, Vec<i32>) {
    let mut rng = Lcg::new(seed);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.below(vocab as u32)).collect();
    let mut labels: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    for b in 0..batch {
        labels[b * seq] = -100;
        labels[b * seq + 1] = -100;
    }
    if batch > 1 && seq > 4 {
        labels[seq + seq / 2] = -100;
    }
    (ids, labels)
}

fn engine(
    spec: &ModelSpec,
    w: &WeightStore,
    setup: &LoraSetup,
    opts: CpuTrainOptions,
    lora_seed: u64,
) -> CpuEngine {
    let mut e = CpuEngine::new(spec, w, setup.clone(), AdamW::default(), opts).unwrap();
    block_on(e.set_params(&with_lora(&e, setup, lora_seed))).unwrap();
    e
}

/// The engine's parameters with random LoRA matrices (the `modules_to_save` copies as the
/// engine made them: the base weights).
fn with_lora(e: &CpuEngine, setup: &LoraSetup, lora_seed: u64) -> Vec<NamedTensor> {
    let lora = random_lora(setup, lora_seed, 0.3);
    let mut p = block_on(e.params()).unwrap();
    for t in &mut p {
        if let Some(l) = lora.iter().find(|l| l.name == t.name) {
            *t = l.clone();
        }
    }
    p
}

/// `all_targets` plus `modules_to_save` (`lm_head` and/or `embed_tokens`).
fn with_saved(spec: &ModelSpec, modules: &[&str]) -> LoraSetup {
    let mut setup = all_targets(spec, 2, 1.5, 0.0);
    setup.modules_to_save = modules
        .iter()
        .map(|&m| SavedModule {
            module: m.into(),
            weight_name: match m {
                "lm_head" => "lm_head.weight".into(),
                _ => "model.embed_tokens.weight".into(),
            },
            shape: vec![spec.vocab_size, spec.hidden_size],
        })
        .collect();
    setup
}

fn mb<'a>(b: &'a (Vec<u32>, Vec<i32>), batch: usize, seq: usize) -> MicroBatch<'a> {
    MicroBatch {
        ids: &b.0,
        labels: &b.1,
        batch,
        seq,
    }
}

fn flat(ts: &[NamedTensor]) -> Vec<f32> {
    ts.iter().flat_map(|t| t.data.iter().copied()).collect()
}

/// d(nll_sum)/d(every LoRA value) by central differences (step 1e-2 in f32) against the
/// engine's gradients. With dropout, every evaluation redraws the same masks (the seed is set
/// before each). Tolerance: max |analytic - numeric| <= 2e-3 * max |numeric| over all values
/// (rounding noise of the f32 loss is ~1e-6 absolute, /0.02 step = ~5e-5 in the derivative).
fn gradient_check(label: &str, spec: &ModelSpec, w: &WeightStore, dropout: f32) {
    gradient_check_setup(label, spec, w, &all_targets(spec, 2, 1.5, dropout));
}

fn gradient_check_setup(label: &str, spec: &ModelSpec, w: &WeightStore, setup: &LoraSetup) {
    let setup = setup.clone();
    let (batch, seq) = (2, 6);
    let data = random_batch(spec.vocab_size, batch, seq, 5);
    let mut e = engine(spec, w, &setup, CpuTrainOptions::default(), 9);
    let params = block_on(e.params()).unwrap();
    let loss = |e: &mut CpuEngine| -> f64 {
        e.set_dropout_seed(77);
        block_on(e.forward_backward(&mb(&data, batch, seq), 0.0))
            .unwrap()
            .nll_sum
    };
    loss(&mut e);
    assert!(flat(&block_on(e.grads()).unwrap())
        .iter()
        .all(|&g| g == 0.0));
    e.set_dropout_seed(77);
    block_on(e.forward_backward(&mb(&data, batch, seq), 1.0)).unwrap();
    let analytic = flat(&block_on(e.grads()).unwrap());
    let mut numeric = Vec::with_capacity(analytic.len());
    let mut p = params.clone();
    for ti in 0..p.len() {
        for i in 0..p[ti].data.len() {
            let orig = p[ti].data[i];
            let (hi, lo) = (orig + 1e-2, orig - 1e-2);
            p[ti].data[i] = hi;
            block_on(e.set_params(&p)).unwrap();
            let fp = loss(&mut e);
            p[ti].data[i] = lo;
            block_on(e.set_params(&p)).unwrap();
            let fm = loss(&mut e);
            p[ti].data[i] = orig;
            numeric.push((fp - fm) / (hi as f64 - lo as f64));
        }
    }
    // Each tensor trained in full, on its own scale (its gradient must not be ~0 either).
    let mut start = 0;
    for t in &params {
        let len = t.data.len();
        if !t.name.contains(".lora_") {
            let (a, n) = (&analytic[start..start + len], &numeric[start..start + len]);
            let scale = n.iter().fold(0f64, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(n)
                .map(|(&a, &n)| (a as f64 - n).abs())
                .fold(
                    0f64,
                    |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
                );
            eprintln!(
                "{label}: {} ({len} values): max |grad| {scale:.3}, max error {worst:.2e} ({:.1e} relative)",
                t.name,
                worst / scale
            );
            assert!(scale > 0.05, "{label}: {}: gradient ~0", t.name);
            assert!(
                worst <= 2e-3 * scale,
                "{label}: {}: max error {worst} (max |grad| {scale})",
                t.name
            );
        }
        start += len;
    }
    let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&a, &n)) in analytic.iter().zip(&numeric).enumerate() {
        let err = (a as f64 - n).abs();
        if err > worst || err.is_nan() {
            (worst, at) = (err, i);
        }
    }
    eprintln!(
        "{label}: {} values, max |grad| {scale:.3}, max error {worst:.2e} ({:.1e} relative)",
        analytic.len(),
        worst / scale
    );
    assert!(
        scale > 0.05,
        "{label}: gradients are ~0, the check would prove nothing"
    );
    assert!(
        worst <= 2e-3 * scale,
        "{label}: value {at}: analytic {} numeric {} (max |grad| {scale})",
        analytic[at],
        numeric[at]
    );
}

fn tiny_llama() -> ModelSpec {
    spec(Architecture::Llama, 37, 4, 2, 8, 40, 2, false)
}

fn tiny_qwen() -> ModelSpec {
    spec(Architecture::Qwen2, 37, 4, 2, 8, 40, 2, true)
}

#[test]
fn lora_gradients_match_finite_differences_llama_untied_gqa() {
    let s = tiny_llama();
    gradient_check("llama", &s, &random_weights(&s, 1), 0.0);
}

#[test]
fn lora_gradients_match_finite_differences_qwen2_tied_with_biases() {
    let s = tiny_qwen();
    gradient_check("qwen2", &s, &random_weights(&s, 2), 0.0);
}

#[test]
fn lora_gradients_match_finite_differences_with_quantized_base_weights() {
    // Q8_0 rows need 32 values: hidden 32, ffn 64.
    let s = spec(Architecture::Llama, 37, 4, 2, 8, 64, 2, true);
    let w = quantize_store(&random_weights(&s, 3), DType::Q8_0, Some(DType::Q8_0));
    gradient_check("llama q8_0", &s, &w, 0.0);
}

#[test]
fn lora_gradients_match_finite_differences_with_dropout() {
    let s = tiny_llama();
    gradient_check("llama dropout 0.3", &s, &random_weights(&s, 4), 0.3);
}

#[test]
fn lora_gradients_match_finite_differences_for_a_subset_of_projections() {
    // q and v without k (the q/k/v group is fused with a gap), up without gate, o alone.
    let s = tiny_llama();
    let keep = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.1.self_attn.k_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.mlp.down_proj",
    ];
    for dropout in [0.0, 0.25] {
        let mut setup = all_targets(&s, 3, 0.7, dropout);
        setup.targets.retain(|t| keep.contains(&t.module.as_str()));
        assert_eq!(setup.targets.len(), keep.len());
        let label = format!("llama subset, dropout {dropout}");
        gradient_check_setup(&label, &s, &random_weights(&s, 21), &setup);
    }
}

#[test]
fn gradient_checkpointing_gives_identical_gradients() {
    for (dropout, wt) in [(0.0f32, DType::F32), (0.2, DType::Q4_1)] {
        let s = spec(Architecture::Qwen2, 41, 4, 2, 8, 64, 3, true);
        let w = random_weights(&s, 5);
        let w = if wt == DType::F32 {
            w
        } else {
            quantize_store(&w, wt, None)
        };
        let setup = all_targets(&s, 4, 2.0, dropout);
        let (batch, seq) = (3, 9);
        let data = random_batch(s.vocab_size, batch, seq, 6);
        let run = |ckpt: bool| {
            let opts = CpuTrainOptions {
                gradient_checkpointing: ckpt,
                ..Default::default()
            };
            let mut e = engine(&s, &w, &setup, opts, 10);
            e.set_dropout_seed(3);
            let l = block_on(e.forward_backward(&mb(&data, batch, seq), 0.1)).unwrap();
            (l, flat(&block_on(e.grads()).unwrap()))
        };
        let (l1, g1) = run(false);
        let (l2, g2) = run(true);
        assert_eq!(l1, l2, "dropout {dropout}: loss differs with checkpointing");
        assert!(g1.iter().any(|&g| g != 0.0));
        assert_eq!(
            g1, g2,
            "dropout {dropout}: gradients differ with checkpointing"
        );
    }
}

#[test]
fn training_forward_matches_the_inference_forward() {
    for s in [tiny_llama(), tiny_qwen()] {
        let w = random_weights(&s, 7);
        let setup = all_targets(&s, 2, 1.0, 0.0);
        // B = 0: the adapter is the identity, so the loss is the base model's.
        let mut e =
            CpuEngine::new(&s, &w, setup.clone(), AdamW::default(), Default::default()).unwrap();
        let mut p = random_lora(&setup, 1, 0.3);
        for t in p.iter_mut().filter(|t| t.name.ends_with("lora_B")) {
            t.data.fill(0.0);
        }
        block_on(e.set_params(&p)).unwrap();
        let (batch, seq) = (2, 7);
        let data = random_batch(s.vocab_size, batch, seq, 8);
        let got = block_on(e.eval_loss(&mb(&data, batch, seq))).unwrap();
        let mut model = CpuModel::new(&s, &w, CpuModelOptions::default()).unwrap();
        let mut want = 0f64;
        let mut tokens = 0;
        for b in 0..batch {
            let mut cache = model.new_cache(seq);
            let logits = model
                .forward(&data.0[b * seq..(b + 1) * seq], &mut cache)
                .unwrap();
            for t in 0..seq - 1 {
                let label = data.1[b * seq + t + 1];
                if label == -100 {
                    continue;
                }
                let row = logits.row(t);
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                want += m + z.ln() - row[label as usize] as f64;
                tokens += 1;
            }
        }
        assert_eq!(got.tokens, tokens);
        let rel = (got.nll_sum - want).abs() / want;
        assert!(
            rel < 1e-5,
            "{:?}: {} vs {want} ({rel:.1e})",
            s.architecture,
            got.nll_sum
        );
    }
}

#[test]
fn buffers_planned_for_one_shape_serve_smaller_and_larger_ones() {
    let s = tiny_qwen();
    let w = random_weights(&s, 11);
    let setup = all_targets(&s, 3, 2.0, 0.1);
    for ckpt in [false, true] {
        let opts = CpuTrainOptions {
            gradient_checkpointing: ckpt,
            loss_chunk_rows: 4,
            ..Default::default()
        };
        let shapes = [(2usize, 8usize), (1, 5), (3, 11), (2, 8)];
        let mut reused = engine(&s, &w, &setup, opts, 12);
        for (i, &(batch, seq)) in shapes.iter().enumerate() {
            let data = random_batch(s.vocab_size, batch, seq, 20 + i as u64);
            let mut fresh = engine(&s, &w, &setup, opts, 12);
            for e in [&mut reused, &mut fresh] {
                e.set_dropout_seed(i as u64);
                block_on(e.forward_backward(&mb(&data, batch, seq), 1.0)).unwrap();
            }
            let a = block_on(reused.grads()).unwrap();
            let b = block_on(fresh.grads()).unwrap();
            assert_eq!(flat(&a), flat(&b), "shape {batch}x{seq} (ckpt {ckpt})");
            let ea = block_on(reused.eval_loss(&mb(&data, batch, seq))).unwrap();
            let eb = block_on(fresh.eval_loss(&mb(&data, batch, seq))).unwrap();
            assert_eq!(ea, eb);
            // Clear the reused engine's gradients for the next shape.
            block_on(reused.optimizer_step(0.0, None)).unwrap();
        }
    }
}

/// `modules_to_save`: the gradients of the trainable lm_head / embed_tokens copies against
/// central differences of the loss. With tied embeddings the copy replaces one use only (PEFT),
/// so a copy that also fed the other use would differ from the finite differences.
#[test]
fn modules_to_save_gradients_match_finite_differences_untied() {
    let s = tiny_llama();
    let w = random_weights(&s, 3);
    for modules in [&["lm_head", "embed_tokens"][..], &["embed_tokens"]] {
        let setup = with_saved(&s, modules);
        gradient_check_setup(&format!("untied {modules:?}"), &s, &w, &setup);
    }
}

#[test]
fn modules_to_save_gradients_match_finite_differences_tied() {
    let s = tiny_qwen();
    assert!(s.tie_word_embeddings);
    let w = random_weights(&s, 4);
    for modules in [
        &["lm_head"][..],
        &["embed_tokens"],
        &["lm_head", "embed_tokens"],
    ] {
        let setup = with_saved(&s, modules);
        gradient_check_setup(&format!("tied {modules:?}"), &s, &w, &setup);
    }
}

/// The copies start as the base weights (a quantized embedding dequantized), leave the loss as
/// it was, train with AdamW (weight decay included) while the frozen original keeps serving the
/// other use, and show up in the optimizer state.
#[test]
fn modules_to_save_start_as_the_base_and_train_apart_from_it() {
    // Tied, and Q8_0 rows need 32 values: hidden 32, ffn 64.
    let s = spec(Architecture::Qwen2, 37, 4, 2, 8, 64, 2, true);
    let w = quantize_store(&random_weights(&s, 5), DType::Q8_0, Some(DType::Q8_0));
    let embed = w.get("model.embed_tokens.weight").unwrap().to_f32();
    let data = random_batch(s.vocab_size, 2, 6, 6);
    let plain = all_targets(&s, 2, 1.5, 0.0);
    let mut base = engine(&s, &w, &plain, Default::default(), 7);
    let want = block_on(base.eval_loss(&mb(&data, 2, 6))).unwrap().nll_sum;
    let adamw = AdamW {
        weight_decay: 0.1,
        ..Default::default()
    };
    for modules in [&["lm_head"][..], &["embed_tokens"]] {
        let setup = with_saved(&s, modules);
        let mut e = CpuEngine::new(&s, &w, setup.clone(), adamw, Default::default()).unwrap();
        let n_lora: usize = block_on(base.params())
            .unwrap()
            .iter()
            .map(|t| t.data.len())
            .sum();
        assert_eq!(e.num_trainable(), n_lora + embed.len());
        let p0 = with_lora(&e, &setup, 7);
        let copy = &p0.last().unwrap();
        assert_eq!(copy.name, setup.modules_to_save[0].weight_name);
        assert_eq!(
            copy.data, embed,
            "{modules:?}: the copy starts as the base weight"
        );
        block_on(e.set_params(&p0)).unwrap();
        let got = block_on(e.eval_loss(&mb(&data, 2, 6))).unwrap().nll_sum;
        assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");

        // Zero the copy: only its own use changes. A zero lm_head gives uniform predictions
        // (loss = ln vocab per token); a zero input embedding does not.
        let mut zero = p0.clone();
        zero.last_mut().unwrap().data.fill(0.0);
        block_on(e.set_params(&zero)).unwrap();
        let l = block_on(e.eval_loss(&mb(&data, 2, 6))).unwrap();
        let uniform = (s.vocab_size as f64).ln() * l.tokens as f64;
        let is_uniform = (l.nll_sum - uniform).abs() < 1e-4 * uniform;
        assert_eq!(is_uniform, modules == ["lm_head"], "{modules:?}: {l:?}");

        block_on(e.set_params(&p0)).unwrap();
        block_on(e.forward_backward(&mb(&data, 2, 6), 1.0)).unwrap();
        let g = block_on(e.grads()).unwrap();
        let gn = g
            .iter()
            .flat_map(|t| &t.data)
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>()
            .sqrt();
        let stats = block_on(e.optimizer_step(1e-3, Some(1e9))).unwrap();
        assert!(
            (stats.grad_norm as f64 - gn).abs() <= 1e-5 * gn,
            "grad norm covers the copy"
        );
        let p1 = block_on(e.params()).unwrap();
        let (c0, c1, gc) = (
            &p0.last().unwrap().data,
            &p1.last().unwrap().data,
            &g.last().unwrap().data,
        );
        for i in 0..c0.len() {
            // The first AdamW step moves every value by lr * sign(grad) after the decay.
            let decayed = c0[i] * (1.0 - 1e-3 * 0.1);
            let step = if gc[i] == 0.0 {
                0.0
            } else {
                1e-3 * gc[i].signum()
            };
            assert!(
                (c1[i] - (decayed - step)).abs() < 1e-6,
                "{modules:?} value {i}: {} -> {} with grad {}",
                c0[i],
                c1[i],
                gc[i]
            );
        }
        let state = block_on(e.optimizer_state()).unwrap();
        assert_eq!(state.exp_avg.last().unwrap().name, copy.name);
        assert!(block_on(e.grads())
            .unwrap()
            .iter()
            .all(|t| t.data.iter().all(|&v| v == 0.0)));
        let mut missing = p1.clone();
        missing.pop();
        assert!(block_on(e.set_params(&missing)).is_err());
    }
    let mut bad = with_saved(&s, &["lm_head"]);
    bad.modules_to_save[0].shape = vec![3, 3];
    assert!(CpuEngine::new(&s, &w, bad, adamw, Default::default()).is_err());
    let mut bad = with_saved(&s, &["lm_head"]);
    bad.modules_to_save[0].weight_name = "model.norm.weight".into();
    assert!(CpuEngine::new(&s, &w, bad, adamw, Default::default()).is_err());
}

#[test]
fn gradients_accumulate_and_eval_leaves_them_alone() {
    let s = tiny_llama();
    let w = random_weights(&s, 13);
    let setup = all_targets(&s, 2, 1.0, 0.0);
    let data = random_batch(s.vocab_size, 2, 6, 14);
    let mut once = engine(&s, &w, &setup, Default::default(), 15);
    block_on(once.forward_backward(&mb(&data, 2, 6), 1.0)).unwrap();
    let mut twice = engine(&s, &w, &setup, Default::default(), 15);
    block_on(twice.forward_backward(&mb(&data, 2, 6), 0.5)).unwrap();
    block_on(twice.eval_loss(&mb(&data, 2, 6))).unwrap();
    block_on(twice.forward_backward(&mb(&data, 2, 6), 0.5)).unwrap();
    let (a, b) = (
        flat(&block_on(once.grads()).unwrap()),
        flat(&block_on(twice.grads()).unwrap()),
    );
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * scale, "{x} vs {y}");
    }
}

#[test]
fn restoring_params_and_optimizer_state_resumes_identically() {
    let s = tiny_qwen();
    let w = random_weights(&s, 16);
    let setup = all_targets(&s, 2, 2.0, 0.1);
    let batches: Vec<_> = (0..4)
        .map(|i| random_batch(s.vocab_size, 2, 6, 30 + i))
        .collect();
    let adamw = AdamW {
        weight_decay: 0.01,
        ..Default::default()
    };
    let new = || {
        let mut e = CpuEngine::new(&s, &w, setup.clone(), adamw, Default::default()).unwrap();
        block_on(e.set_params(&random_lora(&setup, 17, 0.3))).unwrap();
        e
    };
    let step = |e: &mut CpuEngine, k: usize| {
        e.set_dropout_seed(1000 + k as u64);
        block_on(e.forward_backward(&mb(&batches[k], 2, 6), 0.1)).unwrap();
        block_on(e.optimizer_step(1e-2, Some(1.0))).unwrap()
    };
    let mut a = new();
    step(&mut a, 0);
    step(&mut a, 1);
    let (params, state) = (
        block_on(a.params()).unwrap(),
        block_on(a.optimizer_state()).unwrap(),
    );
    assert_eq!(state.step, 2);
    let mut b = CpuEngine::new(&s, &w, setup.clone(), adamw, Default::default()).unwrap();
    block_on(b.set_params(&params)).unwrap();
    block_on(b.set_optimizer_state(&state)).unwrap();
    for k in 2..4 {
        let (sa, sb) = (step(&mut a, k), step(&mut b, k));
        assert_eq!(sa, sb);
    }
    assert_eq!(block_on(a.params()).unwrap(), block_on(b.params()).unwrap());
    assert_eq!(a.steps_taken(), 4);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let s = tiny_llama();
    let w = random_weights(&s, 18);
    let setup = all_targets(&s, 2, 1.0, 0.0);
    let mut e = engine(&s, &w, &setup, Default::default(), 19);
    let ids = vec![1u32; 12];
    let labels = vec![1i32; 12];
    let bad_batches: Vec<(&str, MicroBatch)> = vec![
        (
            "ids length",
            MicroBatch {
                ids: &ids[..11],
                labels: &labels,
                batch: 2,
                seq: 6,
            },
        ),
        (
            "labels length",
            MicroBatch {
                ids: &ids,
                labels: &labels[..11],
                batch: 2,
                seq: 6,
            },
        ),
        (
            "empty",
            MicroBatch {
                ids: &[],
                labels: &[],
                batch: 0,
                seq: 6,
            },
        ),
    ];
    for (what, b) in bad_batches {
        assert!(block_on(e.forward_backward(&b, 1.0)).is_err(), "{what}");
    }
    let big = vec![37u32; 12];
    let err = block_on(e.eval_loss(&mb(&(big, labels.clone()), 2, 6))).unwrap_err();
    assert!(err.to_string().contains("token id 37"), "{err}");
    let bad_label = vec![-3i32; 12];
    let err = block_on(e.forward_backward(&mb(&(ids.clone(), bad_label), 2, 6), 1.0)).unwrap_err();
    assert!(err.to_string().contains("label -3"), "{err}");
    let long: Vec<u32> = vec![1; 65];
    let long_labels = vec![1i32; 65];
    assert!(block_on(e.eval_loss(&mb(&(long, long_labels), 1, 65))).is_err());

    let mut p = block_on(e.params()).unwrap();
    p[0].shape = vec![p[0].shape[1], p[0].shape[0]];
    assert!(block_on(e.set_params(&p))
        .unwrap_err()
        .to_string()
        .contains("shape"));
    let mut p = block_on(e.params()).unwrap();
    p.pop();
    assert!(block_on(e.set_params(&p))
        .unwrap_err()
        .to_string()
        .contains("missing"));
    let mut p = block_on(e.params()).unwrap();
    p[1].name = "model.layers.0.self_attn.q_proj.lora_C".into();
    assert!(block_on(e.set_params(&p)).is_err());
    assert!(block_on(e.optimizer_step(f32::NAN, None)).is_err());

    let mut bad = setup.clone();
    bad.targets[0].module = "model.layers.9.self_attn.q_proj".into();
    assert!(CpuEngine::new(&s, &w, bad, AdamW::default(), Default::default()).is_err());
    let mut bad = setup.clone();
    bad.targets[1].out_features += 1;
    assert!(CpuEngine::new(&s, &w, bad, AdamW::default(), Default::default()).is_err());
    let mut bad = setup.clone();
    bad.targets.push(bad.targets[0].clone());
    assert!(CpuEngine::new(&s, &w, bad, AdamW::default(), Default::default()).is_err());
    let mut bad = setup;
    bad.dropout = 1.0;
    assert!(CpuEngine::new(&s, &w, bad, AdamW::default(), Default::default()).is_err());
}
