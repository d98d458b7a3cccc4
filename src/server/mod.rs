//! The HTTP server (`lorafleet serve`): LoRAX's `/` (its client's route), `/generate`,
//! `/generate_stream`, `/info` and `/tokenize`; OpenAI's `/v1/completions`,
//! `/v1/chat/completions` and `/v1/models`; vLLM's `/v1/load_lora_adapter` and
//! `/v1/unload_lora_adapter`; `/health` and Prometheus `/metrics`; on tokio + axum in front of
//! one `Engine`.
//!
//! Every request is logged in one line on stderr when it ends. A client that disconnects
//! mid-stream drops its event stream, which cancels its request in the engine.

mod common;
mod lorax;
pub mod metrics;
mod openai;
mod structured;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

pub use common::{init_request_log, App, AppState, LogFormat};
pub use lorax::DEFAULT_MAX_NEW_TOKENS;

use crate::engine::{Engine, EngineOptions};
use crate::model::BaseFormat;
use crate::{Error, Result};

/// Everything `serve` needs (the `lorafleet serve` flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model directory (with `random_weights`, only its tokenizer is read).
    pub model: PathBuf,
    /// Serve seeded random weights of this shape instead of the directory's checkpoint.
    pub random_weights: Option<crate::model::random::RandomModel>,
    /// How the linear weights are held (`LoadOptions::format`).
    pub format: BaseFormat,
    /// How the lm_head is held (`LoadOptions::head`).
    pub lm_head: crate::types::HeadFormat,
    /// CPU threads for the model (None = all cores).
    pub threads: Option<usize>,
    /// Where the model runs (`--device`) and, on CUDA, the activation dtype.
    pub device: crate::backend::device::DeviceChoice,
    /// Activation dtype on CUDA.
    pub act_dtype: crate::backend::device::ActDtype,
    /// Decode steps replay as CUDA graphs (`--no-cuda-graphs` turns it off).
    pub cuda_graphs: bool,
    /// On a device, size the KV cache (60%) and the adapter budget (10%) from the memory free
    /// after loading the model, instead of `engine.kv_cache_bytes` and the cache's budget.
    pub kv_from_device_memory: bool,
    /// Size the adapter budget from free device memory.
    pub adapters_from_device_memory: bool,
    /// Address to listen on.
    pub host: String,
    /// 0 = any free port (the bound address is printed).
    pub port: u16,
    /// The engine's options.
    pub engine: EngineOptions,
    /// A request body must arrive within this.
    pub body_timeout: std::time::Duration,
    /// Every route but /health needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests admitted beyond the engine's running slots; past them, 503 with Retry-After.
    pub max_queued_requests: usize,
    /// On SIGTERM/SIGINT: stop accepting, let running requests finish for at most this, exit 0.
    pub shutdown_timeout: std::time::Duration,
    /// How the one line per request is written to stderr.
    pub log_format: LogFormat,
}

/// The routes over an app state (the engine plus the base model's id); with `api_key`, every route
/// but /health needs it.
pub fn router_with_key(app: App, api_key: Option<&str>) -> Router {
    let r = router(app);
    match api_key {
        Some(k) => {
            let k: Arc<str> = Arc::from(k);
            r.layer(axum::middleware::from_fn(move |req, next| common::check_api_key(k.clone(), req, next)))
        }
        None => r,
    }
}

/// The routes over an app state (the engine plus the base model's id).
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", post(lorax::compat))
        .route("/info", get(lorax::info))
        .route("/tokenize", post(lorax::tokenize))
        .route("/generate", post(lorax::generate))
        .route("/generate_stream", post(lorax::generate_stream))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/load_lora_adapter", post(openai::load_lora_adapter))
        .route("/v1/unload_lora_adapter", post(openai::unload_lora_adapter))
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .fallback(common::no_route)
        .method_not_allowed_fallback(common::no_method)
        .layer(axum::middleware::from_fn(common::read_body))
        // The middleware enforces the body limit (with a JSON 413); axum's own 2 MB default
        // would answer in plain text first.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

/// 200 `{"status": "ok"}` while the engine thread runs, else 503.
async fn health(axum::extract::State(app): axum::extract::State<App>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if app.engine.is_alive() {
        axum::Json(json!({ "status": "ok", "in_flight": app.in_flight() })).into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "engine stopped" }))).into_response()
    }
}

