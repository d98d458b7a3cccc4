//! The library face on the real SmolLM2-135M-Instruct (CPU): `Engine::builder`, greedy answers
//! equal to the goldens through the builder, the async stream, chat prompts, in-memory adapters,
//! cancel by the caller's id, the bounded queue, one test per typed error, a final event on every
//! stream when the engine stops, and tokens that keep coming while an adapter loads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use lorafleet::lora::{LoraAdapter, LoraModule};
use lorafleet::prelude::*;

fn adapter_dir() -> PathBuf {
    golden_dir().join("adapters")
}

fn builder() -> EngineBuilder {
    Engine::builder(model_dir()).device(DeviceChoice::Cpu).adapter_dir(adapter_dir()).kv_cache_bytes(64 << 20)
}

fn greedy_request(prompt: Vec<u32>, adapter: Option<&str>, n: usize) -> GenerateRequest {
    let r = GenerateRequest::prompt(prompt).with_options(greedy(n));
    match adapter {
        Some(a) => r.with_adapter(a),
        None => r,
    }
}

#[test]
fn the_builder_serves_base_and_adapters_with_the_golden_greedy_tokens() {
    let engine = builder().build().expect("build");
    assert!(engine.device_description().contains("cpu"), "{}", engine.device_description());
    assert_eq!(engine.available_adapters(), vec!["a_r8_all".to_string(), "b_r16_qv_rslora".to_string()]);
    let prompts = golden_prompts();
    let adapters = [None, Some("a_r8_all"), Some("b_r16_qv_rslora")];
    // Every prompt on all three at once (mixed in one batch), through `generate`.
    let requests: Vec<GenerateRequest> = prompts.iter().flat_map(|p| adapters.iter().map(|a| greedy_request(p.ids.clone(), *a, p.greedy[0].len()))).collect();
    let results = engine.generate(requests);
    for (i, r) in results.into_iter().enumerate() {
        let (p, k) = (&prompts[i / 3], i % 3);
        let f = r.unwrap_or_else(|e| panic!("prompt {} on {:?}: {e}", i / 3, adapters[k]));
        assert_greedy_matches(&f.token_ids, &p.greedy[k], &p.gaps[k], &format!("prompt {} on {:?}", i / 3, adapters[k]));
    }
    let cache = engine.cache_stats().expect("cache stats");
    assert_eq!(cache.device_resident, 2, "{cache:?}");
    assert!(cache.disk_loads >= 2, "{cache:?}");
}

#[test]
fn the_async_stream_carries_every_token_then_the_final_event() {
    let engine = builder().build().expect("build");
    let p = &golden_prompts()[0];
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let (tokens, last) = rt.block_on(async {
        let mut h = engine.submit(greedy_request(p.ids.clone(), Some("a_r8_all"), p.greedy[1].len())).expect("submit");
        let mut tokens = Vec::new();
        let mut last = None;
        while let Some(ev) = std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut h), cx)).await {
            match ev {
                Event::Token { id, .. } => tokens.push(id),
                other => last = Some(other),
            }
        }
        assert!(futures_core::FusedStream::is_terminated(&h));
        (tokens, last)
    });
    assert_greedy_matches(&tokens, &p.greedy[1], &p.gaps[1], "streamed on a_r8_all");
    match last {
        Some(Event::Finished(f)) => assert_eq!(f.token_ids, tokens),
        other => panic!("the stream should end with Finished, got {other:?}"),
    }
    // `finished()` is `wait()` for async code.
    let f = rt.block_on(engine.submit(greedy_request(p.ids.clone(), None, 4)).expect("submit").finished()).expect("finished");
    assert_eq!(f.generated_tokens, 4);
}

#[test]
fn a_chat_prompt_gets_the_models_template() {
    let engine = builder().build().expect("build");
    let messages = vec![ChatMessage::system("You are brief."), ChatMessage::user("What is 2 + 2?")];
    let by_hand = engine.tokenizer().encode(&engine.tokenizer().apply_chat_template(&messages, true).unwrap()).unwrap();
    assert_eq!(engine.encode(&Prompt::Chat(messages.clone())).unwrap(), by_hand);
    let chat = engine.submit(GenerateRequest::prompt(messages).with_options(greedy(6))).expect("submit").wait().expect("chat");
    let ids = engine.submit(greedy_request(by_hand.clone(), None, 6)).expect("submit").wait().expect("ids");
    assert_eq!(chat.token_ids, ids.token_ids);
    assert_eq!(chat.prompt_tokens, by_hand.len());
}

