//! Training logs: TensorBoard event files written without TensorFlow, and JSON Lines metrics.
//!
//! The trainer logs through one [`MetricsSink`]: `log(step, &[("loss", 1.9), ("learning_rate",
//! 2e-4), ...])` with HF Trainer's `log_history` names. [`EventWriter`] turns those names into
//! the tags HF's `TensorBoardCallback` writes ([`hf_tag`]: `train/loss`, `eval/loss`, ...);
//! [`MetricsJsonl`] keeps them as they are. The byte encoding ([`EventEncoder`]) has no file
//! I/O and builds for wasm32, so the browser can offer the same file as a download.

mod crc32c;
mod encode;
mod jsonl;

pub use crc32c::{crc32c, masked_crc32c};
pub use encode::{encode_record, file_version_event, scalar_event, EventEncoder, FILE_VERSION};
#[cfg(not(target_arch = "wasm32"))]
pub use jsonl::MetricsJsonl;
pub use jsonl::{check_metric_names, metrics_json_line};
#[cfg(not(target_arch = "wasm32"))]
pub use writer::EventWriter;

use crate::error::Result;

/// Where the trainer sends its metrics: TensorBoard, JSON Lines, or several at once.
pub trait MetricsSink {
    /// Records `metrics` (HF log names and values) at optimizer step `step`; a sink that writes
    /// files has them on disk (flushed to the OS) when this returns.
    fn log(&mut self, step: u64, metrics: &[(&str, f64)]) -> Result<()>;
    /// Flushes anything buffered.
    fn flush(&mut self) -> Result<()>;
}

impl MetricsSink for Vec<Box<dyn MetricsSink>> {
    fn log(&mut self, step: u64, metrics: &[(&str, f64)]) -> Result<()> {
        self.iter_mut().try_for_each(|sink| sink.log(step, metrics))
    }

    fn flush(&mut self) -> Result<()> {
        self.iter_mut().try_for_each(|sink| sink.flush())
    }
}

