//! `CpuEngine`: LoRA training of a frozen Llama-family model on the CPU. Frozen weights stay in
//! their stored type (dequantized a tile at a time inside each matmul); the LoRA matrices, their
//! gradients and the AdamW moments live in flat f32 buffers (one region per matrix). The forward
//! saves what the backward needs in buffers planned from (batch, seq) and reused until the shape
//! grows; with gradient checkpointing only each layer's input is kept and the layer is
//! recomputed during the backward.

use hone_core::engine::{
    AdamW, Engine, LoraSetup, LossSum, MicroBatch, NamedTensor, OptimizerState, StepStats,
};
use hone_core::{Error, ModelSpec, Result, WeightStore};

use super::adamw::{adamw_step, clip_grads, grad_norm};
use super::dropout::{dropout_backward, dropout_forward, DropoutMask};
use super::linalg::matmul_backward;
use super::lora::{
    lora_down_backward, lora_down_forward, lora_up_backward, lora_up_forward, LoraShape,
};
use super::loss::{cross_entropy, HeadWeight, LmHead, LossScratch};
use super::ops::{
    attention_backward, attention_forward, rmsnorm_backward, rmsnorm_forward, rmsnorm_recompute,
    rope_backward, rope_forward_batch, swiglu_backward, swiglu_forward_into, SeqAttention,
};
use super::profile::{Clock, TrainProfile};
use crate::matmul::{matmul_forward, Weight};
use crate::ops::{embedding_forward, residual_forward, rope_tables};

/// Run `$body`, adding the seconds it took to `$acc`.
macro_rules! timed {
    ($acc:expr, $body:expr) => {{
        let start = Clock::now();
        let out = $body;
        $acc += start.secs();
        out
    }};
}

/// Options of the CPU training engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTrainOptions {
    /// Keep only each layer's input during the forward and recompute the layer in the backward.
    pub gradient_checkpointing: bool,
    /// Convert frozen weights to f32 once at load instead of dequantizing tiles in each matmul.
    pub dequantize_at_load: bool,
    /// Rows of logits the loss computes at once (memory: rows x vocab x 4 bytes).
    pub loss_chunk_rows: usize,
}

impl Default for CpuTrainOptions {
    fn default() -> Self {
        CpuTrainOptions {
            gradient_checkpointing: false,
            dequantize_at_load: false,
            loss_chunk_rows: 512,
        }
    }
}

/// The seven projections of a decoder layer that LoRA can adapt, in PEFT's usual order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

const PROJS: [Proj; 7] = [
    Proj::Q,
    Proj::K,
    Proj::V,
    Proj::O,
    Proj::Gate,
    Proj::Up,
    Proj::Down,
];

impl Proj {
    /// Module path inside a layer (`self_attn.q_proj`).
    fn path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// (in_features, out_features) under `spec`.
    fn dims(self, spec: &ModelSpec) -> (usize, usize) {
        let (h, q, kv, f) = (
            spec.hidden_size,
            spec.q_dim(),
            spec.kv_dim(),
            spec.intermediate_size,
        );
        match self {
            Proj::Q => (h, q),
            Proj::K | Proj::V => (h, kv),
            Proj::O => (q, h),
            Proj::Gate | Proj::Up => (h, f),
            Proj::Down => (f, h),
        }
    }

    fn has_bias(self, spec: &ModelSpec) -> bool {
        match self {
            Proj::Q | Proj::K | Proj::V => spec.has_qkv_bias(),
            Proj::O => spec.has_o_bias(),
            _ => spec.mlp_bias,
        }
    }
}

/// A frozen linear layer: weight `[out, in]` in its stored type, optional bias.
#[derive(Debug)]
struct Frozen {
    weight: Weight,
    bias: Option<Vec<f32>>,
}

impl Frozen {
    fn forward(&self, out: &mut [f32], inp: &[f32], m: usize) {
        matmul_forward(out, inp, &self.weight, self.bias.as_deref(), m);
    }
}

#[derive(Debug)]
struct FrozenLayer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    /// Indexed by `Proj as usize`.
    proj: Vec<Frozen>,
}

/// The frozen base model.
#[derive(Debug)]
struct Base {
    spec: ModelSpec,
    embed: Weight,
    lm_head: Weight,
    final_norm: Vec<f32>,
    layers: Vec<FrozenLayer>,
    inv_freq: Vec<f32>,
    eps: f32,
}

/// One adapted projection and where its matrices live in the flat buffers.
#[derive(Debug)]
struct Slot {
    module: String,
    in_f: usize,
    out_f: usize,
    /// Offset of A `[rank, in]`; B `[out, rank]` follows it.
    a: usize,
    b: usize,
}

/// A module trained in full (`modules_to_save`): its HF weight name and where its
/// `[vocab, hidden]` copy lives in the flat buffers (after every LoRA matrix).
#[derive(Debug)]
struct SavedSlot {
    weight_name: String,
    shape: [usize; 2],
    offset: usize,
}

/// LoRA rank, scale, dropout, the adapted projections and the modules trained in full.
#[derive(Debug)]
struct LoraLayout {
    rank: usize,
    scale: f32,
    dropout: f32,
    slots: Vec<Slot>,
    /// `slot_of[layer][proj]`: index into `slots`.
    slot_of: Vec<[Option<usize>; 7]>,
    saved: Vec<SavedSlot>,
    /// Offsets of the trainable copies of the output head and of the input embedding. As in
    /// PEFT, a copy replaces the module for its own use only: with tied embeddings a trained
    /// `lm_head` leaves the input embedding frozen, and the reverse.
    head_copy: Option<usize>,
    embed_copy: Option<usize>,
    total: usize,
}

