//! Serving: the engine, the HTTP server and its limits, the CLI, the official clients, the GPU bench script.
//!
//! One test binary per area (each binary links the whole crate; CI links few of them).
//! Run one file's tests with a filter: `cargo test --test serve <file>::`.

#[path = "../common/mod.rs"]
mod common;

mod engine;
mod server;
mod server_api;
mod server_limits;
mod cli;
mod cli_lora;
mod clients;
mod gpu_bench_script;
