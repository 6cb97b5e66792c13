//! `hone generate --engine ort`: generation through ONNX Runtime (the `ort` crate) on a decoder
//! exported by `hone auto-opt`, with the KV cache fed back from `present.*` to `past_key_values.*`
//! and hone-core's tokenizer, sampling and generation loop (`CausalLm`).
//!
//! The ONNX Runtime library is loaded at run time: `ORT_DYLIB_PATH`, else a libonnxruntime next
//! to the `hone` binary. Execution providers are the ones the loaded library has
//! (`GetAvailableProviders`); asking for another one is an error that lists them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use hone_core::generate::CausalLm;
use hone_core::sampling::SamplingParams;
use hone_core::tokenizer::Tokenizer;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::{Adapter, RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::GenerateArgs;

/// The ONNX Runtime minor version the `api-31` interface needs (1.31 or newer).
pub const ORT_MIN_MINOR: u32 = ort::MINOR_VERSION;
/// The file name of the ONNX Runtime library on this platform.
const LIBRARY_NAME: &str = if cfg!(target_os = "windows") {
    "onnxruntime.dll"
} else if cfg!(target_os = "macos") {
    "libonnxruntime.dylib"
} else {
    "libonnxruntime.so"
};

/// A loaded ONNX Runtime library and the environment sessions are created in.
pub struct OrtRuntime {
    pub library: PathBuf,
    pub version: String,
    env: Environment,
}

/// Where to look for the library: `ORT_DYLIB_PATH` when set, else the folder of the binary
/// (`libonnxruntime.so`, or a versioned `libonnxruntime.so.1.N.M` there).
fn find_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "ONNX Runtime library not found: ORT_DYLIB_PATH={} is not a file (point it to \
                 libonnxruntime {}; `make ort-lib` fetches it)",
                p.display(),
                version_wanted()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the hone binary")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let plain = dir.join(LIBRARY_NAME);
    if plain.is_file() {
        return Ok(plain);
    }
    // A versioned file (as the PyPI wheel ships it), the newest name first.
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{LIBRARY_NAME}.")))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort();
    match versioned.pop() {
        Some(p) => Ok(p),
        None => bail!(
            "ONNX Runtime library not found: ORT_DYLIB_PATH is not set and there is no {} \
             (or {}.*) next to the binary in {}; set ORT_DYLIB_PATH to libonnxruntime {} \
             (`make ort-lib` fetches it) or copy the library there",
            LIBRARY_NAME,
            LIBRARY_NAME,
            dir.display(),
            version_wanted()
        ),
    }
}

/// The version string of the ONNX Runtime library at `path` (`OrtGetApiBase()->GetVersionString()`).
fn library_version(path: &Path) -> Result<String> {
    let not_ort = |e: libloading::Error| {
        // libloading's message is generic ("dlopen failed"); the reason is its source.
        let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
        anyhow!(
            "ONNX Runtime library {}: {why} (ORT_DYLIB_PATH must point to libonnxruntime {})",
            path.display(),
            version_wanted()
        )
    };
    // SAFETY: loading ONNX Runtime runs its initialisers only; ort loads the same file next.
    let lib = unsafe { libloading::Library::new(path) }.map_err(not_ort)?;
    type GetApiBase = unsafe extern "system" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: OrtGetApiBase has this signature in every ONNX Runtime release.
    let get: libloading::Symbol<GetApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }.map_err(not_ort)?;
    // SAFETY: the base is a static table; GetVersionString returns a static NUL-terminated string.
    let version = unsafe {
        let base = get();
        if base.is_null() {
            bail!(
                "ONNX Runtime library {}: OrtGetApiBase returned nothing",
                path.display()
            );
        }
        std::ffi::CStr::from_ptr(((*base).GetVersionString)())
    };
    Ok(version.to_string_lossy().into_owned())
}

fn version_wanted() -> String {
    format!("1.{ORT_MIN_MINOR} or newer")
}

