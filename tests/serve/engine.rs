//! The continuous-batching engine on the real SmolLM2-135M-Instruct (CPU backend): many
//! concurrent requests over several adapters give exactly the tokens each gives alone; a
//! dropped request frees its KV blocks; an unknown adapter fails only its own request; bad
//! requests are refused at submit; a flood needing more KV than the pool holds completes
//! (admission control + preemption), still with the right tokens.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::common::*;
use lorafleet::backend::cpu::CpuBackend;
use lorafleet::engine::{CacheOptions, Engine, EngineOptions, Event, GenerateOptions, GenerateRequest, Prompt, SamplingParams};
use lorafleet::lora::{LoadedAdapter, LoraAdapter, LoraModule};
use lorafleet::model::Llama;
use lorafleet::{Error, TextTokenizer};

struct Fixture {
    be: Arc<CpuBackend>,
    model: Arc<Llama<CpuBackend>>,
    tok: Arc<TextTokenizer>,
    /// Golden adapters (linked) and three random ones (saved), one folder each.
    adapter_dir: PathBuf,
    adapter_ids: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = model_dir();
        let be = Arc::new(CpuBackend::new());
        let model = Arc::new(Llama::load(&*be, &dir, false).expect("load model"));
        let tok = Arc::new(TextTokenizer::from_dir(&dir).expect("load tokenizer"));
        let adapter_dir = std::env::temp_dir().join(format!("lorafleet-engine-adapters-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&adapter_dir);
        std::fs::create_dir_all(&adapter_dir).unwrap();
        let mut ids = Vec::new();
        for name in ["a_r8_all", "b_r16_qv_rslora"] {
            std::os::unix::fs::symlink(golden_dir().join("adapters").join(name), adapter_dir.join(name)).unwrap();
            ids.push(name.to_string());
        }
        let random: [(&str, usize, &[LoraModule]); 3] = [
            ("r4_qkvo", 4, &[LoraModule::Q, LoraModule::K, LoraModule::V, LoraModule::O]),
            ("r8_mlp", 8, &[LoraModule::Gate, LoraModule::Up, LoraModule::Down]),
            ("r16_all", 16, &LoraModule::ALL),
        ];
        for (i, (name, r, modules)) in random.into_iter().enumerate() {
            let a = LoraAdapter::random(name, &model.config, r, 2.0 * r as f32, modules, 100 + i as u64, 0.01);
            a.save(&adapter_dir.join(name)).unwrap();
            ids.push(name.to_string());
        }
        Fixture { be, model, tok, adapter_dir, adapter_ids: ids }
    })
}

fn options(f: &Fixture) -> EngineOptions {
    EngineOptions {
        cache: CacheOptions {
            adapter_dir: Some(f.adapter_dir.clone()),
            max_host_adapters: 16,
            device_budget_bytes: 1 << 30,
            max_rank: 64,
            allow_paths: true,
            synthetic: None,
        },
        ..EngineOptions::default()
    }
}

fn start(opts: EngineOptions) -> Engine {
    let f = fixture();
    Engine::start(f.be.clone(), f.model.clone(), f.tok.clone(), opts).expect("start engine")
}

/// Prompts of varied lengths (3 to ~150 tokens).
fn prompts(n: usize) -> Vec<Vec<u32>> {
    let f = fixture();
    let topics = ["the sea", "prime numbers", "a red bicycle", "Rust's borrow checker", "bread", "the moon landing", "jazz", "volcanoes"];
    (0..n)
        .map(|i| {
            let t = topics[i % topics.len()];
            let text = match i % 4 {
                0 => format!("Tell me about {t}."),
                1 => format!("Write one sentence about {t}:"),
                2 => format!("Question: what is {t}? Answer in detail, with examples. {}", "Please be precise and clear. ".repeat(i % 7 + 1)),
                _ => format!("{} Now summarise {t}.", "Here is some context that goes on for a while. ".repeat(12)),
            };
            f.tok.encode(&text).unwrap()
        })
        .collect()
}

