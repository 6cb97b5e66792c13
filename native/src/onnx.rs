//! `hone auto-opt`: the model (with an adapter merged in, when given) as an ONNX decoder with a
//! KV cache that ONNX Runtime runs (`OUT/model.onnx`, inputs/outputs named as ONNX Runtime
//! GenAI and Optimum name them). fp32 for now; int4, the GenAI folder and adapters as inputs
//! are not written yet and are refused with a clear message.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use hone_core::adapter::LoraAdapter;

#[derive(Args)]
pub struct AutoOptArgs {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    model: PathBuf,
    /// A PEFT adapter folder to merge into the exported weights.
    #[arg(long = "adapter_path")]
    adapter_path: Option<PathBuf>,
    /// Output folder (gets model.onnx).
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
    /// Also write genai_config.json and the tokenizer files for ONNX Runtime GenAI (not yet).
    #[arg(long = "use_ort_genai")]
    use_ort_genai: bool,
    /// Replace an existing output folder's model.onnx.
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
    if a.use_ort_genai {
        bail!("--use_ort_genai: genai_config.json is not written yet; drop the flag to get model.onnx for ONNX Runtime");
    }
    let out = a.output_path.join("model.onnx");
    if out.exists() && !a.overwrite {
        bail!("{} exists: pass --overwrite to replace it", out.display());
    }
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
    Ok(())
}
