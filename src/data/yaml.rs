//! The YAML subset of the LoRA Land harness's `tasks/NAME/metadata.yaml`: a top-level mapping
//! of `key: value` lines whose values are plain, single- or double-quoted scalars, or block
//! scalars (`|`, `>`, with `-`/`+` chomping: the prompt templates are `>-` folded blocks).
//! Nested blocks (e.g. `num_examples:` with indented children) and flow collections are kept as
//! their raw text: lorafleet reads none of them. Comments and `---` are skipped; a repeated key
//! keeps its last value, as PyYAML's `safe_load` does.

use std::collections::BTreeMap;
use std::path::Path;

use super::DataError;

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// Removes a ` #` comment from a plain scalar.
fn strip_comment(s: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in s.char_indices() {
        if c == '#' && prev_space {
            return &s[..i];
        }
        prev_space = c == ' ' || c == '\t';
    }
    s
}

#[derive(Clone, Copy, PartialEq)]
enum Chomp {
    Strip,
    Clip,
    Keep,
}

/// Joins the lines of a block scalar (indentation already removed) by YAML's rules.
fn block_scalar(lines: &[&str], folded: bool, chomp: Chomp) -> String {
    let last = lines.iter().rposition(|l| !is_blank(l));
    let (content, trailing_blank) = match last {
        Some(k) => (&lines[..=k], lines.len() - k - 1),
        None => (&lines[..0], lines.len()),
    };
    let mut out = String::new();
    // Whether the previous content line was "more indented" (its break is never folded).
    let mut prev_more: Option<bool> = None;
    let mut blanks = 0usize;
    for line in content {
        if is_blank(line) {
            blanks += 1;
            continue;
        }
        let more = line.starts_with([' ', '\t']);
        match prev_more {
            None => out.push_str(&"\n".repeat(blanks)),
            Some(prev) if folded && !prev && !more => {
                if blanks == 0 {
                    out.push(' ');
                } else {
                    out.push_str(&"\n".repeat(blanks));
                }
            }
            Some(_) => out.push_str(&"\n".repeat(blanks + 1)),
        }
        out.push_str(line);
        prev_more = Some(more);
        blanks = 0;
    }
    match chomp {
        Chomp::Strip => {}
        Chomp::Clip if !out.is_empty() => out.push('\n'),
        Chomp::Clip => {}
        Chomp::Keep => out.push_str(&"\n".repeat(trailing_blank + usize::from(!content.is_empty()))),
    }
    out
}

fn unquote_double(s: &str, path: &Path, line: usize) -> Result<String, DataError> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('/') => out.push('/'),
            Some(' ') => out.push(' '),
            Some(other) => {
                return Err(DataError::new(path, Some(line), format!("unsupported escape \\{other} in a quoted string")))
            }
            None => return Err(DataError::new(path, Some(line), "quoted string ends in a backslash".into())),
        }
    }
    Ok(out)
}

