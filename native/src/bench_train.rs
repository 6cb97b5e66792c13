//! `hone bench-train`: speed and peak memory of LoRA training (forward + backward + AdamW) of a
//! real model on the CPU engine, measured as `peft_cpu_bench.py --mode lora` measures PyTorch +
//! PEFT: random token ids (seeded), labels = ids, a few warm-up steps, then timed steps. Prints
//! one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use hone_core::adapter::{LoraAdapter, LoraConfig};
use hone_core::engine::{AdamW, Engine, MicroBatch};
use hone_core::finetune::{adapter_to_params, lora_setup};
use hone_cpu::train::CpuTrainOptions;

use crate::engine::{open_engine, AnyEngine, EngineRequest};

use crate::block_on;

#[derive(Args)]
pub struct BenchTrainArgs {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    model: PathBuf,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// LoRA rank.
    #[arg(long = "lora_r", default_value_t = 8)]
    lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long = "lora_alpha", default_value_t = 16.0)]
    lora_alpha: f64,
    /// Modules to adapt (q_proj,k_proj,... or all-linear).
    #[arg(long = "target_modules", num_args = 1.., value_delimiter = ',', default_value = "all-linear")]
    target_modules: Vec<String>,
    /// Keep only each layer's input in the forward and recompute the layer in the backward.
    #[arg(long = "gradient_checkpointing")]
    gradient_checkpointing: bool,
    /// Convert every frozen weight to f32 at load instead of dequantizing tiles in each matmul.
    #[arg(long = "dequantize_at_load")]
    dequantize_at_load: bool,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Seed of the token ids and of the LoRA initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, gpu (any wgpu adapter, software ones included) or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// GPU engine: time each kernel, with GPU timestamp queries where the adapter has
    /// timestamp-query (each submit then waits for its timestamps), else with the wall clock
    /// (every dispatch submitted and waited for alone); the output says which. The timed
    /// steps' tok/s are not comparable then.
    #[arg(long)]
    profile: bool,
    /// GPU engine: mixed float16 (f16 products, f32 sums and master weights).
    #[arg(long)]
    fp16: bool,
}

