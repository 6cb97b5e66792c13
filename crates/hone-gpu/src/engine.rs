//! `GpuEngine`: LoRA training of a frozen Llama-family model with WGSL kernels. The same op
//! list as the CPU engine (`hone_cpu::train`), in the same order, so the two agree to f32
//! rounding: frozen weights stay in their stored type in GPU memory (dequantized inside the
//! matmul kernels), the LoRA matrices, gradients and AdamW moments live in four flat f32 buffers
//! (one 64-float-aligned region per matrix), and every activation the backward needs is planned
//! from (batch, seq) before the first step. A micro-batch is recorded into few command buffers
//! and reads back one number (its loss sum); an optimizer step reads back one (the gradient
//! norm, which the AdamW kernel also reads on the GPU for clipping).

use hone_core::engine::{
    proj_dims, AdamW, Engine, LoraSetup, LossSum, MicroBatch, NamedTensor, OptimizerState,
    StepStats, PROJ_PATHS,
};
use std::sync::Arc;

use hone_core::{Error, ModelSpec, Result, WeightStore};

use crate::buffer::{align_f32, GBuf};
use crate::context::Gpu;
use crate::ops::matmul::{
    gemm_prec, linear_backward_input_prec, linear_forward_prec, Gemm, GpuWeight, Precision,
};
use crate::ops::{adamw, attention, dropout, elementwise, loss, matmul, norm, rope, swiglu};
use crate::recorder::{Arena, Recorder};

/// Options of the GPU training engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuTrainOptions {
    /// Rows of logits the loss computes at once (rounded up to 64; memory: rows x vocab x 4
    /// bytes, and never more than one storage binding).
    pub loss_chunk_rows: usize,
    /// Keep one layer's activations (plus every layer's input) and recompute each layer's
    /// forward before its backward: activation memory / ~layers, one more forward per step.
    pub gradient_checkpointing: bool,
    /// Mixed precision (`--fp16`, as Hugging Face's `fp16=True`): the frozen-weight
    /// projections, their input gradients and the LoRA products multiply in f16 with f32
    /// sums; LoRA weights, gradients, AdamW moments, activations, norms, softmax and loss stay
    /// f32. The loss is scaled as torch's `GradScaler` does (from 2^16, halved and the step
    /// skipped when a gradient overflows, doubled after 2000 good steps). Needs `shader-f16`.
    pub fp16: bool,
}

impl Default for GpuTrainOptions {
    fn default() -> Self {
        GpuTrainOptions {
            loss_chunk_rows: 256,
            gradient_checkpointing: false,
            fp16: false,
        }
    }
}

/// torch.cuda.amp.GradScaler's defaults.
const LOSS_SCALE_INIT: f32 = 65536.0;
const LOSS_SCALE_GROWTH_INTERVAL: u32 = 2000;

/// Dynamic loss scaling for `--fp16` (the scale is 1 and never changes in f32).
#[derive(Debug, Clone, Copy)]
struct LossScaler {
    scale: f32,
    enabled: bool,
    good_steps: u32,
}

impl LossScaler {
    fn new(enabled: bool) -> LossScaler {
        LossScaler {
            scale: if enabled { LOSS_SCALE_INIT } else { 1.0 },
            enabled,
            good_steps: 0,
        }
    }

    /// After a step's gradients are known: whether they were finite; adjusts the scale.
    fn update(&mut self, finite: bool) {
        if !self.enabled {
            return;
        }
        if finite {
            self.good_steps += 1;
            if self.good_steps == LOSS_SCALE_GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(f32::MIN_POSITIVE);
            self.good_steps = 0;
        }
    }
}

const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

pub(crate) fn proj_has_bias(spec: &ModelSpec, p: usize) -> bool {
    match p {
        Q | K | V => spec.has_qkv_bias(),
        O => spec.has_o_bias(),
        _ => spec.mlp_bias,
    }
}

pub(crate) struct Frozen {
    pub(crate) weight: GpuWeight,
    pub(crate) bias: Option<GBuf>,
}

pub(crate) struct Layer {
    pub(crate) input_norm: GBuf,
    pub(crate) post_norm: GBuf,
    pub(crate) proj: Vec<Frozen>,
}

pub(crate) struct Base {
    pub(crate) spec: ModelSpec,
    pub(crate) embed: GpuWeight,
    /// `None` when tied to the embedding.
    pub(crate) lm_head: Option<GpuWeight>,
    pub(crate) final_norm: GBuf,
    pub(crate) layers: Vec<Layer>,
    pub(crate) inv_freq: Vec<f32>,
    pub(crate) eps: f32,
    pub(crate) bytes: u64,
}

impl Base {
    pub(crate) fn head(&self) -> &GpuWeight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// One adapted projection: element offsets of A `[rank, in]` and B `[out, rank]`.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) module: String,
    pub(crate) in_f: usize,
    pub(crate) out_f: usize,
    pub(crate) a: usize,
    pub(crate) b: usize,
}

#[derive(Debug)]
pub(crate) struct Lora {
    pub(crate) rank: usize,
    pub(crate) scale: f32,
    pub(crate) dropout: f32,
    pub(crate) slots: Vec<Slot>,
    pub(crate) slot_of: Vec<[Option<usize>; 7]>,
    pub(crate) total: usize,
}

/// Saved activations of one layer.
struct LayerActs {
    rstd1: GBuf,
    rstd2: GBuf,
    x_mid: GBuf,
    q: GBuf,
    k: GBuf,
    v: GBuf,
    att: GBuf,
    lse: GBuf,
    gate: GBuf,
    up: GBuf,
    /// `x @ A^T` per projection, `[n, rank]` each.
    u: Vec<Option<GBuf>>,
}

