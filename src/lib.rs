//! lorafleet: serve many LoRA fine-tunes of one (4-bit) base LLM from one GPU, and train new ones.
//!
//! Layout (see DESIGN.md): `model` (config, weights, GGUF import, the Llama forward pass written
//! once against `backend::Backend`), `backend` (`cpu`, the reference; `cuda`, the kernels),
//! `kv` (the paged KV cache), `engine` (sampling and generation), `tokenizer`, `data` (training
//! and evaluation examples, the rotten-tomatoes demo set), `eval` (metrics, `lorafleet eval`).

pub mod backend;
pub mod cli_env;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod heap;
pub mod kv;
pub mod loadtest;
pub mod lora;
pub mod model;
pub mod progress;
pub mod quant;
pub mod rng;
pub mod runtime;
pub mod server;
pub mod tokenizer;
pub mod train;
pub mod types;
pub mod weights;

pub use tokenizer::TextTokenizer;

pub use error::{Error, Result};
