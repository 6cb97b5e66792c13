//! The decoder graph: a Llama/Qwen2-family model with a KV cache in standard ONNX ops.
//!
//! Inputs (names as ONNX Runtime GenAI and Optimum use them):
//! - `input_ids` int64 `[batch_size, sequence_length]`
//! - `attention_mask` int64 `[batch_size, total_sequence_length]` (1 = attend, 0 = padding)
//! - `position_ids` int64 `[batch_size, sequence_length]`
//! - `past_key_values.{i}.key` / `.value` float
//!   `[batch_size, num_key_value_heads, past_sequence_length, head_dim]`
//!
//! Outputs:
//! - `logits` float `[batch_size, sequence_length, vocab_size]`
//! - `present.{i}.key` / `.value` float
//!   `[batch_size, num_key_value_heads, total_sequence_length, head_dim]`
//!
//! Key slot `j` is visible to new token `i` when `attention_mask[b, j] == 1` and
//! `j <= past_sequence_length + i` (slots, not position ids, order the cache), so left padding
//! works as in Hugging Face. RoPE angles come from `position_ids` in the graph.

use std::path::{Path, PathBuf};

use hone_core::{Architecture, Error, ModelSpec, Result, WeightStore};

use crate::adapter::{lora_a_input, lora_b_input, lora_rank_dim, transpose_scaled, LoraInputs};
use crate::int4::{self, ZeroPoints};
use crate::proto::{Attribute, DataType, Dim, Graph, Model, Node, Tensor, ValueInfo};

/// The ai.onnx opset the graph uses.
pub const OPSET_VERSION: i64 = 17;
/// ONNX IR version matching `OPSET_VERSION` (IR 8 goes with opset 17).
const IR_VERSION: i64 = 8;
/// A serialized protobuf message must stay below 2 GiB.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// The domain of ONNX Runtime's contrib ops (MatMulNBits).
pub const MS_DOMAIN: &str = "com.microsoft";

/// Weight precision of the projections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    /// Every weight as an fp32 initializer.
    #[default]
    Fp32,
    /// Every weight stored as fp16 (half the file) and cast to fp32 in the graph: the
    /// arithmetic stays fp32, so it runs on every execution provider.
    Fp16,
    /// q/k/v/o/gate/up/down as MatMulNBits (4-bit, blocks of 32; see [`crate::int4`]);
    /// embedding, lm_head and norms stay fp32 (8-bit MatMulNBits, the one format that would
    /// keep Q8_0 exact, takes ONNX Runtime's slow CPU path: 50x a 4-bit one at the lm_head).
    Int4,
}

/// How to export; build it with `ExportOptions::default()` and set fields.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Weight precision of the projections.
    pub precision: Precision,
    /// Take the LoRA weights of these projections as graph inputs (zero defaults); see the
    /// crate docs for names and shapes.
    pub lora: Option<LoraInputs>,
}