/// Everything planned for micro-batches of up to `tokens` tokens in sequences of up to `seq`.
struct Acts {
    batch: usize,
    seq: usize,
    tokens: usize,
    ids: GBuf,
    cos: GBuf,
    sin: GBuf,
    /// Residual stream at each layer's input and after the last.
    xs: Vec<GBuf>,
    layers: Vec<LayerActs>,
    xn: GBuf,
    proj: GBuf,
    hsw: GBuf,
    dres: GBuf,
    dxn: GBuf,
    dq: GBuf,
    dk: GBuf,
    dv: GBuf,
    datt: GBuf,
    dh: GBuf,
    dgate: GBuf,
    dup: GBuf,
    att_scratch: GBuf,
    xdrop: Option<GBuf>,
    dxdrop: Option<GBuf>,
    du: GBuf,
    // Loss.
    chunk: usize,
    tgt_rows: GBuf,
    tgt_ids: GBuf,
    xg: GBuf,
    xnl: GBuf,
    rstdl: GBuf,
    logits: GBuf,
    dxnl: GBuf,
    dxg: GBuf,
    nll: GBuf,
    loss_out: GBuf,
    sum_scratch: GBuf,
    bytes: u64,
}

/// The LoRA training engine on a GPU through wgpu.
pub struct GpuEngine {
    gpu: Arc<Gpu>,
    arena: Arena,
    base: Base,
    lora: Lora,
    opts: GpuTrainOptions,
    adamw: AdamW,
    params: GBuf,
    grads: GBuf,
    exp_avg: GBuf,
    exp_avg_sq: GBuf,
    norm_out: GBuf,
    norm_scratch: GBuf,
    step: u64,
    dropout_seed: u64,
    micro_batch: u64,
    acts: Option<Acts>,
    scaler: LossScaler,
    /// Optimizer steps skipped because an f16 gradient overflowed.
    skipped_steps: u64,
    /// Test seam: report a lost device after this many more micro-batches.
    lose_device_after: Option<u64>,
}

impl std::fmt::Debug for GpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuEngine")
            .field("gpu", &self.gpu.describe())
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Train { grad_scale: f32 },
    Eval,
}

