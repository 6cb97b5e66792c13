//! `GpuEngine` against `CpuEngine` (the numerical reference) on tiny random models: one
//! training step (loss and every LoRA gradient) for each stored weight type, with q/k/v biases
//! and untied heads, with dropout (the same masks), a 20-step loss curve with AdamW and
//! clipping, evaluation, optimizer state moving between the engines (checkpoints written by one
//! resume on the other), and faults: device lost, a batch beyond the adapter's limits.

// The browser has one thread: the engines share the device through an Arc there too.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

use hone_core::engine::{AdamW, Engine, LoraSetup, MicroBatch, NamedTensor, TrainTarget};
use hone_core::fixtures::{tiny_spec, tiny_weights};
use hone_core::{Architecture, DType, ModelSpec, WeightStore};
use hone_cpu::train::{CpuEngine, CpuTrainOptions};
use hone_gpu::engine::{GpuEngine, GpuTrainOptions};
use hone_gpu::Gpu;
#[cfg(not(target_arch = "wasm32"))]
use hone_gpu::GpuOptions;
#[cfg(not(target_arch = "wasm32"))]
use pollster::block_on;
use std::sync::Arc;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::OnceLock;

mod common;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn sym(&mut self, a: f32) -> f32 {
        ((self.next() as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0) * a
    }
}

fn setup(spec: &ModelSpec, rank: usize, dropout: f32) -> LoraSetup {
    let mut targets = Vec::new();
    for l in 0..spec.num_hidden_layers {
        for (p, path) in hone_core::engine::PROJ_PATHS.iter().enumerate() {
            let (i, o) = hone_core::engine::proj_dims(spec, p);
            targets.push(TrainTarget {
                module: format!("model.layers.{l}.{path}"),
                in_features: i,
                out_features: o,
            });
        }
    }
    LoraSetup {
        rank,
        scale: 2.0,
        dropout,
        targets,
        modules_to_save: Vec::new(),
    }
}

fn random_lora(s: &LoraSetup, seed: u64) -> Vec<NamedTensor> {
    let mut rng = Lcg(seed);
    let r = s.rank;
    let mut out = Vec::new();
    for t in &s.targets {
        let a = 1.0 / (t.in_features as f32).sqrt();
        out.push(NamedTensor {
            name: format!("{}.lora_A", t.module),
            shape: vec![r, t.in_features],
            data: (0..r * t.in_features).map(|_| rng.sym(a)).collect(),
        });
        out.push(NamedTensor {
            name: format!("{}.lora_B", t.module),
            shape: vec![t.out_features, r],
            data: (0..t.out_features * r).map(|_| rng.sym(0.2)).collect(),
        });
    }
    out
}

fn batch(vocab: usize, b: usize, t: usize, seed: u64) -> (Vec<u32>, Vec<i32>) {
    let mut rng = Lcg(seed);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| (rng.next() % vocab as u64) as u32)
        .collect();
    let mut labels: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    for r in 0..b {
        labels[r * t] = -100;
        labels[r * t + 1] = -100;
    }
    (ids, labels)
}

/// One device for the whole test binary: kernels compile once (seconds each on lavapipe).
/// One device for all tests of this file (its compiled kernels are reused: lavapipe takes
/// seconds per kernel).
#[cfg(not(target_arch = "wasm32"))]
async fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    if let Some(g) = GPU.get() {
        return g.clone();
    }
    let g = Arc::new(common::gpu().await);
    GPU.get_or_init(|| g).clone()
}