/// The TensorBoard tag HF's `TensorBoardCallback` uses for a log name (`rewrite_logs`):
/// `eval_x` -> `eval/x`, `test_x` -> `test/x`, anything else `x` -> `train/x`. A name that already
/// holds a `/` is taken as a tag and kept.
pub fn hf_tag(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else if let Some(rest) = name.strip_prefix("eval_") {
        format!("eval/{rest}")
    } else if let Some(rest) = name.strip_prefix("test_") {
        format!("test/{rest}")
    } else {
        format!("train/{name}")
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod writer {
    use std::fs::{File, OpenOptions};
    use std::io::{BufWriter, Write};
    use std::path::{Path, PathBuf};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::{check_metric_names, hf_tag, EventEncoder, MetricsSink};
    use crate::error::{Error, Result};

    /// Seconds since the Unix epoch (0 if the clock is set before it).
    fn now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    /// This machine's name from /etc/hostname, or "localhost"; only `[A-Za-z0-9._-]` is kept
    /// so that it is safe inside a file name.
    fn hostname() -> String {
        let raw = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let name: String = raw
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() {
            "localhost".to_string()
        } else {
            name
        }
    }

    /// A TensorBoard event file, `events.out.tfevents.{unix_secs}.{hostname}.{pid}.hone`, in a
    /// logging folder (HF `logging_dir`).
    #[derive(Debug)]
    pub struct EventWriter {
        path: PathBuf,
        file: BufWriter<File>,
        encoder: EventEncoder,
    }

    impl EventWriter {
        /// Creates `log_dir` if needed and a new event file in it, its first record written and
        /// flushed. A name already taken (two writers in one second) gets a counter before
        /// `.hone`; an existing file is never overwritten.
        pub fn create(log_dir: impl AsRef<Path>) -> Result<Self> {
            let log_dir = log_dir.as_ref();
            std::fs::create_dir_all(log_dir).map_err(|e| Error::io(log_dir, e))?;
            let wall_time = now();
            let stem = format!(
                "events.out.tfevents.{}.{}.{}",
                wall_time as u64,
                hostname(),
                std::process::id()
            );
            let mut attempt = 0u32;
            let (path, file) = loop {
                let name = match attempt {
                    0 => format!("{stem}.hone"),
                    n => format!("{stem}.{n}.hone"),
                };
                let path = log_dir.join(name);
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(file) => break (path, file),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                        attempt += 1;
                    }
                    Err(e) => return Err(Error::io(&path, e)),
                }
            };
            let mut writer = EventWriter {
                path,
                file: BufWriter::new(file),
                encoder: EventEncoder::new(wall_time),
            };
            writer.write_pending()?;
            writer.flush()?;
            Ok(writer)
        }

        /// The event file being written.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// Writes one scalar under `tag` (e.g. "train/loss") at `step`, stamped with the time now.
        pub fn add_scalar(&mut self, tag: &str, value: f32, step: u64) -> Result<()> {
            self.encoder.add_scalar(tag, value, step, now())?;
            self.write_pending()
        }

        /// Pushes everything written so far to the OS.
        pub fn flush(&mut self) -> Result<()> {
            self.file.flush().map_err(|e| Error::io(&self.path, e))
        }

        fn write_pending(&mut self) -> Result<()> {
            let bytes = self.encoder.take_bytes();
            self.file
                .write_all(&bytes)
                .map_err(|e| Error::io(&self.path, e))
        }
    }

    impl MetricsSink for EventWriter {
        /// One scalar event per metric, tagged by [`hf_tag`], values stored as f32 (as
        /// TensorBoard's `simple_value`); flushed at the end.
        fn log(&mut self, step: u64, metrics: &[(&str, f64)]) -> Result<()> {
            check_metric_names(step, metrics)?;
            for (name, value) in metrics {
                self.add_scalar(&hf_tag(name), *value as f32, step)?;
            }
            EventWriter::flush(self)
        }

        fn flush(&mut self) -> Result<()> {
            EventWriter::flush(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_tags_follow_rewrite_logs() {
        assert_eq!(hf_tag("loss"), "train/loss");
        assert_eq!(hf_tag("learning_rate"), "train/learning_rate");
        assert_eq!(hf_tag("grad_norm"), "train/grad_norm");
        assert_eq!(hf_tag("epoch"), "train/epoch");
        assert_eq!(hf_tag("eval_loss"), "eval/loss");
        assert_eq!(hf_tag("eval_runtime"), "eval/runtime");
        assert_eq!(hf_tag("test_accuracy"), "test/accuracy");
        assert_eq!(hf_tag("eval/bleu"), "eval/bleu");
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn writers_create_files_and_fan_out() {
        let dir = std::env::temp_dir().join(format!("hone-tb-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tb = EventWriter::create(dir.join("runs")).unwrap();
        let tb2 = EventWriter::create(dir.join("runs")).unwrap();
        assert_ne!(
            tb.path(),
            tb2.path(),
            "a second writer must not reuse the file"
        );
        let name = tb.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with("events.out.tfevents.") && name.ends_with(".hone"),
            "{name}"
        );
        let tb_path = tb.path().to_path_buf();
        let jsonl = MetricsJsonl::create(dir.join("metrics.jsonl")).unwrap();
        let mut sinks: Vec<Box<dyn MetricsSink>> = vec![Box::new(tb), Box::new(jsonl)];
        sinks
            .log(1, &[("loss", 2.5), ("learning_rate", 1e-4)])
            .unwrap();
        sinks.log(2, &[("eval_loss", 2.0)]).unwrap();
        assert!(sinks.log(3, &[("loss", 1.0), ("loss", 1.0)]).is_err());
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"step\":1,\"loss\":2.5,\"learning_rate\":0.0001}\n{\"step\":2,\"eval_loss\":2.0}\n"
        );
        // Flushed on each log, without waiting for drop: the header and exactly the three
        // events (the rejected call wrote nothing), each with a wall time and a 1-byte step.
        let bytes = std::fs::read(&tb_path).unwrap();
        let mut expected = EventEncoder::new(1.0).bytes().len();
        for tag in ["train/loss", "train/learning_rate", "eval/loss"] {
            let mut one = EventEncoder::default();
            one.add_scalar(tag, 0.0, 1, 1.0).unwrap();
            expected += one.bytes().len();
        }
        assert_eq!(bytes.len(), expected);
        drop(sinks);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
