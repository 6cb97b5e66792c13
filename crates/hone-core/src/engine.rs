//! The `Engine` trait: the only thing the Trainer knows about compute. An engine holds a model
//! (frozen base weights, wherever it keeps them) plus trainable LoRA parameters, their
//! gradients and the AdamW state. It knows nothing of datasets, file formats or schedules.
//!
//! The methods are `async` because reading a WebGPU buffer is async in the browser; the CPU
//! engine completes immediately and native callers block on the futures (`pollster`).
//! Generic use only (`Trainer<E: Engine>`): `async fn` in traits is not object safe.
#![allow(async_fn_in_trait)]

use serde::{Deserialize, Serialize};

pub use crate::adapter::SavedModule;
use crate::error::{Error, Result};
use crate::spec::ModelSpec;

/// One LoRA-adapted linear layer, by its HF module path (`model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainTarget {
    pub module: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// What to train: LoRA rank, scale (alpha/r or alpha/sqrt(r)), dropout on the LoRA input, the
/// adapted layers in a stable order, and the modules trained in full (PEFT `modules_to_save`:
/// a trainable copy of `lm_head` / `embed_tokens`, the original staying frozen, so on a model
/// with tied embeddings the copy replaces only the output head, or only the input embedding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSetup {
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
    pub targets: Vec<TrainTarget>,
    /// Engine tensor name = the HF weight name (`lm_head.weight`, `model.embed_tokens.weight`).
    #[serde(default)]
    pub modules_to_save: Vec<SavedModule>,
}

/// A named f32 tensor crossing the engine boundary (LoRA A/B, gradients, optimizer moments).
/// LoRA names are `{module}.lora_A` (`[rank, in]`) and `{module}.lora_B` (`[out, rank]`); a
/// module trained in full is named by its HF weight name (`lm_head.weight`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// AdamW hyper-parameters (the learning rate comes with each step, from the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay (torch.optim.AdamW), applied to LoRA matrices.
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW state: steps taken and first/second moments by parameter name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    pub step: u64,
    pub exp_avg: Vec<NamedTensor>,
    pub exp_avg_sq: Vec<NamedTensor>,
}

/// A micro-batch of `batch` rows of `seq` tokens. `labels` follow HF's convention: aligned with
/// `ids` (the engine shifts them), `-100` where no loss is taken (prompt, padding).
#[derive(Debug, Clone, Copy)]
pub struct MicroBatch<'a> {
    pub ids: &'a [u32],
    pub labels: &'a [i32],
    pub batch: usize,
    pub seq: usize,
}

/// Summed negative log-likelihood over the tokens that carry a label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSum {
    pub nll_sum: f64,
    pub tokens: usize,
}

impl LossSum {
    /// Mean loss per token (NaN when there were none).
    pub fn mean(&self) -> f64 {
        self.nll_sum / self.tokens as f64
    }
}

/// What an optimizer step reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f32,
}

