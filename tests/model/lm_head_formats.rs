//! `--lm-head bf16|q8` (`LoadOptions::head`) on the real SmolLM2-135M-Instruct: the logits'
//! error against the goldens (HF transformers for the f32 base, HF + bitsandbytes for the NF4
//! base) and against lorafleet's own f32 head, argmax agreement at every position, and greedy
//! tokens. The bounds are the measured errors with a margin (bench/RESULTS.md has the numbers):
//! a reduced head may be faster, not silently worse. The Q8 head is refused on a backend without
//! it, with a message naming the flag.

use crate::common::*;
use lorafleet::backend::cpu::CpuBackend;
use lorafleet::engine::score;
use lorafleet::model::{BaseFormat, HeadFormat, Llama, LoadOptions};

/// Rel L2 of the last-position logits from the golden, per head format. Measured 2026-12-03 on
/// the three golden prompts: f32 head 1.1e-6 .. 7.3e-6; bf16 7.4e-4 .. 2.9e-3; Q8 1.1e-6 ..
/// 7.3e-6, the same as f32, because this checkpoint's embeddings come from a GGUF whose
/// token_embd is Q8_0 (`fetch-model`): every block is already 127 levels times a scale, and
/// requantizing finds the same codes. So Q8 is held to f32's bound here (a kernel or rounding
/// bug shows at once); on a checkpoint with full-precision embeddings its error is of the order
/// of bf16's (the per-block error bound is tested in `backend::cpu::q8`).
fn bound(head: HeadFormat) -> f64 {
    match head {
        HeadFormat::F32 | HeadFormat::Q8 => 1e-4,
        HeadFormat::Bf16 => 5e-3,
    }
}

struct Measured {
    worst_rel_l2: f64,
    same_argmax: usize,
    positions: usize,
}

fn measure(format: BaseFormat, head: HeadFormat, golden_prefix: &str) -> Measured {
    let be = CpuBackend::new();
    let model = Llama::load_with(&be, &model_dir(), LoadOptions { format, head, ..LoadOptions::default() }).expect("load");
    let g = golden_tensors();
    let golden = golden_json();
    let mut m = Measured { worst_rel_l2: 0.0, same_argmax: 0, positions: 0 };
    for (i, p) in golden["prompts"].as_array().unwrap().iter().enumerate() {
        let s = score(&model, &be, &ids(&p["ids"])).unwrap();
        let want = g.f32(&format!("{golden_prefix}.p{i}.last_logits")).unwrap().data;
        let err = rel_l2(&s.last_logits, &want);
        eprintln!("{format:?} base, {head:?} head, prompt {i}: last-logits rel L2 {err:.3e} from the golden");
        m.worst_rel_l2 = m.worst_rel_l2.max(err);
        let want_argmax = ids(&p[format!("{golden_prefix}_argmax").as_str()]);
        assert_eq!(s.argmax.len(), want_argmax.len());
        m.same_argmax += s.argmax.iter().zip(&want_argmax).filter(|(a, b)| a == b).count();
        m.positions += want_argmax.len();
    }
    eprintln!("{format:?} base, {head:?} head: argmax {}/{} as the golden, worst rel L2 {:.3e}", m.same_argmax, m.positions, m.worst_rel_l2);
    m
}

#[test]
fn reduced_heads_on_the_f32_base_stay_close_to_hf() {
    for head in [HeadFormat::F32, HeadFormat::Bf16, HeadFormat::Q8] {
        let m = measure(BaseFormat::F32, head, "base");
        assert!(m.worst_rel_l2 < bound(head), "{head:?}: rel L2 {} (bound {})", m.worst_rel_l2, bound(head));
        assert_eq!(m.same_argmax, m.positions, "{head:?}: argmax as HF's at every position");
    }
}

#[test]
fn q8_head_on_the_nf4_base_stays_close_to_bitsandbytes() {
    // The NF4 base alone is within 2e-6 of bitsandbytes (tests/model/nf4_model.rs): what is measured
    // here is the Q8 head's own error.
    let m = measure(BaseFormat::Nf4, HeadFormat::Q8, "nf4base");
    assert!(m.worst_rel_l2 < bound(HeadFormat::Q8), "rel L2 {}", m.worst_rel_l2);
    assert_eq!(m.same_argmax, m.positions, "argmax as bitsandbytes' at every position");
}

#[test]
fn q8_head_greedy_tokens_match_hf_where_the_margin_is_clear() {
    use lorafleet::engine::{Generator, SeqRequest};
    let be = CpuBackend::new();
    let model = Llama::load_with(&be, &model_dir(), LoadOptions { head: HeadFormat::Q8, ..LoadOptions::default() }).expect("load");
    let tok = lorafleet::TextTokenizer::from_dir(&model_dir()).unwrap();
    let g = Generator::new(&model, &be, &tok);
    let golden = golden_json();
    for (i, p) in golden["prompts"].as_array().unwrap().iter().enumerate() {
        let opts = greedy(24);
        let out = g.generate(&[SeqRequest { prompt_ids: ids(&p["ids"]), options: opts }], |_, _| {}).unwrap().remove(0).unwrap();
        // As golden_smollm2's greedy test: up to the first step whose top-2 gap in HF is a tie.
        assert_greedy_matches(&out.token_ids, &ids(&p["base_greedy24"]), &floats(&p["base_greedy24_gap"]), &format!("Q8 head, prompt {i}"));
    }
}

#[test]
fn q8_head_is_a_cpu_format() {
    // The default `upload_head` (every backend but the CPU's) refuses Q8 with a message naming
    // the flag, at load.
    let m = lorafleet::backend::HostMatrix { name: "lm_head.weight".into(), rows: 2, cols: 4, data: vec![0.5; 8] };
    let err = lorafleet::backend::upload_head_default(&CpuBackend::new(), m, HeadFormat::Q8).err().expect("refused");
    assert!(err.to_string().contains("option `lm_head` q8"), "{err}");
    assert!("q9".parse::<HeadFormat>().is_err());
    assert_eq!("BF16".parse::<HeadFormat>(), Ok(HeadFormat::Bf16));
}
