//! `GgufError`: everything that can go wrong reading or converting a GGUF file (`model::gguf`).

use std::path::PathBuf;

/// Everything that can go wrong reading or converting a GGUF file. Every variant names the file
/// (or the tensor / key) so that the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (starts with {found:?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: String },
    #[error("{path}: GGUF version {version} is not supported (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: file is truncated: reading {what} at byte {offset} needs {needed} bytes, but the file has {len}")]
    Truncated { path: PathBuf, what: String, offset: u64, needed: u64, len: u64 },
    #[error("{path}: malformed GGUF: {msg}")]
    Malformed { path: PathBuf, msg: String },
    #[error("{path}: missing required metadata key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}`: expected {expected}, found {found}")]
    WrongType { path: PathBuf, key: String, expected: String, found: String },
    #[error("{path}: tensor {name} has type {type_name} ({type_id}), which lorafleet cannot import; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")]
    UnsupportedTensorType { path: PathBuf, name: String, type_name: String, type_id: u32 },
    #[error("{path}: tensor {name}: data bytes [{start}, {end}) are out of bounds: the file has {len} bytes (truncated?)")]
    TensorOutOfBounds { path: PathBuf, name: String, start: u64, end: u64, len: u64 },
    #[error("{path}: architecture `{arch}` is not supported (supported: llama, qwen2)")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{0}")]
    Other(String),
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io { path: path.into(), source }
    }
}