#[test]
fn an_adapter_from_memory_is_served_without_a_file() {
    let engine = builder().build().expect("build");
    let cfg = engine.config().clone();
    let host = LoraAdapter::load("a_r8_all", &adapter_dir().join("a_r8_all"), &cfg, 64).expect("load the golden adapter");
    engine.add_adapter("from-memory", host).expect("add");
    assert!(engine.available_adapters().contains(&"from-memory".to_string()));
    let p = &golden_prompts()[1];
    let f = engine.submit(greedy_request(p.ids.clone(), Some("from-memory"), p.greedy[1].len())).unwrap().wait().expect("generate");
    assert_greedy_matches(&f.token_ids, &p.greedy[1], &p.gaps[1], "a_r8_all served from memory");
    // A second name is refused; a wrong shape is refused before anything loads.
    let again = LoraAdapter::random("x", &cfg, 4, 8.0, &[LoraModule::Q], 1, 0.01);
    assert!(matches!(engine.add_adapter("from-memory", again), Err(Error::InvalidRequest { field: "adapter name", .. })));
    let mut wrong = LoraAdapter::random("x", &cfg, 4, 8.0, &[LoraModule::Q], 1, 0.01);
    wrong.layers.pop();
    let e = engine.add_adapter("wrong", wrong).unwrap_err();
    assert!(matches!(&e, Error::Adapter { .. }) && e.to_string().contains("layers"), "{e}");
    let big = LoraAdapter::random("x", &cfg, 128, 8.0, &[LoraModule::Q], 1, 0.01);
    let e = builder().max_rank(64).build().unwrap().add_adapter("big", big).unwrap_err();
    assert!(e.to_string().contains("outside 1..=64"), "{e}");
    engine.unload_adapter("from-memory").expect("unload");
    let h = engine.submit(greedy_request(p.ids.clone(), Some("from-memory"), 2)).unwrap();
    assert!(matches!(h.wait(), Err(Error::UnknownAdapter(_))));
}

#[test]
fn typed_errors_name_what_the_caller_must_tell_apart() {
    let engine = builder().max_queued_requests(2).build().expect("build");
    let c = engine.config().clone();
    // InvalidRequest with the field.
    let e = engine.submit(greedy_request(vec![1, 2], None, 0)).unwrap_err();
    assert!(matches!(e, Error::InvalidRequest { field: "max_new_tokens", .. }), "{e}");
    let hot = GenerateOptions { sampling: SamplingParams { top_p: 0.0, ..SamplingParams::greedy() }, ..greedy(4) };
    let e = engine.submit(GenerateRequest::prompt(vec![1, 2]).with_options(hot)).unwrap_err();
    assert!(matches!(e, Error::InvalidRequest { field: "top_p", .. }), "{e}");
    let e = engine.submit(greedy_request(vec![c.vocab_size as u32], None, 4)).unwrap_err();
    assert!(matches!(e, Error::InvalidRequest { field: "prompt", .. }), "{e}");
    // Too long, with the real limits: min(context, KV capacity).
    let limit = c.max_position_embeddings.min(engine.kv_capacity_tokens());
    match engine.submit(greedy_request(vec![1; 10], None, 100_000)).unwrap_err() {
        Error::PromptTooLong { tokens: 10, new_tokens: 100_000, context } => assert_eq!(context, limit),
        e => panic!("want PromptTooLong, got {e}"),
    }
    assert!(matches!(engine.submit(GenerateRequest::prompt("")), Err(Error::EmptyPrompt)));
    // Not found: the request's own error event, the engine goes on.
    assert!(matches!(engine.submit(greedy_request(vec![1, 2], Some("no-such-adapter"), 2)).unwrap().wait(), Err(Error::UnknownAdapter(_))));
    // Queue full: two long requests hold both places; a third is refused, typed.
    let a = engine.submit(greedy_request(vec![1, 2, 3], None, 1000)).unwrap();
    let b = engine.submit(greedy_request(vec![4, 5, 6], None, 1000)).unwrap();
    assert_eq!(engine.requests_in_flight(), 2);
    match engine.submit(greedy_request(vec![1], None, 2)) {
        Err(Error::QueueFull { in_flight: 2, limit: 2 }) => {}
        other => panic!("want QueueFull, got {other:?}"),
    }
    // Cancelled by the handle.
    a.cancel();
    assert!(matches!(a.wait(), Err(Error::Cancelled)));
    // Cancelled by the caller's request id (the place b held is free once it ends).
    drop(b);
    wait_until("places freed", Duration::from_secs(30), || engine.requests_in_flight() == 0);
    let c1 = engine.submit(greedy_request(vec![7, 8], None, 1000).with_request_id("job-42")).unwrap();
    assert_eq!(engine.cancel_request("job-41"), 0);
    assert_eq!(engine.cancel_request("job-42"), 1);
    assert!(matches!(c1.wait(), Err(Error::Cancelled)));
    // A device that is not there: Error::Cuda, before any model loads (no machine has a cuda:7
    // here, the emulator included: it offers one device).
    match Engine::builder(model_dir()).device(DeviceChoice::Cuda(7)).build() {
        Err(Error::Cuda(msg)) => assert!(msg.contains("cuda:7"), "{msg}"),
        Err(e) => panic!("want Error::Cuda, got {e}"),
        Ok(_) => panic!("cuda:7 opened"),
    }
    // Every error is displayed in the library's words: no command-line flag.
    let e = lorafleet::lora::LoraAdapter::load("big", &adapter_dir().join("b_r16_qv_rslora"), &c, 8).unwrap_err().to_string();
    assert!(e.contains("option `max_rank`") && !e.contains("--"), "{e}");
    assert!(lorafleet::cli_flags::with_flag_names(&e).contains("--max-lora-rank"));
}

