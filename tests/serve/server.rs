//! End to end: starts the built `lorafleet serve` on a loopback port with the golden adapters
//! as `--adapter-dir`, and drives it over HTTP/1.1 (a small client on std's TcpStream):
//! /health, /generate (greedy with `a_r8_all` = peft's golden greedy tokens, decoded),
//! /generate_stream, /v1/completions, /v1/chat/completions (streamed and not), /v1/models,
//! /metrics, the error cases (bad JSON, unknown adapter, over-long prompt), and a client that
//! disconnects mid-stream.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::server::{Reply, ServerHandle, TestServer};
use crate::common::*;
use lorafleet::TextTokenizer;
use serde_json::{json, Value};

/// The server every check runs against (the process itself is owned by the test function).
static SERVER: OnceLock<ServerHandle> = OnceLock::new();

fn server() -> &'static ServerHandle {
    SERVER.get().expect("server started")
}

fn start_server() -> TestServer {
    let s = TestServer::start_golden(&["--max-batch-tokens", "256", "--body-timeout", "2"]);
    let _ = SERVER.set(s.handle.clone());
    s
}

/// One server for every check (run in sequence; a few run requests concurrently), killed at
/// the end whatever happens.
#[test]
fn serve_end_to_end() {
    let _server = start_server();
    health_models_and_metrics();
    generate_with_golden_adapter_gives_peft_greedy_text();
    generate_stream_sends_tokens_then_the_text();
    chat_completions_stream_and_not();
    completions_name_the_base_or_an_adapter();
    errors_are_json_4xx();
    concurrent_clients_get_their_own_answers();
    a_client_that_disconnects_cancels_its_request();
    the_http_load_test_drives_the_server();
    bad_clients_are_contained();
}

/// `lorafleet bench --url` (the load test's HTTP client, on pooled keep-alive connections)
/// against this server: every request streams its forced number of tokens, none fails.
fn the_http_load_test_drives_the_server() {
    let url = format!("http://{}", server().addr);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["bench", "--model", model_dir().to_str().unwrap(), "--url", &url, "--adapters", "0", "--concurrency", "1,3"])
        .args(["--duration", "2", "--input-tokens", "8-16", "--output-tokens", "2-4", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let points: Vec<Value> = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(points.len(), 2, "{out}");
    for p in &points {
        assert_eq!(p["errors"], 0, "{p}");
        let n = p["requests"].as_u64().unwrap();
        let toks = p["output_tokens"].as_u64().unwrap();
        assert!(n >= 1 && toks >= 2 * n && toks <= 4 * n, "{p}");
    }
}

/// Connections that send nothing or stop inside their headers are closed after the header timeout
/// and never delay others; a body shorter than its Content-Length gets a 408 (it used to wait
/// forever); an over-size body
/// a JSON 413; a newline in `adapter_id` cannot forge a log line; a client that disconnects
/// before a non-streaming answer is logged as cancelled, not `status=200 ok`.
fn bad_clients_are_contained() {
    let s = server();
    // Short body: 10 bytes of a declared 100, then silence.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"inputs\":").unwrap();
    let t = Instant::now();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408") && text.contains("body_timeout"), "short body: {text}");
    assert!(t.elapsed() < Duration::from_secs(15), "the 408 came after {:?}", t.elapsed());

    // 50 connections that send nothing do not stop /health; one that stops inside its headers
    // (slow loris) is closed after the header timeout (10 s), as are the silent ones.
    let idle: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    let t = Instant::now();
    assert_eq!(request("GET", "/health", "").status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "/health took {:?} beside 50 idle connections", t.elapsed());
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(slow, "GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    let mut raw = Vec::new();
    let _ = slow.read_to_end(&mut raw);
    assert!(raw.is_empty() && t.elapsed() < Duration::from_secs(20), "slow headers: {:?} after {:?}", String::from_utf8_lossy(&raw), t.elapsed());
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(c.read(&mut buf), Ok(0)), "a silent connection is closed by now");
    }

    // Over-size body: JSON 413.
    // (The server answers as soon as it sees the Content-Length, so the write may fail midway.)
    let big = format!("{{\"inputs\": \"{}\"}}", "a".repeat(5 << 20));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ =
        write!(c, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}", big.len());
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413") && text.contains("\"error_type\":\"body_too_large\""), "big body: {text}");

    // A forged log line.
    let evil = "nope\nPOST /generate status=200 outcome=ok adapter=forged";
    let r = request("POST", "/generate", &json!({ "inputs": "hi", "parameters": { "adapter_id": evil, "max_new_tokens": 1 } }).to_string());
    assert_eq!(r.status, 404, "{}", r.body);
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log.lock().unwrap().clone();
    assert!(!log.iter().any(|l| l.starts_with("POST /generate status=200 outcome=ok adapter=forged")), "a log line was forged: {log:?}");
    assert!(!log.iter().any(|l| l.trim_start().starts_with("POST")), "a log line was forged: {log:?}");
    assert!(log.iter().any(|l| l.contains("status=404") && l.contains("adapter=\"nope\\nPOST")), "the id is logged escaped: {log:?}");

    // Non-streaming disconnect.
    let before = s.log.lock().unwrap().len();
    let body = json!({ "inputs": "Tell me a long story.", "parameters": { "max_new_tokens": 200, "ignore_eos_token": true } }).to_string();
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(c, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(120);
    let line = loop {
        let log = s.log.lock().unwrap().clone();
        if let Some(l) = log[before..].iter().find(|l| l.contains("method=POST path=/generate ")) {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "no log line for the dropped request");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(line.contains("status=499") && line.contains("outcome=cancelled"), "{line}");
}

fn request(method: &str, path: &str, body: &str) -> Reply {
    server().request(method, path, body)
}

fn post(path: &str, body: Value) -> Reply {
    server().post(path, body)
}

fn tokenizer() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| TextTokenizer::from_dir(&model_dir()).unwrap())
}

