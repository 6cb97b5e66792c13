//! `GpuSession`: generation on the GPU with a KV cache in GPU memory, the frozen weights in
//! their stored type, and an optional LoRA adapter applied unmerged (`y += scale (x A^T) B^T`).
//! Each `forward_last` records the new tokens' forward (prompts longer than the planned chunk
//! go in several passes) and reads back one row of logits.

use std::sync::Arc;

use hone_core::engine::{LoraSetup, NamedTensor};
use hone_core::generate::CausalLm;
use hone_core::{Error, ModelSpec, Result, WeightStore};

use crate::buffer::GBuf;
use crate::context::Gpu;
use crate::engine::{load_base, lora_layout, pack_params, rope_tables, Base, Lora};
use crate::ops::matmul::{gemm, linear_forward, Gemm};
use crate::ops::{attention, elementwise, matmul, norm, rope, swiglu};
use crate::recorder::{Arena, Recorder};

/// Tokens per recorded forward pass (prompts are processed in chunks of this many).
const CHUNK: usize = 128;

struct Scratch {
    ids: GBuf,
    x: GBuf,
    xn: GBuf,
    rstd: GBuf,
    q: GBuf,
    k: GBuf,
    v: GBuf,
    att: GBuf,
    proj: GBuf,
    gate: GBuf,
    up: GBuf,
    hsw: GBuf,
    u: GBuf,
    last: GBuf,
    last_n: GBuf,
    logits: GBuf,
}

/// A model on the GPU and one sequence's KV cache.
pub struct GpuSession {
    gpu: Arc<Gpu>,
    arena: Arena,
    base: Base,
    lora: Option<(Lora, GBuf)>,
    k_cache: Vec<GBuf>,
    v_cache: Vec<GBuf>,
    cos: GBuf,
    sin: GBuf,
    sc: Scratch,
    max_len: usize,
    pos: usize,
}

impl std::fmt::Debug for GpuSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSession")
            .field("gpu", &self.gpu.describe())
            .field("pos", &self.pos)
            .finish()
    }
}

impl GpuSession {
    /// A session of at most `max_len` positions (capped at the model's limit), with `adapter`
    /// (its setup and its A/B tensors by engine name) applied when given.
    pub fn new(
        gpu: Arc<Gpu>,
        spec: &ModelSpec,
        weights: &WeightStore,
        adapter: Option<(&LoraSetup, &[NamedTensor])>,
        max_len: usize,
    ) -> Result<GpuSession> {
        hone_core::engine::check_trainable_spec(spec, &weights.source)?;
        weights.check_against(spec)?;
        let max_len = max_len.min(spec.max_position_embeddings).max(1);
        let base = load_base(&gpu, spec, weights)?;
        let lora = match adapter {
            Some((setup, tensors)) => {
                if !setup.modules_to_save.is_empty() {
                    return Err(Error::Invalid(
                        "an adapter with modules_to_save cannot run on the GPU yet: merge it (hone merge) or use --device cpu".into(),
                    ));
                }
                let layout = lora_layout(spec, setup)?;
                let values = pack_params(&layout, "adapter", tensors)?;
                let buf = gpu.upload_f32("adapter", &values)?;
                Some((layout, buf))
            }
            None => None,
        };
        let (h, qd, kvd, f) = (
            spec.hidden_size,
            spec.q_dim(),
            spec.kv_dim(),
            spec.intermediate_size,
        );
        let (cos, sin) = rope_tables(&spec.rope_inv_freq(), max_len);
        let mut k_cache = Vec::new();
        let mut v_cache = Vec::new();
        for l in 0..spec.num_hidden_layers {
            k_cache.push(gpu.zeros(&format!("k cache {l}"), max_len * kvd)?);
            v_cache.push(gpu.zeros(&format!("v cache {l}"), max_len * kvd)?);
        }
        let r = lora.as_ref().map_or(1, |l| l.0.rank);
        let c = CHUNK;
        let sc = Scratch {
            ids: gpu.zeros("ids", c)?,
            x: gpu.zeros("x", c * h)?,
            xn: gpu.zeros("xn", c * h)?,
            rstd: gpu.zeros("rstd", c)?,
            q: gpu.zeros("q", c * qd)?,
            k: gpu.zeros("k", c * kvd)?,
            v: gpu.zeros("v", c * kvd)?,
            att: gpu.zeros("att", c * qd)?,
            proj: gpu.zeros("proj", c * h)?,
            gate: gpu.zeros("gate", c * f)?,
            up: gpu.zeros("up", c * f)?,
            hsw: gpu.zeros("hsw", c * f)?,
            u: gpu.zeros("lora u", c * r)?,
            last: gpu.zeros("last row", h)?,
            last_n: gpu.zeros("last row normed", h + 64)?,
            logits: gpu.zeros("logits", spec.vocab_size)?,
        };
        let cos = gpu.upload_f32("rope cos", &cos)?;
        let sin = gpu.upload_f32("rope sin", &sin)?;
        let arena = Arena::new(&gpu);
        gpu.sync()?;
        Ok(GpuSession {
            gpu,
            arena,
            base,
            lora,
            k_cache,
            v_cache,
            cos,
            sin,
            sc,
            max_len,
            pos: 0,
        })
    }

