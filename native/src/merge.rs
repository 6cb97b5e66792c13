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
    /// safetensors (an HF folder) or gguf (one file; needs a GGUF base for its metadata).
    /// Merged matrices are f32; the others keep their stored type.
    #[arg(long, default_value = "safetensors")]
    format: String,
    /// Replace an existing output folder.
    #[arg(long)]
    overwrite: bool,
}

pub fn cmd_merge(a: MergeArgs) -> Result<()> {
    if a.format != "safetensors" && a.format != "gguf" {
        bail!("--format {}: use safetensors or gguf", a.format);
    }
    let out: &Path = &a.output_path;
    let occupied = if out.is_dir() {
        std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    } else {
        out.exists()
    };
    if occupied {
        if !a.overwrite {
            bail!(
                "{} exists and is not empty: choose another --output_path or pass --overwrite",
                out.display()
            );
        }
        if out.is_dir() {
            std::fs::remove_dir_all(out)
        } else {
            std::fs::remove_file(out)
        }
        .with_context(|| format!("removing {}", out.display()))?;
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
    if a.format == "gguf" {
        if model.format != hone_core::model::SourceFormat::Gguf {
            bail!(
                "--format gguf needs a GGUF base model (its tokenizer and metadata are copied); {} is an HF folder: use --format safetensors",
                model.source.display()
            );
        }
        let gguf = hone_core::gguf::GgufFile::open(&model.source)?;
        let meta: Vec<(String, hone_core::gguf::MetaValue)> = gguf
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        hone_core::fixtures::write_model_gguf(out, &spec, &weights, &meta)?;
        eprintln!(
            "[hone] merged {} LoRA pairs of {} into {}",
            adapter.targets().len(),
            a.adapter_path.display(),
            out.display()
        );
        return Ok(());
    }
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

/// Convert an adapter to another format.
#[derive(Args)]
pub struct ExportAdapterArgs {
    /// The base model the adapter belongs to (GGUF or HF folder).
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    model: PathBuf,
    /// PEFT adapter folder.
    #[arg(long = "adapter_path", visible_alias = "adapter")]
    adapter_path: PathBuf,
    /// gguf (llama.cpp LoRA, one file) or peft (a folder).
    #[arg(long)]
    format: String,
    /// Output file (gguf) or folder (peft).
    #[arg(short = 'o', long = "output_path")]
    output_path: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
}

pub fn cmd_export_adapter(a: ExportAdapterArgs) -> Result<()> {
    if a.output_path.exists() && !a.overwrite {
        bail!(
            "{} exists: choose another --output_path or pass --overwrite",
            a.output_path.display()
        );
    }
    let model = hone_core::load_model(&a.model)?;
    let adapter = LoraAdapter::load_peft(&a.adapter_path)?;
    let fits = |r: hone_core::Result<()>| {
        r.with_context(|| {
            format!(
                "adapter {} does not fit model {}",
                a.adapter_path.display(),
                model.source.display()
            )
        })
    };
    match a.format.as_str() {
        "gguf" => fits(adapter.save_gguf_lora(&a.output_path, &model.spec))?,
        "peft" => {
            fits(adapter.check_against(&model.spec))?;
            let base = adapter
                .base_model_name_or_path
                .clone()
                .unwrap_or_else(|| model.source.display().to_string());
            adapter.save_peft(&a.output_path, &base)?
        }
        other => bail!("--format {other}: use gguf (llama.cpp LoRA) or peft"),
    }
    eprintln!(
        "[hone] {} ({} LoRA pairs) -> {} ({})",
        a.adapter_path.display(),
        adapter.targets().len(),
        a.output_path.display(),
        a.format
    );
    Ok(())
}
