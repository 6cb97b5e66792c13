//! Helpers shared by the training tests: a `block_on` for the engine's futures, LoRA setups for
//! every projection of a spec, random adapters, and Q8_0 / Q4_1 encoders for quantized tiny
//! models.

#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use hone_core::engine::{LoraSetup, NamedTensor, TrainTarget};
use hone_core::{Bytes, DType, ModelSpec, TensorEntry, WeightStore};

use crate::common::Lcg;

/// Run a future that completes on its first poll (every `CpuEngine` future does).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a CpuEngine future did not complete at once"),
    }
}

/// The seven projections of a layer: module path suffix and (in, out) features.
pub fn projections(spec: &ModelSpec) -> Vec<(&'static str, usize, usize)> {
    let (h, q, kv, f) = (
        spec.hidden_size,
        spec.q_dim(),
        spec.kv_dim(),
        spec.intermediate_size,
    );
    vec![
        ("self_attn.q_proj", h, q),
        ("self_attn.k_proj", h, kv),
        ("self_attn.v_proj", h, kv),
        ("self_attn.o_proj", q, h),
        ("mlp.gate_proj", h, f),
        ("mlp.up_proj", h, f),
        ("mlp.down_proj", f, h),
    ]
}

/// LoRA on all seven projections of every layer.
pub fn all_targets(spec: &ModelSpec, rank: usize, scale: f32, dropout: f32) -> LoraSetup {
    let mut targets = Vec::new();
    for l in 0..spec.num_hidden_layers {
        for (path, i, o) in projections(spec) {
            targets.push(TrainTarget {
                module: format!("model.layers.{l}.{path}"),
                in_features: i,
                out_features: o,
            });
        }
    }
    LoraSetup {
        rank,
        scale,
        dropout,
        targets,
        modules_to_save: Vec::new(),
    }
}

/// Random non-zero A and B for every target of `setup` (A ~ U(+-1/sqrt(in)) * a_gain,
/// B ~ U(+-b_scale)).
pub fn random_lora(setup: &LoraSetup, seed: u64, b_scale: f32) -> Vec<NamedTensor> {
    let mut rng = Lcg::new(seed);
    let r = setup.rank;
    let mut out = Vec::new();
    for t in &setup.targets {
        out.push(NamedTensor {
            name: format!("{}.lora_A", t.module),
            shape: vec![r, t.in_features],
            data: rng.vec(r * t.in_features, 1.7 / (t.in_features as f32).sqrt()),
        });
        out.push(NamedTensor {
            name: format!("{}.lora_B", t.module),
            shape: vec![t.out_features, r],
            data: rng.vec(t.out_features * r, b_scale),
        });
    }
    out
}

/// Q8_0 bytes of `values` (rows a multiple of 32): per block an f16 scale and 32 int8.
pub fn q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for blk in values.chunks(32) {
        let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0);
        out.extend_from_slice(&d.to_le_bytes());
        let inv = if d.to_f32() > 0.0 {
            1.0 / d.to_f32()
        } else {
            0.0
        };
        out.extend(
            blk.iter()
                .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out
}

/// Q4_1 bytes of `values` (rows a multiple of 32): per block f16 scale d, f16 minimum m and 16
/// bytes of nibbles (low nibble value j, high nibble value j + 16); value = d * q + m.
pub fn q4_1(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 20);
    for blk in values.chunks(32) {
        let min = blk.iter().cloned().fold(f32::INFINITY, f32::min);
        let max = blk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let d = half::f16::from_f32((max - min) / 15.0);
        let m = half::f16::from_f32(min);
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&m.to_le_bytes());
        let (d, m) = (d.to_f32(), m.to_f32());
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v - m) * inv).round().clamp(0.0, 15.0) as u8;
        for j in 0..16 {
            out.push(q(blk[j]) | (q(blk[j + 16]) << 4));
        }
    }
    out
}

fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::Q8_0 => q8_0(values),
        DType::Q4_1 => q4_1(values),
        _ => panic!("encode: {dtype} is not supported here"),
    }
}

/// The same store with every projection weight re-encoded as `proj` (Q8_0 or Q4_1), and the
/// embedding as `embed` when given.
pub fn quantize_store(store: &WeightStore, proj: DType, embed: Option<DType>) -> WeightStore {
    let mut out = WeightStore::new(&store.source);
    for (name, t) in &store.tensors {
        let dtype = if name.ends_with("_proj.weight") {
            Some(proj)
        } else if name.contains("embed_tokens") {
            embed
        } else {
            None
        };
        match dtype {
            Some(dtype) => {
                let bytes = encode(&t.to_f32(), dtype);
                out.insert(
                    TensorEntry::new(name.clone(), t.shape.clone(), dtype, Bytes::from_vec(bytes))
                        .unwrap(),
                );
            }
            None => out.insert(t.clone()),
        }
    }
    out
}

/// transformers' `get_cosine_schedule_with_warmup` (num_cycles 0.5) for optimizer step `step`
/// (0-based), as LambdaLR applies it.
pub fn cosine_with_warmup(base_lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base_lr * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    base_lr * (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
}