/// Per connection: the request headers must arrive within this (a slow-loris client, or one that
/// opens a connection and sends nothing, is closed instead of holding it), and an idle keep-alive
/// connection is closed after it too.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router(app)` on `listener` until the process ends: one task per connection, HTTP/1.1
/// through hyper with a header-read timeout (`HEADER_TIMEOUT`, which also ends idle keep-alive
/// connections: their next request's headers are what is waited for).
pub async fn serve_on(listener: tokio::net::TcpListener, app: App) -> Result<()> {
    serve_router(listener, router(app)).await
}

/// `serve_on` for a built router.
async fn serve_router(listener: tokio::net::TcpListener, router: Router) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: say so, back off, keep serving.
                eprintln!("lorafleet serve: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            // Errors here are the connection's (a client gone, a timeout): nothing to report.
            let _ = b.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

/// The engine `serve` runs: the options' model on their device, through `Engine::builder`.
fn start_engine(opts: &ServeOptions) -> Result<Engine> {
    let mut b = Engine::builder(&opts.model)
        .device(opts.device)
        .act_dtype(opts.act_dtype)
        .cuda_graphs(opts.cuda_graphs)
        .quantize(opts.format)
        .lm_head(opts.lm_head)
        .progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .options(opts.engine.clone())
        .size_from_device_memory(opts.kv_from_device_memory, opts.adapters_from_device_memory);
    if let Some(n) = opts.threads {
        b = b.threads(n);
    }
    if let Some(r) = &opts.random_weights {
        b = b.random_weights(r.clone());
    }
    b.build()
}

/// Loads the model on the `--device` backend, starts the engine and serves HTTP; runs until killed.
/// Prints `listening on http://ADDR` on stderr once the port is bound.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let model_id =
        opts.model.canonicalize().unwrap_or_else(|_| opts.model.clone()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "base".into());
    // The builder checks the model folder and the adapter folder before any device opens.
    let engine = Arc::new(start_engine(&opts)?);
    eprintln!("lorafleet serve: {}", engine.device_description());
    eprintln!(
        "lorafleet serve: model {model_id}, KV cache {} blocks ({} tokens), max batch tokens {}, max running {}, adapters from {}",
        engine.kv_total_blocks(),
        engine.kv_capacity_tokens(),
        opts.engine.max_batch_tokens,
        opts.engine.max_running,
        opts.engine.cache.adapter_dir.as_ref().map_or("(none)".into(), |d| d.display().to_string()),
    );
    common::set_body_timeout(opts.body_timeout);
    init_request_log(opts.log_format);
    let max_in_flight = opts.engine.max_running.saturating_add(opts.max_queued_requests);
    let app = AppState::with_limit(engine, model_id, max_in_flight);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("tokio runtime: {e}")))?;
    let result = rt.block_on(async move {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        let bound: SocketAddr = listener.local_addr().map_err(|e| Error::InvalidArgument(format!("{addr}: {e}")))?;
        eprintln!("listening on http://{bound}");
        let router = router_with_key(app.clone(), opts.api_key.as_deref());
        tokio::select! {
            r = serve_router(listener, router) => r,
            () = shutdown_signal() => {
                // The accept loop is dropped with the other branch: no new connections. Running
                // requests (and their streams) go on until they end or the timeout passes.
                eprintln!("lorafleet serve: shutting down: {} requests in flight, waiting up to {:.0} s", app.in_flight(), opts.shutdown_timeout.as_secs_f64());
                let deadline = tokio::time::Instant::now() + opts.shutdown_timeout;
                while app.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                // Past the timeout: every request still running ends with an error event (a 503
                // for a non-streamed one) instead of a connection cut mid-chunk; a moment for
                // those last frames to leave the sockets.
                let cut = app.in_flight();
                if cut > 0 {
                    app.engine.abort_all(&format!("the server is shutting down (--shutdown-timeout {:.0} s passed)", opts.shutdown_timeout.as_secs_f64()));
                    let grace = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
                    while app.in_flight() > 0 && tokio::time::Instant::now() < grace {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                eprintln!("lorafleet serve: stopped ({cut} requests ended with an error event)");
                Ok(())
            }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
