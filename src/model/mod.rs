//! Model definition: HF config, weight loading, GGUF import and the forward pass.

pub mod check;
pub mod config;
pub mod fetch;
pub mod gguf;
pub mod llama;
pub mod random;
pub mod weights;



pub use config::ModelConfig;
pub use llama::{BaseFormat, HeadFormat, Llama, LoadOptions, WeightSource};
