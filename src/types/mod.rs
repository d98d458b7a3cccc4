//! Plain value types that every floor shares: the model's shape (`ModelConfig`), how the
//! lm_head is held (`HeadFormat`), the LoRA-targetable projections (`LoraModule`), how the rows
//! of a batch are grouped (`layout`) and a packed training batch (`TrainBatch`).
//!
//! The ground floor of the house (docs/ARCHITECTURE.md): it imports nothing of the crate but
//! `error`, so `backend`, `kv` and `quant` can speak of a model, an adapter's modules or a train
//! batch without importing `model`, `lora` or `train`.

pub mod config;
pub mod head;
pub mod histogram;
pub mod layout;
pub mod lora_module;
pub mod train_batch;

pub use config::{Arch, Llama3RopeScaling, ModelConfig};
pub use head::HeadFormat;
pub use histogram::Histogram;
pub use layout::SeqSpan;
pub use lora_module::LoraModule;
pub use train_batch::{TokenizedExample, TrainBatch};
