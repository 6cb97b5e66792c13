//! The `hone` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hone_core::generate::{generate, CausalLm, GenerateOptions};
use hone_core::sampling::SamplingParams;
use hone_core::Model;
use hone_cpu::{CpuModel, CpuModelOptions, CpuSession};

mod args;
mod bench_train;
mod engine;
mod eval;
mod finetune;
mod merge;
mod onnx;
mod ort_gen;

/// hone: fine-tune and run small language models where the data lives.
#[derive(Parser)]
#[command(name = "hone", version, about, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streamed to stdout; timing to stderr).
    Generate(GenerateArgs),
    /// Print a model's spec, tensor table and tokenizer summary.
    Inspect(InspectArgs),
    /// Measure load time, prompt processing and decode speed; prints one JSON line.
    Bench(BenchArgs),
    /// Measure LoRA training speed and peak memory (random tokens); prints one JSON line.
    BenchTrain(bench_train::BenchTrainArgs),
    /// Fine-tune a LoRA adapter on a dataset (options as `olive finetune` / HF TrainingArguments).
    Finetune(Box<finetune::FinetuneArgs>),
    /// Evaluate a model (and adapter) on a dataset: loss, perplexity, accuracy, f1, bleu, rouge.
    Eval(Box<eval::EvalArgs>),
    /// Write the logits of every position of a text (with or without an adapter) to a
    /// safetensors file, for comparisons with other runtimes.
    Logits(LogitsArgs),
    /// Merge a LoRA adapter into the base weights and write an HF folder (safetensors).
    Merge(merge::MergeArgs),
    /// Export the model (with an adapter merged in) as an ONNX decoder with a KV cache for
    /// ONNX Runtime (`olive auto-opt`'s name; fp32 so far).
    AutoOpt(onnx::AutoOptArgs),
    /// Write one ONNX Runtime adapter file (.onnx_adapter) per PEFT adapter, for a model
    /// exported with `hone auto-opt --lora_inputs` (`olive generate-adapter`'s name).
    GenerateAdapter(onnx::GenerateAdapterArgs),
    /// Convert a PEFT adapter: gguf (llama.cpp LoRA) or peft.
    ExportAdapter(merge::ExportAdapterArgs),
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A PEFT LoRA adapter folder.
    #[arg(long, visible_alias = "adapter_path")]
    adapter: Option<PathBuf>,
    /// The text (tokenized with special tokens, as `generate` does).
    #[arg(short = 'p', long)]
    prompt: String,
    /// Output file: tensors `input_ids` (f32 [T], exact integers) and `logits` (f32 [T, vocab]).
    #[arg(short = 'o', long)]
    output: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Prompt length in tokens.
    #[arg(long = "prompt_tokens", default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long = "decode_tokens", default_value_t = 64)]
    decode_tokens: usize,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Convert every weight to f32 at load instead of dequantizing tiles on the fly.
    #[arg(long = "dequantize_at_load")]
    dequantize_at_load: bool,
    /// hone (the CPU engine on a GGUF or HF model) or ort (ONNX Runtime on an ONNX export).
    #[arg(long, default_value = "hone")]
    engine: String,
    /// ONNX Runtime execution provider for --engine ort (as in `hone generate`).
    #[arg(long)]
    ep: Option<String>,
}