impl OrtRuntime {
    /// Load the library (once per process), check its version and create the environment.
    pub fn load() -> Result<Self> {
        let library = find_library()?;
        let version = library_version(&library)?;
        let minor = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok());
        if minor.is_none_or(|m| m < ORT_MIN_MINOR) {
            bail!(
                "ONNX Runtime at {} is version {version}; hone needs {} (set ORT_DYLIB_PATH to \
                 a newer libonnxruntime; `make ort-lib` fetches 1.31.1)",
                library.display(),
                version_wanted()
            );
        }
        let builder = ort::init_from(&library).map_err(|e| {
            anyhow!(
                "ONNX Runtime library {}: {} (ORT_DYLIB_PATH must point to libonnxruntime {})",
                library.display(),
                one_line(&e),
                version_wanted()
            )
        })?;
        let env = builder
            .with_name("hone")
            .build()
            .map_err(|e| anyhow!("ONNX Runtime environment: {}", one_line(&e)))?;
        Ok(OrtRuntime {
            library,
            version,
            env,
        })
    }

    /// The execution providers the loaded library has (ONNX Runtime's GetAvailableProviders).
    pub fn available_providers(&self) -> Result<Vec<String>> {
        let api = ort::api();
        let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
        let mut count: std::ffi::c_int = 0;
        // SAFETY: the API table comes from the loaded library; both out-pointers are valid.
        let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut count) };
        check_status(status).context("ONNX Runtime GetAvailableProviders")?;
        let mut names = Vec::with_capacity(count.max(0) as usize);
        for i in 0..count.max(0) as usize {
            // SAFETY: ONNX Runtime returned `count` NUL-terminated strings.
            let name = unsafe { std::ffi::CStr::from_ptr(*list.add(i)) };
            names.push(name.to_string_lossy().into_owned());
        }
        // SAFETY: the list came from GetAvailableProviders with this count.
        let status = unsafe { (api.ReleaseAvailableProviders)(list, count) };
        check_status(status).context("ONNX Runtime ReleaseAvailableProviders")?;
        Ok(names)
    }
}

/// Turn an OrtStatus into a Result (and release it).
fn check_status(status: ort::sys::OrtStatusPtr) -> Result<()> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status holds a NUL-terminated message until released.
    let msg = unsafe { std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: released once, here.
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(anyhow!(one_line(&msg)))
}

/// ONNX Runtime's messages can span lines; hone prints one.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// An execution provider hone can ask ONNX Runtime for: its `--ep` name and ONNX Runtime's.
pub struct EpChoice {
    pub short: &'static str,
    pub name: &'static str,
}

/// Every `--ep` value; `name` is what GetAvailableProviders reports.
pub const EXECUTION_PROVIDERS: &[EpChoice] = &[
    EpChoice {
        short: "cpu",
        name: "CPUExecutionProvider",
    },
    EpChoice {
        short: "xnnpack",
        name: "XnnpackExecutionProvider",
    },
    EpChoice {
        short: "openvino",
        name: "OpenVINOExecutionProvider",
    },
    EpChoice {
        short: "qnn",
        name: "QNNExecutionProvider",
    },
    EpChoice {
        short: "coreml",
        name: "CoreMLExecutionProvider",
    },
    EpChoice {
        short: "cuda",
        name: "CUDAExecutionProvider",
    },
    EpChoice {
        short: "tensorrt",
        name: "TensorrtExecutionProvider",
    },
    EpChoice {
        short: "directml",
        name: "DmlExecutionProvider",
    },
    EpChoice {
        short: "nnapi",
        name: "NnapiExecutionProvider",
    },
    EpChoice {
        short: "webgpu",
        name: "WebGpuExecutionProvider",
    },
];

