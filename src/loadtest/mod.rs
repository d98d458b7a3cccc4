//! `lorafleet bench`: the LoRA Land load test (the report's Tables 8 and 9). N concurrent
//! users each send a request, wait for the whole streamed response, then send the next, for a
//! fixed duration per concurrency level. Payloads are random: 30–500 input tokens and 1–120
//! output tokens by default (the output length is forced: EOS is ignored), spread uniformly
//! over K adapters (or the base alone). For each point it reports total request time, time to
//! first token and token streaming time (average and p90) and throughput in tokens/s.
//!
//! The target is anything that runs one request and reports its timings: the engine in
//! process, or a server over HTTP (`http.rs`).

pub mod decode;
pub mod engine_target;
pub mod http;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::rng::SplitMix64;
use crate::Result;

/// One request of the load test.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// None = the base model.
    pub adapter: Option<String>,
    /// Exactly this many new tokens (EOS ignored).
    pub max_new_tokens: usize,
}

/// What one request took, measured by the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTiming {
    /// Send to the last token.
    pub total: Duration,
    /// Send to the first token.
    pub ttft: Duration,
    /// Tokens received.
    pub output_tokens: usize,
}

impl RequestTiming {
    /// First token to last token.
    pub fn streaming(&self) -> Duration {
        self.total.saturating_sub(self.ttft)
    }
}

/// Runs one request to completion (streaming), from one of several user threads at once.
pub trait LoadTarget: Sync {
    /// Sends one request and times it.
    fn run(&self, req: &LoadRequest) -> Result<RequestTiming>;
}

/// A load test: users per point, how long, what each request is.
#[derive(Debug, Clone)]
pub struct LoadTestConfig {
    /// Concurrent users at each point.
    pub concurrency: Vec<usize>,
    /// How long each point runs.
    pub duration: Duration,
    /// Inclusive range of prompt lengths.
    pub input_tokens: (usize, usize),
    /// Inclusive range of output lengths.
    pub output_tokens: (usize, usize),
    /// Adapter ids requests are spread over; empty = the base alone.
    pub adapters: Vec<String>,
    /// Prompt token ids are drawn from `token_range` (ordinary tokens, no special ones).
    pub token_range: (u32, u32),
    /// Seed of prompts and adapter choice.
    pub seed: u64,
    /// LoRA Land's shape: every request starts with a fixed template of this many tokens, one
    /// per adapter (its task's instructions and few-shot examples), then its own
    /// `input_tokens`; 0: no template.
    pub template_tokens: usize,
}

/// The fixed template of `adapter` (None: the base): `n` tokens drawn from the token range,
/// seeded by the run's seed and the adapter's name.
pub fn template(cfg: &LoadTestConfig, adapter: Option<&str>) -> Vec<u32> {
    let name_hash = adapter.unwrap_or("").bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut rng = SplitMix64::new(cfg.seed ^ name_hash ^ 0x7e3a_91c5);
    let (lo, hi) = cfg.token_range;
    (0..cfg.template_tokens).map(|_| rng.range(lo as usize, hi as usize) as u32).collect()
}

/// Average and 90th percentile, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stat {
    /// Average (ms).
    pub avg_ms: f64,
    /// 90th percentile (ms).
    pub p90_ms: f64,
}

