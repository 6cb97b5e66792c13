//! GGUF v2/v3: metadata, tensor index, tensor data; mapping of GGUF names and layouts to HF.
//!
//! - [`GgufFile::open`] / [`GgufFile::from_bytes`] parse and validate a file (`read.rs`);
//!   tensor data stay in the memory map (natively) or the caller's buffer.
//! - [`GgufFile::model_spec`] builds a [`ModelSpec`] from `{arch}.*` metadata (`arch.rs`).
//! - [`GgufFile::weights`] returns every tensor under its HF name in HF layout (`names.rs`):
//!   zero-copy views, except llama q/k projections whose rows llama.cpp's converter permuted.
//! - [`write::write_gguf`] writes v3 files (tests, tiny fixtures, export).

mod arch;
mod names;
mod read;
pub mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::ModelSpec;
use crate::tensor::{Bytes, DType, TensorEntry, WeightStore};

pub use names::{
    gguf_to_hf_name, hf_to_gguf_name, permute_rows_for_gguf, rope_permute_heads,
    unpermute_rows_from_gguf,
};
pub use write::{encode_gguf, write_gguf, GgufTensorView};

/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF value type id (`gguf_type`) of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// Name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Any integer type as i128 (every GGUF integer fits), else `None`.
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A non-negative integer of any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// An integer of any integer type that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// A number (float or integer) as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// A bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array's elements.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the GGUF tensor index (GGUF name, dims in GGUF order: ne[0] innermost).
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The storage type, if hone supports it.
    pub fn dtype(&self) -> Option<DType> {
        DType::from_ggml_id(self.ggml_type)
    }

    /// Shape in PyTorch order (GGUF dims reversed), if every dim fits in usize.
    pub fn shape(&self) -> Option<Vec<usize>> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).ok())
            .collect()
    }

    /// Stored bytes, for a supported type whose rows are whole blocks (`None` otherwise or on
    /// overflow).
    pub fn n_bytes(&self) -> Option<usize> {
        let dtype = self.dtype()?;
        let row = usize::try_from(*self.dims.first().unwrap_or(&1)).ok()?;
        if row % dtype.block_size() != 0 {
            return None;
        }
        let n = self
            .shape()?
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        dtype.bytes_for(n)
    }
}

/// A parsed GGUF file: metadata, tensor index and the tensor data region.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// Bytes of the data section (tensor offsets are relative to its start).
    pub data: Bytes,
}

impl GgufFile {
    /// Open and parse a GGUF file (memory-mapped natively; the file must not be modified
    /// while tensors from it are alive).
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read::load_file(path)?;
        read::parse(bytes, path)
    }

    /// Parse GGUF from bytes already in memory (wasm, tests); `path` names it in errors.
    pub fn from_bytes(bytes: Bytes, path: &Path) -> Result<Self> {
        read::parse(bytes, path)
    }

    /// The model spec, from `general.architecture` and `{arch}.*` keys.
    pub fn model_spec(&self) -> Result<ModelSpec> {
        arch::model_spec(self)
    }

    /// All tensors with HF names and HF layouts (llama q/k rows un-permuted). Tensors with no
    /// HF counterpart (e.g. llama 3's `rope_freqs.weight`, which `model_spec` turns into
    /// `rope_scaling`) are skipped.
    pub fn weights(&self, spec: &ModelSpec) -> Result<WeightStore> {
        names::weights(self, spec)
    }

    /// `tokenizer.chat_template`, if present.
    pub fn chat_template(&self) -> Option<String> {
        self.get_str("tokenizer.chat_template").map(str::to_string)
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A string metadata value by key (`None` if absent or not a string).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// A required non-negative integer (any integer type): `MissingField` if absent,
    /// `InvalidField` if of another type or negative.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::missing(&self.path, key))?;
        v.as_u64().ok_or_else(|| {
            Error::invalid_field(
                &self.path,
                key,
                format!("expected a non-negative integer, found {}", describe(v)),
            )
        })
    }

    /// An optional non-negative integer (any integer type): `InvalidField` if of another type.
    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.require_u64(key).map(Some),
        }
    }

    /// An optional number (float or integer type): `InvalidField` if of another type.
    pub fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::invalid_field(
                    &self.path,
                    key,
                    format!("expected a number, found {}", describe(v)),
                )
            }),
        }
    }

    /// `general.alignment`, or 32 when absent (validated when the file was parsed).
    pub fn alignment(&self) -> u64 {
        self.get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// A tensor's index entry by GGUF name.
    pub fn tensor_info(&self, gguf_name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == gguf_name)
    }

    /// A tensor as stored (GGUF name, PyTorch-order shape, GGUF row layout), as a view into
    /// the file's bytes. `UnsupportedTensorType` for types hone cannot read.
    pub fn tensor(&self, gguf_name: &str) -> Result<TensorEntry> {
        let info = self
            .tensor_info(gguf_name)
            .ok_or_else(|| Error::tensor(&self.path, gguf_name, "missing from the GGUF file"))?;
        self.entry(info, gguf_name)
    }

    /// The entry for `info`, named `name`.
    pub(crate) fn entry(&self, info: &GgufTensorInfo, name: &str) -> Result<TensorEntry> {
        let dtype = info.dtype().ok_or_else(|| Error::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ty: DType::ggml_name(info.ggml_type),
            supported: DType::supported_list(),
        })?;
        // Sizes and ranges were checked at parse time; these errors guard hand-built values.
        let shape = info
            .shape()
            .ok_or_else(|| Error::tensor(&self.path, &info.name, "dims overflow"))?;
        let range = info.n_bytes().and_then(|n| {
            let start = usize::try_from(info.offset).ok()?;
            self.data.slice(start, n)
        });
        let data = range.ok_or_else(|| {
            Error::tensor(
                &self.path,
                &info.name,
                "data range is invalid or past the end of the file",
            )
        })?;
        TensorEntry::new(name, shape, dtype, data)
            .map_err(|e| Error::tensor(&self.path, &info.name, e.to_string()))
    }
}