/// What `Generator` gives for one sequence alone (the reference), memoized.
struct Reference {
    adapters: HashMap<String, LoadedAdapter<CpuBackend>>,
    memo: HashMap<(Vec<u32>, Option<String>, usize), Vec<u32>>,
}

impl Reference {
    fn new() -> Self {
        Reference { adapters: HashMap::new(), memo: HashMap::new() }
    }

    fn tokens(&mut self, prompt: &[u32], adapter: Option<&str>, max_new: usize) -> Vec<u32> {
        let f = fixture();
        let key = (prompt.to_vec(), adapter.map(str::to_owned), max_new);
        if let Some(t) = self.memo.get(&key) {
            return t.clone();
        }
        if let Some(id) = adapter {
            self.adapters.entry(id.to_string()).or_insert_with(|| {
                let a = LoraAdapter::load(id, &f.adapter_dir.join(id), &f.model.config, 64).unwrap();
                LoadedAdapter::upload(&*f.be, &a).unwrap()
            });
        }
        let loaded = adapter.map(|id| &self.adapters[id]);
        let out = solo_tokens(&f.model, &*f.be, &f.tok, prompt, loaded, max_new);
        self.memo.insert(key, out.clone());
        out
    }
}

#[test]
fn concurrent_requests_over_adapters_match_each_alone() {
    let f = fixture();
    // A small step budget so long prompts are chunked while others decode; few running slots
    // and active adapters so sequences join and leave and the adapter limit bites.
    let engine = start(EngineOptions { max_batch_tokens: 96, max_running: 24, max_active_adapters: 4, ..options(f) });
    let choices: Vec<Option<String>> = std::iter::once(None).chain(f.adapter_ids.iter().cloned().map(Some)).collect();
    assert_eq!(choices.len(), 6);
    let ps = prompts(64);
    let max_new = 8;
    let handles: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let adapter = choices[(i * 7 + i / 6) % choices.len()].clone();
            let h = engine.submit(GenerateRequest::new(Prompt::Ids(p.clone()), adapter.clone(), greedy(max_new))).unwrap();
            (h, adapter)
        })
        .collect();
    let mut outs = Vec::new();
    for (h, adapter) in handles {
        // Read the stream: the token events' text adds up to the final text.
        let mut streamed = String::new();
        let mut ids = Vec::new();
        let fin = loop {
            match h.recv().expect("event") {
                Event::Token { id, text, .. } => {
                    ids.push(id);
                    streamed.push_str(&text);
                }
                Event::Finished(fin) => break fin,
                Event::Error(e) => panic!("request failed: {e}"),
                Event::Prompt { .. } => panic!("no prompt logprobs were asked for"),
            }
        };
        assert_eq!(ids, fin.token_ids);
        assert_eq!(streamed, fin.text);
        assert_eq!(fin.generated_tokens, max_new);
        assert!(fin.ttft <= fin.total);
        outs.push((fin.token_ids, adapter));
    }
    let mut reference = Reference::new();
    let mut distinct = std::collections::HashSet::new();
    for (i, (got, adapter)) in outs.iter().enumerate() {
        let want = reference.tokens(&ps[i], adapter.as_deref(), max_new);
        assert_eq!(got, &want, "request {i} (adapter {adapter:?}, {} prompt tokens)", ps[i].len());
        distinct.insert((ps[i].clone(), got.clone()));
    }
    let s = engine.stats();
    eprintln!("engine stats: {} steps, {} preemptions, {} finished", s.steps, s.preemptions, s.requests_finished);
    assert_eq!(s.requests_finished, 64);
    // Batching happened: far fewer steps than sequential decoding would take.
    assert!(s.steps < 64 * max_new as u64 / 2, "{} steps", s.steps);
    // The adapters matter (else this would not test the segments): some prompt's output
    // depends on its adapter.
    let per_prompt: HashMap<&Vec<u32>, std::collections::HashSet<&Vec<u32>>> = outs.iter().enumerate().fold(HashMap::new(), |mut m, (i, (got, _))| {
        m.entry(&ps[i]).or_default().insert(got);
        m
    });
    assert!(per_prompt.values().any(|s| s.len() > 1), "no adapter changed any output");
    wait_until("all blocks free", Duration::from_secs(5), || engine.kv_free_blocks() == engine.kv_total_blocks());
}

