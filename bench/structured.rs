//! Structured output's host cost per token (`constrain`): compiling a JSON schema, the parser
//! step + next mask after each accepted token (replaying a fixed valid output through
//! llguidance over SmolLM2's 49k-token vocabulary), and a greedy draw from a masked row beside
//! an unmasked one (the mask applied to a copy of the row, then the same sampling rule).
//!
//! `Throughput::Elements` = tokens, so the report reads as tokens/s: compare its inverse with
//! a decode step (bench/RESULTS.md, "Structured output"). Needs the fetched SmolLM2
//! (`lorafleet fetch-model smollm2-135m-instruct`); without it the bench says so and measures
//! nothing.
//!
//! `cargo bench --bench structured`; `cargo bench --bench structured -- --test` runs each once.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lorafleet::backend::sampler::{Sampler, SamplingParams, TokenMask};
use lorafleet::constrain::{Constraint, ConstraintCompiler, ConstraintState};
use lorafleet::TextTokenizer;

fn bench(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m-instruct");
    let Ok(tok) = TextTokenizer::from_dir(&dir) else {
        eprintln!("SKIPPED: no model at {} (lorafleet fetch-model smollm2-135m-instruct)", dir.display());
        return;
    };
    let tok = Arc::new(tok);
    let vocab = 49152;
    let eos: Vec<u32> = ["<|im_end|>", "<|endoftext|>"].iter().filter_map(|t| tok.token_to_id(t)).collect();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "items": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 12}
        },
        "required": ["name", "age", "items"],
        "additionalProperties": false
    });
    let output = r#"{"name": "Ada Lovelace", "age": 36, "items": ["apple", "banana", "cherry", "plum", "grape", "kiwi", "mango", "pear"]}"#;
    let tokens = tok.encode(output).expect("encode");
    let t0 = std::time::Instant::now();
    let compiler = ConstraintCompiler::new(tok.clone(), vocab, &eos).expect("compiler");
    eprintln!("token trie + parser factory for {vocab} tokens: {:.0} ms (once per engine)", t0.elapsed().as_secs_f64() * 1e3);
    let spec = Constraint::JsonSchema(schema);
    let fresh = compiler.compile(&spec).expect("compile");

    let mut g = c.benchmark_group("structured");
    g.bench_function("compile_schema", |b| b.iter(|| compiler.compile(black_box(&spec)).expect("compile")));
    g.throughput(Throughput::Elements(tokens.len() as u64));
    g.bench_function("commit_and_next_mask_per_token", |b| {
        b.iter(|| {
            let mut s = fresh.clone();
            let (last, body) = tokens.split_last().expect("tokens");
            for &t in body {
                assert_eq!(s.commit(t), &ConstraintState::Open, "the replayed output is valid");
            }
            // The closing brace completes the object.
            assert_eq!(s.commit(*last), &ConstraintState::Complete);
            s
        })
    });
    // A draw from a 49152-wide row: plain, then masked (the mask allows ~1/3 of the tokens).
    let row: Vec<f32> = (0..vocab).map(|i| ((i * 7919) % 1013) as f32 * 0.01 - 5.0).collect();
    let allowed: Vec<u32> = (0..vocab as u32).filter(|t| t % 3 == 0).collect();
    let mask = TokenMask::only(&allowed, vocab);
    g.throughput(Throughput::Elements(1));
    g.bench_function("greedy_draw_plain", |b| {
        let mut s = Sampler::new(SamplingParams::greedy());
        b.iter(|| s.sample(black_box(&row)))
    });
    g.bench_function("greedy_draw_masked", |b| {
        let mut s = Sampler::new(SamplingParams::greedy());
        s.set_mask(Some(mask.clone()));
        b.iter(|| s.sample(black_box(&row)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
