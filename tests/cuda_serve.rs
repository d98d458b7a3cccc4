//! `lorafleet serve --device cuda` answers LoRAX's /generate and OpenAI's /v1/completions from the
//! CUDA backend: SmolLM2-135M greedy with the golden adapter `a_r8_all` gives peft's golden first
//! tokens, the base gives HF's, an unknown adapter is a 4xx JSON error, and the server reports the
//! device it runs on. On a machine without a GPU the server runs on the CPU emulator
//! (LORAFLEET_CUDA_EMU=1, set for the child process only), where a step of the 135M model takes
//! seconds: the requests are short.

mod common;

use std::time::Duration;

use common::server::TestServer;
use common::*;
use lorafleet::backend::cuda::{test_device, tests_on_emulator};
use lorafleet::TextTokenizer;
use serde_json::json;

#[test]
fn serve_on_cuda_answers_generate_and_completions() {
    // Decides GPU or emulator for this process; the child server follows the same choice.
    let Some(_ops) = test_device("cuda_serve") else { return };
    let env: Vec<(&str, &str)> = if tests_on_emulator() { vec![("LORAFLEET_CUDA_EMU", "1")] } else { vec![] };
    let args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        model_dir().into(),
        "--adapter-dir".into(),
        golden_dir().join("adapters").into(),
        "--device".into(),
        "cuda".into(),
        "--kv-cache-bytes".into(),
        "16M".into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let server = TestServer::start(&args, &env, Duration::from_secs(600));
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("device: cuda:0"), "the server says where it runs: {log}");

    let golden = golden_json();
    let p = &golden["prompts"][0];
    let prompt = p["text"].as_str().unwrap();
    let tok = TextTokenizer::from_dir(&model_dir()).unwrap();
    let n = 3;

    // LoRAX /generate with the golden adapter: peft's first greedy tokens.
    let r = server.post(
        "/generate",
        json!({"inputs": prompt, "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": n, "temperature": 0.0}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let want: Vec<u32> = ids(&p["a_r8_all_greedy24"])[..n].to_vec();
    assert_eq!(r.json()["generated_text"].as_str().unwrap(), tok.decode(&want, true).unwrap());

    // OpenAI /v1/completions on the base: HF's first greedy tokens.
    let base = model_dir().file_name().unwrap().to_string_lossy().into_owned();
    let r = server.post("/v1/completions", json!({"model": base, "prompt": prompt, "max_tokens": n, "temperature": 0.0}));
    assert_eq!(r.status, 200, "{}", r.body);
    let want: Vec<u32> = ids(&p["base_greedy24"])[..n].to_vec();
    assert_eq!(r.json()["choices"][0]["text"].as_str().unwrap(), tok.decode(&want, true).unwrap());

    // A bad request fails alone, as JSON.
    let r = server.post("/generate", json!({"inputs": prompt, "parameters": {"adapter_id": "no-such-adapter", "max_new_tokens": 2}}));
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
    assert!(r.json().get("error").is_some(), "{}", r.body);
    let r = server.request("GET", "/health", "");
    assert_eq!(r.status, 200);
}
