//! Training checkpoints: `checkpoints/checkpoint-{step}/`, written atomically (everything goes
//! into `checkpoint-{step}.tmp-{pid}/`, each file and the folder are fsynced, the folder is
//! renamed, the parent fsynced), so a crash leaves either the whole checkpoint or none.
//!
//! A checkpoint folder holds
//! - `adapter_config.json` + `adapter_model.safetensors`: the adapter, PEFT-named, so the
//!   folder is itself a loadable PEFT adapter;
//! - `optimizer.safetensors`: AdamW first and second moments, `{adapter key}.exp_avg` and
//!   `{adapter key}.exp_avg_sq`;
//! - `trainer_state.json`: Hugging Face's summary (global_step, log_history, best_metric,
//!   best_model_checkpoint, ...), for people and HF tools;
//! - `hone_state.json`, written last: everything needed to resume (steps, RNG states, data
//!   position, model fingerprint, training config, loss history) and the size and FNV-1a 64
//!   checksum of every other file, which `load` verifies.

mod dir;
mod fingerprint;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use dir::{latest, list, rotate, CheckpointEntry};
pub use fingerprint::ModelFingerprint;

use crate::adapter::{
    fnv1a64, LoraAdapter, LoraConfig, LoraTarget, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use crate::error::{Error, Result};
use crate::safetensors::{serialize_safetensors, SafetensorsFile, TensorView};
use crate::spec::ModelSpec;
use crate::tensor::{Bytes, DType};

/// Prefix of a checkpoint folder's name (`checkpoint-{step}`, as Hugging Face names them).
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
/// hone's resume state, written last.
pub const HONE_STATE_FILE: &str = "hone_state.json";
/// Hugging Face's trainer summary.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// AdamW moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Value of `format` in `hone_state.json`.
const STATE_FORMAT: &str = "hone-checkpoint";
/// Version of the `hone_state.json` layout.
pub const STATE_VERSION: u32 = 1;
/// The files `hone_state.json` vouches for, in the order they are written.
const DATA_FILES: [&str; 4] = [
    ADAPTER_WEIGHTS_FILE,
    ADAPTER_CONFIG_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
];
/// `TrainingArguments` fields copied into `trainer_state.json` when the training config has them.
const HF_ARGS: [(&str, &str); 6] = [
    ("max_steps", "max_steps"),
    ("num_train_epochs", "num_train_epochs"),
    ("logging_steps", "logging_steps"),
    ("eval_steps", "eval_steps"),
    ("save_steps", "save_steps"),
    ("per_device_train_batch_size", "train_batch_size"),
];

/// AdamW state: the step count and the two moments of every trainable tensor, by adapter key,
/// each as long as the tensor. Both maps are empty before the first optimizer step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdamWState {
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
    /// First moment (`exp_avg` in torch).
    pub exp_avg: BTreeMap<String, Vec<f32>>,
    /// Second moment (`exp_avg_sq` in torch).
    pub exp_avg_sq: BTreeMap<String, Vec<f32>>,
}

/// Where the data loader stands (the loader's own type, stored as `{epoch, index}`).
pub use crate::data::DataPosition;

/// Everything needed to resume training exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Global step (optimizer updates so far), HF's `global_step`.
    pub step: u64,
    /// Fractional epoch, as HF reports it.
    pub epoch: f64,
    /// The adapter being trained.
    pub adapter: LoraAdapter,
    /// AdamW moments and step count.
    pub optimizer: AdamWState,
    /// Steps the learning-rate schedule has taken.
    pub scheduler_step: u64,
    /// Named RNG states (dropout, shuffling, ...).
    pub rng_states: BTreeMap<String, u64>,
    /// Data loader position.
    pub data_position: DataPosition,
    /// The base model the adapter was trained on.
    pub model_fingerprint: ModelFingerprint,
    /// The training configuration (TrainingArguments vocabulary), as given.
    pub training_config: Value,
    /// `(step, loss)` of every logged step.
    pub loss_history: Vec<(u64, f64)>,
    /// Best evaluation metric so far.
    pub best_metric: Option<f64>,
    /// Folder of the best checkpoint so far (HF's `best_model_checkpoint`).
    pub best_model_checkpoint: Option<String>,
    /// Step of the best checkpoint so far.
    pub best_global_step: Option<u64>,
    /// `(step, eval loss)` of every evaluation so far.
    pub eval_history: Vec<(u64, f64)>,
    /// Evaluations since the best one (early stopping's counter).
    pub evals_without_improvement: u32,
    /// Label tokens trained on so far.
    pub tokens_seen: u64,
}