impl GpuEngine {
    /// An engine over `weights` (checked against `spec`) on `gpu`, training `lora` with `adamw`.
    /// The LoRA matrices start at zero (set their initial values with `set_params`).
    pub fn new(
        gpu: Arc<Gpu>,
        spec: &ModelSpec,
        weights: &WeightStore,
        lora: LoraSetup,
        adamw: AdamW,
        opts: GpuTrainOptions,
    ) -> Result<GpuEngine> {
        hone_core::engine::check_trainable_spec(spec, &weights.source)?;
        weights.check_against(spec)?;
        if !lora.modules_to_save.is_empty() {
            return Err(Error::Invalid(
                "modules_to_save is not supported by the GPU engine yet: use --device cpu".into(),
            ));
        }
        if opts.loss_chunk_rows == 0 {
            return Err(Error::Invalid("loss_chunk_rows must be > 0".into()));
        }
        if opts.fp16 && !gpu.has_f16() {
            return Err(Error::Invalid(format!(
                "--fp16 needs the shader-f16 feature, which the GPU adapter {} does not have \
                 (or was not opened with): drop --fp16 to train in float32",
                gpu.describe()
            )));
        }
        let layout = lora_layout(spec, &lora)?;
        let base = load_base(&gpu, spec, weights)?;
        let total = layout.total.max(1);
        let zeros = |name: &str| {
            gpu.zeros(name, total).map_err(|e| {
                Error::Gpu(format!(
                    "the LoRA {name} ({} values) do not fit one buffer: {e}",
                    layout.total
                ))
            })
        };
        let params = zeros("parameters")?;
        let grads = zeros("gradients")?;
        let exp_avg = zeros("exp_avg")?;
        let exp_avg_sq = zeros("exp_avg_sq")?;
        let norm_out = gpu.zeros("grad norm", 64)?;
        let norm_scratch = gpu.zeros("grad norm scratch", total.div_ceil(256) + 64)?;
        let arena = Arena::new(&gpu);
        Ok(GpuEngine {
            gpu,
            arena,
            base,
            lora: layout,
            opts,
            adamw,
            params,
            grads,
            exp_avg,
            exp_avg_sq,
            norm_out,
            norm_scratch,
            step: 0,
            dropout_seed: 0,
            micro_batch: 0,
            acts: None,
            scaler: LossScaler::new(opts.fp16),
            skipped_steps: 0,
            lose_device_after: None,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.base.spec
    }

    /// Number of trainable values.
    pub fn num_trainable(&self) -> usize {
        self.lora.total
    }

    /// Whether the products run in mixed precision (`--fp16`).
    pub fn fp16(&self) -> bool {
        self.opts.fp16
    }

    /// The current loss scale (1 in f32).
    pub fn loss_scale(&self) -> f32 {
        self.scaler.scale
    }

    /// Optimizer steps skipped so far because an f16 gradient overflowed.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// Test seam: start the `--fp16` loss scale at `scale` instead of 2^16.
    #[doc(hidden)]
    pub fn set_loss_scale(&mut self, scale: f32) {
        if self.scaler.enabled {
            self.scaler.scale = scale;
        }
    }

    /// Bytes of GPU memory held: frozen weights, trainable state, planned activations.
    pub fn planned_bytes(&self) -> PlannedMemory {
        PlannedMemory {
            weights: self.base.bytes,
            trainable: 4 * 4 * self.lora.total as u64,
            activations: self.acts.as_ref().map_or(0, |a| a.bytes),
        }
    }

    /// Plan (allocate) activations for micro-batches of up to `batch` x `seq` now, so that a
    /// batch that does not fit fails before training starts, and no step allocates.
    pub fn plan(&mut self, batch: usize, seq: usize) -> Result<()> {
        if let Some(a) = &self.acts {
            if batch * seq <= a.tokens && seq <= a.seq && batch <= a.batch {
                return Ok(());
            }
        }
        let (batch, seq) = match &self.acts {
            Some(a) => (batch.max(a.batch), seq.max(a.seq)),
            None => (batch, seq),
        };
        self.acts = None;
        let acts =
            plan_acts(&self.gpu, &self.base, &self.lora, &self.opts, batch, seq).map_err(|e| {
                Error::Gpu(format!(
                    "planning micro-batches of {batch} x {seq} tokens on {}: {e}; lower \
                     per_device_train_batch_size or max_seq_len",
                    self.gpu.describe()
                ))
            })?;
        self.acts = Some(acts);
        Ok(())
    }

    /// Test seam: the device is reported lost after `n` more micro-batches.
    #[doc(hidden)]
    pub fn lose_device_after(&mut self, n: u64) {
        self.lose_device_after = Some(n);
    }

    fn check_batch(&self, mb: &MicroBatch<'_>) -> Result<Vec<(usize, u32)>> {
        hone_core::engine::check_micro_batch(&self.base.spec, mb)
    }

    async fn run(&mut self, mb: &MicroBatch<'_>, mode: Mode) -> Result<LossSum> {
        let targets = self.check_batch(mb)?;
        if let Some(n) = self.lose_device_after.as_mut() {
            if *n == 0 {
                self.gpu.simulate_device_lost();
            } else {
                *n -= 1;
            }
        }
        self.gpu.check()?;
        self.plan(mb.batch, mb.seq)?;
        let train = matches!(mode, Mode::Train { .. });
        let drop_seed = if train && self.lora.dropout > 0.0 {
            let seed = mix_seed(self.dropout_seed, self.micro_batch);
            self.micro_batch += 1;
            Some(seed)
        } else {
            None
        };
        let acts = self.acts.as_ref().expect("planned");
        let gpu = &self.gpu;
        let (n, seq) = (mb.batch * mb.seq, mb.seq);
        // Inputs of this micro-batch: ids, rope tables for 0..seq, target rows and ids.
        gpu.write_u32(&acts.ids, 0, mb.ids);
        let (cos, sin) = rope_tables(&self.base.inv_freq, seq);
        gpu.write_f32(&acts.cos, 0, &cos);
        gpu.write_f32(&acts.sin, 0, &sin);
        let rows: Vec<u32> = targets.iter().map(|t| t.0 as u32).collect();
        let ids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        gpu.write_u32(&acts.tgt_rows, 0, &rows);
        gpu.write_u32(&acts.tgt_ids, 0, &ids);

        let st = Step {
            base: &self.base,
            lora: &self.lora,
            params: &self.params,
            grads: &self.grads,
            a: acts,
            keep_all: !self.opts.gradient_checkpointing,
            n,
            batch: mb.batch,
            seq,
            drop_seed,
            prec: if self.opts.fp16 {
                Precision::F16
            } else {
                Precision::F32
            },
            loss_scale: self.scaler.scale,
        };
        let mut rec = Recorder::new(gpu, &self.arena);
        matmul::embedding(
            &mut rec,
            acts.xs[0].view(),
            acts.ids.view(),
            &self.base.embed,
            n,
        )?;
        let n_layers = self.base.layers.len();
        for l in 0..n_layers {
            st.layer_forward(&mut rec, l)?;
            rec.submit();
        }
        st.loss(&mut rec, &targets, mode)?;
        if let Mode::Train { .. } = mode {
            for l in (0..n_layers).rev() {
                if !st.keep_all && l + 1 != n_layers {
                    // Gradient checkpointing: recompute the layer's activations (the last
                    // layer's are still there from the forward).
                    st.layer_forward(&mut rec, l)?;
                }
                st.layer_backward(&mut rec, l)?;
                rec.submit();
            }
        }
        elementwise_sum(&mut rec, acts, targets.len())?;
        rec.finish()?;
        let nll_sum = if targets.is_empty() {
            0.0
        } else {
            gpu.read_f32(&acts.loss_out, 0, 1).await?[0] as f64
        };
        Ok(LossSum {
            nll_sum,
            tokens: targets.len(),
        })
    }

    /// The named tensors of a buffer laid out like the parameters.
    fn named(&self, buf: &[f32]) -> Vec<NamedTensor> {
        let r = self.lora.rank;
        let mut out = Vec::with_capacity(2 * self.lora.slots.len());
        for s in &self.lora.slots {
            out.push(NamedTensor {
                name: format!("{}.lora_A", s.module),
                shape: vec![r, s.in_f],
                data: buf[s.a..s.a + r * s.in_f].to_vec(),
            });
            out.push(NamedTensor {
                name: format!("{}.lora_B", s.module),
                shape: vec![s.out_f, r],
                data: buf[s.b..s.b + s.out_f * r].to_vec(),
            });
        }
        out
    }

    fn unpack(&self, what: &str, src: &[NamedTensor]) -> Result<Vec<f32>> {
        pack_params(&self.lora, what, src)
    }

    async fn read(&self, b: &GBuf) -> Result<Vec<f32>> {
        self.gpu.read_f32(b, 0, self.lora.total).await
    }
}

/// GPU memory held by the engine, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedMemory {
    pub weights: u64,
    pub trainable: u64,
    pub activations: u64,
}

impl PlannedMemory {
    pub fn total(&self) -> u64 {
        self.weights + self.trainable + self.activations
    }
}

impl std::fmt::Display for PlannedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / 1048576.0;
        write!(
            f,
            "{:.1} MiB (frozen weights {:.1}, LoRA + AdamW {:.1}, activations {:.1})",
            mib(self.total()),
            mib(self.weights),
            mib(self.trainable),
            mib(self.activations)
        )
    }
}

fn elementwise_sum(rec: &mut Recorder<'_>, a: &Acts, n_targets: usize) -> Result<()> {
    if n_targets == 0 {
        return Ok(());
    }
    loss::sum(
        rec,
        a.loss_out.view(),
        a.nll.range(0, n_targets),
        n_targets,
        a.sum_scratch.view(),
    )
}

/// One micro-batch's borrowed state while its dispatches are recorded.
struct Step<'e> {
    base: &'e Base,
    lora: &'e Lora,
    params: &'e GBuf,
    grads: &'e GBuf,
    a: &'e Acts,
    keep_all: bool,
    n: usize,
    batch: usize,
    seq: usize,
    drop_seed: Option<u64>,
    prec: Precision,
    /// Multiplies the loss's gradient (the loss scaler's scale; 1 in f32).
    loss_scale: f32,
}

