//! Training data: the examples `lorafleet::data` reads (JSONL `{"prompt", "completion"}` lines,
//! or CSV, the same reader `lorafleet eval` uses), tokenized for training. Prompt and completion
//! are tokenized separately (no special tokens added) and concatenated, so the loss covers
//! exactly the completion's tokens; examples are truncated to `max_seq_len`.

use std::path::Path;

use lorafleet::train::TokenizedExample;
use lorafleet::{Error, Result, TextTokenizer};

/// Reads and tokenizes a data file. Empty lines are skipped; a line that is not a JSON object
/// with `prompt` and `completion` is an error naming the file and line.
pub fn read_examples(path: &Path, tok: &TextTokenizer, max_seq_len: usize) -> Result<Vec<TokenizedExample>> {
    let mut out = Vec::new();
    for ex in lorafleet::data::load_examples(path, None, "label")? {
        let t = TokenizedExample::new(&tok.encode(&ex.prompt)?, &tok.encode(&ex.completion)?).truncated(max_seq_len);
        if t.n_labels() > 0 {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(format!("{}: no example with a completion token inside --max-seq-len", path.display())));
    }
    Ok(out)
}
