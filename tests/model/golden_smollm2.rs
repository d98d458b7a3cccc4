//! The CPU engine against HF transformers on the real SmolLM2-135M-Instruct: tokenizer ids,
//! argmax at every position, last-position logits (rel L2 < 1e-4), 24 greedy tokens; and the
//! golden prompts run as one ragged batch give what each gives alone. Loaded with bf16 linear
//! weights (`BaseFormat::Bf16`), the last logits match PyTorch with the same weights rounded to
//! bf16 (scripts/golden_bf16_base.py).

use crate::common::*;
use lorafleet::backend::cpu::CpuBackend;
use lorafleet::backend::Backend;
use lorafleet::engine::{score, Generator, SeqRequest};
use lorafleet::kv::{BatchLayout, BlockPool, BlockTable};
use lorafleet::model::{BaseFormat, Llama, LoadOptions};
use lorafleet::weights::WeightFiles;
use lorafleet::TextTokenizer;

struct Fixture {
    be: CpuBackend,
    model: Llama<CpuBackend>,
    tok: TextTokenizer,
    golden: serde_json::Value,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = model_dir();
        let be = CpuBackend::new();
        let model = Llama::load(&be, &dir, false).expect("load model");
        let tok = TextTokenizer::from_dir(&dir).expect("load tokenizer");
        Fixture { be, model, tok, golden: golden_json() }
    })
}

fn prompts() -> Vec<serde_json::Value> {
    fixture().golden["prompts"].as_array().unwrap().clone()
}

#[test]
fn tokenizer_gives_golden_ids() {
    let f = fixture();
    for p in prompts() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(f.tok.encode(text).unwrap(), ids(&p["ids"]), "prompt {text:?}");
        assert_eq!(f.tok.decode(&ids(&p["ids"]), false).unwrap(), text, "round trip");
    }
}

#[test]
fn score_matches_hf_argmax_and_last_logits() {
    let f = fixture();
    let g = golden_tensors();
    for (i, p) in prompts().iter().enumerate() {
        let s = score(&f.model, &f.be, &ids(&p["ids"])).unwrap();
        assert_eq!(s.argmax, ids(&p["base_argmax"]), "prompt {i}: argmax");
        let want = g.f32(&format!("base.p{i}.last_logits")).unwrap().data;
        let err = rel_l2(&s.last_logits, &want);
        eprintln!("prompt {i}: last-logits rel L2 {err:.3e}");
        assert!(err < 1e-4, "prompt {i}: rel L2 {err}");
        assert_eq!(s.top_logits.len(), 20);
        assert!(s.perplexity.is_some_and(|x| x.is_finite() && x > 1.0));
    }
}

#[test]
fn bf16_base_matches_pytorch_with_rounded_weights() {
    let f = fixture();
    let model = Llama::load_with(&f.be, &model_dir(), LoadOptions { format: BaseFormat::Bf16, ..LoadOptions::default() }).expect("load as bf16");
    let p = &prompts()[0];
    let s = score(&model, &f.be, &ids(&p["ids"])).unwrap();
    let want = WeightFiles::open_files(&[golden_dir().join("bf16base_train.safetensors")]).unwrap();
    let want = want.f32("bf16base.p0.last_logits").unwrap().data;
    let f32_logits = golden_tensors().f32("base.p0.last_logits").unwrap().data;
    let (err, moved) = (rel_l2(&s.last_logits, &want), rel_l2(&want, &f32_logits));
    eprintln!("bf16 base, prompt 0: last-logits rel L2 {err:.3e} from PyTorch's; the rounding moved them {moved:.3e} from f32");
    assert!(moved > 1e-3, "the reference did not round: {moved}");
    assert!(err < 1e-4, "rel L2 {err}");
}

#[test]
fn greedy24_matches_hf() {
    let f = fixture();
    let g = Generator::new(&f.model, &f.be, &f.tok);
    for (i, p) in prompts().iter().enumerate() {
        let opts = greedy(24);
        let out = g.generate(&[SeqRequest { prompt_ids: ids(&p["ids"]), options: opts }], |_, _| {}).unwrap();
        let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(out[0].token_ids.len(), 24);
        assert_greedy_matches(&out[0].token_ids, &ids(&p["base_greedy24"]), &floats(&p["base_greedy24_gap"]), &format!("prompt {i}"));
    }
}

