//! Model definition: HF config, weight loading, GGUF import and the forward pass.

pub mod check;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod gguf;
pub mod llama;
pub mod quantize;
pub mod random;

pub use crate::types::{HeadFormat, ModelConfig};
pub use llama::{BaseFormat, Llama, LoadOptions, WeightSource};
