//! `lorafleet decode-bench`: batch-1 decode speed beside its floor. A decode step of one
//! sequence reads every weight once, so its time is bounded below by
//! `weight bytes per token / copy bandwidth` (the device-to-device copy bandwidth measured on the
//! same device, as CUDA's bandwidthTest counts it). The measured time is the streaming time of
//! one request (first token to last, over `new_tokens - 1` steps), the median over repetitions
//! after one warm-up request (which captures the CUDA graphs the later ones replay).

use serde::Serialize;

use super::{engine_target::EngineTarget, LoadRequest, LoadTarget};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// What `decode-bench` runs.
#[derive(Debug, Clone)]
pub struct DecodeBenchConfig {
    /// Tokens of each random prompt.
    pub prompt_tokens: usize,
    /// Tokens per request (at least 2: the first comes from the prefill).
    pub new_tokens: usize,
    /// Measured requests after the warm-up one.
    pub reps: usize,
    /// Inclusive range of the random prompt ids.
    pub token_range: (u32, u32),
    /// Seed of the prompts.
    pub seed: u64,
}

/// What `measure` saw: milliseconds per decoded token, one value per measured request.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeTimes {
    /// Milliseconds per decoded token, per measured request.
    pub ms_per_token: Vec<f64>,
    /// Their median.
    pub median_ms: f64,
    /// Their minimum.
    pub min_ms: f64,
}

/// Runs `cfg.reps + 1` batch-1 requests on `target` (one at a time) and times their decode steps.
pub fn measure(target: &EngineTarget, cfg: &DecodeBenchConfig) -> Result<DecodeTimes> {
    if cfg.new_tokens < 2 || cfg.reps == 0 || cfg.prompt_tokens == 0 || cfg.token_range.0 > cfg.token_range.1 {
        return Err(Error::InvalidArgument("decode bench: needs at least 1 prompt token, 2 new tokens and 1 repetition".into()));
    }
    let mut rng = SplitMix64::new(cfg.seed);
    let span = (cfg.token_range.1 - cfg.token_range.0) as u64 + 1;
    let prompt: Vec<u32> = (0..cfg.prompt_tokens).map(|_| cfg.token_range.0 + (rng.next_u64() % span) as u32).collect();
    let req = LoadRequest { prompt_ids: prompt, adapter: None, max_new_tokens: cfg.new_tokens };
    target.run(&req)?;
    let mut ms = Vec::with_capacity(cfg.reps);
    for _ in 0..cfg.reps {
        let t = target.run(&req)?;
        if t.output_tokens != cfg.new_tokens {
            return Err(Error::InvalidArgument(format!("decode bench: {} tokens came back, not {}", t.output_tokens, cfg.new_tokens)));
        }
        ms.push(t.streaming().as_secs_f64() * 1e3 / (cfg.new_tokens - 1) as f64);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(DecodeTimes { median_ms: sorted[sorted.len() / 2], min_ms: sorted[0], ms_per_token: ms })
}

/// One line of `decode-bench --json`.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    /// The model folder.
    pub model: String,
    /// How its weights are held.
    pub format: String,
    /// The device.
    pub device: String,
    /// Bytes of weights read per decoded token.
    pub weight_bytes_per_token: usize,
    /// Measured copy bandwidth (GB/s).
    pub copy_gb_s: f64,
    /// weight bytes per token / copy bandwidth.
    pub floor_ms: f64,
    /// Tokens per prompt.
    pub prompt_tokens: usize,
    /// Tokens per request.
    pub new_tokens: usize,
    /// The measured times.
    pub times: DecodeTimes,
    /// floor / measured median: the fraction of the copy roofline reached.
    pub fraction_of_floor: f64,
}

impl DecodeReport {
    /// A report line from a measurement.
    pub fn new(model: String, format: String, device: String, weight_bytes: usize, copy_gb_s: f64, cfg: &DecodeBenchConfig, times: DecodeTimes) -> Self {
        let floor_ms = weight_bytes as f64 / (copy_gb_s * 1e9).max(1e-9) * 1e3;
        let fraction_of_floor = if times.median_ms > 0.0 { floor_ms / times.median_ms } else { 0.0 };
        DecodeReport {
            model,
            format,
            device,
            weight_bytes_per_token: weight_bytes,
            copy_gb_s,
            floor_ms,
            prompt_tokens: cfg.prompt_tokens,
            new_tokens: cfg.new_tokens,
            times,
            fraction_of_floor,
        }
    }

    /// One human line.
    pub fn line(&self) -> String {
        format!(
            "{} {} on {}: {:.3} ms/token (median of {}; min {:.3}), floor {:.3} ms ({:.2} GB read per token at {:.1} GB/s copy): {:.0}% of the floor's speed",
            self.model,
            self.format,
            self.device,
            self.times.median_ms,
            self.times.ms_per_token.len(),
            self.times.min_ms,
            self.floor_ms,
            self.weight_bytes_per_token as f64 / 1e9,
            self.copy_gb_s,
            100.0 * self.fraction_of_floor
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_bytes_over_bandwidth() {
        let cfg = DecodeBenchConfig { prompt_tokens: 4, new_tokens: 9, reps: 3, token_range: (0, 9), seed: 0 };
        let times = DecodeTimes { ms_per_token: vec![2.0, 4.0, 3.0], median_ms: 3.0, min_ms: 2.0 };
        let r = DecodeReport::new("m".into(), "nf4".into(), "cpu".into(), 3_000_000_000, 1000.0, &cfg, times);
        assert!((r.floor_ms - 3.0).abs() < 1e-9, "{}", r.floor_ms);
        assert!((r.fraction_of_floor - 1.0).abs() < 1e-9);
        assert!(r.line().contains("3.000 ms/token"), "{}", r.line());
    }
}