/// HF weight names of the modules that can be trained in full.
const LM_HEAD: &str = "lm_head.weight";
const EMBED: &str = "model.embed_tokens.weight";

/// Sizes of one micro-batch through the model.
#[derive(Debug, Clone, Copy)]
struct Dims {
    seq: usize,
    n: usize,
    h: usize,
    qd: usize,
    kvd: usize,
    ffn: usize,
    half: usize,
    rank: usize,
    att: SeqAttention,
}

/// What the backward of one layer needs, saved by its forward.
#[derive(Debug, Default)]
struct LayerActs {
    rstd1: Vec<f32>,
    rstd2: Vec<f32>,
    x_mid: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// `x @ A^T` of each projection, `[n, 7 rank]` (a rank-wide block per projection).
    lora_u: Vec<f32>,
}

impl LayerActs {
    fn new(d: &Dims) -> Self {
        let n = d.n;
        LayerActs {
            rstd1: vec![0.0; n],
            rstd2: vec![0.0; n],
            x_mid: vec![0.0; n * d.h],
            q: vec![0.0; n * d.qd],
            k: vec![0.0; n * d.kvd],
            v: vec![0.0; n * d.kvd],
            att: vec![0.0; n * d.qd],
            lse: vec![0.0; n * d.att.n_heads],
            gate: vec![0.0; n * d.ffn],
            up: vec![0.0; n * d.ffn],
            lora_u: vec![0.0; 7 * n * d.rank],
        }
    }
}

/// Working buffers of the LoRA paths.
#[derive(Debug, Default)]
struct LoraScratch {
    /// The input after dropout, and its gradient, `[n, in]` (only with dropout).
    xdrop: Vec<f32>,
    dxdrop: Vec<f32>,
    /// `scale * dy @ B` of an input group, `[n, 3 rank]`.
    du: Vec<f32>,
    /// The A matrices of an input group stacked, and their gradient, `[3 rank, in]`.
    acat: Vec<f32>,
    dacat: Vec<f32>,
}

/// Working buffers shared by all layers.
#[derive(Debug, Default)]
struct Scratch {
    xn: Vec<f32>,
    proj: Vec<f32>,
    hsw: Vec<f32>,
    dres: Vec<f32>,
    dxn: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    datt: Vec<f32>,
    dh: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    lora: LoraScratch,
    cos: Vec<f32>,
    sin: Vec<f32>,
    loss: LossScratch,
    prof: TrainProfile,
}

impl Scratch {
    fn new(d: &Dims, with_dropout: bool) -> Self {
        let n = d.n;
        let max_in = d.h.max(d.qd).max(d.ffn);
        let drop = if with_dropout { n * max_in } else { 0 };
        Scratch {
            xn: vec![0.0; n * d.h],
            proj: vec![0.0; n * d.h],
            hsw: vec![0.0; n * d.ffn],
            dres: vec![0.0; n * d.h],
            dxn: vec![0.0; n * d.h],
            dq: vec![0.0; n * d.qd],
            dk: vec![0.0; n * d.kvd],
            dv: vec![0.0; n * d.kvd],
            datt: vec![0.0; n * d.qd],
            dh: vec![0.0; n * d.ffn],
            dgate: vec![0.0; n * d.ffn],
            dup: vec![0.0; n * d.ffn],
            lora: LoraScratch {
                xdrop: vec![0.0; drop],
                dxdrop: vec![0.0; drop],
                du: vec![0.0; n * 3 * d.rank],
                acat: vec![0.0; 3 * d.rank * max_in],
                dacat: vec![0.0; 3 * d.rank * max_in],
            },
            cos: vec![0.0; d.seq * d.half],
            sin: vec![0.0; d.seq * d.half],
            loss: LossScratch::default(),
            prof: TrainProfile::default(),
        }
    }
}

/// Activation memory, planned for up to `tokens` tokens in sequences of up to `seq`.
#[derive(Debug, Default)]
struct Acts {
    tokens: usize,
    seq: usize,
    /// The residual stream at the input of each layer and after the last, `[layers + 1][n, h]`.
    xs: Vec<f32>,
    /// Every layer's saved activations, or one set (checkpointing; evaluation).
    layers: Vec<LayerActs>,
    sc: Scratch,
}

impl Acts {
    /// Make room for `d` (reallocating only when it is larger than what is planned).
    fn ensure(&mut self, d: &Dims, n_layers: usize, keep_layers: usize, with_dropout: bool) {
        if d.n <= self.tokens && d.seq <= self.seq && keep_layers <= self.layers.len() {
            return;
        }
        let plan = Dims {
            n: d.n.max(self.tokens),
            seq: d.seq.max(self.seq),
            ..*d
        };
        let keep = keep_layers.max(self.layers.len());
        // Free the old buffers before allocating the new ones.
        let prof = self.sc.prof;
        *self = Acts::default();
        self.xs = vec![0.0; (n_layers + 1) * plan.n * plan.h];
        self.layers = (0..keep).map(|_| LayerActs::new(&plan)).collect();
        self.sc = Scratch::new(&plan, with_dropout);
        self.sc.prof = prof;
        self.tokens = plan.n;
        self.seq = plan.seq;
    }
}

