//! `hone auto-opt`: the model as an ONNX decoder with a KV cache that ONNX Runtime runs
//! (`OUT/model.onnx`, inputs/outputs named as ONNX Runtime GenAI and Optimum name them), with an
//! adapter merged in (`--adapter_path`), and with `--use_ort_genai` the `genai_config.json` and
//! tokenizer files ONNX Runtime GenAI loads the folder with. With `--lora_inputs` the adapter is
//! not merged: its projections take LoRA weights as inputs (zero defaults) and the adapter is
//! written as `adapter_weights.onnx_adapter`; `hone generate-adapter` writes more adapters for
//! the same model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use hone_core::adapter::LoraAdapter;
use hone_onnx::adapter::{
    adapter_params, check_params_fit, write_onnx_adapter, LoraInputs, EXPORT_ADAPTER_FILE,
};

/// File name of the exported decoder inside the output folder.
const MODEL_FILE: &str = "model.onnx";

#[derive(Args)]
pub struct AutoOptArgs {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    model: PathBuf,
    /// A PEFT adapter folder: merged into the exported weights, or with --lora_inputs the
    /// adapter whose target modules take LoRA weights as inputs.
    #[arg(long = "adapter_path")]
    adapter_path: Option<PathBuf>,
    /// Do not merge --adapter_path: export its LoRA weights as graph inputs (zero defaults, so
    /// the base runs without an adapter) and write it as adapter_weights.onnx_adapter, for
    /// several adapters on one model (`hone generate-adapter`).
    #[arg(long = "lora_inputs")]
    lora_inputs: bool,
    /// Output folder (gets model.onnx, and with --use_ort_genai the GenAI files).
    #[arg(short = 'o', long = "output_path")]
    output_path: PathBuf,
    /// Weight precision: fp32; fp16 (weights stored fp16, computed in fp32); or int4 for the
    /// projections (ONNX Runtime MatMulNBits, blocks of 32; GGUF Q4_0/Q4_1 blocks are kept as
    /// they are, other weights are quantized).
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
    let precision = match a.precision.as_str() {
        "fp32" => hone_onnx::Precision::Fp32,
        "fp16" => hone_onnx::Precision::Fp16,
        "int4" => hone_onnx::Precision::Int4,
        other => bail!("--precision {other}: hone writes fp32, fp16 or int4"),
    };
    if a.device != "cpu" || a.provider != "CPUExecutionProvider" {
        bail!(
            "--device {} --provider {}: only --device cpu --provider CPUExecutionProvider is supported so far",
            a.device,
            a.provider
        );
    }
    if a.lora_inputs && a.adapter_path.is_none() {
        bail!("--lora_inputs needs --adapter_path: the adapter whose target modules become LoRA inputs");
    }
    check_output_folder(&a.output_path, a.overwrite)?;
    let model = hone_core::load_model(&a.model)?;
    let mut opts = hone_onnx::ExportOptions::default();
    opts.precision = precision;
    let mut lora_adapter = None;
    let (spec, weights) = match &a.adapter_path {
        Some(dir) if a.lora_inputs => {
            let adapter = LoraAdapter::load_peft(dir)?;
            opts.lora = Some(LoraInputs::for_adapter(&adapter, &model.spec).with_context(
                || {
                    format!(
                        "adapter {} does not fit model {}",
                        dir.display(),
                        model.source.display()
                    )
                },
            )?);
            lora_adapter = Some(adapter);
            (model.spec.clone(), model.weights.clone())
        }
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
    hone_onnx::write_decoder(&out, &spec, &weights, &opts)?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "[hone] wrote {} ({:.1} MiB, {}{})",
        out.display(),
        size as f64 / 1048576.0,
        a.precision,
        match (&a.adapter_path, a.lora_inputs) {
            (Some(_), true) => ", LoRA weights as inputs",
            (Some(_), false) => ", adapter merged",
            (None, _) => "",
        }
    );
    if let Some(adapter) = &lora_adapter {
        let path = a.output_path.join(EXPORT_ADAPTER_FILE);
        write_onnx_adapter(&path, &adapter_params(adapter)?)?;
        eprintln!("[hone] wrote {}", path.display());
    }
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

#[derive(Args)]
pub struct GenerateAdapterArgs {
    /// The model exported with `hone auto-opt --lora_inputs` (its folder, or the .onnx file).
    #[arg(long = "base_model_path")]
    base_model_path: PathBuf,
    /// PEFT adapter folders, comma-separated; each becomes OUTPUT/<folder name>.onnx_adapter.
    #[arg(long = "adapter_paths", value_delimiter = ',', required = true)]
    adapter_paths: Vec<PathBuf>,
    /// Output folder.
    #[arg(short = 'o', long = "output_path")]
    output_path: PathBuf,
    /// Replace existing .onnx_adapter files.
    #[arg(long)]
    overwrite: bool,
}

/// `hone generate-adapter`: one `.onnx_adapter` per PEFT adapter, checked against the LoRA
/// inputs of the exported model (names and fixed dimensions) before anything is written.
pub fn cmd_generate_adapter(a: GenerateAdapterArgs) -> Result<()> {
    let model_file = if a.base_model_path.is_dir() {
        a.base_model_path.join(MODEL_FILE)
    } else {
        a.base_model_path.clone()
    };
    let bytes = std::fs::read(&model_file)
        .with_context(|| format!("--base_model_path: reading {}", model_file.display()))?;
    let inputs = hone_onnx::proto::read_graph_inputs(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a readable ONNX model: {e}", model_file.display()))?;
    drop(bytes);
    let mut planned: Vec<(PathBuf, Vec<hone_onnx::AdapterParam>)> = Vec::new();
    for dir in &a.adapter_paths {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "..")
            .with_context(|| format!("--adapter_paths {}: no folder name", dir.display()))?;
        let out = a.output_path.join(format!("{name}.onnx_adapter"));
        if planned.iter().any(|(p, _)| *p == out) {
            bail!(
                "--adapter_paths: two adapters would both be written as {} (rename a folder)",
                out.display()
            );
        }
        if out.exists() && !a.overwrite {
            bail!("{} exists: pass --overwrite to replace it", out.display());
        }
        let adapter = LoraAdapter::load_peft(dir)?;
        let params =
            adapter_params(&adapter).with_context(|| format!("adapter {}", dir.display()))?;
        check_params_fit(&params, &inputs, &model_file, dir)?;
        planned.push((out, params));
    }
    std::fs::create_dir_all(&a.output_path)
        .with_context(|| format!("output folder {}", a.output_path.display()))?;
    for (out, params) in &planned {
        write_onnx_adapter(out, params)?;
        let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "[hone] wrote {} ({} tensors, {:.1} KiB)",
            out.display(),
            params.len(),
            size as f64 / 1024.0
        );
    }
    Ok(())
}
