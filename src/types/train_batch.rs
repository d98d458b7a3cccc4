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
//! the same, only the work grows. "Shared-prefix" batches lay the prompt prefix common to all
//! the examples (a task's instruction template, typically 30-40% of each example) out once and
//! let every sequence attend to it (`SeqSpan::with_context`): the same loss and gradients as
//! packed, with that prefix's forward and backward computed once per micro-batch.

use crate::types::config::ModelConfig;
use crate::types::layout::SeqSpan;
use crate::{Error, Result};

/// One training example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// Prompt then completion.
    pub ids: Vec<u32>,
    /// Tokens of the prompt; the loss covers `ids[n_prompt..]`.
    pub n_prompt: usize,
}

impl TokenizedExample {
    /// An example of `prompt` then `completion` (the loss covers the completion).
    pub fn new(prompt: &[u32], completion: &[u32]) -> Self {
        TokenizedExample { ids: [prompt, completion].concat(), n_prompt: prompt.len() }
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
    /// Token ids of every sequence, one after another.
    pub ids: Vec<u32>,
    /// Per row, its position within its sequence.
    pub positions: Vec<u32>,
    /// Where each sequence lies (and the shared context it continues, if any).
    pub seqs: Vec<SeqSpan>,
    /// Rows whose next token is a label, in row order, and that token.
    pub label_rows: Vec<usize>,
    /// The next token of each labelled row.
    pub targets: Vec<u32>,
}

impl TrainBatch {
    /// Lays out `examples`; with `pad = Some(id)` every sequence is right-padded to the longest.
    pub fn new(examples: &[&TokenizedExample], pad: Option<u32>) -> Self {
        let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut b = TrainBatch::default();
        for e in examples {
            let start = b.ids.len();
            let len = if pad.is_some() { longest } else { e.ids.len() };
            b.ids.extend_from_slice(&e.ids);
            b.ids.extend(std::iter::repeat_n(pad.unwrap_or(0), len - e.ids.len()));
            b.positions.extend(0..len as u32);
            b.seqs.push(SeqSpan::new(start, len));
            for i in e.n_prompt.max(1)..e.ids.len() {
                b.label_rows.push(start + i - 1);
                b.targets.push(e.ids[i]);
            }
        }
        b
    }

    /// Lays out `examples` packed, with the longest prefix common to all of them laid out
    /// once as a context every sequence continues. The prefix stops before any labelled row
    /// (at most `n_prompt - 1` tokens of every example) so each example keeps its labels and at
    /// least one row of its own. With fewer than two examples, or no common prefix, this is
    /// the packed layout.
    pub fn shared_prefix(examples: &[&TokenizedExample]) -> Self {
        let Some(first) = examples.first() else { return TrainBatch::default() };
        let mut p = examples.iter().map(|e| e.n_prompt.saturating_sub(1)).min().unwrap_or(0);
        for e in &examples[1..] {
            p = p.min(first.ids.iter().zip(&e.ids).take_while(|(a, b)| a == b).count());
        }
        if examples.len() < 2 || p == 0 {
            return TrainBatch::new(examples, None);
        }
        let mut b = TrainBatch { ids: first.ids[..p].to_vec(), positions: (0..p as u32).collect(), ..Default::default() };
        b.seqs.push(SeqSpan::new(0, p));
        for e in examples {
            let start = b.ids.len();
            b.ids.extend_from_slice(&e.ids[p..]);
            b.positions.extend(p as u32..e.ids.len() as u32);
            b.seqs.push(SeqSpan::with_context(start, e.ids.len() - p, 0, p));
            // Example position i - 1 predicts ids[i]; it sits at row start + (i - 1 - p).
            for i in e.n_prompt.max(1)..e.ids.len() {
                b.label_rows.push(start + i - 1 - p);
                b.targets.push(e.ids[i]);
            }
        }
        b
    }

    /// Rows of the batch.
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
        for span in &self.seqs {
            if span.start != end || span.len == 0 {
                return bad("sequence spans do not tile the rows");
            }
            end = span.start + span.len;
            // A context is an earlier sequence of its own, and the positions continue it.
            if span.ctx_len > 0 && !self.seqs.iter().any(|c| *c == SeqSpan::new(span.ctx_start, span.ctx_len) && c.start + c.len <= span.start) {
                return bad("a sequence's context is not an earlier sequence of its own");
            }
            if end > self.positions.len() || (0..span.len).any(|i| self.positions[span.start + i] as usize != span.ctx_len + i) {
                return bad("positions do not count up from each sequence's context");
            }
        }
        if end != self.ids.len() {
            return bad("sequence spans do not cover the rows");
        }
        if self.label_rows.iter().any(|&r| r >= self.ids.len()) {
            return bad("label row past the batch");
        }
        Ok(())
    }