impl Step<'_> {
    /// The saved activations of layer `l` (one shared set with gradient checkpointing).
    fn la(&self, l: usize) -> &LayerActs {
        &self.a.layers[if self.keep_all { l } else { 0 }]
    }

    fn att_shape(&self) -> attention::AttnShape {
        let s = &self.base.spec;
        attention::AttnShape {
            batch: self.batch,
            seq: self.seq,
            n_heads: s.num_attention_heads,
            n_kv_heads: s.num_key_value_heads,
            head_dim: s.head_dim,
        }
    }

    fn linear(&self, rec: &mut Recorder<'_>, l: usize, p: usize, y: &GBuf, x: &GBuf) -> Result<()> {
        let f = &self.base.layers[l].proj[p];
        let out_f = f.weight.rows;
        let in_f = f.weight.cols;
        linear_forward_prec(
            rec,
            y.range(0, self.n * out_f),
            x.range(0, self.n * in_f),
            &f.weight,
            f.bias.as_ref().map(|b| b.view()),
            self.n,
            false,
            self.prec,
        )
    }

    /// The LoRA input of projection `p` of layer `l`: `x`, or `x` through this micro-batch's
    /// dropout mask (regenerated, never stored).
    fn lora_input<'x>(
        &'x self,
        rec: &mut Recorder<'_>,
        l: usize,
        p: usize,
        x: &'x GBuf,
        in_f: usize,
    ) -> Result<&'x GBuf> {
        match (self.drop_seed, &self.a.xdrop) {
            (Some(seed), Some(xd)) => {
                let n = self.n * in_f;
                dropout::dropout_forward(
                    rec,
                    xd.range(0, n),
                    x.range(0, n),
                    n,
                    seed,
                    (l * 7 + p) as u64,
                    self.lora.dropout,
                )?;
                Ok(xd)
            }
            _ => Ok(x),
        }
    }

    /// `y += scale * (drop(x) A^T) B^T`, saving `u = drop(x) A^T`.
    fn lora_forward(
        &self,
        rec: &mut Recorder<'_>,
        l: usize,
        p: usize,
        x: &GBuf,
        y: &GBuf,
    ) -> Result<()> {
        let Some(si) = self.lora.slot_of[l][p] else {
            return Ok(());
        };
        let s = &self.lora.slots[si];
        let (n, r) = (self.n, self.lora.rank);
        let u = self.la(l).u[p].as_ref().expect("planned");
        let xin = self.lora_input(rec, l, p, x, s.in_f)?;
        gemm_prec(
            rec,
            u.range(0, n * r),
            xin.range(0, n * s.in_f),
            self.params.range(s.a, r * s.in_f),
            Gemm {
                m: n,
                n: r,
                k: s.in_f,
                trans_a: false,
                trans_b: true,
            },
            1.0,
            0.0,
            self.prec,
        )?;
        gemm_prec(
            rec,
            y.range(0, n * s.out_f),
            u.range(0, n * r),
            self.params.range(s.b, s.out_f * r),
            Gemm {
                m: n,
                n: s.out_f,
                k: r,
                trans_a: false,
                trans_b: true,
            },
            self.lora.scale,
            1.0,
            self.prec,
        )
    }

    /// Backward of `lora_forward` for `dy`: dA, dB into the gradients, `dx +=` the input's.
    fn lora_backward(
        &self,
        rec: &mut Recorder<'_>,
        l: usize,
        p: usize,
        x: &GBuf,
        dy: &GBuf,
        dx: &GBuf,
    ) -> Result<()> {
        let Some(si) = self.lora.slot_of[l][p] else {
            return Ok(());
        };
        let s = &self.lora.slots[si];
        let (n, r, scale) = (self.n, self.lora.rank, self.lora.scale);
        let u = self.la(l).u[p].as_ref().expect("planned");
        let du = &self.a.du;
        // dB[out, r] += scale dy^T u
        gemm_prec(
            rec,
            self.grads.range(s.b, s.out_f * r),
            dy.range(0, n * s.out_f),
            u.range(0, n * r),
            Gemm {
                m: s.out_f,
                n: r,
                k: n,
                trans_a: true,
                trans_b: false,
            },
            scale,
            1.0,
            self.prec,
        )?;
        // du[n, r] = scale dy B
        gemm_prec(
            rec,
            du.range(0, n * r),
            dy.range(0, n * s.out_f),
            self.params.range(s.b, s.out_f * r),
            Gemm {
                m: n,
                n: r,
                k: s.out_f,
                trans_a: false,
                trans_b: false,
            },
            scale,
            0.0,
            self.prec,
        )?;
        let xin = self.lora_input(rec, l, p, x, s.in_f)?;
        // dA[r, in] += du^T drop(x)
        gemm_prec(
            rec,
            self.grads.range(s.a, r * s.in_f),
            du.range(0, n * r),
            xin.range(0, n * s.in_f),
            Gemm {
                m: r,
                n: s.in_f,
                k: n,
                trans_a: true,
                trans_b: false,
            },
            1.0,
            1.0,
            self.prec,
        )?;
        // dx += mask * (du A)
        let a = self.params.range(s.a, r * s.in_f);
        let shape = Gemm {
            m: n,
            n: s.in_f,
            k: r,
            trans_a: false,
            trans_b: false,
        };
        match (self.drop_seed, &self.a.dxdrop) {
            (Some(seed), Some(dxd)) => {
                let len = n * s.in_f;
                gemm_prec(
                    rec,
                    dxd.range(0, len),
                    du.range(0, n * r),
                    a,
                    shape,
                    1.0,
                    0.0,
                    self.prec,
                )?;
                dropout::dropout_backward(
                    rec,
                    dx.range(0, len),
                    dxd.range(0, len),
                    len,
                    seed,
                    (l * 7 + p) as u64,
                    self.lora.dropout,
                    true,
                )
            }
            _ => gemm_prec(
                rec,
                dx.range(0, n * s.in_f),
                du.range(0, n * r),
                a,
                shape,
                1.0,
                1.0,
                self.prec,
            ),
        }
    }

    fn layer_forward(&self, rec: &mut Recorder<'_>, l: usize) -> Result<()> {
        let (a, la, layer) = (self.a, self.la(l), &self.base.layers[l]);
        let s = &self.base.spec;
        let (n, h, eps) = (self.n, s.hidden_size, self.base.eps);
        let (nh, nkv, hd) = (s.num_attention_heads, s.num_key_value_heads, s.head_dim);
        let x_in = &a.xs[l];
        let x_out = &a.xs[l + 1];
        let nrm = |rec: &mut Recorder<'_>, out: &GBuf, rstd: &GBuf, inp: &GBuf, w: &GBuf| {
            norm::rmsnorm_forward(
                rec,
                out.range(0, n * h),
                rstd.range(0, n),
                inp.range(0, n * h),
                w.view(),
                n,
                h,
                eps,
            )
        };
        nrm(rec, &a.xn, &la.rstd1, x_in, &layer.input_norm)?;
        for (p, y) in [(Q, &la.q), (K, &la.k), (V, &la.v)] {
            self.linear(rec, l, p, y, &a.xn)?;
        }
        for (p, y) in [(Q, &la.q), (K, &la.k), (V, &la.v)] {
            self.lora_forward(rec, l, p, &a.xn, y)?;
        }
        let (qd, kvd) = (s.q_dim(), s.kv_dim());
        let cs = self.seq * (hd / 2);
        rope::rope_forward(
            rec,
            la.q.range(0, n * qd),
            a.cos.range(0, cs),
            a.sin.range(0, cs),
            n,
            self.seq,
            0,
            nh,
            hd,
        )?;
        rope::rope_forward(
            rec,
            la.k.range(0, n * kvd),
            a.cos.range(0, cs),
            a.sin.range(0, cs),
            n,
            self.seq,
            0,
            nkv,
            hd,
        )?;
        attention::attention_forward(
            rec,
            la.att.range(0, n * qd),
            la.lse.range(0, n * nh),
            la.q.range(0, n * qd),
            la.k.range(0, n * kvd),
            la.v.range(0, n * kvd),
            self.att_shape(),
        )?;
        self.linear(rec, l, O, &a.proj, &la.att)?;
        self.lora_forward(rec, l, O, &la.att, &a.proj)?;
        rec.copy(x_in.range(0, n * h), la.x_mid.range(0, n * h));
        elementwise::axpby(
            rec,
            la.x_mid.range(0, n * h),
            a.proj.range(0, n * h),
            1.0,
            1.0,
            n * h,
        )?;

        nrm(rec, &a.xn, &la.rstd2, &la.x_mid, &layer.post_norm)?;
        self.linear(rec, l, GATE, &la.gate, &a.xn)?;
        self.linear(rec, l, UP, &la.up, &a.xn)?;
        self.lora_forward(rec, l, GATE, &a.xn, &la.gate)?;
        self.lora_forward(rec, l, UP, &a.xn, &la.up)?;
        let f = s.intermediate_size;
        swiglu::swiglu_forward(
            rec,
            a.hsw.range(0, n * f),
            la.gate.range(0, n * f),
            la.up.range(0, n * f),
            n * f,
        )?;
        self.linear(rec, l, DOWN, &a.proj, &a.hsw)?;
        self.lora_forward(rec, l, DOWN, &a.hsw, &a.proj)?;
        rec.copy(la.x_mid.range(0, n * h), x_out.range(0, n * h));
        elementwise::axpby(
            rec,
            x_out.range(0, n * h),
            a.proj.range(0, n * h),
            1.0,
            1.0,
            n * h,
        )
    }

    /// `a.dres` holds dL/dx_out on entry and dL/dx_in on return.
    fn layer_backward(&self, rec: &mut Recorder<'_>, l: usize) -> Result<()> {
        let (a, la, layer) = (self.a, self.la(l), &self.base.layers[l]);
        let s = &self.base.spec;
        let (n, h, eps, f) = (self.n, s.hidden_size, self.base.eps, s.intermediate_size);
        let (nh, nkv, hd, qd, kvd) = (
            s.num_attention_heads,
            s.num_key_value_heads,
            s.head_dim,
            s.q_dim(),
            s.kv_dim(),
        );
        let w = |p: usize| &layer.proj[p].weight;
        let x_in = &a.xs[l];
        // MLP block.
        swiglu::swiglu_forward(
            rec,
            a.hsw.range(0, n * f),
            la.gate.range(0, n * f),
            la.up.range(0, n * f),
            n * f,
        )?;
        linear_backward_input_prec(
            rec,
            a.dh.range(0, n * f),
            a.dres.range(0, n * h),
            w(DOWN),
            n,
            false,
            self.prec,
        )?;
        self.lora_backward(rec, l, DOWN, &a.hsw, &a.dres, &a.dh)?;
        swiglu::swiglu_backward(
            rec,
            a.dgate.range(0, n * f),
            a.dup.range(0, n * f),
            a.dh.range(0, n * f),
            la.gate.range(0, n * f),
            la.up.range(0, n * f),
            n * f,
        )?;
        norm::rmsnorm_forward(
            rec,
            a.xn.range(0, n * h),
            la.rstd2.range(0, n),
            la.x_mid.range(0, n * h),
            layer.post_norm.view(),
            n,
            h,
            eps,
        )?;
        linear_backward_input_prec(
            rec,
            a.dxn.range(0, n * h),
            a.dgate.range(0, n * f),
            w(GATE),
            n,
            false,
            self.prec,
        )?;
        linear_backward_input_prec(
            rec,
            a.dxn.range(0, n * h),
            a.dup.range(0, n * f),
            w(UP),
            n,
            true,
            self.prec,
        )?;
        self.lora_backward(rec, l, GATE, &a.xn, &a.dgate, &a.dxn)?;
        self.lora_backward(rec, l, UP, &a.xn, &a.dup, &a.dxn)?;
        norm::rmsnorm_backward(
            rec,
            a.dres.range(0, n * h),
            a.dxn.range(0, n * h),
            la.x_mid.range(0, n * h),
            la.rstd2.range(0, n),
            layer.post_norm.view(),
            n,
            h,
            true,
        )?;
        // Attention block.
        linear_backward_input_prec(
            rec,
            a.datt.range(0, n * qd),
            a.dres.range(0, n * h),
            w(O),
            n,
            false,
            self.prec,
        )?;
        self.lora_backward(rec, l, O, &la.att, &a.dres, &a.datt)?;
        attention::attention_backward(
            rec,
            a.dq.range(0, n * qd),
            a.dk.range(0, n * kvd),
            a.dv.range(0, n * kvd),
            a.datt.range(0, n * qd),
            la.q.range(0, n * qd),
            la.k.range(0, n * kvd),
            la.v.range(0, n * kvd),
            la.att.range(0, n * qd),
            la.lse.range(0, n * nh),
            a.att_scratch.range(0, n * nh),
            self.att_shape(),
        )?;
        let cs = self.seq * (hd / 2);
        rope::rope_backward(
            rec,
            a.dq.range(0, n * qd),
            a.cos.range(0, cs),
            a.sin.range(0, cs),
            n,
            self.seq,
            nh,
            hd,
        )?;
        rope::rope_backward(
            rec,
            a.dk.range(0, n * kvd),
            a.cos.range(0, cs),
            a.sin.range(0, cs),
            n,
            self.seq,
            nkv,
            hd,
        )?;
        norm::rmsnorm_forward(
            rec,
            a.xn.range(0, n * h),
            la.rstd1.range(0, n),
            x_in.range(0, n * h),
            layer.input_norm.view(),
            n,
            h,
            eps,
        )?;
        linear_backward_input_prec(
            rec,
            a.dxn.range(0, n * h),
            a.dq.range(0, n * qd),
            w(Q),
            n,
            false,
            self.prec,
        )?;
        linear_backward_input_prec(
            rec,
            a.dxn.range(0, n * h),
            a.dk.range(0, n * kvd),
            w(K),
            n,
            true,
            self.prec,
        )?;
        linear_backward_input_prec(
            rec,
            a.dxn.range(0, n * h),
            a.dv.range(0, n * kvd),
            w(V),
            n,
            true,
            self.prec,
        )?;
        self.lora_backward(rec, l, Q, &a.xn, &a.dq, &a.dxn)?;
        self.lora_backward(rec, l, K, &a.xn, &a.dk, &a.dxn)?;
        self.lora_backward(rec, l, V, &a.xn, &a.dv, &a.dxn)?;
        norm::rmsnorm_backward(
            rec,
            a.dres.range(0, n * h),
            a.dxn.range(0, n * h),
            x_in.range(0, n * h),
            la.rstd1.range(0, n),
            layer.input_norm.view(),
            n,
            h,
            true,
        )
    }

    /// The fused chunked loss over the target rows; in training, `a.dres` becomes dL/dx_final.
    fn loss(&self, rec: &mut Recorder<'_>, targets: &[(usize, u32)], mode: Mode) -> Result<()> {
        let a = self.a;
        let s = &self.base.spec;
        let (n, h, vocab) = (self.n, s.hidden_size, s.vocab_size);
        let x_final = &a.xs[self.base.layers.len()];
        let head = self.base.head();
        if let Mode::Train { .. } = mode {
            rec.clear(a.dres.range(0, n * h));
        }
        for c0 in (0..targets.len()).step_by(a.chunk) {
            let r = a.chunk.min(targets.len() - c0);
            loss::gather_rows(
                rec,
                a.xg.range(0, r * h),
                x_final.range(0, n * h),
                a.tgt_rows.range(c0, r),
                r,
                h,
            )?;
            norm::rmsnorm_forward(
                rec,
                a.xnl.range(0, r * h),
                a.rstdl.range(0, r),
                a.xg.range(0, r * h),
                self.base.final_norm.view(),
                r,
                h,
                self.base.eps,
            )?;
            linear_forward_prec(
                rec,
                a.logits.range(0, r * vocab),
                a.xnl.range(0, r * h),
                head,
                None,
                r,
                false,
                self.prec,
            )?;
            let scale = match mode {
                Mode::Train { grad_scale } => Some(grad_scale * self.loss_scale),
                Mode::Eval => None,
            };
            loss::cross_entropy_rows(
                rec,
                a.logits.range(0, r * vocab),
                a.nll.range(c0, r),
                a.tgt_ids.range(c0, r),
                r,
                vocab,
                scale,
            )?;
            if scale.is_some() {
                linear_backward_input_prec(
                    rec,
                    a.dxnl.range(0, r * h),
                    a.logits.range(0, r * vocab),
                    head,
                    r,
                    false,
                    self.prec,
                )?;
                norm::rmsnorm_backward(
                    rec,
                    a.dxg.range(0, r * h),
                    a.dxnl.range(0, r * h),
                    a.xg.range(0, r * h),
                    a.rstdl.range(0, r),
                    self.base.final_norm.view(),
                    r,
                    h,
                    false,
                )?;
                loss::scatter_rows(
                    rec,
                    a.dres.range(0, n * h),
                    a.dxg.range(0, r * h),
                    a.tgt_rows.range(c0, r),
                    r,
                    h,
                )?;
            }
            rec.submit();
        }
        Ok(())
    }
}

