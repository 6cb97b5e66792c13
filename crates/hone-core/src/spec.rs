//! `ModelSpec`: the architecture of a decoder-only model, with Hugging Face `config.json`
//! field names, whatever file it was read from.

use serde::{Deserialize, Serialize};

/// Model families hone runs. A family is a spec, not a code path per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama family: SmolLM/SmolLM2, TinyLlama, Llama 2/3.x (`LlamaForCausalLM`).
    Llama,
    /// Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): Llama with q/k/v biases.
    Qwen2,
}

impl Architecture {
    /// The architectures hone supports, for error messages.
    pub const SUPPORTED: &'static str = "llama (LlamaForCausalLM: SmolLM, SmolLM2, TinyLlama, Llama 2/3.x), qwen2 (Qwen2ForCausalLM: Qwen2, Qwen2.5)";

    /// HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
    /// HF `architectures[0]` string.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    /// Parse an HF `model_type`, an HF class name or a GGUF `general.architecture`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "llama" | "LlamaForCausalLM" | "mistral" | "MistralForCausalLM" => {
                Some(Architecture::Llama)
            }
            "qwen2" | "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            _ => None,
        }
    }
}

/// RoPE frequency scaling, as in HF `rope_scaling` / `rope_parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1+ wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: positions divided by `factor`.
    Linear { factor: f64 },
}

/// The architecture of a decoder-only transformer, named as in HF `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension (`head_dim`; defaults to hidden_size / num_attention_heads).
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v/o projections carry a bias (Qwen2: q/k/v only, see `qkv_bias`).
    pub attention_bias: bool,
    /// q/k/v carry biases but o_proj does not (Qwen2).
    pub qkv_bias: bool,
    pub mlp_bias: bool,
    /// Activation of the gated MLP (`silu` for every supported family).
    pub hidden_act: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelSpec {
    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
    /// Query heads that share one key/value head (grouped-query attention).
    pub fn kv_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
    /// Whether q/k/v projections have a bias.
    pub fn has_qkv_bias(&self) -> bool {
        self.attention_bias || self.qkv_bias
    }
    /// Whether o_proj has a bias.
    pub fn has_o_bias(&self) -> bool {
        self.attention_bias
    }

    /// Inverse RoPE frequencies for each pair of a head (length head_dim/2), scaling applied,
    /// computed in f64 like HF and rounded to f32 at the end.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        match &self.rope_scaling {
            None => base.iter().map(|&f| f as f32).collect(),
            Some(RopeScaling::Linear { factor }) => {
                base.iter().map(|&f| (f / factor) as f32).collect()
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        let v = if medium {
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        };
                        v as f32
                    })
                    .collect()
            }
        }
    }

    /// Names of the tensors this spec needs, HF-named, with their shapes (PyTorch order).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, q, kv, v) = (
            self.hidden_size,
            self.intermediate_size,
            self.q_dim(),
            self.kv_dim(),
            self.vocab_size,
        );
        let mut t = vec![
            ("model.embed_tokens.weight".to_string(), vec![v, h]),
            ("model.norm.weight".to_string(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            t.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if self.has_qkv_bias() {
                t.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                t.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                t.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            if self.has_o_bias() {
                t.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            if self.mlp_bias {
                t.push((format!("{p}.mlp.gate_proj.bias"), vec![i]));
                t.push((format!("{p}.mlp.up_proj.bias"), vec![i]));
                t.push((format!("{p}.mlp.down_proj.bias"), vec![h]));
            }
        }
        t
    }
}