#[test]
fn dropped_request_frees_its_blocks() {
    let engine = start(EngineOptions { kv_blocks: Some(64), ..options(fixture()) });
    let total = engine.kv_total_blocks();
    assert_eq!(engine.kv_free_blocks(), total);
    let p = prompts(4).pop().unwrap();
    let h = engine.submit(GenerateRequest::new(Prompt::Ids(p.clone()), None, greedy(400))).unwrap();
    match h.recv().unwrap() {
        Event::Token { .. } => {}
        e => panic!("expected a token, got {e:?}"),
    }
    assert!(engine.kv_free_blocks() < total, "a running request holds blocks");
    drop(h);
    wait_until("blocks back after cancel", Duration::from_secs(10), || engine.kv_free_blocks() == total);
    wait_until("cancel counted", Duration::from_secs(5), || engine.stats().requests_cancelled >= 1);
    // Cancelled by its caller (not dropped): `wait` says so with its own error.
    let h = engine.submit(GenerateRequest::new(Prompt::Ids(p.clone()), None, greedy(400))).unwrap();
    assert!(matches!(h.recv(), Some(Event::Token { .. })));
    h.cancel();
    match h.wait() {
        Err(lorafleet::Error::Cancelled) => {}
        other => panic!("a cancelled request should end with Error::Cancelled, got {other:?}"),
    }
    // The engine goes on serving.
    let fin = engine.submit(GenerateRequest::new(Prompt::Ids(p), None, greedy(3))).unwrap().wait().unwrap();
    assert_eq!(fin.generated_tokens, 3);
    wait_until("blocks back after finish", Duration::from_secs(5), || engine.kv_free_blocks() == total);
}

#[test]
fn unknown_adapter_fails_alone() {
    let engine = start(options(fixture()));
    let p = prompts(1).pop().unwrap();
    let submit = |a: Option<&str>| engine.submit(GenerateRequest::new(Prompt::Ids(p.clone()), a.map(str::to_owned), greedy(4))).unwrap();
    let (base, bad, good) = (submit(None), submit(Some("no-such-adapter")), submit(Some("a_r8_all")));
    match bad.wait() {
        Err(Error::UnknownAdapter(id)) => assert_eq!(id, "no-such-adapter"),
        other => panic!("expected UnknownAdapter, got {other:?}"),
    }
    assert_eq!(base.wait().unwrap().generated_tokens, 4);
    assert_eq!(good.wait().unwrap().generated_tokens, 4);
    assert!(engine.available_adapters().contains(&"a_r8_all".to_string()));
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let f = fixture();
    let engine = start(EngineOptions { kv_blocks: Some(8), ..options(f) });
    let req = |ids: Vec<u32>, opts: GenerateOptions| GenerateRequest::new(Prompt::Ids(ids), None, opts);
    // Over the model's context (8192).
    let long = vec![1u32; f.model.config.max_position_embeddings - 4];
    assert!(matches!(engine.submit(req(long, greedy(8))), Err(Error::PromptTooLong { .. })));
    // Over what the KV cache holds (8 blocks = 128 tokens).
    assert!(matches!(engine.submit(req(vec![1; 125], greedy(8))), Err(Error::PromptTooLong { tokens: 125, new_tokens: 8, context: 128 })));
    // max_new_tokens alone over the limit says so (not "the context holds 0").
    let e = engine.submit(req(vec![1; 5], greedy(100_000))).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("max_new_tokens 100000 alone exceeds the context of 128 tokens"), "{e}");
    assert!(matches!(engine.submit(req(vec![], greedy(8))), Err(Error::EmptyPrompt)));
    assert!(matches!(engine.submit(req(vec![f.model.config.vocab_size as u32], greedy(8))), Err(Error::InvalidRequest { field: "prompt", .. })));
    let hot = GenerateOptions { sampling: SamplingParams { temperature: -1.0, ..SamplingParams::greedy() }, ..greedy(8) };
    assert!(matches!(engine.submit(req(vec![1, 2], hot)), Err(Error::InvalidRequest { field: "temperature", .. })));
    assert!(matches!(engine.submit(req(vec![1, 2], greedy(0))), Err(Error::InvalidRequest { field: "max_new_tokens", .. })));
    assert!(matches!(engine.submit(GenerateRequest::new(Prompt::Text(String::new()), None, greedy(4))), Err(Error::EmptyPrompt)));
    // None of it reached the engine.
    assert_eq!(engine.stats().steps, 0);
}