/// Size and checksum of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileRecord {
    bytes: u64,
    fnv1a64: String,
}

/// A loss that may be NaN or infinite: JSON has no such numbers, so those are strings.
#[derive(Debug, Clone, Copy)]
struct JsonF64(f64);

impl Serialize for JsonF64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let x = self.0;
        if x.is_finite() {
            s.serialize_f64(x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if x > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }
}

impl<'de> Deserialize<'de> for JsonF64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(f64),
            Str(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(x) => Ok(JsonF64(x)),
            Repr::Str(s) => match s.as_str() {
                "NaN" => Ok(JsonF64(f64::NAN)),
                "Infinity" => Ok(JsonF64(f64::INFINITY)),
                "-Infinity" => Ok(JsonF64(f64::NEG_INFINITY)),
                _ => Err(serde::de::Error::custom(format!("not a number: '{s}'"))),
            },
        }
    }
}

/// The layout of `hone_state.json`.
#[derive(Debug, Serialize, Deserialize)]
struct HoneState {
    format: String,
    version: u32,
    step: u64,
    epoch: f64,
    scheduler_step: u64,
    optimizer_step: u64,
    rng_states: BTreeMap<String, u64>,
    data_position: DataPosition,
    model_fingerprint: ModelFingerprint,
    training_config: Value,
    loss_history: Vec<(u64, JsonF64)>,
    best_metric: Option<f64>,
    best_model_checkpoint: Option<String>,
    best_global_step: Option<u64>,
    #[serde(default)]
    eval_history: Vec<(u64, JsonF64)>,
    #[serde(default)]
    evals_without_improvement: u32,
    #[serde(default)]
    tokens_seen: u64,
    files: BTreeMap<String, FileRecord>,
}

/// The folder name of the checkpoint of `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{step}")
}

/// This process's id, for temporary names (wasm has no processes).
fn pid() -> u32 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::process::id()
    }
    #[cfg(target_arch = "wasm32")]
    {
        0
    }
}

#[cfg(test)]
thread_local! {
    /// Test hook: the file name whose write fails half-way with "no space left on device".
    static FAIL_WRITE_OF: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Make the next checkpoint writes of this thread fail at `file_name` (tests only).
#[cfg(test)]
pub(crate) fn inject_write_failure(file_name: Option<&str>) {
    FAIL_WRITE_OF.with(|f| *f.borrow_mut() = file_name.map(str::to_string));
}

/// Test seam for crash tests: `HONE_TEST_CHECKPOINT_PAUSE_MS=N` pauses N ms after each file of
/// a checkpoint, so a test can kill the process while a checkpoint is half-written.
fn slow_write_pause() -> Option<std::time::Duration> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var("HONE_TEST_CHECKPOINT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    }
    #[cfg(target_arch = "wasm32")]
    {
        None
    }
}

/// Write `bytes` to a new file and fsync it; the error names the path.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        #[cfg(test)]
        {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if FAIL_WRITE_OF.with(|f| f.borrow().is_some() && *f.borrow() == name) {
                file.write_all(&bytes[..bytes.len() / 2])?;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device (injected by a test)",
                ));
            }
        }
        file.write_all(bytes)?;
        file.sync_all()
    })();
    result.map_err(|e| Error::io(path, e))
}

