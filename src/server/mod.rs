//! The HTTP server (`lorafleet serve`): LoRAX-style `/generate` and `/generate_stream`,
//! OpenAI-style `/v1/completions`, `/v1/chat/completions` and `/v1/models`, `/health` and
//! Prometheus `/metrics`, on tokio + axum in front of one `Engine`.
//!
//! Every request is logged in one line on stderr when it ends. A client that disconnects
//! mid-stream drops its event stream, which cancels its request in the engine.

mod common;
mod lorax;
pub mod metrics;
mod openai;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

pub use common::{AppState, App};
pub use lorax::DEFAULT_MAX_NEW_TOKENS;

use crate::backend::cpu::CpuBackend;
use crate::engine::{Engine, EngineOptions};
use crate::model::{BaseFormat, Llama, LoadOptions};
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: PathBuf,
    /// How the linear weights are held (`LoadOptions::format`).
    pub format: BaseFormat,
    /// CPU threads for the model (None = all cores).
    pub threads: Option<usize>,
    pub host: String,
    /// 0 = any free port (the bound address is printed).
    pub port: u16,
    pub engine: EngineOptions,
}

/// The routes over an app state (the engine plus the base model's id).
pub fn router(app: App) -> Router {
    Router::new()
        .route("/generate", post(lorax::generate))
        .route("/generate_stream", post(lorax::generate_stream))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/health", get(|| async { axum::Json(json!({ "status": "ok" })) }))
        .route("/metrics", get(metrics::metrics))
        .with_state(app)
}

/// Serves `router(app)` on `listener` until the process ends.
pub async fn serve_on(listener: tokio::net::TcpListener, app: App) -> Result<()> {
    axum::serve(listener, router(app)).await.map_err(|e| Error::InvalidArgument(format!("HTTP server: {e}")))
}

/// Loads the model (CPU backend), starts the engine and serves HTTP; runs until killed.
/// Prints `listening on http://ADDR` on stderr once the port is bound.
pub fn serve(opts: ServeOptions) -> Result<()> {
    if let Some(n) = opts.threads {
        if n == 0 {
            return Err(Error::InvalidArgument("--threads must be at least 1".into()));
        }
        // Fails only if the pool was already built, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    if !opts.model.is_dir() {
        return Err(Error::InvalidArgument(format!("--model {}: not a directory", opts.model.display())));
    }
    let model_id = opts
        .model
        .canonicalize()
        .unwrap_or_else(|_| opts.model.clone())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "base".into());
    let be = Arc::new(CpuBackend::new());
    let tokenizer = Arc::new(TextTokenizer::from_dir(&opts.model)?);
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let model = Arc::new(Llama::load_with(&*be, &opts.model, LoadOptions { format: opts.format, progress })?);
    let engine = Arc::new(Engine::start(be, model, tokenizer, opts.engine.clone())?);
    eprintln!(
        "lorafleet serve: model {model_id}, KV cache {} blocks ({} tokens), max batch tokens {}, max running {}, adapters from {}",
        engine.kv_total_blocks(),
        engine.kv_capacity_tokens(),
        opts.engine.max_batch_tokens,
        opts.engine.max_running,
        opts.engine.cache.adapter_dir.as_ref().map_or("(none)".into(), |d| d.display().to_string()),
    );
    let app = AppState::new(engine, model_id);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        let bound: SocketAddr = listener.local_addr().map_err(|e| Error::InvalidArgument(format!("{addr}: {e}")))?;
        eprintln!("listening on http://{bound}");
        serve_on(listener, app).await
    })
}
