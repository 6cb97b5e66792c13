//! `CpuSession`: a `CpuModel` with its `KvCache`, driven by the generation loop.

use hone_core::generate::CausalLm;
use hone_core::Result;

use crate::model::{CpuModel, KvCache};

/// A model and one sequence's KV cache.
#[derive(Debug)]
pub struct CpuSession {
    /// The model.
    pub model: CpuModel,
    /// The sequence's keys and values so far.
    pub cache: KvCache,
}

impl CpuSession {
    /// A session whose cache holds at most `max_len` positions (capped at the model's limit).
    pub fn new(model: CpuModel, max_len: usize) -> Self {
        let cache = model.new_cache(max_len);
        CpuSession { model, cache }
    }
}

impl CausalLm for CpuSession {
    fn vocab_size(&self) -> usize {
        self.model.spec().vocab_size
    }
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self
            .model
            .forward_last(tokens, &mut self.cache)?
            .into_last())
    }
    fn reset(&mut self) {
        self.cache.clear();
    }
    fn position(&self) -> usize {
        self.cache.len()
    }
    fn max_positions(&self) -> usize {
        self.cache.max_len()
    }
}