#[test]
fn flood_beyond_kv_capacity_completes_with_preemption() {
    let f = fixture();
    // 16 blocks = 256 tokens of KV for 16 requests needing ~60 tokens each.
    let engine = start(EngineOptions { kv_blocks: Some(16), max_batch_tokens: 128, ..options(f) });
    let max_new = 20;
    let ps: Vec<Vec<u32>> = prompts(16)
        .into_iter()
        .map(|mut p| {
            p.truncate(40);
            p
        })
        .collect();
    let adapters = [None, Some("a_r8_all".to_string())];
    let handles: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| engine.submit(GenerateRequest::new(Prompt::Ids(p.clone()), adapters[i % 2].clone(), greedy(max_new))).unwrap())
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.wait().expect("flood request failed")).collect();
    let s = engine.stats();
    eprintln!("flood: {} steps, {} preemptions", s.steps, s.preemptions);
    assert!(s.preemptions > 0, "the flood should have forced preemptions");
    assert!(outs.iter().any(|o| o.preemptions > 0));
    let mut reference = Reference::new();
    for (i, o) in outs.iter().enumerate() {
        let want = reference.tokens(&ps[i], adapters[i % 2].as_deref(), max_new);
        assert_eq!(o.token_ids, want, "request {i} ({} preemptions)", o.preemptions);
    }
    wait_until("all blocks free", Duration::from_secs(5), || engine.kv_free_blocks() == engine.kv_total_blocks());
}

/// Chunked prefill: while a 1000-token prompt is computed in chunks of the step budget, a
/// request that is already decoding keeps getting a token every step.
#[test]
fn long_prefill_does_not_stall_running_decodes() {
    let f = fixture();
    let engine = start(EngineOptions { max_batch_tokens: 64, ..options(f) });
    let short = prompts(1).pop().unwrap();
    let decoding = engine.submit(GenerateRequest::new(Prompt::Ids(short), None, greedy(40))).unwrap();
    // Wait until it decodes, then send the long prompt.
    assert!(matches!(decoding.recv(), Some(Event::Token { .. })));
    let long: Vec<u32> = f.tok.encode(&"The quick brown fox jumps over the lazy dog. ".repeat(100)).unwrap();
    assert!(long.len() >= 900, "{} tokens", long.len());
    let long_h = engine.submit(GenerateRequest::new(Prompt::Ids(long.clone()), None, greedy(2))).unwrap();
    let long_first = std::thread::spawn(move || {
        assert!(matches!(long_h.recv(), Some(Event::Token { .. })));
        let t = Instant::now();
        long_h.wait().unwrap();
        t
    });
    let mut token_times = Vec::new();
    loop {
        match decoding.recv().expect("event") {
            Event::Token { .. } => token_times.push(Instant::now()),
            Event::Finished(_) => break,
            Event::Error(e) => panic!("{e}"),
            Event::Prompt { .. } => panic!("no prompt logprobs were asked for"),
        }
    }
    let first_of_long = long_first.join().unwrap();
    let before = token_times.iter().filter(|&&t| t < first_of_long).count();
    // The prompt takes >= 900 / 63 = 14 steps; each gives the decoding request a token.
    eprintln!("{before} tokens of the running request while the {}-token prompt was prefilled", long.len());
    assert!(before >= 10, "only {before} decode tokens during the long prefill");
}

