//! How the rows of a batch are grouped, for every backend: the sequences of a packed training
//! batch (`SeqSpan`) and the LoRA segments of a forward step (`LoraSegmentShape`, checked by
//! `validate_segment_shapes` before any kernel or CPU loop trusts them).

use crate::{Error, Result};

/// One sequence of a packed training batch: rows `start..start + len`, continuing the context
/// rows `ctx_start..ctx_start + ctx_len` (`ctx_len = 0`: a sequence of its own).
///
/// A context is a prompt prefix shared by several sequences of the batch and laid out once:
/// causal attention makes its hidden states the same in every sequence that starts with it, so
/// computing them once (and summing their gradients, which the backward does by scattering
/// every sequence's dk/dv for those rows into the same rows) gives the loss and gradients of
/// the batch with the prefix repeated, for a fraction of the work. A row attends to every
/// context row and causally to its own sequence's rows; never to any other row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    /// First row of the sequence.
    pub start: usize,
    /// Its rows.
    pub len: usize,
    /// First row of its shared context (a prefix other sequences also attend to).
    pub ctx_start: usize,
    /// Rows of that context (0: none).
    pub ctx_len: usize,
}

impl SeqSpan {
    /// A sequence with no shared context.
    pub fn new(start: usize, len: usize) -> Self {
        SeqSpan { start, len, ctx_start: 0, ctx_len: 0 }
    }

    /// A sequence continuing the context rows `ctx_start..ctx_start + ctx_len`.
    pub fn with_context(start: usize, len: usize, ctx_start: usize, ctx_len: usize) -> Self {
        SeqSpan { start, len, ctx_start, ctx_len }
    }

    /// The rows this sequence's queries may see, in order: its context, then its own rows.
    pub(crate) fn key_rows(&self) -> impl Iterator<Item = usize> {
        (self.ctx_start..self.ctx_start + self.ctx_len).chain(self.start..self.start + self.len)
    }

    pub(crate) fn in_bounds(&self, t: usize) -> bool {
        self.start + self.len <= t && self.ctx_start + self.ctx_len <= t
    }
}

/// Where the sequences of a packed training batch lie, in order, covering the batch.
pub type SeqSpans<'a> = &'a [SeqSpan];

/// What `validate_segment_shapes` needs of a segment: its rows, rank and the element counts of
/// its A and B, wherever they live (host slices here, device buffers in `backend::cuda::lora`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraSegmentShape {
    /// First row.
    pub start: usize,
    /// Rows.
    pub len: usize,
    /// The pair's rank.
    pub rank: usize,
    /// Elements of A, expected `rank * d_in`.
    pub a_len: usize,
    /// Elements of B, expected `d_out * rank`.
    pub b_len: usize,
}

/// The checks of `validate_segments` on segment shapes alone.
pub fn validate_segment_shapes(segs: impl IntoIterator<Item = LoraSegmentShape>, t_rows: usize, d_in: usize, d_out: usize, r_max: usize) -> Result<()> {
    let mut end = 0;
    for (i, s) in segs.into_iter().enumerate() {
        let bad = |m: String| Err(Error::InvalidArgument(format!("lora segment {i}: {m}")));
        if s.start < end {
            return bad(format!("starts at row {} inside the previous segment (ends at {end})", s.start));
        }
        end = s.start.saturating_add(s.len);
        if end > t_rows {
            return bad(format!("rows {}..{end} are past the batch ({t_rows} rows)", s.start));
        }
        if s.rank == 0 || s.rank > r_max {
            return bad(format!("rank {} is outside 1..={r_max}", s.rank));
        }
        if s.a_len != s.rank * d_in {
            return bad(format!("A has {} values, expected [{}, {d_in}]", s.a_len, s.rank));
        }
        if s.b_len != d_out * s.rank {
            return bad(format!("B has {} values, expected [{d_out}, {}]", s.b_len, s.rank));
        }
    }
    Ok(())
}
