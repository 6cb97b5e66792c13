//! Named tensors that stay where they were loaded: memory-mapped file bytes (natively) or an
//! owned buffer (wasm, or tensors that had to be rearranged), in their stored type
//! (f32/f16/bf16 or a GGUF block-quantized type).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Storage type of a tensor. Quantized types store blocks of `block_size()` values in
/// `type_size()` bytes along the innermost (contiguous) dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

impl DType {
    /// Every supported type, for error messages and tests.
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// Values per block (1 for plain float types).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::Q4K | DType::Q5K | DType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
        }
    }

    /// Whether this is a block-quantized type.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes needed for `n` values (n must be a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// GGML type id (as in GGUF tensor infos).
    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q4K => 12,
            DType::Q5K => 13,
            DType::Q6K => 14,
            DType::BF16 => 30,
        }
    }

    /// From a GGML type id.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        DType::ALL.iter().copied().find(|d| d.ggml_id() == id)
    }

    /// Human name of a GGML type id, supported or not (for error messages).
    pub fn ggml_name(id: u32) -> String {
        const NAMES: [&str; 42] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
            "?",
            "?",
        ];
        match NAMES.get(id as usize) {
            Some(n) if *n != "?" => format!("{n} (ggml type {id})"),
            _ => format!("ggml type {id}"),
        }
    }

    /// Names of the supported types, comma separated.
    pub fn supported_list() -> String {
        DType::ALL
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q4K => "Q4_K",
            DType::Q5K => "Q5_K",
            DType::Q6K => "Q6_K",
        };
        f.write_str(s)
    }
}

/// A cheap-to-clone view into shared bytes (a memory map or an owned buffer).
#[derive(Clone)]
pub struct Bytes {
    backing: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl Bytes {
    /// Wrap a whole backing buffer.
    pub fn new(backing: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Self {
        let len = (*backing).as_ref().len();
        Bytes {
            backing,
            start: 0,
            len,
        }
    }
    /// Own a vector.
    pub fn from_vec(v: Vec<u8>) -> Self {
        Bytes::new(Arc::new(v))
    }
    /// A sub-view; `None` when out of range.
    pub fn slice(&self, start: usize, len: usize) -> Option<Bytes> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Bytes {
            backing: self.backing.clone(),
            start: self.start + start,
            len,
        })
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.backing).as_ref()[self.start..self.start + self.len]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.len)
    }
}

/// One named tensor: HF name, shape in PyTorch order (`[out, in]` for a Linear weight), stored
/// type and its bytes (row-major, innermost dimension contiguous).
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Bytes,
}

impl TensorEntry {
    /// Build an entry, checking that the byte length matches shape and type.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        dtype: DType,
        data: Bytes,
    ) -> Result<Self> {
        let name = name.into();
        let n: usize = shape.iter().product();
        let row = *shape.last().unwrap_or(&1);
        if dtype.is_quantized() && !row.is_multiple_of(dtype.block_size()) {
            return Err(Error::Invalid(format!(
                "tensor '{name}': row length {row} is not a multiple of the {dtype} block size {}",
                dtype.block_size()
            )));
        }
        let want = dtype
            .bytes_for(n)
            .ok_or_else(|| Error::Invalid(format!("tensor '{name}': size overflow")))?;
        if want != data.len() {
            return Err(Error::Invalid(format!(
                "tensor '{name}': shape {shape:?} of {dtype} needs {want} bytes, got {}",
                data.len()
            )));
        }
        Ok(TensorEntry {
            name,
            shape,
            dtype,
            data,
        })
    }

    /// An f32 tensor from values.
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let mut v = Vec::with_capacity(values.len() * 4);
        for x in values {
            v.extend_from_slice(&x.to_le_bytes());
        }
        TensorEntry::new(name, shape, DType::F32, Bytes::from_vec(v))
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Length of one row (innermost dimension).
    pub fn row_len(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Number of rows (all but the innermost dimension).
    pub fn n_rows(&self) -> usize {
        self.numel() / self.row_len().max(1)
    }
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.row_len() / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Dequantize rows `[row_start, row_start + out.len() / row_len)` into `out`.
    pub fn dequantize_rows(&self, row_start: usize, out: &mut [f32]) {
        let rl = self.row_len();
        assert!(
            out.len().is_multiple_of(rl),
            "output is not a whole number of rows"
        );
        let n_rows = out.len() / rl;
        assert!(row_start + n_rows <= self.n_rows(), "rows out of range");
        let rb = self.row_bytes();
        let bytes = &self.data.as_slice()[row_start * rb..(row_start + n_rows) * rb];
        crate::quant::dequantize(self.dtype, bytes, out);
    }

    /// The whole tensor as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        crate::quant::dequantize(self.dtype, self.data.as_slice(), &mut out);
        out
    }
}

/// The tensors of one model, by HF name, with the file they came from (for errors).
#[derive(Debug, Clone, Default)]
pub struct WeightStore {
    pub source: PathBuf,
    pub tensors: BTreeMap<String, TensorEntry>,
}

impl WeightStore {
    /// An empty store for tensors read from `source`.
    pub fn new(source: impl AsRef<Path>) -> Self {
        WeightStore {
            source: source.as_ref().to_path_buf(),
            tensors: BTreeMap::new(),
        }
    }
    /// Add (or replace) a tensor.
    pub fn insert(&mut self, t: TensorEntry) {
        self.tensors.insert(t.name.clone(), t);
    }
    /// A tensor by HF name, or an error that names it and the source file.
    pub fn get(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::tensor(&self.source, name, "missing from the model file"))
    }
    /// A tensor by HF name, if present.
    pub fn try_get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }
    /// Check that every tensor `spec` needs is present with the right shape.
    pub fn check_against(&self, spec: &crate::spec::ModelSpec) -> Result<()> {
        for (name, shape) in spec.expected_tensors() {
            let t = self.get(&name)?;
            if t.shape != shape {
                return Err(Error::tensor(
                    &self.source,
                    &name,
                    format!(
                        "shape {:?}, expected {:?} from the model config",
                        t.shape, shape
                    ),
                ));
            }
        }
        Ok(())
    }
    /// Total stored bytes.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }
}