/// The LoRA training engine on the CPU (the numerical reference of hone). Modules in
/// `LoraSetup::modules_to_save` train in full as f32 copies (initialised from the base
/// weights) next to the LoRA matrices, with the same AdamW and clipping. Dropout masks of
/// micro-batch i after `set_dropout_seed(s)` depend only on (s, i, layer, projection, element);
/// an optimizer step whose gradient norm is not finite is refused (an error) and drops the
/// gradients, leaving parameters and moments as they were.
#[derive(Debug)]
pub struct CpuEngine {
    base: Base,
    lora: LoraLayout,
    opts: CpuTrainOptions,
    adamw: AdamW,
    /// LoRA A/B values and the `modules_to_save` copies, then their gradients and AdamW
    /// moments, all in the same layout.
    params: Vec<f32>,
    grads: Vec<f32>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    step: u64,
    dropout_seed: u64,
    /// Micro-batches since the seed was set (each draws its own masks).
    micro_batch: u64,
    acts: Acts,
}

/// How `CpuEngine::run` treats a micro-batch.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Train { grad_scale: f32 },
    Eval,
}

impl CpuEngine {
    /// An engine over `weights` (checked against `spec`) training `lora` with `adamw`. The LoRA
    /// matrices start at zero (the caller sets their initial values with `set_params`); the
    /// `modules_to_save` copies start equal to the base weights.
    pub fn new(
        spec: &ModelSpec,
        weights: &WeightStore,
        lora: LoraSetup,
        adamw: AdamW,
        opts: CpuTrainOptions,
    ) -> Result<CpuEngine> {
        check_spec(spec, weights)?;
        weights.check_against(spec)?;
        let base = load_base(spec, weights, opts.dequantize_at_load)?;
        let layout = lora_layout(spec, &lora)?;
        if opts.loss_chunk_rows == 0 {
            return Err(Error::Invalid("loss_chunk_rows must be > 0".into()));
        }
        let total = layout.total;
        let mut params = vec![0.0; total];
        for s in &layout.saved {
            let src = if s.weight_name == LM_HEAD {
                &base.lm_head
            } else {
                &base.embed
            };
            src.rows_f32(0, &mut params[s.offset..s.offset + s.shape[0] * s.shape[1]]);
        }
        Ok(CpuEngine {
            base,
            lora: layout,
            opts,
            adamw,
            params,
            grads: vec![0.0; total],
            exp_avg: vec![0.0; total],
            exp_avg_sq: vec![0.0; total],
            step: 0,
            dropout_seed: 0,
            micro_batch: 0,
            acts: Acts::default(),
        })
    }

