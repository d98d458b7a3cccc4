//! Serving: the engine, the HTTP server and its limits, the CLI, the official clients, the GPU bench script.
//!
//! One test binary per area (each binary links the whole crate; CI links few of them).
//! Run one file's tests with a filter: `cargo test --test serve <file>::`.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod cli_lora;
mod clients;
mod engine;
mod gpu_bench_script;
mod library;
mod server;
mod server_api;
mod server_limits;
mod structured;
