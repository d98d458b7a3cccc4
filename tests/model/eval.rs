//! `lorafleet eval` on the real model: the per-example output file, the printed score, batching
//! that does not change outputs, harness tasks, and clean errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use lorafleet::backend::cpu::CpuBackend;
use lorafleet::data::rotten_tomatoes::{jsonl_line, LabeledText};
use lorafleet::data::Example;
use lorafleet::engine::Generator;
use lorafleet::eval::{evaluate, EvalOptions, Metric};
use lorafleet::model::Llama;
use lorafleet::TextTokenizer;

fn lorafleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorafleet")).args(args).output().expect("run lorafleet")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorafleet-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Six reviews in the fetch-data JSONL format.
fn sentiment_file(dir: &Path) -> PathBuf {
    let reviews = [
        ("A masterpiece: moving, funny and beautifully acted.", "positive"),
        ("Tedious, ugly and far too long. I hated every minute.", "negative"),
        ("One of the best films of the year.", "positive"),
        ("A complete waste of time.", "negative"),
        ("Delightful from start to finish.", "positive"),
        ("The worst script I have seen in a decade.", "negative"),
    ];
    let p = dir.join("reviews.jsonl");
    let lines: Vec<String> = reviews.iter().map(|(t, l)| jsonl_line(&LabeledText { sha256: String::new(), text: t.to_string(), label: l })).collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn eval_cli_writes_outputs_and_score() {
    let dir = tmpdir("cli");
    let data = sentiment_file(&dir);
    let out = dir.join("out/results.jsonl");
    let o =
        lorafleet(&["eval", "--model", s(&model_dir()), "--data", s(&data), "--max-new-tokens", "3", "--batch-size", "4", "--threads", "2", "--out", s(&out)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    let mut total = 0.0;
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["id"], i);
        assert_eq!(v["line"], i + 1);
        let output = v["output"].as_str().unwrap();
        let label = v["label"].as_str().unwrap();
        let score = v["score"].as_f64().unwrap();
        assert!(label == "positive" || label == "negative");
        assert_eq!(score, Metric::PrefixAccuracy.score(output, label), "line {i}: {v}");
        total += score;
    }
    let want = format!("prefix_accuracy: {:.4} on 6 examples (0 failed)", total / 6.0);
    assert!(stdout.starts_with(&want), "{stdout:?} vs {want:?}");
}

#[test]
fn constrain_labels_holds_every_output_to_the_label_set() {
    let dir = tmpdir("labels");
    let data = sentiment_file(&dir);
    let out = dir.join("results.jsonl");
    let md = model_dir();
    let args = ["eval", "--model", s(&md), "--data", s(&data), "--max-new-tokens", "6", "--batch-size", "4", "--threads", "2", "--out", s(&out)];
    let o = lorafleet(&[&args[..], &["--constrain-labels"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    for v in &lines {
        let output = v["output"].as_str().unwrap();
        assert!(output == "positive" || output == "negative", "an output outside the labels: {v}");
        assert_eq!(v["score"].as_f64().unwrap(), Metric::PrefixAccuracy.score(output, v["label"].as_str().unwrap()));
    }
    // Without the flag the same model writes free text (not only labels) for some example.
    let o = lorafleet(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let free: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["output"].as_str().unwrap().to_string())
        .collect();
    assert!(free.iter().any(|t| t != "positive" && t != "negative"), "{free:?}");
}

#[test]
fn batch_size_does_not_change_outputs() {
    let dir = model_dir();
    let be = CpuBackend::new();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let model = Llama::load(&be, &dir, false).unwrap();
    let g = Generator::new(&model, &be, &tok);
    let tmp = tmpdir("batch");
    let mut examples: Vec<Example> = lorafleet::data::load_examples(&sentiment_file(&tmp), None, "label").unwrap();
    // One prompt the model cannot take (longer than the context) fails alone and scores 0.
    let long = "word ".repeat(9000);
    examples.insert(2, Example { id: 99, line: 0, prompt: long, completion: String::new(), target: "positive".into() });
    let run = |batch_size| {
        let opts = EvalOptions { metric: Metric::PrefixAccuracy, max_new_tokens: 4, batch_size, adapter: None, constrain_labels: false };
        let mut outs = Vec::new();
        let summary = evaluate(&g, &examples, &opts, &lorafleet::progress::Bar::hidden(), |r| {
            outs.push(r.clone());
            Ok(())
        })
        .unwrap();
        (summary, outs)
    };
    let (s1, o1) = run(1);
    let (s4, o4) = run(4);
    assert_eq!(s1.examples, 7);
    assert_eq!((s1.failed, s4.failed), (1, 1));
    assert!(o1[2].error.as_deref().unwrap_or("").contains("tokens"), "{:?}", o1[2]);
    assert_eq!(o1[2].score, 0.0);
    let texts = |o: &[lorafleet::eval::ExampleResult]| o.iter().map(|r| (r.id, r.output.clone())).collect::<Vec<_>>();
    assert_eq!(texts(&o1), texts(&o4));
    assert_eq!(s1.score, s4.score);
    assert!(o1.iter().filter(|r| r.error.is_none()).all(|r| !r.output.is_empty()), "{o1:?}");
}

#[test]
fn eval_task_folder_and_errors() {
    let root = tmpdir("task");
    let task = root.join("tasks/echo");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("metadata.yaml"),
        "metric_name: rouge\ndata_path: data.csv\ntarget_col: answer\nsplit_column: split\nsplit_column_value: test\n\
         prompt_template: |\n  <|im_start|>user\n  Repeat exactly: {phrase}<|im_end|>\n  <|im_start|>assistant\n",
    )
    .unwrap();
    std::fs::write(task.join("data.csv"), "phrase,answer,split\nthe quick brown fox,the quick brown fox,test\nhello world,hello world,train\n").unwrap();
    let out = root.join("r.jsonl");
    let o = lorafleet(&["eval", "--model", s(&model_dir()), "--task", s(&task), "--max-new-tokens", "8", "--threads", "2", "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("rouge_l: ") && stdout.contains("on 1 examples"), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(v["label"], "the quick brown fox");
    let score = v["score"].as_f64().unwrap();
    assert_eq!(score, Metric::RougeL.score(v["output"].as_str().unwrap(), "the quick brown fox"));

    // An adapter that does not exist: a clean error, no work done (tests/serve/cli_lora.rs runs a real one).
    let o = lorafleet(&["eval", "--model", s(&model_dir()), "--task", s(&task), "--adapter", "sst2", "--threads", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let first_error = err.lines().find(|l| !l.starts_with("device: ")).unwrap_or("");
    assert!(first_error.starts_with("error: unknown adapter `sst2`") && !err.contains("panicked"), "{err}");

    // Neither --task nor --data; a bad metric; a data file that is not there.
    let o = lorafleet(&["eval", "--model", s(&model_dir())]);
    assert!(!o.status.success());
    let o = lorafleet(&["eval", "--model", s(&model_dir()), "--task", s(&task), "--metric", "bleu"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown metric `bleu`"));
    let o = lorafleet(&["eval", "--model", s(&model_dir()), "--data", "/nonexistent/x.jsonl"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: /nonexistent/x.jsonl"), "{err}");
}