/// The provider an `--ep` value names (short or full name, any case).
pub fn parse_ep(value: &str) -> Result<&'static EpChoice> {
    EXECUTION_PROVIDERS
        .iter()
        .find(|e| e.short.eq_ignore_ascii_case(value) || e.name.eq_ignore_ascii_case(value))
        .ok_or_else(|| {
            anyhow!(
                "--ep {value}: unknown execution provider; hone knows {}",
                EXECUTION_PROVIDERS
                    .iter()
                    .map(|e| e.short)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn dispatch(ep: &EpChoice) -> Option<ExecutionProviderDispatch> {
    let d = match ep.short {
        "xnnpack" => ep::XNNPACK::default().build(),
        "openvino" => ep::OpenVINO::default().build(),
        "qnn" => ep::QNN::default().build(),
        "coreml" => ep::CoreML::default().build(),
        "cuda" => ep::CUDA::default().build(),
        "tensorrt" => ep::TensorRT::default().build(),
        "directml" => ep::DirectML::default().build(),
        "nnapi" => ep::NNAPI::default().build(),
        "webgpu" => ep::WebGPU::default().build(),
        _ => return None,
    };
    Some(d.error_on_failure())
}

/// The ONNX file `-m` names: the file itself, or `model.onnx` in a folder.
pub fn onnx_file(model: &Path) -> Result<PathBuf> {
    if model.is_dir() {
        let f = model.join("model.onnx");
        if !f.is_file() {
            bail!(
                "{}: no model.onnx in this folder (--engine ort takes a folder written by \
                 `hone auto-opt` or an .onnx file)",
                model.display()
            );
        }
        Ok(f)
    } else if model.is_file() {
        Ok(model.to_path_buf())
    } else {
        bail!("{}: no such file or folder", model.display())
    }
}

/// A decoder with a KV cache running in an ONNX Runtime session.
pub struct OrtDecoder {
    session: Session,
    path: PathBuf,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    has_position_ids: bool,
    /// `present.*` of the last run, in input order (key, value per layer); empty before the
    /// first run.
    past: Vec<DynValue>,
    position: usize,
    max_positions: usize,
    adapter: Option<Adapter>,
}

/// What hone needs of a graph input or output: a tensor of one element type with a fixed
/// size where hone reads one.
fn tensor_io<'a>(
    path: &Path,
    kind: &str,
    list: &'a [ort::value::Outlet],
    name: &str,
    ty: TensorElementType,
) -> Result<&'a [i64]> {
    let Some(outlet) = list.iter().find(|o| o.name() == name) else {
        bail!(
            "{}: the model has no {kind} '{name}' (hone's ort runner needs the {kind}s `hone \
             auto-opt` writes: input_ids, attention_mask, position_ids, \
             past_key_values.N.key|value in; logits, present.N.key|value out); its {kind}s: {}",
            path.display(),
            list.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
        );
    };
    match outlet.dtype() {
        ValueType::Tensor { ty: t, shape, .. } if *t == ty => Ok(shape),
        other => bail!(
            "{}: {kind} '{name}' is {other}; hone's ort runner needs a {ty} tensor",
            path.display()
        ),
    }
}

impl OrtDecoder {
    /// Open `onnx` on `ep` with `threads` intra-op threads and check its inputs and outputs.
    pub fn open(
        rt: &OrtRuntime,
        onnx: &Path,
        ep: &EpChoice,
        threads: usize,
        max_positions: usize,
    ) -> Result<Self> {
        let available = rt.available_providers()?;
        if !available.iter().any(|a| a == ep.name) {
            bail!(
                "--ep {}: the ONNX Runtime library {} (version {}) has no {}; it has: {}",
                ep.short,
                rt.library.display(),
                rt.version,
                ep.name,
                available
                    .iter()
                    .map(|a| match EXECUTION_PROVIDERS.iter().find(|e| e.name == a) {
                        Some(e) => format!("{a} (--ep {})", e.short),
                        None => a.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let builder_err = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            anyhow!(
                "{}: ONNX Runtime session options: {}",
                onnx.display(),
                one_line(&e)
            )
        };
        let mut builder = Session::builder(&rt.env)
            .map_err(|e| anyhow!("ONNX Runtime session: {}", one_line(&e)))?
            .with_intra_threads(threads)
            .map_err(builder_err)?;
        if let Some(d) = dispatch(ep) {
            builder = builder
                .with_execution_providers([d])
                .map_err(|e| anyhow!("--ep {}: {}", ep.short, one_line(&e)))?;
        }
        let session = builder.commit_from_file(onnx).map_err(|e| {
            anyhow!(
                "{}: ONNX Runtime could not load it: {}",
                onnx.display(),
                one_line(&e)
            )
        })?;

        let (inputs, outputs) = (session.inputs(), session.outputs());
        tensor_io(onnx, "input", inputs, "input_ids", TensorElementType::Int64)?;
        tensor_io(
            onnx,
            "input",
            inputs,
            "attention_mask",
            TensorElementType::Int64,
        )?;
        let has_position_ids = inputs.iter().any(|o| o.name() == "position_ids");
        if has_position_ids {
            tensor_io(
                onnx,
                "input",
                inputs,
                "position_ids",
                TensorElementType::Int64,
            )?;
        }
        let layers = inputs
            .iter()
            .filter(|o| o.name().starts_with("past_key_values.") && o.name().ends_with(".key"))
            .count();
        if layers == 0 {
            tensor_io(
                onnx,
                "input",
                inputs,
                "past_key_values.0.key",
                TensorElementType::Float32,
            )?;
        }
        let logits = tensor_io(
            onnx,
            "output",
            outputs,
            "logits",
            TensorElementType::Float32,
        )?;
        let vocab = logits.last().copied().filter(|&v| v > 0).ok_or_else(|| {
            anyhow!(
                "{}: output 'logits' has no fixed vocabulary size (shape {logits:?})",
                onnx.display()
            )
        })? as usize;
        let mut kv_shape = None;
        for l in 0..layers {
            for part in ["key", "value"] {
                let past = format!("past_key_values.{l}.{part}");
                let shape = tensor_io(onnx, "input", inputs, &past, TensorElementType::Float32)?;
                let present = format!("present.{l}.{part}");
                tensor_io(
                    onnx,
                    "output",
                    outputs,
                    &present,
                    TensorElementType::Float32,
                )?;
                let fixed = match shape {
                    [_, h, _, d] if *h > 0 && *d > 0 => (*h as usize, *d as usize),
                    _ => bail!(
                        "{}: input '{past}' has shape {shape:?}; hone needs [batch, kv_heads, \
                         past_length, head_dim] with fixed kv_heads and head_dim",
                        onnx.display()
                    ),
                };
                if *kv_shape.get_or_insert(fixed) != fixed {
                    bail!(
                        "{}: input '{past}' has shape {shape:?}, unlike layer 0's",
                        onnx.display()
                    );
                }
            }
        }
        let (kv_heads, head_dim) = kv_shape.unwrap_or((0, 0));
        Ok(OrtDecoder {
            session,
            path: onnx.to_path_buf(),
            layers,
            kv_heads,
            head_dim,
            vocab,
            has_position_ids,
            past: Vec::new(),
            position: 0,
            max_positions,
            adapter: None,
        })
    }

    /// Load an `.onnx_adapter` file (ONNX Runtime's LoRA adapter format).
    pub fn load_adapter(&self, path: &Path) -> Result<Adapter> {
        Adapter::from_file(path, None).map_err(|e| {
            anyhow!(
                "{}: ONNX Runtime could not load the adapter: {}",
                path.display(),
                one_line(&e)
            )
        })
    }

    /// Use `adapter` (or the base model) from the next run on, without reloading the session.
    pub fn set_adapter(&mut self, adapter: Option<Adapter>) {
        self.adapter = adapter;
    }

    fn run(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (past_len, n) = (self.position, tokens.len());
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let mask = vec![1i64; past_len + n];
        let positions: Vec<i64> = (past_len..past_len + n).map(|p| p as i64).collect();
        let tensor_err = |e: ort::Error| anyhow!("ONNX Runtime tensor: {}", one_line(&e));
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([1, n], ids))
                    .map_err(tensor_err)?
                    .into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([1, past_len + n], mask))
                    .map_err(tensor_err)?
                    .into(),
            ),
        ];
        if self.has_position_ids {
            inputs.push((
                "position_ids".into(),
                Tensor::from_array(([1, n], positions))
                    .map_err(tensor_err)?
                    .into(),
            ));
        }
        for l in 0..self.layers {
            for (k, part) in ["key", "value"].iter().enumerate() {
                let name = format!("past_key_values.{l}.{part}");
                let value: SessionInputValue<'_> = match self.past.get(2 * l + k) {
                    Some(v) => v.into(),
                    None => Tensor::<f32>::from_array((
                        [1, self.kv_heads, 0, self.head_dim],
                        Vec::new(),
                    ))
                    .map_err(tensor_err)?
                    .into(),
                };
                inputs.push((name, value));
            }
        }
        let mut options =
            RunOptions::new().map_err(|e| anyhow!("ONNX Runtime: {}", one_line(&e)))?;
        if let Some(adapter) = &self.adapter {
            options
                .add_adapter(adapter)
                .map_err(|e| anyhow!("ONNX Runtime adapter: {}", one_line(&e)))?;
        }
        let mut outputs = self
            .session
            .run_with_options(inputs, &options)
            .map_err(|e| {
                anyhow!(
                    "{}: ONNX Runtime run: {}",
                    self.path.display(),
                    one_line(&e)
                )
            })?;
        let (shape, data) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{}: output 'logits': {}", self.path.display(), one_line(&e)))?;
        if shape.len() != 3 || shape[1] as usize != n || shape[2] as usize != self.vocab {
            bail!(
                "{}: output 'logits' has shape {shape:?}, expected [1, {n}, {}]",
                self.path.display(),
                self.vocab
            );
        }
        let last = data[(n - 1) * self.vocab..].to_vec();
        let mut present = Vec::with_capacity(2 * self.layers);
        for l in 0..self.layers {
            for part in ["key", "value"] {
                let name = format!("present.{l}.{part}");
                present.push(outputs.remove(&name).ok_or_else(|| {
                    anyhow!("{}: the run returned no '{name}'", self.path.display())
                })?);
            }
        }
        drop(outputs);
        self.past = present;
        self.position += n;
        Ok(last)
    }
}

