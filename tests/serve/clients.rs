//! The official LoRAX and OpenAI Python clients (`lorax-client`, `openai`, from PyPI) against a
//! real `lorafleet serve` on loopback: tests/clients/test_clients.py, with the expectations
//! (golden greedy text of adapter `a_r8_all`, log-softmax of the in-process `score` logits)
//! computed here. And the inference gateway's model-server protocol as its endpoint picker
//! reads it, parsed by `prometheus-client`'s OpenMetrics parser: tests/clients/test_metrics_protocol.py.
//!
//! Needs a Python with the three packages: `LORAFLEET_CLIENTS_PYTHON=/path/to/python` (.ci/run makes
//! a venv with the pinned versions). Without it the test says so and skips; with
//! `LORAFLEET_REQUIRE_CLIENTS=1` it fails instead.

use std::process::Command;
use std::time::Duration;

use crate::common::server::TestServer;
use crate::common::*;
use serde_json::json;

/// The Python with the clients, or None (the test skips, or fails under
/// LORAFLEET_REQUIRE_CLIENTS=1).
fn clients_python() -> Option<std::ffi::OsString> {
    let python = std::env::var_os("LORAFLEET_CLIENTS_PYTHON");
    if python.is_none() {
        let msg = "LORAFLEET_CLIENTS_PYTHON is not set (a python with `openai`, `lorax-client` and `prometheus-client` installed)";
        if std::env::var("LORAFLEET_REQUIRE_CLIENTS").as_deref() == Ok("1") {
            panic!("{msg}, and LORAFLEET_REQUIRE_CLIENTS=1");
        }
        eprintln!("SKIPPED: {msg}");
    }
    python
}

/// The inference gateway's model-server protocol, parsed by prometheus_client's OpenMetrics
/// parser with requests running and waiting on two adapters: tests/clients/test_metrics_protocol.py.
#[test]
fn the_model_server_protocol_reads_as_the_gateway_reads_it() {
    let Some(python) = clients_python() else { return };
    // Dropped (killed) at the end, with requests still in flight.
    let server = TestServer::start_golden(&["--max-running", "2", "--max-active-adapters", "2"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/test_metrics_protocol.py");
    let out = Command::new(&python).arg(&script).arg(format!("http://{}", server.addr)).output().expect("run the protocol check");
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the protocol check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("model-server protocol: 0 failed"), "{stdout}");
}

/// Two replicas with different adapters resident, and a picker that follows the gateway's
/// LoRA-affinity scoring from their metrics alone: tests/clients/test_replica_picker.py.
#[test]
fn a_picker_routes_each_adapter_to_the_replica_that_holds_it() {
    let Some(python) = clients_python() else { return };
    let root = tempfile::Builder::new().prefix("lorafleet-replicas-").tempdir().unwrap();
    let mut servers = Vec::new();
    let mut argv: Vec<String> = Vec::new();
    for (i, adapter) in ["a_r8_all", "b_r16_qv_rslora"].into_iter().enumerate() {
        // Each replica's adapter folder holds its adapter only.
        let dir = root.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(golden_dir().join("adapters").join(adapter), dir.join(adapter)).unwrap();
        let args: Vec<std::ffi::OsString> =
            vec!["--model".into(), model_dir().into(), "--adapter-dir".into(), dir.into(), "--kv-cache-bytes".into(), "32M".into()];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let server = TestServer::start(&args, &[], Duration::from_secs(300));
        argv.push(format!("http://{}", server.addr));
        argv.push(adapter.to_string());
        servers.push(server);
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/test_replica_picker.py");
    let out = Command::new(&python).arg(&script).args(&argv).output().expect("run the picker");
    drop(servers);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the picker test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("replica picker: 0 failed"), "{stdout}");
}

#[test]
fn official_python_clients_work_against_the_server() {
    let Some(python) = clients_python() else { return };
    let g = golden_json();
    let p = &g["prompts"][1];
    let prompt = p["text"].as_str().unwrap();
    let prompt_ids = ids(&p["ids"]);
    let want_ids: Vec<u32> = ids(&p["a_r8_all_greedy24"])[..8].to_vec();
    let tok = lorafleet::TextTokenizer::from_dir(&model_dir()).unwrap();
    let expect = json!({
        "prompt": prompt,
        "adapter": "a_r8_all",
        "greedy_text": tok.decode(&want_ids, false).unwrap(),
        "greedy_logprobs": scored_logprobs(&prompt_ids, &want_ids),
        "prompt_tokens": prompt_ids.len(),
    });
    let expect_path = std::env::temp_dir().join(format!("lorafleet-clients-{}.json", std::process::id()));
    std::fs::write(&expect_path, expect.to_string()).unwrap();

    let server = TestServer::start_golden(&[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/test_clients.py");
    let out = Command::new(&python).arg(&script).arg(format!("http://{}", server.addr)).arg(&expect_path).output().expect("run the client suite");
    std::fs::remove_file(&expect_path).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the client suite failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// Structured output through both official clients (openai's `response_format` json_schema,
/// lorax-client's `response_format`), validated by Python's `jsonschema`, for every golden
/// prompt on the base and both golden adapters, sent together with unconstrained requests whose
/// text stays golden: tests/clients/test_structured.py.
#[test]
fn structured_output_through_the_official_clients_validates_against_its_schema() {
    let Some(python) = clients_python() else { return };
    let g = golden_json();
    let tok = lorafleet::TextTokenizer::from_dir(&model_dir()).unwrap();
    let keys = [("base", "base"), ("a_r8_all", "a_r8_all"), ("b_r16_qv_rslora", "b_r16_qv_rslora")];
    let prompts: Vec<serde_json::Value> = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = ids(&p["base_greedy24"]).len();
            let greedy: serde_json::Map<String, serde_json::Value> =
                keys.iter().map(|(model, k)| (model.to_string(), json!(tok.decode(&ids(&p[format!("{k}_greedy24")]), false).unwrap()))).collect();
            json!({ "text": p["text"], "n": n, "greedy": greedy })
        })
        .collect();
    let schema = json!({
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": 24},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "label": {"enum": ["positive", "negative", "neutral"]}
        },
        "required": ["answer", "score", "label"],
        "additionalProperties": false
    });
    let expect_path = std::env::temp_dir().join(format!("lorafleet-structured-{}.json", std::process::id()));
    std::fs::write(&expect_path, json!({ "prompts": prompts, "schema": schema }).to_string()).unwrap();
    let server = TestServer::start_golden(&[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/test_structured.py");
    let out = Command::new(&python).arg(&script).arg(format!("http://{}", server.addr)).arg(&expect_path).output().expect("run the structured suite");
    std::fs::remove_file(&expect_path).ok();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the structured suite failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("structured: ") && stdout.contains(" passed, 0 failed"), "{stdout}");
}
