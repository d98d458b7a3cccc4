//! The load test (`bench`, in process or over HTTP) and `decode-bench`.

use std::io::IsTerminal;
use std::sync::Arc;

use lorafleet::backend::cpu::CpuBackend;
use lorafleet::backend::device::{open_backend, OpenedBackend};
use lorafleet::backend::Backend;
use lorafleet::lora::{AdapterCache, CacheOptions};
use lorafleet::{Error, Result, TextTokenizer};

use super::args::*;
use super::runtime::{check_model_args, load};

pub(crate) fn bench(a: BenchArgs) -> Result<()> {
    use lorafleet::loadtest::{self, engine_target::EngineTarget, http::HttpTarget, LoadTestConfig};
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        return Err(Error::InvalidArgument("--duration must be a positive number of seconds".into()));
    }
    let tok = TextTokenizer::from_dir(&a.model.model)?;
    let cfg_model = a.model.config()?;
    lorafleet::model::check::tokenizer_in(&a.model.model, &tok, a.model.random()?.is_none().then_some(cfg_model.vocab_size))?;
    // Synthetic adapters: made by the engine's adapter cache on the device when first requested
    // (no files); over HTTP the server must offer them (`serve --synthetic-adapters K`).
    let adapter_dir = a.adapter_dir.clone();
    let synthetic = a.synthetic_adapters.map(|count| lorafleet::lora::SyntheticAdapters { count, rank: a.rank, seed: a.seed });
    let mut names: Vec<String> = Vec::new();
    if let Some(s) = &synthetic {
        names = (0..s.count).map(lorafleet::lora::SyntheticAdapters::id).collect();
    } else if let Some(d) = &a.adapter_dir {
        let cache_opts = CacheOptions { adapter_dir: Some(d.clone()), ..CacheOptions::default() };
        cache_opts.check().map_err(|e| Error::InvalidArgument(format!("--adapter-dir: {e}")))?;
        names = AdapterCache::new(Arc::new(CpuBackend::new()), cfg_model.clone(), cache_opts).available();
    } else if a.url.is_some() {
        names = (0..a.adapters).map(lorafleet::lora::SyntheticAdapters::id).collect();
    }
    if names.len() < a.adapters {
        return Err(Error::InvalidArgument(format!(
            "--adapters {} but only {} adapters are available (use --synthetic-adapters K or --adapter-dir)",
            a.adapters,
            names.len()
        )));
    }
    names.truncate(a.adapters);
    // Ordinary tokens: skip the special ones at the start of the vocabulary.
    let lo = (cfg_model.vocab_size / 100).max(256).min(cfg_model.vocab_size.saturating_sub(1)) as u32;
    let cfg = LoadTestConfig {
        concurrency: a.concurrency.clone(),
        duration: std::time::Duration::from_secs_f64(a.duration),
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        adapters: names,
        token_range: (lo, cfg_model.vocab_size as u32 - 1),
        seed: a.seed,
        template_tokens: a.template_tokens,
    };
    loadtest::validate(&cfg)?;
    let mut engine = None;
    let target: Box<dyn loadtest::LoadTarget> = match &a.url {
        Some(url) => Box::new(HttpTarget::new(url.parse()?, tok, std::time::Duration::from_secs(600))),
        None => {
            let max_in = a.template_tokens + a.input_tokens.1 + a.output_tokens.1;
            let opts = lorafleet::engine::EngineOptions {
                kv_cache_bytes: a.kv_cache_bytes,
                max_batch_tokens: a.max_batch_tokens,
                cache: CacheOptions {
                    adapter_dir,
                    max_host_adapters: 64,
                    device_budget_bytes: a.adapter_memory,
                    max_rank: a.rank.max(128),
                    allow_paths: true,
                    synthetic,
                },
                prefix_cache: !a.no_prefix_cache,
                ..lorafleet::engine::EngineOptions::default()
            };
            if max_in > cfg_model.max_position_embeddings {
                return Err(Error::InvalidArgument(format!("payloads up to {max_in} tokens exceed the context {}", cfg_model.max_position_embeddings)));
            }
            let started = engine.insert(on_device!(&a.model, |l| lorafleet::engine::Engine::start(l.be, Arc::new(l.model), Arc::new(l.tok), opts))?);
            Box::new(EngineTarget { engine: started })
        }
    };
    let mut points = Vec::new();
    for &c in &cfg.concurrency {
        let bar = lorafleet::progress::bar(std::io::stderr().is_terminal(), 0, "load test");
        bar.set_message(format!("{c} users, {} adapters, {:.0} s: requests done", cfg.adapters.len(), a.duration));
        let p = loadtest::run_point(&*target, &cfg, c, &|n| bar.set_position(n as u64));
        bar.finish_and_clear();
        eprintln!(
            "{c} users: {} requests, {} errors, {:.1} tok/s{}",
            p.requests,
            p.errors,
            p.throughput_tok_s,
            p.first_error.as_ref().map_or(String::new(), |e| format!(" (first error: {e})"))
        );
        points.push(p);
    }
    print!("{}", loadtest::table(&points));
    drop(target);
    if let Some(p) = engine.as_ref().map(|e| e.stats().prefix).filter(|p| p.queried_tokens > 0) {
        eprintln!(
            "prefix cache: {} of {} prompt tokens found cached ({:.1}%); {} blocks cached at the end",
            p.hit_tokens,
            p.queried_tokens,
            100.0 * p.hit_tokens as f64 / p.queried_tokens as f64,
            p.cached_blocks
        );
    }
    if a.json {
        println!("{}", serde_json::to_string(&points).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    }
    Ok(())
}

