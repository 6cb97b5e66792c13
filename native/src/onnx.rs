//! `hone auto-opt`: the model as an ONNX decoder with a KV cache that ONNX Runtime runs
//! (`OUT/model.onnx`, inputs/outputs named as ONNX Runtime GenAI and Optimum name them), with an
//! adapter merged in (`--adapter_path`), and with `--use_ort_genai` the `genai_config.json` and
//! tokenizer files ONNX Runtime GenAI loads the folder with.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use hone_core::adapter::LoraAdapter;

/// File name of the exported decoder inside the output folder.
const MODEL_FILE: &str = "model.onnx";

#[derive(Args)]
pub struct AutoOptArgs {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    model: PathBuf,
    /// A PEFT adapter folder to merge into the exported weights.
    #[arg(long = "adapter_path")]
    adapter_path: Option<PathBuf>,
    /// Output folder (gets model.onnx, and with --use_ort_genai the GenAI files).
    #[arg(short = 'o', long = "output_path")]
    output_path: PathBuf,
    /// Weight precision of the export (fp32; fp16 and int4 are not written yet).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Target device (cpu).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// ONNX Runtime execution provider the model is meant for (CPUExecutionProvider).
    #[arg(long, default_value = "CPUExecutionProvider")]
    provider: String,
    /// Also write genai_config.json, tokenizer.json and tokenizer_config.json for ONNX
    /// Runtime GenAI.
    #[arg(long = "use_ort_genai")]
    use_ort_genai: bool,
    /// Write into an output folder that already has files (replacing hone's files there).
    #[arg(long)]
    overwrite: bool,
}

pub fn cmd_auto_opt(a: AutoOptArgs) -> Result<()> {
    if a.precision != "fp32" {
        bail!(
            "--precision {}: only fp32 is written so far (fp16 and int4 are not implemented yet)",
            a.precision
        );
    }
    if a.device != "cpu" || a.provider != "CPUExecutionProvider" {
        bail!(
            "--device {} --provider {}: only --device cpu --provider CPUExecutionProvider is supported so far",
            a.device,
            a.provider
        );
    }
    check_output_folder(&a.output_path, a.overwrite)?;
    let model = hone_core::load_model(&a.model)?;
    let (spec, weights) = match &a.adapter_path {
        Some(dir) => LoraAdapter::load_peft(dir)?
            .merge_into(&model.spec, &model.weights)
            .with_context(|| {
                format!(
                    "adapter {} does not fit model {}",
                    dir.display(),
                    model.source.display()
                )
            })?,
        None => (model.spec.clone(), model.weights.clone()),
    };
    std::fs::create_dir_all(&a.output_path)
        .with_context(|| format!("output folder {}", a.output_path.display()))?;
    let out = a.output_path.join(MODEL_FILE);
    hone_onnx::write_decoder(&out, &spec, &weights, &hone_onnx::ExportOptions::default())?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "[hone] wrote {} ({:.1} MiB, fp32{})",
        out.display(),
        size as f64 / 1048576.0,
        if a.adapter_path.is_some() {
            ", adapter merged"
        } else {
            ""
        }
    );
    if a.use_ort_genai {
        hone_onnx::write_genai_files(&a.output_path, &model, MODEL_FILE)?;
        eprintln!(
            "[hone] wrote {}, tokenizer.json, tokenizer_config.json (ONNX Runtime GenAI)",
            a.output_path.join(hone_onnx::GENAI_CONFIG_FILE).display()
        );
    }
    Ok(())
}

/// Refuse to write into a folder that already holds files, unless `overwrite`.
fn check_output_folder(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "--output_path {}: exists and is not a folder",
            dir.display()
        );
    }
    let has_files = dir.is_dir()
        && std::fs::read_dir(dir)
            .with_context(|| format!("output folder {}", dir.display()))?
            .next()
            .is_some();
    if has_files && !overwrite {
        bail!(
            "output folder {} exists and is not empty: pass --overwrite to replace hone's files in it",
            dir.display()
        );
    }
    Ok(())
}
