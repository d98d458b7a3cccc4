//! bench/gpu_bench.sh, the one-call GPU benchmark, runs to its table with a tiny shape (on the
//! emulator here; on a GPU when there is one), so the first real GPU call cannot fail on a typo.
//! The figures it prints here are the emulator's and mean nothing; this test checks the plumbing:
//! both decode runs and both load tests ran, without errors, and the JSON holds them.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use lorafleet::backend::cuda::{test_device, tests_on_emulator};

#[test]
fn gpu_bench_script_runs_to_its_table_on_a_tiny_shape() {
    let Some(_dev) = test_device("gpu_bench_script") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // In the GPU bundle the binary and a tokenizer sit in .gpu/; here cargo built them.
    let bundled = PathBuf::from(".gpu/bin/lorafleet");
    let bin = if Path::new(env!("CARGO_BIN_EXE_lorafleet")).exists() { PathBuf::from(env!("CARGO_BIN_EXE_lorafleet")) } else { bundled };
    let tok = if Path::new(".gpu/tokenizer/tokenizer.json").exists() { PathBuf::from(".gpu/tokenizer") } else { common::model_dir() };
    let script = if root.join("bench/gpu_bench.sh").exists() { root.join("bench/gpu_bench.sh") } else { PathBuf::from("bench/gpu_bench.sh") };
    let shape = script.parent().and_then(Path::parent).map(|r| r.join("tests/golden/tiny_shape.json")).unwrap_or_default();
    let out_guard = tempfile::Builder::new().prefix("lorafleet-gpu-bench-").tempdir().unwrap();
    let out = out_guard.path().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .env("LORAFLEET", &bin)
        .env("TOKENIZER", &tok)
        .env("SHAPE", &shape)
        .env("USERS", "1,2")
        .env("DURATION", "1")
        .env("INPUT", "4-8")
        .env("OUTPUT", "2-4")
        .env("NEW_TOKENS", "4")
        .env("REPS", "1")
        .env("COPY_BYTES", "4M")
        .env("KV_BYTES", "64M")
        .env("ADAPTER_MEMORY", "64M")
        .env("ADAPTERS", "3")
        .env("OUT", &out);
    if tests_on_emulator() {
        cmd.env("LORAFLEET_CUDA_EMU", "1");
    }
    let o = cmd.output().expect("run bash bench/gpu_bench.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "gpu_bench.sh failed ({}):\n{stdout}\n{stderr}", o.status);
    // The table comes last: the decode rows, then one row per user count.
    let tail: Vec<&str> = stdout.lines().rev().take(4).collect();
    assert!(tail[0].starts_with("| 2 |") && tail[1].starts_with("| 1 |"), "the load-test rows end the output:\n{stdout}");
    assert!(stdout.contains("| nf4 |") && stdout.contains("| bf16 |"), "both decode rows:\n{stdout}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("gpu_bench.json")).expect("gpu_bench.json")).expect("JSON");
    let decode = j["decode"].as_array().expect("decode runs");
    assert_eq!(decode.len(), 2);
    for d in decode {
        assert!(d["weight_bytes_per_token"].as_u64().unwrap_or(0) > 0 && d["times"]["median_ms"].as_f64().unwrap_or(0.0) > 0.0, "{d}");
    }
    for (key, adapters) in [("base", 0), ("3_adapters_rank_8", 3)] {
        let points = j["load_test"][key].as_array().unwrap_or_else(|| panic!("load_test.{key} in {j}"));
        assert_eq!(points.len(), 2, "{key}");
        for p in points {
            assert_eq!(p["errors"], 0, "{key}: {p}");
            assert_eq!(p["adapters"], adapters, "{key}: {p}");
            assert!(p["requests"].as_u64().unwrap_or(0) > 0, "{key}: {p}");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