#[derive(Args)]
struct ModelArg {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(short = 'm', long = "model_name_or_path", visible_alias = "model")]
    model: PathBuf,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt (with --chat: the user message).
    #[arg(short = 'p', long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long = "max_new_tokens", default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long = "top_k", default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    #[arg(long = "top_p", default_value_t = 1.0)]
    top_p: f32,
    /// Penalise tokens already in the prompt or output (1 = off), as transformers does.
    #[arg(long = "repetition_penalty", default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Render the prompt through the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    /// Stop when the output contains this text (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Convert every weight to f32 at load instead of dequantizing tiles on the fly.
    #[arg(long = "dequantize_at_load")]
    dequantize_at_load: bool,
    /// A PEFT LoRA adapter folder (e.g. OUTPUT/adapter from `hone finetune`).
    #[arg(long, visible_alias = "adapter_path")]
    adapter: Option<PathBuf>,
    /// cpu, gpu (any wgpu adapter, software ones included) or auto (a hardware GPU if there
    /// is one, else the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print nothing but the generated text.
    #[arg(short, long)]
    quiet: bool,
    /// hone (hone's own CPU/GPU engines on a GGUF or HF model) or ort (ONNX Runtime on a model
    /// exported by `hone auto-opt`: -m is its folder or model.onnx).
    #[arg(long, default_value = "hone")]
    engine: String,
    /// ONNX Runtime execution provider for --engine ort: cpu, xnnpack, openvino, qnn, coreml,
    /// cuda, tensorrt, directml, nnapi, webgpu (or its full name, e.g. XnnpackExecutionProvider).
    #[arg(long)]
    ep: Option<String>,
    /// Tokenizer for --engine ort when the ONNX folder has no tokenizer.json: a GGUF file, a
    /// model folder or a tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Print every tensor (default: the first layer's and the global ones).
    #[arg(long)]
    tensors: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cmd_generate(a),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Bench(a) => cmd_bench(a),
        Command::BenchTrain(a) => bench_train::cmd_bench_train(a),
        Command::Finetune(a) => finetune::cmd_finetune(*a),
        Command::Eval(a) => eval::cmd_eval(*a),
        Command::Logits(a) => cmd_logits(a),
        Command::Merge(a) => merge::cmd_merge(a),
        Command::AutoOpt(a) => onnx::cmd_auto_opt(a),
        Command::GenerateAdapter(a) => onnx::cmd_generate_adapter(a),
        Command::ExportAdapter(a) => merge::cmd_export_adapter(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the outermost context, then the causes.
            // (a cause already quoted by the message before it is not repeated).
            let mut msg = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !msg.ends_with(&cause) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&cause);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Run a future to completion on this thread. The CPU engine's futures never wait on anything,
/// so polling them in a loop is all an executor has to do.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn load(path: &std::path::Path) -> Result<(Model, f64)> {
    let t0 = Instant::now();
    let model = hone_core::load_model(path)?;
    Ok((model, t0.elapsed().as_secs_f64()))
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
    };
    sampling.validate()?;
    match a.engine.as_str() {
        "hone" => {}
        "ort" => return ort_gen::cmd_generate_ort(&a, sampling),
        other => bail!(
            "--engine {other}: use hone (hone's CPU/GPU engines) or ort (ONNX Runtime on an ONNX export)"
        ),
    }
    if a.ep.is_some() || a.tokenizer.is_some() {
        bail!("--ep and --tokenizer go with --engine ort");
    }
    let (model, load_secs) = load(&a.model.model)?;
    let prompt_ids = prompt_ids(
        &a,
        &model.tokenizer,
        model.chat_template.as_deref(),
        &model.source,
    )?;
    let max_len = (prompt_ids.len() + a.max_new_tokens).min(model.spec.max_position_embeddings);
    let mut session: Box<dyn CausalLm> = match engine::open_gpu(&a.device, &|s: &str| {
        if !a.quiet {
            eprintln!("{s}")
        }
    })? {
        None => {
            let mut cpu = CpuModel::new(
                &model.spec,
                &model.weights,
                CpuModelOptions {
                    dequantize_at_load: a.dequantize_at_load,
                },
            )?;
            if let Some(dir) = &a.adapter {
                args::apply_adapter(&mut cpu, dir, &model)?;
            }
            Box::new(CpuSession::new(cpu, max_len))
        }
        Some(gpu) => {
            let adapter = match &a.adapter {
                Some(dir) => Some(args::load_adapter_for(dir, &model)?),
                None => None,
            };
            let parts = match &adapter {
                Some(ad) => Some((
                    hone_core::finetune::lora_setup(&ad.config, &model.spec)?,
                    hone_core::finetune::adapter_to_params(ad)?,
                )),
                None => None,
            };
            let s = hone_gpu::session::GpuSession::new(
                gpu,
                &model.spec,
                &model.weights,
                parts.as_ref().map(|(s, p)| (s, p.as_slice())),
                max_len,
            )?;
            if !a.quiet {
                eprintln!("[hone] generating on {}", s.describe());
            }
            Box::new(s)
        }
    };
    stream_generate(
        &a,
        &mut *session,
        &model.tokenizer,
        &prompt_ids,
        sampling,
        model.eos_ids(),
        load_secs,
    )
}

