//! GGUF import: read a llama.cpp GGUF file (v2/v3) and convert it into an HF-layout model
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`) that the rest of lorafleet loads like any HF checkpoint.
//!
//! Split by idea:
//! - `reader`: the container format (header, metadata, tensor infos), memory-mapped;
//! - `ggml_type`: tensor element types and their exact (gguf-py identical) dequantization;
//! - `convert`: tensor name/layout mapping (incl. the q/k RoPE un-permute), `config.json`,
//!   the streaming safetensors writer and the atomic output directory;
//! - `tokenizer`: `tokenizer.json` / `tokenizer_config.json` from the GGUF tokenizer metadata.

mod convert;
mod ggml_type;
mod output;
mod reader;
mod tokenizer;

pub use convert::{convert_gguf, unpermute_rows, OutDType};
pub use ggml_type::{dequantize, GgmlType, SUPPORTED_TYPES};
pub use reader::{GgufFile, GgufValue, TensorInfo};
pub use tokenizer::{build_tokenizer_config_json, build_tokenizer_json};

pub use crate::error::GgufError;
