//! Speed and peak memory of LoRA training (forward + backward + AdamW step) on SmolLM2-135M's
//! shape with random weights: hidden 576, 30 layers, 9/3 heads, ffn 1536, vocab 49152, tied;
//! LoRA r=8 (alpha 16) on all seven projections. Ignored by default. Build with `--release`
//! (the test profile keeps debug assertions, which halve `gemm`'s speed) and run one
//! configuration per process so that its peak RSS is its own, e.g.
//!
//! `cargo test -p hone-cpu --release --test train_bench -- --ignored --nocapture --exact f32_4x256`
//!
//! Weights are either f32, or Q4_1 projections with a Q8_0 embedding (the layout of the real
//! SmolLM2-135M-Instruct.Q4_1.gguf). Peak RSS is the process's VmHWM, reset (clear_refs 5) once
//! the weights are built; it includes the weights. Each line also prints the CPU this process
//! and everything else used: the machine is shared, and a run where others took a core is not
//! a measurement.
//!
//! The measured figures on the real model, next to PyTorch + PEFT, come from `make bench`
//! (`hone bench-train`, scripts/bench.sh) and are kept in BENCHMARKS.md.

mod common;
mod train_common;

use std::time::Instant;

use common::{random_weights, spec, Lcg};
use hone_core::engine::{AdamW, Engine, MicroBatch};
use hone_core::{Architecture, DType, ModelSpec, WeightStore};
use hone_cpu::train::{CpuEngine, CpuTrainOptions, TrainProfile};
use train_common::{all_targets, block_on, quantize_store, random_lora};

fn smollm2_spec() -> ModelSpec {
    let mut s = spec(Architecture::Llama, 49152, 9, 3, 64, 1536, 30, true);
    s.max_position_embeddings = 8192;
    s.rope_theta = 100000.0;
    s
}

/// A line of /proc/self/status, in KiB.
fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) of this process so far and of the whole machine.
fn cpu_seconds() -> (f64, f64) {
    let tick = 100.0; // USER_HZ on Linux
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = own
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let own = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / tick)
        .unwrap_or(0.0);
    let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let all = all
        .lines()
        .next()
        .map(|l| {
            let v: Vec<f64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user + nice + system + irq + softirq + steal
            [0, 1, 2, 5, 6, 7]
                .iter()
                .filter_map(|&i| v.get(i))
                .sum::<f64>()
                / tick
        })
        .unwrap_or(0.0);
    (own, all)
}

/// Random weights of SmolLM2's shape: f32, or Q4_1 projections + Q8_0 embedding (built one
/// tensor at a time, so that no f32 copy of the whole model ever exists and inflates the RSS).
fn weights(quantized: bool) -> WeightStore {
    let spec = smollm2_spec();
    if !quantized {
        return random_weights(&spec, 1);
    }
    let mut out = WeightStore::new("random-q4_1");
    for (i, (name, shape)) in spec.expected_tensors().into_iter().enumerate() {
        // One tensor at a time: values as tests/common's `random_weights` draws them, re-encoded.
        let mut store = WeightStore::new("one");
        let n: usize = shape.iter().product();
        let mut rng = Lcg::new(100 + i as u64);
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            rng.vec(n, 0.2).into_iter().map(|v| 1.0 + v).collect()
        } else if name.contains("embed_tokens") {
            rng.vec(n, 0.5)
        } else {
            rng.vec(n, 1.7 / (shape[1] as f32).sqrt())
        };
        store.insert(hone_core::TensorEntry::from_f32(name, shape, &values).unwrap());
        drop(values);
        for t in quantize_store(&store, DType::Q4_1, Some(DType::Q8_0))
            .tensors
            .into_values()
        {
            out.insert(t);
        }
    }
    out
}

fn bench(label: &str, quantized: bool, batch: usize, seq: usize, ckpt: bool, steps: usize) {
    let spec = smollm2_spec();
    let w = weights(quantized);
    let setup = all_targets(&spec, 8, 2.0, 0.0);
    let mut opts = CpuTrainOptions {
        gradient_checkpointing: ckpt,
        ..Default::default()
    };
    if let Some(rows) = std::env::var("HONE_BENCH_LOSS_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.loss_chunk_rows = rows;
    }
    let adamw = AdamW {
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut engine = CpuEngine::new(&spec, &w, setup.clone(), adamw, opts).unwrap();
    block_on(engine.set_params(&random_lora(&setup, 2, 0.01))).unwrap();
    let mut rng = Lcg::new(3);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.below(49152)).collect();
    let labels: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let mb = MicroBatch {
        ids: &ids,
        labels: &labels,
        batch,
        seq,
    };
    // Peak memory from here on: weights (kept) + everything training allocates.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_start = status_kib("VmRSS:");
    let step = |engine: &mut CpuEngine| {
        let loss = block_on(engine.forward_backward(&mb, 1.0 / (batch * seq) as f32)).unwrap();
        block_on(engine.optimizer_step(1e-4, Some(1.0))).unwrap();
        assert!(loss.nll_sum.is_finite());
        loss
    };
    step(&mut engine); // warm-up: plans the buffers
    engine.reset_profile();
    let (cpu0, all0) = cpu_seconds();
    let t0 = Instant::now();
    for _ in 0..steps {
        step(&mut engine);
    }
    let secs = t0.elapsed().as_secs_f64() / steps as f64;
    let (cpu1, all1) = cpu_seconds();
    let wall = secs * steps as f64;
    let hwm = status_kib("VmHWM:");
    println!(
        "{label}: {:.1} tok/s ({secs:.3} s/step, {steps} steps), peak RSS {:.0} MiB (weights + \
         start {:.0} MiB, activations planned {:.0} MiB); cpu: this process {:.2} cores, others {:.2}",
        (batch * seq) as f64 / secs,
        hwm as f64 / 1024.0,
        rss_start as f64 / 1024.0,
        engine.activation_bytes() as f64 / (1 << 20) as f64,
        (cpu1 - cpu0) / wall,
        ((all1 - all0) - (cpu1 - cpu0)).max(0.0) / wall,
    );
    print_profile(&engine.profile(), steps);
}

