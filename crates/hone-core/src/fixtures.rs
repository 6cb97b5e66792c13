//! Tiny random models written as GGUF (every supported tensor type) and as HF folders, so that
//! most tests need no download. Deterministic: the same call writes the same bytes on every
//! platform, so the reference logits that transformers computed from these files once
//! (scripts/make_logits_fixtures.py) stay valid; a checksum in the fixture guards that.

use std::path::Path;

use half::{bf16, f16};

use crate::error::Result;
use crate::gguf::{
    hf_to_gguf_name, permute_rows_for_gguf, rope_permute_heads, write_gguf, GgufTensorView,
    MetaValue,
};
use crate::hf::{write_folder, FolderExtras};
use crate::spec::{Architecture, ModelSpec};
use crate::tensor::{Bytes, DType, TensorEntry, WeightStore};

/// A small deterministic RNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-a, a).
    pub fn symmetric(&mut self, a: f32) -> f32 {
        (self.uniform() * 2.0 - 1.0) * a
    }
    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
}

/// One tiny model of the suite: its file stem, family, tying and the type of its matrices.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyCase {
    pub name: String,
    pub architecture: Architecture,
    pub tied: bool,
    pub dtype: DType,
}

/// The suite the logits fixture covers: llama with every tensor type (tied), llama untied, and
/// qwen2 (q/k/v biases) in a float and a quantized type.
pub fn tiny_suite() -> Vec<TinyCase> {
    let mut v: Vec<TinyCase> = DType::ALL
        .iter()
        .map(|&d| TinyCase {
            name: format!("tiny-llama-{}", d.to_string().to_lowercase()),
            architecture: Architecture::Llama,
            tied: true,
            dtype: d,
        })
        .collect();
    v.push(TinyCase {
        name: "tiny-llama-untied-q8_0".into(),
        architecture: Architecture::Llama,
        tied: false,
        dtype: DType::Q8_0,
    });
    v.push(TinyCase {
        name: "tiny-qwen2-f32".into(),
        architecture: Architecture::Qwen2,
        tied: false,
        dtype: DType::F32,
    });
    v.push(TinyCase {
        name: "tiny-qwen2-q4_k".into(),
        architecture: Architecture::Qwen2,
        tied: true,
        dtype: DType::Q4K,
    });
    v
}

/// Token-id inputs the tiny logits fixture uses.
pub fn tiny_inputs() -> Vec<Vec<u32>> {
    vec![
        vec![1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100],
        vec![5, 200, 17, 33, 250, 3, 64],
    ]
}