    /// The model's architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.base.spec
    }

    /// Number of trainable values (all LoRA A and B matrices and `modules_to_save` copies).
    pub fn num_trainable(&self) -> usize {
        self.params.len()
    }

    /// Optimizer steps taken.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Seconds spent per kind of op since the engine was made or the profile reset.
    pub fn profile(&self) -> TrainProfile {
        self.acts.sc.prof
    }

    /// Start the profile from zero.
    pub fn reset_profile(&mut self) {
        self.acts.sc.prof = TrainProfile::default();
    }

    /// Bytes of activation and scratch memory currently planned (the loss's logits included).
    pub fn activation_bytes(&self) -> usize {
        let a = &self.acts;
        let layer = |l: &LayerActs| {
            l.rstd1.len()
                + l.rstd2.len()
                + l.x_mid.len()
                + l.q.len()
                + l.k.len()
                + l.v.len()
                + l.att.len()
                + l.lse.len()
                + l.gate.len()
                + l.up.len()
                + l.lora_u.len()
        };
        let s = &a.sc;
        let scratch = [
            &s.xn,
            &s.proj,
            &s.hsw,
            &s.dres,
            &s.dxn,
            &s.dq,
            &s.dk,
            &s.dv,
            &s.datt,
            &s.dh,
            &s.dgate,
            &s.dup,
            &s.lora.xdrop,
            &s.lora.dxdrop,
            &s.lora.du,
            &s.lora.acat,
            &s.lora.dacat,
            &s.cos,
            &s.sin,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>();
        4 * (a.xs.len() + a.layers.iter().map(layer).sum::<usize>() + scratch) + s.loss.bytes()
    }

    /// Check a micro-batch and return its shifted targets.
    fn check_batch(&self, mb: &MicroBatch<'_>) -> Result<Vec<(usize, u32)>> {
        hone_core::engine::check_micro_batch(&self.base.spec, mb)
    }

    fn dims(&self, batch: usize, seq: usize) -> Dims {
        let s = &self.base.spec;
        Dims {
            seq,
            n: batch * seq,
            h: s.hidden_size,
            qd: s.q_dim(),
            kvd: s.kv_dim(),
            ffn: s.intermediate_size,
            half: s.head_dim / 2,
            rank: self.lora.rank,
            att: SeqAttention {
                batch,
                seq,
                n_heads: s.num_attention_heads,
                n_kv_heads: s.num_key_value_heads,
                head_dim: s.head_dim,
            },
        }
    }

    /// Forward (and in training, backward) of one micro-batch; returns the loss sum.
    fn run(&mut self, mb: &MicroBatch<'_>, mode: Mode) -> Result<LossSum> {
        let targets = self.check_batch(mb)?;
        let d = self.dims(mb.batch, mb.seq);
        let n_layers = self.base.layers.len();
        let train = matches!(mode, Mode::Train { .. });
        let keep_all = train && !self.opts.gradient_checkpointing;
        let with_dropout = self.lora.dropout > 0.0;
        self.acts.ensure(
            &d,
            n_layers,
            if keep_all { n_layers } else { 1 },
            with_dropout,
        );
        let drop_seed = if train && with_dropout {
            let seed = mix_seed(self.dropout_seed, self.micro_batch);
            self.micro_batch += 1;
            Some(seed)
        } else {
            None
        };
        let (base, lora, params) = (&self.base, &self.lora, &self.params);
        let acts = &mut self.acts;
        let (n, h) = (d.n, d.h);
        let sc = &mut acts.sc;
        rope_tables(
            &mut sc.cos[..d.seq * d.half],
            &mut sc.sin[..d.seq * d.half],
            &base.inv_freq,
            0,
            d.seq,
        );
        let xs = &mut acts.xs[..(n_layers + 1) * n * h];
        timed!(sc.prof.other, {
            let x0 = &mut xs[..n * h];
            match lora.embed_copy {
                Some(off) => {
                    for (row, &tok) in x0.chunks_exact_mut(h).zip(mb.ids) {
                        let t = off + tok as usize * h;
                        row.copy_from_slice(&params[t..t + h]);
                    }
                }
                None => embedding_forward(x0, mb.ids, &base.embed),
            }
        });
        for l in 0..n_layers {
            let (done, rest) = xs.split_at_mut((l + 1) * n * h);
            let la = &mut acts.layers[if keep_all { l } else { 0 }];
            let x_in = &done[l * n * h..];
            layer_forward(
                base,
                lora,
                params,
                l,
                &d,
                x_in,
                &mut rest[..n * h],
                la,
                sc,
                drop_seed,
            );
        }
        let vocab = base.spec.vocab_size;
        let head = LmHead {
            norm: &base.final_norm,
            eps: base.eps,
            weight: match lora.head_copy {
                Some(off) => HeadWeight::Trainable(&params[off..off + vocab * h]),
                None => HeadWeight::Frozen(&base.lm_head),
            },
        };
        let x_final = &xs[n_layers * n * h..];
        let chunk = self.opts.loss_chunk_rows;
        let nll_sum = match mode {
            Mode::Eval => timed!(
                sc.prof.loss,
                cross_entropy(x_final, &targets, head, chunk, None, None, &mut sc.loss)
            ),
            Mode::Train { grad_scale } => {
                let dres = &mut sc.dres[..n * h];
                let grads = &mut self.grads;
                let dhead = lora.head_copy.map(|off| &mut grads[off..off + vocab * h]);
                let nll = timed!(
                    sc.prof.loss,
                    cross_entropy(
                        x_final,
                        &targets,
                        head,
                        chunk,
                        Some((dres, grad_scale)),
                        dhead,
                        &mut sc.loss,
                    )
                );
                for l in (0..n_layers).rev() {
                    let la = &mut acts.layers[if keep_all { l } else { 0 }];
                    let (done, rest) = xs.split_at_mut((l + 1) * n * h);
                    let x_in = &done[l * n * h..];
                    if !keep_all && l + 1 != n_layers {
                        // Gradient checkpointing: recompute this layer's activations (the last
                        // layer's are still there from the forward).
                        let x_out = &mut rest[..n * h];
                        let start = Clock::now();
                        layer_forward(base, lora, params, l, &d, x_in, x_out, la, sc, drop_seed);
                        sc.prof.recompute += start.secs();
                    }
                    layer_backward(base, lora, params, grads, l, &d, x_in, la, sc, drop_seed);
                }
                // Embedding backward: `sc.dres` now holds dL/dx0; a trainable copy of the table
                // gets each row's gradient added to its token's row (the frozen table gets
                // nothing, and ids are not differentiable). As HF builds the table with
                // `nn.Embedding(padding_idx=pad_token_id)`, the pad token's row gets no
                // gradient.
                if let Some(off) = lora.embed_copy {
                    let pad = base.spec.pad_token_id;
                    timed!(sc.prof.other, {
                        let dx0 = &sc.dres[..n * h];
                        for (g, &tok) in dx0.chunks_exact(h).zip(mb.ids) {
                            if Some(tok) == pad {
                                continue;
                            }
                            let t = off + tok as usize * h;
                            for (d, &v) in grads[t..t + h].iter_mut().zip(g) {
                                *d += v;
                            }
                        }
                    });
                }
                nll
            }
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
        for s in &self.lora.saved {
            out.push(NamedTensor {
                name: s.weight_name.clone(),
                shape: s.shape.to_vec(),
                data: buf[s.offset..s.offset + s.shape[0] * s.shape[1]].to_vec(),
            });
        }
        out
    }

    /// Fill `dst` (laid out like the parameters) from named tensors, which must match the
    /// parameters' names and shapes one to one.
    fn unpack(&self, what: &str, src: &[NamedTensor]) -> Result<Vec<f32>> {
        let want = self.named(&self.params);
        let mut dst = vec![0f32; self.params.len()];
        let mut seen = vec![false; want.len()];
        let mut offsets = Vec::with_capacity(want.len());
        for s in &self.lora.slots {
            offsets.push(s.a);
            offsets.push(s.b);
        }
        offsets.extend(self.lora.saved.iter().map(|s| s.offset));
        for t in src {
            let Some(i) = want.iter().position(|w| w.name == t.name) else {
                return Err(Error::Invalid(format!(
                    "{what}: '{}' is not a trainable tensor of this engine (expected names like '{}')",
                    t.name,
                    want.first().map_or("", |w| w.name.as_str())
                )));
            };
            if seen[i] {
                return Err(Error::Invalid(format!("{what}: '{}' given twice", t.name)));
            }
            if t.shape != want[i].shape || t.data.len() != want[i].data.len() {
                return Err(Error::Invalid(format!(
                    "{what}: '{}' has shape {:?} ({} values), expected {:?}",
                    t.name,
                    t.shape,
                    t.data.len(),
                    want[i].shape
                )));
            }
            seen[i] = true;
            dst[offsets[i]..offsets[i] + t.data.len()].copy_from_slice(&t.data);
        }
        if let Some(i) = seen.iter().position(|&s| !s) {
            return Err(Error::Invalid(format!(
                "{what}: '{}' is missing",
                want[i].name
            )));
        }
        Ok(dst)
    }
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        format!("cpu, {} threads", crate::parallel::threads())
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
        self.run(batch, Mode::Train { grad_scale })
    }

    async fn optimizer_step(&mut self, lr: f32, max_grad_norm: Option<f32>) -> Result<StepStats> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Invalid(format!(
                "learning rate {lr} must be finite and >= 0"
            )));
        }
        let start = Clock::now();
        let norm = grad_norm(&self.grads);
        if !norm.is_finite() {
            self.grads.fill(0.0);
            return Err(Error::Invalid(format!(
                "gradient norm is {norm}: the step was skipped and the gradients dropped"
            )));
        }
        if let Some(max) = max_grad_norm {
            if max.is_nan() || max <= 0.0 {
                return Err(Error::Invalid(format!("max_grad_norm {max} must be > 0")));
            }
            clip_grads(&mut self.grads, max, norm);
        }
        self.step += 1;
        adamw_step(
            &mut self.params,
            &self.grads,
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
            self.step,
            lr,
            &self.adamw,
        );
        self.grads.fill(0.0);
        self.acts.sc.prof.optimizer += start.secs();
        Ok(StepStats { grad_norm: norm })
    }

    async fn eval_loss(&mut self, batch: &MicroBatch<'_>) -> Result<LossSum> {
        self.run(batch, Mode::Eval)
    }

    async fn params(&self) -> Result<Vec<NamedTensor>> {
        Ok(self.named(&self.params))
    }

    async fn set_params(&mut self, params: &[NamedTensor]) -> Result<()> {
        self.params = self.unpack("set_params", params)?;
        Ok(())
    }

    async fn grads(&self) -> Result<Vec<NamedTensor>> {
        Ok(self.named(&self.grads))
    }

    async fn optimizer_state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            step: self.step,
            exp_avg: self.named(&self.exp_avg),
            exp_avg_sq: self.named(&self.exp_avg_sq),
        })
    }

    async fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        let m = self.unpack("optimizer state exp_avg", &state.exp_avg)?;
        let v = self.unpack("optimizer state exp_avg_sq", &state.exp_avg_sq)?;
        self.exp_avg = m;
        self.exp_avg_sq = v;
        self.step = state.step;
        Ok(())
    }

    fn set_dropout_seed(&mut self, seed: u64) {
        self.dropout_seed = seed;
        self.micro_batch = 0;
    }
}