pub fn cmd_bench_train(a: BenchTrainArgs) -> Result<()> {
    if a.batch == 0 || a.seq == 0 || a.steps == 0 {
        bail!("--batch, --seq and --steps must be at least 1");
    }
    let t0 = Instant::now();
    let model = hone_core::load_model(&a.model)?;
    let spec = &model.spec;
    if a.seq > spec.max_position_embeddings {
        bail!(
            "--seq {} is longer than the model's {} positions",
            a.seq,
            spec.max_position_embeddings
        );
    }
    let lora = LoraConfig {
        r: a.lora_r,
        lora_alpha: a.lora_alpha,
        lora_dropout: 0.0,
        target_modules: a.target_modules.clone(),
        ..Default::default()
    };
    let setup = lora_setup(&lora, spec)?;
    // torch.optim.AdamW's defaults, as peft_cpu_bench.py uses them (lr 2e-4, no clipping).
    let adamw = AdamW {
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut engine = open_engine(
        EngineRequest {
            device: &a.device,
            cpu: CpuTrainOptions {
                gradient_checkpointing: a.gradient_checkpointing,
                dequantize_at_load: a.dequantize_at_load,
                ..Default::default()
            },
            plan: Some((a.batch, a.seq)),
            fp16: a.fp16,
        },
        spec,
        &model.weights,
        setup,
        adamw,
        &|s: &str| eprintln!("{s}"),
    )?;
    let adapter = LoraAdapter::init(&lora, spec, a.seed, None)?;
    block_on(engine.set_params(&adapter_to_params(&adapter)?))?;
    let load_s = t0.elapsed().as_secs_f64();

    let vocab = spec.vocab_size as u64;
    let mut rng = hone_core::sampling::Rng::new(a.seed);
    let ids: Vec<u32> = (0..a.batch * a.seq)
        .map(|_| (rng.next_u64() % vocab) as u32)
        .collect();
    let labels: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let mb = MicroBatch {
        ids: &ids,
        labels: &labels,
        batch: a.batch,
        seq: a.seq,
    };
    // HF's loss is the mean over the shifted labels: the same gradient scale.
    let grad_scale = 1.0 / (a.batch * (a.seq - 1)).max(1) as f32;
    let step = |engine: &mut AnyEngine| -> Result<f64> {
        let loss = block_on(engine.forward_backward(&mb, grad_scale))?;
        block_on(engine.optimizer_step(2e-4, None))?;
        Ok(loss.mean())
    };

    for _ in 0..a.warmup {
        step(&mut engine)?;
    }
    let mut gpu_clock = None;
    match &mut engine {
        AnyEngine::Cpu(e) => e.reset_profile(),
        AnyEngine::Gpu(e) if a.profile => gpu_clock = Some(e.gpu().start_profile()),
        AnyEngine::Gpu(_) => {}
    }
    let mut times = Vec::with_capacity(a.steps);
    let mut losses = Vec::with_capacity(a.steps);
    let snap = CpuSnapshot::now();
    let t_all = Instant::now();
    for _ in 0..a.steps {
        let t = Instant::now();
        losses.push(step(&mut engine)?);
        times.push(t.elapsed().as_secs_f64());
    }
    let total = t_all.elapsed().as_secs_f64();
    let (cpu_self, cpu_other) = snap.usage_until(&CpuSnapshot::now());

    let tokens = (a.batch * a.seq) as f64;
    let steps = a.steps as f64;
    let prof = match &engine {
        AnyEngine::Cpu(e) => e.profile(),
        AnyEngine::Gpu(_) => Default::default(),
    };
    let gpu_profile: serde_json::Map<String, serde_json::Value> = match &engine {
        AnyEngine::Gpu(e) => e
            .gpu()
            .profile()
            .into_iter()
            .map(|(k, s)| (k.to_string(), round(s / a.steps as f64, 4).into()))
            .collect(),
        AnyEngine::Cpu(_) => Default::default(),
    };
    let prof_total = prof.total();
    let profile: serde_json::Map<String, serde_json::Value> = prof
        .parts()
        .into_iter()
        .map(|(name, s)| (name.to_string(), round(s / steps, 4).into()))
        .collect();
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    let row = serde_json::json!({
        "model": model.source.display().to_string(),
        "weights": if a.dequantize_at_load { "f32 (dequantized at load)" } else { "stored type" },
        "batch": a.batch,
        "seq": a.seq,
        "gc": a.gradient_checkpointing,
        "lora_r": a.lora_r,
        "lora_alpha": a.lora_alpha,
        "target_modules": a.target_modules.join(","),
        "threads": threads(),
        "trainable": engine.num_trainable(),
        "load_s": round(load_s, 3),
        "warmup": a.warmup,
        "steps": a.steps,
        "tok_s": round(tokens * steps / total, 1),
        "s_step": round(total / steps, 3),
        "s_step_min": round(min, 3),
        "s_step_max": round(max, 3),
        "peak_rss_mib": (status_kib("VmHWM:") as f64 / 1024.0).round(),
        "device": engine.describe(),
        "fp16": a.fp16,
        "activation_mib": match &engine {
            AnyEngine::Cpu(e) => round(e.activation_bytes() as f64 / (1 << 20) as f64, 1),
            AnyEngine::Gpu(e) => round(e.planned_bytes().activations as f64 / (1 << 20) as f64, 1),
        },
        "gpu_planned_mib": match &engine {
            AnyEngine::Cpu(_) => serde_json::Value::Null,
            AnyEngine::Gpu(e) => round(e.planned_bytes().total() as f64 / (1 << 20) as f64, 1).into(),
        },
        "cpu_self": round(cpu_self, 2),
        "cpu_other": round(cpu_other, 2),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[losses.len() - 1], 4),
        // Seconds per step in each kind of op (zero where the engine keeps no clock).
        "profile_s_step": if prof_total > 0.0 { serde_json::Value::Object(profile) } else { serde_json::Value::Null },
        // GPU engine with --profile: seconds per step in each kernel, and how they were taken.
        "gpu_kernel_s_step": if gpu_profile.is_empty() { serde_json::Value::Null } else { serde_json::Value::Object(gpu_profile) },
        "gpu_profile_clock": gpu_clock.map(|c| c.describe()),
        // --fp16: optimizer steps skipped on an f16 overflow (warm-up included), final loss scale.
        "fp16_skipped_steps": match &engine {
            AnyEngine::Gpu(e) if a.fp16 => serde_json::Value::from(e.skipped_steps()),
            _ => serde_json::Value::Null,
        },
        "loss_scale": match &engine {
            AnyEngine::Gpu(e) if a.fp16 => serde_json::Value::from(e.loss_scale()),
            _ => serde_json::Value::Null,
        },
    });
    println!("{row}");
    Ok(())
}

/// Busy time of the whole machine, CPU time of this process, and wall time, as
/// `peft_cpu_bench.py`'s `cpu_snapshot` takes them.
struct CpuSnapshot {
    machine_busy_s: f64,
    own_s: f64,
    at: Instant,
}

/// USER_HZ: the unit of /proc/stat and /proc/self/stat on Linux.
const TICKS_PER_S: f64 = 100.0;

impl CpuSnapshot {
    fn now() -> CpuSnapshot {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // Everything but idle (3) and iowait (4).
        let busy: f64 = fields
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 3 && i != 4)
            .map(|(_, v)| v)
            .sum();
        let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // After the `(comm)` field: state is field 3, utime and stime are fields 14 and 15.
        let after_comm: Vec<&str> = own
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let own: f64 = after_comm
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
            .unwrap_or(0.0);
        CpuSnapshot {
            machine_busy_s: busy / TICKS_PER_S,
            own_s: own / TICKS_PER_S,
            at: Instant::now(),
        }
    }

    /// Cores used by this process and by everything else from `self` to `later`.
    fn usage_until(&self, later: &CpuSnapshot) -> (f64, f64) {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let mine = (later.own_s - self.own_s) / wall;
        let all = (later.machine_busy_s - self.machine_busy_s) / wall;
        (mine, (all - mine).max(0.0))
    }
}

/// A line of /proc/self/status, in KiB (0 where there is none).
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