/// A compute engine that trains LoRA parameters on a frozen base model.
pub trait Engine {
    /// Human description of where it runs ("cpu, 2 threads", "gpu: ... (Vulkan)").
    fn describe(&self) -> String;
    /// Forward and backward on a micro-batch: gradients of `grad_scale * nll_sum` are added to
    /// the accumulated LoRA gradients. Returns the (unscaled) loss sum.
    async fn forward_backward(
        &mut self,
        batch: &MicroBatch<'_>,
        grad_scale: f32,
    ) -> Result<LossSum>;
    /// Clip the accumulated gradients to `max_grad_norm` (global L2; None = no clipping),
    /// apply one AdamW step with `lr`, and zero the gradients.
    async fn optimizer_step(&mut self, lr: f32, max_grad_norm: Option<f32>) -> Result<StepStats>;
    /// Loss of a micro-batch without gradients (dropout off).
    async fn eval_loss(&mut self, batch: &MicroBatch<'_>) -> Result<LossSum>;
    /// The trainable parameters (LoRA A/B, then any `modules_to_save` weights), copied out.
    async fn params(&self) -> Result<Vec<NamedTensor>>;
    /// Replace the trainable parameters (names and shapes must match).
    async fn set_params(&mut self, params: &[NamedTensor]) -> Result<()>;
    /// The accumulated gradients (for tests and numerics checks).
    async fn grads(&self) -> Result<Vec<NamedTensor>>;
    /// AdamW state, for checkpoints.
    async fn optimizer_state(&self) -> Result<OptimizerState>;
    /// Restore AdamW state from a checkpoint.
    async fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()>;
    /// Seed of the dropout RNG for the next micro-batch (the trainer derives it per step so a
    /// resumed run draws the same masks).
    fn set_dropout_seed(&mut self, seed: u64);
}

/// Module paths (inside a decoder layer) of the seven projections LoRA can adapt, in PEFT's
/// usual order; engines index projections by position in this list.
pub const PROJ_PATHS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// (in_features, out_features) of projection `p` (an index into `PROJ_PATHS`) under `spec`.
pub fn proj_dims(spec: &ModelSpec, p: usize) -> (usize, usize) {
    let (h, q, kv, f) = (
        spec.hidden_size,
        spec.q_dim(),
        spec.kv_dim(),
        spec.intermediate_size,
    );
    match p {
        0 => (h, q),
        1 | 2 => (h, kv),
        3 => (q, h),
        4 | 5 => (h, f),
        _ => (f, h),
    }
}

/// Reject specs the training engines cannot run, naming the field (`source`: the model file).
pub fn check_trainable_spec(spec: &ModelSpec, source: &std::path::Path) -> Result<()> {
    let bad = |field: &str, msg: String| Err(Error::invalid_field(source, field, msg));
    if spec.num_attention_heads == 0
        || spec.num_key_value_heads == 0
        || !spec
            .num_attention_heads
            .is_multiple_of(spec.num_key_value_heads)
    {
        return bad(
            "num_key_value_heads",
            format!(
                "{} must be > 0 and divide num_attention_heads {}",
                spec.num_key_value_heads, spec.num_attention_heads
            ),
        );
    }
    if spec.head_dim == 0 || !spec.head_dim.is_multiple_of(2) {
        return bad(
            "head_dim",
            format!("{} must be even and > 0", spec.head_dim),
        );
    }
    if spec.hidden_act != "silu" {
        return bad(
            "hidden_act",
            format!("'{}' is not supported (only silu)", spec.hidden_act),
        );
    }
    if spec.vocab_size == 0 || spec.hidden_size == 0 || spec.num_hidden_layers == 0 {
        return bad(
            "vocab_size",
            "vocab_size, hidden_size and num_hidden_layers must be > 0".into(),
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

/// Check a LoRA setup against `spec` (rank, scale, dropout, each target's module path and
/// sizes, no duplicates) and return each target's (layer, projection index into `PROJ_PATHS`).
pub fn parse_lora_targets(spec: &ModelSpec, lora: &LoraSetup) -> Result<Vec<(usize, usize)>> {
    if lora.rank == 0 {
        return Err(Error::Invalid("LoRA rank must be > 0".into()));
    }
    if !lora.scale.is_finite() {
        return Err(Error::Invalid(format!(
            "LoRA scale {} is not finite",
            lora.scale
        )));
    }
    if !(0.0..1.0).contains(&lora.dropout) {
        return Err(Error::Invalid(format!(
            "LoRA dropout {} must be in [0, 1)",
            lora.dropout
        )));
    }
    if lora.targets.is_empty() {
        return Err(Error::Invalid("no LoRA targets".into()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(lora.targets.len());
    for t in &lora.targets {
        let parsed = t
            .module
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(l, path)| {
                let l: usize = l.parse().ok()?;
                let p = PROJ_PATHS.iter().position(|&q| q == path)?;
                Some((l, p))
            });
        let Some((l, p)) = parsed.filter(|(l, _)| *l < spec.num_hidden_layers) else {
            return Err(Error::Invalid(format!(
                "LoRA target '{}': not a projection of this model (expected \
                 model.layers.<0..{}>.<self_attn.q_proj|k_proj|v_proj|o_proj|mlp.gate_proj|up_proj|down_proj>)",
                t.module, spec.num_hidden_layers
            )));
        };
        let (in_f, out_f) = proj_dims(spec, p);
        if (t.in_features, t.out_features) != (in_f, out_f) {
            return Err(Error::Invalid(format!(
                "LoRA target '{}': {} -> {} features, the model has {in_f} -> {out_f}",
                t.module, t.in_features, t.out_features
            )));
        }
        if !seen.insert((l, p)) {
            return Err(Error::Invalid(format!(
                "LoRA target '{}' is listed twice",
                t.module
            )));
        }
        out.push((l, p));
    }
    Ok(out)
}

/// HF-convention labels (aligned with the ids, `-100` = no loss) shifted for causal LM: the
/// pairs `(row, label)` where row `b * seq + t` predicts `labels[b * seq + t + 1]`. Every label
/// must be -100 or a token id below `vocab`.
pub fn shifted_targets(
    labels: &[i32],
    batch: usize,
    seq: usize,
    vocab: usize,
) -> Result<Vec<(usize, u32)>> {
    if labels.len() != batch * seq {
        return Err(Error::Invalid(format!(
            "labels: {} values for a batch of {batch} x {seq}",
            labels.len()
        )));
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l != -100 && (l < 0 || l as usize >= vocab))
    {
        return Err(Error::Invalid(format!(
            "labels: row {} position {} has label {l}: expected -100 or a token id below {vocab}",
            i / seq,
            i % seq
        )));
    }
    let mut targets = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let l = labels[b * seq + t + 1];
            if l != -100 {
                targets.push((b * seq + t, l as u32));
            }
        }
    }
    Ok(targets)
}

/// Check a micro-batch against `spec` (shape, sequence length, token ids, labels) and return
/// its shifted targets (`shifted_targets`).
pub fn check_micro_batch(spec: &ModelSpec, mb: &MicroBatch<'_>) -> Result<Vec<(usize, u32)>> {
    if mb.batch == 0 || mb.seq == 0 {
        return Err(Error::Invalid(format!(
            "micro-batch of {} x {} tokens: both must be > 0",
            mb.batch, mb.seq
        )));
    }
    let n = mb.batch.saturating_mul(mb.seq);
    if mb.ids.len() != n {
        return Err(Error::Invalid(format!(
            "micro-batch: {} token ids for {} x {}",
            mb.ids.len(),
            mb.batch,
            mb.seq
        )));
    }
    if mb.seq > spec.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "micro-batch: sequences of {} tokens exceed the model's max_position_embeddings {}",
            mb.seq, spec.max_position_embeddings
        )));
    }
    if let Some((i, &t)) = mb
        .ids
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= spec.vocab_size)
    {
        return Err(Error::Invalid(format!(
            "micro-batch: row {} position {} has token id {t}, outside the vocabulary of {}",
            i / mb.seq,
            i % mb.seq,
            spec.vocab_size
        )));
    }
    shifted_targets(mb.labels, mb.batch, mb.seq, spec.vocab_size)
}
