//! Engine counters and latency histograms, snapshotted once per step for `/metrics` and the
//! load test.

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

/// The engine's counters and gauges (`Engine::stats`), as /metrics reports them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineStats {
    /// Requests waiting (for KV blocks, a running slot, or their adapter to load).
    pub queued: usize,
    /// Sequences running.
    pub running: usize,
    /// KV blocks in all.
    pub kv_blocks_total: usize,
    /// KV blocks held by sequences (and the prefix cache's referenced blocks).
    pub kv_blocks_used: usize,
    /// (adapter id, bytes) resident on the device.
    pub resident_adapters: Vec<(String, usize)>,
    /// Steps run.
    pub steps: u64,
    /// Sequences preempted (their KV dropped, to be recomputed).
    pub preemptions: u64,
    /// Requests that finished.
    pub requests_finished: u64,
    /// Requests that failed.
    pub requests_failed: u64,
    /// Requests cancelled by their caller.
    pub requests_cancelled: u64,
    /// Prompt tokens computed.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Submit to first token, seconds.
    pub ttft: Histogram,
    /// Between consecutive tokens of a request, seconds.
    pub inter_token: Histogram,
    /// The prefix cache: tokens looked up at admission and found, blocks held.
    pub prefix: crate::kv::PrefixStats,
    /// Tokens per KV block.
    pub kv_block_size: usize,
    /// The most adapters (the base not counted) one running batch may hold.
    pub max_lora: usize,
    /// Adapters of the running sequences, and of the queued requests (sorted, no base).
    pub running_adapters: Vec<String>,
    /// Adapters of queued requests, sorted.
    pub waiting_adapters: Vec<String>,
    /// When the engine thread last published these statistics (seconds since the Unix epoch).
    pub updated_unix_s: f64,
}

impl EngineStats {
    /// Zeroed stats for a cache of `kv_blocks_total` blocks.
    pub fn new(kv_blocks_total: usize) -> Self {
        EngineStats {
            queued: 0,
            running: 0,
            kv_blocks_total,
            kv_blocks_used: 0,
            resident_adapters: Vec::new(),
            steps: 0,
            preemptions: 0,
            requests_finished: 0,
            requests_failed: 0,
            requests_cancelled: 0,
            prompt_tokens: 0,
            generated_tokens: 0,
            ttft: Histogram::latency(),
            inter_token: Histogram::latency(),
            prefix: crate::kv::PrefixStats::default(),
            kv_block_size: 0,
            max_lora: 0,
            running_adapters: Vec::new(),
            waiting_adapters: Vec::new(),
            updated_unix_s: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_cumulates() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for x in [0.05, 0.1, 0.5, 3.0] {
            h.observe(x);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.cumulative(), vec![2, 3, 4]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 3.65).abs() < 1e-12);
    }
}
