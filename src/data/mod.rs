//! Training and evaluation data: prompt/completion examples from JSONL or CSV files, with an
//! optional prompt template, and the LoRA Land evaluation-harness task layout
//! (`tasks/NAME/metadata.yaml`); the rotten-tomatoes demo data set (`fetch-data`).
//!
//! Accepted files (one example per JSONL line / CSV row):
//! - `{"prompt": ..., "completion": ...}` (an optional `"label"` is what evaluation compares with;
//!   without it, the completion is);
//! - any record (e.g. `{"text": ..., "label": ...}`) plus a prompt template whose `{field}`
//!   placeholders name the record's fields; the target column (default `label`) becomes the
//!   completion and the evaluation target.

pub mod csv;
pub mod rotten_tomatoes;
pub mod sha256;
pub mod task;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::Path;

pub use task::{load_task, Task, TaskMetadata};

pub use crate::error::DataError;

/// One example: the prompt the model sees, the completion it is trained to produce, and the
/// target evaluation scores its output against.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// 0-based position in the loaded list (after split filtering).
    pub id: usize,
    /// 1-based line of the source file where the record starts.
    pub line: usize,
    /// The prompt text.
    pub prompt: String,
    /// The completion trained on.
    pub completion: String,
    /// The label an eval compares with.
    pub target: String,
}

/// One record of a data file: field name -> value as text (JSON numbers as written, booleans as
/// python's `str` gives them, null as empty), and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Line in the file (1-based).
    pub line: usize,
    /// Every column, by name.
    pub fields: BTreeMap<String, String>,
}

fn json_value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        serde_json::Value::Bool(true) => "True".into(),
        serde_json::Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// Reads a JSONL file (blank lines skipped) into records. Every line must be a JSON object.
pub fn read_jsonl_records(path: &Path) -> Result<Vec<Record>, crate::Error> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| DataError::new(path, Some(n + 1), format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| DataError::new(path, Some(n + 1), "expected a JSON object per line".into()))?;
        let fields = obj.iter().map(|(k, v)| (k.clone(), json_value_text(v))).collect();
        out.push(Record { line: n + 1, fields });
    }
    Ok(out)
}

/// Reads a CSV file (header row, RFC 4180 quoting) into records.
pub fn read_csv_records(path: &Path) -> Result<Vec<Record>, crate::Error> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    let table = csv::parse_csv(&text, path)?;
    Ok(table.rows.into_iter().map(|r| Record { line: r.line, fields: table.header.iter().cloned().zip(r.fields).collect() }).collect())
}

/// Records of a `.jsonl`/`.json` (one object per line) or `.csv` file, by extension.
pub fn read_records(path: &Path) -> Result<Vec<Record>, crate::Error> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("jsonl" | "json") => read_jsonl_records(path),
        Some("csv") => read_csv_records(path),
        _ => Err(DataError::new(path, None, "unknown data file type: expected .jsonl, .json or .csv".into()).into()),
    }
}

/// Fills a python-`str.format`-style template: `{name}` is the record's field `name`, `{{` and
/// `}}` are literal braces. A placeholder with no field, a format spec (`{x:>4}`), or a lone
/// brace is an error naming the record's line.
pub fn fill_template(template: &str, rec: &Record, path: &Path) -> Result<String, DataError> {
    let err = |msg: String| DataError::new(path, Some(rec.line), msg);
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(err("prompt template has a lone `}` (write `}}` for a literal brace)".into()));
        }
        let end = tail.find('}').ok_or_else(|| err("prompt template has an unclosed `{`".into()))?;
        let name = &tail[1..end];
        if name.contains([':', '!', '{']) || name.is_empty() {
            return Err(err(format!("prompt template placeholder {{{name}}} is not a plain field name")));
        }
        let value = rec.fields.get(name).ok_or_else(|| {
            err(format!("prompt template names field `{name}`, which this record lacks (fields: {:?})", rec.fields.keys().collect::<Vec<_>>()))
        })?;
        out.push_str(value);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Turns records into examples: with a template, prompt = the filled template and completion =
/// target = the `target_col` field; without one, the `prompt` and `completion` fields, with
/// target = the `label` field when there is one, else the completion.
pub fn examples_from_records(records: &[Record], template: Option<&str>, target_col: &str, path: &Path) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::with_capacity(records.len());
    for (id, r) in records.iter().enumerate() {
        let field = |name: &str, why: &str| {
            r.fields
                .get(name)
                .cloned()
                .ok_or_else(|| DataError::new(path, Some(r.line), format!("no field `{name}` ({why}); fields: {:?}", r.fields.keys().collect::<Vec<_>>())))
        };
        let ex = match template {
            Some(t) => {
                let target = field(target_col, "the target column")?;
                Example { id, line: r.line, prompt: fill_template(t, r, path)?, completion: target.clone(), target }
            }
            None => {
                let prompt = field("prompt", "give {\"prompt\", \"completion\"} or a prompt template")?;
                let completion = field("completion", "give {\"prompt\", \"completion\"} or a prompt template")?;
                let target = r.fields.get(target_col).cloned().unwrap_or_else(|| completion.clone());
                Example { id, line: r.line, prompt, completion, target }
            }
        };
        out.push(ex);
    }
    Ok(out)
}

/// Loads examples from a JSONL or CSV file (see the module doc).
pub fn load_examples(path: &Path, template: Option<&str>, target_col: &str) -> Result<Vec<Example>, crate::Error> {
    let records = read_records(path)?;
    if records.is_empty() {
        return Err(DataError::new(path, None, "no records".into()).into());
    }
    Ok(examples_from_records(&records, template, target_col, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: usize, kv: &[(&str, &str)]) -> Record {
        Record { line, fields: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn template_fills_fields_and_escapes_braces() {
        let r = rec(7, &[("text", "great film"), ("label", "positive")]);
        let p = Path::new("d.jsonl");
        assert_eq!(fill_template("Review: {text} {{json}}", &r, p).unwrap(), "Review: great film {json}");
        let e = fill_template("{missing}", &r, p).unwrap_err().to_string();
        assert!(e.starts_with("d.jsonl:7:") && e.contains("`missing`"), "{e}");
        assert!(fill_template("{text:>5}", &r, p).is_err());
        assert!(fill_template("a } b", &r, p).is_err());
        assert!(fill_template("a { b", &r, p).is_err());
    }

    #[test]
    fn examples_from_both_shapes() {
        let p = Path::new("d.jsonl");
        let with_label = [rec(1, &[("prompt", "P"), ("completion", "positive<|im_end|>"), ("label", "positive")])];
        let e = examples_from_records(&with_label, None, "label", p).unwrap();
        assert_eq!((e[0].prompt.as_str(), e[0].completion.as_str(), e[0].target.as_str()), ("P", "positive<|im_end|>", "positive"));

        let bare = [rec(1, &[("prompt", "P"), ("completion", "C")])];
        assert_eq!(examples_from_records(&bare, None, "label", p).unwrap()[0].target, "C");

        let tl = [rec(3, &[("text", "meh"), ("label", "negative")])];
        let e = examples_from_records(&tl, Some("R: {text}"), "label", p).unwrap();
        assert_eq!((e[0].prompt.as_str(), e[0].completion.as_str(), e[0].line), ("R: meh", "negative", 3));
        let err = examples_from_records(&tl, None, "label", p).unwrap_err().to_string();
        assert!(err.starts_with("d.jsonl:3:") && err.contains("`prompt`"), "{err}");
    }
}