fn print_profile(p: &TrainProfile, steps: usize) {
    let total = p.total();
    for (name, s) in p.parts() {
        println!(
            "    {name:<20} {:7.3} s/step {:5.1}%",
            s / steps as f64,
            100.0 * s / total
        );
    }
}

#[test]
#[ignore]
fn f32_4x256() {
    bench("f32 weights, 4 x 256", false, 4, 256, false, 3);
}

#[test]
#[ignore]
fn f32_4x256_checkpointing() {
    bench(
        "f32 weights, 4 x 256, checkpointing",
        false,
        4,
        256,
        true,
        3,
    );
}

#[test]
#[ignore]
fn f32_1x128() {
    bench("f32 weights, 1 x 128", false, 1, 128, false, 5);
}

#[test]
#[ignore]
fn q4_1_4x256() {
    bench("Q4_1 weights, 4 x 256", true, 4, 256, false, 3);
}

#[test]
#[ignore]
fn q4_1_4x256_checkpointing() {
    bench(
        "Q4_1 weights, 4 x 256, checkpointing",
        true,
        4,
        256,
        true,
        3,
    );
}

#[test]
#[ignore]
fn q4_1_1x128() {
    bench("Q4_1 weights, 1 x 128", true, 1, 128, false, 5);
}

/// GFLOP/s of the f32 products a training step makes (x @ W^T forward, dY @ W backward) at
/// SmolLM2's sizes, through the same `gemm` wrapper; best of 10 (the machine is shared).
#[test]
#[ignore]
fn gemm_throughput() {
    use hone_cpu::train::linalg::{gemm, MatRef};
    let mut rng = Lcg::new(4);
    let m = 1024;
    let best = |f: &mut dyn FnMut()| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    // CPU time of this thread (ns), immune to other processes taking the core.
    let thread_cpu = || -> f64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    for &(n, k) in &[(576usize, 576usize), (1536, 576), (576, 1536), (192, 576)] {
        let x = rng.vec(m * k, 1.0);
        let w = rng.vec(n * k, 1.0);
        let dy = rng.vec(m * n, 1.0);
        let mut y = vec![0f32; m * n];
        let mut dx = vec![0f32; m * k];
        let gf = 2.0 * (m * n * k) as f64 / 1e9;
        let fwd = gf
            / best(&mut || {
                let (xm, wm) = (MatRef::new(&x, m, k), MatRef::new(&w, n, k).t());
                gemm(&mut y, n, xm, wm, 1.0, false, true)
            });
        let bwd = gf
            / best(&mut || {
                let (dm, wm) = (MatRef::new(&dy, m, n), MatRef::new(&w, n, k));
                gemm(&mut dx, k, dm, wm, 1.0, false, true)
            });
        // Rows split across threads, one single-threaded product per task.
        for tasks in [2usize, 4, 8] {
            let split = gf
                / best(&mut || {
                    let rows = m.div_ceil(tasks);
                    use rayon::prelude::*;
                    y.par_chunks_mut(rows * n).enumerate().for_each(|(i, yc)| {
                        let mr = yc.len() / n;
                        let xm = MatRef::new(&x[i * rows * k..(i * rows + mr) * k], mr, k);
                        gemm(yc, n, xm, MatRef::new(&w, n, k).t(), 1.0, false, false)
                    })
                });
            let split_bwd = gf
                / best(&mut || {
                    let rows = m.div_ceil(tasks);
                    use rayon::prelude::*;
                    dx.par_chunks_mut(rows * k).enumerate().for_each(|(i, dc)| {
                        let mr = dc.len() / k;
                        let dm = MatRef::new(&dy[i * rows * n..(i * rows + mr) * n], mr, n);
                        gemm(dc, k, dm, MatRef::new(&w, n, k), 1.0, false, false)
                    })
                });
            println!("    rows split over {tasks} tasks: x @ W^T {split:.0} GFLOP/s, dY @ W {split_bwd:.0} GFLOP/s");
        }
        let one_cpu = (0..10)
            .map(|_| {
                let c0 = thread_cpu();
                let (xm, wm) = (MatRef::new(&x, m, k), MatRef::new(&w, n, k).t());
                gemm(&mut y, n, xm, wm, 1.0, false, false);
                (thread_cpu() - c0) / 1e9
            })
            .fold(f64::INFINITY, f64::min);
        println!(
            "{m}x{n}x{k}: x @ W^T {fwd:.0} GFLOP/s, dY @ W {bwd:.0} GFLOP/s (wall, all threads); \
             x @ W^T on one thread {:.0} GFLOP per cpu-second",
            gf / one_cpu
        );
    }
}
