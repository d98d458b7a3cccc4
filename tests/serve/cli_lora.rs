//! `generate --adapter`, `score --adapter` and a prompts file mixing adapters, end to end
//! through the CLI with the golden peft adapters.

use std::process::{Command, Output};

use crate::common::*;

fn lorafleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorafleet")).args(args).output().expect("run lorafleet")
}

fn adapters_dir() -> String {
    golden_dir().join("adapters").to_str().unwrap().to_string()
}

#[test]
fn score_with_adapter_matches_peft_top_logits() {
    let dir = model_dir();
    let g = golden_json();
    let gt = golden_tensors();
    let text = g["prompts"][0]["text"].as_str().unwrap();
    for name in ["a_r8_all", "b_r16_qv_rslora"] {
        let o = lorafleet(&[
            "score",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            text,
            "--adapter",
            name,
            "--adapter-dir",
            &adapters_dir(),
            "--json",
            "--threads",
            "2",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let want = gt.f32(&format!("{name}.p0.last_logits")).unwrap().data;
        assert_eq!(ids(&v["argmax"]), ids(&g["prompts"][0][format!("{name}_argmax")]), "{name}");
        for pair in v["top_logits"].as_array().unwrap() {
            let (id, logit) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
            assert!((logit - want[id] as f64).abs() < 1e-3, "{name}: token {id}: {logit} vs peft {}", want[id]);
        }
    }
}

#[test]
fn prompts_file_mixes_adapters_and_an_unknown_adapter_fails_alone() {
    let dir = model_dir();
    let g = golden_json();
    let p = &g["prompts"][1];
    let text = p["text"].as_str().unwrap();
    let file = std::env::temp_dir().join(format!("lorafleet-cli-lora-{}.jsonl", std::process::id()));
    let lines = [
        serde_json::json!({ "prompt": text }),
        serde_json::json!({ "prompt": text, "adapter": "a_r8_all" }),
        serde_json::json!({ "prompt": text, "adapter": "no_such_adapter" }),
        serde_json::json!({ "prompt": text, "adapter": "b_r16_qv_rslora" }),
    ];
    std::fs::write(&file, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let o = lorafleet(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompts-file",
        file.to_str().unwrap(),
        "--adapter-dir",
        &adapters_dir(),
        "--max-new-tokens",
        "24",
        "--ignore-eos",
        "--json",
        "--threads",
        "2",
    ]);
    // One prompt failed: exit 1, but every other prompt's output is there.
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("unknown adapter `no_such_adapter`"), "{stderr}");
    let outs: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(outs.len(), 4);
    assert!(outs[2]["error"].as_str().unwrap().contains("no_such_adapter"));
    for (i, key) in [(0, "base"), (1, "a_r8_all"), (3, "b_r16_qv_rslora")] {
        assert_greedy_matches(
            &ids(&outs[i]["token_ids"]),
            &ids(&p[format!("{key}_greedy24")]),
            &floats(&p[format!("{key}_greedy24_gap")]),
            &format!("line {i} ({key})"),
        );
    }
    std::fs::remove_file(&file).ok();
}

#[test]
fn bad_adapter_arguments_fail_cleanly() {
    let dir = model_dir();
    let d = dir.to_str().unwrap();
    let o = lorafleet(&["score", "--model", d, "--prompt", "hi", "--adapter", "nope", "--adapter-dir", &adapters_dir()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let err: Vec<&str> = err.lines().filter(|l| !l.starts_with("device: ")).collect();
    assert!(err.len() == 1 && err[0].starts_with("error: unknown adapter `nope`"), "{err:?}");
    let o = lorafleet(&["score", "--model", d, "--prompt", "hi", "--adapter", "b_r16_qv_rslora", "--adapter-dir", &adapters_dir(), "--max-lora-rank", "8"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("above the configured maximum 8"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bench_in_process_with_synthetic_adapters_reports_every_point() {
    let dir = model_dir();
    let o = lorafleet(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--synthetic-adapters",
        "3",
        "--adapters",
        "3",
        "--concurrency",
        "1,3",
        "--duration",
        "2",
        "--input-tokens",
        "30-40",
        "--output-tokens",
        "2-4",
        "--threads",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let json = out.lines().last().unwrap();
    let points: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    assert_eq!(points.len(), 2);
    for (p, users) in points.iter().zip([1, 3]) {
        assert_eq!(p["concurrency"], users);
        assert_eq!(p["adapters"], 3);
        assert_eq!(p["errors"], 0, "{p}");
        let n = p["requests"].as_u64().unwrap();
        assert!(n >= 1, "{p}");
        let toks = p["output_tokens"].as_u64().unwrap();
        assert!(toks >= 2 * n && toks <= 4 * n, "output lengths are forced: {p}");
        assert!(p["time_to_first_token"]["avg_ms"].as_f64().unwrap() > 0.0);
        // Every request's total time includes its time to first token.
        assert!(p["total_request"]["avg_ms"].as_f64().unwrap() >= p["time_to_first_token"]["avg_ms"].as_f64().unwrap());
    }
    assert!(out.contains("| users | adapters |"), "{out}");
    // Asking for more adapters than exist is an error, not a silent base-only run.
    let o = lorafleet(&["bench", "--model", dir.to_str().unwrap(), "--adapters", "5", "--duration", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("only 0 adapters"));
}

#[test]
fn eval_with_an_adapter_runs_it() {
    let dir = model_dir();
    let data = std::env::temp_dir().join(format!("lorafleet-eval-lora-{}.jsonl", std::process::id()));
    std::fs::write(&data, "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris\"}\n").unwrap();
    let run = |adapter: Option<&str>| {
        let out = std::env::temp_dir().join(format!("lorafleet-eval-lora-out-{}-{}.jsonl", std::process::id(), adapter.unwrap_or("base")));
        let mut args =
            vec!["eval", "--model", dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--max-new-tokens", "12", "--out", out.to_str().unwrap()];
        let ad = adapters_dir();
        if let Some(a) = adapter {
            args.extend(["--adapter", a, "--adapter-dir", &ad]);
        }
        let o = lorafleet(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().next().unwrap()).unwrap();
        line["output"].as_str().unwrap().to_string()
    };
    // b_r16_qv_rslora's greedy tokens on this prompt part from the base's at token 6 (goldens).
    let (base, lora) = (run(None), run(Some("b_r16_qv_rslora")));
    assert_ne!(base, lora, "the adapter did not change the output");
    std::fs::remove_file(&data).ok();
}
