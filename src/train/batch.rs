//! Training examples and the packed batches the training forward runs on.
//!
//! An example is a token sequence whose loss counts only the completion: `ids = prompt ++
//! completion` (tokenized separately, then concatenated), and position `i` predicts `ids[i + 1]`
//! (HF's shifted labels), so the labelled rows are `n_prompt - 1 ..= len - 2`.
//!
//! A batch lays its sequences one after another (rows of `[T, hidden]`), each with its own
//! positions from 0 and its own causal attention span: attention never crosses a sequence
//! boundary. "Packed" batches hold the sequences as they are; "padded" batches right-pad every
//! sequence to the longest one with a pad id, as a fixed-shape GPU batch would: pads are never
//! labelled and (causal, on the right) never seen by a real token, so the loss and gradients are
//! the same, only the work grows.

use crate::{Error, Result};

/// One training example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt then completion.
    pub ids: Vec<u32>,
    /// Tokens of the prompt; the loss covers `ids[n_prompt..]`.
    pub n_prompt: usize,
}

impl Example {
    pub fn new(prompt: &[u32], completion: &[u32]) -> Self {
        Example { ids: [prompt, completion].concat(), n_prompt: prompt.len() }
    }

    /// Drops tokens past `max_len` (the completion's tail first, since it comes last).
    pub fn truncated(mut self, max_len: usize) -> Self {
        self.ids.truncate(max_len);
        self.n_prompt = self.n_prompt.min(self.ids.len());
        self
    }

    /// Completion tokens that carry a label (a first token with no predecessor has none).
    pub fn n_labels(&self) -> usize {
        let first = self.n_prompt.max(1);
        self.ids.len().saturating_sub(first)
    }
}

/// A packed batch: rows of every sequence, one after another.
#[derive(Debug, Clone, Default)]
pub struct TrainBatch {
    pub ids: Vec<u32>,
    /// Per row, its position within its sequence.
    pub positions: Vec<u32>,
    /// `(first row, rows)` per sequence.
    pub seqs: Vec<(usize, usize)>,
    /// Rows whose next token is a label, in row order, and that token.
    pub label_rows: Vec<usize>,
    pub targets: Vec<u32>,
}

impl TrainBatch {
    /// Lays out `examples`; with `pad = Some(id)` every sequence is right-padded to the longest.
    pub fn new(examples: &[&Example], pad: Option<u32>) -> Self {
        let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut b = TrainBatch::default();
        for e in examples {
            let start = b.ids.len();
            let len = if pad.is_some() { longest } else { e.ids.len() };
            b.ids.extend_from_slice(&e.ids);
            b.ids.extend(std::iter::repeat_n(pad.unwrap_or(0), len - e.ids.len()));
            b.positions.extend(0..len as u32);
            b.seqs.push((start, len));
            for i in e.n_prompt.max(1)..e.ids.len() {
                b.label_rows.push(start + i - 1);
                b.targets.push(e.ids[i]);
            }
        }
        b
    }

    pub fn n_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Checks the layout's internal consistency (spans tile the rows, labels inside them).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("training batch: {m}")));
        if self.positions.len() != self.ids.len() || self.label_rows.len() != self.targets.len() {
            return bad("lengths differ");
        }
        let mut end = 0;
        for &(s, l) in &self.seqs {
            if s != end || l == 0 {
                return bad("sequence spans do not tile the rows");
            }
            end = s + l;
        }
        if end != self.ids.len() {
            return bad("sequence spans do not cover the rows");
        }
        if self.label_rows.iter().any(|&r| r >= self.ids.len()) {
            return bad("label row past the batch");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_shifted_completion() {
        let e = Example::new(&[10, 11, 12], &[20, 21]);
        assert_eq!(e.n_labels(), 2);
        let f = Example::new(&[30], &[40]);
        let b = TrainBatch::new(&[&e, &f], None);
        assert_eq!(b.seqs, vec![(0, 5), (5, 2)]);
        assert_eq!(b.positions, vec![0, 1, 2, 3, 4, 0, 1]);
        assert_eq!(b.label_rows, vec![2, 3, 5]);
        assert_eq!(b.targets, vec![20, 21, 40]);
        let p = TrainBatch::new(&[&e, &f], Some(2));
        assert_eq!(p.seqs, vec![(0, 5), (5, 5)]);
        assert_eq!(p.ids[7..], [2, 2, 2]);
        assert_eq!(p.label_rows, vec![2, 3, 5]);
        p.validate().unwrap();
        assert_eq!(Example::new(&[1, 2, 3], &[4, 5]).truncated(4), Example { ids: vec![1, 2, 3, 4], n_prompt: 3 });
    }
}