/// A short description of a metadata value for error messages (type and, for scalars, value).
fn describe(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) if s.len() <= 40 => format!("string {s:?}"),
        MetaValue::String(_) => "a long string".to_string(),
        MetaValue::Array(a) => format!("an array of {} values", a.len()),
        other => format!("{} {other:?}", other.type_name()),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty folder under the system temp dir.
    pub fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "hone-gguf-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        d
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::temp_dir;
    use super::*;
    use crate::spec::Architecture;

    fn kv(k: &str, v: MetaValue) -> (String, MetaValue) {
        (k.to_string(), v)
    }

    /// A tiny model's metadata: hidden 64, 4 heads of 16, 2 kv heads, ffn 96, 2 layers.
    fn tiny_metadata(arch: &str) -> Vec<(String, MetaValue)> {
        use MetaValue::*;
        let k = |s: &str| format!("{arch}.{s}");
        vec![
            kv("general.architecture", String(arch.into())),
            kv(&k("embedding_length"), U32(64)),
            kv(&k("feed_forward_length"), U32(96)),
            kv(&k("block_count"), U32(2)),
            kv(&k("attention.head_count"), U32(4)),
            kv(&k("attention.head_count_kv"), U32(2)),
            kv(&k("attention.layer_norm_rms_epsilon"), F32(1e-6)),
            kv(&k("context_length"), U32(128)),
            kv(&k("vocab_size"), U32(40)),
            kv("tokenizer.chat_template", String("{{ messages }}".into())),
        ]
    }

    /// HF-named tensors of the tiny model with deterministic bytes, cycling through storage
    /// types (every row of 64 or 96 values is whole Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 blocks).
    fn tiny_hf_tensors(arch: Architecture) -> Vec<(String, Vec<usize>, DType, Vec<u8>)> {
        let mut spec = crate::spec::ModelSpec {
            architecture: arch,
            vocab_size: 40,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            max_position_embeddings: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            attention_bias: false,
            qkv_bias: true,
            mlp_bias: false,
            hidden_act: "silu".into(),
            bos_token_id: None,
            eos_token_id: vec![],
            pad_token_id: None,
        };
        spec.qkv_bias = true; // biases for both archs, to test llama bias un-permutation too
        let types = [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::F16,
            DType::BF16,
        ];
        spec.expected_tensors()
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let dtype = if shape.len() == 1 {
                    DType::F32
                } else {
                    types[i % types.len()]
                };
                let n = dtype.bytes_for(shape.iter().product()).unwrap();
                let data = (0..n).map(|j| ((j * 31 + i * 17) % 251) as u8).collect();
                (name, shape, dtype, data)
            })
            .collect()
    }

    /// Write the tiny model as llama.cpp would (GGUF names, q/k rows permuted for llama).
    fn write_tiny(arch: Architecture, path: &Path) -> Vec<(String, Vec<usize>, DType, Vec<u8>)> {
        let hf = tiny_hf_tensors(arch);
        let spec_for_perm = {
            let bytes = encode_gguf(&tiny_metadata(arch.model_type()), &[]).unwrap();
            GgufFile::from_bytes(Bytes::from_vec(bytes), path)
                .unwrap()
                .model_spec()
                .unwrap()
        };
        let stored: Vec<(String, Vec<usize>, DType, Vec<u8>)> = hf
            .iter()
            .map(|(name, shape, dtype, data)| {
                let data = match rope_permute_heads(&spec_for_perm, name) {
                    Some(n_head) => permute_rows_for_gguf(data, shape[0], n_head).unwrap(),
                    None => data.clone(),
                };
                (hf_to_gguf_name(name).unwrap(), shape.clone(), *dtype, data)
            })
            .collect();
        let views: Vec<GgufTensorView> = stored
            .iter()
            .map(|(n, s, d, b)| GgufTensorView::new(n, s, *d, b))
            .collect();
        write_gguf(path, &tiny_metadata(arch.model_type()), &views).unwrap();
        hf
    }

    #[test]
    fn llama_written_from_hf_layout_loads_back_identically() {
        let path = temp_dir("tiny-llama").join("tiny.gguf");
        let hf = write_tiny(Architecture::Llama, &path);
        let f = GgufFile::open(&path).unwrap();
        let spec = f.model_spec().unwrap();
        assert!(spec.qkv_bias && !spec.tie_word_embeddings && spec.vocab_size == 40);
        let w = f.weights(&spec).unwrap();
        w.check_against(&spec).unwrap();
        assert_eq!(w.tensors.len(), hf.len());
        for (name, shape, dtype, data) in &hf {
            let t = w.get(name).unwrap();
            assert_eq!((&t.shape, t.dtype), (shape, *dtype), "{name}");
            assert!(
                t.data.as_slice() == &data[..],
                "{name}: bytes differ after the round trip"
            );
        }
        // The file really holds permuted q/k rows (weights and biases), and nothing else moved.
        for (name, _, _, data) in &hf {
            let stored = f.tensor(&hf_to_gguf_name(name).unwrap()).unwrap();
            let permuted = name.contains("q_proj") || name.contains("k_proj");
            assert_eq!(stored.data.as_slice() != &data[..], permuted, "{name}");
        }
        assert_eq!(f.chat_template().as_deref(), Some("{{ messages }}"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn qwen2_is_not_permuted() {
        let path = temp_dir("tiny-qwen2").join("tiny.gguf");
        let hf = write_tiny(Architecture::Qwen2, &path);
        let f = GgufFile::open(&path).unwrap();
        let spec = f.model_spec().unwrap();
        let w = f.weights(&spec).unwrap();
        w.check_against(&spec).unwrap();
        for (name, _, _, data) in &hf {
            assert!(w.get(name).unwrap().data.as_slice() == &data[..], "{name}");
            let stored = f.tensor(&hf_to_gguf_name(name).unwrap()).unwrap();
            assert!(stored.data.as_slice() == &data[..], "{name}");
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn weights_name_unsupported_types_and_skip_unknown_tensors() {
        let f32s = [0u8; 64 * 4];
        let bytes = write::encode_raw(
            &tiny_metadata("llama"),
            &[
                write::RawTensor {
                    name: "rope_freqs.weight",
                    dims: vec![8],
                    ggml_type: 0,
                    data: &f32s[..32],
                },
                write::RawTensor {
                    name: "output_norm.weight",
                    dims: vec![64],
                    ggml_type: 0,
                    data: &f32s,
                },
            ],
        )
        .unwrap();
        let f = GgufFile::from_bytes(Bytes::from_vec(bytes), Path::new("x.gguf")).unwrap();
        let meta_only = encode_gguf(&tiny_metadata("llama"), &[]).unwrap();
        let spec = GgufFile::from_bytes(Bytes::from_vec(meta_only), Path::new("m.gguf"))
            .unwrap()
            .model_spec()
            .unwrap();
        let w = f.weights(&spec).unwrap();
        assert_eq!(
            w.tensors.keys().collect::<Vec<_>>(),
            vec!["model.norm.weight"]
        );
        let bytes = write::encode_raw(
            &tiny_metadata("llama"),
            &[write::RawTensor {
                name: "blk.1.ffn_up.weight",
                dims: vec![256, 1],
                ggml_type: 11,
                data: &[0u8; 110],
            }],
        )
        .unwrap();
        let f = GgufFile::from_bytes(Bytes::from_vec(bytes), Path::new("x.gguf")).unwrap();
        let err = f.weights(&spec).unwrap_err().to_string();
        assert!(
            err.contains("'blk.1.ffn_up.weight'") && err.contains("Q3_K (ggml type 11)"),
            "{err}"
        );
    }

    /// The SmolLM2 GGUF from `make models` (or `HONE_SMOLLM2_GGUF`).
    fn smollm2() -> GgufFile {
        let path = std::env::var_os("HONE_SMOLLM2_GGUF")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
            });
        assert!(
            path.exists(),
            "{} not found: run `make models` (or set HONE_SMOLLM2_GGUF)",
            path.display()
        );
        GgufFile::open(&path).unwrap()
    }

    #[test]
    fn smollm2_spec_and_weights() {
        let f = smollm2();
        assert_eq!(f.version, 3);
        let s = f.model_spec().unwrap();
        assert_eq!(s.architecture, Architecture::Llama);
        assert_eq!(
            (s.num_hidden_layers, s.hidden_size, s.intermediate_size),
            (30, 576, 1536)
        );
        assert_eq!(
            (s.num_attention_heads, s.num_key_value_heads, s.head_dim),
            (9, 3, 64)
        );
        assert_eq!((s.vocab_size, s.max_position_embeddings), (49152, 8192));
        assert!(s.tie_word_embeddings && !s.has_qkv_bias() && !s.mlp_bias);
        assert_eq!((s.rope_theta, s.rope_scaling.clone()), (100_000.0, None));
        assert_eq!(s.rms_norm_eps, 1e-5f32 as f64);
        assert_eq!(
            (s.bos_token_id, s.eos_token_id.clone(), s.pad_token_id),
            (Some(1), vec![2], Some(2))
        );
        assert!(f.chat_template().unwrap().contains("<|im_start|>"));

        let w = f.weights(&s).unwrap();
        w.check_against(&s).unwrap();
        assert_eq!(w.tensors.len(), 2 + 30 * 9);
        assert_eq!(
            w.get("model.embed_tokens.weight").unwrap().dtype,
            DType::Q8_0
        );
        assert_eq!(w.get("model.norm.weight").unwrap().dtype, DType::F32);
        let mapped = f.data.as_slice().as_ptr_range();
        for (name, t) in &w.tensors {
            let want = if name.ends_with("norm.weight") {
                DType::F32
            } else if name.contains("embed") {
                DType::Q8_0
            } else {
                DType::Q4_1
            };
            assert_eq!(t.dtype, want, "{name}");
            // Zero-copy views into the map, except the un-permuted q/k projections.
            let in_map = mapped.contains(&t.data.as_slice().as_ptr());
            let owned = name.contains("q_proj") || name.contains("k_proj");
            assert_eq!(in_map, !owned, "{name}");
        }
    }

    /// Layer-0 q/k rows as transformers loads them (it un-permutes llama.cpp's layout): the
    /// first 4 values of every row, from scripts/make_quant_fixtures.py. Exact equality: both
    /// sides dequantize Q4_1 with the same f32 operations.
    #[test]
    fn smollm2_q_k_rows_match_transformers() {
        let f = smollm2();
        let s = f.model_spec().unwrap();
        let w = f.weights(&s).unwrap();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/quant/smollm2_layer0_qk_first4.f32"
        );
        let want: Vec<f32> = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(want.len(), (576 + 192) * 4);
        let mut got = Vec::new();
        for proj in ["q_proj", "k_proj"] {
            let t = w
                .get(&format!("model.layers.0.self_attn.{proj}.weight"))
                .unwrap();
            let values = t.to_f32();
            for row in values.chunks_exact(t.row_len()) {
                got.extend_from_slice(&row[..4]);
            }
        }
        let diff: Vec<usize> = (0..want.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .collect();
        assert!(
            diff.is_empty(),
            "{} values differ, first at {}",
            diff.len(),
            diff[0]
        );
        // Without the un-permutation, rows would not match (guards the test itself).
        let raw = f.tensor("blk.0.attn_q.weight").unwrap().to_f32();
        assert_ne!(
            raw[576..580],
            want[4..8],
            "GGUF row 1 already equals HF row 1"
        );
    }
}
