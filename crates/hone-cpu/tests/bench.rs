//! Speed of the CPU forward pass (ignored by default; run with
//! `cargo test -p hone-cpu --release --test bench -- --ignored --nocapture --test-threads 1`).
//!
//! `smollm2_shape_random_f32`: random f32 weights of SmolLM2-135M's shape (nothing loaded).
//! `smollm2_gguf`: the real Q4_1 GGUF, weights kept quantized vs dequantized at load.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::{random_weights, spec, Lcg};
use hone_core::{Architecture, ModelSpec, WeightStore};
use hone_cpu::{CpuModel, CpuModelOptions};

const PROMPT: usize = 128;
const DECODE: usize = 64;

fn smollm2_spec() -> ModelSpec {
    let mut s = spec(Architecture::Llama, 49152, 9, 3, 64, 1536, 30, true);
    s.max_position_embeddings = 8192;
    s.rope_theta = 100000.0;
    s
}

/// Prefill `PROMPT` tokens (last logits only), then decode `DECODE` tokens one at a time;
/// prints the timings (best of `reps` prefills).
fn measure(label: &str, model: &mut CpuModel, reps: usize) {
    let vocab = model.spec().vocab_size as u32;
    let mut rng = Lcg::new(1);
    let prompt: Vec<u32> = (0..PROMPT).map(|_| rng.below(vocab)).collect();
    let mut best = f64::INFINITY;
    let mut cache = model.new_cache(PROMPT + DECODE);
    for _ in 0..reps {
        cache.clear();
        let t0 = Instant::now();
        let logits = model.forward_last(&prompt, &mut cache).unwrap();
        best = best.min(t0.elapsed().as_secs_f64());
        assert!(logits.last().iter().all(|v| v.is_finite()));
    }
    let t0 = Instant::now();
    let mut tok = prompt[PROMPT - 1];
    for _ in 0..DECODE {
        let logits = model.forward_last(&[tok], &mut cache).unwrap();
        tok = hone_core::sampling::argmax(logits.last());
    }
    let decode = t0.elapsed().as_secs_f64();
    println!(
        "{label}: weights {:.0} MB; prefill {PROMPT} tokens {:.3} s ({:.0} tok/s); decode {:.1} tok/s ({DECODE} tokens after the prompt)",
        model.weight_bytes() as f64 / 1e6,
        best,
        PROMPT as f64 / best,
        DECODE as f64 / decode,
    );
}

#[test]
#[ignore]
fn smollm2_shape_random_f32() {
    let spec = smollm2_spec();
    let weights = random_weights(&spec, 3);
    let mut model = CpuModel::new(&spec, &weights, CpuModelOptions::default()).unwrap();
    measure("random f32, SmolLM2 shape", &mut model, 3);
}

fn gguf_path() -> PathBuf {
    match std::env::var_os("HONE_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )),
    }
}

#[test]
#[ignore]
fn smollm2_gguf() {
    let path = gguf_path();
    assert!(
        path.exists(),
        "{} not found: run `make models` (or set HONE_SMOLLM2_GGUF)",
        path.display()
    );
    let file = hone_core::gguf::GgufFile::open(&path).unwrap();
    let spec = file.model_spec().unwrap();
    let weights: WeightStore = file.weights(&spec).unwrap();
    for dense in [false, true] {
        let t0 = Instant::now();
        let mut model = CpuModel::new(
            &spec,
            &weights,
            CpuModelOptions {
                dequantize_at_load: dense,
            },
        )
        .unwrap();
        let load = t0.elapsed().as_secs_f64();
        let label = if dense {
            format!("SmolLM2 Q4_1 dequantized at load ({load:.2} s)")
        } else {
            format!("SmolLM2 Q4_1 kept quantized ({load:.2} s)")
        };
        measure(&label, &mut model, 2);
    }
}

/// GFLOP/s of the matmul paths on SmolLM2's shapes (M = 1 decode, M = 128 prefill).
#[test]
#[ignore]
fn matmul_paths() {
    use hone_core::TensorEntry;
    use hone_cpu::matmul::{matmul_forward, matmul_forward_tiled, Weight};
    let mut rng = Lcg::new(5);
    let quant = {
        let path = gguf_path();
        path.exists().then(|| {
            let file = hone_core::gguf::GgufFile::open(&path).unwrap();
            let spec = file.model_spec().unwrap();
            file.weights(&spec).unwrap()
        })
    };
    for (name, n, k) in [
        ("model.layers.0.mlp.up_proj.weight", 1536, 576),
        ("model.layers.0.mlp.down_proj.weight", 576, 1536),
        ("model.embed_tokens.weight", 49152, 576),
    ] {
        let wv = rng.vec(n * k, 0.05);
        let w = Weight::from_entry(&TensorEntry::from_f32("w", vec![n, k], &wv).unwrap());
        let q = quant
            .as_ref()
            .map(|s| Weight::from_entry(s.get(name).unwrap()));
        for m in [1usize, 128] {
            let x = rng.vec(m * k, 1.0);
            let mut y = vec![0f32; m * n];
            let reps = if m == 1 { 200 } else { 10 }.min(if n > 10000 { 20 } else { 1000 });
            let time = |f: &mut dyn FnMut()| {
                f();
                let t0 = Instant::now();
                for _ in 0..reps {
                    f();
                }
                let s = t0.elapsed().as_secs_f64() / reps as f64;
                (s * 1e3, 2.0 * (m * n * k) as f64 / s / 1e9)
            };
            let a = time(&mut || matmul_forward(&mut y, &x, &w, None, m));
            let b = time(&mut || matmul_forward_tiled(&mut y, &x, w.force_tiled(), None, m));
            print!(
                "[{m}x{k}] @ [{n}x{k}]^T: f32 direct {:.3} ms ({:.1} GFLOP/s), f32 tiled {:.3} ms ({:.1})",
                a.0, a.1, b.0, b.1
            );
            if let Some(q) = &q {
                let c = time(&mut || matmul_forward(&mut y, &x, q, None, m));
                print!(
                    ", {} {} {:.3} ms ({:.1})",
                    q.name,
                    if m == 1 { "fused" } else { "tiled" },
                    c.0,
                    c.1
                );
            }
            println!();
        }
    }
}
