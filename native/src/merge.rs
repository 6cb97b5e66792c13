//! `hone merge`: fold a LoRA adapter into the base weights and write a Hugging Face folder
//! (safetensors, f32) that hone, transformers and vLLM load without PEFT.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use hone_core::adapter::LoraAdapter;
use hone_core::hf::{write_folder, FolderExtras, SpecialTokens};

/// Merge an adapter into its base model.
#[derive(Args)]
pub struct MergeArgs {
    /// Base model: GGUF file or Hugging Face folder.
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    model: PathBuf,
    /// PEFT adapter folder (e.g. OUTPUT/adapter).
    #[arg(long = "adapter_path", visible_alias = "adapter")]
    adapter_path: PathBuf,
    /// Output folder.
    #[arg(short = 'o', long = "output_path")]
    output_path: PathBuf,
    /// safetensors (an HF folder with f32 weights).
    #[arg(long, default_value = "safetensors")]
    format: String,
    /// Replace an existing output folder.
    #[arg(long)]
    overwrite: bool,
}

pub fn cmd_merge(a: MergeArgs) -> Result<()> {
    if a.format != "safetensors" {
        bail!(
            "--format {}: only safetensors (an HF folder) is written so far",
            a.format
        );
    }
    let out: &Path = &a.output_path;
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        if !a.overwrite {
            bail!(
                "{} exists and is not empty: choose another --output_path or pass --overwrite",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let model = hone_core::load_model(&a.model)?;
    let adapter = LoraAdapter::load_peft(&a.adapter_path)?;
    let (spec, weights) = adapter
        .merge_into(&model.spec, &model.weights)
        .with_context(|| {
            format!(
                "adapter {} does not fit model {}",
                a.adapter_path.display(),
                model.source.display()
            )
        })?;
    let tok = &model.tokenizer;
    let tokenizer_json = tok.to_json()?;
    let extras = FolderExtras {
        tokenizer_json: Some(&tokenizer_json),
        chat_template: model.chat_template.as_deref(),
        special_tokens: SpecialTokens {
            bos_token: tok.bos_token.clone(),
            eos_token: tok.eos_token.clone(),
            pad_token: tok.pad_id.and_then(|id| tok.id_to_token(id)),
            unk_token: None,
            add_bos_token: Some(tok.add_bos),
            add_eos_token: Some(false),
        },
        generation: Some(&model.generation),
    };
    write_folder(out, &spec, &weights, &extras)?;
    eprintln!(
        "[hone] merged {} LoRA pairs{} of {} into {} ({})",
        adapter.targets().len(),
        if adapter.config.modules_to_save.is_empty() {
            String::new()
        } else {
            format!(" and {:?}", adapter.config.modules_to_save)
        },
        a.adapter_path.display(),
        out.display(),
        if spec.tie_word_embeddings {
            "tied embeddings"
        } else {
            "untied head"
        }
    );
    Ok(())
}