impl Engine for GpuEngine {
    fn describe(&self) -> String {
        format!("gpu: {}", self.gpu.describe())
    }

    async fn forward_backward(
        &mut self,
        batch: &MicroBatch<'_>,
        grad_scale: f32,
    ) -> Result<LossSum> {
        if !grad_scale.is_finite() {
            return Err(Error::Invalid(format!(
                "grad_scale {grad_scale} is not finite"
            )));
        }
        self.run(batch, Mode::Train { grad_scale }).await
    }

    async fn optimizer_step(&mut self, lr: f32, max_grad_norm: Option<f32>) -> Result<StepStats> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Invalid(format!(
                "learning rate {lr} must be finite and >= 0"
            )));
        }
        if let Some(max) = max_grad_norm {
            if max.is_nan() || max <= 0.0 {
                return Err(Error::Invalid(format!("max_grad_norm {max} must be > 0")));
            }
        }
        let total = self.lora.total;
        let mut rec = Recorder::new(&self.gpu, &self.arena);
        adamw::grad_norm(
            &mut rec,
            self.norm_out.range(0, 1),
            self.grads.range(0, total),
            total,
            self.norm_scratch.view(),
        )?;
        rec.finish()?;
        // The gradients (and their norm) are multiplied by the loss scale.
        let scale = self.scaler.scale;
        let norm = self.gpu.read_f32(&self.norm_out, 0, 1).await?[0] / scale;
        let mut rec = Recorder::new(&self.gpu, &self.arena);
        if !norm.is_finite() {
            rec.clear(self.grads.view());
            rec.finish()?;
            if self.scaler.enabled {
                // As GradScaler: an f16 overflow skips the step and halves the scale.
                self.scaler.update(false);
                self.skipped_steps += 1;
                return Ok(StepStats { grad_norm: norm });
            }
            return Err(Error::Invalid(format!(
                "gradient norm is {norm}: the step was skipped and the gradients dropped"
            )));
        }
        self.scaler.update(true);
        self.step += 1;
        adamw::adamw_step(
            &mut rec,
            self.params.range(0, total),
            self.grads.range(0, total),
            self.exp_avg.range(0, total),
            self.exp_avg_sq.range(0, total),
            total,
            self.step,
            lr,
            &self.adamw,
            max_grad_norm.map(|m| (m, self.norm_out.range(0, 1))),
            1.0 / scale,
        )?;
        rec.finish()?;
        Ok(StepStats { grad_norm: norm })
    }

    async fn eval_loss(&mut self, batch: &MicroBatch<'_>) -> Result<LossSum> {
        self.run(batch, Mode::Eval).await
    }

    async fn params(&self) -> Result<Vec<NamedTensor>> {
        Ok(self.named(&self.read(&self.params).await?))
    }

    async fn set_params(&mut self, params: &[NamedTensor]) -> Result<()> {
        let v = self.unpack("set_params", params)?;
        self.gpu.write_f32(&self.params, 0, &v);
        self.gpu.check()
    }

    async fn grads(&self) -> Result<Vec<NamedTensor>> {
        let mut g = self.read(&self.grads).await?;
        if self.scaler.scale != 1.0 {
            let inv = 1.0 / self.scaler.scale;
            g.iter_mut().for_each(|v| *v *= inv);
        }
        Ok(self.named(&g))
    }

    async fn optimizer_state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            step: self.step,
            exp_avg: self.named(&self.read(&self.exp_avg).await?),
            exp_avg_sq: self.named(&self.read(&self.exp_avg_sq).await?),
        })
    }

    async fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        let m = self.unpack("optimizer state exp_avg", &state.exp_avg)?;
        let v = self.unpack("optimizer state exp_avg_sq", &state.exp_avg_sq)?;
        self.gpu.write_f32(&self.exp_avg, 0, &m);
        self.gpu.write_f32(&self.exp_avg_sq, 0, &v);
        self.step = state.step;
        self.gpu.check()
    }

    fn set_dropout_seed(&mut self, seed: u64) {
        self.dropout_seed = seed;
        self.micro_batch = 0;
    }
}