impl CausalLm for OrtDecoder {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn forward_last(&mut self, tokens: &[u32]) -> hone_core::Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(hone_core::Error::Invalid("forward_last: no tokens".into()));
        }
        self.run(tokens)
            .map_err(|e| hone_core::Error::Invalid(format!("{e:#}")))
    }

    fn reset(&mut self) {
        self.past.clear();
        self.position = 0;
    }

    fn position(&self) -> usize {
        self.position
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }
}

/// The text side of an ONNX model: tokenizer, chat template, stop ids, context length.
pub struct TextSide {
    pub source: PathBuf,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub eos_ids: Vec<u32>,
    pub max_positions: Option<usize>,
}

fn push_unique(ids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// Tokenizer and friends from a folder holding tokenizer.json (an ONNX export folder or an HF
/// model folder): tokenizer_config.json, chat_template.jinja, generation_config.json,
/// config.json and genai_config.json are read when present.
fn text_side_from_folder(dir: &Path) -> Result<TextSide> {
    let tok_json = dir.join("tokenizer.json");
    let tok_config = Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file());
    let tokenizer = Tokenizer::from_file(&tok_json, tok_config.as_deref())?;
    let mut chat_template = match &tok_config {
        Some(p) => hone_core::hf::read_tokenizer_config(p)?.chat_template,
        None => None,
    };
    let template_file = dir.join("chat_template.jinja");
    if template_file.is_file() {
        chat_template = Some(
            std::fs::read_to_string(&template_file)
                .with_context(|| template_file.display().to_string())?,
        );
    }
    let mut eos_ids = tokenizer.eos_ids.clone();
    let mut max_positions = None;
    let generation = dir.join("generation_config.json");
    if generation.is_file() {
        push_unique(
            &mut eos_ids,
            hone_core::hf::read_generation_config(&generation)?.eos_token_id,
        );
    }
    if dir.join("config.json").is_file() {
        let spec = hone_core::hf::read_config(dir)?;
        push_unique(&mut eos_ids, spec.eos_token_id.iter().copied());
        max_positions = Some(spec.max_position_embeddings);
    }
    let genai = dir.join("genai_config.json");
    if genai.is_file() {
        let (eos, context) = read_genai_config(&genai)?;
        push_unique(&mut eos_ids, eos);
        max_positions = max_positions.or(context);
    }
    Ok(TextSide {
        source: dir.to_path_buf(),
        tokenizer,
        chat_template,
        eos_ids,
        max_positions,
    })
}

