//! Options shared by `finetune` and `eval`, and adapter loading shared by every command that
//! runs the model.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use hone_core::adapter::LoraAdapter;
use hone_core::Model;
use hone_cpu::CpuModel;
use serde::Serialize;

/// The model and how dataset rows become text (names as in `olive finetune`).
#[derive(Args, Serialize, Default)]
pub struct ModelDataArgs {
    /// GGUF file or Hugging Face model folder.
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    pub model_name_or_path: Option<String>,
    /// Dataset file: JSONL, JSON array, CSV/TSV or plain text.
    #[arg(short = 'd', long = "data_name", visible_alias = "data")]
    pub data_name: Option<String>,
    /// Dataset format when the extension does not say: jsonl, json, csv, tsv, text.
    #[arg(long = "data_format")]
    pub data_format: Option<String>,
    /// Template from row fields to text, e.g. "{phrase} -> {tone}".
    #[arg(long = "text_template")]
    pub text_template: Option<String>,
    /// Field holding the whole text.
    #[arg(long = "text_field")]
    pub text_field: Option<String>,
    /// Render rows with the model's chat template.
    #[arg(long = "use_chat_template", num_args = 0..=1, default_missing_value = "true")]
    pub use_chat_template: Option<bool>,
    /// Column with a conversation (with --use_chat_template).
    #[arg(long = "messages_field")]
    pub messages_field: Option<String>,
    /// System message for chat-formatted rows.
    #[arg(long = "system_prompt")]
    pub system_prompt: Option<String>,
    /// Longest sequence in tokens.
    #[arg(long = "max_seq_len")]
    pub max_seq_len: Option<usize>,
    /// Loss only on the completion (after the template's last placeholder) / assistant turns.
    #[arg(long = "completion_only", num_args = 0..=1, default_missing_value = "true")]
    pub completion_only: Option<bool>,
    /// Skip (and count) rows that do not fit the template instead of failing.
    #[arg(long = "skip_bad_rows", num_args = 0..=1, default_missing_value = "true")]
    pub skip_bad_rows: Option<bool>,
    /// Append eos to text-template examples.
    #[arg(long = "add_eos_token", num_args = 0..=1, default_missing_value = "true")]
    pub add_eos_token: Option<bool>,
}

/// Load the PEFT adapter in `dir` into `cpu`; a mismatch names the adapter, the model and the
/// tensor.
pub fn apply_adapter(cpu: &mut CpuModel, dir: &Path, model: &Model) -> Result<LoraAdapter> {
    let adapter = LoraAdapter::load_peft(dir)?;
    cpu.set_adapter(&adapter).with_context(|| {
        format!(
            "adapter {} does not fit model {}",
            dir.display(),
            model.source.display()
        )
    })?;
    Ok(adapter)
}

/// Load a PEFT adapter folder and check that it fits `model` (names the adapter and the model).
pub fn load_adapter_for(dir: &Path, model: &Model) -> Result<LoraAdapter> {
    let adapter = LoraAdapter::load_peft(dir)?;
    adapter.check_against(&model.spec).with_context(|| {
        format!(
            "adapter {} does not fit model {}",
            dir.display(),
            model.source.display()
        )
    })?;
    Ok(adapter)
}