/// The seed of micro-batch `index` after `set_dropout_seed(seed)` (as the CPU engine).
fn mix_seed(seed: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_add(0x632b_e59b_d9b4_e019)
}

pub(crate) fn load_base(gpu: &Gpu, spec: &ModelSpec, weights: &WeightStore) -> Result<Base> {
    let mut bytes = 0u64;
    let mut weight = |name: &str| -> Result<GpuWeight> {
        let w = GpuWeight::upload(gpu, weights.get(name)?)?;
        bytes += w.bytes();
        Ok(w)
    };
    let embed = weight("model.embed_tokens.weight")?;
    let lm_head = if spec.tie_word_embeddings {
        None
    } else {
        Some(weight("lm_head.weight")?)
    };
    let mut layers = Vec::with_capacity(spec.num_hidden_layers);
    let mut vec_bytes = 0u64;
    let mut vector = |name: &str| -> Result<GBuf> {
        let b = gpu.upload_f32(name, &weights.get(name)?.to_f32())?;
        vec_bytes += b.bytes();
        Ok(b)
    };
    let final_norm = vector("model.norm.weight")?;
    for l in 0..spec.num_hidden_layers {
        let prefix = format!("model.layers.{l}");
        let mut proj = Vec::with_capacity(7);
        for (p, path) in PROJ_PATHS.iter().enumerate() {
            let name = format!("{prefix}.{path}");
            proj.push(Frozen {
                weight: weight(&format!("{name}.weight"))?,
                bias: if proj_has_bias(spec, p) {
                    Some(vector(&format!("{name}.bias"))?)
                } else {
                    None
                },
            });
        }
        layers.push(Layer {
            input_norm: vector(&format!("{prefix}.input_layernorm.weight"))?,
            post_norm: vector(&format!("{prefix}.post_attention_layernorm.weight"))?,
            proj,
        });
    }
    gpu.sync()?;
    Ok(Base {
        spec: spec.clone(),
        embed,
        lm_head,
        final_norm,
        layers,
        inv_freq: spec.rope_inv_freq(),
        eps: spec.rms_norm_eps as f32,
        bytes: bytes + vec_bytes,
    })
}

