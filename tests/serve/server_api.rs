//! The LoRAX and OpenAI APIs as their clients use them, end to end against a real
//! `lorafleet serve` (golden adapters as `--adapter-dir`): LoRAX's `POST /` (list answer and
//! SSE), `details` with `prompt_tokens`, real per-token logprobs (equal to log-softmax of the
//! in-process `score` logits), `prefill`, `return_k_alternatives`, `/info`, `/tokenize`, and
//! refusals naming the field; OpenAI's `n`, `logprobs` / `top_logprobs`, `echo`,
//! `stream_options.include_usage`, content parts, penalties, its error shape; vLLM's
//! load/unload adapter routes.

use crate::common;

use crate::common::server::TestServer;
use crate::common::*;
use lorafleet::TextTokenizer;
use serde_json::{json, Value};

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_dir(&model_dir()).unwrap()
}

#[test]
fn lorax_and_openai_apis_as_their_clients_use_them() {
    let adapters = golden_dir().join("adapters");
    let s = TestServer::start_golden(&[]);
    let g = golden_json();
    let p = &g["prompts"][1];
    let prompt = p["text"].as_str().unwrap();
    let prompt_ids = ids(&p["ids"]);
    let want_ids: Vec<u32> = ids(&p["a_r8_all_greedy24"])[..8].to_vec();
    let want_text = tokenizer().decode(&want_ids, false).unwrap();

    // LoRAX's client posts to `/` and reads a one-element list.
    let body = json!({"inputs": prompt, "stream": false, "parameters": {
        "adapter_id": "a_r8_all", "max_new_tokens": 8, "details": true, "decoder_input_details": true,
        "return_k_alternatives": 3, "adapter_source": null, "merged_adapters": null, "api_token": null,
        "best_of": null, "watermark": false, "typical_p": null, "truncate": null, "return_full_text": false,
        "repetition_penalty": null, "response_format": null, "stop": [], "seed": null, "do_sample": false}});
    let r = s.post("/", body.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let out = &v.as_array().expect("a list")[0];
    assert_eq!(out["generated_text"], json!(want_text));
    let d = &out["details"];
    assert_eq!(d["prompt_tokens"], json!(prompt_ids.len()));
    assert_eq!(d["generated_tokens"], json!(8));
    assert_eq!(d["finish_reason"], json!("length"));
    assert_eq!(d["seed"], Value::Null, "greedy");
    let toks = d["tokens"].as_array().unwrap();
    let got_ids: Vec<u32> = toks.iter().map(|t| t["id"].as_u64().unwrap() as u32).collect();
    assert_eq!(got_ids, want_ids);
    // Logprobs: log-softmax of score's logits, within 1e-4.
    let want_lp = scored_logprobs(&prompt_ids, &want_ids);
    for (t, w) in toks.iter().zip(&want_lp) {
        let lp = t["logprob"].as_f64().expect("a numeric logprob");
        assert!((lp - w).abs() < 1e-4, "logprob {lp} vs score's {w}");
        let alts = t["alternative_tokens"].as_array().unwrap();
        assert_eq!(alts.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(alts[0]["id"], t["id"]);
        assert!((alts[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert!(alts.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }
    // Prefill: every prompt token, the first without a logprob, the rest log-softmax values.
    let prefill = d["prefill"].as_array().unwrap();
    assert_eq!(prefill.len(), prompt_ids.len());
    assert_eq!(prefill[0]["logprob"], Value::Null);
    let pre_ids: Vec<u32> = prefill.iter().map(|t| t["id"].as_u64().unwrap() as u32).collect();
    assert_eq!(pre_ids, prompt_ids);
    let second = scored_logprobs(&prompt_ids[..1], &prompt_ids[1..2])[0];
    assert!((prefill[1]["logprob"].as_f64().unwrap() - second).abs() < 1e-4);
    assert!(prefill[1..].iter().all(|t| t["logprob"].as_f64().is_some_and(|l| l <= 0.0)));

    // The same through `/` streamed: every frame has a token with a numeric logprob, the last
    // one the text and details with prompt_tokens.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = s.post("/", sbody);
    assert_eq!(r.status, 200, "{}", r.body);
    let frames: Vec<Value> = r.events().iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(frames.len(), 8);
    for (f, w) in frames.iter().zip(&want_lp) {
        assert!((f["token"]["logprob"].as_f64().unwrap() - w).abs() < 1e-4, "{f}");
    }
    let last = frames.last().unwrap();
    assert_eq!(last["generated_text"], json!(want_text));
    assert_eq!(last["details"]["prompt_tokens"], json!(prompt_ids.len()));

    // return_full_text and truncate.
    let r = s.post("/generate", json!({"inputs": prompt, "parameters": {"adapter_id": "a_r8_all", "max_new_tokens": 8, "return_full_text": true}}));
    assert_eq!(r.json()["generated_text"], json!(format!("{prompt}{want_text}")));
    let r = s.post("/generate", json!({"inputs": prompt, "parameters": {"max_new_tokens": 2, "truncate": 3, "details": true}}));
    assert_eq!(r.json()["details"]["prompt_tokens"], json!(3));

    // What lorafleet does not do is refused, naming the field; so is an unknown field.
    for (params, field) in [
        (json!({"typical_p": 0.5}), "typical_p"),
        (json!({"best_of": 2, "do_sample": true}), "best_of"),
        (json!({"watermark": true}), "watermark"),
        (json!({"adapter_source": "hub"}), "adapter_source"),
        (json!({"stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}), "stop"),
        (json!({"top_n_tokens": 2}), "top_n_tokens"),
        (json!({"repetition_penalty": -1.0}), "repetition_penalty"),
    ] {
        let r = s.post("/generate", json!({"inputs": "Hi", "parameters": params}));
        assert_eq!(r.status, 422, "{params}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error_type"], json!("validation"));
        assert!(v["error"].as_str().unwrap().contains(field), "{field}: {v}");
    }

    // /info and /tokenize.
    let info = s.request("GET", "/info", "").json();
    assert_eq!(info["model_id"], json!(common::MODEL));
    assert_eq!(info["max_stop_sequences"], json!(8));
    assert!(info["max_total_tokens"].as_u64().unwrap() > 0);
    let r = s.post("/tokenize", json!({"inputs": "Hello world"})).json();
    let toks = r.as_array().unwrap();
    let want = tokenizer().encode("Hello world").unwrap();
    assert_eq!(toks.iter().map(|t| t["id"].as_u64().unwrap() as u32).collect::<Vec<_>>(), want);
    let joined: String = toks.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(joined, "Hello world");
    assert_eq!(toks.last().unwrap()["stop"], json!(11));

    openai(&s, prompt, &prompt_ids, &want_ids, &want_lp);
    vllm_adapter_routes(&s, prompt, &want_text, &adapters);
}

fn openai(s: &TestServer, prompt: &str, prompt_ids: &[u32], want_ids: &[u32], want_lp: &[f64]) {
    let tok = tokenizer();
    let want_text = tok.decode(want_ids, false).unwrap();
    // logprobs (completions): token_logprobs = score's, 2 alternatives each, tokens join to the text.
    let r = s.post("/v1/completions", json!({"model": "a_r8_all", "prompt": prompt, "temperature": 0, "max_tokens": 8, "logprobs": 2}));
    assert_eq!(r.status, 200, "{}", r.body);
    let c = &r.json()["choices"][0];
    assert_eq!(c["text"], json!(want_text));
    let lp = &c["logprobs"];
    for (l, w) in lp["token_logprobs"].as_array().unwrap().iter().zip(want_lp) {
        assert!((l.as_f64().unwrap() - w).abs() < 1e-4);
    }
    assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), 8);
    assert!(lp["top_logprobs"].as_array().unwrap().iter().all(|t| t.as_object().unwrap().len() == 2));
    let joined: String = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, want_text);

    // echo + logprobs: the prompt's tokens come first, the first without a logprob.
    let r = s.post("/v1/completions", json!({"model": "a_r8_all", "prompt": prompt, "temperature": 0, "max_tokens": 8, "logprobs": 0, "echo": true}));
    let c = &r.json()["choices"][0];
    assert_eq!(c["text"], json!(format!("{prompt}{want_text}")));
    let tl = c["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(tl.len(), prompt_ids.len() + 8);
    assert_eq!(tl[0], Value::Null);
    assert!((tl[prompt_ids.len()].as_f64().unwrap() - want_lp[0]).abs() < 1e-4);

    // Chat: content parts equal a plain string; logprobs with top_logprobs.
    let plain = json!({"model": "a_r8_all", "messages": [{"role": "user", "content": "Say hi.\nPlease."}], "temperature": 0, "max_tokens": 6});
    let mut parts = plain.clone();
    parts["messages"][0]["content"] = json!([{"type": "text", "text": "Say hi."}, {"type": "text", "text": "Please."}]);
    parts["logprobs"] = json!(true);
    parts["top_logprobs"] = json!(2);
    let a = s.post("/v1/chat/completions", plain).json();
    let b = s.post("/v1/chat/completions", parts.clone()).json();
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    let content = b["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 6);
    assert!(content.iter().all(|e| e["logprob"].as_f64().is_some_and(|l| l <= 0.0) && e["top_logprobs"].as_array().unwrap().len() == 2));
    let mut image = parts.clone();
    image["messages"][0]["content"] = json!([{"type": "image_url", "image_url": {"url": "x"}}]);
    assert_eq!(s.post("/v1/chat/completions", image).status, 422);

    // n = 2 with a seed: two choices, reproducible; without a seed, fresh seeds per request.
    let body = json!({"model": "a_r8_all", "prompt": prompt, "temperature": 1.0, "max_tokens": 12, "n": 2, "seed": 5});
    let x = s.post("/v1/completions", body.clone()).json();
    let y = s.post("/v1/completions", body).json();
    assert_eq!(x["choices"].as_array().unwrap().len(), 2);
    assert_eq!(x["choices"][1]["index"], json!(1));
    assert_eq!(x["choices"], y["choices"], "a seed reproduces every choice");
    assert_eq!(x["usage"]["completion_tokens"], json!(24));
    let texts: Vec<String> = (0..4)
        .map(|_| {
            s.post("/v1/completions", json!({"prompt": prompt, "temperature": 1.0, "max_tokens": 12})).json()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(texts.iter().any(|t| t != &texts[0]), "unseeded requests drew the same text 4 times: {texts:?}");

    // Streamed n = 2 with include_usage: both indexes, a usage chunk with no choices, [DONE].
    let r = s.post(
        "/v1/chat/completions",
        json!({"model": "a_r8_all", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
        "n": 2, "seed": 1, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], json!(10));
    let finished: Vec<u64> =
        chunks.iter().filter(|c| c["choices"][0]["finish_reason"].is_string()).map(|c| c["choices"][0]["index"].as_u64().unwrap()).collect();
    assert_eq!(
        {
            let mut f = finished;
            f.sort();
            f
        },
        vec![0, 1]
    );

    // Penalties change greedy text on a repetitive prompt; bad values are refused.
    let rep = "one one one one one one one one one one";
    let plain = s.post("/v1/completions", json!({"prompt": rep, "temperature": 0, "max_tokens": 8})).json();
    let pen = s.post("/v1/completions", json!({"prompt": rep, "temperature": 0, "max_tokens": 8, "frequency_penalty": 2.0, "presence_penalty": 2.0})).json();
    assert_ne!(plain["choices"][0]["text"], pen["choices"][0]["text"], "{plain} / {pen}");
    let r = s.post("/v1/completions", json!({"prompt": rep, "presence_penalty": 3.0}));
    assert_eq!(r.status, 422);

    // OpenAI's error shape.
    let r = s.post("/v1/completions", json!({"model": "no-such-adapter", "prompt": "Hi"}));
    assert_eq!(r.status, 404);
    let e = &r.json()["error"];
    assert_eq!(e["type"], json!("not_found_error"));
    assert_eq!(e["code"], json!("unknown_adapter"));
    assert!(e["message"].as_str().is_some_and(|m| m.contains("no-such-adapter")));
    let r = s.post("/v1/completions", json!({"prompt": "Hi", "logit_bias": {"1": 5}}));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["param"], json!("logit_bias"));
    let r = s.post("/v1/completions", json!({"prompt": "Hi", "n": 100}));
    assert_eq!(r.json()["error"]["param"], json!("n"));
}

fn vllm_adapter_routes(s: &TestServer, prompt: &str, want_text: &str, adapters: &std::path::Path) {
    let path = adapters.join("a_r8_all");
    let r = s.post("/v1/load_lora_adapter", json!({"lora_name": "mine", "lora_path": path}));
    assert_eq!(r.status, 200, "{}", r.body);
    let models = s.request("GET", "/v1/models", "").json();
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == json!("mine")));
    let c = s.post("/v1/completions", json!({"model": "mine", "prompt": prompt, "temperature": 0, "max_tokens": 8})).json();
    assert_eq!(c["choices"][0]["text"], json!(want_text), "the loaded name serves the adapter");
    // A second load of the name, and a folder outside --adapter-dir, are refused.
    assert_eq!(s.post("/v1/load_lora_adapter", json!({"lora_name": "mine", "lora_path": path})).status, 422);
    let outside_guard = tempfile::Builder::new().prefix("lorafleet-outside-").tempdir().unwrap();
    let outside = outside_guard.path().to_path_buf();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(path.join("adapter_config.json"), outside.join("adapter_config.json")).unwrap();
    let r = s.post("/v1/load_lora_adapter", json!({"lora_name": "evil", "lora_path": outside}));
    std::fs::remove_dir_all(&outside).ok();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("--adapter-dir"));
    let r = s.post("/v1/unload_lora_adapter", json!({"lora_name": "mine"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.post("/v1/completions", json!({"model": "mine", "prompt": "Hi"})).status, 404);
    assert_eq!(s.post("/v1/unload_lora_adapter", json!({"lora_name": "mine"})).status, 404);
}
