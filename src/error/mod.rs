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
///
/// ```
/// use lorafleet::Error;
///
/// fn advice(e: &Error) -> &'static str {
///     match e {
///         Error::InvalidRequest { .. } | Error::PromptTooLong { .. } | Error::EmptyPrompt => "fix the request",
///         Error::UnknownAdapter(_) => "load the adapter first",
///         Error::QueueFull { .. } => "retry shortly",
///         Error::Cancelled => "nothing to do",
///         _ => "report it",
///     }
/// }
/// let e = Error::PromptTooLong { tokens: 9000, new_tokens: 100, context: 8192 };
/// assert_eq!(advice(&e), "fix the request");
/// assert!(e.to_string().contains("over the context of 8192 tokens"));
/// assert_eq!(advice(&Error::QueueFull { in_flight: 64, limit: 64 }), "retry shortly");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A model's `config.json` cannot be used.
    #[error("{path}: bad model config: {msg}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A weights file (safetensors) cannot be read.
    #[error("{path}: bad weights file: {msg}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the model needs is not in its weights.
    #[error("missing tensor `{name}` in {path}")]
    MissingTensor {
        /// The tensor.
        name: String,
        /// The weights file (or folder).
        path: PathBuf,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A `tokenizer.json` cannot be loaded.
    #[error("{path}: bad tokenizer: {msg}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Encoding or decoding text failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// The model has no chat template, or it fails on these messages.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The prompt plus the tokens asked for do not fit: `context` is the most a sequence may
    /// hold (the model's context, or the KV cache's capacity where that is smaller).
    #[error("{}", too_long(*tokens, *new_tokens, *context))]
    PromptTooLong {
        /// Tokens of the prompt.
        tokens: usize,
        /// Tokens asked for (`max_new_tokens`).
        new_tokens: usize,
        /// The most prompt + new tokens one sequence may hold.
        context: usize,
    },
    /// A prompt with no token.
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    /// The forward pass gave NaN or infinite logits (an adapter or weights that overflow).
    #[error("the model produced non-finite logits (NaN or infinity) at generated token {step}: its weights or adapter overflow; no token was emitted")]
    NonFiniteLogits {
        /// The generated token's index.
        step: usize,
    },
    /// Something about a request or a call is wrong, in words (files given to the CLI, a
    /// remote server's answer); a request field the engine refuses is `InvalidRequest`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request field out of its range: `field` is its name in `GenerateOptions` /
    /// `SamplingParams` (and in the OpenAI API: `max_tokens` there is `max_new_tokens` here).
    #[error("bad request: {msg}")]
    InvalidRequest {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it, naming it.
        msg: String,
    },
    /// Reading or converting a GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The paged KV cache (out of blocks, too small for one sequence).
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    /// A data file (CSV, JSON lines, a task folder).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The CUDA driver, a kernel launch or device memory.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// Fetching a model or data package (pip, unpacking).
    #[error("{0}")]
    Fetch(String),
    /// An adapter that exists but cannot be served (bad files, a shape or rank that does not
    /// fit the base, no room in the adapter memory).
    #[error("adapter `{id}`: {msg}")]
    Adapter {
        /// The adapter's id.
        id: String,
        /// What is wrong.
        msg: String,
    },
    /// No adapter of that name: not in the engine's adapter folder, not loaded or added by
    /// name, and (where paths are allowed) not a path to a peft adapter folder.
    #[error("unknown adapter `{0}`: not in the adapter folder, not loaded by name, and not a path to a peft adapter folder")]
    UnknownAdapter(String),
    /// An argument of a call (an option, a size, a path) is out of its range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// More requests are in flight than the server queues (`limit`: its running slots plus
    /// `--max-queued-requests`): HTTP 503 with Retry-After.
    #[error("{in_flight} requests are in flight, the most this server queues is {limit}; retry shortly")]
    QueueFull {
        /// Requests in flight when this one came.
        in_flight: usize,
        /// The most that may be.
        limit: usize,
    },
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

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `Io` error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