/// The seed of micro-batch `index` after `set_dropout_seed(seed)`.
fn mix_seed(seed: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_add(0x632b_e59b_d9b4_e019)
}

/// The dropout mask of projection `p` of layer `l` in the micro-batch drawn with `seed`.
fn mask_for(lora: &LoraLayout, l: usize, p: Proj, seed: u64) -> DropoutMask {
    DropoutMask::new(seed, (l * 7 + p as usize) as u64, lora.dropout)
}

/// The adapted projections among `projs` (one input group, canonical order): (position in
/// `projs`, slot), at most three.
fn adapted(
    lora: &LoraLayout,
    l: usize,
    projs: impl Iterator<Item = Proj>,
) -> ([(usize, usize); 3], usize) {
    let mut out = [(0, 0); 3];
    let mut g = 0;
    for (i, p) in projs.enumerate() {
        if let Some(si) = lora.slot_of[l][p as usize] {
            out[g] = (i, si);
            g += 1;
        }
    }
    (out, g)
}

/// Copy the A matrices of `slots` one under the other into `acat` (`[g * rank, in]`).
fn stack_a<'a>(
    lora: &LoraLayout,
    params: &[f32],
    slots: &[(usize, usize)],
    acat: &'a mut [f32],
) -> &'a [f32] {
    let r = lora.rank;
    let k = lora.slots[slots[0].1].in_f;
    for (i, &(_, si)) in slots.iter().enumerate() {
        let a = lora.slots[si].a;
        acat[i * r * k..(i + 1) * r * k].copy_from_slice(&params[a..a + r * k]);
    }
    &acat[..slots.len() * r * k]
}

/// `y_p += LoRA_p(x)` for the projections in `outs` (one input group: q/k/v, gate/up, or a
/// single one, canonical order), saving each `x @ A_p^T` in its block of the layer's
/// `[n, 7 rank]` u matrix. Without dropout the group's A products are one matmul; with it each
/// projection sees its own mask.
#[allow(clippy::too_many_arguments)]
fn lora_forward_group(
    lora: &LoraLayout,
    params: &[f32],
    l: usize,
    x: &[f32],
    outs: &mut [(Proj, &mut [f32])],
    la: &mut LayerActs,
    sc: &mut LoraScratch,
    d: &Dims,
    drop_seed: Option<u64>,
) {
    let (members, g) = adapted(lora, l, outs.iter().map(|o| o.0));
    if g == 0 {
        return;
    }
    let members = &members[..g];
    let (n, r) = (d.n, lora.rank);
    let uw = 7 * r;
    let base = outs[0].0 as usize * r;
    let k = lora.slots[members[0].1].in_f;
    let u = &mut la.lora_u[..n * uw];
    if let Some(seed) = drop_seed {
        for (i, &(oi, si)) in members.iter().enumerate() {
            let mask = mask_for(lora, l, outs[oi].0, seed);
            let xd = &mut sc.xdrop[..n * k];
            dropout_forward(xd, x, mask);
            let a = &params[lora.slots[si].a..lora.slots[si].a + r * k];
            lora_down_forward(&mut u[base + i * r..], uw, xd, a, n, k);
        }
    } else {
        let acat = stack_a(lora, params, members, &mut sc.acat);
        lora_down_forward(&mut u[base..], uw, x, acat, n, k);
    }
    for (i, &(oi, si)) in members.iter().enumerate() {
        let s = &lora.slots[si];
        let shape = LoraShape {
            m: n,
            in_features: s.in_f,
            out_features: s.out_f,
            rank: r,
        };
        let b = &params[s.b..s.b + s.out_f * r];
        lora_up_forward(outs[oi].1, &u[base + i * r..], uw, b, lora.scale, shape);
    }
}

