//! `CpuModel`: a Llama-family decoder (Llama, Qwen2) run as a fixed sequence of forward ops
//! over activation buffers planned for the number of new tokens, with a `KvCache` and an
//! optional LoRA adapter applied unmerged (`set_adapter`).

use hone_core::adapter::{lora_a_key, lora_b_key, saved_module_key, AdapterTensor, LoraAdapter};
use hone_core::{Error, ModelSpec, Result, TensorEntry, WeightStore};

use crate::lora::LoraDelta;
use crate::matmul::{matmul_forward, Weight};
use crate::ops::{
    attention_forward, embedding_forward, residual_forward, rmsnorm_forward, rope_forward,
    rope_tables, swiglu_forward, AttentionShape,
};

/// How `CpuModel::new` prepares the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuModelOptions {
    /// Convert every weight to f32 once at load (4 bytes per value) instead of dequantizing a
    /// tile inside each matmul.
    pub dequantize_at_load: bool,
}

/// A linear layer: weight `[out, in]`, optional bias `[out]` and optional LoRA update.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Weight,
    pub(crate) bias: Option<Vec<f32>>,
    /// Set by `CpuModel::set_adapter`.
    pub(crate) lora: Option<LoraDelta>,
}

impl Linear {
    fn load(weights: &WeightStore, prefix: &str, has_bias: bool, dense: bool) -> Result<Linear> {
        let w = Weight::from_entry(weights.get(&format!("{prefix}.weight"))?);
        let bias = if has_bias {
            Some(weights.get(&format!("{prefix}.bias"))?.to_f32())
        } else {
            None
        };
        Ok(Linear {
            weight: if dense { w.to_dense() } else { w },
            bias,
            lora: None,
        })
    }

    /// `out[m, out] = inp[m, in] @ W^T + b (+ scale * (inp @ A^T) @ B^T with a LoRA update)`.
    pub(crate) fn forward(&self, out: &mut [f32], inp: &[f32], m: usize) {
        matmul_forward(out, inp, &self.weight, self.bias.as_deref(), m);
        if let Some(lora) = &self.lora {
            lora.forward(out, inp, m);
        }
    }
}

/// One decoder layer's parameters, HF names in comments.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// `input_layernorm.weight`
    pub(crate) input_norm: Vec<f32>,
    /// `post_attention_layernorm.weight`
    pub(crate) post_norm: Vec<f32>,
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl Layer {
    /// The seven projections with their module paths inside the layer (`self_attn.q_proj`).
    fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            ("self_attn.q_proj", &mut self.q_proj),
            ("self_attn.k_proj", &mut self.k_proj),
            ("self_attn.v_proj", &mut self.v_proj),
            ("self_attn.o_proj", &mut self.o_proj),
            ("mlp.gate_proj", &mut self.gate_proj),
            ("mlp.up_proj", &mut self.up_proj),
            ("mlp.down_proj", &mut self.down_proj),
        ]
    }
}

/// Activation buffers for up to `cap` new tokens, reused between calls.
#[derive(Debug, Default)]
struct Activations {
    cap: usize,
    /// Residual stream `[t, hidden]`.
    x: Vec<f32>,
    /// Normalized input of the current block `[t, hidden]`.
    xn: Vec<f32>,
    /// Queries `[t, q_dim]`.
    q: Vec<f32>,
    /// Attention output `[t, q_dim]`.
    att: Vec<f32>,
    /// Output of o_proj / down_proj `[t, hidden]`.
    proj: Vec<f32>,
    /// Gate (then SwiGLU output) `[t, intermediate]`.
    gate: Vec<f32>,
    /// Up projection `[t, intermediate]`.
    up: Vec<f32>,
    /// RoPE tables `[t, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Activations {
    /// Make room for `t` tokens (grows only).
    fn ensure(&mut self, spec: &ModelSpec, t: usize) {
        if t <= self.cap {
            return;
        }
        let (h, q, i, half) = (
            spec.hidden_size,
            spec.q_dim(),
            spec.intermediate_size,
            spec.head_dim / 2,
        );
        self.x.resize(t * h, 0.0);
        self.xn.resize(t * h, 0.0);
        self.q.resize(t * q, 0.0);
        self.att.resize(t * q, 0.0);
        self.proj.resize(t * h, 0.0);
        self.gate.resize(t * i, 0.0);
        self.up.resize(t * i, 0.0);
        self.cos.resize(t * half, 0.0);
        self.sin.resize(t * half, 0.0);
        self.cap = t;
    }
}

