//! `GgufError`: everything that can go wrong reading or converting a GGUF file (`model::gguf`).

use std::path::PathBuf;

/// Everything that can go wrong reading or converting a GGUF file. Every variant names the file
/// (or the tensor / key) so that the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (starts with {found:?}, expected \"GGUF\")")]
    /// The first four bytes are not `GGUF`.
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The bytes found instead.
        found: String,
    },
    #[error("{path}: GGUF version {version} is not supported (supported: 2, 3)")]
    /// A GGUF version other than 2 or 3.
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version it declares.
        version: u32,
    },
    #[error("{path}: file is truncated: reading {what} at byte {offset} needs {needed} bytes, but the file has {len}")]
    /// The file ends before a field it declares.
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Where it starts (bytes).
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// The file's length (bytes).
        len: u64,
    },
    #[error("{path}: malformed GGUF: {msg}")]
    /// A structure that cannot be right (a count or length out of range, a bad string).
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    #[error("{path}: missing required metadata key `{key}`")]
    /// A metadata key the conversion needs is absent.
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    #[error("{path}: metadata key `{key}`: expected {expected}, found {found}")]
    /// A metadata key holds a value of another type.
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type needed.
        expected: String,
        /// The type found.
        found: String,
    },
    #[error("{path}: tensor {name} has type {type_name} ({type_id}), which lorafleet cannot import; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")]
    /// A tensor in a ggml type this importer does not decode.
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// ggml's name of its type.
        type_name: String,
        /// ggml's id of its type.
        type_id: u32,
    },
    #[error("{path}: tensor {name}: data bytes [{start}, {end}) are out of bounds: the file has {len} bytes (truncated?)")]
    /// A tensor's data lies (partly) past the end of the file.
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// First byte of its data.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file's length (bytes).
        len: u64,
    },
    #[error("{path}: architecture `{arch}` is not supported (supported: llama, qwen2)")]
    /// `general.architecture` names a model family this importer does not convert.
    UnsupportedArch {
        /// The file.
        path: PathBuf,
        /// The architecture.
        arch: String,
    },
    #[error("{path}: {msg}")]
    /// The model the file describes is inconsistent (shapes, head counts).
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    #[error("{path}: tokenizer: {msg}")]
    /// The embedded tokenizer cannot be converted.
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Anything else (writing the output folder, ...).
    #[error("{0}")]
    Other(String),
}

impl GgufError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io { path: path.into(), source }
    }
}