/// The prompt's token ids: the text itself (with the tokenizer's special tokens), or with
/// --chat the user message rendered through `chat_template`.
fn prompt_ids(
    a: &GenerateArgs,
    tokenizer: &hone_core::tokenizer::Tokenizer,
    chat_template: Option<&str>,
    source: &std::path::Path,
) -> Result<Vec<u32>> {
    let ids = if a.chat {
        let text = render_chat(
            chat_template,
            tokenizer,
            source,
            a.system.as_deref(),
            &a.prompt,
        )?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(&a.prompt, true)?
    };
    if ids.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    Ok(ids)
}

/// Generate on any engine: the prompt and the new text streamed to stdout, timing to stderr.
fn stream_generate(
    a: &GenerateArgs,
    session: &mut dyn CausalLm,
    tokenizer: &hone_core::tokenizer::Tokenizer,
    prompt_ids: &[u32],
    sampling: SamplingParams,
    eos_ids: Vec<u32>,
    load_secs: f64,
) -> Result<()> {
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling,
        stop_strings: a.stop.clone(),
        eos_ids,
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
    }
    out.flush()?;
    let mut write_err = None;
    let result = generate(
        session,
        tokenizer,
        prompt_ids,
        &opts,
        &mut |piece: &str| match write!(out, "{piece}").and_then(|_| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        },
    )?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    writeln!(out)?;
    if !a.quiet {
        let decode_tokens = result.ids.len().saturating_sub(1).max(1);
        eprintln!(
            "[hone] load {:.2}s | prompt {} tok, {:.1} tok/s | {} new tok, {:.1} tok/s | stop: {:?}",
            load_secs,
            result.prompt_tokens,
            result.prompt_tokens as f64 / result.prefill_secs.max(1e-9),
            result.ids.len(),
            decode_tokens as f64 / result.decode_secs.max(1e-9),
            result.stop_reason
        );
    }
    Ok(())
}

