//! Engine counters and latency histograms, snapshotted once per step for `/metrics` and the
//! load test.

use serde::Serialize;

use crate::lora::cache::AdapterResidency;
pub use crate::types::Histogram;

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
    /// Every copy of an adapter the cache holds: tier (device / host), bytes, pinned.
    pub adapter_residency: Vec<AdapterResidency>,
    /// Seconds per adapter load (read, check, upload), on the loader thread.
    pub adapter_load: Histogram,
    /// Adapters read from disk.
    pub adapter_disk_loads: u64,
    /// Adapter uploads to the backend (from disk or from the host tier).
    pub adapter_uploads: u64,
    /// Resident adapters evicted to make room.
    pub adapter_evictions: u64,
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
            adapter_residency: Vec::new(),
            adapter_load: Histogram::latency(),
            adapter_disk_loads: 0,
            adapter_uploads: 0,
            adapter_evictions: 0,
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
