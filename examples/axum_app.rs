//! Serve lorafleet's OpenAI and LoRAX routes inside your own axum app, next to routes of your
//! own, on one port.
//!
//! ```text
//! cargo run --release --example axum_app -- MODEL_DIR ADAPTER_DIR [--once PROMPT]
//! ```
//!
//! Without `--once` it serves until killed (`curl localhost:PORT/v1/models`, `/hello`). With
//! `--once PROMPT` it sends itself one `POST /v1/completions` for PROMPT on the first adapter
//! (greedy, 24 tokens), prints the answer's text as a JSON line and exits: CI checks that text
//! against the `embed` example's (scripts/check_examples.py).

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use lorafleet::prelude::*;
use lorafleet::server::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> lorafleet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_dir, adapter_dir, once) = match args.as_slice() {
        [m, a] => (m.clone(), a.clone(), None),
        [m, a, flag, prompt] if flag == "--once" => (m.clone(), a.clone(), Some(prompt.clone())),
        _ => {
            eprintln!("usage: axum_app MODEL_DIR ADAPTER_DIR [--once PROMPT]");
            std::process::exit(2);
        }
    };
    let engine = Arc::new(Engine::builder(&model_dir).adapter_dir(&adapter_dir).kv_cache_bytes(64 << 20).build()?);
    let adapter = engine.available_adapters().into_iter().next();

    // Your app: its own routes, and lorafleet's (with at most 64 requests in flight).
    let lorafleet_routes = lorafleet::server::router(AppState::with_limit(engine.clone(), "smollm2".into(), 64));
    let app = Router::new().route("/hello", get(|| async { "hello from my app\n" })).merge(lorafleet_routes);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::io("127.0.0.1:0", e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("127.0.0.1:0", e))?;
    eprintln!("listening on http://{addr}");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let Some(prompt) = once else {
        let _ = server.await;
        return Ok(());
    };
    let hello = http(addr, "GET /hello HTTP/1.1", "").await?;
    assert!(hello.contains("hello from my app"), "{hello}");
    let body = serde_json::json!({"model": adapter, "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": true}).to_string();
    let answer = http(addr, "POST /v1/completions HTTP/1.1", &body).await?;
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| Error::BadRequest(format!("not JSON ({e}): {answer}")))?;
    let text = v["choices"][0]["text"].as_str().ok_or_else(|| Error::BadRequest(format!("no choices[0].text in {v}")))?;
    println!("{}", serde_json::json!({"adapter": adapter, "text": text}));
    server.abort();
    Ok(())
}

/// One HTTP/1.1 exchange on a fresh connection (the example needs no HTTP client crate).
async fn http(addr: std::net::SocketAddr, request_line: &str, body: &str) -> lorafleet::Result<String> {
    let io = |e| Error::io(addr.to_string(), e);
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let req = format!("{request_line}\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.map_err(io)?;
    Ok(out)
}