/// The spec of a tiny model (sizes chosen so every K-quant's 256-value blocks fit a row).
pub fn tiny_spec(architecture: Architecture, tied: bool, vocab_size: usize) -> ModelSpec {
    ModelSpec {
        architecture,
        vocab_size,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        max_position_embeddings: 512,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
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

/// Random bytes of `n_values` values of `dtype` (quantized types: random blocks whose scales are
/// chosen so that values look like initialised weights, |w| of order `scale`).
pub fn random_tensor_bytes(
    rng: &mut SplitMix64,
    dtype: DType,
    n_values: usize,
    scale: f32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(dtype.bytes_for(n_values).unwrap_or(0));
    let f16le = |out: &mut Vec<u8>, v: f32| out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    let blocks = n_values / dtype.block_size();
    match dtype {
        DType::F32 => {
            (0..n_values).for_each(|_| out.extend_from_slice(&rng.symmetric(scale).to_le_bytes()))
        }
        DType::F16 => (0..n_values).for_each(|_| {
            out.extend_from_slice(&f16::from_f32(rng.symmetric(scale)).to_le_bytes())
        }),
        DType::BF16 => (0..n_values).for_each(|_| {
            out.extend_from_slice(&bf16::from_f32(rng.symmetric(scale)).to_le_bytes())
        }),
        _ => {
            for _ in 0..blocks {
                let start = out.len();
                out.extend((0..dtype.type_size()).map(|_| rng.byte()));
                let b = &mut out[start..];
                // Replace the f16 scale fields with sane values (layouts as in ggml).
                let d_of =
                    |levels: f32, rng: &mut SplitMix64| scale / levels * (0.5 + rng.uniform());
                let (d, m): (f32, Option<f32>) = match dtype {
                    DType::Q8_0 => (d_of(127.0, rng), None),
                    DType::Q4_0 => (d_of(8.0, rng), None),
                    DType::Q5_0 => (d_of(16.0, rng), None),
                    DType::Q4_1 => (
                        d_of(15.0, rng) * 2.0,
                        Some(-scale * (0.8 + 0.4 * rng.uniform())),
                    ),
                    DType::Q5_1 => (
                        d_of(31.0, rng) * 2.0,
                        Some(-scale * (0.8 + 0.4 * rng.uniform())),
                    ),
                    DType::Q4K => {
                        let d = d_of(32.0 * 15.0, rng) * 2.0;
                        (d, Some(d * 7.5))
                    }
                    DType::Q5K => {
                        let d = d_of(32.0 * 31.0, rng) * 2.0;
                        (d, Some(d * 15.5))
                    }
                    DType::Q6K => (d_of(64.0 * 32.0, rng), None),
                    _ => unreachable!(),
                };
                let mut tmp = Vec::new();
                f16le(&mut tmp, d);
                if let Some(m) = m {
                    f16le(&mut tmp, m);
                }
                let at = if dtype == DType::Q6K {
                    dtype.type_size() - 2
                } else {
                    0
                };
                b[at..at + tmp.len()].copy_from_slice(&tmp);
            }
        }
    }
    out
}

/// Deterministic random weights (HF names and layout) for `spec`: matrices (and the embedding)
/// in `dtype`, norms and biases in F32.
pub fn tiny_weights(spec: &ModelSpec, dtype: DType, seed: u64) -> Result<WeightStore> {
    let mut rng = SplitMix64(seed);
    let mut ws = WeightStore::new("<tiny model>");
    for (name, shape) in spec.expected_tensors() {
        let n: usize = shape.iter().product();
        let t = if shape.len() == 1 {
            let vals: Vec<f32> = if name.ends_with("norm.weight") {
                (0..n).map(|_| 1.0 + rng.symmetric(0.2)).collect()
            } else {
                (0..n).map(|_| rng.symmetric(0.05)).collect()
            };
            TensorEntry::from_f32(name, shape, &vals)?
        } else {
            let scale = if name.contains("embed_tokens") || name.starts_with("lm_head") {
                0.5
            } else {
                0.08
            };
            let bytes = random_tensor_bytes(&mut rng, dtype, n, scale);
            TensorEntry::new(name, shape, dtype, Bytes::from_vec(bytes))?
        };
        ws.insert(t);
    }
    Ok(ws)
}

/// GGUF metadata for `spec` plus the tiny tokenizer's.
pub fn tiny_gguf_metadata(spec: &ModelSpec, name: &str) -> Vec<(String, MetaValue)> {
    let a = spec.architecture.model_type();
    let u32v = |v: usize| MetaValue::U32(v as u32);
    let mut m = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(a.into()),
        ),
        ("general.name".to_string(), MetaValue::String(name.into())),
        (
            format!("{a}.context_length"),
            u32v(spec.max_position_embeddings),
        ),
        (format!("{a}.embedding_length"), u32v(spec.hidden_size)),
        (format!("{a}.block_count"), u32v(spec.num_hidden_layers)),
        (
            format!("{a}.feed_forward_length"),
            u32v(spec.intermediate_size),
        ),
        (format!("{a}.rope.dimension_count"), u32v(spec.head_dim)),
        (
            format!("{a}.attention.head_count"),
            u32v(spec.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u32v(spec.num_key_value_heads),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(spec.rms_norm_eps as f32),
        ),
        (
            format!("{a}.rope.freq_base"),
            MetaValue::F32(spec.rope_theta as f32),
        ),
        (format!("{a}.vocab_size"), u32v(spec.vocab_size)),
    ];
    m.extend(crate::tokenizer::tiny_gpt2_metadata());
    m
}

/// Write `weights` (HF names/layout) as a GGUF file: names mapped, llama q/k rows permuted.
pub fn write_model_gguf(
    path: &Path,
    spec: &ModelSpec,
    weights: &WeightStore,
    metadata: &[(String, MetaValue)],
) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, DType, Vec<u8>)> = Vec::new();
    for t in weights.tensors.values() {
        let gname = hf_to_gguf_name(&t.name).ok_or_else(|| {
            crate::Error::Invalid(format!("no GGUF name for tensor '{}'", t.name))
        })?;
        let data = match rope_permute_heads(spec, &t.name) {
            Some(n_head) => permute_rows_for_gguf(t.data.as_slice(), t.n_rows(), n_head)?,
            None => t.data.as_slice().to_vec(),
        };
        owned.push((gname, t.shape.clone(), t.dtype, data));
    }
    let views: Vec<GgufTensorView<'_>> = owned
        .iter()
        .map(|(n, s, d, b)| GgufTensorView::new(n, s, *d, b))
        .collect();
    write_gguf(path, metadata, &views)
}