/// One device for all tests of this file (the browser runs them on one thread).
#[cfg(target_arch = "wasm32")]
#[allow(clippy::arc_with_non_send_sync)]
async fn gpu() -> Arc<Gpu> {
    thread_local! {
        static GPU: std::cell::RefCell<Option<Arc<Gpu>>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(g) = GPU.with(|c| c.borrow().clone()) {
        return g;
    }
    let g = Arc::new(common::gpu().await);
    GPU.with(|c| *c.borrow_mut() = Some(g.clone()));
    g
}

async fn engines(
    spec: &ModelSpec,
    w: &WeightStore,
    s: &LoraSetup,
    hp: AdamW,
) -> (CpuEngine, GpuEngine) {
    let mut c = CpuEngine::new(spec, w, s.clone(), hp, CpuTrainOptions::default()).unwrap();
    let mut g = GpuEngine::new(
        gpu().await,
        spec,
        w,
        s.clone(),
        hp,
        GpuTrainOptions::default(),
    )
    .unwrap();
    let p = random_lora(s, 7);
    c.set_params(&p).await.unwrap();
    g.set_params(&p).await.unwrap();
    (c, g)
}

/// max |a - b| / max |b| over all tensors (names must match).
fn rel_diff(a: &[NamedTensor], b: &[NamedTensor]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.name, y.name);
        let scale = y.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
        let d = x
            .data
            .iter()
            .zip(&y.data)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(d.is_finite(), "{}: non-finite", x.name);
        worst = worst.max(d / scale);
    }
    worst
}

fn mb<'a>(b: &'a (Vec<u32>, Vec<i32>), batch: usize, seq: usize) -> MicroBatch<'a> {
    MicroBatch {
        ids: &b.0,
        labels: &b.1,
        batch,
        seq,
    }
}

async fn one_step(spec: &ModelSpec, dtype: DType, dropout: f32, what: &str) {
    let w = tiny_weights(spec, dtype, 11).unwrap();
    let s = setup(spec, 4, dropout);
    let (mut c, mut g) = engines(spec, &w, &s, AdamW::default()).await;
    c.set_dropout_seed(5);
    g.set_dropout_seed(5);
    let (bsz, seq) = (2, 13);
    let b = batch(spec.vocab_size, bsz, seq, 3);
    let scale = 1.0 / 20.0;
    let lc = c.forward_backward(&mb(&b, bsz, seq), scale).await.unwrap();
    let lg = g.forward_backward(&mb(&b, bsz, seq), scale).await.unwrap();
    assert_eq!(lc.tokens, lg.tokens);
    let rel = ((lc.nll_sum - lg.nll_sum) / lc.nll_sum).abs();
    assert!(
        rel < 2e-5,
        "{what}: loss {} vs cpu {} (rel {rel:.2e})",
        lg.nll_sum,
        lc.nll_sum
    );
    let d = rel_diff(&g.grads().await.unwrap(), &c.grads().await.unwrap());
    eprintln!("{what}: loss rel {rel:.2e}, grads rel {d:.2e}");
    assert!(
        d < 2e-4,
        "{what}: LoRA gradients differ from the CPU engine's by {d:.2e}"
    );
    // A second micro-batch accumulates (another shape: the plan grows once).
    let b2 = batch(spec.vocab_size, 3, 9, 4);
    c.forward_backward(&mb(&b2, 3, 9), scale).await.unwrap();
    g.forward_backward(&mb(&b2, 3, 9), scale).await.unwrap();
    let d = rel_diff(&g.grads().await.unwrap(), &c.grads().await.unwrap());
    assert!(d < 2e-4, "{what}: accumulated gradients differ by {d:.2e}");
}

gpu_test!(
    async fn one_step_matches_the_cpu_engine_for_each_weight_type() {
        let spec = tiny_spec(Architecture::Llama, true, 300);
        for dtype in [
            DType::F32,
            DType::F16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q4K,
            DType::Q6K,
        ] {
            one_step(&spec, dtype, 0.0, &format!("llama tied {dtype}")).await;
        }
    }
);

