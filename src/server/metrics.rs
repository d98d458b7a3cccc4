//! `GET /metrics` in the Prometheus text format (version 0.0.4), written by hand from
//! `EngineStats`.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::common::App;
use crate::engine::{EngineStats, Histogram};

fn gauge(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let cum = h.cumulative();
    for (b, c) in h.bounds.iter().zip(&cum) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
}

/// Label values escape backslash, quote and newline.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(s: &EngineStats) -> String {
    let mut out = String::new();
    gauge(&mut out, "lorafleet_queue_length", "Requests waiting for KV blocks, a running slot or their adapter.", s.queued);
    gauge(&mut out, "lorafleet_running_sequences", "Sequences in the running batch.", s.running);
    gauge(&mut out, "lorafleet_kv_blocks_used", "KV cache blocks in use.", s.kv_blocks_used);
    gauge(&mut out, "lorafleet_kv_blocks_total", "KV cache blocks in all.", s.kv_blocks_total);
    gauge(&mut out, "lorafleet_resident_adapters", "LoRA adapters resident on the device.", s.resident_adapters.len());
    let _ = writeln!(out, "# HELP lorafleet_adapter_bytes Bytes of each resident adapter.\n# TYPE lorafleet_adapter_bytes gauge");
    for (id, bytes) in &s.resident_adapters {
        let _ = writeln!(out, "lorafleet_adapter_bytes{{adapter=\"{}\"}} {bytes}", label(id));
    }
    counter(&mut out, "lorafleet_steps_total", "Engine steps (forward passes).", s.steps);
    counter(&mut out, "lorafleet_preemptions_total", "Sequences preempted (blocks freed, recomputed later).", s.preemptions);
    counter(&mut out, "lorafleet_requests_finished_total", "Requests that finished.", s.requests_finished);
    counter(&mut out, "lorafleet_requests_failed_total", "Requests that failed in the engine.", s.requests_failed);
    counter(&mut out, "lorafleet_requests_cancelled_total", "Requests cancelled by their client.", s.requests_cancelled);
    counter(&mut out, "lorafleet_prompt_tokens_total", "Prompt tokens of finished requests.", s.prompt_tokens);
    counter(&mut out, "lorafleet_generated_tokens_total", "Tokens generated.", s.generated_tokens);
    histogram(&mut out, "lorafleet_time_to_first_token_seconds", "Submit to first token.", &s.ttft);
    histogram(&mut out, "lorafleet_inter_token_latency_seconds", "Time between consecutive tokens of a request.", &s.inter_token);
    out
}

pub async fn metrics(State(app): State<App>) -> Response {
    let mut r = render(&app.engine.stats()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_and_histograms() {
        let mut s = EngineStats::new(100);
        s.kv_blocks_used = 7;
        s.resident_adapters = vec![("a\"b".into(), 1024)];
        s.ttft.observe(0.02);
        let t = render(&s);
        assert!(t.contains("lorafleet_kv_blocks_used 7\n"), "{t}");
        assert!(t.contains("lorafleet_kv_blocks_total 100\n"));
        assert!(t.contains("lorafleet_adapter_bytes{adapter=\"a\\\"b\"} 1024\n"), "{t}");
        assert!(t.contains("lorafleet_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n"), "{t}");
        assert!(t.contains("lorafleet_time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n"), "{t}");
        assert!(t.contains("lorafleet_time_to_first_token_seconds_count 1\n"));
    }
}