pub(crate) fn lora_layout(spec: &ModelSpec, lora: &LoraSetup) -> Result<Lora> {
    let targets = hone_core::engine::parse_lora_targets(spec, lora)?;
    let r = lora.rank;
    let mut slot_of = vec![[None; 7]; spec.num_hidden_layers];
    let mut slots = Vec::with_capacity(targets.len());
    let mut offset = 0;
    for (t, (l, p)) in lora.targets.iter().zip(targets) {
        let (in_f, out_f) = proj_dims(spec, p);
        slot_of[l][p] = Some(slots.len());
        let a = offset;
        let b = a + align_f32(r * in_f);
        offset = b + align_f32(r * out_f);
        slots.push(Slot {
            module: t.module.clone(),
            in_f,
            out_f,
            a,
            b,
        });
    }
    Ok(Lora {
        rank: r,
        scale: lora.scale,
        dropout: lora.dropout,
        slots,
        slot_of,
        total: offset,
    })
}

fn plan_acts(
    gpu: &Gpu,
    base: &Base,
    lora: &Lora,
    opts: &GpuTrainOptions,
    batch: usize,
    seq: usize,
) -> Result<Acts> {
    let s = &base.spec;
    let (h, qd, kvd, f, nh) = (
        s.hidden_size,
        s.q_dim(),
        s.kv_dim(),
        s.intermediate_size,
        s.num_attention_heads,
    );
    let r = lora.rank;
    // The widest per-token buffer, checked in u64 before any usize product below (usize is
    // 32 bits in the browser: a product there would wrap, not fail).
    let widest = [h, qd, kvd, f, nh, r, s.head_dim]
        .into_iter()
        .max()
        .unwrap_or(1) as u64;
    let wide_bytes = (batch as u64)
        .saturating_mul(seq as u64)
        .saturating_mul(widest)
        .saturating_mul(4);
    if wide_bytes > gpu.max_binding() {
        return Err(Error::Gpu(format!(
            "{batch} x {seq} tokens of {widest} values need a {:.1} MiB buffer, beyond this \
             adapter's largest storage binding ({:.1} MiB)",
            wide_bytes as f64 / 1048576.0,
            gpu.max_binding() as f64 / 1048576.0
        )));
    }
    let n = batch * seq;
    let mut bytes = 0u64;
    let mut z = |name: &str, len: usize| -> Result<GBuf> {
        let b = gpu.zeros(name, len.max(1))?;
        bytes += b.bytes();
        Ok(b)
    };
    let ids = z("ids", n)?;
    let half = s.head_dim / 2;
    let cos = z("rope cos", seq * half)?;
    let sin = z("rope sin", seq * half)?;
    let mut xs = Vec::with_capacity(s.num_hidden_layers + 1);
    for l in 0..=s.num_hidden_layers {
        xs.push(z(&format!("residual {l}"), n * h)?);
    }
    let keep = if opts.gradient_checkpointing {
        1
    } else {
        s.num_hidden_layers
    };
    let mut layers = Vec::with_capacity(keep);
    for l in 0..keep {
        let mut u = Vec::with_capacity(7);
        for p in 0..7 {
            // One shared set (checkpointing) holds every projection some layer adapts.
            let adapted = if keep == 1 {
                lora.slot_of.iter().any(|s| s[p].is_some())
            } else {
                lora.slot_of[l][p].is_some()
            };
            u.push(if adapted {
                Some(z("lora u", n * r)?)
            } else {
                None
            });
        }
        layers.push(LayerActs {
            rstd1: z("rstd1", n)?,
            rstd2: z("rstd2", n)?,
            x_mid: z("x_mid", n * h)?,
            q: z("q", n * qd)?,
            k: z("k", n * kvd)?,
            v: z("v", n * kvd)?,
            att: z("attention", n * qd)?,
            lse: z("lse", n * nh)?,
            gate: z("gate", n * f)?,
            up: z("up", n * f)?,
            u,
        });
    }
    let max_in = h.max(qd).max(f);
    let with_dropout = lora.dropout > 0.0;
    let vocab = s.vocab_size;
    // Loss chunk: a multiple of 64 rows whose logits fit one binding.
    let max_rows = (gpu.max_binding() / (vocab as u64 * 4)) as usize / 64 * 64;
    if max_rows == 0 {
        return Err(Error::Gpu(format!(
            "64 rows of {vocab} logits exceed the adapter's largest storage binding"
        )));
    }
    let chunk = align_f32(opts.loss_chunk_rows)
        .min(max_rows)
        .min(align_f32(n));
    let acts = Acts {
        batch,
        seq,
        tokens: n,
        ids,
        cos,
        sin,
        xs,
        layers,
        xn: z("xn", n * h)?,
        proj: z("proj", n * h)?,
        hsw: z("swiglu", n * f)?,
        dres: z("dres", n * h)?,
        dxn: z("dxn", n * h)?,
        dq: z("dq", n * qd)?,
        dk: z("dk", n * kvd)?,
        dv: z("dv", n * kvd)?,
        datt: z("datt", n * qd)?,
        dh: z("dh", n * f)?,
        dgate: z("dgate", n * f)?,
        dup: z("dup", n * f)?,
        att_scratch: z("attention scratch", n * nh)?,
        xdrop: if with_dropout {
            Some(z("dropout x", n * max_in)?)
        } else {
            None
        },
        dxdrop: if with_dropout {
            Some(z("dropout dx", n * max_in)?)
        } else {
            None
        },
        du: z("lora du", n * r)?,
        chunk,
        tgt_rows: z("target rows", n)?,
        tgt_ids: z("target ids", n)?,
        xg: z("loss x", chunk * h)?,
        xnl: z("loss xn", chunk * h)?,
        rstdl: z("loss rstd", chunk)?,
        logits: z("logits", chunk * vocab)?,
        dxnl: z("loss dxn", chunk * h)?,
        dxg: z("loss dx", chunk * h)?,
        nll: z("nll", n)?,
        loss_out: z("loss", 64)?,
        sum_scratch: z("loss sum scratch", n.div_ceil(256) + 64)?,
        bytes: 0,
    };
    gpu.sync()?;
    Ok(Acts { bytes, ..acts })
}