gpu_test!(
    async fn one_step_matches_with_biases_untied_head_and_dropout() {
        let spec = tiny_spec(Architecture::Qwen2, false, 301);
        one_step(&spec, DType::F32, 0.0, "qwen2 untied f32").await;
        one_step(&spec, DType::Q8_0, 0.1, "qwen2 untied q8_0 dropout 0.1").await;
        // Odd sizes: nothing a multiple of a workgroup or tile; GQA 3:1 with head_dim 10.
        let mut odd = tiny_spec(Architecture::Llama, false, 97);
        odd.hidden_size = 45;
        odd.num_attention_heads = 6;
        odd.num_key_value_heads = 2;
        odd.head_dim = 10;
        odd.intermediate_size = 77;
        odd.num_hidden_layers = 3;
        one_step(&odd, DType::F32, 0.2, "odd sizes f32 dropout 0.2").await;
    }
);

/// The tiny model, LoRA (rank 4, dropout 0.05) and AdamW of the loss-curve tests.
fn curve_case() -> (ModelSpec, WeightStore, LoraSetup, AdamW) {
    let spec = tiny_spec(Architecture::Llama, true, 300);
    let w = tiny_weights(&spec, DType::Q4_1, 5).unwrap();
    let s = setup(&spec, 4, 0.05);
    let hp = AdamW {
        weight_decay: 0.01,
        ..Default::default()
    };
    (spec, w, s, hp)
}

gpu_test!(
    async fn twenty_steps_follow_the_cpu_loss_curve_and_checkpoints_move_between_engines() {
        let (spec, w, s, hp) = curve_case();
        let (mut c, mut g) = engines(&spec, &w, &s, hp).await;
        let (bsz, seq) = (2, 16);
        let mut worst = 0f64;
        for step in 0..20u64 {
            c.set_dropout_seed(step);
            g.set_dropout_seed(step);
            let b = batch(spec.vocab_size, bsz, seq, 100 + step % 3);
            let lc = c
                .forward_backward(&mb(&b, bsz, seq), 1.0 / 28.0)
                .await
                .unwrap();
            let lg = g
                .forward_backward(&mb(&b, bsz, seq), 1.0 / 28.0)
                .await
                .unwrap();
            let sc = c.optimizer_step(3e-3, Some(0.5)).await.unwrap();
            let sg = g.optimizer_step(3e-3, Some(0.5)).await.unwrap();
            let rel = ((lc.mean() - lg.mean()) / lc.mean()).abs();
            let nrel = ((sc.grad_norm - sg.grad_norm) / sc.grad_norm).abs() as f64;
            worst = worst.max(rel);
            assert!(
                rel < 1e-3,
                "step {step}: loss {} vs cpu {}",
                lg.mean(),
                lc.mean()
            );
            assert!(
                nrel < 1e-3,
                "step {step}: grad norm {} vs cpu {}",
                sg.grad_norm,
                sc.grad_norm
            );
        }
        eprintln!("20 steps: worst loss rel diff {worst:.2e}");
        let dp = rel_diff(&g.params().await.unwrap(), &c.params().await.unwrap());
        assert!(dp < 1e-3, "parameters after 20 steps differ by {dp:.2e}");
        // Evaluation agrees.
        let b = batch(spec.vocab_size, 3, 11, 9);
        let ec = c.eval_loss(&mb(&b, 3, 11)).await.unwrap();
        let eg = g.eval_loss(&mb(&b, 3, 11)).await.unwrap();
        assert!(((ec.nll_sum - eg.nll_sum) / ec.nll_sum).abs() < 1e-4);

        // The CPU engine's state (as a checkpoint holds it) continues on a fresh GPU engine, and
        // the reverse; both continuations agree with the CPU engine's own.
        let params = c.params().await.unwrap();
        let opt = c.optimizer_state().await.unwrap();
        let mut g2 = GpuEngine::new(
            gpu().await,
            &spec,
            &w,
            s.clone(),
            hp,
            GpuTrainOptions::default(),
        )
        .unwrap();
        g2.set_params(&params).await.unwrap();
        g2.set_optimizer_state(&opt).await.unwrap();
        let gparams = g.params().await.unwrap();
        let gopt = g.optimizer_state().await.unwrap();
        assert_eq!(gopt.step, 20);
        let mut c2 = CpuEngine::new(&spec, &w, s.clone(), hp, CpuTrainOptions::default()).unwrap();
        c2.set_params(&gparams).await.unwrap();
        c2.set_optimizer_state(&gopt).await.unwrap();
        for step in 20..23u64 {
            let b = batch(spec.vocab_size, bsz, seq, step);
            step_once(&mut c, step, &b, bsz, seq).await;
            step_once(&mut g2, step, &b, bsz, seq).await;
            step_once(&mut c2, step, &b, bsz, seq).await;
        }
        let p_c = c.params().await.unwrap();
        let d1 = rel_diff(&g2.params().await.unwrap(), &p_c);
        let d2 = rel_diff(&c2.params().await.unwrap(), &p_c);
        assert!(
            d1 < 1e-3 && d2 < 2e-3,
            "resumed runs differ: {d1:.2e} {d2:.2e}"
        );
    }
);

