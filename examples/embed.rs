//! Embed the engine in a tokio program: one engine, requests on the base model and on two
//! adapters streamed concurrently as async streams (no thread per stream), and one request
//! cancelled by the caller's own id.
//!
//! ```text
//! cargo run --release --example embed -- MODEL_DIR ADAPTER_DIR "prompt one" "prompt two" ...
//! ```
//!
//! Every prompt runs on the base and on each adapter folder under ADAPTER_DIR, greedy, 24 tokens;
//! one JSON line per request (`{"prompt": i, "adapter": ..., "token_ids": [...], "text": ...}`)
//! on stdout, then one line for the cancelled request. CI runs it on SmolLM2 with the golden
//! prompts and checks the tokens against the goldens (scripts/check_examples.py).

use std::sync::Arc;

use futures_util::StreamExt;
use lorafleet::prelude::*;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> lorafleet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_dir, adapter_dir, prompts) = match args.as_slice() {
        [m, a, prompts @ ..] if !prompts.is_empty() => (m.clone(), a.clone(), prompts.to_vec()),
        _ => {
            eprintln!("usage: embed MODEL_DIR ADAPTER_DIR PROMPT...");
            std::process::exit(2);
        }
    };
    // The device is chosen at run time: a CUDA GPU when there is one, else the CPU.
    let engine = Arc::new(Engine::builder(&model_dir).adapter_dir(&adapter_dir).kv_cache_bytes(128 << 20).build()?);
    eprintln!("{}", engine.device_description());
    let adapters: Vec<Option<String>> = std::iter::once(None).chain(engine.available_adapters().into_iter().map(Some)).collect();

    // Greedy, exactly 24 tokens (the goldens' length).
    let options = GenerateOptions { max_new_tokens: 24, ignore_eos: true, ..GenerateOptions::default() };
    let mut tasks = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        for adapter in &adapters {
            let mut request = GenerateRequest::prompt(prompt.as_str()).with_options(options.clone());
            if let Some(a) = adapter {
                request = request.with_adapter(a.as_str());
            }
            let mut stream = engine.submit(request)?;
            let adapter = adapter.clone();
            // Each request is its own task, reading its stream as tokens come.
            tasks.push(tokio::spawn(async move {
                let mut text = String::new();
                while let Some(event) = stream.next().await {
                    match event {
                        Event::Token { text: piece, .. } => text.push_str(&piece),
                        Event::Finished(done) => {
                            return Ok(serde_json::json!({"prompt": i, "adapter": adapter, "token_ids": done.token_ids, "text": text}));
                        }
                        Event::Error(e) => return Err(e),
                        Event::Prompt { .. } => {}
                    }
                }
                Err(Error::EngineStopped("the stream ended without a final event".into()))
            }));
        }
    }

    // One more request, cancelled by the caller's id after its first token.
    let mut doomed = engine.submit(GenerateRequest::prompt(prompts[0].as_str()).max_new_tokens(1000).with_request_id("job-to-cancel"))?;
    let first = doomed.next().await;
    let cancelled = engine.cancel_request("job-to-cancel");
    let mut last = None;
    while let Some(event) = doomed.next().await {
        last = Some(event);
    }

    for t in tasks {
        let line = t.await.map_err(|e| Error::EngineStopped(format!("a task panicked: {e}")))??;
        println!("{line}");
    }
    let ended = match last {
        Some(Event::Error(Error::Cancelled)) => "cancelled".to_string(),
        other => format!("{other:?}"),
    };
    println!(
        "{}",
        serde_json::json!({"cancel": {"first_event_was_token": matches!(first, Some(Event::Token { .. })), "live_under_id": cancelled, "ended": ended}})
    );
    Ok(())
}
