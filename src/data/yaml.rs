//! The LoRA Land harness's `tasks/NAME/metadata.yaml`, read with `serde_norway` (a maintained
//! `serde_yaml`): a top-level mapping whose values lorafleet takes as text. Scalars become the
//! text Python's `str()` gives the value PyYAML's `safe_load` returns (`1` -> "1", `true` ->
//! "True", `~` -> "None"), so `split_column_value` compares as the harness compares it; nested
//! values (e.g. `num_examples:`) are kept as their YAML text, since lorafleet reads none of them.
//! A repeated top-level key keeps its last value, as PyYAML does (the crate's own `Mapping`
//! refuses repeats; a `BTreeMap` target overwrites).

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::Value;

use super::DataError;

/// The text of one value, as `str(value)` in Python after PyYAML.
fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other).map_or_else(|_| String::new(), |s| s.trim_end().to_string()),
    }
}

/// Parses the top-level mapping of `text` into key -> value text. An empty document is an
/// empty mapping; anything else that is not a mapping is an error naming the line.
pub fn parse_yaml_mapping(text: &str, path: &Path) -> Result<BTreeMap<String, String>, DataError> {
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---") {
        return Ok(BTreeMap::new());
    }
    let map: BTreeMap<String, Value> =
        serde_norway::from_str(text).map_err(|e| DataError::new(path, e.location().map(|l| l.line()), format!("not a YAML mapping of `key: value`: {e}")))?;
    Ok(map.iter().map(|(k, v)| (k.clone(), value_text(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> BTreeMap<String, String> {
        parse_yaml_mapping(s, Path::new("m.yaml")).unwrap()
    }

    #[test]
    fn lora_land_metadata_shape() {
        // The shape of the harness's tasks/glue_stsb/metadata.yaml (shortened).
        let m = parse(
            "\n# a comment\ndataset_name: glue_stsb\nsplit_column_value: 1\ndata_path: glue_stsb_full.csv # inline\n\
             target_col: label\nsplit_column: split\nsplit_column_value: 2\nprompt_template: >-\n  Rate how similar the two\n  \
             sentences are:\n\n\n  ### Sentence 1: {sentence1}\n\n\n  ### Similarity Score: \nnum_examples:\n  train: 5749\n  \
             validation: 1500\nname: \"q\\\"x\\n\"\nother: 'it''s'\nflag: true\nnothing: ~\nratio: 0.5\n",
        );
        assert_eq!(m["dataset_name"], "glue_stsb");
        assert_eq!(m["data_path"], "glue_stsb_full.csv");
        assert_eq!(m["split_column_value"], "2", "a repeated key keeps its last value");
        assert_eq!(m["prompt_template"], "Rate how similar the two sentences are:\n\n### Sentence 1: {sentence1}\n\n### Similarity Score: ");
        assert_eq!(m["num_examples"], "train: 5749\nvalidation: 1500");
        assert_eq!(m["name"], "q\"x\n");
        assert_eq!(m["other"], "it's");
        assert_eq!((m["flag"].as_str(), m["nothing"].as_str(), m["ratio"].as_str()), ("True", "None", "0.5"));
    }

    #[test]
    fn block_scalar_chomping_and_literal() {
        let m = parse("a: |\n  x\n   y\n\n  z\n\nb: >\n  p\n  q\n\n\nc: |+\n  k\n\n\nd: >\n  one\n    two\n  three\n");
        assert_eq!(m["a"], "x\n y\n\nz\n");
        assert_eq!(m["b"], "p q\n");
        assert_eq!(m["c"], "k\n\n\n");
        // A more-indented line keeps its line breaks in a folded block.
        assert_eq!(m["d"], "one\n  two\nthree\n");
        assert!(parse("# only a comment\n").is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_yaml_mapping("a: 1\nb: [1, 2\nc: 3\n", Path::new("m.yaml")).unwrap_err().to_string();
        assert!(e.contains("m.yaml:"), "{e}");
        let e = parse_yaml_mapping("a: \"open\n", Path::new("m.yaml")).unwrap_err().to_string();
        assert!(e.contains("m.yaml:"), "{e}");
        let e = parse_yaml_mapping("- a\n- b\n", Path::new("m.yaml")).unwrap_err().to_string();
        assert!(e.contains("not a YAML mapping"), "{e}");
    }
}