/// Backward of `lora_forward_group`: `dys` are the gradients of the group's outputs; dA, dB
/// are added to `grads` and the input's gradient to `dx`.
#[allow(clippy::too_many_arguments)]
fn lora_backward_group(
    lora: &LoraLayout,
    params: &[f32],
    grads: &mut [f32],
    l: usize,
    x: &[f32],
    dys: &[(Proj, &[f32])],
    dx: &mut [f32],
    la: &LayerActs,
    sc: &mut LoraScratch,
    d: &Dims,
    drop_seed: Option<u64>,
) {
    let (members, g) = adapted(lora, l, dys.iter().map(|o| o.0));
    if g == 0 {
        return;
    }
    let members = &members[..g];
    let (n, r) = (d.n, lora.rank);
    let uw = 7 * r;
    let base = dys[0].0 as usize * r;
    let k = lora.slots[members[0].1].in_f;
    let u = &la.lora_u[..n * uw];
    // dB and du = scale * dy @ B for each projection, du blocks side by side: [n, g * rank].
    let gr = g * r;
    let du = &mut sc.du[..n * gr];
    for (i, &(oi, si)) in members.iter().enumerate() {
        let s = &lora.slots[si];
        let shape = LoraShape {
            m: n,
            in_features: s.in_f,
            out_features: s.out_f,
            rank: r,
        };
        let b = &params[s.b..s.b + s.out_f * r];
        let db = &mut grads[s.b..s.b + s.out_f * r];
        let u_i = &u[base + i * r..];
        lora_up_backward(
            db,
            &mut du[i * r..],
            gr,
            dys[oi].1,
            u_i,
            uw,
            b,
            lora.scale,
            shape,
        );
    }
    if let Some(seed) = drop_seed {
        for (i, &(oi, si)) in members.iter().enumerate() {
            let mask = mask_for(lora, l, dys[oi].0, seed);
            let xd = &mut sc.xdrop[..n * k];
            dropout_forward(xd, x, mask);
            let s = &lora.slots[si];
            let a = &params[s.a..s.a + r * k];
            let da = &mut grads[s.a..s.a + r * k];
            let dxd = &mut sc.dxdrop[..n * k];
            lora_down_backward(da, true, dxd, false, &du[i * r..], gr, xd, a, n, k);
            dropout_backward(dx, dxd, mask);
        }
    } else {
        let acat = stack_a(lora, params, members, &mut sc.acat);
        let dacat = &mut sc.dacat[..gr * k];
        lora_down_backward(dacat, false, dx, true, du, gr, x, acat, n, k);
        for (i, &(_, si)) in members.iter().enumerate() {
            let a = lora.slots[si].a;
            let block = &dacat[i * r * k..(i + 1) * r * k];
            for (g, &v) in grads[a..a + r * k].iter_mut().zip(block) {
                *g += v;
            }
        }
    }
}

/// One decoder layer forward, `x_out = layer(x_in)`, saving into `la`.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    base: &Base,
    lora: &LoraLayout,
    params: &[f32],
    l: usize,
    d: &Dims,
    x_in: &[f32],
    x_out: &mut [f32],
    la: &mut LayerActs,
    sc: &mut Scratch,
    drop_seed: Option<u64>,
) {
    let layer = &base.layers[l];
    let (n, h, qd, kvd, ffn) = (d.n, d.h, d.qd, d.kvd, d.ffn);
    let (nh, nkv, hd) = (d.att.n_heads, d.att.n_kv_heads, d.att.head_dim);
    let x_in = &x_in[..n * h];
    let cos = &sc.cos[..d.seq * d.half];
    let sin = &sc.sin[..d.seq * d.half];
    let xn = &mut sc.xn[..n * h];
    let ls = &mut sc.lora;
    let prof = &mut sc.prof;
    let fwd = |p: Proj, out: &mut [f32], inp: &[f32]| layer.proj[p as usize].forward(out, inp, n);

    // Attention block: x_mid = x_in + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1))).
    let rstd1 = &mut la.rstd1[..n];
    timed!(
        prof.norms,
        rmsnorm_forward(xn, rstd1, x_in, &layer.input_norm, base.eps)
    );
    let mut q = std::mem::take(&mut la.q);
    let mut k = std::mem::take(&mut la.k);
    let mut v = std::mem::take(&mut la.v);
    let mut qkv = [
        (Proj::Q, &mut q[..n * qd]),
        (Proj::K, &mut k[..n * kvd]),
        (Proj::V, &mut v[..n * kvd]),
    ];
    timed!(prof.matmul_forward, {
        for (p, out) in qkv.iter_mut() {
            fwd(*p, out, xn);
        }
    });
    timed!(
        prof.lora_forward,
        lora_forward_group(lora, params, l, xn, &mut qkv, la, ls, d, drop_seed)
    );
    timed!(prof.rope, {
        rope_forward_batch(&mut q[..n * qd], cos, sin, d.seq, nh, hd);
        rope_forward_batch(&mut k[..n * kvd], cos, sin, d.seq, nkv, hd);
    });
    let (att, lse) = (&mut la.att[..n * qd], &mut la.lse[..n * nh]);
    timed!(
        prof.attention_forward,
        attention_forward(att, lse, &q[..n * qd], &k[..n * kvd], &v[..n * kvd], d.att)
    );
    (la.q, la.k, la.v) = (q, k, v);
    let att = std::mem::take(&mut la.att);
    let proj = &mut sc.proj[..n * h];
    timed!(prof.matmul_forward, fwd(Proj::O, proj, &att[..n * qd]));
    let mut outs = [(Proj::O, &mut *proj)];
    timed!(
        prof.lora_forward,
        lora_forward_group(
            lora,
            params,
            l,
            &att[..n * qd],
            &mut outs,
            la,
            ls,
            d,
            drop_seed
        )
    );
    la.att = att;
    let x_mid = &mut la.x_mid[..n * h];
    timed!(prof.other, {
        x_mid.copy_from_slice(x_in);
        residual_forward(x_mid, proj);
    });

    // MLP block: x_out = x_mid + down(swiglu(gate(xn2), up(xn2))).
    let rstd2 = &mut la.rstd2[..n];
    timed!(
        prof.norms,
        rmsnorm_forward(xn, rstd2, x_mid, &layer.post_norm, base.eps)
    );
    let mut gate = std::mem::take(&mut la.gate);
    let mut up = std::mem::take(&mut la.up);
    let mut gate_up = [
        (Proj::Gate, &mut gate[..n * ffn]),
        (Proj::Up, &mut up[..n * ffn]),
    ];
    timed!(prof.matmul_forward, {
        for (p, out) in gate_up.iter_mut() {
            fwd(*p, out, xn);
        }
    });
    timed!(
        prof.lora_forward,
        lora_forward_group(lora, params, l, xn, &mut gate_up, la, ls, d, drop_seed)
    );
    let hsw = &mut sc.hsw[..n * ffn];
    timed!(
        prof.swiglu,
        swiglu_forward_into(hsw, &gate[..n * ffn], &up[..n * ffn])
    );
    (la.gate, la.up) = (gate, up);
    timed!(prof.matmul_forward, fwd(Proj::Down, proj, hsw));
    let mut outs = [(Proj::Down, &mut *proj)];
    timed!(
        prof.lora_forward,
        lora_forward_group(lora, params, l, hsw, &mut outs, la, ls, d, drop_seed)
    );
    timed!(prof.other, {
        x_out.copy_from_slice(&la.x_mid[..n * h]);
        residual_forward(x_out, proj);
    });
}

