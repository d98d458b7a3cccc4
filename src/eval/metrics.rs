//! The LoRA Land report's metrics, each scoring one generated output against one target in
//! [0, 1]:
//!
//! - `accuracy`: exact match after normalising both sides (trim whitespace, strip leading and
//!   trailing `.`, lowercase; as the harness's `get_accuracy`), or equal as numbers ("1.0" = "1").
//! - `prefix_accuracy`: the normalised output begins with the normalised target, and the next
//!   character, if any, is not a letter or digit ("Positive." and "positive, clearly" match
//!   "positive"; "positively" does not). The rotten-tomatoes metric.
//! - `rouge_l`: ROUGE-L F-measure as python's `rouge_score` computes it with its default
//!   tokenizer and no stemmer: lowercase, every run of characters other than `[a-z0-9]` is a
//!   separator, LCS over the tokens, F = 2PR / (P + R); 0 when either side has no token.
//! - `stsb`: 1 − |output − target| / 5. The output's number is the whole trimmed output when
//!   it parses as a float, else the first `\d+(\.\d+)?` in it; no number, or one outside
//!   [0, 5], scores 0 (the worst).

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// How an output is scored against its label (the LoRA Land harness's metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// 1 if the output equals the label (trimmed), else 0.
    Accuracy,
    /// 1 if the output starts with the label, else 0.
    PrefixAccuracy,
    /// ROUGE-L F-measure over words.
    RougeL,
    /// STS-B: the number in the output against the label's, 1 - |difference| / 5.
    Stsb,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 4] = [Metric::Accuracy, Metric::PrefixAccuracy, Metric::RougeL, Metric::Stsb];

    /// Its name in `metadata.yaml` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::PrefixAccuracy => "prefix_accuracy",
            Metric::RougeL => "rouge_l",
            Metric::Stsb => "stsb",
        }
    }

    /// The score of `output` against `target`, in [0, 1].
    pub fn score(self, output: &str, target: &str) -> f64 {
        match self {
            Metric::Accuracy => exact_accuracy(output, target),
            Metric::PrefixAccuracy => prefix_accuracy(output, target),
            Metric::RougeL => rouge_l_f(output, target),
            Metric::Stsb => stsb_score(output, target),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;

    /// Names as lorafleet writes them, plus the harness's `metric_name`s for the same metrics
    /// (`rouge`, `rougeL`).
    fn from_str(s: &str) -> Result<Metric> {
        match s.trim() {
            "accuracy" | "exact_accuracy" => Ok(Metric::Accuracy),
            "prefix_accuracy" | "accuracy_prefix" => Ok(Metric::PrefixAccuracy),
            "rouge_l" | "rouge" | "rougeL" | "rouge-l" => Ok(Metric::RougeL),
            "stsb" => Ok(Metric::Stsb),
            other => Err(Error::InvalidArgument(format!("unknown metric `{other}`; known: {}", Metric::ALL.map(Metric::name).join(", ")))),
        }
    }
}

/// Trim, strip `.` at both ends, trim again, lowercase.
fn normalize_label(s: &str) -> String {
    s.trim().trim_matches('.').trim().to_lowercase()
}

/// `Metric::Accuracy` of one output.
pub fn exact_accuracy(output: &str, target: &str) -> f64 {
    let (o, t) = (normalize_label(output), normalize_label(target));
    if o == t {
        return 1.0;
    }
    match (o.parse::<f64>(), t.parse::<f64>()) {
        (Ok(a), Ok(b)) if a.is_finite() && a == b => 1.0,
        _ => 0.0,
    }
}

/// `Metric::PrefixAccuracy` of one output.
pub fn prefix_accuracy(output: &str, target: &str) -> f64 {
    let o = output.trim_start().to_lowercase();
    let t = normalize_label(target);
    match o.strip_prefix(t.as_str()) {
        Some(rest) if !rest.starts_with(char::is_alphanumeric) => 1.0,
        _ => 0.0,
    }
}

/// `rouge_score`'s default tokens: lowercase, split on everything but `[a-z0-9]`.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit())).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// Length of the longest common subsequence (two rolling rows: O(len(b)) memory).
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `Metric::RougeL` of one output.
pub fn rouge_l_f(output: &str, target: &str) -> f64 {
    let (pred, reference) = (rouge_tokens(output), rouge_tokens(target));
    if pred.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&reference, &pred) as f64;
    let precision = lcs / pred.len() as f64;
    let recall = lcs / reference.len() as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// The first `\d+(\.\d+)?` in `s`.
fn first_number(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let start = b.iter().position(u8::is_ascii_digit)?;
    let mut end = start;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    if end + 1 < b.len() && b[end] == b'.' && b[end + 1].is_ascii_digit() {
        end += 1;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
    }
    s[start..end].parse().ok()
}

/// The similarity score in an stsb output, if there is one in [0, 5].
pub fn stsb_number(s: &str) -> Option<f64> {
    let v = match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => v,
        _ => first_number(s)?,
    };
    (0.0..=5.0).contains(&v).then_some(v)
}

