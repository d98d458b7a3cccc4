//! The crate's error enum: every failure a user can cause (a bad file, a bad request, an
//! unknown adapter, a prompt over the context, a full cache) is a value of this type, never a
//! panic. A layer with failures of its own has its own type (`GgufError`, `DataError` here, so that
//! this floor imports nothing above it; `kv::KvError` below it) and converts into this one.

use std::path::PathBuf;

mod data;
mod gguf;

pub use data::DataError;
pub use gguf::GgufError;

/// Every failure of the library, by what a caller must tell apart: a request the caller can fix
/// (`InvalidRequest` naming the field, `PromptTooLong` with the real limits, `EmptyPrompt`), an
/// adapter that is not there (`UnknownAdapter`) or does not load (`Adapter`), back-pressure
/// (`QueueFull`), the caller's own `Cancelled`, an engine that is stopping (`ShuttingDown`) or
/// gone (`EngineStopped`), the device (`Cuda`), files (`Io`, `Config`, `Weights`, ...).
/// Messages speak of the library's options, not of command-line flags (the CLI adds those).
/// New variants may come: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: bad model config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: bad weights file: {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("missing tensor `{name}` in {path}")]
    MissingTensor { name: String, path: PathBuf },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: bad tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The prompt plus the tokens asked for do not fit: `context` is the most a sequence may
    /// hold (the model's context, or the KV cache's capacity where that is smaller).
    #[error("{}", too_long(*tokens, *new_tokens, *context))]
    PromptTooLong { tokens: usize, new_tokens: usize, context: usize },
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("the model produced non-finite logits (NaN or infinity) at generated token {step}: its weights or adapter overflow; no token was emitted")]
    NonFiniteLogits { step: usize },
    /// Something about a request or a call is wrong, in words (files given to the CLI, a
    /// remote server's answer); a request field the engine refuses is `InvalidRequest`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request field out of its range: `field` is its name in `GenerateOptions` /
    /// `SamplingParams` (and in the OpenAI API: `max_tokens` there is `max_new_tokens` here).
    #[error("bad request: {msg}")]
    InvalidRequest { field: &'static str, msg: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("{0}")]
    Fetch(String),
    #[error("adapter `{id}`: {msg}")]
    Adapter { id: String, msg: String },
    /// No adapter of that name: not in the engine's adapter folder, not loaded or added by
    /// name, and (where paths are allowed) not a path to a peft adapter folder.
    #[error("unknown adapter `{0}`: not in the adapter folder, not loaded by name, and not a path to a peft adapter folder")]
    UnknownAdapter(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// More requests are in flight than the server queues (`limit`: its running slots plus
    /// `--max-queued-requests`): HTTP 503 with Retry-After.
    #[error("{in_flight} requests are in flight, the most this server queues is {limit}; retry shortly")]
    QueueFull { in_flight: usize, limit: usize },
    /// The caller cancelled the request (`RequestHandle::cancel`, or a client that went away).
    #[error("the request was cancelled")]
    Cancelled,
    /// The request was stopped because the engine is stopping (a server's shutdown reached its
    /// timeout, or the `Engine` was dropped): HTTP 503.
    #[error("stopped: {0}")]
    ShuttingDown(String),
    /// The engine is gone (its thread ended, or the `Engine` was dropped): nothing more will be
    /// served by it. HTTP 503.
    #[error("engine stopped: {0}")]
    EngineStopped(String),
}

fn too_long(tokens: usize, new_tokens: usize, context: usize) -> String {
    if new_tokens == 0 {
        format!("the prompt has {tokens} tokens; the model's context holds {context}")
    } else if new_tokens >= context {
        format!("max_new_tokens {new_tokens} alone exceeds the context of {context} tokens (prompt + new tokens)")
    } else {
        format!(
            "the prompt has {tokens} tokens and max_new_tokens is {new_tokens}: {} in all, over the context of {context} tokens (at most {} prompt tokens with this max_new_tokens)",
            tokens + new_tokens,
            context - new_tokens
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
