//! A loaded model: spec + weights + tokenizer + chat template, from a GGUF file or HF folder.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::hf::HfFolder;
use crate::spec::ModelSpec;
use crate::tensor::{Bytes, WeightStore};
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

impl Model {
    /// Token ids that end generation: the tokenizer's, the spec's and generation_config's.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        for &id in self
            .tokenizer
            .eos_ids
            .iter()
            .chain(&self.spec.eos_token_id)
            .chain(&self.generation.eos_token_id)
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Load a model from a GGUF file or an HF folder.
pub fn load_model(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        load_hf_folder(path)
    } else {
        load_gguf(GgufFile::open(path)?)
    }
}

/// Load a model from GGUF bytes already in memory (the browser); `name` names it in errors.
pub fn load_gguf_bytes(bytes: Bytes, name: &Path) -> Result<Model> {
    load_gguf(GgufFile::from_bytes(bytes, name)?)
}

fn load_gguf(file: GgufFile) -> Result<Model> {
    let spec = file.model_spec()?;
    let weights = file.weights(&spec)?;
    weights.check_against(&spec)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    check_vocab(&file.path, &spec, &tokenizer)?;
    let generation = GenerationDefaults {
        eos_token_id: spec.eos_token_id.clone(),
        ..Default::default()
    };
    Ok(Model {
        source: file.path.clone(),
        format: SourceFormat::Gguf,
        chat_template: file.chat_template(),
        spec,
        weights,
        tokenizer,
        generation,
    })
}

fn load_hf_folder(dir: &Path) -> Result<Model> {
    let folder = HfFolder::open(dir)?;
    folder.weights.check_against(&folder.spec)?;
    let tokenizer =
        Tokenizer::from_file(&folder.tokenizer_json, folder.tokenizer_config.as_deref())?;
    check_vocab(dir, &folder.spec, &tokenizer)?;
    Ok(Model {
        source: dir.to_path_buf(),
        format: SourceFormat::HfFolder,
        spec: folder.spec,
        weights: folder.weights,
        tokenizer,
        chat_template: folder.chat_template,
        generation: folder.generation,
    })
}

/// The tokenizer must not produce ids the embedding does not have.
fn check_vocab(path: &Path, spec: &ModelSpec, tok: &Tokenizer) -> Result<()> {
    if tok.vocab_size() > spec.vocab_size {
        return Err(Error::format(
            path,
            format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tok.vocab_size(),
                spec.vocab_size
            ),
        ));
    }
    Ok(())
}