/// `model.eos_token_id` (a number or a list) and `model.context_length` of genai_config.json.
fn read_genai_config(path: &Path) -> Result<(Vec<u32>, Option<usize>)> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let model = &json["model"];
    let bad = |field: &str| anyhow!("{}: field 'model.{field}' is not valid", path.display());
    let eos = match &model["eos_token_id"] {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Number(n) => vec![n.as_u64().ok_or_else(|| bad("eos_token_id"))? as u32],
        serde_json::Value::Array(list) => list
            .iter()
            .map(|v| {
                v.as_u64()
                    .map(|x| x as u32)
                    .ok_or_else(|| bad("eos_token_id"))
            })
            .collect::<Result<_>>()?,
        _ => return Err(bad("eos_token_id")),
    };
    let context = match &model["context_length"] {
        serde_json::Value::Null => None,
        v => Some(v.as_u64().ok_or_else(|| bad("context_length"))? as usize),
    };
    Ok((eos, context))
}

/// The text side for `onnx`: `--tokenizer` when given (a GGUF file, a folder with
/// tokenizer.json, or a tokenizer.json), else the ONNX file's folder.
pub fn text_side(onnx: &Path, tokenizer: Option<&Path>) -> Result<TextSide> {
    let dir = onnx.parent().unwrap_or(Path::new("."));
    match tokenizer {
        None if dir.join("tokenizer.json").is_file() => text_side_from_folder(dir),
        None => bail!(
            "{}: no tokenizer.json in this folder: pass --tokenizer with the model it was \
             exported from (a GGUF file or model folder) or a tokenizer.json",
            dir.display()
        ),
        Some(p) if p.is_dir() => {
            if !p.join("tokenizer.json").is_file() {
                bail!(
                    "--tokenizer {}: no tokenizer.json in this folder",
                    p.display()
                );
            }
            text_side_from_folder(p)
        }
        Some(p) if p.extension().is_some_and(|e| e == "json") => {
            let tokenizer = Tokenizer::from_file(p, None)?;
            Ok(TextSide {
                source: p.to_path_buf(),
                eos_ids: tokenizer.eos_ids.clone(),
                tokenizer,
                chat_template: None,
                max_positions: None,
            })
        }
        Some(p) => {
            let model =
                hone_core::load_model(p).with_context(|| format!("--tokenizer {}", p.display()))?;
            Ok(TextSide {
                source: p.to_path_buf(),
                eos_ids: model.eos_ids(),
                chat_template: model.chat_template.clone(),
                max_positions: Some(model.spec.max_position_embeddings),
                tokenizer: model.tokenizer,
            })
        }
    }
}