async fn step_once<E: Engine>(
    e: &mut E,
    step: u64,
    b: &(Vec<u32>, Vec<i32>),
    bsz: usize,
    seq: usize,
) {
    e.set_dropout_seed(step);
    e.forward_backward(&mb(b, bsz, seq), 1.0 / 28.0)
        .await
        .unwrap();
    e.optimizer_step(3e-3, Some(0.5)).await.unwrap();
}

gpu_test!(
    async fn gradient_checkpointing_gives_the_same_gradients_with_less_memory() {
        let spec = tiny_spec(Architecture::Llama, false, 300);
        let w = tiny_weights(&spec, DType::Q8_0, 2).unwrap();
        let s = setup(&spec, 4, 0.1);
        let p = random_lora(&s, 3);
        let b = batch(spec.vocab_size, 2, 21, 8);
        let mut grads = Vec::new();
        let mut mem = Vec::new();
        for gc in [false, true] {
            let opts = GpuTrainOptions {
                gradient_checkpointing: gc,
                ..Default::default()
            };
            let mut g =
                GpuEngine::new(gpu().await, &spec, &w, s.clone(), AdamW::default(), opts).unwrap();
            g.set_params(&p).await.unwrap();
            g.set_dropout_seed(9);
            g.forward_backward(&mb(&b, 2, 21), 0.05).await.unwrap();
            grads.push(g.grads().await.unwrap());
            mem.push(g.planned_bytes().activations);
        }
        // The recomputed forward is the same arithmetic: identical gradients.
        assert_eq!(rel_diff(&grads[1], &grads[0]), 0.0);
        assert!(
            mem[1] < mem[0],
            "checkpointing planned {} bytes, without {}",
            mem[1],
            mem[0]
        );
    }
);

