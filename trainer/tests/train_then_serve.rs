//! Train -> serve without a restart: `lorafleet serve` runs with an adapter dir; the trainer
//! publishes a new adapter into it (`--adapter-out DIR/NAME`); the next request naming it is
//! answered with that adapter's output (the same tokens as `lorafleet generate --adapter` in
//! process); a second training run over the same name is served as the new version.

#[path = "../../tests/common/server.rs"]
#[allow(dead_code)]
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use server::{lorafleet_bin, TestServer};

const PROMPT: &str = "Question: what colour is the sky?\nAnswer:";

fn model() -> PathBuf {
    let m = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct");
    assert!(m.join("config.json").is_file(), "test model missing at {}", m.display());
    m
}

/// `lorafleet-train train` for 2 updates, publishing its adapter to `dest`.
fn train(data: &Path, out: &Path, dest: &Path, seed: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_lorafleet-train"))
        .args(["train", "--no-progress", "--max-steps", "2", "--rank", "4", "--lr", "2e-2", "--seed", seed, "--model"])
        .arg(model())
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--adapter-out")
        .arg(dest)
        .output()
        .expect("run lorafleet-train");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Token ids and the first token's logprob of `lorafleet generate` in process.
fn in_process(adapter: &Path) -> Vec<u64> {
    let o = Command::new(lorafleet_bin())
        .args(["generate", "--device", "cpu", "--max-new-tokens", "6", "--ignore-eos", "--json", "--prompt", PROMPT, "--model"])
        .arg(model())
        .arg("--adapter")
        .arg(adapter)
        .output()
        .expect("run lorafleet generate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(o.stdout.trim_ascii()).expect("generate --json");
    v["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

/// (token ids, first token's logprob) of a served greedy request.
fn served(s: &TestServer, adapter: Option<&str>) -> (Vec<u64>, f64) {
    let r = s.post(
        "/generate",
        json!({ "inputs": PROMPT, "parameters": { "max_new_tokens": 6, "ignore_eos_token": true, "details": true, "adapter_id": adapter } }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens = r.json()["details"]["tokens"].as_array().unwrap().clone();
    (tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect(), tokens[0]["logprob"].as_f64().unwrap())
}

#[test]
fn an_adapter_the_trainer_publishes_is_served_without_a_restart() {
    let tmp = tempfile::Builder::new().prefix("lorafleet-train-serve-").tempdir().unwrap();
    let adapters = tmp.path().join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let data = tmp.path().join("data.jsonl");
    let lines: Vec<String> = ["The sky is blue.", "Blue, on a clear day.", "It is blue.", "Mostly blue."]
        .iter()
        .map(|c| json!({ "prompt": PROMPT, "completion": format!(" {c}") }).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();

    let args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        model().into(),
        "--adapter-dir".into(),
        adapters.clone().into(),
        "--device".into(),
        "cpu".into(),
        "--kv-cache-bytes".into(),
        "32M".into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let s = TestServer::start(&args, &[], Duration::from_secs(300));
    let base = served(&s, None);
    let r = s.post("/generate", json!({ "inputs": PROMPT, "parameters": { "max_new_tokens": 1, "adapter_id": "fresh" } }));
    assert_eq!(r.status, 404, "not there before training: {}", r.body);

    let dest = adapters.join("fresh");
    train(&data, &tmp.path().join("run1"), &dest, "1");
    let v1 = served(&s, Some("fresh"));
    assert_eq!(v1.0, in_process(&dest), "the served tokens are the adapter's");
    assert!((v1.1 - base.1).abs() > 1e-4, "the adapter moves the logits: {} vs {}", v1.1, base.1);

    // A second run (another seed) over the same name: the next request gets the new version.
    train(&data, &tmp.path().join("run2"), &dest, "2");
    let v2 = served(&s, Some("fresh"));
    assert_eq!(v2.0, in_process(&dest));
    assert!((v2.1 - v1.1).abs() > 1e-6, "the new version is served: {} vs {}", v2.1, v1.1);
}
