//! Where training time goes: seconds per kind of op, summed over steps. A clock read costs tens
//! of nanoseconds and a step makes a few thousand, so it is always on natively (on wasm there
//! is no clock and every figure stays 0).

/// Seconds spent in each kind of op since the engine was made or `reset_profile` was called.
/// `recompute` (gradient checkpointing) is also counted in the forward figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrainProfile {
    /// Frozen projections, forward (`x @ W^T`).
    pub matmul_forward: f64,
    /// Frozen projections, backward (`dY @ W`).
    pub matmul_backward: f64,
    /// LoRA path forward (with dropout).
    pub lora_forward: f64,
    /// LoRA path backward (dA, dB, dx; with dropout).
    pub lora_backward: f64,
    pub attention_forward: f64,
    pub attention_backward: f64,
    /// RMSNorm forward, recomputation and backward.
    pub norms: f64,
    /// RoPE forward and backward.
    pub rope: f64,
    /// SwiGLU forward, recomputation and backward.
    pub swiglu: f64,
    /// Embedding lookup, residual adds, copies.
    pub other: f64,
    /// The fused final norm + vocabulary head + cross-entropy, forward and backward.
    pub loss: f64,
    /// Clipping and AdamW.
    pub optimizer: f64,
    /// Layer recomputation for gradient checkpointing (also inside the forward figures).
    pub recompute: f64,
}

impl TrainProfile {
    /// Sum of all figures except `recompute` (which they already include).
    pub fn total(&self) -> f64 {
        self.matmul_forward
            + self.matmul_backward
            + self.lora_forward
            + self.lora_backward
            + self.attention_forward
            + self.attention_backward
            + self.norms
            + self.rope
            + self.swiglu
            + self.other
            + self.loss
            + self.optimizer
    }

    /// (name, seconds) of each figure, for printing.
    pub fn parts(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("matmul forward", self.matmul_forward),
            ("matmul backward", self.matmul_backward),
            ("lora forward", self.lora_forward),
            ("lora backward", self.lora_backward),
            ("attention forward", self.attention_forward),
            ("attention backward", self.attention_backward),
            ("rmsnorm", self.norms),
            ("rope", self.rope),
            ("swiglu", self.swiglu),
            ("other", self.other),
            ("loss (head + CE)", self.loss),
            ("optimizer", self.optimizer),
            ("(recompute)", self.recompute),
        ]
    }
}

/// A point in time (nothing on wasm, which has no clock in std).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(#[cfg(not(target_arch = "wasm32"))] std::time::Instant);

impl Clock {
    pub(crate) fn now() -> Clock {
        Clock(
            #[cfg(not(target_arch = "wasm32"))]
            std::time::Instant::now(),
        )
    }

    /// Seconds since `self`.
    pub(crate) fn secs(self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.0.elapsed().as_secs_f64()
        }
        #[cfg(target_arch = "wasm32")]
        {
            0.0
        }
    }
}