/// An adapter budget that holds one of the two golden adapters at a time (a_r8_all ~9.8 MB,
/// b_r16_qv_rslora ~3.7 MB) and a steady stream of a_r8_all requests that keeps it pinned:
/// b's request still gets in (the engine stops admitting a_r8_all until b has loaded).
#[test]
fn an_adapter_waiting_for_budget_room_does_not_starve() {
    let f = fixture();
    let mut opts = options(f);
    opts.cache.device_budget_bytes = 10_000_000;
    let engine = Arc::new(start(opts));
    let p = prompts(1).pop().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (engine, p, stop) = (engine.clone(), p.clone(), stop.clone());
        std::thread::spawn(move || {
            // Keep six a_r8_all requests of staggered lengths in flight, topping up within
            // 10 ms of any finishing, so some a_r8_all sequence is always running (pinned).
            let mut in_flight: Vec<lorafleet::engine::RequestHandle> = Vec::new();
            let (mut done, mut sent) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                in_flight.retain(|h| {
                    while let Ok(ev) = h.try_recv() {
                        match ev {
                            Event::Finished(_) => {
                                done += 1;
                                return false;
                            }
                            Event::Error(e) => panic!("a_r8_all request: {e}"),
                            Event::Token { .. } | Event::Prompt { .. } => {}
                        }
                    }
                    true
                });
                while in_flight.len() < 6 {
                    sent += 1;
                    let r = GenerateRequest::new(Prompt::Ids(p.clone()), Some("a_r8_all".into()), greedy(3 + sent % 7));
                    in_flight.push(engine.submit(r).unwrap());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            done
        })
    };
    // Let a_r8_all load and run first.
    wait_until("a_r8_all resident", Duration::from_secs(60), || !engine.stats().resident_adapters.is_empty());
    let t = Instant::now();
    let b = engine.submit(GenerateRequest::new(Prompt::Ids(p), Some("b_r16_qv_rslora".into()), greedy(4))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(b.wait());
    });
    let got = rx.recv_timeout(Duration::from_secs(60));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let a_done = feeder.join().unwrap();
    let fin = got.expect("b_r16_qv_rslora starved").expect("b_r16_qv_rslora failed");
    eprintln!("b got in after {:.1} s while {a_done} a_r8_all requests completed", t.elapsed().as_secs_f64());
    assert_eq!(fin.generated_tokens, 4);
    assert!(a_done > 0);
}