/// Parses the top-level mapping of `text` into key -> scalar text.
pub fn parse_yaml_mapping(text: &str, path: &Path) -> Result<BTreeMap<String, String>, DataError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut map = BTreeMap::new();
    let mut i = 0usize;
    while i < lines.len() {
        let line = lines[i];
        let lineno = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" || trimmed == "..." {
            i += 1;
            continue;
        }
        if line.starts_with('\t') {
            return Err(DataError::new(path, Some(lineno), "tabs cannot indent YAML".into()));
        }
        if indent_of(line) != 0 {
            return Err(DataError::new(path, Some(lineno), "unexpected indentation (expected `key: value`)".into()));
        }
        let (key, rest) = line.split_once(':').ok_or_else(|| {
            DataError::new(path, Some(lineno), format!("expected `key: value`, found {trimmed:?}"))
        })?;
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return Err(DataError::new(path, Some(lineno), format!("expected `key: value`, found {trimmed:?}")));
        }
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        let rest = rest.trim();
        i += 1;
        // The indented lines that belong to this key's value.
        let start = i;
        while i < lines.len() && (is_blank(lines[i]) || indent_of(lines[i]) > 0) {
            i += 1;
        }
        let body: &[&str] = &lines[start..i];
        let value = if let Some(header) = rest.strip_prefix(['|', '>']) {
            let folded = rest.starts_with('>');
            let header = strip_comment(header).trim();
            let chomp = if header.contains('-') {
                Chomp::Strip
            } else if header.contains('+') {
                Chomp::Keep
            } else {
                Chomp::Clip
            };
            if header.chars().any(|c| c.is_ascii_digit()) {
                return Err(DataError::new(path, Some(lineno), "block scalar indentation indicators are not supported".into()));
            }
            let indent = body.iter().find(|l| !is_blank(l)).map_or(0, |l| indent_of(l));
            let mut stripped: Vec<&str> = Vec::with_capacity(body.len());
            for (k, l) in body.iter().enumerate() {
                if is_blank(l) {
                    stripped.push("");
                } else if indent_of(l) < indent {
                    return Err(DataError::new(path, Some(start + k + 1), "block scalar line is less indented than the block".into()));
                } else {
                    stripped.push(&l[indent..]);
                }
            }
            block_scalar(&stripped, folded, chomp)
        } else if let Some(inner) = rest.strip_prefix('"') {
            // One-line double-quoted string (multi-line quoted scalars are not in the subset).
            let end = inner.rfind('"').ok_or_else(|| DataError::new(path, Some(lineno), "unterminated \"string\"".into()))?;
            unquote_double(&inner[..end], path, lineno)?
        } else if let Some(inner) = rest.strip_prefix('\'') {
            let end = inner.rfind('\'').ok_or_else(|| DataError::new(path, Some(lineno), "unterminated 'string'".into()))?;
            inner[..end].replace("''", "'")
        } else {
            // Plain scalar, possibly continued on more-indented lines (folded with spaces); with
            // an empty first line and indented children it is a nested block, kept raw.
            let first = strip_comment(rest).trim_end();
            if first.is_empty() {
                let raw: Vec<&str> = body.iter().map(|l| l.trim_end()).collect();
                raw.join("\n").trim_matches('\n').to_string()
            } else {
                let mut v = first.to_string();
                let mut blanks = 0;
                for l in body {
                    if is_blank(l) {
                        blanks += 1;
                        continue;
                    }
                    v.push_str(&if blanks == 0 { " ".to_string() } else { "\n".repeat(blanks) });
                    v.push_str(strip_comment(l.trim()).trim_end());
                    blanks = 0;
                }
                v
            }
        };
        map.insert(key, value);
    }
    Ok(map)
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
             validation: 1500\nname: \"q\\\"x\\n\"\nother: 'it''s'\n",
        );
        assert_eq!(m["dataset_name"], "glue_stsb");
        assert_eq!(m["data_path"], "glue_stsb_full.csv");
        assert_eq!(m["split_column_value"], "2", "a repeated key keeps its last value");
        assert_eq!(
            m["prompt_template"],
            "Rate how similar the two sentences are:\n\n### Sentence 1: {sentence1}\n\n### Similarity Score: "
        );
        assert_eq!(m["num_examples"], "  train: 5749\n  validation: 1500");
        assert_eq!(m["name"], "q\"x\n");
        assert_eq!(m["other"], "it's");
    }

    #[test]
    fn block_scalar_chomping_and_literal() {
        let m = parse("a: |\n  x\n   y\n\n  z\n\nb: >\n  p\n  q\n\n\nc: |+\n  k\n\n\nd: >\n  one\n    two\n  three\n");
        assert_eq!(m["a"], "x\n y\n\nz\n");
        assert_eq!(m["b"], "p q\n");
        assert_eq!(m["c"], "k\n\n\n");
        // A more-indented line keeps its line breaks in a folded block.
        assert_eq!(m["d"], "one\n  two\nthree\n");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_yaml_mapping("a: 1\njust text\n", Path::new("m.yaml")).unwrap_err().to_string();
        assert!(e.contains("m.yaml:2"), "{e}");
        let e = parse_yaml_mapping("a: \"open\n", Path::new("m.yaml")).unwrap_err().to_string();
        assert!(e.contains("m.yaml:1") && e.contains("unterminated"), "{e}");
    }
}
