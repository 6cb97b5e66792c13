//! Metrics as JSON Lines: one object per logging step, `{"step":10,"epoch":0.5,"loss":1.25,...}`,
//! with the names the caller gave (HF `log_history` names: loss, learning_rate, grad_norm,
//! epoch, eval_loss, ...), in the order given. JSON has no NaN or infinity: a non-finite value
//! is written as `null`.

use crate::error::{Error, Result};

/// Checks that no metric name repeats and none is "step" (the step is always written).
pub fn check_metric_names(step: u64, metrics: &[(&str, f64)]) -> Result<()> {
    for (i, (name, _)) in metrics.iter().enumerate() {
        if *name == "step" || metrics[..i].iter().any(|(seen, _)| seen == name) {
            return Err(Error::Invalid(format!(
                "metrics at step {step}: '{name}' given twice (\"step\" is always written)"
            )));
        }
    }
    Ok(())
}

/// One JSON line (without the newline) for the metrics of `step`.
pub fn metrics_json_line(step: u64, metrics: &[(&str, f64)]) -> Result<String> {
    check_metric_names(step, metrics)?;
    let mut line = format!("{{\"step\":{step}");
    for (name, value) in metrics {
        let name = serde_json::to_string(name)
            .map_err(|e| Error::Invalid(format!("metric name {name:?}: {e}")))?;
        line.push(',');
        line.push_str(&name);
        line.push(':');
        if value.is_finite() {
            // serde_json prints the shortest form that reads back as the same f64.
            line.push_str(&serde_json::Value::from(*value).to_string());
        } else {
            line.push_str("null");
        }
    }
    line.push('}');
    Ok(line)
}

#[cfg(not(target_arch = "wasm32"))]
pub use file::MetricsJsonl;

#[cfg(not(target_arch = "wasm32"))]
mod file {
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use super::metrics_json_line;
    use crate::error::{Error, Result};
    use crate::tensorboard::MetricsSink;

    /// A JSON Lines metrics file; every `log` call writes one line and flushes it.
    #[derive(Debug)]
    pub struct MetricsJsonl {
        path: PathBuf,
        file: File,
    }

    impl MetricsJsonl {
        /// Creates (or truncates) the file at `path`, creating its folder if needed.
        pub fn create(path: impl AsRef<Path>) -> Result<Self> {
            Self::open(path.as_ref(), false)
        }

        /// Opens the file at `path` for appending (resuming a run), creating it if needed.
        pub fn append(path: impl AsRef<Path>) -> Result<Self> {
            Self::open(path.as_ref(), true)
        }

        fn open(path: &Path, append: bool) -> Result<Self> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let mut options = OpenOptions::new();
            options.create(true);
            if append {
                options.append(true);
            } else {
                options.write(true).truncate(true);
            }
            let file = options.open(path).map_err(|e| Error::io(path, e))?;
            Ok(MetricsJsonl {
                path: path.to_path_buf(),
                file,
            })
        }

        /// The file being written.
        pub fn path(&self) -> &Path {
            &self.path
        }
    }

    impl MetricsSink for MetricsJsonl {
        fn log(&mut self, step: u64, metrics: &[(&str, f64)]) -> Result<()> {
            let mut line = metrics_json_line(step, metrics)?;
            line.push('\n');
            // One write per line (the File is unbuffered), so a reader never sees half a line
            // unless the disk fills.
            self.file
                .write_all(line.as_bytes())
                .map_err(|e| Error::io(&self.path, e))
        }

        fn flush(&mut self) -> Result<()> {
            self.file.flush().map_err(|e| Error::io(&self.path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_step_first_then_metrics_in_order_as_strict_json() {
        let line = metrics_json_line(
            10,
            &[
                ("epoch", 0.5),
                ("loss", 1.25),
                ("learning_rate", 2e-4),
                ("grad_norm", f64::NAN),
            ],
        )
        .unwrap();
        assert_eq!(
            line,
            r#"{"step":10,"epoch":0.5,"loss":1.25,"learning_rate":0.0002,"grad_norm":null}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["learning_rate"].as_f64(), Some(2e-4));
    }

    #[test]
    fn values_round_trip_and_names_are_escaped() {
        let v = 0.1f64 + 0.2;
        let line = metrics_json_line(0, &[("a\"b", v), ("eval_loss", 1e-300)]).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["a\"b"].as_f64(), Some(v));
        assert_eq!(parsed["eval_loss"].as_f64(), Some(1e-300));
        assert_eq!(parsed["step"].as_u64(), Some(0));
    }

    #[test]
    fn rejects_duplicate_names_and_step() {
        assert!(metrics_json_line(1, &[("loss", 1.0), ("loss", 2.0)]).is_err());
        assert!(metrics_json_line(1, &[("step", 1.0)]).is_err());
    }
}