impl Stat {
    /// The statistics of `v` (ms).
    pub fn of(mut v: Vec<f64>) -> Stat {
        if v.is_empty() {
            return Stat::default();
        }
        v.sort_by(f64::total_cmp);
        let avg = v.iter().sum::<f64>() / v.len() as f64;
        // Nearest-rank p90.
        let idx = ((0.9 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Stat { avg_ms: avg, p90_ms: v[idx] }
    }
}

/// One concurrency level's results.
#[derive(Debug, Clone, Serialize)]
pub struct PointResult {
    /// Concurrent users.
    pub concurrency: usize,
    /// Adapters requests were spread over.
    pub adapters: usize,
    /// Requests finished.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Send to last token.
    pub total_request: Stat,
    /// Send to first token.
    pub time_to_first_token: Stat,
    /// First to last token.
    pub token_streaming: Stat,
    /// Streaming time per token after the first (ms/token).
    pub inter_token: Stat,
    /// Tokens received in all.
    pub output_tokens: usize,
    /// Prompt tokens sent in all.
    pub input_tokens: usize,
    /// Wall time of the point.
    pub wall_s: f64,
    /// Output tokens per second of wall time, over all users.
    pub throughput_tok_s: f64,
    /// First error message seen, if any.
    pub first_error: Option<String>,
}

/// A random request.
fn payload(cfg: &LoadTestConfig, rng: &mut SplitMix64) -> LoadRequest {
    let n_in = rng.range(cfg.input_tokens.0, cfg.input_tokens.1);
    let (lo, hi) = cfg.token_range;
    let prompt_ids: Vec<u32> = (0..n_in).map(|_| rng.range(lo as usize, hi as usize) as u32).collect();
    let max_new_tokens = rng.range(cfg.output_tokens.0, cfg.output_tokens.1);
    // The adapter comes from its own draw, so the payload sequence is the same whatever K is
    // (runs with and without adapters compare like with like).
    let pick = rng.next_u64();
    let adapter = if cfg.adapters.is_empty() { None } else { Some(cfg.adapters[(pick % cfg.adapters.len() as u64) as usize].clone()) };
    let prompt_ids = if cfg.template_tokens > 0 {
        let mut t = template(cfg, adapter.as_deref());
        t.extend_from_slice(&prompt_ids);
        t
    } else {
        prompt_ids
    };
    LoadRequest { prompt_ids, adapter, max_new_tokens }
}

/// Checks ranges before any thread starts.
pub fn validate(cfg: &LoadTestConfig) -> Result<()> {
    let bad = |m: String| Err(crate::Error::InvalidArgument(m));
    if cfg.concurrency.is_empty() || cfg.concurrency.contains(&0) {
        return bad("--concurrency needs one or more levels, each at least 1".into());
    }
    for (name, (lo, hi)) in [("--input-tokens", cfg.input_tokens), ("--output-tokens", cfg.output_tokens)] {
        if lo == 0 || lo > hi {
            return bad(format!("{name} {lo}-{hi}: need 1 <= min <= max"));
        }
    }
    if cfg.token_range.0 > cfg.token_range.1 {
        return bad("empty token range".into());
    }
    if cfg.duration.is_zero() {
        return bad("--duration must be positive".into());
    }
    Ok(())
}

/// Runs one concurrency level for `cfg.duration`: `concurrency` user threads each send a
/// request, wait for it, and send the next until the time is up (a request in flight at the
/// deadline completes and counts). `on_done` is called after each request (progress).
pub fn run_point(target: &dyn LoadTarget, cfg: &LoadTestConfig, concurrency: usize, on_done: &(dyn Fn(usize) + Sync)) -> PointResult {
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let records: Mutex<Vec<(LoadRequest, Result<RequestTiming>)>> = Mutex::new(Vec::new());
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for user in 0..concurrency {
            let (records, done, stop) = (&records, &done, &stop);
            s.spawn(move || {
                let mut rng = SplitMix64::new(cfg.seed ^ ((concurrency as u64) << 32) ^ (user as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let req = payload(cfg, &mut rng);
                    let r = target.run(&req);
                    if let Ok(mut v) = records.lock() {
                        v.push((req, r));
                    }
                    on_done(done.fetch_add(1, Ordering::Relaxed) + 1);
                }
            });
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let records = records.into_inner().unwrap_or_default();
    let mut ok: Vec<(&LoadRequest, RequestTiming)> = Vec::new();
    let mut first_error = None;
    for (req, r) in &records {
        match r {
            Ok(t) => ok.push((req, *t)),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let output_tokens: usize = ok.iter().map(|(_, t)| t.output_tokens).sum();
    PointResult {
        concurrency,
        adapters: cfg.adapters.len(),
        requests: ok.len(),
        errors: records.len() - ok.len(),
        total_request: Stat::of(ok.iter().map(|(_, t)| ms(t.total)).collect()),
        time_to_first_token: Stat::of(ok.iter().map(|(_, t)| ms(t.ttft)).collect()),
        token_streaming: Stat::of(ok.iter().map(|(_, t)| ms(t.streaming())).collect()),
        inter_token: Stat::of(ok.iter().filter(|(_, t)| t.output_tokens > 1).map(|(_, t)| ms(t.streaming()) / (t.output_tokens - 1) as f64).collect()),
        output_tokens,
        input_tokens: ok.iter().map(|(r, _)| r.prompt_ids.len()).sum(),
        wall_s: wall,
        throughput_tok_s: if wall > 0.0 { output_tokens as f64 / wall } else { 0.0 },
        first_error,
    }
}

/// The results as a Markdown table (one row per point).
pub fn table(points: &[PointResult]) -> String {
    let mut s = String::from(
        "| users | adapters | requests | total avg / p90 (ms) | TTFT avg / p90 (ms) | streaming avg / p90 (ms) | ms/token avg / p90 | throughput (tok/s) | errors |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        s += &format!(
            "| {} | {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} | {} |\n",
            p.concurrency,
            p.adapters,
            p.requests,
            p.total_request.avg_ms,
            p.total_request.p90_ms,
            p.time_to_first_token.avg_ms,
            p.time_to_first_token.p90_ms,
            p.token_streaming.avg_ms,
            p.token_streaming.p90_ms,
            p.inter_token.avg_ms,
            p.inter_token.p90_ms,
            p.throughput_tok_s,
            p.errors
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_average_and_nearest_rank_p90() {
        let s = Stat::of((1..=10).map(|x| x as f64).collect());
        assert_eq!((s.avg_ms, s.p90_ms), (5.5, 9.0));
        let s = Stat::of(vec![3.0]);
        assert_eq!((s.avg_ms, s.p90_ms), (3.0, 3.0));
        assert_eq!(Stat::of(vec![]).avg_ms, 0.0);
    }

    /// A fake target whose timings depend only on the request: checks the bookkeeping.
    struct Fake;
    impl LoadTarget for Fake {
        fn run(&self, req: &LoadRequest) -> Result<RequestTiming> {
            if req.adapter.as_deref() == Some("broken") {
                return Err(crate::Error::UnknownAdapter("broken".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
            Ok(RequestTiming {
                total: Duration::from_millis(10 + req.max_new_tokens as u64),
                ttft: Duration::from_millis(10),
                output_tokens: req.max_new_tokens,
            })
        }
    }

    #[test]
    fn run_point_counts_requests_tokens_and_errors() {
        let cfg = LoadTestConfig {
            concurrency: vec![3],
            duration: Duration::from_millis(100),
            input_tokens: (30, 40),
            output_tokens: (5, 5),
            adapters: vec!["a".into(), "broken".into()],
            token_range: (10, 20),
            seed: 1,
            template_tokens: 0,
        };
        validate(&cfg).unwrap();
        let calls = AtomicUsize::new(0);
        let p = run_point(&Fake, &cfg, 3, &|_| {
            calls.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(calls.load(Ordering::Relaxed), p.requests + p.errors);
        assert!(p.requests > 3 && p.errors > 0, "{p:?}");
        assert_eq!(p.output_tokens, 5 * p.requests);
        assert!(p.input_tokens >= 30 * p.requests && p.input_tokens <= 40 * p.requests);
        assert_eq!((p.time_to_first_token.avg_ms, p.total_request.p90_ms, p.token_streaming.avg_ms), (10.0, 15.0, 5.0));
        assert!((p.inter_token.avg_ms - 1.25).abs() < 1e-9);
        assert!(p.first_error.unwrap().contains("broken"));
        assert!(table(&[]).lines().count() == 2);
    }

    #[test]
    fn templates_are_fixed_per_adapter_and_lead_every_prompt() {
        let cfg = LoadTestConfig {
            concurrency: vec![1],
            duration: Duration::from_secs(1),
            input_tokens: (5, 9),
            output_tokens: (1, 2),
            adapters: vec!["a".into(), "b".into()],
            token_range: (10, 1000),
            seed: 3,
            template_tokens: 40,
        };
        let (ta, tb) = (template(&cfg, Some("a")), template(&cfg, Some("b")));
        assert_eq!(ta.len(), 40);
        assert_ne!(ta, tb, "each adapter has its own template");
        let mut rng = SplitMix64::new(1);
        for _ in 0..50 {
            let r = payload(&cfg, &mut rng);
            let t = if r.adapter.as_deref() == Some("a") { &ta } else { &tb };
            assert_eq!(&r.prompt_ids[..40], &t[..], "the template leads");
            assert!((45..=49).contains(&r.prompt_ids.len()));
        }
    }

    #[test]
    fn payloads_do_not_depend_on_the_adapter_count() {
        let base = LoadTestConfig {
            concurrency: vec![1],
            duration: Duration::from_secs(1),
            input_tokens: (30, 500),
            output_tokens: (1, 120),
            adapters: vec![],
            token_range: (10, 1000),
            seed: 9,
            template_tokens: 0,
        };
        let with = LoadTestConfig { adapters: (0..25).map(|i| format!("a{i}")).collect(), ..base.clone() };
        let (mut r1, mut r2) = (SplitMix64::new(4), SplitMix64::new(4));
        let mut used = std::collections::HashSet::new();
        for _ in 0..200 {
            let (a, b) = (payload(&base, &mut r1), payload(&with, &mut r2));
            assert_eq!((a.prompt_ids, a.max_new_tokens, a.adapter), (b.prompt_ids, b.max_new_tokens, None));
            used.insert(b.adapter.unwrap());
        }
        assert!(used.len() > 20, "adapters are spread: {}", used.len());
    }

    #[test]
    fn validate_rejects_bad_ranges() {
        let ok = LoadTestConfig {
            concurrency: vec![1],
            duration: Duration::from_secs(1),
            input_tokens: (30, 500),
            output_tokens: (1, 120),
            adapters: vec![],
            token_range: (0, 10),
            seed: 0,
            template_tokens: 0,
        };
        assert!(validate(&ok).is_ok());
        assert!(validate(&LoadTestConfig { concurrency: vec![0], ..ok.clone() }).is_err());
        assert!(validate(&LoadTestConfig { input_tokens: (50, 10), ..ok.clone() }).is_err());
        assert!(validate(&LoadTestConfig { output_tokens: (0, 10), ..ok.clone() }).is_err());
    }
}
