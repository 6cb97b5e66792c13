//! `ModelSpec` from GGUF metadata (`general.architecture`, `{arch}.*`, `tokenizer.ggml.*`).
//!
//! RoPE scaling: `{arch}.rope.scaling.type` = `linear` maps to `RopeScaling::Linear`. Llama 3.1+
//! files carry no scaling metadata; llama.cpp's converter stores the per-frequency divisors in a
//! `rope_freqs.weight` tensor instead. hone reads that tensor and accepts it when it equals
//! Llama 3 scaling with factor = its largest value, low/high frequency factors 1 and 4 (the
//! values every Llama 3.x release uses) and the original context
//! `{arch}.rope.scaling.original_context_length` (default 8192); any other `rope_freqs` is an
//! error rather than a silently different model.

use crate::error::{Error, Result};
use crate::spec::{Architecture, ModelSpec, RopeScaling};

use super::{describe, GgufFile, MetaValue};

/// Name of the llama 3 per-frequency RoPE divisor tensor.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Build the spec (see the module doc).
pub(super) fn model_spec(f: &GgufFile) -> Result<ModelSpec> {
    let path = &f.path;
    let arch_name = f
        .get("general.architecture")
        .ok_or_else(|| Error::missing(path, "general.architecture"))?
        .as_str()
        .ok_or_else(|| Error::invalid_field(path, "general.architecture", "expected a string"))?;
    let architecture = match Architecture::parse(arch_name) {
        Some(a) if arch_name == a.model_type() => a,
        _ => {
            return Err(Error::UnsupportedArchitecture {
                path: path.clone(),
                arch: arch_name.to_string(),
                supported: Architecture::SUPPORTED.to_string(),
            })
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let usize_of = |k: &str| -> Result<usize> { to_usize(f, &key(k), f.require_u64(&key(k))?) };

    let hidden_size = positive(f, &key("embedding_length"), usize_of("embedding_length")?)?;
    let intermediate_size = usize_of("feed_forward_length")?;
    let num_hidden_layers = positive(f, &key("block_count"), usize_of("block_count")?)?;
    let num_attention_heads = positive(
        f,
        &key("attention.head_count"),
        per_layer_constant(f, &key("attention.head_count"))?
            .ok_or_else(|| Error::missing(path, key("attention.head_count")))?,
    )?;
    let num_key_value_heads = match per_layer_constant(f, &key("attention.head_count_kv"))? {
        Some(n) => positive(f, &key("attention.head_count_kv"), n)?,
        None => num_attention_heads,
    };
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(Error::invalid_field(
            path,
            key("attention.head_count_kv"),
            format!("{num_key_value_heads} key/value heads do not divide {num_attention_heads} attention heads"),
        ));
    }
    let head_dim = match f.optional_u64(&key("attention.key_length"))? {
        Some(n) => positive(
            f,
            &key("attention.key_length"),
            to_usize(f, &key("attention.key_length"), n)?,
        )?,
        None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
        None => {
            return Err(Error::missing(path, key("attention.key_length")));
        }
    };
    if head_dim % 2 != 0 {
        return Err(Error::invalid_field(
            path,
            key("attention.key_length"),
            format!("head dimension {head_dim} is odd; RoPE needs pairs"),
        ));
    }
    let max_position_embeddings = usize_of("context_length")?;
    let rms_norm_eps = f
        .optional_f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| Error::missing(path, key("attention.layer_norm_rms_epsilon")))?;
    // llama.cpp's default when the converter wrote none.
    let rope_theta = f.optional_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);

    let vocab_size = match f.optional_u64(&key("vocab_size"))? {
        Some(n) => to_usize(f, &key("vocab_size"), n)?,
        None => match f
            .tensor_info("token_embd.weight")
            .and_then(|t| t.dims.get(1))
        {
            Some(&n) => to_usize(f, "token_embd.weight", n)?,
            None => match f.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
                Some(tokens) => tokens.len(),
                None => return Err(Error::missing(path, key("vocab_size"))),
            },
        },
    };

    let has = |name: &str| f.tensor_info(name).is_some();
    let tie_word_embeddings = !has("output.weight");
    let qkv_bias = architecture == Architecture::Qwen2 || has("blk.0.attn_q.bias");
    let attention_bias = architecture == Architecture::Llama && has("blk.0.attn_output.bias");
    let mlp_bias = has("blk.0.ffn_up.bias");

    let token = |k: &str| -> Result<Option<u32>> {
        let k = format!("tokenizer.ggml.{k}");
        match f.optional_u64(&k)? {
            None => Ok(None),
            Some(id) => u32::try_from(id)
                .map(Some)
                .map_err(|_| Error::invalid_field(path, &k, format!("token id {id} is too large"))),
        }
    };
    // eos first, then end-of-turn / end-of-message tokens that generation should also stop at.
    let mut eos_token_id = Vec::new();
    for k in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(id) = token(k)? {
            if !eos_token_id.contains(&id) {
                eos_token_id.push(id);
            }
        }
    }

    let mut spec = ModelSpec {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        max_position_embeddings,
        rms_norm_eps,
        rope_theta,
        rope_scaling: None,
        tie_word_embeddings,
        attention_bias,
        qkv_bias,
        mlp_bias,
        hidden_act: "silu".to_string(),
        bos_token_id: token("bos_token_id")?,
        eos_token_id,
        pad_token_id: token("padding_token_id")?,
    };
    spec.rope_scaling = rope_scaling(f, arch_name, &spec)?;
    Ok(spec)
}

