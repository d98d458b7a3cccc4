//! lorafleet: serve many LoRA fine-tunes of one (4-bit) base LLM from one GPU, and train new ones.
//!
//! The house (docs/ARCHITECTURE.md: floors, data flow, where each op's CPU twin, kernel,
//! parity test and bench live): `types` (plain values every floor shares), `backend` (`cpu`,
//! the reference; `cuda`, the kernels), `kv` (the paged KV cache), `model` (the Llama forward
//! pass written once against `backend::Backend`), `lora` (adapters and their cache), `engine`
//! (the batch step, the serving engine, offline generation), `runtime` (start-up), `server`,
//! `train`, `data`, `eval`.

pub mod backend;
#[cfg(feature = "cli")]
pub mod cli_env;
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

pub use error::{Error, Result};
