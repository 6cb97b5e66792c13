//! Shared helpers for hone-cpu integration tests: tiny random models built in memory.

#![allow(dead_code)]

use hone_core::{Architecture, ModelSpec, RopeScaling, TensorEntry, WeightStore};

/// A tiny deterministic generator of test values.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }
    /// Uniform in [-scale, scale).
    pub fn next(&mut self, scale: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next(scale)).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        ((self.next(1.0) + 1.0) * 0.5 * n as f32) as u32 % n
    }
}

/// A spec with the given sizes; everything else Llama defaults.
#[allow(clippy::too_many_arguments)]
pub fn spec(
    architecture: Architecture,
    vocab: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    layers: usize,
    tied: bool,
) -> ModelSpec {
    ModelSpec {
        architecture,
        vocab_size: vocab,
        hidden_size: heads * head_dim,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: tied,
        attention_bias: false,
        qkv_bias: architecture == Architecture::Qwen2,
        mlp_bias: false,
        hidden_act: "silu".into(),
        bos_token_id: Some(1),
        eos_token_id: vec![2],
        pad_token_id: None,
    }
}

/// The tiny models the tests run: llama untied, qwen2 (q/k/v bias) tied, llama3 rope scaling
/// with head_dim 64 and GQA 9:3, and one with every bias and linear rope scaling.
pub fn tiny_specs() -> Vec<(&'static str, ModelSpec)> {
    let llama = spec(Architecture::Llama, 37, 4, 2, 8, 24, 2, false);
    let qwen = spec(Architecture::Qwen2, 41, 4, 2, 8, 20, 2, true);
    let mut llama3 = spec(Architecture::Llama, 53, 9, 3, 64, 40, 2, true);
    llama3.rope_theta = 500000.0;
    llama3.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    });
    let mut biased = spec(Architecture::Llama, 29, 6, 2, 8, 16, 3, false);
    biased.attention_bias = true;
    biased.mlp_bias = true;
    biased.rope_scaling = Some(RopeScaling::Linear { factor: 2.0 });
    biased.rms_norm_eps = 1e-6;
    vec![
        ("llama", llama),
        ("qwen2", qwen),
        ("llama3-rope", llama3),
        ("all-biases", biased),
    ]
}

/// Random f32 weights for every tensor `spec` expects (norm weights near 1).
pub fn random_weights(spec: &ModelSpec, seed: u64) -> WeightStore {
    let mut rng = Lcg::new(seed);
    let mut store = WeightStore::new("random-test-model");
    for (name, shape) in spec.expected_tensors() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            rng.vec(n, 0.2).into_iter().map(|v| 1.0 + v).collect()
        } else if name.ends_with(".bias") {
            rng.vec(n, 0.2)
        } else if name.contains("embed_tokens") || name.starts_with("lm_head") {
            rng.vec(n, 0.5)
        } else {
            let fan_in = *shape.last().unwrap() as f32;
            rng.vec(n, 1.7 / fan_in.sqrt())
        };
        store.insert(TensorEntry::from_f32(name, shape, &values).unwrap());
    }
    store
}

/// Assert |got - want| <= tol * max(1, rms(want)) element-wise (errors relative to the scale
/// of the whole vector, so elements near zero are not held to a tighter absolute bound than
/// large ones), naming the worst element.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let rms = (want.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / want.len().max(1) as f64)
        .sqrt() as f32;
    let scale = rms.max(1.0);
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / scale;
        let err = if err.is_nan() { f32::INFINITY } else { err };
        if err > worst.1 {
            worst = (i, err);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= tol,
        "{what}: element {i}: got {} want {} (error / max(1, rms) = {} > {tol}; rms {rms})",
        got[i],
        want[i],
        worst.1,
    );
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF: `$HONE_SMOLLM2_GGUF` (set by the Makefile) or the
/// repository's `.cache/models/`; missing is a failure, not a skip.
pub fn smollm2_path() -> std::path::PathBuf {
    let p = std::env::var("HONE_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "{} not found: run `make models` (or set HONE_SMOLLM2_GGUF)",
        p.display()
    );
    p
}