/// A u64 from the file as usize.
fn to_usize(f: &GgufFile, key: &str, v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::invalid_field(&f.path, key, format!("{v} is too large")))
}

/// `v` if non-zero.
fn positive(f: &GgufFile, key: &str, v: usize) -> Result<usize> {
    if v == 0 {
        return Err(Error::invalid_field(
            &f.path,
            key,
            "must be positive, found 0",
        ));
    }
    Ok(v)
}

/// An integer that some files store per layer (an array): the value, if all layers agree.
fn per_layer_constant(f: &GgufFile, key: &str) -> Result<Option<usize>> {
    let Some(v) = f.get(key) else { return Ok(None) };
    let n = match v.as_array() {
        None => f.require_u64(key)?,
        Some(values) => {
            let all: Option<Vec<u64>> = values.iter().map(MetaValue::as_u64).collect();
            match all.as_deref() {
                Some([first, rest @ ..]) if rest.iter().all(|x| x == first) => *first,
                _ => {
                    return Err(Error::invalid_field(
                        &f.path,
                        key,
                        format!(
                            "differs between layers ({}); hone needs one value for all layers",
                            describe(v)
                        ),
                    ))
                }
            }
        }
    };
    to_usize(f, key, n).map(Some)
}

/// RoPE scaling from `{arch}.rope.scaling.*` metadata or a `rope_freqs.weight` tensor.
fn rope_scaling(f: &GgufFile, arch: &str, spec: &ModelSpec) -> Result<Option<RopeScaling>> {
    let path = &f.path;
    let type_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let orig_key = format!("{arch}.rope.scaling.original_context_length");
    let scaling_type = match f.get(&type_key) {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| {
            Error::invalid_field(
                path,
                &type_key,
                format!("expected a string, found {}", describe(v)),
            )
        })?),
    };
    let from_metadata = match scaling_type {
        None | Some("none") => None,
        Some("linear") => {
            let factor = f
                .optional_f64(&factor_key)?
                .ok_or_else(|| Error::missing(path, &factor_key))?;
            if !factor.is_finite() || factor <= 0.0 {
                return Err(Error::invalid_field(path, &factor_key, "must be positive"));
            }
            Some(RopeScaling::Linear { factor })
        }
        Some(other) => {
            return Err(Error::invalid_field(
                path,
                &type_key,
                format!(
                    "RoPE scaling '{other}' is not supported (hone supports linear and llama3)"
                ),
            ))
        }
    };
    if f.tensor_info(ROPE_FREQS).is_none() {
        return Ok(from_metadata);
    }
    if from_metadata.is_some() {
        return Err(Error::invalid_field(
            path,
            &type_key,
            format!("both {type_key} and a {ROPE_FREQS} tensor are present"),
        ));
    }
    let divisors = f.tensor(ROPE_FREQS)?.to_f32();
    if divisors.len() != spec.head_dim / 2 {
        return Err(Error::tensor(
            path,
            ROPE_FREQS,
            format!(
                "{} values, expected head_dim/2 = {}",
                divisors.len(),
                spec.head_dim / 2
            ),
        ));
    }
    let factor = divisors.iter().fold(1.0f32, |m, &x| m.max(x)) as f64;
    if divisors.iter().all(|&x| x == 1.0) {
        return Ok(None);
    }
    let original = match f.optional_u64(&orig_key)? {
        Some(n) => to_usize(f, &orig_key, n)?,
        None => 8192,
    };
    let candidate = RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: original,
    };
    // The divisor llama.cpp applies to inverse frequency i is base_i / scaled_i.
    let unscaled = ModelSpec {
        rope_scaling: None,
        ..spec.clone()
    }
    .rope_inv_freq();
    let scaled = ModelSpec {
        rope_scaling: Some(candidate.clone()),
        ..spec.clone()
    }
    .rope_inv_freq();
    let matches = divisors
        .iter()
        .zip(unscaled.iter().zip(&scaled))
        .all(|(&d, (&u, &s))| {
            let want = u as f64 / s as f64;
            (d as f64 - want).abs() <= 1e-4 * want
        });
    if !matches {
        return Err(Error::tensor(
            path,
            ROPE_FREQS,
            format!(
                "per-frequency RoPE divisors are not Llama 3 scaling with factor {factor}, \
                 low/high frequency factors 1/4 and original context {original}; hone cannot \
                 reproduce this model's RoPE"
            ),
        ));
    }
    Ok(Some(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::write::{encode_gguf, GgufTensorView};
    use crate::tensor::{Bytes, DType};
    use std::path::Path;

    fn kv(k: &str, v: MetaValue) -> (String, MetaValue) {
        (k.to_string(), v)
    }

    /// Metadata of a small llama-like model (`arch` prefix), as llama.cpp's converter writes it.
    fn metadata(arch: &str) -> Vec<(String, MetaValue)> {
        use MetaValue::*;
        let k = |s: &str| format!("{arch}.{s}");
        vec![
            kv("general.architecture", String(arch.into())),
            kv(&k("embedding_length"), U32(64)),
            kv(&k("feed_forward_length"), U32(96)),
            kv(&k("block_count"), U32(2)),
            kv(&k("attention.head_count"), U32(4)),
            kv(&k("attention.head_count_kv"), U32(2)),
            kv(&k("attention.layer_norm_rms_epsilon"), F32(1e-5)),
            kv(&k("rope.freq_base"), F32(500_000.0)),
            kv(&k("context_length"), U32(2048)),
            kv("tokenizer.ggml.tokens", Array(vec![String("x".into()); 40])),
            kv("tokenizer.ggml.bos_token_id", U32(1)),
            kv("tokenizer.ggml.eos_token_id", U32(2)),
            kv("tokenizer.ggml.eot_token_id", U32(3)),
            kv("tokenizer.ggml.padding_token_id", U32(0)),
        ]
    }

    fn spec_of(meta: &[(String, MetaValue)], tensors: &[GgufTensorView]) -> Result<ModelSpec> {
        let bytes = encode_gguf(meta, tensors).unwrap();
        GgufFile::from_bytes(Bytes::from_vec(bytes), Path::new("t.gguf"))?.model_spec()
    }

    #[test]
    fn llama_spec_from_metadata() {
        let s = spec_of(&metadata("llama"), &[]).unwrap();
        assert_eq!(s.architecture, Architecture::Llama);
        assert_eq!(
            (s.hidden_size, s.intermediate_size, s.num_hidden_layers),
            (64, 96, 2)
        );
        assert_eq!(
            (s.num_attention_heads, s.num_key_value_heads, s.head_dim),
            (4, 2, 16)
        );
        assert_eq!(s.max_position_embeddings, 2048);
        assert_eq!(s.rms_norm_eps, 1e-5f32 as f64);
        assert_eq!(s.rope_theta, 500_000.0);
        assert_eq!(s.rope_scaling, None);
        // No embedding tensor and no vocab_size key: the token list decides.
        assert_eq!(s.vocab_size, 40);
        assert!(
            s.tie_word_embeddings,
            "no output.weight means tied embeddings"
        );
        assert!(!s.qkv_bias && !s.attention_bias && !s.mlp_bias);
        assert_eq!(s.bos_token_id, Some(1));
        assert_eq!(s.eos_token_id, vec![2, 3]);
        assert_eq!(s.pad_token_id, Some(0));
        assert_eq!(s.hidden_act, "silu");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_untied_output() {
        let mut meta = metadata("qwen2");
        meta.push(kv("qwen2.vocab_size", MetaValue::U32(50)));
        meta.push(kv("qwen2.attention.key_length", MetaValue::U32(32)));
        let out = vec![0u8; 50 * 64 * 4];
        let s = spec_of(
            &meta,
            &[GgufTensorView::new(
                "output.weight",
                &[50, 64],
                DType::F32,
                &out,
            )],
        )
        .unwrap();
        assert_eq!(s.architecture, Architecture::Qwen2);
        assert!(s.qkv_bias && !s.attention_bias);
        assert!(!s.tie_word_embeddings);
        assert_eq!((s.vocab_size, s.head_dim), (50, 32));
    }

    #[test]
    fn vocab_size_falls_back_to_the_embedding_rows() {
        let emb = vec![0u8; 48 * 64 * 4];
        let s = spec_of(
            &metadata("llama"),
            &[GgufTensorView::new(
                "token_embd.weight",
                &[48, 64],
                DType::F32,
                &emb,
            )],
        )
        .unwrap();
        assert_eq!(s.vocab_size, 48);
    }

    #[test]
    fn missing_required_keys_are_named() {
        for key in [
            "general.architecture",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.block_count",
            "llama.attention.head_count",
            "llama.attention.layer_norm_rms_epsilon",
            "llama.context_length",
        ] {
            let meta: Vec<_> = metadata("llama")
                .into_iter()
                .filter(|(k, _)| k != key)
                .collect();
            let err = spec_of(&meta, &[]).unwrap_err();
            match &err {
                Error::MissingField { field, .. } => assert_eq!(field, key),
                other => panic!("{key}: {other:?}"),
            }
            assert!(err.to_string().contains("t.gguf"), "{err}");
        }
        let meta: Vec<_> = metadata("llama")
            .into_iter()
            .filter(|(k, _)| k != "tokenizer.ggml.tokens")
            .collect();
        let err = spec_of(&meta, &[]).unwrap_err().to_string();
        assert!(err.contains("'llama.vocab_size'"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let set = |key: &str, v: MetaValue| {
            let mut meta = metadata("llama");
            meta.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
            spec_of(&meta, &[]).unwrap_err().to_string()
        };
        let err = set("llama.block_count", MetaValue::String("2".into()));
        assert!(
            err.contains("'llama.block_count'") && err.contains("string \"2\""),
            "{err}"
        );
        let err = set("llama.attention.head_count_kv", MetaValue::U32(3));
        assert!(err.contains("do not divide"), "{err}");
        let err = set("llama.attention.head_count", MetaValue::I32(-4));
        assert!(err.contains("'llama.attention.head_count'"), "{err}");
        let err = set(
            "llama.attention.head_count",
            MetaValue::Array(vec![MetaValue::U32(4), MetaValue::U32(8)]),
        );
        assert!(err.contains("differs between layers"), "{err}");
        let err = set("llama.embedding_length", MetaValue::U32(0));
        assert!(err.contains("must be positive"), "{err}");
        // A per-layer array that agrees is accepted.
        let mut meta = metadata("llama");
        meta[4].1 = MetaValue::Array(vec![MetaValue::U32(4), MetaValue::U32(4)]);
        assert_eq!(spec_of(&meta, &[]).unwrap().num_attention_heads, 4);
    }

    #[test]
    fn unsupported_architecture_lists_the_supported_ones() {
        let err = spec_of(&metadata("gemma2"), &[]).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedArchitecture { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("'gemma2'") && msg.contains(Architecture::SUPPORTED),
            "{msg}"
        );
    }

    #[test]
    fn linear_rope_scaling_from_metadata() {
        let mut meta = metadata("llama");
        meta.push(kv(
            "llama.rope.scaling.type",
            MetaValue::String("linear".into()),
        ));
        meta.push(kv("llama.rope.scaling.factor", MetaValue::F32(4.0)));
        let s = spec_of(&meta, &[]).unwrap();
        assert_eq!(s.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        meta.pop();
        let err = spec_of(&meta, &[]).unwrap_err().to_string();
        assert!(err.contains("'llama.rope.scaling.factor'"), "{err}");
        let mut meta = metadata("llama");
        meta.push(kv(
            "llama.rope.scaling.type",
            MetaValue::String("yarn".into()),
        ));
        let err = spec_of(&meta, &[]).unwrap_err().to_string();
        assert!(err.contains("'yarn' is not supported"), "{err}");
    }

    /// The divisors llama.cpp's converter writes for Llama 3 scaling (its formula, in f64).
    fn llama3_divisors(head_dim: usize, theta: f64, factor: f64, original: f64) -> Vec<f32> {
        let (low, high) = (1.0, 4.0);
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < original / high {
                    1.0
                } else if wavelen > original / low {
                    factor as f32
                } else {
                    let smooth = (original / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect()
    }

    #[test]
    fn llama3_rope_freqs_tensor_becomes_llama3_scaling() {
        let meta = metadata("llama");
        // head_dim 16 with theta 500k spans high, medium and low frequencies only for a small
        // original context; use 64 so all three regimes occur.
        let mut meta_ctx = meta.clone();
        meta_ctx.push(kv(
            "llama.rope.scaling.original_context_length",
            MetaValue::U32(64),
        ));
        let div = llama3_divisors(16, 500_000.0, 8.0, 64.0);
        assert!(
            div.contains(&1.0) && div.contains(&8.0) && div.iter().any(|&d| d > 1.0 && d < 8.0)
        );
        let bytes: Vec<u8> = div.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = [GgufTensorView::new(
            "rope_freqs.weight",
            &[8],
            DType::F32,
            &bytes,
        )];
        let s = spec_of(&meta_ctx, &t).unwrap();
        assert_eq!(
            s.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64
            })
        );
        // Same divisors but the default original context (8192) disagrees: refused.
        let err = spec_of(&meta, &t).unwrap_err().to_string();
        assert!(
            err.contains("rope_freqs.weight") && err.contains("not Llama 3 scaling"),
            "{err}"
        );
        // All ones: no scaling.
        let ones: Vec<u8> = [1.0f32; 8].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = [GgufTensorView::new(
            "rope_freqs.weight",
            &[8],
            DType::F32,
            &ones,
        )];
        assert_eq!(spec_of(&meta, &t).unwrap().rope_scaling, None);
        // Wrong length.
        let t = [GgufTensorView::new(
            "rope_freqs.weight",
            &[4],
            DType::F32,
            &ones[..16],
        )];
        let err = spec_of(&meta, &t).unwrap_err().to_string();
        assert!(err.contains("expected head_dim/2 = 8"), "{err}");
    }
}
