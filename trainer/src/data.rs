//! Training data for now: JSONL, one `{"prompt": ..., "completion": ...}` per line. Prompt and
//! completion are tokenized separately (no special tokens added) and concatenated, so the loss
//! covers exactly the completion's tokens; examples are truncated to `max_seq_len`.
//! (The data module of the main crate may replace this reader: it is one function on purpose.)

use std::path::Path;

use lorafleet::train::Example;
use lorafleet::{Error, Result, TextTokenizer};

/// Reads and tokenizes a JSONL file. Lines that are empty are skipped; any other line that is
/// not an object with string `prompt` and `completion` is an error naming the line.
pub fn read_jsonl(path: &Path, tok: &TextTokenizer, max_seq_len: usize) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| Error::InvalidArgument(format!("{}:{}: {m}", path.display(), i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let field = |k: &str| v.get(k).and_then(|s| s.as_str()).ok_or_else(|| bad(&format!("no string field `{k}`")));
        let (prompt, completion) = (field("prompt")?, field("completion")?);
        let ex = Example::new(&tok.encode(prompt)?, &tok.encode(completion)?).truncated(max_seq_len);
        if ex.n_labels() > 0 {
            out.push(ex);
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!("{}: no example with a completion token inside --max-seq-len", path.display())));
    }
    Ok(out)
}
