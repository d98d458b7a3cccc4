//! `lorafleet-train` refuses bad input with one `error: ...` line and a failing exit status,
//! before any training: a LoRA dropout outside [0, 1), a bf16 base asked together with NF4, zero
//! batch sizes or rank, NaN, infinite or negative rates, a warm-up ratio outside [0, 1], a data
//! file that does not exist, a JSONL line that is not an example.

use std::path::PathBuf;
use std::process::{Command, Output};

fn model() -> PathBuf {
    let m = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct");
    assert!(m.join("config.json").is_file(), "test model missing at {}", m.display());
    m
}

/// `tag` names the case (each run gets its own fresh output dir).
fn train(extra: &[&str], data: &std::path::Path, _tag: &str) -> Output {
    let out_guard = tempfile::Builder::new().prefix("lorafleet-cli-errors-").tempdir().unwrap();
    let out = out_guard.path().to_path_buf();
    let o = Command::new(env!("CARGO_BIN_EXE_lorafleet-train"))
        .args(["train", "--no-progress", "--max-steps", "1", "--model"])
        .arg(model())
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .output()
        .expect("run lorafleet-train");
    let _ = std::fs::remove_dir_all(&out);
    o
}

fn refused(o: &Output, what: &str, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: must fail, stderr: {err}");
    assert!(err.contains(needle), "{what}: stderr should mention `{needle}`: {err}");
}

#[test]
fn bad_arguments_and_data_fail_with_one_clear_error() {
    let dir_guard = tempfile::Builder::new().prefix("lorafleet-cli-errors-").tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.jsonl");
    std::fs::write(&good, "{\"prompt\": \"Is it good?\", \"completion\": \"yes\"}\n").unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"Is it good?\", \"completion\": \"yes\"}\n{\"prompt\": 3}\n").unwrap();

    refused(&train(&["--lora-dropout", "1.5"], &good, "dropout"), "dropout 1.5", "--lora-dropout 1.5 is outside [0, 1)");
    refused(&train(&["--base-dtype", "bf16", "--quantize", "nf4"], &good, "both"), "bf16 and nf4", "cannot be used with");
    // Counts of zero divided by zero (a panic) and NaN or negative rates trained into NaN
    // weights: each is refused, naming the flag.
    for (args, needle) in [
        (&["--micro-batch", "0"][..], "--micro-batch must be at least 1"),
        (&["--grad-accum", "0"], "--grad-accum must be at least 1"),
        (&["--rank", "0"], "--rank must be at least 1"),
        (&["--rank", "100000"], "--rank 100000 is above the limit of 1024"),
        (&["--lr", "NaN"], "--lr NaN must be a finite number above 0"),
        (&["--lr", "inf"], "--lr inf must be a finite number above 0"),
        (&["--lr=-1e-4"], "--lr -0.0001 must be a finite number above 0"),
        (&["--alpha", "NaN"], "--alpha NaN must be"),
        (&["--warmup-ratio", "1.5"], "--warmup-ratio 1.5 is outside [0, 1]"),
        (&["--warmup-ratio=-0.1"], "--warmup-ratio -0.1 is outside [0, 1]"),
        (&["--max-grad-norm", "NaN"], "--max-grad-norm NaN"),
        (&["--weight-decay=-1"], "--weight-decay -1"),
        (&["--vocab-chunk", "0"], "--vocab-chunk must be at least 1"),
    ] {
        let o = train(args, &good, "flags");
        refused(&o, &args.join(" "), needle);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    refused(&train(&[], &dir.join("missing.jsonl"), "missing"), "missing data", "missing.jsonl");
    let o = train(&[], &bad, "bad");
    refused(&o, "bad line", "bad.jsonl:2: no field `completion`");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "one error line: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