/// Load ONNX Runtime and open the decoder `model` names (a folder or an .onnx file) on `ep`
/// (default cpu) with hone's thread count (RAYON_NUM_THREADS, else every core).
pub fn open_decoder(
    model: &Path,
    ep: Option<&str>,
    max_positions: usize,
) -> Result<(OrtRuntime, OrtDecoder, &'static str)> {
    let ep = parse_ep(ep.unwrap_or("cpu"))?;
    let onnx = onnx_file(model)?;
    let rt = OrtRuntime::load()?;
    let decoder = OrtDecoder::open(&rt, &onnx, ep, crate::hone_cpu_threads(), max_positions)?;
    Ok((rt, decoder, ep.name))
}

/// `hone generate --engine ort`.
pub fn cmd_generate_ort(a: &GenerateArgs, sampling: SamplingParams) -> Result<()> {
    if a.device != "cpu" {
        bail!(
            "--device {} goes with --engine hone; with --engine ort pick the hardware with --ep",
            a.device
        );
    }
    if a.dequantize_at_load {
        bail!("--dequantize_at_load goes with --engine hone (the ONNX model's weights are as exported)");
    }
    let t0 = Instant::now();
    let onnx = onnx_file(&a.model.model)?;
    let text = text_side(&onnx, a.tokenizer.as_deref())?;
    let (rt, mut decoder, ep) = open_decoder(
        &onnx,
        a.ep.as_deref(),
        text.max_positions.unwrap_or(usize::MAX),
    )?;
    if text.tokenizer.vocab_size() > decoder.vocab_size() {
        bail!(
            "tokenizer ({}) has {} tokens but {} has {} logits: it belongs to another model",
            text.source.display(),
            text.tokenizer.vocab_size(),
            onnx.display(),
            decoder.vocab_size()
        );
    }
    if let Some(path) = &a.adapter {
        if path.is_dir() {
            bail!(
                "--adapter {}: with --engine ort the adapter is an .onnx_adapter file (ONNX \
                 Runtime's adapter format), not a PEFT folder",
                path.display()
            );
        }
        let adapter = decoder.load_adapter(path)?;
        decoder.set_adapter(Some(adapter));
    }
    let load_secs = t0.elapsed().as_secs_f64();
    if !a.quiet {
        eprintln!(
            "[hone] ONNX Runtime {} ({}), {} on {ep}{}",
            rt.version,
            rt.library.display(),
            onnx.display(),
            match &a.adapter {
                Some(p) => format!(", adapter {}", p.display()),
                None => String::new(),
            }
        );
    }
    let prompt_ids = crate::prompt_ids(
        a,
        &text.tokenizer,
        text.chat_template.as_deref(),
        &text.source,
    )?;
    crate::stream_generate(
        a,
        &mut decoder,
        &text.tokenizer,
        &prompt_ids,
        sampling,
        text.eos_ids.clone(),
        load_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_core::fixtures::{random_lora_adapter, tiny_spec, tiny_weights};
    use hone_core::{Architecture, DType, TensorEntry, WeightStore};
    use hone_cpu::{CpuModel, CpuModelOptions, CpuSession};

    /// Tiny random weights with q/k scaled up, so attention is sharp and a wrong position or
    /// a stale cache changes the logits well beyond rounding.
    fn sharp_weights(arch: Architecture, tied: bool) -> (hone_core::ModelSpec, WeightStore) {
        let spec = tiny_spec(arch, tied, 368);
        let base = tiny_weights(&spec, DType::F32, 23).unwrap();
        let mut weights = WeightStore::new("<tiny sharp model>");
        for (name, t) in &base.tensors {
            let mut v = t.to_f32();
            if name.contains("q_proj.weight") || name.contains("k_proj.weight") {
                v.iter_mut().for_each(|x| *x *= 6.0);
            }
            weights.insert(TensorEntry::from_f32(name.clone(), t.shape.clone(), &v).unwrap());
        }
        (spec, weights)
    }

    /// Run `chunks` through both and check every chunk's last logits agree; returns them.
    fn compare(
        ort: &mut OrtDecoder,
        cpu: &mut dyn CausalLm,
        chunks: &[&[u32]],
        what: &str,
    ) -> Vec<f32> {
        ort.reset();
        cpu.reset();
        let (mut spread, mut all) = (0f32, Vec::new());
        for (i, chunk) in chunks.iter().enumerate() {
            let (a, b) = (
                ort.forward_last(chunk).unwrap(),
                cpu.forward_last(chunk).unwrap(),
            );
            assert_eq!(ort.position(), cpu.position());
            spread = spread.max(b.iter().fold(0.0, |m, x| m.max(x.abs())));
            let d = max_abs_diff(&a, &b);
            assert!(
                d <= 2e-5 * spread.max(1.0),
                "{what}, chunk {i}: max |ort - cpu| = {d}"
            );
            all.extend(a);
        }
        all
    }

    /// Two adapters (different ranks and targets) and the base on one session, switched per
    /// request through ONNX Runtime's adapter API: each gives its merged model's logits.
    #[test]
    fn adapters_switched_per_request_give_their_merged_models_logits() {
        let rt = OrtRuntime::load().expect("ONNX Runtime (make ort-lib sets ORT_DYLIB_PATH)");
        let dir = std::env::temp_dir().join(format!("hone-ort-adapters-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (spec, weights) = sharp_weights(Architecture::Llama, true);
        let a1 = random_lora_adapter(&spec, 4, &["q_proj", "v_proj", "down_proj"], 1, 0.3).unwrap();
        let a2 = random_lora_adapter(&spec, 8, &["q_proj", "v_proj"], 2, 0.3).unwrap();
        let onnx = dir.join("model.onnx");
        let mut opts = hone_onnx::ExportOptions::default();
        opts.lora = Some(hone_onnx::adapter::LoraInputs::for_adapter(&a1, &spec).unwrap());
        hone_onnx::write_decoder(&onnx, &spec, &weights, &opts).unwrap();
        let mut ort = OrtDecoder::open(&rt, &onnx, parse_ep("cpu").unwrap(), 2, 64).unwrap();
        let mut files = Vec::new();
        for (name, a) in [("a1", &a1), ("a2", &a2)] {
            let path = dir.join(format!("{name}.onnx_adapter"));
            let params = hone_onnx::adapter::adapter_params(a).unwrap();
            hone_onnx::adapter::write_onnx_adapter(&path, &params).unwrap();
            files.push(ort.load_adapter(&path).unwrap());
        }
        let cpu_for = |adapter: Option<&hone_core::adapter::LoraAdapter>| {
            let (s, w) = match adapter {
                Some(a) => a.merge_into(&spec, &weights).unwrap(),
                None => (spec.clone(), weights.clone()),
            };
            CpuSession::new(
                CpuModel::new(&s, &w, CpuModelOptions::default()).unwrap(),
                64,
            )
        };
        let chunks: [&[u32]; 3] = [&[5, 17, 301, 42, 9], &[77], &[3]];
        let mut seen: Vec<Vec<f32>> = Vec::new();
        for (which, adapter, merged) in [
            ("a1", Some(&files[0]), Some(&a1)),
            ("a2", Some(&files[1]), Some(&a2)),
            ("base", None, None),
            ("a1 again", Some(&files[0]), Some(&a1)),
        ] {
            ort.set_adapter(adapter.cloned());
            let logits = compare(&mut ort, &mut cpu_for(merged), &chunks, which);
            seen.push(logits);
        }
        // The three models differ (the adapters do something) and a1 comes back unchanged.
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            assert!(
                max_abs_diff(&seen[i], &seen[j]) > 1e-2,
                "runs {i} and {j} agree"
            );
        }
        assert!(max_abs_diff(&seen[0], &seen[3]) <= 1e-6);
        std::fs::remove_dir_all(&dir).ok();
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn logits_through_the_kv_cache_equal_the_cpu_engine() {
        let rt = OrtRuntime::load().expect("ONNX Runtime (make ort-lib sets ORT_DYLIB_PATH)");
        let dir = std::env::temp_dir().join(format!("hone-ort-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (arch, tied) in [(Architecture::Llama, true), (Architecture::Qwen2, false)] {
            let (spec, weights) = sharp_weights(arch, tied);
            let onnx = dir.join(format!("{}.onnx", spec.architecture.model_type()));
            hone_onnx::write_decoder(&onnx, &spec, &weights, &hone_onnx::ExportOptions::default())
                .unwrap();
            let mut ort = OrtDecoder::open(&rt, &onnx, parse_ep("cpu").unwrap(), 2, 64).unwrap();
            let cpu_model = CpuModel::new(&spec, &weights, CpuModelOptions::default()).unwrap();
            let mut cpu = CpuSession::new(cpu_model, 64);
            // A prompt, single decode steps, then a chunk of three (as a speculative step would).
            let chunks: [&[u32]; 6] = [
                &[5, 17, 301, 42, 9],
                &[77],
                &[3],
                &[250],
                &[11, 12, 13],
                &[360],
            ];
            for round in 0..2 {
                compare(
                    &mut ort,
                    &mut cpu,
                    &chunks,
                    &format!("{arch:?} round {round}"),
                );
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
