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
use crate::error::Result;

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