/// One decoder layer backward: `sc.dres` holds dL/dx_out on entry and dL/dx_in on return;
/// LoRA gradients are added to `grads`.
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    base: &Base,
    lora: &LoraLayout,
    params: &[f32],
    grads: &mut [f32],
    l: usize,
    d: &Dims,
    x_in: &[f32],
    la: &LayerActs,
    sc: &mut Scratch,
    drop_seed: Option<u64>,
) {
    let layer = &base.layers[l];
    let (n, h, qd, kvd, ffn) = (d.n, d.h, d.qd, d.kvd, d.ffn);
    let (nh, nkv, hd) = (d.att.n_heads, d.att.n_kv_heads, d.att.head_dim);
    let x_in = &x_in[..n * h];
    let x_mid = &la.x_mid[..n * h];
    let (gate, up) = (&la.gate[..n * ffn], &la.up[..n * ffn]);
    let w = |p: Proj| &layer.proj[p as usize].weight;
    let Scratch {
        xn,
        dres,
        dxn,
        hsw,
        dh,
        dgate,
        dup,
        datt,
        dq,
        dk,
        dv,
        lora: ls,
        cos,
        sin,
        prof,
        ..
    } = sc;
    let dres = &mut dres[..n * h];
    let xn = &mut xn[..n * h];
    let dxn = &mut dxn[..n * h];
    let (hsw, dh) = (&mut hsw[..n * ffn], &mut dh[..n * ffn]);
    let (dgate, dup) = (&mut dgate[..n * ffn], &mut dup[..n * ffn]);
    let datt = &mut datt[..n * qd];
    let (dq, dk, dv) = (&mut dq[..n * qd], &mut dk[..n * kvd], &mut dv[..n * kvd]);
    let (cos, sin) = (&cos[..d.seq * d.half], &sin[..d.seq * d.half]);

    // MLP block, from dL/dx_out = dres.
    timed!(prof.swiglu, swiglu_forward_into(hsw, gate, up));
    timed!(
        prof.matmul_backward,
        matmul_backward(dh, dres, w(Proj::Down), n, false)
    );
    let dys = [(Proj::Down, &*dres)];
    timed!(
        prof.lora_backward,
        lora_backward_group(lora, params, grads, l, hsw, &dys, dh, la, ls, d, drop_seed)
    );
    timed!(prof.swiglu, swiglu_backward(dgate, dup, dh, gate, up));
    let rstd2 = &la.rstd2[..n];
    timed!(
        prof.norms,
        rmsnorm_recompute(xn, rstd2, x_mid, &layer.post_norm)
    );
    let dys = [(Proj::Gate, &*dgate), (Proj::Up, &*dup)];
    timed!(prof.matmul_backward, {
        for (i, &(p, dy)) in dys.iter().enumerate() {
            matmul_backward(dxn, dy, w(p), n, i > 0);
        }
    });
    timed!(
        prof.lora_backward,
        lora_backward_group(lora, params, grads, l, xn, &dys, dxn, la, ls, d, drop_seed)
    );
    timed!(
        prof.norms,
        rmsnorm_backward(dres, dxn, x_mid, rstd2, &layer.post_norm)
    );

    // Attention block, from dL/dx_mid = dres.
    let att = &la.att[..n * qd];
    timed!(
        prof.matmul_backward,
        matmul_backward(datt, dres, w(Proj::O), n, false)
    );
    let dys = [(Proj::O, &*dres)];
    timed!(
        prof.lora_backward,
        lora_backward_group(lora, params, grads, l, att, &dys, datt, la, ls, d, drop_seed)
    );
    let (q, k, v) = (&la.q[..n * qd], &la.k[..n * kvd], &la.v[..n * kvd]);
    let lse = &la.lse[..n * nh];
    timed!(
        prof.attention_backward,
        attention_backward(dq, dk, dv, datt, q, k, v, att, lse, d.att)
    );
    timed!(prof.rope, {
        rope_backward(dq, cos, sin, d.seq, nh, hd);
        rope_backward(dk, cos, sin, d.seq, nkv, hd);
    });
    let rstd1 = &la.rstd1[..n];
    timed!(
        prof.norms,
        rmsnorm_recompute(xn, rstd1, x_in, &layer.input_norm)
    );
    let dys = [(Proj::Q, &*dq), (Proj::K, &*dk), (Proj::V, &*dv)];
    timed!(prof.matmul_backward, {
        for (i, &(p, dy)) in dys.iter().enumerate() {
            matmul_backward(dxn, dy, w(p), n, i > 0);
        }
    });
    timed!(
        prof.lora_backward,
        lora_backward_group(lora, params, grads, l, xn, &dys, dxn, la, ls, d, drop_seed)
    );
    timed!(
        prof.norms,
        rmsnorm_backward(dres, dxn, x_in, rstd1, &layer.input_norm)
    );
}

