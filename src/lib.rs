//! lorafleet: serve many LoRA fine-tunes of one (4-bit) base LLM from one GPU, and train new ones.
//!
//! # Use it as a library
//!
//! `Engine::builder(model_dir)` opens the device chosen at run time (a CUDA GPU when there is one,
//! else the CPU), loads the model once and starts the engine: one thread running continuous
//! batching over every request, with requests for different adapters mixed in one batch.
//! `submit` returns a `RequestHandle`: read its events blocking (`recv`, `wait`) or as an async
//! `Stream` (the engine wakes the task; no thread per stream). The README's "Use it as a library"
//! and `examples/` show whole programs.
//!
//! ```no_run
//! use lorafleet::prelude::*;
//!
//! # fn main() -> lorafleet::Result<()> {
//! let engine = Engine::builder("models/smollm2-135m-instruct").adapter_dir("adapters").build()?;
//! let request = GenerateRequest::prompt(vec![ChatMessage::user("Name a prime number.")]).with_adapter("a_r8_all").max_new_tokens(16);
//! let done = engine.submit(request)?.wait()?;
//! println!("{} ({:?})", done.text, done.reason);
//! # Ok(())
//! # }
//! ```
//!
//! Build with `default-features = false` for the engine alone (no HTTP server, CLI, load test,
//! data files or progress bars); the features are listed in Cargo.toml. Process-level tuning the
//! `lorafleet` binary applies to itself is opt-in for an embedder: `heap::keep_freed_memory`
//! (glibc keeps freed activation buffers for reuse) and `heap::restart_with_huge_pages` (the heap
//! on 2 MiB pages; it re-executes the process, so call it first thing in `main`, if at all).
//!
//! The house (docs/ARCHITECTURE.md: floors, data flow, where each op's CPU twin, kernel,
//! parity test and bench live): `types` (plain values every floor shares), `backend` (`cpu`,
//! the reference; `cuda`, the kernels), `kv` (the paged KV cache), `model` (the Llama forward
//! pass written once against `backend::Backend`), `lora` (adapters and their cache), `engine`
//! (the batch step, the serving engine, offline generation), `runtime` (start-up), `server`,
//! `train`, `data`, `eval`.

#![deny(missing_docs)]

pub mod backend;
#[cfg(feature = "cli")]
pub mod cli_env;
#[cfg(feature = "server")]
pub mod cli_flags;
pub mod constrain;
#[cfg(feature = "data")]
pub mod data;
pub mod engine;
pub mod error;
#[cfg(feature = "data")]
pub mod eval;
pub mod heap;
pub mod kv;
#[cfg(feature = "loadtest")]
pub mod loadtest;
pub mod lora;
pub mod model;
pub mod progress;
pub mod quant;
pub mod rng;
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
pub mod tokenizer;
pub mod train;
pub mod types;
pub mod weights;

pub use tokenizer::TextTokenizer;

/// The names an embedding program needs: `use lorafleet::prelude::*;`.
pub mod prelude {
    pub use crate::backend::device::{ActDtype, DeviceChoice};
    pub use crate::constrain::Constraint;
    pub use crate::engine::{
        CacheOptions, CacheStats, Engine, EngineBuilder, EngineOptions, EngineStats, Event, FinishReason, Finished, GenerateOptions, GenerateRequest, Prompt,
        RequestHandle, SamplingParams,
    };
    pub use crate::lora::LoraAdapter;
    pub use crate::model::{BaseFormat, HeadFormat};
    pub use crate::tokenizer::{ChatMessage, TextTokenizer};
    pub use crate::{Error, Result};
}

pub use error::{Error, Result};
