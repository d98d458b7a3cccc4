//! The server under abuse, end to end (`lorafleet serve` on loopback, SmolLM2-135M on the CPU):
//! an API key guards every route but /health; a flood past `--max-queued-requests` gets 503s with
//! Retry-After while the admitted requests complete with their correct text; afterwards the engine
//! is back at idle (/metrics: no running sequence, no KV block in use); SIGTERM during streams lets
//! each stream end with its final event and the process exit 0 within `--shutdown-timeout`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::server::TestServer;
use crate::common::*;
use serde_json::{json, Value};

const KEY: &str = "s3cret-key";
const AUTH: &str = "Authorization: Bearer s3cret-key\r\n";

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok())).unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn api_key_queue_limit_and_graceful_shutdown() {
    let args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        model_dir().into(),
        "--device".into(),
        "cpu".into(),
        "--kv-cache-bytes".into(),
        "64M".into(),
        "--max-running".into(),
        "4".into(),
        "--max-queued-requests".into(),
        "6".into(),
        "--shutdown-timeout".into(),
        "60".into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut server = TestServer::start(&args, &[("LORAFLEET_API_KEY", KEY), ("LORAFLEET_LOG_FORMAT", "json")], Duration::from_secs(300));
    let s = server.handle.clone();
    let body = |prompt: &str, n: usize| json!({ "inputs": prompt, "parameters": { "max_new_tokens": n, "ignore_eos_token": true } }).to_string();

    // The key, from the environment: needed everywhere but /health.
    assert_eq!(s.request("GET", "/health", "").status, 200);
    for headers in ["", "Authorization: Bearer wrong\r\n", "Authorization: s3cret-key\r\n"] {
        let r = s.request_with("POST", "/generate", &body("Hi", 1), headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert_eq!(r.json()["error_type"], "unauthorized");
        assert_eq!(s.request_with("GET", "/metrics", "", headers).status, 401);
    }
    let solo = s.request_with("POST", "/generate", &body("The capital of France is", 40), AUTH);
    assert_eq!(solo.status, 200, "{}", solo.body);
    let want = solo.json()["generated_text"].as_str().unwrap().to_string();

    // A flood: 230 at once against 4 running + 6 queued: at least 200 are refused while the
    // admitted ones (40 tokens each, so they are still running while the flood arrives) complete
    // with the text they give alone.
    let (ok, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|sc| {
        for _ in 0..230 {
            sc.spawn(|| {
                let r = s.request_with("POST", "/generate", &body("The capital of France is", 40), AUTH);
                match r.status {
                    200 => {
                        assert_eq!(r.json()["generated_text"].as_str().unwrap(), want, "an admitted request's text");
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    503 => {
                        assert!(r.headers.to_ascii_lowercase().contains("retry-after: 1"), "{}", r.headers);
                        assert_eq!(r.json()["error_type"], "overloaded");
                        busy.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("status {other}: {}", r.body),
                }
            });
        }
    });
    let (ok, busy) = (ok.into_inner(), busy.into_inner());
    eprintln!("flood: {ok} answered, {busy} refused with 503");
    assert!(ok >= 4 && busy >= 200 && ok + busy == 230, "{ok} answered, {busy} refused");
    // The request log is JSON lines (LORAFLEET_LOG_FORMAT=json): one per request, with its fields.
    // A request's line is written as its answer goes out, so the last ones may still be on the
    // way when the client has its answer.
    let logged = |status: &str| s.log.lock().unwrap().iter().filter(|l| l.contains(status)).count();
    wait_until("every request's log line", Duration::from_secs(10), || logged("\"status\":200") + logged("\"status\":503") >= ok + busy + 1);
    let entries: Vec<Value> = s.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    let count = |path: &str, status: u64| entries.iter().filter(|e| e["path"] == path && e["status"] == status).count();
    assert_eq!(count("/generate", 401), 3, "{entries:?}");
    assert_eq!(count("/metrics", 401), 3, "{entries:?}");
    assert_eq!(count("/generate", 503), busy, "{entries:?}");
    assert_eq!(count("/generate", 200), ok + 1, "{entries:?}");
    let done = entries.iter().find(|e| e["status"] == 200 && e["path"] == "/generate").unwrap();
    assert_eq!((done["level"].as_str(), done["method"].as_str(), done["outcome"].as_str()), (Some("INFO"), Some("POST"), Some("ok")), "{done}");
    assert_eq!(done["generated_tokens"], 40, "{done}");
    assert!(done["ttft_ms"].as_f64().unwrap() > 0.0 && done["total_ms"].as_f64().unwrap() >= done["ttft_ms"].as_f64().unwrap(), "{done}");
    assert!(done["timestamp"].is_string(), "{done}");
    // Back at idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = s.request_with("GET", "/metrics", "", AUTH).body;
        if metric(&m, "lorafleet_running_sequences") == 0.0 && metric(&m, "lorafleet_kv_blocks_used") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "not idle after the flood: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM during 10 streams (4 running, 6 queued): each ends with its final frame, then the
    // process exits 0.
    let started = AtomicUsize::new(0);
    let finals: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..10)
            .map(|i| {
                let (s, started) = (&s, &started);
                sc.spawn(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let r = s.request_with("POST", "/generate_stream", &body(&format!("Story {i}:"), 24), AUTH);
                    assert_eq!(r.status, 200, "{}", r.body);
                    let last = r.events().last().cloned().unwrap_or_default();
                    serde_json::from_str::<Value>(&last).unwrap_or(Value::Null)
                })
            })
            .collect();
        while started.load(Ordering::SeqCst) < 10 {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let status = server.terminate(Duration::from_secs(90)).expect("the server exits within its shutdown timeout");
        assert!(status.success(), "exit status {status}");
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for f in &finals {
        assert!(f["generated_text"].is_string() && f["details"].is_null(), "each stream ends with its final frame: {f}");
    }
    let log = s.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");
}

/// A chunked body that ends with its terminating zero-size chunk, decoded; Err when the
/// connection was cut inside it (what a client saw when a shutdown cut a stream).
fn complete_chunked(raw: &[u8]) -> Result<Vec<u8>, String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let mut rest = &raw[split + 4..];
    let mut out = Vec::new();
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n").ok_or("cut before a chunk size")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).map_err(|e| e.to_string())?.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(nl + 2..nl + 2 + size).ok_or("cut inside a chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(nl + 2 + size + 2..).ok_or("cut after a chunk")?;
    }
}