/// The chat prompt of the goldens and its 24 greedy tokens under `a_r8_all`, as text.
fn golden_chat() -> (String, String) {
    let g = golden_json();
    let p = &g["prompts"][1];
    let text = p["text"].as_str().unwrap().to_string();
    assert_eq!(tokenizer().encode(&text).unwrap(), ids(&p["ids"]), "the golden prompt's text encodes to its ids");
    let want = ids(&p["a_r8_all_greedy24"]);
    let gaps = floats(&p["a_r8_all_greedy24_gap"]);
    assert!(gaps.iter().all(|&g| g > 1e-3), "no near-tie: all 24 tokens are comparable");
    (text, tokenizer().decode(&want, false).unwrap())
}

fn health_models_and_metrics() {
    let r = request("GET", "/health", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let m = request("GET", "/v1/models", "").json();
    let ids: Vec<&str> = m["data"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![common::MODEL, "a_r8_all", "b_r16_qv_rslora"]);
    // One request so the histograms have something.
    assert_eq!(post("/generate", json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}})).status, 200);
    let r = request("GET", "/metrics", "");
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("application/openmetrics-text; version=1.0.0"), "{}", r.headers);
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    for name in [
        "lorafleet_queue_length ",
        "lorafleet_running_sequences ",
        "lorafleet_kv_blocks_used ",
        "lorafleet_kv_blocks_total ",
        "lorafleet_resident_adapters ",
        "lorafleet_time_to_first_token_seconds_bucket{le=\"+Inf\"} ",
        "lorafleet_inter_token_latency_seconds_count ",
    ] {
        assert!(r.body.contains(name), "{name} missing from /metrics:\n{}", r.body);
    }
    let finished: u64 = r.body.lines().find_map(|l| l.strip_prefix("lorafleet_requests_finished_total ")).unwrap().parse().unwrap();
    assert!(finished >= 1);
    // The inference gateway's model-server protocol, under vLLM's names: queue, running, KV
    // usage (0..1), cache config, and the adapters of running requests in lora_requests_info.
    for name in ["vllm:num_requests_waiting ", "vllm:num_requests_running ", "vllm:kv_cache_usage_perc ", "vllm:cache_config_info{block_size=\"16\","] {
        assert!(r.body.contains(name), "{name} missing from /metrics:\n{}", r.body);
    }
    let long = std::thread::spawn(|| {
        post("/generate", json!({"inputs": "Tell me a story.", "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": 48, "ignore_eos_token": true}}))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen = None;
    while seen.is_none() && !long.is_finished() && std::time::Instant::now() < deadline {
        let r = request("GET", "/metrics", "");
        seen = r.body.lines().find(|l| l.starts_with("vllm:lora_requests_info{") && l.contains("running_lora_adapters=\"a_r8_all\"")).map(str::to_string);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(long.join().unwrap().status, 200);
    let seen = seen.expect("a running a_r8_all request shows in vllm:lora_requests_info");
    assert!(seen.contains("max_lora=\"") && seen.contains("waiting_lora_adapters=\""), "{seen}");
    let stamp: f64 = seen.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(stamp > 1.7e9, "the value is the last update's Unix time: {seen}");
    // Residency per adapter and tier: a_r8_all (rank 8 on all seven modules of 30 layers) is on
    // the device and parsed on the host, unpinned once its request ended; its load was timed.
    let r = request("GET", "/metrics", "");
    let bytes = |tier: &str| -> u64 {
        let key = format!("lorafleet_adapter_resident_bytes{{adapter=\"a_r8_all\",tier=\"{tier}\",pinned=\"false\"}} ");
        r.body.lines().find_map(|l| l.strip_prefix(key.as_str())).unwrap_or_else(|| panic!("{key} missing:\n{}", r.body)).parse().unwrap()
    };
    let want = 30 * 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536)) as u64 * 4;
    assert_eq!((bytes("device"), bytes("host")), (want, want));
    let loads: u64 = r.body.lines().find_map(|l| l.strip_prefix("lorafleet_adapter_load_seconds_count ")).expect("load histogram").parse().unwrap();
    assert!(loads >= 1, "{}", r.body);
    // The prefix cache: the same 50-odd-token prompt twice, one after the other; the second
    // finds at least its first 2 blocks (32 tokens) cached, and answers the same.
    let metric = |name: &str| -> u64 {
        let r = request("GET", "/metrics", "");
        r.body.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap())).unwrap_or_else(|| panic!("{name} missing:\n{}", r.body))
    };
    let hits = || metric("lorafleet_prefix_cache_hit_tokens_total ");
    let body =
        json!({"inputs": "Classify the sentiment of the review as positive or negative. ".repeat(4) + "Review: lovely.", "parameters": {"max_new_tokens": 4}});
    let first = post("/generate", body.clone());
    let before = hits();
    let second = post("/generate", body);
    assert!(hits() >= before + 32, "the second request hit the first one's blocks: {before} -> {}", hits());
    assert_eq!(first.json()["generated_text"], second.json()["generated_text"]);
    assert!(metric("lorafleet_prefix_cache_blocks ") >= 2);
}

