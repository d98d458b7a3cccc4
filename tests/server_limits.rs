//! The server under abuse, end to end (`lorafleet serve` on loopback, SmolLM2-135M on the CPU):
//! an API key guards every route but /health; a flood past `--max-queued-requests` gets 503s with
//! Retry-After while the admitted requests complete with their correct text; afterwards the engine
//! is back at idle (/metrics: no running sequence, no KV block in use); SIGTERM during streams lets
//! each stream end with its final event and the process exit 0 within `--shutdown-timeout`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::server::TestServer;
use common::*;
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