/// The ONNX `ModelProto` bytes of `spec`'s decoder with `weights` as fp32 initializers.
pub fn export_decoder(
    spec: &ModelSpec,
    weights: &WeightStore,
    opts: &ExportOptions,
) -> Result<Vec<u8>> {
    check_exportable(spec, weights, opts.precision)?;
    if let Some(lora) = &opts.lora {
        check_lora_targets(spec, lora)?;
    }
    let graph = build_graph(spec, weights, opts)?;
    let model = Model {
        ir_version: IR_VERSION,
        opset_import: match opts.precision {
            Precision::Fp32 | Precision::Fp16 => vec![(String::new(), OPSET_VERSION)],
            Precision::Int4 => vec![(String::new(), OPSET_VERSION), (MS_DOMAIN.into(), 1)],
        },
        producer_name: "hone".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} decoder with KV cache exported by hone",
            spec.architecture.hf_class()
        ),
        graph,
        metadata_props: vec![
            (
                "hone.architecture".into(),
                spec.architecture.model_type().into(),
            ),
            ("hone.source".into(), weights.source.display().to_string()),
        ],
    };
    let bytes = model.encode();
    if bytes.len() > PROTOBUF_LIMIT {
        return Err(Error::Invalid(format!(
            "onnx export: the model is {} bytes, over the 2 GiB limit of a single ONNX file \
             (external data files are not supported yet)",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Export to `path`, written atomically (a temporary file in the same folder, then renamed).
pub fn write_decoder(
    path: &Path,
    spec: &ModelSpec,
    weights: &WeightStore,
    opts: &ExportOptions,
) -> Result<()> {
    let bytes = export_decoder(spec, weights, opts)?;
    let file_name = path.file_name().ok_or_else(|| {
        Error::Invalid(format!(
            "onnx export: output path '{}' has no file name",
            path.display()
        ))
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    if let Err(e) = std::fs::write(&tmp, &bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Reject specs the graph cannot express, naming the field.
fn check_exportable(spec: &ModelSpec, weights: &WeightStore, precision: Precision) -> Result<()> {
    let bad = |field: &str, msg: String| {
        Err(Error::invalid_field(
            &weights.source,
            field,
            format!("onnx export: {msg}"),
        ))
    };
    #[allow(unreachable_patterns)]
    match spec.architecture {
        Architecture::Llama | Architecture::Qwen2 => {}
        other => {
            return Err(Error::UnsupportedArchitecture {
                path: weights.source.clone(),
                arch: format!("{} (for onnx export)", other.model_type()),
                supported: "llama, qwen2".into(),
            })
        }
    }
    // The same checks as the training engines (activation, heads, head_dim, sizes, eps).
    hone_core::engine::check_trainable_spec(spec, &weights.source)?;
    if spec.intermediate_size == 0 {
        return bad("intermediate_size", "must be > 0".into());
    }
    if let Some(i) = spec.rope_inv_freq().iter().position(|f| !f.is_finite()) {
        return bad(
            "rope_theta",
            format!(
                "inverse frequency {i} is not finite (rope_theta {})",
                spec.rope_theta
            ),
        );
    }
    weights.check_against(spec)?;
    // Refuse early rather than building a file ONNX cannot hold (int4: 4 bits plus a 4-byte
    // scale and a zero point per 32 values, rounded up to 6 bits a value).
    let bytes: usize = spec
        .expected_tensors()
        .iter()
        .map(|(name, s)| {
            let n = s.iter().product::<usize>();
            match precision {
                Precision::Fp32 => n.saturating_mul(4),
                Precision::Fp16 => n.saturating_mul(2),
                Precision::Int4 if name.ends_with("_proj.weight") => n.saturating_mul(6) / 8,
                Precision::Int4 => n.saturating_mul(4),
            }
        })
        .sum();
    if bytes > PROTOBUF_LIMIT {
        return Err(Error::Invalid(format!(
            "onnx export: the weights take about {bytes} bytes at this precision, over the 2 GiB \
             limit of a single ONNX file (external data files are not supported yet)"
        )));
    }
    Ok(())
}

/// Every LoRA target must be a linear module of `spec` with the same sizes, and the rank > 0.
fn check_lora_targets(spec: &ModelSpec, lora: &LoraInputs) -> Result<()> {
    if lora.rank == 0 {
        return Err(Error::Invalid(
            "onnx export: LoRA inputs need a rank > 0".into(),
        ));
    }
    let linear = hone_core::adapter::linear_modules(spec);
    for t in &lora.targets {
        if !linear.contains(t) {
            return Err(Error::Invalid(format!(
                "onnx export: LoRA target {} ({} -> {}) is not a linear module of this model",
                t.module_path, t.in_features, t.out_features
            )));
        }
    }
    Ok(())
}

/// Builds the node list and initializers, naming values uniquely.
struct Builder<'a> {
    weights: &'a WeightStore,
    precision: Precision,
    lora: Option<&'a LoraInputs>,
    nodes: Vec<Node>,
    initializers: Vec<Tensor>,
    /// Graph inputs beyond the standard ones (LoRA weights).
    extra_inputs: Vec<ValueInfo>,
    next: usize,
}

impl<'a> Builder<'a> {
    /// Add a node with explicit output names.
    fn node_out(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<Attribute>,
    ) {
        self.next += 1;
        self.nodes.push(Node {
            name: format!("{scope}/{op}_{}", self.next),
            op_type: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attributes,
        });
    }

    /// Add a one-output node; returns the output's name.
    fn op(&mut self, scope: &str, op: &str, inputs: &[&str], attributes: Vec<Attribute>) -> String {
        let out = format!("{scope}/{op}_{}/output_0", self.next + 1);
        self.node_out(scope, op, inputs, &[&out], attributes);
        out
    }

    fn init(&mut self, t: Tensor) -> String {
        let name = t.name.clone();
        self.initializers.push(t);
        name
    }

    /// An int64 constant (initializer), `dims` empty for a scalar.
    fn const_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        self.init(Tensor::i64(format!("const/{name}"), dims.to_vec(), values))
    }

    /// An f32 scalar constant.
    fn const_f32(&mut self, name: &str, value: f32) -> String {
        self.init(Tensor::f32(format!("const/{name}"), vec![], &[value]))
    }

    /// A weight as stored (HF layout), as an initializer named as in the store (fp32, or
    /// fp16 cast to fp32).
    fn weight(&mut self, name: &str) -> Result<String> {
        let t = self.weights.get(name)?;
        let dims = t.shape.iter().map(|&d| d as i64).collect();
        let values = t.to_f32();
        Ok(self.float_init(name.to_string(), dims, &values))
    }

    /// An fp32 initializer, or with `Precision::Fp16` an fp16 one and a Cast to fp32 (the
    /// returned name is the value to use either way).
    fn float_init(&mut self, name: String, dims: Vec<i64>, values: &[f32]) -> String {
        if self.precision != Precision::Fp16 {
            return self.init(Tensor::f32(name, dims, values));
        }
        let half = self.init(Tensor::f16(format!("{name}.fp16"), dims, values));
        let out = name.clone();
        self.node_out(
            "/weights",
            "Cast",
            &[&half],
            &[&out],
            vec![Attribute::int("to", DataType::Float as i64)],
        );
        out
    }

    /// A `[out, in]` weight transposed to `[in, out]` for MatMul, named `{name}.T`.
    fn weight_t(&mut self, name: &str) -> Result<String> {
        let t = self.weights.get(name)?;
        if t.shape.len() != 2 {
            return Err(Error::tensor(
                &self.weights.source,
                name,
                format!("expected a matrix, found shape {:?}", t.shape),
            ));
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let tr = transpose_scaled(&t.to_f32(), rows, cols, 1.0);
        Ok(self.float_init(format!("{name}.T"), vec![cols as i64, rows as i64], &tr))
    }

    /// `x @ W^T (+ b)` for the HF linear `prefix` (weight `[out, in]`).
    fn linear(&mut self, scope: &str, x: &str, prefix: &str, bias: bool) -> Result<String> {
        let mut y = self.projection(scope, x, &format!("{prefix}.weight"))?;
        if let Some(lora) = self.lora {
            if let Some(t) = lora.target(prefix) {
                let rank = Dim::Param(lora_rank_dim(prefix));
                let a = self.lora_input(
                    lora_a_input(prefix),
                    [t.in_features, lora.rank],
                    [Dim::Value(t.in_features as i64), rank.clone()],
                );
                let b = self.lora_input(
                    lora_b_input(prefix),
                    [lora.rank, t.out_features],
                    [rank, Dim::Value(t.out_features as i64)],
                );
                let xa = self.op(scope, "MatMul", &[x, &a], vec![]);
                let delta = self.op(scope, "MatMul", &[&xa, &b], vec![]);
                y = self.op(scope, "Add", &[&y, &delta], vec![]);
            }
        }
        if bias {
            let b = self.weight(&format!("{prefix}.bias"))?;
            Ok(self.op(scope, "Add", &[&y, &b], vec![]))
        } else {
            Ok(y)
        }
    }

    /// `x · Wᵀ` for the `[out, in]` weight `name`: MatMul on the fp32 transpose, or with
    /// `Precision::Int4` (and `in` a multiple of 32) MatMulNBits on 4-bit blocks.
    fn projection(&mut self, scope: &str, x: &str, name: &str) -> Result<String> {
        let t = self.weights.get(name)?;
        if self.precision != Precision::Int4 || !int4::fits(t) {
            let w = self.weight_t(name)?;
            return Ok(self.op(scope, "MatMul", &[x, &w], vec![]));
        }
        let q = int4::quantize(t)?;
        let (n, k, nb) = (q.n as i64, q.k as i64, q.blocks_per_row() as i64);
        let packed = self.init(Tensor::u8(
            format!("{name}.int4"),
            vec![n, nb, 16],
            q.packed,
        ));
        let scales = self.init(Tensor::f32(
            format!("{name}.scales"),
            vec![n * nb],
            &q.scales,
        ));
        let mut inputs = vec![x.to_string(), packed, scales];
        let mut offsets = None;
        match q.zero_points {
            ZeroPoints::Eight => {}
            ZeroPoints::Offsets(o) => offsets = Some(o),
            ZeroPoints::Packed(z) => {
                let len = z.len() as i64;
                inputs.push(self.init(Tensor::u8(format!("{name}.zero_points"), vec![len], z)))
            }
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.ms_op(
            scope,
            "MatMulNBits",
            &refs,
            vec![
                Attribute::int("K", k),
                Attribute::int("N", n),
                Attribute::int("bits", 4),
                Attribute::int("block_size", int4::BLOCK as i64),
            ],
        );
        let Some(offsets) = offsets else {
            return Ok(y);
        };
        // + Σ_b (Σ_{k in block b} x[k]) · offset[n, b]
        let blocks_shape = self.init(Tensor::i64(
            format!("{name}.block_shape"),
            vec![4],
            &[0, 0, nb, int4::BLOCK as i64],
        ));
        let axis = self.init(Tensor::i64(format!("{name}.block_axis"), vec![1], &[-1]));
        let offsets_t = transpose_scaled(&offsets, n as usize, nb as usize, 1.0);
        let offsets_t = self.init(Tensor::f32(
            format!("{name}.offsets.T"),
            vec![nb, n],
            &offsets_t,
        ));
        let xb = self.op(scope, "Reshape", &[x, &blocks_shape], vec![]);
        let sums = self.op(
            scope,
            "ReduceSum",
            &[&xb, &axis],
            vec![Attribute::int("keepdims", 0)],
        );
        let shift = self.op(scope, "MatMul", &[&sums, &offsets_t], vec![]);
        Ok(self.op(scope, "Add", &[&y, &shift], vec![]))
    }

    /// An ONNX Runtime contrib op (com.microsoft) with one output.
    fn ms_op(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attributes: Vec<Attribute>,
    ) -> String {
        let out = self.op(scope, op, inputs, attributes);
        if let Some(node) = self.nodes.last_mut() {
            node.domain = MS_DOMAIN.into();
        }
        out
    }

    /// A float graph input `name` with a zero-filled initializer of `shape` as its default.
    fn lora_input(&mut self, name: String, shape: [usize; 2], dims: [Dim; 2]) -> String {
        self.extra_inputs.push(ValueInfo {
            name: name.clone(),
            elem_type: DataType::Float,
            dims: dims.to_vec(),
        });
        let zeros = vec![0f32; shape[0] * shape[1]];
        self.init(Tensor::f32(
            name,
            shape.iter().map(|&d| d as i64).collect(),
            &zeros,
        ))
    }

    /// RMSNorm over the last axis: `x / sqrt(mean(x^2) + eps) * w`.
    fn rmsnorm(&mut self, scope: &str, x: &str, weight: &str, eps: &str) -> Result<String> {
        let w = self.weight(weight)?;
        let sq = self.op(scope, "Mul", &[x, x], vec![]);
        let ms = self.op(
            scope,
            "ReduceMean",
            &[&sq],
            vec![
                Attribute::ints("axes", &[-1]),
                Attribute::int("keepdims", 1),
            ],
        );
        let var = self.op(scope, "Add", &[&ms, eps], vec![]);
        let std = self.op(scope, "Sqrt", &[&var], vec![]);
        let xn = self.op(scope, "Div", &[x, &std], vec![]);
        Ok(self.op(scope, "Mul", &[&xn, &w], vec![]))
    }
}

/// Constants shared by every layer.
struct Shared {
    eps: String,
    /// `[0, 0, heads, head_dim]` reshape targets for query and key/value heads.
    q_heads_shape: String,
    kv_heads_shape: String,
    /// `[0, 0, q_dim]`.
    merge_shape: String,
    /// `[1, 1, group, 1, 1]` and `[0, num_heads, -1, head_dim]` (GQA repeat), when group > 1.
    repeat_shape: Option<(String, String)>,
    axis2: String,
    half_start: String,
    half_end: String,
    full_end: String,
    axis3: String,
    scale: String,
    /// `[batch, 1, seq, head_dim]`.
    cos: String,
    sin: String,
    /// Additive mask `[batch, 1, seq, total_seq]`.
    mask: String,
}

fn build_graph(spec: &ModelSpec, weights: &WeightStore, opts: &ExportOptions) -> Result<Graph> {
    let (h, nh, kvh, d) = (
        spec.hidden_size as i64,
        spec.num_attention_heads as i64,
        spec.num_key_value_heads as i64,
        spec.head_dim as i64,
    );
    let half = d / 2;
    let group = nh / kvh;
    let vocab = spec.vocab_size as i64;
    let mut b = Builder {
        weights,
        precision: opts.precision,
        lora: opts.lora.as_ref(),
        nodes: Vec::new(),
        initializers: Vec::new(),
        extra_inputs: Vec::new(),
        next: 0,
    };

    let param = |s: &str| Dim::Param(s.into());
    let mut inputs = vec![
        ValueInfo {
            name: "input_ids".into(),
            elem_type: DataType::Int64,
            dims: vec![param("batch_size"), param("sequence_length")],
        },
        ValueInfo {
            name: "attention_mask".into(),
            elem_type: DataType::Int64,
            dims: vec![param("batch_size"), param("total_sequence_length")],
        },
        ValueInfo {
            name: "position_ids".into(),
            elem_type: DataType::Int64,
            dims: vec![param("batch_size"), param("sequence_length")],
        },
    ];
    let mut outputs = vec![ValueInfo {
        name: "logits".into(),
        elem_type: DataType::Float,
        dims: vec![
            param("batch_size"),
            param("sequence_length"),
            Dim::Value(vocab),
        ],
    }];
    let kv_dims = |len: &str| {
        vec![
            param("batch_size"),
            Dim::Value(kvh),
            param(len),
            Dim::Value(d),
        ]
    };
    for l in 0..spec.num_hidden_layers {
        for kind in ["key", "value"] {
            inputs.push(ValueInfo {
                name: format!("past_key_values.{l}.{kind}"),
                elem_type: DataType::Float,
                dims: kv_dims("past_sequence_length"),
            });
            outputs.push(ValueInfo {
                name: format!("present.{l}.{kind}"),
                elem_type: DataType::Float,
                dims: kv_dims("total_sequence_length"),
            });
        }
    }

    // Embedding.
    let embed = b.weight("model.embed_tokens.weight")?;
    let mut x = b.op(
        "/model/embed_tokens",
        "Gather",
        &[&embed, "input_ids"],
        vec![Attribute::int("axis", 0)],
    );

    // Rotary tables from position_ids: angle = position * inv_freq, halves repeated (HF).
    let sc = "/model/rotary_emb";
    let inv_freq = b.init(Tensor::f32(
        "model.rotary_emb.inv_freq",
        vec![half],
        &spec.rope_inv_freq(),
    ));
    let axes_last2 = b.const_i64("axes_2", &[1], &[2]);
    let axes_1 = b.const_i64("axes_1", &[1], &[1]);
    let axes_0 = b.const_i64("axes_0", &[1], &[0]);
    let pos_f = b.op(
        sc,
        "Cast",
        &["position_ids"],
        vec![Attribute::int("to", DataType::Float as i64)],
    );
    let pos3 = b.op(sc, "Unsqueeze", &[&pos_f, &axes_last2], vec![]);
    let angles = b.op(sc, "Mul", &[&pos3, &inv_freq], vec![]);
    let mut tables = Vec::new();
    for f in ["Cos", "Sin"] {
        let t = b.op(sc, f, &[&angles], vec![]);
        let full = b.op(sc, "Concat", &[&t, &t], vec![Attribute::int("axis", -1)]);
        tables.push(b.op(sc, "Unsqueeze", &[&full, &axes_1], vec![]));
    }
    let sin = tables.pop().unwrap_or_default();
    let cos = tables.pop().unwrap_or_default();

    // Causal + padding mask over key slots.
    let sc = "/model/attn_mask";
    let s_len = b.op(
        sc,
        "Shape",
        &["input_ids"],
        vec![Attribute::int("start", 1), Attribute::int("end", 2)],
    );
    let t_len = b.op(
        sc,
        "Shape",
        &["attention_mask"],
        vec![Attribute::int("start", 1), Attribute::int("end", 2)],
    );
    let s_sc = b.op(sc, "Squeeze", &[&s_len, &axes_0], vec![]);
    let t_sc = b.op(sc, "Squeeze", &[&t_len, &axes_0], vec![]);
    let p_sc = b.op(sc, "Sub", &[&t_sc, &s_sc], vec![]);
    let zero = b.const_i64("zero", &[], &[0]);
    let one = b.const_i64("one", &[], &[1]);
    let key_idx = b.op(sc, "Range", &[&zero, &t_sc, &one], vec![]);
    let query_idx = b.op(sc, "Range", &[&p_sc, &t_sc, &one], vec![]);
    let key_row = b.op(sc, "Unsqueeze", &[&key_idx, &axes_0], vec![]);
    let query_col = b.op(sc, "Unsqueeze", &[&query_idx, &axes_1], vec![]);
    let causal = b.op(sc, "LessOrEqual", &[&key_row, &query_col], vec![]);
    let pad_bool = b.op(
        sc,
        "Cast",
        &["attention_mask"],
        vec![Attribute::int("to", DataType::Bool as i64)],
    );
    let axes_12 = b.const_i64("axes_1_2", &[2], &[1, 2]);
    let pad4 = b.op(sc, "Unsqueeze", &[&pad_bool, &axes_12], vec![]);
    let allowed = b.op(sc, "And", &[&pad4, &causal], vec![]);
    let zero_f = b.const_f32("mask_zero", 0.0);
    let neg_f = b.const_f32("mask_min", f32::MIN);
    let mask = b.op(sc, "Where", &[&allowed, &zero_f, &neg_f], vec![]);

    let shared = Shared {
        eps: b.const_f32("rms_norm_eps", spec.rms_norm_eps as f32),
        q_heads_shape: b.const_i64("q_heads_shape", &[4], &[0, 0, nh, d]),
        kv_heads_shape: b.const_i64("kv_heads_shape", &[4], &[0, 0, kvh, d]),
        merge_shape: b.const_i64("merge_shape", &[3], &[0, 0, nh * d]),
        repeat_shape: if group > 1 {
            Some((
                b.const_i64("kv_expand_shape", &[5], &[1, 1, group, 1, 1]),
                b.const_i64("kv_repeat_shape", &[4], &[0, nh, -1, d]),
            ))
        } else {
            None
        },
        axis2: axes_last2.clone(),
        half_start: b.const_i64("half_start", &[1], &[0]),
        half_end: b.const_i64("half_end", &[1], &[half]),
        full_end: b.const_i64("full_end", &[1], &[d]),
        axis3: b.const_i64("axes_3", &[1], &[3]),
        scale: b.const_f32("attn_scale", 1.0 / (spec.head_dim as f32).sqrt()),
        cos,
        sin,
        mask,
    };

    for l in 0..spec.num_hidden_layers {
        x = layer(&mut b, spec, &shared, l, &x)?;
    }

    // Final norm and lm_head (tied: the embedding itself, via Gemm with transB).
    let sc = "/model/norm";
    let xn = b.rmsnorm(sc, &x, "model.norm.weight", &shared.eps)?;
    let sc = "/lm_head";
    let flat_shape = b.const_i64("flat_shape", &[2], &[-1, h]);
    let flat = b.op(sc, "Reshape", &[&xn, &flat_shape], vec![]);
    let head = if spec.tie_word_embeddings {
        embed.clone()
    } else {
        b.weight("lm_head.weight")?
    };
    let logits2 = b.op(
        sc,
        "Gemm",
        &[&flat, &head],
        vec![Attribute::int("transB", 1)],
    );
    let ids_shape = b.op(sc, "Shape", &["input_ids"], vec![]);
    let vocab_c = b.const_i64("vocab", &[1], &[vocab]);
    let out_shape = b.op(
        sc,
        "Concat",
        &[&ids_shape, &vocab_c],
        vec![Attribute::int("axis", 0)],
    );
    b.node_out(sc, "Reshape", &[&logits2, &out_shape], &["logits"], vec![]);

    inputs.append(&mut b.extra_inputs);
    Ok(Graph {
        name: format!("hone_{}_decoder", spec.architecture.model_type()),
        nodes: b.nodes,
        initializers: b.initializers,
        inputs,
        outputs,
    })
}

/// `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]`.
fn split_heads(b: &mut Builder, scope: &str, x: &str, shape: &str) -> String {
    let r = b.op(scope, "Reshape", &[x, shape], vec![]);
    b.op(
        scope,
        "Transpose",
        &[&r],
        vec![Attribute::ints("perm", &[0, 2, 1, 3])],
    )
}

/// HF rotary embedding: `x * cos + rotate_half(x) * sin`, `rotate_half(x) = [-x2, x1]`.
fn rope(b: &mut Builder, scope: &str, x: &str, s: &Shared) -> String {
    let x1 = b.op(
        scope,
        "Slice",
        &[x, &s.half_start, &s.half_end, &s.axis3],
        vec![],
    );
    let x2 = b.op(
        scope,
        "Slice",
        &[x, &s.half_end, &s.full_end, &s.axis3],
        vec![],
    );
    let neg = b.op(scope, "Neg", &[&x2], vec![]);
    let rot = b.op(
        scope,
        "Concat",
        &[&neg, &x1],
        vec![Attribute::int("axis", -1)],
    );
    let a = b.op(scope, "Mul", &[x, &s.cos], vec![]);
    let c = b.op(scope, "Mul", &[&rot, &s.sin], vec![]);
    b.op(scope, "Add", &[&a, &c], vec![])
}

/// Repeat each key/value head `group` times: `[B, kv, T, D]` -> `[B, heads, T, D]`.
fn repeat_kv(b: &mut Builder, scope: &str, x: &str, s: &Shared) -> String {
    match &s.repeat_shape {
        None => x.to_string(),
        Some((expand, reshape)) => {
            let u = b.op(scope, "Unsqueeze", &[x, &s.axis2], vec![]);
            let e = b.op(scope, "Expand", &[&u, expand], vec![]);
            b.op(scope, "Reshape", &[&e, reshape], vec![])
        }
    }
}

/// One decoder layer; returns the new residual stream.
fn layer(b: &mut Builder, spec: &ModelSpec, s: &Shared, l: usize, x: &str) -> Result<String> {
    let p = format!("model.layers.{l}");
    let sc = format!("/model/layers.{l}/attn");
    let sc = sc.as_str();
    let bias = spec.has_qkv_bias();

    let xn = b.rmsnorm(sc, x, &format!("{p}.input_layernorm.weight"), &s.eps)?;
    let q = b.linear(sc, &xn, &format!("{p}.self_attn.q_proj"), bias)?;
    let k = b.linear(sc, &xn, &format!("{p}.self_attn.k_proj"), bias)?;
    let v = b.linear(sc, &xn, &format!("{p}.self_attn.v_proj"), bias)?;
    let q = split_heads(b, sc, &q, &s.q_heads_shape);
    let k = split_heads(b, sc, &k, &s.kv_heads_shape);
    let v = split_heads(b, sc, &v, &s.kv_heads_shape);
    let q = rope(b, sc, &q, s);
    let k = rope(b, sc, &k, s);

    let present_k = format!("present.{l}.key");
    let present_v = format!("present.{l}.value");
    let past_k = format!("past_key_values.{l}.key");
    let past_v = format!("past_key_values.{l}.value");
    let axis2 = vec![Attribute::int("axis", 2)];
    b.node_out(sc, "Concat", &[&past_k, &k], &[&present_k], axis2.clone());
    b.node_out(sc, "Concat", &[&past_v, &v], &[&present_v], axis2);
    let k_all = repeat_kv(b, sc, &present_k, s);
    let v_all = repeat_kv(b, sc, &present_v, s);

    let kt = b.op(
        sc,
        "Transpose",
        &[&k_all],
        vec![Attribute::ints("perm", &[0, 1, 3, 2])],
    );
    let scores = b.op(sc, "MatMul", &[&q, &kt], vec![]);
    let scores = b.op(sc, "Mul", &[&scores, &s.scale], vec![]);
    let scores = b.op(sc, "Add", &[&scores, &s.mask], vec![]);
    let probs = b.op(sc, "Softmax", &[&scores], vec![Attribute::int("axis", -1)]);
    let att = b.op(sc, "MatMul", &[&probs, &v_all], vec![]);
    let att = b.op(
        sc,
        "Transpose",
        &[&att],
        vec![Attribute::ints("perm", &[0, 2, 1, 3])],
    );
    let att = b.op(sc, "Reshape", &[&att, &s.merge_shape], vec![]);
    let o = b.linear(
        sc,
        &att,
        &format!("{p}.self_attn.o_proj"),
        spec.has_o_bias(),
    )?;
    let x = b.op(sc, "Add", &[x, &o], vec![]);

    let sc = format!("/model/layers.{l}/mlp");
    let sc = sc.as_str();
    let xn = b.rmsnorm(
        sc,
        &x,
        &format!("{p}.post_attention_layernorm.weight"),
        &s.eps,
    )?;
    let gate = b.linear(sc, &xn, &format!("{p}.mlp.gate_proj"), spec.mlp_bias)?;
    let up = b.linear(sc, &xn, &format!("{p}.mlp.up_proj"), spec.mlp_bias)?;
    let sig = b.op(sc, "Sigmoid", &[&gate], vec![]);
    let act = b.op(sc, "Mul", &[&gate, &sig], vec![]);
    let hmid = b.op(sc, "Mul", &[&act, &up], vec![]);
    let down = b.linear(sc, &hmid, &format!("{p}.mlp.down_proj"), spec.mlp_bias)?;
    Ok(b.op(sc, "Add", &[&x, &down], vec![]))
}