/// fsync a folder so that renames and new entries in it are durable (best effort: not every
/// platform lets a folder be opened).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Check that the parts fit together: tensor lengths match shapes, the optimizer has
    /// moments for exactly the adapter's tensors (or none yet), numbers are finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Invalid(format!(
                "checkpoint at step {}: {msg}",
                self.step
            )))
        };
        self.adapter.config.validate()?;
        for (k, t) in &self.adapter.tensors {
            if t.shape.iter().product::<usize>() != t.values.len() {
                return bad(format!(
                    "adapter tensor '{k}' has {} values for shape {:?}",
                    t.values.len(),
                    t.shape
                ));
            }
        }
        let o = &self.optimizer;
        if !(o.exp_avg.is_empty() && o.exp_avg_sq.is_empty()) {
            for (name, moments) in [("exp_avg", &o.exp_avg), ("exp_avg_sq", &o.exp_avg_sq)] {
                for (k, t) in &self.adapter.tensors {
                    match moments.get(k) {
                        None => return bad(format!("optimizer {name} has no entry for '{k}'")),
                        Some(m) if m.len() != t.values.len() => {
                            return bad(format!(
                                "optimizer {name} of '{k}' has {} values, the tensor {}",
                                m.len(),
                                t.values.len()
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if let Some(k) = moments
                    .keys()
                    .find(|k| !self.adapter.tensors.contains_key(*k))
                {
                    return bad(format!(
                        "optimizer {name} has an entry for '{k}', which the adapter lacks"
                    ));
                }
            }
        }
        if !self.epoch.is_finite() || self.epoch < 0.0 {
            return bad(format!("epoch {} is not a finite number >= 0", self.epoch));
        }
        if let Some(m) = self.best_metric.filter(|m| !m.is_finite()) {
            return bad(format!("best_metric {m} is not finite"));
        }
        Ok(())
    }

    /// The bytes of `optimizer.safetensors`.
    fn optimizer_bytes(&self) -> Result<Vec<u8>> {
        let o = &self.optimizer;
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (suffix, moments) in [("exp_avg", &o.exp_avg), ("exp_avg_sq", &o.exp_avg_sq)] {
            for (k, m) in moments {
                let shape = self
                    .adapter
                    .tensors
                    .get(k)
                    .map_or_else(|| vec![m.len()], |t| t.shape.clone());
                owned.push((format!("{k}.{suffix}"), shape, f32_bytes(m)));
            }
        }
        let views: Vec<TensorView<'_>> = owned
            .iter()
            .map(|(n, s, b)| TensorView::new(n, s, DType::F32, b))
            .collect();
        let metadata = BTreeMap::from([
            ("format".to_string(), "hone-adamw".to_string()),
            ("step".to_string(), o.step.to_string()),
        ]);
        serialize_safetensors(&views, Some(&metadata))
    }

    /// HF's `trainer_state.json` (sorted keys, two-space indent, like `TrainerState.save_to_json`).
    fn trainer_state_bytes(&self) -> Result<Vec<u8>> {
        let log_history: Vec<Value> = self
            .loss_history
            .iter()
            .map(|&(step, loss)| serde_json::json!({"loss": JsonF64(loss), "step": step}))
            .collect();
        let mut m: BTreeMap<&str, Value> = BTreeMap::from([
            ("best_global_step", self.best_global_step.into()),
            ("best_metric", self.best_metric.into()),
            (
                "best_model_checkpoint",
                self.best_model_checkpoint.clone().into(),
            ),
            ("epoch", self.epoch.into()),
            ("global_step", self.step.into()),
            ("is_hyper_param_search", false.into()),
            ("is_local_process_zero", true.into()),
            ("is_world_process_zero", true.into()),
            ("log_history", log_history.into()),
            ("trial_name", Value::Null),
            ("trial_params", Value::Null),
        ]);
        for (from, to) in HF_ARGS {
            if let Some(v) = self.training_config.get(from) {
                m.insert(to, v.clone());
            }
        }
        let mut obj = serde_json::Map::new();
        for (k, v) in m {
            obj.insert(k.to_string(), v);
        }
        let mut out = serde_json::to_vec_pretty(&Value::Object(obj))
            .map_err(|e| Error::Invalid(format!("{TRAINER_STATE_FILE}: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Write `checkpoints_dir/checkpoint-{step}/` atomically and return its path. On any error
    /// (a full disk included) the temporary folder is removed, the error names the file, and
    /// earlier checkpoints are untouched. An existing folder of the same step is replaced
    /// (moved to `checkpoint-{step}.old-{pid}` for the instant of the swap, then deleted).
    pub fn save(&self, checkpoints_dir: impl AsRef<Path>) -> Result<PathBuf> {
        self.validate()?;
        let parent = checkpoints_dir.as_ref();
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let name = checkpoint_name(self.step);
        let final_dir = parent.join(&name);
        let tmp = parent.join(format!("{name}.tmp-{}", pid()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        if let Err(e) = self.write_files(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        sync_dir(&tmp);
        let old = parent.join(format!("{name}.old-{}", pid()));
        if final_dir.exists() {
            if let Err(e) = std::fs::rename(&final_dir, &old) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Error::io(&final_dir, e));
            }
        }
        if let Err(e) = std::fs::rename(&tmp, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            if old.exists() {
                let _ = std::fs::rename(&old, &final_dir);
            }
            return Err(Error::io(&final_dir, e));
        }
        sync_dir(parent);
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(final_dir)
    }

    /// Every file of the checkpoint into `dir`, `hone_state.json` last.
    fn write_files(&self, dir: &Path) -> Result<()> {
        let base = self
            .adapter
            .base_model_name_or_path
            .as_deref()
            .unwrap_or("");
        let (config, weights) = self.adapter.to_peft_bytes(base)?;
        let contents: [(&str, Vec<u8>); 4] = [
            (ADAPTER_WEIGHTS_FILE, weights),
            (ADAPTER_CONFIG_FILE, config),
            (OPTIMIZER_FILE, self.optimizer_bytes()?),
            (TRAINER_STATE_FILE, self.trainer_state_bytes()?),
        ];
        let mut files = BTreeMap::new();
        let pause = slow_write_pause();
        for (file, bytes) in &contents {
            write_synced(&dir.join(file), bytes)?;
            if let Some(p) = pause {
                std::thread::sleep(p);
            }
            files.insert(
                file.to_string(),
                FileRecord {
                    bytes: bytes.len() as u64,
                    fnv1a64: format!("{:016x}", fnv1a64(bytes)),
                },
            );
        }
        let state = HoneState {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            step: self.step,
            epoch: self.epoch,
            scheduler_step: self.scheduler_step,
            optimizer_step: self.optimizer.step,
            rng_states: self.rng_states.clone(),
            data_position: self.data_position,
            model_fingerprint: self.model_fingerprint.clone(),
            training_config: self.training_config.clone(),
            loss_history: self
                .loss_history
                .iter()
                .map(|&(s, l)| (s, JsonF64(l)))
                .collect(),
            best_metric: self.best_metric,
            best_model_checkpoint: self.best_model_checkpoint.clone(),
            best_global_step: self.best_global_step,
            eval_history: self
                .eval_history
                .iter()
                .map(|&(s, l)| (s, JsonF64(l)))
                .collect(),
            evals_without_improvement: self.evals_without_improvement,
            tokens_seen: self.tokens_seen,
            files,
        };
        let path = dir.join(HONE_STATE_FILE);
        let mut bytes =
            serde_json::to_vec_pretty(&state).map_err(|e| Error::format(&path, e.to_string()))?;
        bytes.push(b'\n');
        write_synced(&path, &bytes)
    }

    /// Read and verify a checkpoint folder. A missing, truncated or corrupt file is an error
    /// naming that file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let dir = dir.as_ref();
        let state = read_state(dir)?;
        let mut contents: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for file in DATA_FILES {
            contents.insert(file, read_verified(dir, file, &state)?);
        }
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let weights = contents.remove(ADAPTER_WEIGHTS_FILE).unwrap_or_default();
        let mut adapter = LoraAdapter::from_peft_bytes(
            &config_path,
            &contents[ADAPTER_CONFIG_FILE],
            &weights_path,
            Bytes::from_vec(weights),
        )?;
        adapter.source = Some(dir.to_path_buf());
        if adapter.base_model_name_or_path.as_deref() == Some("") {
            adapter.base_model_name_or_path = None;
        }
        let optimizer = read_optimizer(
            &dir.join(OPTIMIZER_FILE),
            contents.remove(OPTIMIZER_FILE).unwrap_or_default(),
            state.optimizer_step,
            &adapter,
        )?;
        let ckpt = Checkpoint {
            step: state.step,
            epoch: state.epoch,
            adapter,
            optimizer,
            scheduler_step: state.scheduler_step,
            rng_states: state.rng_states,
            data_position: state.data_position,
            model_fingerprint: state.model_fingerprint,
            training_config: state.training_config,
            loss_history: state
                .loss_history
                .into_iter()
                .map(|(s, l)| (s, l.0))
                .collect(),
            best_metric: state.best_metric,
            best_model_checkpoint: state.best_model_checkpoint,
            best_global_step: state.best_global_step,
            eval_history: state
                .eval_history
                .into_iter()
                .map(|(s, l)| (s, l.0))
                .collect(),
            evals_without_improvement: state.evals_without_improvement,
            tokens_seen: state.tokens_seen,
        };
        ckpt.validate()
            .map_err(|e| Error::format(dir.join(HONE_STATE_FILE), e.to_string()))?;
        Ok(ckpt)
    }

    /// Check that this checkpoint can resume training of `model` with `lora`: same model
    /// (fingerprint), same LoRA shape (r, targets, modules_to_save) and scale. The error says
    /// what differs.
    pub fn check_resume(
        &self,
        model: &ModelFingerprint,
        lora: &LoraConfig,
        spec: &ModelSpec,
    ) -> Result<()> {
        let at = self.adapter.source.as_ref().map_or_else(
            || format!("step {}", self.step),
            |p| p.display().to_string(),
        );
        let fail = |what: String| {
            Err(Error::Invalid(format!(
                "cannot resume from checkpoint {at}: {what}"
            )))
        };
        if let Some(d) = self.model_fingerprint.difference(model) {
            return fail(format!("it was made for another model: {d}"));
        }
        let ours = &self.adapter.config;
        if ours.r != lora.r {
            return fail(format!(
                "LoRA rank differs: r = {} in the checkpoint, {} in the config",
                ours.r, lora.r
            ));
        }
        if ours.lora_alpha != lora.lora_alpha || ours.use_rslora != lora.use_rslora {
            return fail(format!(
                "LoRA scale differs: lora_alpha {} use_rslora {} in the checkpoint, lora_alpha {} use_rslora {} in the config",
                ours.lora_alpha, ours.use_rslora, lora.lora_alpha, lora.use_rslora
            ));
        }
        let (a, b) = (ours.resolve_targets(spec)?, lora.resolve_targets(spec)?);
        if a != b {
            let only = |x: &[LoraTarget], y: &[LoraTarget]| {
                x.iter()
                    .find(|t| !y.contains(t))
                    .map(|t| t.module_path.clone())
            };
            let detail = match (only(&a, &b), only(&b, &a)) {
                (Some(m), _) => format!("{m} is trained in the checkpoint but not by the config"),
                (None, Some(m)) => {
                    format!("{m} is trained by the config but not in the checkpoint")
                }
                (None, None) => "the order differs".to_string(),
            };
            return fail(format!(
                "LoRA targets differ: the checkpoint trains {} ({}), the config {} ({}); {detail}",
                a.len(),
                summarize(&a),
                b.len(),
                summarize(&b)
            ));
        }
        let mut sa = ours.modules_to_save.clone();
        let mut sb = lora.modules_to_save.clone();
        sa.sort();
        sa.dedup();
        sb.sort();
        sb.dedup();
        if sa != sb {
            return fail(format!(
                "modules_to_save differ: {sa:?} in the checkpoint, {sb:?} in the config"
            ));
        }
        self.adapter.check_against(spec)
    }
}

/// `q_proj x30, v_proj x30`: targets grouped by projection.
fn summarize(targets: &[LoraTarget]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in targets {
        let name = t.module_path.rsplit('.').next().unwrap_or("");
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| format!("{n} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse `hone_state.json` of `dir`.
fn read_state(dir: &Path) -> Result<HoneState> {
    let path = dir.join(HONE_STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let what = if dir.is_dir() {
                "missing: the checkpoint is incomplete (interrupted save?)"
            } else {
                "missing: no checkpoint folder here"
            };
            return Err(Error::format(&path, what));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let state: HoneState = serde_json::from_slice(&bytes).map_err(|e| {
        Error::format(
            &path,
            format!("corrupt or not a hone checkpoint state: {e}"),
        )
    })?;
    if state.format != STATE_FORMAT {
        return Err(Error::invalid_field(
            &path,
            "format",
            format!("'{}', expected '{STATE_FORMAT}'", state.format),
        ));
    }
    if state.version > STATE_VERSION {
        return Err(Error::invalid_field(
            &path,
            "version",
            format!(
                "{} is newer than this hone reads ({STATE_VERSION}); upgrade hone",
                state.version
            ),
        ));
    }
    Ok(state)
}

/// The bytes of `file` in `dir`, checked against the size and checksum `hone_state.json` lists.
fn read_verified(dir: &Path, file: &str, state: &HoneState) -> Result<Vec<u8>> {
    let path = dir.join(file);
    let rec = state.files.get(file).ok_or_else(|| {
        Error::format(
            dir.join(HONE_STATE_FILE),
            format!("lists no '{file}'; the state file is damaged"),
        )
    })?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::format(
                &path,
                "missing: the checkpoint is incomplete",
            ));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    if bytes.len() as u64 != rec.bytes {
        return Err(Error::format(
            &path,
            format!(
                "{} bytes but the checkpoint wrote {}: truncated or changed since",
                bytes.len(),
                rec.bytes
            ),
        ));
    }
    let sum = format!("{:016x}", fnv1a64(&bytes));
    if sum != rec.fnv1a64 {
        return Err(Error::format(
            &path,
            format!(
                "corrupt: checksum {sum} but the checkpoint wrote {}",
                rec.fnv1a64
            ),
        ));
    }
    Ok(bytes)
}

/// AdamW moments from `optimizer.safetensors`, checked against the adapter's tensors.
fn read_optimizer(
    path: &Path,
    bytes: Vec<u8>,
    step: u64,
    adapter: &LoraAdapter,
) -> Result<AdamWState> {
    let file = SafetensorsFile::from_bytes(path, Bytes::from_vec(bytes))?;
    let mut state = AdamWState {
        step,
        ..AdamWState::default()
    };
    for t in &file.tensors {
        let (key, moments) = if let Some(k) = t.name.strip_suffix(".exp_avg_sq") {
            (k, &mut state.exp_avg_sq)
        } else if let Some(k) = t.name.strip_suffix(".exp_avg") {
            (k, &mut state.exp_avg)
        } else {
            return Err(Error::tensor(
                path,
                &t.name,
                "not an AdamW moment (names end in .exp_avg or .exp_avg_sq)",
            ));
        };
        let Some(p) = adapter.tensors.get(key) else {
            return Err(Error::tensor(
                path,
                &t.name,
                format!("the adapter has no tensor '{key}'"),
            ));
        };
        if t.shape != p.shape || t.dtype != DType::F32 {
            return Err(Error::tensor(
                path,
                &t.name,
                format!(
                    "{} {:?}, expected F32 {:?} like the adapter tensor",
                    t.dtype, t.shape, p.shape
                ),
            ));
        }
        moments.insert(key.to_string(), t.to_f32());
    }
    Ok(state)
}

#[cfg(test)]
mod tests;
