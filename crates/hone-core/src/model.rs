//! A loaded model: spec + weights + tokenizer + chat template, from a GGUF file or HF folder.
//! (Stub: integration.)

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::spec::ModelSpec;
use crate::tensor::WeightStore;
use crate::tokenizer::Tokenizer;

/// Where a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Gguf,
    HfFolder,
}

/// Defaults from generation_config.json (or GGUF metadata), all optional.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationDefaults {
    pub eos_token_id: Vec<u32>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

/// A model ready to run: everything an engine needs, nothing engine-specific.
#[derive(Clone)]
pub struct Model {
    pub source: PathBuf,
    pub format: SourceFormat,
    pub spec: ModelSpec,
    pub weights: WeightStore,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub generation: GenerationDefaults,
}

/// Load a model from a GGUF file or an HF folder.
pub fn load_model(path: &Path) -> Result<Model> {
    let _ = path;
    todo!()
}