/// Issue 35's server classes: a chat message with an unknown role or null content is a 422
/// naming the field; requests refused before any handler (a body that never arrives: 408; no
/// such route: 404) are in the request log; streams still running when `--shutdown-timeout`
/// passes end with an error event and a complete chunked body, then the process exits 0.
#[test]
fn chat_fields_refusal_logs_and_streams_cut_by_shutdown() {
    use std::io::{Read, Write};
    let model = model_dir();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--model".as_ref(),
        model.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--kv-cache-bytes".as_ref(),
        "256M".as_ref(),
        "--shutdown-timeout".as_ref(),
        "1".as_ref(),
        "--body-timeout".as_ref(),
        "1".as_ref(),
    ];
    let mut server = TestServer::start(&args, &[("LORAFLEET_LOG_FORMAT", "json")], Duration::from_secs(300));
    let s = server.handle.clone();

    // Chat fields.
    let chat = |messages: Value| s.post("/v1/chat/completions", json!({ "messages": messages, "max_tokens": 2 }));
    let r = chat(json!([{ "role": "wizard", "content": "hi" }]));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "messages[0].role", "{}", r.body);
    let r = chat(json!([{ "role": "system", "content": "be brief" }, { "role": "user", "content": null }]));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "messages[1].content", "{}", r.body);
    let r = chat(json!([{ "role": "user", "content": "hi" }, { "role": "assistant", "content": null }, { "role": "user", "content": "and?" }]));
    assert_eq!(r.status, 200, "an assistant message may have null content: {}", r.body);

    // A body that never arrives (10 of its 100 bytes), and a route that does not exist.
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    write!(c, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"inputs\":").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(s.request("GET", "/no/such/route", "").status, 404);
    let entries = || -> Vec<Value> { s.log.lock().unwrap().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect() };
    wait_until("the 408 and the 404 in the request log", Duration::from_secs(10), || {
        let e = entries();
        e.iter().any(|e| e["path"] == "/generate" && e["status"] == 408 && e["outcome"] == "body_timeout")
            && e.iter().any(|e| e["path"] == "/no/such/route" && e["status"] == 404)
    });

    // Two long streams (LoRAX and OpenAI), SIGTERM, a 1 s shutdown timeout: both end with an
    // error event inside a complete chunked body.
    let raw_stream = |path: &str, body: Value| {
        let body = body.to_string();
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(c, "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            .unwrap();
        let mut raw = Vec::new();
        let _ = c.read_to_end(&mut raw);
        raw
    };
    let (lorax, openai) = std::thread::scope(|sc| {
        let a = sc.spawn(|| {
            raw_stream("/generate_stream", json!({ "inputs": "Once upon a time", "parameters": { "max_new_tokens": 1500, "ignore_eos_token": true } }))
        });
        let b = sc.spawn(|| raw_stream("/v1/completions", json!({ "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true, "stream": true })));
        wait_until("both streams generating", Duration::from_secs(60), || {
            let m = s.request("GET", "/metrics", "").body;
            metric(&m, "lorafleet_running_sequences") >= 2.0
        });
        std::thread::sleep(Duration::from_millis(500));
        let status = server.terminate(Duration::from_secs(30)).expect("the server exits after its shutdown timeout");
        assert!(status.success(), "exit status {status}");
        (a.join().unwrap(), b.join().unwrap())
    });
    for (what, raw) in [("LoRAX", &lorax), ("OpenAI", &openai)] {
        let body = complete_chunked(raw).unwrap_or_else(|e| panic!("{what} stream: {e}: {}", String::from_utf8_lossy(raw)));
        let text = String::from_utf8(body).unwrap();
        let events: Vec<Value> = text.split("\n\n").filter_map(|f| f.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect();
        assert!(events.len() > 1, "{what}: tokens before the end: {text}");
        let last = events.last().unwrap();
        let kind = if what == "LoRAX" { &last["error_type"] } else { &last["error"]["code"] };
        assert_eq!(kind, "shutting_down", "{what}: the last event says why the stream ended: {last}");
    }
    let log = s.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("2 requests ended with an error event")), "{log:?}");
}