    pub fn describe(&self) -> String {
        format!("gpu: {}", self.gpu.describe())
    }

    fn lora(
        &self,
        rec: &mut Recorder<'_>,
        l: usize,
        p: usize,
        x: &GBuf,
        y: &GBuf,
        n: usize,
    ) -> Result<()> {
        let Some((lora, params)) = &self.lora else {
            return Ok(());
        };
        let Some(si) = lora.slot_of[l][p] else {
            return Ok(());
        };
        let s = &lora.slots[si];
        let r = lora.rank;
        let u = &self.sc.u;
        gemm(
            rec,
            u.range(0, n * r),
            x.range(0, n * s.in_f),
            params.range(s.a, r * s.in_f),
            Gemm {
                m: n,
                n: r,
                k: s.in_f,
                trans_a: false,
                trans_b: true,
            },
            1.0,
            0.0,
        )?;
        gemm(
            rec,
            y.range(0, n * s.out_f),
            u.range(0, n * r),
            params.range(s.b, s.out_f * r),
            Gemm {
                m: n,
                n: s.out_f,
                k: r,
                trans_a: false,
                trans_b: true,
            },
            lora.scale,
            1.0,
        )
    }

    fn linear(
        &self,
        rec: &mut Recorder<'_>,
        l: usize,
        p: usize,
        x: &GBuf,
        y: &GBuf,
        n: usize,
    ) -> Result<()> {
        let f = &self.base.layers[l].proj[p];
        linear_forward(
            rec,
            y.range(0, n * f.weight.rows),
            x.range(0, n * f.weight.cols),
            &f.weight,
            f.bias.as_ref().map(|b| b.view()),
            n,
            false,
        )?;
        self.lora(rec, l, p, x, y, n)
    }