/// The three golden prompts in one ragged batch: each sequence's greedy tokens and logits equal
/// what it gives alone (logits within 1e-5 rel L2).
#[test]
fn ragged_batch_equals_each_prompt_alone() {
    let f = fixture();
    let all: Vec<Vec<u32>> = prompts().iter().map(|p| ids(&p["ids"])).collect();
    let g = Generator::new(&f.model, &f.be, &f.tok);
    let opts = greedy(24);
    let reqs: Vec<SeqRequest> = all.iter().map(|p| SeqRequest { prompt_ids: p.clone(), options: opts.clone() }).collect();
    let batched: Vec<_> = g.generate(&reqs, |_, _| {}).unwrap().into_iter().map(Result::unwrap).collect();
    for (i, r) in reqs.iter().enumerate() {
        let alone = g.generate(std::slice::from_ref(r), |_, _| {}).unwrap().remove(0).unwrap();
        assert_eq!(batched[i].token_ids, alone.token_ids, "prompt {i}");
        let p = &prompts()[i];
        assert_greedy_matches(&batched[i].token_ids, &ids(&p["base_greedy24"]), &floats(&p["base_greedy24_gap"]), &format!("batched prompt {i}"));
    }
    // Logits: one prefill step over all prompts vs each prompt's own prefill.
    let pool = BlockPool::new(64, 16);
    let layout = f.model.kv_layout(16, pool.num_blocks());
    let mut kv = f.be.alloc_kv(layout).unwrap();
    let mut tables: Vec<BlockTable> = all.iter().map(|_| BlockTable::new(&pool)).collect();
    for (t, p) in tables.iter_mut().zip(&all) {
        t.reserve(p.len()).unwrap();
    }
    let parts: Vec<(&BlockTable, usize)> = tables.iter().zip(&all).map(|(t, p)| (t, p.len())).collect();
    let batch = BatchLayout::new(16, &parts);
    let flat: Vec<u32> = all.concat();
    let v = f.model.config.vocab_size;
    let logits = f.be.to_host(&f.model.forward(&f.be, &flat, &batch, &mut kv, &batch.last_rows()).unwrap()).unwrap();
    let g = golden_tensors();
    for (i, p) in all.iter().enumerate() {
        let alone = score(&f.model, &f.be, p).unwrap().last_logits;
        let err = rel_l2(&logits[i * v..(i + 1) * v], &alone);
        assert!(err < 1e-5, "prompt {i}: batched vs alone rel L2 {err}");
        let gold = g.f32(&format!("base.p{i}.last_logits")).unwrap().data;
        assert!(rel_l2(&logits[i * v..(i + 1) * v], &gold) < 1e-4);
    }
}

/// A context spanning many blocks, decoded token by token through the pages, gives the same
/// logits as one prefill over the whole sequence.
#[test]
fn long_context_across_many_blocks() {
    let f = fixture();
    let base = ids(&prompts()[1]["ids"]);
    let seq: Vec<u32> = base.iter().cycle().take(150).copied().collect(); // 10 blocks of 16 (block size 4 below: 38)
    let pool = BlockPool::new(64, 4);
    let mut kv = f.be.alloc_kv(f.model.kv_layout(4, pool.num_blocks())).unwrap();
    let mut t = BlockTable::new(&pool);
    // Prefill 100 tokens, then decode the remaining 50 one at a time.
    t.reserve(100).unwrap();
    let b = BatchLayout::new(4, &[(&t, 100)]);
    f.model.forward(&f.be, &seq[..100], &b, &mut kv, &[99]).unwrap();
    t.advance(100);
    let mut last = Vec::new();
    for &tok in &seq[100..] {
        t.reserve(1).unwrap();
        let b = BatchLayout::new(4, &[(&t, 1)]);
        last = f.be.to_host(&f.model.forward(&f.be, &[tok], &b, &mut kv, &[0]).unwrap()).unwrap();
        t.advance(1);
    }
    assert_eq!(t.blocks().len(), 38);
    let whole = score(&f.model, &f.be, &seq).unwrap().last_logits;
    let err = rel_l2(&last, &whole);
    assert!(err < 1e-5, "paged decode vs full prefill: rel L2 {err}");
}

/// A KV budget too small for the whole batch: the sequences that cannot get blocks fail alone
/// with OutOfBlocks, the others complete with exactly the tokens they give alone.
#[test]
fn cache_exhaustion_fails_only_the_sequence_that_runs_out() {
    let f = fixture();
    let all: Vec<Vec<u32>> = prompts().iter().map(|p| ids(&p["ids"])).collect();
    let opts = greedy(24);
    let reqs: Vec<SeqRequest> = all.iter().map(|p| SeqRequest { prompt_ids: p.clone(), options: opts.clone() }).collect();
    // Bytes per block: 2 (K, V) * 30 layers * 16 tokens * 192 * 4 B = 737,280. Prompt 0 needs
    // 2 blocks (5 + 24 tokens), prompt 1 needs 4 (32 + 24), prompt 2 needs 2 (7 + 24): give 6.
    let layout = f.model.kv_layout(16, 0);
    let g = Generator::new(&f.model, &f.be, &f.tok).with_kv_cache_bytes(Some(6 * layout.bytes_per_block(4)));
    let outs = g.generate(&reqs, |_, _| {}).unwrap();
    let mut ok = 0;
    for (i, o) in outs.iter().enumerate() {
        match o {
            Ok(o) => {
                ok += 1;
                let alone = Generator::new(&f.model, &f.be, &f.tok).generate(&reqs[i..=i], |_, _| {}).unwrap().remove(0).unwrap();
                assert_eq!(o.token_ids, alone.token_ids, "prompt {i} got another sequence's data");
            }
            Err(e) => assert!(matches!(e, lorafleet::Error::Kv(lorafleet::kv::KvError::OutOfBlocks { .. })), "{e}"),
        }
    }
    assert!((1..3).contains(&ok), "{ok} of 3 completed");
    // A budget below one block is a clear error, not a panic.
    let g = Generator::new(&f.model, &f.be, &f.tok).with_kv_cache_bytes(Some(1000));
    assert!(g.generate(&reqs, |_, _| {}).is_err());
}
