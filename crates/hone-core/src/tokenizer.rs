//! Tokenizer glue over the `tokenizers` crate: from tokenizer.json or rebuilt from GGUF metadata.
//! (Stub: owned by the tokenizer work item.)

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::gguf::GgufFile;

/// A model's tokenizer plus the special tokens hone needs (bos/eos/pad, add_bos).
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub source: PathBuf,
    pub bos_token: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_token: Option<String>,
    /// All ids that end generation (eos, and e.g. `<|im_end|>`/`<|eot_id|>` when declared).
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// Whether `encode(.., add_special_tokens=true)` prepends bos.
    pub add_bos: bool,
}

impl Tokenizer {
    /// Load `tokenizer.json` (and, when `config` is given, special tokens from tokenizer_config.json).
    pub fn from_file(path: &Path, config: Option<&Path>) -> Result<Self> {
        let _ = (path, config);
        todo!()
    }
    /// Rebuild the tokenizer from GGUF `tokenizer.ggml.*` metadata (gpt2 BPE or llama SentencePiece).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let _ = gguf;
        todo!()
    }
    /// Token ids of `text`; with `add_special_tokens`, bos is prepended when the model wants it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let _ = (text, add_special_tokens);
        todo!()
    }
    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let _ = (ids, skip_special_tokens);
        todo!()
    }
    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