#[test]
fn stats_count_a_request_the_moment_submit_returns() {
    let engine = builder().build().expect("build");
    let h = engine.submit(greedy_request(vec![1, 2, 3], None, 1000)).unwrap();
    let s = engine.stats();
    assert_eq!(s.queued + s.running, 1, "{s:?}");
    h.cancel();
    assert!(matches!(h.wait(), Err(Error::Cancelled)));
    let s = engine.stats();
    assert_eq!(s.queued + s.running, 0, "{s:?}");
    assert_eq!(s.requests_cancelled, 1, "{s:?}");
}

#[test]
fn every_stream_ends_with_a_final_event_when_the_engine_stops() {
    let engine = builder().build().expect("build");
    let handles: Vec<RequestHandle> = (0..3).map(|i| engine.submit(greedy_request(vec![1, 2, 3 + i], None, 1000)).unwrap()).collect();
    // Tokens are flowing before the stop.
    let first = handles[0].recv().expect("a first event");
    assert!(matches!(first, Event::Token { .. }), "{first:?}");
    drop(engine);
    for (i, h) in handles.into_iter().enumerate() {
        let mut last = None;
        while let Some(ev) = h.recv() {
            last = Some(ev);
        }
        match last {
            Some(Event::Error(Error::ShuttingDown(_))) => {}
            other => panic!("stream {i}: want a final ShuttingDown error, got {other:?}"),
        }
    }
}

/// A large adapter folder (rank 64 on all seven projections: ~60 MB of f32) that takes the
/// loader a while to read and check.
fn big_adapter_dir(cfg: &lorafleet::model::ModelConfig) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("lorafleet-big-adapter-").tempdir().unwrap();
    LoraAdapter::random("big", cfg, 64, 128.0, &LoraModule::ALL, 5, 0.004).save(&dir.path().join("big")).unwrap();
    dir
}

#[test]
fn other_requests_keep_producing_tokens_while_an_adapter_loads() {
    let engine = Arc::new(builder().allow_adapter_paths(true).max_rank(64).build().expect("build"));
    let big = big_adapter_dir(engine.config());
    // A long base stream, each token's arrival time recorded by a reader thread.
    let h = engine.submit(greedy_request(vec![1, 2, 3], None, 1000)).unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (arrivals, stop) = (arrivals.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let lorafleet::engine::Recv::Event(Event::Token { .. }) = h.recv_timeout(Duration::from_millis(20)) {
                    arrivals.lock().unwrap().push(Instant::now());
                }
            }
        })
    };
    wait_until("the stream flowing", Duration::from_secs(30), || arrivals.lock().unwrap().len() >= 3);
    let t0 = Instant::now();
    engine.load_adapter("big", &big.path().join("big")).expect("load");
    let t1 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let during = arrivals.lock().unwrap().iter().filter(|&&t| t > t0 && t < t1).count();
    let steps = (t1 - t0).as_secs_f64();
    eprintln!("adapter load took {:.0} ms; {during} base tokens arrived meanwhile", steps * 1e3);
    // A blocked engine would deliver at most the one token of the step in flight.
    assert!(during >= 2, "only {during} tokens arrived during a {:.0} ms adapter load", steps * 1e3);
    // The adapter is served once loaded.
    let f = engine.submit(greedy_request(vec![1, 2, 3], Some("big"), 3)).unwrap().wait().expect("on the loaded adapter");
    assert_eq!(f.generated_tokens, 3);
}
