//! A Prometheus-style histogram of seconds: a plain value the engine (latencies) and the
//! adapter cache (load times) fill and `/metrics` encodes.

use serde::Serialize;

/// A Prometheus-style histogram: `counts[i]` observations `<= bounds[i]` and `> bounds[i-1]`;
/// the last count is above every bound.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Histogram {
    /// Upper bounds in seconds, increasing.
    pub bounds: Vec<f64>,
    /// Observations per bucket (the last is +Inf).
    pub counts: Vec<u64>,
    /// Sum of every observation.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds).
    pub fn new(bounds: &[f64]) -> Self {
        Histogram { bounds: bounds.to_vec(), counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// Seconds-based buckets from 1 ms to 60 s.
    pub fn latency() -> Self {
        Self::new(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
    }

    /// Counts one observation.
    pub fn observe(&mut self, seconds: f64) {
        let i = self.bounds.iter().position(|&b| seconds <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// Cumulative counts per bound (`le` buckets), then +Inf.
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |acc, &c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }
}
