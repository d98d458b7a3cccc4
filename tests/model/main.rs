//! The model on the CPU backend: the goldens (HF transformers, peft, bitsandbytes), formats, quantisation, adapters, data and eval, the trainer's model.
//!
//! One test binary per area (each binary links the whole crate; CI links few of them).
//! Run one file's tests with a filter: `cargo test --test model <file>::`.

#[path = "../common/mod.rs"]
mod common;

mod data;
mod eval;
mod gguf;
mod golden_smollm2;
mod lm_head_formats;
mod lora_cache;
mod lora_golden;
mod nf4;
mod nf4_model;
mod non_finite;
mod train_backward_ops;
mod train_model;
