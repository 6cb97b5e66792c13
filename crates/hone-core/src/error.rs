//! Typed errors that name the file, tensor or field that is wrong.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in hone-core. Each variant's message is one line that names
/// the file (and the tensor, field or line) and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS could not open or read a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file exists but its contents are not what its format requires.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// A tensor type that hone cannot read.
    #[error("{}: tensor '{tensor}' has unsupported type {ty}; supported: {supported}", path.display())]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        ty: String,
        supported: String,
    },

    /// A model architecture that hone cannot run.
    #[error("{}: unsupported architecture '{arch}'; supported: {supported}", path.display())]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },

    /// A required field is missing from a config/metadata file.
    #[error("{}: missing required field '{field}'", path.display())]
    MissingField { path: PathBuf, field: String },

    /// A field is present but has an invalid value.
    #[error("{}: field '{field}': {msg}", path.display())]
    InvalidField {
        path: PathBuf,
        field: String,
        msg: String,
    },

    /// A tensor the model needs is absent, or has the wrong shape.
    #[error("{}: tensor '{tensor}': {msg}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },

    /// Tokenizer construction or use failed.
    #[error("tokenizer ({}): {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },

    /// Chat template parse or render failed.
    #[error("chat template: {0}")]
    Template(String),

    /// An invalid argument from the caller (bad option value, empty prompt, ...).
    #[error("{0}")]
    Invalid(String),

    /// The GPU engine failed: no adapter, a model or batch beyond the adapter's limits, a
    /// shader or validation error, or the device was lost.
    #[error("gpu: {0}")]
    Gpu(String),
}

/// Result alias for hone-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A format error for `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    /// An I/O error for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    /// A missing-field error for `path`.
    pub fn missing(path: impl AsRef<Path>, field: impl Into<String>) -> Self {
        Error::MissingField {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
        }
    }
    /// An invalid-field error for `path`.
    pub fn invalid_field(
        path: impl AsRef<Path>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::InvalidField {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// A tensor error for `path`.
    pub fn tensor(
        path: impl AsRef<Path>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }
    /// A tokenizer error for `path`.
    pub fn tokenizer(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Tokenizer {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