/// Keys and values of every layer for the positions processed so far, `[len, kv_dim]` per
/// layer, growing as tokens arrive up to `max_len`.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    max_len: usize,
    kv_dim: usize,
}

impl KvCache {
    /// An empty cache for `spec` holding at most `max_len` positions (capped at the model's
    /// `max_position_embeddings`).
    pub fn new(spec: &ModelSpec, max_len: usize) -> KvCache {
        let n = spec.num_hidden_layers;
        KvCache {
            k: vec![Vec::new(); n],
            v: vec![Vec::new(); n],
            len: 0,
            max_len: max_len.min(spec.max_position_embeddings),
            kv_dim: spec.kv_dim(),
        }
    }
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Most positions the cache holds.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    /// Forget every position (keeps the memory).
    pub fn clear(&mut self) {
        self.truncate(0);
    }
    /// Keep only the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    /// Keys of layer `l`, `[len, kv_dim]`.
    pub fn keys(&self, l: usize) -> &[f32] {
        &self.k[l][..self.len * self.kv_dim]
    }
    /// Values of layer `l`, `[len, kv_dim]`.
    pub fn values(&self, l: usize) -> &[f32] {
        &self.v[l][..self.len * self.kv_dim]
    }
}

/// Logits `[rows, vocab]` for consecutive positions starting at `first_position`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    /// Row-major `[rows, vocab]` values.
    pub data: Vec<f32>,
    /// Number of positions.
    pub rows: usize,
    /// Logits per position.
    pub vocab: usize,
    /// Position (in the sequence) of the first row.
    pub first_position: usize,
}

impl Logits {
    /// Logits of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
    /// Logits of the last row.
    pub fn last(&self) -> &[f32] {
        self.row(self.rows - 1)
    }
    /// The last row, owned.
    pub fn into_last(mut self) -> Vec<f32> {
        let start = (self.rows - 1) * self.vocab;
        self.data.drain(..start);
        self.data
    }
}

/// A Llama-family decoder on the CPU.
#[derive(Debug)]
pub struct CpuModel {
    spec: ModelSpec,
    embed_tokens: Weight,
    /// `lm_head.weight`, or `embed_tokens` when tied.
    lm_head: Weight,
    final_norm: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    eps: f32,
    acts: Activations,
    /// The adapter's full replacement weights, when `set_adapter` was called (the LoRA
    /// updates themselves hang on each `Linear`).
    adapter: Option<SavedWeights>,
}

/// Weights an adapter replaces in full (`modules_to_save`), as f32.
#[derive(Debug, Default)]
struct SavedWeights {
    /// Replaces `model.embed_tokens.weight` for the input embedding.
    embed_tokens: Option<Weight>,
    /// Replaces the output head (`lm_head.weight`, or the embedding when tied).
    lm_head: Option<Weight>,
}

