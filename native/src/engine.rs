//! The engine a command runs on: `--device cpu|gpu|auto`. `gpu` takes any wgpu adapter (a
//! software one such as lavapipe included, with a warning); `auto` takes a hardware GPU when
//! there is one and falls back to the CPU otherwise, saying why. The chosen device is printed.

use std::sync::Arc;

use anyhow::{bail, Result};
use hone_core::engine::{
    AdamW, Engine, LoraSetup, LossSum, MicroBatch, NamedTensor, OptimizerState, StepStats,
};
use hone_core::{ModelSpec, WeightStore};
use hone_cpu::train::{CpuEngine, CpuTrainOptions};
use hone_gpu::engine::{GpuEngine, GpuTrainOptions};
use hone_gpu::{AdapterChoice, Gpu, GpuOptions};

/// The CPU or the GPU training engine.
#[derive(Debug)]
pub enum AnyEngine {
    Cpu(Box<CpuEngine>),
    Gpu(Box<GpuEngine>),
}

/// What a command asks of the engine besides the model and the adapter.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineRequest<'a> {
    pub device: &'a str,
    pub cpu: CpuTrainOptions,
    /// The largest micro-batch (batch, seq) the run will use: the GPU engine plans its memory
    /// for it before the first step.
    pub plan: Option<(usize, usize)>,
    /// `--fp16`: mixed precision on the GPU engine (needs shader-f16); refused on the CPU,
    /// which trains in f32 only (as Hugging Face refuses fp16 without a GPU).
    pub fp16: bool,
}

/// Check a `--device` value.
pub fn check_device(device: &str) -> Result<()> {
    match device {
        "cpu" | "gpu" | "auto" => Ok(()),
        other => bail!("invalid device '{other}': use cpu, gpu or auto"),
    }
}

/// The GPU `device` asks for: `None` for the CPU (asked for, or `auto` without a hardware
/// GPU, which is said).
pub fn open_gpu(device: &str, say: &dyn Fn(&str)) -> Result<Option<Arc<Gpu>>> {
    check_device(device)?;
    Ok(match device {
        "cpu" => None,
        "gpu" => {
            let gpu = Gpu::new_blocking(&GpuOptions {
                adapter: AdapterChoice::Any,
                ..Default::default()
            })
            .map_err(|e| anyhow::anyhow!("--device gpu: {e} (use --device cpu)"))?;
            if gpu.is_software() {
                say(&format!(
                    "[hone] warning: {} is a software (CPU-emulated) GPU: expect it to be slower than the CPU engine",
                    gpu.describe()
                ));
            }
            Some(Arc::new(gpu))
        }
        _ => match Gpu::new_blocking(&GpuOptions {
            adapter: AdapterChoice::Hardware,
            ..Default::default()
        }) {
            Ok(gpu) => {
                say(&format!("[hone] device auto: {}", gpu.describe()));
                Some(Arc::new(gpu))
            }
            Err(e) => {
                say(&format!("[hone] device auto: {e}; using the CPU"));
                None
            }
        },
    })
}

/// Open the engine `req.device` names; `say` prints progress lines.
pub fn open_engine(
    req: EngineRequest<'_>,
    spec: &ModelSpec,
    weights: &WeightStore,
    setup: LoraSetup,
    adamw: AdamW,
    say: &dyn Fn(&str),
) -> Result<AnyEngine> {
    let gpu = open_gpu(req.device, say)?;
    if req.fp16 && gpu.is_none() {
        bail!(
            "--fp16 (mixed precision) needs the GPU engine: the CPU engine trains in float32; \
             use --device gpu on an adapter with shader-f16, or drop --fp16"
        );
    }
    Ok(match gpu {
        None => AnyEngine::Cpu(Box::new(CpuEngine::new(
            spec, weights, setup, adamw, req.cpu,
        )?)),
        Some(gpu) => {
            let desc = gpu.describe();
            let opts = GpuTrainOptions {
                gradient_checkpointing: req.cpu.gradient_checkpointing,
                fp16: req.fp16,
                ..Default::default()
            };
            let mut e = GpuEngine::new(gpu, spec, weights, setup, adamw, opts)?;
            if let Some((b, s)) = req.plan {
                e.plan(b, s)?;
            }
            // Test seam: the device reports itself lost after this many micro-batches.
            if let Some(n) = std::env::var("HONE_TEST_GPU_LOSE_AFTER")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                e.lose_device_after(n);
            }
            say(&format!(
                "[hone] GPU engine on {desc}{}: planned GPU memory {}",
                if req.fp16 {
                    " (fp16: f16 products, f32 sums and master weights)"
                } else {
                    ""
                },
                e.planned_bytes()
            ));
            AnyEngine::Gpu(Box::new(e))
        }
    })
}

impl AnyEngine {
    pub fn num_trainable(&self) -> usize {
        match self {
            AnyEngine::Cpu(e) => e.num_trainable(),
            AnyEngine::Gpu(e) => e.num_trainable(),
        }
    }
}

macro_rules! both {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            AnyEngine::Cpu($e) => $body,
            AnyEngine::Gpu($e) => $body,
        }
    };
}

impl Engine for AnyEngine {
    fn describe(&self) -> String {
        both!(self, e => e.describe())
    }
    async fn forward_backward(
        &mut self,
        batch: &MicroBatch<'_>,
        grad_scale: f32,
    ) -> hone_core::Result<LossSum> {
        both!(self, e => e.forward_backward(batch, grad_scale).await)
    }
    async fn optimizer_step(
        &mut self,
        lr: f32,
        max_grad_norm: Option<f32>,
    ) -> hone_core::Result<StepStats> {
        both!(self, e => e.optimizer_step(lr, max_grad_norm).await)
    }
    async fn eval_loss(&mut self, batch: &MicroBatch<'_>) -> hone_core::Result<LossSum> {
        both!(self, e => e.eval_loss(batch).await)
    }
    async fn params(&self) -> hone_core::Result<Vec<NamedTensor>> {
        both!(self, e => e.params().await)
    }
    async fn set_params(&mut self, params: &[NamedTensor]) -> hone_core::Result<()> {
        both!(self, e => e.set_params(params).await)
    }
    async fn grads(&self) -> hone_core::Result<Vec<NamedTensor>> {
        both!(self, e => e.grads().await)
    }
    async fn optimizer_state(&self) -> hone_core::Result<OptimizerState> {
        both!(self, e => e.optimizer_state().await)
    }
    async fn set_optimizer_state(&mut self, state: &OptimizerState) -> hone_core::Result<()> {
        both!(self, e => e.set_optimizer_state(state).await)
    }
    fn set_dropout_seed(&mut self, seed: u64) {
        both!(self, e => e.set_dropout_seed(seed))
    }
}