fn generate_with_golden_adapter_gives_peft_greedy_text() {
    let (prompt, want) = golden_chat();
    let r = post("/generate", json!({"inputs": prompt, "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": 24, "details": true}}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["generated_text"], json!(want));
    assert_eq!(v["details"]["generated_tokens"], json!(24));
    assert_eq!(v["details"]["finish_reason"], json!("length"));
    let g = golden_json();
    let tok_ids: Vec<u64> = v["details"]["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let want_ids: Vec<u64> = ids(&g["prompts"][1]["a_r8_all_greedy24"]).into_iter().map(u64::from).collect();
    assert_eq!(tok_ids, want_ids);
    // The base gives something else for this prompt (the adapter was applied).
    let base = post("/generate", json!({"inputs": prompt, "parameters": {"max_new_tokens": 24}})).json();
    assert_ne!(base["generated_text"], v["generated_text"]);
}

fn generate_stream_sends_tokens_then_the_text() {
    let (prompt, want) = golden_chat();
    let r = post("/generate_stream", json!({"inputs": prompt, "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": 24}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains("text/event-stream"), "{}", r.headers);
    let events: Vec<Value> = r.events().iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(events.len(), 24);
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["index"], json!(i + 1));
        assert!(e["token"]["id"].is_u64());
        assert!(e["token"]["logprob"].as_f64().is_some_and(|l| l <= 0.0), "a real log-probability: {e}");
        text.push_str(e["token"]["text"].as_str().unwrap());
        if i + 1 < events.len() {
            assert_eq!(e["generated_text"], Value::Null);
        }
    }
    assert_eq!(text, want);
    assert_eq!(events.last().unwrap()["generated_text"], json!(want));
}

fn chat_completions_stream_and_not() {
    // SmolLM2's template adds a system message, so the goldens do not apply: the chat answer
    // must be what /generate gives for the templated prompt.
    let user = "Classify the sentiment of this movie review as positive or negative: a gorgeous, witty, seductive movie.";
    let msgs = [lorafleet::tokenizer::ChatMessage { role: "user".into(), content: user.into() }];
    let templated = tokenizer().apply_chat_template(&msgs, true).unwrap();
    assert!(templated.contains("<|im_start|>assistant\n"), "{templated}");
    let want = post("/generate", json!({"inputs": templated, "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": 24}})).json()["generated_text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!want.is_empty());
    let body = json!({"model": "a_r8_all", "messages": [{"role": "user", "content": user}], "temperature": 0, "max_tokens": 24});
    let r = post("/v1/chat/completions", body.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], json!("chat.completion"));
    assert_eq!(v["choices"][0]["message"]["content"], json!(want));
    assert_eq!(v["choices"][0]["finish_reason"], json!("length"));
    assert_eq!(v["usage"]["prompt_tokens"], json!(tokenizer().encode(&templated).unwrap().len()));
    assert_eq!(v["usage"]["completion_tokens"], json!(24));

    let mut sbody = body;
    sbody["stream"] = json!(true);
    let r = post("/v1/chat/completions", sbody);
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], json!("assistant"));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want);
    assert!(chunks.iter().all(|c| c["object"] == json!("chat.completion.chunk")));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], json!("length"));
}