/// `Metric::Stsb` of one output.
pub fn stsb_score(output: &str, target: &str) -> f64 {
    match (stsb_number(output), stsb_number(target)) {
        (Some(o), Some(t)) => 1.0 - (o - t).abs() / 5.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn accuracy_exact() {
        assert_eq!(exact_accuracy(" Positive. ", "positive"), 1.0);
        assert_eq!(exact_accuracy("1.0", "1"), 1.0);
        assert_eq!(exact_accuracy("positive!", "positive"), 0.0);
        assert_eq!(exact_accuracy("positive review", "positive"), 0.0);
        assert_eq!(exact_accuracy("nan", "NaN"), 1.0, "equal as text");
        assert_eq!(exact_accuracy("inf", "1"), 0.0);
    }

    #[test]
    fn accuracy_prefix_needs_a_word_boundary() {
        assert_eq!(prefix_accuracy("positive", "positive"), 1.0);
        assert_eq!(prefix_accuracy("  Positive.", "positive"), 1.0);
        assert_eq!(prefix_accuracy("negative sentiment", "Negative"), 1.0);
        assert_eq!(prefix_accuracy("positively", "positive"), 0.0);
        assert_eq!(prefix_accuracy("The review is positive", "positive"), 0.0);
        assert_eq!(prefix_accuracy("negative", "positive"), 0.0);
        assert_eq!(prefix_accuracy("", "positive"), 0.0);
    }

    #[test]
    fn rouge_l_hand_computed() {
        // LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = F = 5/6.
        assert!(close(rouge_l_f("the cat sat on the mat", "the cat is on the mat"), 5.0 / 6.0));
        // [the, cat] vs [cat]: LCS 1, P = 1/2, R = 1, F = 2/3.
        assert!(close(rouge_l_f("The Cat!", "cat"), 2.0 / 3.0));
        // Order matters: [a, b, c] vs [c, b, a] has LCS 1: F = 1/3.
        assert!(close(rouge_l_f("a b c", "c b a"), 1.0 / 3.0));
        assert_eq!(rouge_l_f("...", "cat"), 0.0);
        assert_eq!(rouge_l_f("cat", ""), 0.0);
        assert_eq!(rouge_tokens("Don't STOP-me_now, 2x"), vec!["don", "t", "stop", "me", "now", "2x"]);
        // Non-ASCII letters separate tokens, as rouge_score's [^a-z0-9]+ makes them.
        assert_eq!(rouge_tokens("café olé"), vec!["caf", "ol"]);
    }

    #[test]
    fn stsb_hand_computed() {
        assert!(close(stsb_score("3.5", "4.0"), 0.9));
        assert!(close(stsb_score("Score: 2 out of 5", "2.0"), 1.0));
        assert!(close(stsb_score(" 0 ", "5"), 0.0));
        assert!(close(stsb_score("4.25.", "3.0"), 0.75));
        assert_eq!(stsb_score("seven", "3.0"), 0.0);
        assert_eq!(stsb_score("7", "3.0"), 0.0, "outside [0, 5] is unparsable");
        assert_eq!(stsb_score("NaN", "3.0"), 0.0);
        assert_eq!(stsb_score("", "3.0"), 0.0);
    }

    #[test]
    fn names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>().unwrap(), m);
        }
        assert_eq!("rouge".parse::<Metric>().unwrap(), Metric::RougeL);
        assert!("bleu".parse::<Metric>().is_err());
    }
}
