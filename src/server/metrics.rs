//! `GET /metrics`: the engine's counters in the OpenMetrics text format, encoded by
//! `prometheus-client`. The engine thread keeps `EngineStats` (one lock, no atomics per token);
//! each scrape encodes a snapshot of it through a `Collector`, so the crate writes the names,
//! `_total` suffixes, escaping, cumulative `le` buckets and the `# EOF` trailer.

use std::fmt;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::common::App;
use crate::engine::{EngineStats, Histogram};

/// The media type of `prometheus_client::encoding::text::encode`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape's snapshot of the engine's statistics.
#[derive(Debug)]
struct Snapshot(EngineStats);

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: usize) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// `name` without `_total`: the encoder appends it to counters.
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> fmt::Result {
    // Per-bucket counts (the encoder accumulates them); the last bucket is +Inf.
    let buckets: Vec<(f64, u64)> = h.bounds.iter().copied().chain([f64::INFINITY]).zip(h.counts.iter().copied()).collect();
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let e = &mut enc;
        gauge(e, "lorafleet_queue_length", "Requests waiting for KV blocks, a running slot or their adapter.", s.queued)?;
        gauge(e, "lorafleet_running_sequences", "Sequences in the running batch.", s.running)?;
        gauge(e, "lorafleet_kv_blocks_used", "KV cache blocks in use.", s.kv_blocks_used)?;
        gauge(e, "lorafleet_kv_blocks_total", "KV cache blocks in all.", s.kv_blocks_total)?;
        gauge(e, "lorafleet_resident_adapters", "LoRA adapters resident on the device.", s.resident_adapters.len())?;
        let mut family = e.encode_descriptor("lorafleet_adapter_bytes", "Bytes of each resident adapter.", None, MetricType::Gauge)?;
        for (id, bytes) in &s.resident_adapters {
            let labels = [("adapter", id.as_str())];
            ConstGauge::new(i64::try_from(*bytes).unwrap_or(i64::MAX)).encode(family.encode_family(&labels)?)?;
        }
        let help = "Bytes of each copy of an adapter, by tier (device: ready for a step; host: parsed in host memory) and whether it is pinned (device: running sequences hold it; host: added from memory, its only copy).";
        let mut family = e.encode_descriptor("lorafleet_adapter_resident_bytes", help, None, MetricType::Gauge)?;
        for r in &s.adapter_residency {
            let pinned = if r.pinned { "true" } else { "false" };
            let labels = [("adapter", r.adapter.as_str()), ("tier", r.tier.as_str()), ("pinned", pinned)];
            ConstGauge::new(i64::try_from(r.bytes).unwrap_or(i64::MAX)).encode(family.encode_family(&labels)?)?;
        }
        histogram(e, "lorafleet_adapter_load_seconds", "Seconds per adapter load (read, check, upload), on the loader thread.", &s.adapter_load)?;
        counter(e, "lorafleet_adapter_disk_loads", "Adapters read from disk.", s.adapter_disk_loads)?;
        counter(e, "lorafleet_adapter_uploads", "Adapter uploads to the backend (from disk or the host tier).", s.adapter_uploads)?;
        counter(e, "lorafleet_adapter_evictions", "Resident adapters evicted to make room for another.", s.adapter_evictions)?;
        counter(e, "lorafleet_steps", "Engine steps (forward passes).", s.steps)?;
        counter(e, "lorafleet_preemptions", "Sequences preempted (blocks freed, recomputed later).", s.preemptions)?;
        counter(e, "lorafleet_requests_finished", "Requests that finished.", s.requests_finished)?;
        counter(e, "lorafleet_requests_failed", "Requests that failed in the engine.", s.requests_failed)?;
        counter(e, "lorafleet_requests_cancelled", "Requests cancelled by their client.", s.requests_cancelled)?;
        counter(e, "lorafleet_prompt_tokens", "Prompt tokens of finished requests.", s.prompt_tokens)?;
        counter(e, "lorafleet_generated_tokens", "Tokens generated.", s.generated_tokens)?;
        counter(e, "lorafleet_prefix_cache_queried_tokens", "Tokens of admitted sequences looked up in the prefix cache.", s.prefix.queried_tokens)?;
        counter(e, "lorafleet_prefix_cache_hit_tokens", "Tokens found in the prefix cache at admission (their prefill skipped).", s.prefix.hit_tokens)?;
        gauge(e, "lorafleet_prefix_cache_blocks", "KV blocks the prefix cache holds (in use or evictable).", s.prefix.cached_blocks)?;
        gauge(e, "lorafleet_prefix_cache_evictable_blocks", "Cached KV blocks no sequence uses (they count as free).", s.prefix.evictable_blocks)?;
        histogram(e, "lorafleet_time_to_first_token_seconds", "Submit to first token.", &s.ttft)?;
        histogram(e, "lorafleet_inter_token_latency_seconds", "Time between consecutive tokens of a request.", &s.inter_token)?;
        model_server_protocol(e, s)
    }
}