gpu_test!(
    async fn faults_are_errors_that_say_what_happened() {
        let spec = tiny_spec(Architecture::Llama, true, 300);
        let w = tiny_weights(&spec, DType::F32, 1).unwrap();
        let s = setup(&spec, 2, 0.0);
        // Its own device: this one gets lost below, and the others share theirs.
        let own = Arc::new(common::gpu().await);
        let mut g = GpuEngine::new(
            own,
            &spec,
            &w,
            s.clone(),
            AdamW::default(),
            GpuTrainOptions::default(),
        )
        .unwrap();
        g.set_params(&random_lora(&s, 1)).await.unwrap();
        let b = batch(spec.vocab_size, 1, 8, 1);
        g.forward_backward(&mb(&b, 1, 8), 0.1).await.unwrap();
        // A batch whose activations exceed one storage binding names the cure.
        let err = g.plan(1 << 16, 512).unwrap_err().to_string();
        assert!(err.contains("lower per_device_train_batch_size"), "{err}");
        // Device lost mid-run: an error, not a panic or a hang.
        g.lose_device_after(0);
        let err = g
            .forward_backward(&mb(&b, 1, 8), 0.1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("lost"), "{err}");
        // Bad batches.
        let bad = (vec![5000u32; 8], vec![-100i32; 8]);
        let mut g = engines(&spec, &w, &s, AdamW::default()).await.1;
        let err = g
            .forward_backward(&mb(&bad, 1, 8), 0.1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
        // modules_to_save is refused with a pointer to the CPU engine.
        let mut s2 = s.clone();
        s2.modules_to_save.push(hone_core::engine::SavedModule {
            module: "lm_head".into(),
            weight_name: "lm_head.weight".into(),
            shape: vec![spec.vocab_size, spec.hidden_size],
        });
        let err = GpuEngine::new(
            gpu().await,
            &spec,
            &w,
            s2,
            AdamW::default(),
            GpuTrainOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--device cpu"), "{err}");
    }
);

/// `--fp16` (f16 products, f32 sums, master weights and statistics; loss scaled as GradScaler
/// does) against the f32 GPU engine and the CPU engine on the same tiny model: one step's loss
/// and every LoRA gradient, then a 20-step loss curve with AdamW and clipping. Tolerances: f16
/// rounds each operand to 2^-11 relative, so a loss within 2e-3 and gradients within 2e-2 of
/// max |gradient| at step 0, losses within 3e-2 along the curve (f32 agrees to 2e-5 / 2e-4 /
/// 1e-3; a wrong kernel is off by order 1).
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn fp16_training_follows_f32_within_f16_rounding() {
    let (spec, w, s, hp) = curve_case();
    let (mut c, mut g) = block_on(engines(&spec, &w, &s, hp));
    let fp16 = GpuTrainOptions {
        fp16: true,
        ..Default::default()
    };
    let mut h = GpuEngine::new(block_on(gpu()), &spec, &w, s.clone(), hp, fp16).unwrap();
    assert!(h.fp16() && !g.fp16());
    assert_eq!((h.loss_scale(), g.loss_scale()), (65536.0, 1.0));
    // GradScaler's 2^16 overflows this model's f16 LoRA products (it would skip the first
    // steps while it halves); start where it settles so that every step compares.
    h.set_loss_scale(1024.0);
    block_on(h.set_params(&random_lora(&s, 7))).unwrap();
    let (bsz, seq) = (2, 16);
    let mut worst = (0f64, 0f32);
    for step in 0..20u64 {
        let b = batch(spec.vocab_size, bsz, seq, 100 + step % 3);
        let mut losses = Vec::new();
        for e in [&mut c as &mut dyn Engine1, &mut g, &mut h] {
            e.seed(step);
            losses.push(e.fb(&mb(&b, bsz, seq), 1.0 / 28.0));
        }
        let (lc, lg, lh) = (losses[0], losses[1], losses[2]);
        if step == 0 {
            let gc = block_on(c.grads()).unwrap();
            let (dg, dh) = (
                rel_diff(&block_on(g.grads()).unwrap(), &gc),
                rel_diff(&block_on(h.grads()).unwrap(), &gc),
            );
            let dhg = rel_diff(&block_on(h.grads()).unwrap(), &block_on(g.grads()).unwrap());
            eprintln!(
                "fp16 step 0: grads vs cpu {dh:.2e} (f32 gpu {dg:.2e}), vs f32 gpu {dhg:.2e}"
            );
            assert!(
                dh < 2e-2 && dhg < 2e-2,
                "fp16 LoRA gradients off by {dh:.2e} / {dhg:.2e}"
            );
            // f16 really rounds: not the f32 engine's gradients bit for bit.
            assert!(dhg > 0.0);
        }
        let rel = |a: f64, b: f64| ((a - b) / b).abs();
        let (rc, rg) = (rel(lh, lc), rel(lh, lg));
        worst = (worst.0.max(rc.max(rg)), worst.1);
        // Step 0 compares one forward; later steps also carry the f16 rounding of every
        // earlier update (AdamW's normalised steps magnify the noise of small gradients, and
        // the f16 head rounds logits in absolute terms, as autocast's does): the curves drift
        // apart slowly, 1.5e-2 by step 20 here, so 3e-2.
        let tol = if step == 0 { 2e-3 } else { 3e-2 };
        assert!(
            rc < tol && rg < tol,
            "step {step}: fp16 loss {lh} vs cpu {lc}, f32 gpu {lg}"
        );
        let norms: Vec<f32> = [&mut c as &mut dyn Engine1, &mut g, &mut h]
            .into_iter()
            .map(|e| e.opt(3e-3, Some(0.5)))
            .collect();
        let nrel = ((norms[2] - norms[0]) / norms[0]).abs();
        worst.1 = worst.1.max(nrel);
        let ntol = if step == 0 { 2e-2 } else { 6e-2 };
        assert!(
            nrel < ntol,
            "step {step}: fp16 grad norm {} vs cpu {}",
            norms[2],
            norms[0]
        );
    }
    let dp = rel_diff(
        &block_on(h.params()).unwrap(),
        &block_on(c.params()).unwrap(),
    );
    eprintln!(
        "fp16 20 steps: worst loss rel diff {:.2e}, grad norm {:.2e}, params after {dp:.2e}",
        worst.0, worst.1
    );
    assert!(
        dp < 1e-1,
        "fp16 parameters after 20 steps differ by {dp:.2e}"
    );
    assert_eq!(h.skipped_steps(), 0);

    // An overflowing step (gradients beyond f16 under the loss scale) is skipped as GradScaler
    // skips it: parameters and AdamW step unchanged, scale halved, gradients dropped.
    let before = block_on(h.params()).unwrap();
    let b = batch(spec.vocab_size, bsz, seq, 7);
    block_on(h.forward_backward(&mb(&b, bsz, seq), 1e4)).unwrap();
    let st = block_on(h.optimizer_step(3e-3, Some(0.5))).unwrap();
    assert!(!st.grad_norm.is_finite(), "{}", st.grad_norm);
    assert_eq!((h.skipped_steps(), h.loss_scale()), (1, 512.0));
    assert_eq!(block_on(h.optimizer_state()).unwrap().step, 20);
    assert_eq!(rel_diff(&block_on(h.params()).unwrap(), &before), 0.0);
    // The f32 engine has no scaler: the same overflow-free step is no error there, and a
    // normal step after the skip trains again.
    block_on(h.forward_backward(&mb(&b, bsz, seq), 1.0 / 28.0)).unwrap();
    assert!(block_on(h.optimizer_step(3e-3, Some(0.5)))
        .unwrap()
        .grad_norm
        .is_finite());
    assert_eq!(block_on(h.optimizer_state()).unwrap().step, 21);

    // A device without shader-f16 (the browser's SwiftShader; here lavapipe opened without it)
    // refuses --fp16 naming the adapter and the feature.
    let plain = Gpu::new_blocking(&GpuOptions {
        want_f16: false,
        ..Default::default()
    })
    .unwrap();
    let name = plain.describe();
    let err = GpuEngine::new(Arc::new(plain), &spec, &w, s.clone(), hp, fp16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--fp16") && err.contains("shader-f16") && err.contains(&name),
        "{err}"
    );
}

#[cfg(not(target_arch = "wasm32"))]
/// The engine calls the fp16 test drives on all three engines in turn.
trait Engine1 {
    fn seed(&mut self, s: u64);
    fn fb(&mut self, b: &MicroBatch<'_>, scale: f32) -> f64;
    fn opt(&mut self, lr: f32, clip: Option<f32>) -> f32;
}
#[cfg(not(target_arch = "wasm32"))]
impl<E: Engine> Engine1 for E {
    fn seed(&mut self, s: u64) {
        self.set_dropout_seed(s);
    }
    fn fb(&mut self, b: &MicroBatch<'_>, scale: f32) -> f64 {
        block_on(self.forward_backward(b, scale)).unwrap().mean()
    }
    fn opt(&mut self, lr: f32, clip: Option<f32>) -> f32 {
        block_on(self.optimizer_step(lr, clip)).unwrap().grad_norm
    }
}