/// Reject specs the training path cannot run, naming the field.
fn check_spec(spec: &ModelSpec, weights: &WeightStore) -> Result<()> {
    hone_core::engine::check_trainable_spec(spec, &weights.source)
}

/// The frozen weights, kept in their stored type unless `dense`.
fn load_base(spec: &ModelSpec, weights: &WeightStore, dense: bool) -> Result<Base> {
    let weight = |name: &str| -> Result<Weight> {
        let w = Weight::from_entry(weights.get(name)?);
        Ok(if dense && w.dense().is_none() {
            w.to_dense()
        } else {
            w
        })
    };
    let vector = |name: &str| -> Result<Vec<f32>> { Ok(weights.get(name)?.to_f32()) };
    let embed = weight("model.embed_tokens.weight")?;
    let lm_head = if spec.tie_word_embeddings {
        embed.clone()
    } else {
        weight("lm_head.weight")?
    };
    let mut layers = Vec::with_capacity(spec.num_hidden_layers);
    for l in 0..spec.num_hidden_layers {
        let prefix = format!("model.layers.{l}");
        let mut proj = Vec::with_capacity(7);
        for p in PROJS {
            let name = format!("{prefix}.{}", p.path());
            proj.push(Frozen {
                weight: weight(&format!("{name}.weight"))?,
                bias: if p.has_bias(spec) {
                    Some(vector(&format!("{name}.bias"))?)
                } else {
                    None
                },
            });
        }
        layers.push(FrozenLayer {
            input_norm: vector(&format!("{prefix}.input_layernorm.weight"))?,
            post_norm: vector(&format!("{prefix}.post_attention_layernorm.weight"))?,
            proj,
        });
    }
    Ok(Base {
        spec: spec.clone(),
        embed,
        lm_head,
        final_norm: vector("model.norm.weight")?,
        layers,
        inv_freq: spec.rope_inv_freq(),
        eps: spec.rms_norm_eps as f32,
    })
}

/// Place each target's A and B in the flat buffers, checking names and sizes against `spec`.
fn lora_layout(spec: &ModelSpec, lora: &LoraSetup) -> Result<LoraLayout> {
    let parsed = hone_core::engine::parse_lora_targets(spec, lora)?;
    let r = lora.rank;
    let mut slot_of = vec![[None; 7]; spec.num_hidden_layers];
    let mut slots = Vec::with_capacity(lora.targets.len());
    let mut offset = 0;
    for (t, (l, p)) in lora.targets.iter().zip(parsed) {
        let p = PROJS[p];
        let (in_f, out_f) = p.dims(spec);
        slot_of[l][p as usize] = Some(slots.len());
        slots.push(Slot {
            module: t.module.clone(),
            in_f,
            out_f,
            a: offset,
            b: offset + r * in_f,
        });
        offset += r * (in_f + out_f);
    }
    let mut saved: Vec<SavedSlot> = Vec::with_capacity(lora.modules_to_save.len());
    let (mut head_copy, mut embed_copy) = (None, None);
    let want = [spec.vocab_size, spec.hidden_size];
    for m in &lora.modules_to_save {
        let which = match m.weight_name.as_str() {
            LM_HEAD => &mut head_copy,
            EMBED => &mut embed_copy,
            other => {
                return Err(Error::Invalid(format!(
                    "modules_to_save '{}': weight '{other}' cannot be trained in full (only \
                     {LM_HEAD} and {EMBED})",
                    m.module
                )))
            }
        };
        if which.is_some() {
            return Err(Error::Invalid(format!(
                "modules_to_save: '{}' is listed twice",
                m.weight_name
            )));
        }
        if m.shape != want {
            return Err(Error::Invalid(format!(
                "modules_to_save '{}': shape {:?}, the model has {want:?}",
                m.weight_name, m.shape
            )));
        }
        *which = Some(offset);
        saved.push(SavedSlot {
            weight_name: m.weight_name.clone(),
            shape: want,
            offset,
        });
        offset += want[0] * want[1];
    }
    Ok(LoraLayout {
        rank: r,
        scale: lora.scale,
        dropout: lora.dropout,
        slots,
        slot_of,
        saved,
        head_copy,
        embed_copy,
        total: offset,
    })
}
