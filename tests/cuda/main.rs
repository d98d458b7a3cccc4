//! The CUDA backend's tests: each kernel's parity with its CPU twin, the backend, engine, server and trainer on it (on the emulator here, on a GPU when one is lent).
//!
//! One test binary per area (each binary links the whole crate; CI links few of them).
//! Run one file's tests with a filter: `cargo test --test cuda <file>::`.

#[path = "../common/mod.rs"]
mod common;

mod cuda_attention;
mod cuda_attention_train;
mod cuda_backend;
mod cuda_cross_entropy;
mod cuda_engine;
mod cuda_golden;
mod cuda_linear;
mod cuda_lora;
mod cuda_lora_backward;
mod cuda_nf4;
mod cuda_ops;
mod cuda_ops_backward;
mod cuda_random;
mod cuda_sampling;
mod cuda_serve;
mod cuda_train;
mod cuda_train_ops;
mod kernel_resources;