    /// Run `tokens` (at most CHUNK) at positions `pos..`, leaving the last row's logits in
    /// `sc.logits` when `want_logits`.
    fn forward_chunk(&mut self, tokens: &[u32], want_logits: bool) -> Result<()> {
        let n = tokens.len();
        let spec = &self.base.spec;
        let (h, qd, kvd, f) = (
            spec.hidden_size,
            spec.q_dim(),
            spec.kv_dim(),
            spec.intermediate_size,
        );
        let (nh, nkv, hd) = (
            spec.num_attention_heads,
            spec.num_key_value_heads,
            spec.head_dim,
        );
        let eps = self.base.eps;
        let pos0 = self.pos;
        let sc = &self.sc;
        self.gpu.write_u32(&sc.ids, 0, tokens);
        let mut rec = Recorder::new(&self.gpu, &self.arena);
        matmul::embedding(
            &mut rec,
            sc.x.range(0, n * h),
            sc.ids.range(0, n),
            &self.base.embed,
            n,
        )?;
        let half = hd / 2;
        let tables = self.max_len * half;
        for l in 0..spec.num_hidden_layers {
            let layer = &self.base.layers[l];
            norm::rmsnorm_forward(
                &mut rec,
                sc.xn.range(0, n * h),
                sc.rstd.range(0, n),
                sc.x.range(0, n * h),
                layer.input_norm.view(),
                n,
                h,
                eps,
            )?;
            self.linear(&mut rec, l, 0, &sc.xn, &sc.q, n)?;
            self.linear(&mut rec, l, 1, &sc.xn, &sc.k, n)?;
            self.linear(&mut rec, l, 2, &sc.xn, &sc.v, n)?;
            rope::rope_forward(
                &mut rec,
                sc.q.range(0, n * qd),
                self.cos.range(0, tables),
                self.sin.range(0, tables),
                n,
                n,
                pos0,
                nh,
                hd,
            )?;
            rope::rope_forward(
                &mut rec,
                sc.k.range(0, n * kvd),
                self.cos.range(0, tables),
                self.sin.range(0, tables),
                n,
                n,
                pos0,
                nkv,
                hd,
            )?;
            let bytes = (n * kvd * 4) as u64;
            let at = (pos0 * kvd * 4) as u64;
            rec.copy_bytes(&sc.k, 0, &self.k_cache[l], at, bytes);
            rec.copy_bytes(&sc.v, 0, &self.v_cache[l], at, bytes);
            let len = (pos0 + n) * kvd;
            attention::attention_decode(
                &mut rec,
                sc.att.range(0, n * qd),
                sc.q.range(0, n * qd),
                self.k_cache[l].range(0, len),
                self.v_cache[l].range(0, len),
                n,
                pos0,
                nh,
                nkv,
                hd,
            )?;
            self.linear(&mut rec, l, 3, &sc.att, &sc.proj, n)?;
            elementwise::axpby(
                &mut rec,
                sc.x.range(0, n * h),
                sc.proj.range(0, n * h),
                1.0,
                1.0,
                n * h,
            )?;
            norm::rmsnorm_forward(
                &mut rec,
                sc.xn.range(0, n * h),
                sc.rstd.range(0, n),
                sc.x.range(0, n * h),
                layer.post_norm.view(),
                n,
                h,
                eps,
            )?;
            self.linear(&mut rec, l, 4, &sc.xn, &sc.gate, n)?;
            self.linear(&mut rec, l, 5, &sc.xn, &sc.up, n)?;
            swiglu::swiglu_forward(
                &mut rec,
                sc.hsw.range(0, n * f),
                sc.gate.range(0, n * f),
                sc.up.range(0, n * f),
                n * f,
            )?;
            self.linear(&mut rec, l, 6, &sc.hsw, &sc.proj, n)?;
            elementwise::axpby(
                &mut rec,
                sc.x.range(0, n * h),
                sc.proj.range(0, n * h),
                1.0,
                1.0,
                n * h,
            )?;
        }
        if want_logits {
            rec.copy_bytes(&sc.x, ((n - 1) * h * 4) as u64, &sc.last, 0, (h * 4) as u64);
            norm::rmsnorm_forward(
                &mut rec,
                sc.last_n.range(0, h),
                sc.rstd.range(0, 1),
                sc.last.range(0, h),
                self.base.final_norm.view(),
                1,
                h,
                eps,
            )?;
            linear_forward(
                &mut rec,
                sc.logits.view(),
                sc.last_n.range(0, h),
                self.base.head(),
                None,
                1,
                false,
            )?;
        }
        rec.finish()?;
        self.pos += n;
        Ok(())
    }
}

impl CausalLm for GpuSession {
    fn vocab_size(&self) -> usize {
        self.base.spec.vocab_size
    }

    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::Invalid("forward of zero tokens".into()));
        }
        if self.pos + tokens.len() > self.max_len {
            return Err(Error::Invalid(format!(
                "{} positions exceed the session's {}",
                self.pos + tokens.len(),
                self.max_len
            )));
        }
        let vocab = self.base.spec.vocab_size;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let chunks: Vec<&[u32]> = tokens.chunks(CHUNK).collect();
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            self.forward_chunk(c, i == last)?;
        }
        pollster::block_on(self.gpu.read_f32(&self.sc.logits, 0, vocab))
    }

    fn reset(&mut self) {
        self.pos = 0;
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn max_positions(&self) -> usize {
        self.max_len
    }
}
