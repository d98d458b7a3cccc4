//! `lorafleet serve --device cuda` answers LoRAX's /generate and OpenAI's /v1/completions from the
//! CUDA backend: SmolLM2-135M greedy with the golden adapter `a_r8_all` gives peft's golden first
//! tokens, the base gives HF's, an unknown adapter is a 4xx JSON error, and the server reports the
//! device it runs on. On a machine without a GPU the server runs on the CPU emulator
//! (LORAFLEET_CUDA_EMU=1, set for the child process only), where a step of the 135M model takes
//! seconds: the requests are short.

use std::time::Duration;

use crate::common::server::TestServer;
use crate::common::*;
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
    let r = server.post("/generate", json!({"inputs": prompt, "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": n, "temperature": 0.0}}));
    assert_eq!(r.status, 200, "{}", r.body);
    let want: Vec<u32> = ids(&p["a_r8_all_greedy24"])[..n].to_vec();
    assert_eq!(r.json()["generated_text"].as_str().unwrap(), tok.decode(&want, true).unwrap());

    // OpenAI /v1/completions on the base: HF's first greedy tokens.
    let base = model_dir().file_name().unwrap().to_string_lossy().into_owned();
    let r = server.post("/v1/completions", json!({"model": base, "prompt": prompt, "max_tokens": n, "temperature": 0.0}));
    assert_eq!(r.status, 200, "{}", r.body);
    let want: Vec<u32> = ids(&p["base_greedy24"])[..n].to_vec();
    assert_eq!(r.json()["choices"][0]["text"].as_str().unwrap(), tok.decode(&want, true).unwrap());

    // Logprobs and alternatives come from the device's logits (one host copy of the step's rows
    // when a request asks): equal to log-softmax of the CPU `score` logits (f32 activations).
    let r = server.post(
        "/generate",
        json!({"inputs": prompt, "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": n, "details": true, "return_k_alternatives": 2}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let want: Vec<u32> = ids(&p["a_r8_all_greedy24"])[..n].to_vec();
    let scored = scored_logprobs(&ids(&p["ids"]), &want);
    let toks = r.json()["details"]["tokens"].as_array().unwrap().clone();
    assert_eq!(toks.len(), n);
    for (t, w) in toks.iter().zip(&scored) {
        let lp = t["logprob"].as_f64().unwrap();
        assert!((lp - w).abs() < 1e-3, "device logprob {lp} vs the CPU's {w}");
        assert_eq!(t["alternative_tokens"][0]["id"], t["id"], "greedy takes the most likely token");
    }
    // A penalized request is sampled on the host from the device's row: it changes the greedy
    // text of a repetitive prompt and leaves the others in the step alone.
    let rep = "1, 1, 1, 1, 1, 1, 1, 1,";
    let plain = server.post("/v1/completions", json!({"prompt": rep, "max_tokens": 4, "temperature": 0.0})).json();
    let pen =
        server.post("/v1/completions", json!({"prompt": rep, "max_tokens": 4, "temperature": 0.0, "repetition_penalty": 2.0, "presence_penalty": 1.0})).json();
    assert_ne!(plain["choices"][0]["text"], pen["choices"][0]["text"], "{plain} / {pen}");

    // A bad request fails alone, as JSON.
    let r = server.post("/generate", json!({"inputs": prompt, "parameters": {"adapter_id": "no-such-adapter", "max_new_tokens": 2}}));
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
    assert!(r.json().get("error").is_some(), "{}", r.body);
    let r = server.request("GET", "/health", "");
    assert_eq!(r.status, 200);
}
