//! GGUF v2/v3: metadata, tensor index, tensor data; mapping of GGUF names and layouts to HF.
//! (Stub: owned by the GGUF work item.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::spec::ModelSpec;
use crate::tensor::{Bytes, DType, WeightStore};

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

/// One entry of the GGUF tensor index (GGUF name, dims in GGUF order: ne[0] innermost).
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
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
    /// Open and parse a GGUF file (memory-mapped natively).
    pub fn open(path: &Path) -> Result<Self> {
        let _ = path;
        todo!()
    }
    /// Parse GGUF from bytes already in memory (wasm, tests); `path` names it in errors.
    pub fn from_bytes(bytes: Bytes, path: &Path) -> Result<Self> {
        let _ = (bytes, path);
        todo!()
    }
    /// The model spec, from `general.architecture` and `{arch}.*` keys.
    pub fn model_spec(&self) -> Result<ModelSpec> {
        todo!()
    }
    /// All tensors with HF names and HF layouts (llama q/k rows un-permuted).
    pub fn weights(&self, spec: &ModelSpec) -> Result<WeightStore> {
        let _ = spec;
        todo!()
    }
    /// `tokenizer.chat_template`, if present.
    pub fn chat_template(&self) -> Option<String> {
        todo!()
    }
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
}

#[allow(dead_code)]
fn _types(_: DType) {}
