//! The LoRA Land evaluation-harness task layout: a folder `tasks/NAME/` with `metadata.yaml`
//! naming the data file (`data_path`, JSONL or CSV), the prompt template (`{column}`
//! placeholders), the column holding the answer (`target_col`), the metric (`metric_name`), and
//! which rows to evaluate (`split_column` == `split_column_value`, compared as text, as the
//! harness does with `df[col].astype(str) == str(value)`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{examples_from_records, read_records, yaml, DataError, Example};

/// A task folder's `metadata.yaml` (the LoRA Land harness's format).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMetadata {
    /// The task folder's name.
    pub name: String,
    /// The resolved data file.
    pub data_path: PathBuf,
    /// The prompt, with `{column}` fields.
    pub prompt_template: String,
    /// The column holding the label.
    pub target_col: String,
    /// The metric (`accuracy`, `rouge`, ...).
    pub metric_name: String,
    /// None: every row (absent, empty or "None" in the file).
    pub split: Option<(String, String)>,
}

/// A task: its metadata and examples.
#[derive(Debug, Clone)]
pub struct Task {
    /// The metadata.
    pub meta: TaskMetadata,
    /// The examples.
    pub examples: Vec<Example>,
}

fn required<'a>(m: &'a BTreeMap<String, String>, key: &str, path: &Path) -> Result<&'a str, DataError> {
    match m.get(key).map(String::as_str) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(DataError::new(path, None, format!("no `{key}`"))),
    }
}

/// Reads `DIR/metadata.yaml`. `data_path` is taken relative to the task folder; a path that is
/// not there but is under the harness root (`DIR/../..`, the harness's own convention, e.g.
/// `datasets/x.csv`) is taken from there.
pub fn read_task_metadata(dir: &Path) -> Result<TaskMetadata, crate::Error> {
    let path = dir.join("metadata.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
    let m = yaml::parse_yaml_mapping(&text, &path)?;
    let data_rel = required(&m, "data_path", &path)?.trim();
    let in_task = dir.join(data_rel);
    let data_path = if in_task.is_file() {
        in_task
    } else {
        match dir.parent().and_then(Path::parent).map(|root| root.join(data_rel)) {
            Some(p) if p.is_file() => p,
            _ => {
                return Err(
                    DataError::new(&path, None, format!("data_path {data_rel:?}: no such file {} (relative to the task folder)", in_task.display())).into()
                )
            }
        }
    };
    let split = match (m.get("split_column").map(|s| s.trim()), m.get("split_column_value")) {
        (None | Some("" | "None" | "null" | "~"), _) => None,
        (Some(col), Some(v)) => Some((col.to_string(), v.trim().to_string())),
        (Some(col), None) => return Err(DataError::new(&path, None, format!("split_column `{col}` needs a split_column_value")).into()),
    };
    let name = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| dir.display().to_string());
    Ok(TaskMetadata {
        name,
        data_path,
        prompt_template: required(&m, "prompt_template", &path)?.to_string(),
        target_col: required(&m, "target_col", &path)?.trim().to_string(),
        metric_name: required(&m, "metric_name", &path)?.trim().to_string(),
        split,
    })
}

/// Reads the task in `dir`: its metadata and the examples of its evaluation split.
pub fn load_task(dir: &Path) -> Result<Task, crate::Error> {
    let meta = read_task_metadata(dir)?;
    let mut records = read_records(&meta.data_path)?;
    if let Some((col, value)) = &meta.split {
        if let Some(r) = records.iter().find(|r| !r.fields.contains_key(col)) {
            return Err(DataError::new(&meta.data_path, Some(r.line), format!("no split column `{col}`")).into());
        }
        records.retain(|r| r.fields.get(col).is_some_and(|v| v.trim() == value));
        if records.is_empty() {
            return Err(DataError::new(&meta.data_path, None, format!("no rows with {col} == {value:?}")).into());
        }
    }
    let examples = examples_from_records(&records, Some(&meta.prompt_template), &meta.target_col, &meta.data_path)?;
    Ok(Task { meta, examples })
}