fn completions_name_the_base_or_an_adapter() {
    let g = golden_json();
    let p = &g["prompts"][1];
    let prompt = p["text"].as_str().unwrap();
    let want_base = tokenizer().decode(&ids(&p["base_greedy24"])[..8], false).unwrap();
    for model in [common::MODEL, "base", ""] {
        let r = post("/v1/completions", json!({"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 8}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["choices"][0]["text"], json!(want_base), "model {model:?}");
    }
    let r = post("/v1/completions", json!({"model": "a_r8_all", "prompt": prompt, "temperature": 0, "max_tokens": 8, "stream": true}));
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(text, tokenizer().decode(&ids(&p["a_r8_all_greedy24"])[..8], false).unwrap());
}

fn errors_are_json_4xx() {
    let check = |r: Reply, status: u16, kind: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let v = r.json();
        // LoRAX's shape, or OpenAI's on the /v1/ routes.
        let (got_kind, message) = match &v["error"] {
            Value::Object(e) => (e["code"].clone(), e["message"].clone()),
            other => (v["error_type"].clone(), other.clone()),
        };
        assert_eq!(got_kind, json!(kind), "{v}");
        assert!(message.as_str().is_some_and(|s| !s.is_empty()), "{v}");
    };
    check(request("POST", "/generate", "{not json"), 400, "invalid_json");
    check(request("POST", "/v1/chat/completions", "[1, 2"), 400, "invalid_json");
    check(post("/generate", json!({"parameters": {}})), 422, "validation");
    check(post("/generate", json!({"inputs": "Hi", "parameters": {"adapter_id": "no-such-adapter"}})), 404, "unknown_adapter");
    check(post("/generate_stream", json!({"inputs": "Hi", "parameters": {"adapter_id": "no-such-adapter"}})), 404, "unknown_adapter");
    check(post("/v1/chat/completions", json!({"model": "nope", "messages": [{"role": "user", "content": "Hi"}]})), 404, "unknown_adapter");
    // A path, even to a real adapter folder (here the same one the name gives), is no adapter id
    // unless the server runs with --allow-adapter-paths; nor is a name that walks out.
    let real = golden_dir().join("adapters/a_r8_all");
    for id in [real.to_string_lossy().into_owned(), "../adapters/a_r8_all".into(), "a_r8_all/.".into()] {
        check(post("/generate", json!({"inputs": "Hi", "parameters": {"adapter_id": id, "max_new_tokens": 1}})), 404, "unknown_adapter");
    }
    let long = "hello ".repeat(9000);
    check(post("/generate", json!({"inputs": long, "parameters": {"max_new_tokens": 4}})), 422, "prompt_too_long");
    check(post("/v1/completions", json!({"prompt": "Hi", "temperature": -1})), 422, "validation");
    // The server still serves.
    assert_eq!(post("/generate", json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1}})).status, 200);
    // Each request was logged in one line.
    let log = server().log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("method=POST path=/generate status=404 outcome=unknown_adapter adapter=no-such-adapter")), "{log:?}");
}

fn concurrent_clients_get_their_own_answers() {
    let (prompt, want) = golden_chat();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let prompt = prompt.clone();
            std::thread::spawn(move || {
                let adapter = if i % 2 == 0 { json!("a_r8_all") } else { Value::Null };
                post("/generate", json!({"inputs": prompt, "parameters": {"adapter_id": adapter, "max_new_tokens": 24}})).json()
            })
        })
        .collect();
    let outs: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, v) in outs.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(v["generated_text"], json!(want), "client {i}");
        } else {
            assert_eq!(v["generated_text"], outs[1]["generated_text"], "client {i}");
        }
    }
}

fn a_client_that_disconnects_cancels_its_request() {
    let s = server();
    let metric = |name: &str| -> u64 {
        let r = request("GET", "/metrics", "");
        r.body.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap())).unwrap()
    };
    let before = metric("lorafleet_requests_cancelled_total ");
    let body = json!({"inputs": "Tell me a very long story.", "parameters": {"max_new_tokens": 1000, "ignore_eos_token": true}}).to_string();
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(c, "POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    // Read until the first token arrives, then hang up.
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    let t = Instant::now();
    while metric("lorafleet_requests_cancelled_total ") <= before {
        assert!(t.elapsed() < Duration::from_secs(60), "the request was not cancelled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    while metric("lorafleet_kv_blocks_used ") != 0 || metric("lorafleet_running_sequences ") != 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "blocks not freed after the disconnect");
        std::thread::sleep(Duration::from_millis(100));
    }
}