/// Write the whole tiny suite into `dir` as `<name>.gguf` plus an HF folder `<name>-hf/` each,
/// and a `manifest.json` (file names and inputs) for the reference script.
pub fn write_tiny_suite(dir: &Path) -> Result<Vec<(TinyCase, ModelSpec)>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let tok_meta = crate::tokenizer::tiny_gpt2_metadata();
    let vocab = tok_meta
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array().map(|a| a.len()))
        .unwrap_or(0);
    let mut out = Vec::new();
    let mut manifest = Vec::new();
    for (i, case) in tiny_suite().into_iter().enumerate() {
        let spec = tiny_spec(case.architecture, case.tied, vocab);
        let weights = tiny_weights(&spec, case.dtype, 1000 + i as u64)?;
        let file = format!("{}.gguf", case.name);
        let path = dir.join(&file);
        write_model_gguf(
            &path,
            &spec,
            &weights,
            &tiny_gguf_metadata(&spec, &case.name),
        )?;
        manifest.push(serde_json::json!({"file": file, "inputs": tiny_inputs()}));
        out.push((case, spec));
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({ "models": manifest }))
        .map_err(|e| crate::Error::Invalid(e.to_string()))?;
    std::fs::write(dir.join("manifest.json"), text)
        .map_err(|e| crate::Error::io(dir.join("manifest.json"), e))?;
    Ok(out)
}

/// FNV-1a 64 of a file's bytes as 16 hex digits (the reference fixture records it).
pub fn fnv1a64(bytes: &[u8]) -> String {
    format!("{:016x}", crate::adapter::fnv1a64(bytes))
}

/// Write an HF folder for `weights` (dequantized to F32) with `tokenizer_json`.
pub fn write_model_hf(
    dir: &Path,
    spec: &ModelSpec,
    weights: &WeightStore,
    tokenizer_json: &str,
    chat_template: Option<&str>,
) -> Result<()> {
    let extras = FolderExtras {
        tokenizer_json: Some(tokenizer_json),
        chat_template,
        ..Default::default()
    };
    write_folder(dir, spec, weights, &extras)
}

/// A LoRA adapter for `spec` (rank `r`, alpha 2r, on `targets`) with every A and B value drawn
/// uniformly from ±`scale` (PEFT's init leaves B at zero, which would change nothing).
pub fn random_lora_adapter(
    spec: &ModelSpec,
    r: usize,
    targets: &[&str],
    seed: u64,
    scale: f32,
) -> Result<crate::adapter::LoraAdapter> {
    let config = crate::adapter::LoraConfig {
        r,
        lora_alpha: 2.0 * r as f64,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };
    let mut adapter = crate::adapter::LoraAdapter::init(&config, spec, seed, None)?;
    let mut rng = SplitMix64(seed);
    for t in adapter.tensors.values_mut() {
        t.values.iter_mut().for_each(|v| *v = rng.symmetric(scale));
    }
    Ok(adapter)
}