/// LoRA tensors by name laid out as `lora`'s flat buffer; names and shapes must match one to
/// one.
pub(crate) fn pack_params(lora: &Lora, what: &str, src: &[NamedTensor]) -> Result<Vec<f32>> {
    let r = lora.rank;
    let mut want = Vec::new();
    for s in &lora.slots {
        want.push((format!("{}.lora_A", s.module), vec![r, s.in_f], s.a));
        want.push((format!("{}.lora_B", s.module), vec![s.out_f, r], s.b));
    }
    let mut dst = vec![0f32; lora.total];
    let mut seen = vec![false; want.len()];
    for t in src {
        let Some(i) = want.iter().position(|w| w.0 == t.name) else {
            return Err(Error::Invalid(format!(
                "{what}: '{}' is not a trainable tensor of this engine (expected names like '{}')",
                t.name,
                want.first().map_or("", |w| w.0.as_str())
            )));
        };
        if seen[i] {
            return Err(Error::Invalid(format!("{what}: '{}' given twice", t.name)));
        }
        let numel: usize = want[i].1.iter().product();
        if t.shape != want[i].1 || t.data.len() != numel {
            return Err(Error::Invalid(format!(
                "{what}: '{}' has shape {:?} ({} values), expected {:?}",
                t.name,
                t.shape,
                t.data.len(),
                want[i].1
            )));
        }
        seen[i] = true;
        dst[want[i].2..want[i].2 + numel].copy_from_slice(&t.data);
    }
    if let Some(i) = seen.iter().position(|&s| !s) {
        return Err(Error::Invalid(format!(
            "{what}: '{}' is missing",
            want[i].0
        )));
    }
    Ok(dst)
}

/// RoPE cos/sin tables `[n_pos, head_dim / 2]` for positions `0..n_pos`, the angle rounded to f32
/// as HF (and the CPU engine's `rope_tables`) compute it.
pub(crate) fn rope_tables(inv_freq: &[f32], n_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let (mut cos, mut sin) = (vec![0f32; n_pos * half], vec![0f32; n_pos * half]);
    for p in 0..n_pos {
        for (i, &f) in inv_freq.iter().enumerate() {
            let a = f * p as f32;
            cos[p * half + i] = a.cos();
            sin[p * half + i] = a.sin();
        }
    }
    (cos, sin)
}