pub(crate) fn decode_bench(a: DecodeBenchArgs) -> Result<()> {
    use lorafleet::loadtest::decode::{measure, DecodeBenchConfig, DecodeReport};
    use lorafleet::loadtest::engine_target::EngineTarget;
    let cfg_model = a.model.config()?;
    if a.prompt_tokens + a.new_tokens > cfg_model.max_position_embeddings {
        return Err(Error::InvalidArgument(format!(
            "--prompt-tokens + --new-tokens = {} exceeds the context {}",
            a.prompt_tokens + a.new_tokens,
            cfg_model.max_position_embeddings
        )));
    }
    let lo = (cfg_model.vocab_size / 100).max(256).min(cfg_model.vocab_size.saturating_sub(1)) as u32;
    let cfg = DecodeBenchConfig {
        prompt_tokens: a.prompt_tokens,
        new_tokens: a.new_tokens,
        reps: a.reps,
        token_range: (lo, cfg_model.vocab_size as u32 - 1),
        seed: a.seed,
    };
    let model_name = a.model.random_weights.clone().unwrap_or_else(|| a.model.model.display().to_string());
    let format = format!("{:?}", a.model.format()).to_lowercase();
    // The engine is started on the device's thread, and measured from this one: waiting for its
    // tokens on a CPU pool thread would keep that thread from the engine's steps
    // (`Backend::run_step` runs each step on the pool).
    let (engine, bytes, copy_gb_s, device) = on_device!(&a.model, |l| {
        let bytes = l.model.decode_weight_bytes(&l.be);
        let copy_gb_s = l.be.copy_bandwidth(a.copy_bytes)?;
        let device = l.be.name();
        let opts = lorafleet::engine::EngineOptions {
            kv_cache_bytes: a.kv_cache_bytes,
            max_batch_tokens: a.prompt_tokens.max(16),
            ..lorafleet::engine::EngineOptions::default()
        };
        let engine = lorafleet::engine::Engine::start(l.be, Arc::new(l.model), Arc::new(l.tok), opts)?;
        Ok::<_, Error>((engine, bytes, copy_gb_s, device))
    })?;
    let times = measure(&EngineTarget { engine: &engine }, &cfg)?;
    let report = DecodeReport::new(model_name, format, device, bytes, copy_gb_s, &cfg, times);
    if a.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    } else {
        println!("{}", report.line());
    }
    Ok(())
}