/// Automatic prefix caching (issue 29): requests sharing a template reuse its full KV blocks
/// (the stats count the hit tokens) and still give exactly the tokens each gives alone (no
/// cache); the same prompt under another adapter shares nothing; an adapter reloaded from new
/// files misses its old blocks, and hits again once its new ones are cached.
#[test]
fn prefix_cache_is_exact_scoped_to_the_adapter_and_misses_after_a_reload() {
    let f = fixture();
    let engine = start(options(f));
    let template = f.tok.encode(&"You are a careful reviewer. Read the text and answer with one word, positive or negative. ".repeat(3)).unwrap();
    assert!(template.len() >= 48, "a template of several blocks: {} tokens", template.len());
    let inputs = ["The film was a delight.", "Dull and far too long.", "I would watch it again tomorrow."];
    let prompt = |i: usize| [template.clone(), f.tok.encode(inputs[i]).unwrap()].concat();
    let full_blocks = (template.len() / 16 * 16) as u64;
    let hits = || engine.stats().prefix.hit_tokens;
    // Runs one request alone; returns its tokens and the hit tokens its admission found.
    let run = |p: &[u32], adapter: Option<&str>| -> (Vec<u32>, u64) {
        let before = hits();
        let fin = engine.submit(GenerateRequest::new(Prompt::Ids(p.to_vec()), adapter.map(str::to_owned), greedy(8))).unwrap().wait().unwrap();
        wait_until("stats published", Duration::from_secs(5), || engine.stats().requests_finished >= 1);
        (fin.token_ids, hits() - before)
    };
    let mut reference = Reference::new();
    for (i, adapter, want_hit) in [
        (0, None, 0),
        (1, None, full_blocks),
        (0, Some("a_r8_all"), 0),
        (2, Some("a_r8_all"), full_blocks),
        (0, Some("b_r16_qv_rslora"), 0),
        (0, None, full_blocks),
    ] {
        let p = prompt(i);
        let (got, hit) = run(&p, adapter);
        assert_eq!(hit, want_hit, "prompt {i} under {adapter:?}: hit tokens");
        assert_eq!(got, reference.tokens(&p, adapter, 8), "prompt {i} under {adapter:?}: tokens with the cache");
    }
    // A registered adapter, then the same name from new files.
    let dir = std::env::temp_dir().join(format!("lorafleet-engine-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let make = |seed: u64| {
        let a = LoraAdapter::random("re", &f.model.config, 8, 16.0, &LoraModule::ALL, seed, 0.02);
        let d = dir.join(format!("v{seed}"));
        a.save(&d).unwrap();
        (LoadedAdapter::upload(&*f.be, &a).unwrap(), d)
    };
    let (v1, d1) = make(1);
    engine.load_adapter("re", &d1).unwrap();
    assert_eq!(run(&prompt(0), Some("re")).1, 0);
    let (got, hit) = run(&prompt(1), Some("re"));
    assert_eq!(hit, full_blocks, "v1 hits its own template blocks");
    assert_eq!(got, solo_tokens(&f.model, &*f.be, &f.tok, &prompt(1), Some(&v1), 8));
    engine.unload_adapter("re").unwrap();
    let (v2, d2) = make(2);
    engine.load_adapter("re", &d2).unwrap();
    let (got, hit) = run(&prompt(1), Some("re"));
    assert_eq!(hit, 0, "new files under the same name: none of v1's blocks");
    assert_eq!(got, solo_tokens(&f.model, &*f.be, &f.tok, &prompt(1), Some(&v2), 8));
    assert_eq!(run(&prompt(2), Some("re")).1, full_blocks, "v2's own blocks hit");
    let s = engine.stats();
    assert!(s.prefix.cached_blocks > 0 && s.prefix.queried_tokens > s.prefix.hit_tokens, "{:?}", s.prefix);
    wait_until("all blocks free (cached ones count as free)", Duration::from_secs(5), || engine.kv_free_blocks() == engine.kv_total_blocks());
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a shared template and a KV cache too small for everyone: requests are preempted, come
/// back, and find what is still cached (their own template blocks or others'); every output is
/// still the tokens each request gives alone, and the cache off gives the same.
#[test]
fn prefix_cache_is_exact_across_preemption() {
    let f = fixture();
    let template = f.tok.encode(&"Answer in one short sentence, plainly. ".repeat(4)).unwrap();
    let ps: Vec<Vec<u32>> = prompts(9).into_iter().map(|p| [template.clone(), p[..p.len().min(20)].to_vec()].concat()).collect();
    let adapters = [None, Some("a_r8_all".to_string()), Some("r4_qkvo".to_string())];
    let max_new = 16;
    let mut runs = Vec::new();
    for cache in [true, false] {
        let engine = start(EngineOptions { kv_blocks: Some(14), max_batch_tokens: 96, prefix_cache: cache, ..options(f) });
        let handles: Vec<_> = ps
            .iter()
            .enumerate()
            .map(|(i, p)| engine.submit(GenerateRequest::new(Prompt::Ids(p.clone()), adapters[i % 3].clone(), greedy(max_new))).unwrap())
            .collect();
        let outs: Vec<_> = handles.into_iter().map(|h| h.wait().expect("request failed")).collect();
        let s = engine.stats();
        eprintln!("cache {cache}: {} steps, {} preemptions, prefix {:?}", s.steps, s.preemptions, s.prefix);
        assert!(s.preemptions > 0, "cache {cache}: the pool is small enough to preempt");
        assert_eq!(s.prefix.hit_tokens > 0, cache, "cache {cache}: hits only with the cache");
        runs.push(outs.into_iter().map(|o| o.token_ids).collect::<Vec<_>>());
    }
    assert_eq!(runs[0], runs[1], "the same tokens with the prefix cache and without");
    let mut reference = Reference::new();
    for (i, got) in runs[0].iter().enumerate() {
        assert_eq!(got, &reference.tokens(&ps[i], adapters[i % 3].as_deref(), max_new), "request {i}");
    }
}