impl CpuModel {
    /// Build the model from `weights` (checked against `spec`); weights are shared, not copied,
    /// unless `opts.dequantize_at_load`.
    pub fn new(spec: &ModelSpec, weights: &WeightStore, opts: CpuModelOptions) -> Result<Self> {
        check_spec(spec, weights)?;
        weights.check_against(spec)?;
        let dense = opts.dequantize_at_load;
        let load_norm = |name: &str| -> Result<Vec<f32>> { Ok(weights.get(name)?.to_f32()) };
        let mut embed_tokens = Weight::from_entry(weights.get("model.embed_tokens.weight")?);
        if dense {
            embed_tokens = embed_tokens.to_dense();
        }
        let lm_head = if spec.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            let w = Weight::from_entry(weights.get("lm_head.weight")?);
            if dense {
                w.to_dense()
            } else {
                w
            }
        };
        let mut layers = Vec::with_capacity(spec.num_hidden_layers);
        for l in 0..spec.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let qkv_bias = spec.has_qkv_bias();
            layers.push(Layer {
                input_norm: load_norm(&format!("{p}.input_layernorm.weight"))?,
                post_norm: load_norm(&format!("{p}.post_attention_layernorm.weight"))?,
                q_proj: Linear::load(weights, &format!("{p}.self_attn.q_proj"), qkv_bias, dense)?,
                k_proj: Linear::load(weights, &format!("{p}.self_attn.k_proj"), qkv_bias, dense)?,
                v_proj: Linear::load(weights, &format!("{p}.self_attn.v_proj"), qkv_bias, dense)?,
                o_proj: Linear::load(
                    weights,
                    &format!("{p}.self_attn.o_proj"),
                    spec.has_o_bias(),
                    dense,
                )?,
                gate_proj: Linear::load(
                    weights,
                    &format!("{p}.mlp.gate_proj"),
                    spec.mlp_bias,
                    dense,
                )?,
                up_proj: Linear::load(weights, &format!("{p}.mlp.up_proj"), spec.mlp_bias, dense)?,
                down_proj: Linear::load(
                    weights,
                    &format!("{p}.mlp.down_proj"),
                    spec.mlp_bias,
                    dense,
                )?,
            });
        }
        Ok(CpuModel {
            spec: spec.clone(),
            embed_tokens,
            lm_head,
            final_norm: load_norm("model.norm.weight")?,
            layers,
            inv_freq: spec.rope_inv_freq(),
            eps: spec.rms_norm_eps as f32,
            acts: Activations::default(),
            adapter: None,
        })
    }

    /// Use `adapter` (unmerged: y = W x + b + scale * B (A x)) in every later forward. Checks it
    /// against the model (`adapter.check_against(spec)`) and errors naming the tensor on a
    /// mismatch, leaving the model as it was. Replaces any adapter set before.
    ///
    /// `modules_to_save` weights replace the base weight they name and nothing else: with tied
    /// embeddings a saved `lm_head` changes only the output head and a saved `embed_tokens`
    /// only the input embedding, as in PEFT, whose saved copy is a separate module.
    pub fn set_adapter(&mut self, adapter: &LoraAdapter) -> Result<()> {
        adapter.check_against(&self.spec)?;
        let scale = adapter.config.scale() as f32;
        // Build every update before touching the model, so an error leaves it as it was.
        let mut deltas = Vec::with_capacity(self.layers.len());
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let mut per_layer: [Option<LoraDelta>; 7] = Default::default();
            for (slot, (name, linear)) in per_layer.iter_mut().zip(layer.projections_mut()) {
                let module = format!("model.layers.{l}.{name}");
                *slot = match (adapter.lora_a(&module), adapter.lora_b(&module)) {
                    (Some(a), Some(b)) => Some(LoraDelta::new(
                        &module,
                        a,
                        b,
                        scale,
                        linear.weight.cols,
                        linear.weight.rows,
                    )?),
                    (None, None) => None,
                    (a, _) => {
                        let key = if a.is_none() {
                            lora_a_key(&module)
                        } else {
                            lora_b_key(&module)
                        };
                        return Err(Error::Invalid(format!(
                            "adapter: tensor '{key}' is missing (the adapter has the other \
                             matrix of '{module}')"
                        )));
                    }
                };
            }
            deltas.push(per_layer);
        }
        let mut saved = SavedWeights::default();
        for m in adapter.config.resolve_modules_to_save(&self.spec)? {
            let key = saved_module_key(&m.weight_name);
            let t = adapter.tensors.get(&key).ok_or_else(|| {
                Error::Invalid(format!(
                    "adapter: tensor '{key}' is missing (modules_to_save names '{}')",
                    m.module
                ))
            })?;
            let w = saved_weight(&key, t, &m.shape)?;
            match m.module.as_str() {
                "lm_head" => saved.lm_head = Some(w),
                "embed_tokens" => saved.embed_tokens = Some(w),
                other => {
                    return Err(Error::Invalid(format!(
                        "adapter: modules_to_save '{other}' is not supported for inference \
                         (supported: lm_head, embed_tokens)"
                    )))
                }
            }
        }
        for (layer, per_layer) in self.layers.iter_mut().zip(deltas) {
            for ((_, linear), delta) in layer.projections_mut().into_iter().zip(per_layer) {
                linear.lora = delta;
            }
        }
        self.adapter = Some(saved);
        Ok(())
    }

    /// Back to the base model.
    pub fn clear_adapter(&mut self) {
        for layer in &mut self.layers {
            for (_, linear) in layer.projections_mut() {
                linear.lora = None;
            }
        }
        self.adapter = None;
    }

    /// Whether an adapter is set.
    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// The model's architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Bytes held by the weights (shared tensors counted once), a set adapter's included.
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &Linear| {
            l.weight.bytes()
                + l.bias.as_ref().map_or(0, |b| b.len() * 4)
                + l.lora.as_ref().map_or(0, LoraDelta::bytes)
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                lin(&l.q_proj)
                    + lin(&l.k_proj)
                    + lin(&l.v_proj)
                    + lin(&l.o_proj)
                    + lin(&l.gate_proj)
                    + lin(&l.up_proj)
                    + lin(&l.down_proj)
                    + (l.input_norm.len() + l.post_norm.len()) * 4
            })
            .sum();
        let head = if self.spec.tie_word_embeddings {
            0
        } else {
            self.lm_head.bytes()
        };
        let saved = self.adapter.as_ref().map_or(0, |s| {
            s.embed_tokens.as_ref().map_or(0, Weight::bytes)
                + s.lm_head.as_ref().map_or(0, Weight::bytes)
        });
        layers + self.embed_tokens.bytes() + head + self.final_norm.len() * 4 + saved
    }

    /// An empty cache for this model holding at most `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache::new(&self.spec, max_len)
    }

    /// Process `tokens` at positions `cache.len()..` and return logits for every new position.
    pub fn forward(&mut self, tokens: &[u32], cache: &mut KvCache) -> Result<Logits> {
        self.run(tokens, cache, true)
    }

    /// Process `tokens` at positions `cache.len()..` and return logits for the last one only.
    pub fn forward_last(&mut self, tokens: &[u32], cache: &mut KvCache) -> Result<Logits> {
        self.run(tokens, cache, false)
    }

    fn check_input(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        let spec = &self.spec;
        if tokens.is_empty() {
            return Err(Error::Invalid("forward: no tokens".into()));
        }
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= spec.vocab_size)
        {
            return Err(Error::Invalid(format!(
                "forward: token {i} has id {t}, outside the vocabulary of {}",
                spec.vocab_size
            )));
        }
        if cache.k.len() != spec.num_hidden_layers || cache.kv_dim != spec.kv_dim() {
            return Err(Error::Invalid(format!(
                "forward: the KV cache was made for {} layers of width {}, the model has {} of {}",
                cache.k.len(),
                cache.kv_dim,
                spec.num_hidden_layers,
                spec.kv_dim()
            )));
        }
        if cache.len + tokens.len() > cache.max_len {
            return Err(Error::Invalid(format!(
                "forward: {} cached + {} new tokens exceed the limit of {} positions",
                cache.len,
                tokens.len(),
                cache.max_len
            )));
        }
        Ok(())
    }

    fn run(&mut self, tokens: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Logits> {
        self.check_input(tokens, cache)?;
        let CpuModel {
            spec,
            embed_tokens,
            lm_head,
            final_norm,
            layers,
            inv_freq,
            eps,
            acts,
            adapter,
        } = self;
        let eps = *eps;
        let saved = adapter.as_ref();
        let embed_tokens = saved
            .and_then(|s| s.embed_tokens.as_ref())
            .unwrap_or(embed_tokens);
        let lm_head = saved.and_then(|s| s.lm_head.as_ref()).unwrap_or(lm_head);
        let (t, past) = (tokens.len(), cache.len);
        let (h, qd, kvd, ffn) = (
            spec.hidden_size,
            spec.q_dim(),
            spec.kv_dim(),
            spec.intermediate_size,
        );
        let half = spec.head_dim / 2;
        acts.ensure(spec, t);
        let x = &mut acts.x[..t * h];
        let xn = &mut acts.xn[..t * h];
        let q = &mut acts.q[..t * qd];
        let att = &mut acts.att[..t * qd];
        let proj = &mut acts.proj[..t * h];
        let gate = &mut acts.gate[..t * ffn];
        let up = &mut acts.up[..t * ffn];
        let cos = &mut acts.cos[..t * half];
        let sin = &mut acts.sin[..t * half];
        let shape = AttentionShape {
            t,
            past,
            n_heads: spec.num_attention_heads,
            n_kv_heads: spec.num_key_value_heads,
            head_dim: spec.head_dim,
        };

        embedding_forward(x, tokens, embed_tokens);
        rope_tables(cos, sin, inv_freq, past, t);
        let total = past + t;
        for (l, layer) in layers.iter().enumerate() {
            let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
            if kc.len() < total * kvd {
                kc.resize(total * kvd, 0.0);
                vc.resize(total * kvd, 0.0);
            }
            let new = past * kvd..total * kvd;

            rmsnorm_forward(xn, x, &layer.input_norm, eps);
            layer.q_proj.forward(q, xn, t);
            layer.k_proj.forward(&mut kc[new.clone()], xn, t);
            layer.v_proj.forward(&mut vc[new.clone()], xn, t);
            rope_forward(q, cos, sin, shape.n_heads, shape.head_dim);
            rope_forward(&mut kc[new], cos, sin, shape.n_kv_heads, shape.head_dim);
            attention_forward(att, q, &kc[..total * kvd], &vc[..total * kvd], shape);
            layer.o_proj.forward(proj, att, t);
            residual_forward(x, proj);

            rmsnorm_forward(xn, x, &layer.post_norm, eps);
            layer.gate_proj.forward(gate, xn, t);
            layer.up_proj.forward(up, xn, t);
            swiglu_forward(gate, up);
            layer.down_proj.forward(proj, gate, t);
            residual_forward(x, proj);
        }
        cache.len = total;

        let first = if all_logits { 0 } else { t - 1 };
        let rows = t - first;
        let xn = &mut xn[first * h..];
        rmsnorm_forward(xn, &x[first * h..], final_norm, eps);
        let vocab = spec.vocab_size;
        let mut data = vec![0f32; rows * vocab];
        matmul_forward(&mut data, xn, lm_head, None, rows);
        Ok(Logits {
            data,
            rows,
            vocab,
            first_position: past + first,
        })
    }
}