    /// [`validate`](Self::validate), then the batch against the model every backend's
    /// `begin_batch` runs it on: ids and targets inside the vocabulary, positions under the
    /// context, labelled rows in increasing order (one writer per row in a scatter), whole
    /// kv-head groups.
    pub fn check_against(&self, c: &ModelConfig) -> Result<()> {
        self.validate()?;
        if let Some(&bad) = self.ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        if let Some(&p) = self.positions.iter().find(|&&p| p as usize >= c.max_position_embeddings) {
            return Err(Error::PromptTooLong { tokens: p as usize + 1, new_tokens: 0, context: c.max_position_embeddings });
        }
        let bad = |m: &str| Err(Error::InvalidArgument(format!("training batch: {m}")));
        if self.label_rows.windows(2).any(|w| w[0] >= w[1]) {
            return bad("labelled rows must be increasing");
        }
        if self.targets.iter().any(|&i| i as usize >= c.vocab_size) {
            return bad("a target outside the vocabulary");
        }
        if c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return bad("q heads are not a multiple of kv heads");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_shifted_completion() {
        let e = TokenizedExample::new(&[10, 11, 12], &[20, 21]);
        assert_eq!(e.n_labels(), 2);
        let f = TokenizedExample::new(&[30], &[40]);
        let b = TrainBatch::new(&[&e, &f], None);
        assert_eq!(b.seqs, vec![SeqSpan::new(0, 5), SeqSpan::new(5, 2)]);
        assert_eq!(b.positions, vec![0, 1, 2, 3, 4, 0, 1]);
        assert_eq!(b.label_rows, vec![2, 3, 5]);
        assert_eq!(b.targets, vec![20, 21, 40]);
        let p = TrainBatch::new(&[&e, &f], Some(2));
        assert_eq!(p.seqs, vec![SeqSpan::new(0, 5), SeqSpan::new(5, 5)]);
        assert_eq!(p.ids[7..], [2, 2, 2]);
        assert_eq!(p.label_rows, vec![2, 3, 5]);
        p.validate().unwrap();
        assert_eq!(TokenizedExample::new(&[1, 2, 3], &[4, 5]).truncated(4), TokenizedExample { ids: vec![1, 2, 3, 4], n_prompt: 3 });
    }

    #[test]
    fn shared_prefix_lays_the_common_prompt_out_once() {
        let e = TokenizedExample::new(&[7, 8, 9, 10, 11], &[20, 21]);
        let f = TokenizedExample::new(&[7, 8, 9, 12], &[22]);
        let b = TrainBatch::shared_prefix(&[&e, &f]);
        b.validate().unwrap();
        // Prefix [7, 8, 9] once, then e's [10, 11, 20, 21] and f's [12, 22], positions continuing.
        assert_eq!(b.ids, vec![7, 8, 9, 10, 11, 20, 21, 12, 22]);
        assert_eq!(b.positions, vec![0, 1, 2, 3, 4, 5, 6, 3, 4]);
        assert_eq!(b.seqs, vec![SeqSpan::new(0, 3), SeqSpan::with_context(3, 4, 0, 3), SeqSpan::with_context(7, 2, 0, 3)]);
        // e: rows of ids 11 (-> 20) and 20 (-> 21); f: the row of 12 (-> 22).
        assert_eq!(b.label_rows, vec![4, 5, 7]);
        assert_eq!(b.targets, vec![20, 21, 22]);
        // The prefix stops before a labelled row: here f's prompt is the whole common part.
        let g = TokenizedExample::new(&[7, 8], &[9, 10]);
        let b = TrainBatch::shared_prefix(&[&e, &g]);
        b.validate().unwrap();
        assert_eq!(b.seqs[0], SeqSpan::new(0, 1));
        assert_eq!(b.label_rows.len(), e.n_labels() + g.n_labels());
        // Nothing in common, or one example: the packed layout.
        let h = TokenizedExample::new(&[1, 8, 9], &[2]);
        assert_eq!(TrainBatch::shared_prefix(&[&e, &h]).seqs, TrainBatch::new(&[&e, &h], None).seqs);
        assert_eq!(TrainBatch::shared_prefix(&[&e]).ids, e.ids);
        // A context that is not an earlier sequence is refused.
        let mut bad = TrainBatch::shared_prefix(&[&e, &f]);
        bad.seqs[2].ctx_start = 3;
        assert!(bad.validate().is_err());
    }
}