fn render_chat(
    chat_template: Option<&str>,
    tokenizer: &hone_core::tokenizer::Tokenizer,
    source: &std::path::Path,
    system: Option<&str>,
    user: &str,
) -> Result<String> {
    let Some(src) = chat_template else {
        bail!(
            "{}: the model has no chat template; drop --chat",
            source.display()
        );
    };
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(hone_core::chat::ChatMessage::new("system", s));
    }
    messages.push(hone_core::chat::ChatMessage::new("user", user));
    let template = hone_core::chat::ChatTemplate::new(src)?;
    let bos = tokenizer.bos_token.clone().unwrap_or_default();
    let eos = tokenizer.eos_token.clone().unwrap_or_default();
    Ok(template.render(&messages, true, &bos, &eos)?)
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let (model, _) = load(&a.model.model)?;
    let ids = model.tokenizer.encode(&a.prompt, true)?;
    if ids.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let mut cpu = CpuModel::new(&model.spec, &model.weights, CpuModelOptions::default())?;
    if let Some(dir) = &a.adapter {
        args::apply_adapter(&mut cpu, dir, &model)?;
    }
    let mut cache = hone_cpu::KvCache::new(&model.spec, ids.len());
    let logits = cpu.forward(&ids, &mut cache)?;
    // Ids as f32 (exact below 2^24; safetensors writing here has no integer type).
    let id_bytes: Vec<u8> = ids.iter().flat_map(|&i| (i as f32).to_le_bytes()).collect();
    let logit_bytes: Vec<u8> = logits.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let (n, v) = ([ids.len()], [logits.rows, logits.vocab]);
    hone_core::safetensors::write_safetensors(
        &a.output,
        &[
            hone_core::safetensors::TensorView {
                name: "input_ids",
                shape: &n,
                dtype: hone_core::DType::F32,
                data: &id_bytes,
            },
            hone_core::safetensors::TensorView {
                name: "logits",
                shape: &v,
                dtype: hone_core::DType::F32,
                data: &logit_bytes,
            },
        ],
        None,
    )?;
    eprintln!(
        "[hone] {} tokens x {} logits -> {}",
        logits.rows,
        logits.vocab,
        a.output.display()
    );
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let (model, load_secs) = load(&a.model.model)?;
    let s = &model.spec;
    println!(
        "model: {} ({:?}, loaded in {:.2}s)",
        model.source.display(),
        model.format,
        load_secs
    );
    println!("spec:");
    let spec_json = serde_json::to_value(s)?;
    if let Some(obj) = spec_json.as_object() {
        for (k, v) in obj {
            println!("  {k}: {v}");
        }
    }
    let n_params: usize = model.weights.tensors.values().map(|t| t.numel()).sum();
    println!(
        "tensors: {} ({} parameters, {:.1} MiB stored)",
        model.weights.tensors.len(),
        n_params,
        model.weights.total_bytes() as f64 / (1 << 20) as f64
    );
    let mut by_type = std::collections::BTreeMap::new();
    for t in model.weights.tensors.values() {
        *by_type.entry(t.dtype.to_string()).or_insert(0usize) += 1;
    }
    println!(
        "  types: {}",
        by_type
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  {:<56} {:<16} type", "name", "shape");
    for t in model.weights.tensors.values() {
        let shown = a.tensors
            || !t.name.starts_with("model.layers.")
            || t.name.starts_with("model.layers.0.");
        if shown {
            println!(
                "  {:<56} {:<16} {}",
                t.name,
                format!("{:?}", t.shape),
                t.dtype
            );
        }
    }
    if !a.tensors && s.num_hidden_layers > 1 {
        println!(
            "  ... layers 1..{} alike (--tensors lists all)",
            s.num_hidden_layers - 1
        );
    }
    let tok = &model.tokenizer;
    println!(
        "tokenizer: {} tokens, from {}",
        tok.vocab_size(),
        tok.source.display()
    );
    println!(
        "  bos: {:?} ({:?}), eos: {:?} (stop ids {:?}), pad: {:?}, add_bos: {}",
        tok.bos_token,
        tok.bos_id,
        tok.eos_token,
        model.eos_ids(),
        tok.pad_id,
        tok.add_bos
    );
    match &model.chat_template {
        Some(t) => println!("chat template: {} chars", t.len()),
        None => println!("chat template: none"),
    }
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.prompt_tokens == 0 || a.decode_tokens == 0 || a.repeats == 0 {
        bail!("--prompt_tokens, --decode_tokens and --repeats must be at least 1");
    }
    let t0 = Instant::now();
    let max_len = a.prompt_tokens + a.decode_tokens;
    let (mut session, weights): (Box<dyn CausalLm>, String) = match a.engine.as_str() {
        "hone" if a.ep.is_none() => {
            let (model, _) = load(&a.model.model)?;
            let cpu = CpuModel::new(
                &model.spec,
                &model.weights,
                CpuModelOptions {
                    dequantize_at_load: a.dequantize_at_load,
                },
            )?;
            let weights = if a.dequantize_at_load {
                "f32 (dequantized at load)"
            } else {
                "stored type, tiles dequantized in matmul"
            };
            (Box::new(CpuSession::new(cpu, max_len)), weights.into())
        }
        "ort" if !a.dequantize_at_load => {
            let (rt, decoder, ep) =
                ort_gen::open_decoder(&a.model.model, a.ep.as_deref(), usize::MAX)?;
            let weights = format!("ONNX as exported, ONNX Runtime {} {ep}", rt.version);
            (Box::new(decoder), weights)
        }
        "hone" | "ort" => {
            bail!("--ep goes with --engine ort, --dequantize_at_load with --engine hone")
        }
        other => bail!("--engine {other}: use hone or ort"),
    };
    let load_secs = t0.elapsed().as_secs_f64();
    // A fixed pseudo-random prompt of ordinary tokens (ids 1000.. avoid special tokens).
    let vocab = session.vocab_size() as u64;
    let mut rng = hone_core::sampling::Rng::new(42);
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|_| (1000 + rng.next_u64() % (vocab - 1000).max(1)) as u32)
        .collect();
    let (mut best_prefill, mut best_decode) = (f64::MAX, f64::MAX);
    for _ in 0..a.repeats {
        session.reset();
        let t = Instant::now();
        let mut logits = session.forward_last(&prompt)?;
        best_prefill = best_prefill.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..a.decode_tokens {
            let next = hone_core::sampling::argmax(&logits);
            logits = session.forward_last(&[next])?;
        }
        best_decode = best_decode.min(t.elapsed().as_secs_f64());
    }
    let row = serde_json::json!({
        "model": a.model.model.display().to_string(),
        "engine": a.engine,
        "weights": weights,
        "threads": hone_cpu_threads(),
        "load_s": round(load_secs, 3),
        "prompt_tokens": a.prompt_tokens,
        "prompt_tok_s": round(a.prompt_tokens as f64 / best_prefill, 1),
        "decode_tokens": a.decode_tokens,
        "decode_tok_s": round(a.decode_tokens as f64 / best_decode, 1),
    });
    println!("{row}");
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn hone_cpu_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}
