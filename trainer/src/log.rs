//! The training log: one `LogEntry` per optimizer update, one JSON line each in `loss.jsonl`
//! (written by `train_loop`, drawn by `plot`).

use serde::{Deserialize, Serialize};

/// One line of `loss.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// 1-based index of the update.
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}