/// The inference gateway's model-server protocol (gateway-api-inference-extension, proposal
/// 003; llm-d-router's `docs/model-server-protocol.md`): vLLM's names and semantics, which the
/// endpoint picker reads without configuration. `lora_requests_info`'s value is the time of the
/// last update and its labels list the adapters (comma-separated) of running sequences and of
/// queued requests; `max_lora` is the most adapters one batch holds.
fn model_server_protocol(e: &mut DescriptorEncoder, s: &EngineStats) -> fmt::Result {
    gauge(e, "vllm:num_requests_waiting", "Requests waiting to be processed (vLLM semantics).", s.queued)?;
    gauge(e, "vllm:num_requests_running", "Requests running on the engine (vLLM semantics).", s.running)?;
    let usage = if s.kv_blocks_total == 0 { 0.0 } else { s.kv_blocks_used as f64 / s.kv_blocks_total as f64 };
    let g = ConstGauge::new(usage);
    g.encode(e.encode_descriptor("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means 100 percent (vLLM semantics).", None, g.metric_type())?)?;
    let (bs, nb) = (s.kv_block_size.to_string(), s.kv_blocks_total.to_string());
    let mut family = e.encode_descriptor("vllm:cache_config_info", "Information of the KV cache's configuration.", None, MetricType::Gauge)?;
    ConstGauge::new(1i64).encode(family.encode_family(&[("block_size", bs.as_str()), ("num_gpu_blocks", nb.as_str())])?)?;
    let (max_lora, running, waiting) = (s.max_lora.to_string(), s.running_adapters.join(","), s.waiting_adapters.join(","));
    let labels = [("max_lora", max_lora.as_str()), ("running_lora_adapters", running.as_str()), ("waiting_lora_adapters", waiting.as_str())];
    let mut family = e.encode_descriptor("vllm:lora_requests_info", "Running stats on LoRA requests (vLLM semantics).", None, MetricType::Gauge)?;
    ConstGauge::new(s.updated_unix_s).encode(family.encode_family(&labels)?)
}

/// The OpenMetrics text of one snapshot.
pub fn render(s: &EngineStats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(s.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error (none is known) leaves what was written.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// GET /metrics.
pub async fn metrics(State(app): State<App>) -> Response {
    // The engine's state now (it answers between two steps), off the async workers.
    let engine = app.engine.clone();
    let stats = tokio::task::spawn_blocking(move || engine.stats()).await.unwrap_or_else(|_| app.engine.stats_snapshot());
    let mut r = render(&stats).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::cache::{AdapterResidency, AdapterTier};

    #[test]
    fn renders_gauges_and_histograms() {
        let mut s = EngineStats::new(100);
        s.kv_blocks_used = 7;
        s.resident_adapters = vec![("a\"b".into(), 1024)];
        s.ttft.observe(0.02);
        s.adapter_residency = vec![
            AdapterResidency { adapter: "sql".into(), tier: AdapterTier::Device, bytes: 4096, pinned: true },
            AdapterResidency { adapter: "sql".into(), tier: AdapterTier::Host, bytes: 4096, pinned: false },
        ];
        s.adapter_load.observe(0.3);
        s.adapter_disk_loads = 2;
        let t = render(&s);
        assert!(t.contains("lorafleet_adapter_resident_bytes{adapter=\"sql\",tier=\"device\",pinned=\"true\"} 4096\n"), "{t}");
        assert!(t.contains("lorafleet_adapter_resident_bytes{adapter=\"sql\",tier=\"host\",pinned=\"false\"} 4096\n"), "{t}");
        assert!(t.contains("lorafleet_adapter_load_seconds_bucket{le=\"0.25\"} 0\n"), "{t}");
        assert!(t.contains("lorafleet_adapter_load_seconds_bucket{le=\"0.5\"} 1\n"), "{t}");
        assert!(t.contains("lorafleet_adapter_disk_loads_total 2\n"), "{t}");
        assert!(t.contains("lorafleet_kv_blocks_used 7\n"), "{t}");
        assert!(t.contains("lorafleet_kv_blocks_total 100\n"));
        assert!(t.contains("lorafleet_adapter_bytes{adapter=\"a\\\"b\"} 1024\n"), "{t}");
        assert!(t.contains("lorafleet_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n"), "{t}");
        assert!(t.contains("lorafleet_time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n"), "{t}");
        assert!(t.contains("lorafleet_time_to_first_token_seconds_count 1\n"));
        assert!(t.contains("lorafleet_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1\n"), "{t}");
        assert!(t.contains("# TYPE lorafleet_steps counter\nlorafleet_steps_total 0\n"), "{t}");
        assert!(t.contains("lorafleet_prefix_cache_hit_tokens_total 0\n") && t.contains("lorafleet_prefix_cache_blocks 0\n"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn renders_the_model_server_protocol() {
        let mut s = EngineStats::new(200);
        s.kv_blocks_used = 50;
        s.queued = 3;
        s.running = 2;
        s.kv_block_size = 16;
        s.max_lora = 31;
        s.running_adapters = vec!["a".into(), "b".into()];
        s.waiting_adapters = vec!["c".into()];
        s.updated_unix_s = 1765000000.5;
        let t = render(&s);
        assert!(t.contains("vllm:num_requests_waiting 3\n"), "{t}");
        assert!(t.contains("vllm:num_requests_running 2\n"), "{t}");
        assert!(t.contains("vllm:kv_cache_usage_perc 0.25\n"), "{t}");
        assert!(t.contains("vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"200\"} 1\n"), "{t}");
        assert!(t.contains("vllm:lora_requests_info{max_lora=\"31\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"c\"} 1765000000.5\n"), "{t}");
    }
}