/// An adapter's full weight (`modules_to_save`) as an f32 `Weight`, checking its shape.
fn saved_weight(key: &str, t: &AdapterTensor, shape: &[usize]) -> Result<Weight> {
    if t.shape != shape {
        return Err(Error::Invalid(format!(
            "adapter: tensor '{key}' has shape {:?}, this model needs {shape:?}",
            t.shape
        )));
    }
    if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "adapter: tensor '{key}' value {i} is {}",
            t.values[i]
        )));
    }
    let entry = TensorEntry::from_f32(key, t.shape.clone(), &t.values)?;
    Ok(Weight::from_entry(&entry).to_dense())
}

/// Reject specs the forward pass cannot run, naming the field.
fn check_spec(spec: &ModelSpec, weights: &WeightStore) -> Result<()> {
    let bad = |field: &str, msg: String| Err(Error::invalid_field(&weights.source, field, msg));
    if spec.num_attention_heads == 0 || spec.num_key_value_heads == 0 {
        return bad(
            "num_key_value_heads",
            "attention and key/value head counts must be > 0".into(),
        );
    }
    if !spec
        .num_attention_heads
        .is_multiple_of(spec.num_key_value_heads)
    {
        return bad(
            "num_key_value_heads",
            format!(
                "{} does not divide num_attention_heads {}",
                spec.num_key_value_heads, spec.num_attention_heads
            ),
        );
    }
    if spec.head_dim == 0 || !spec.head_dim.is_multiple_of(2) {
        return bad(
            "head_dim",
            format!(
                "{} must be even and > 0 for rotary embeddings",
                spec.head_dim
            ),
        );
    }
    if spec.hidden_act != "silu" {
        return bad(
            "hidden_act",
            format!("'{}' is not supported (only silu)", spec.hidden_act),
        );
    }
    if spec.vocab_size == 0 || spec.hidden_size == 0 {
        return bad(
            "vocab_size",
            "vocab_size and hidden_size must be > 0".into(),
        );
    }
    if !(spec.rms_norm_eps.is_finite() && spec.rms_norm_eps >= 0.0) {
        return bad(
            "rms_norm_eps",
            format!("{} is not valid", spec.rms_norm_eps),
        );
    }
    Ok(())
}
