//! LoRA adapters against HF transformers + peft on the real SmolLM2-135M-Instruct, with the
//! golden adapters `a_r8_all` (r 8, all seven projections) and `b_r16_qv_rslora` (r 16, q/v,
//! rsLoRA): last-position logits (rel L2 < 1e-4), 24 greedy tokens; one batch mixing the base
//! and both adapters gives every sequence what it gives alone; bad adapters fail with a reason.

use crate::common::*;
use lorafleet::backend::cpu::CpuBackend;
use lorafleet::engine::{score_with_adapter, Generator, SeqRequest};
use lorafleet::lora::{LoadedAdapter, LoraAdapter, LoraModule};
use lorafleet::model::Llama;
use lorafleet::{Error, TextTokenizer};

const ADAPTERS: [&str; 2] = ["a_r8_all", "b_r16_qv_rslora"];

struct Fixture {
    be: CpuBackend,
    model: Llama<CpuBackend>,
    tok: TextTokenizer,
    golden: serde_json::Value,
    adapters: Vec<LoadedAdapter<CpuBackend>>,
}

fn adapter_dir(name: &str) -> std::path::PathBuf {
    golden_dir().join("adapters").join(name)
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = model_dir();
        let be = CpuBackend::new();
        let model = Llama::load(&be, &dir, false).expect("load model");
        let tok = TextTokenizer::from_dir(&dir).expect("load tokenizer");
        let adapters = ADAPTERS
            .iter()
            .map(|n| {
                let a = LoraAdapter::load(n, &adapter_dir(n), &model.config, 128).expect("load adapter");
                LoadedAdapter::upload(&be, &a).expect("upload adapter")
            })
            .collect();
        Fixture { be, model, tok, golden: golden_json(), adapters }
    })
}

fn prompts() -> Vec<serde_json::Value> {
    fixture().golden["prompts"].as_array().unwrap().clone()
}

#[test]
fn adapter_configs_parse_as_peft_wrote_them() {
    let f = fixture();
    let a = LoraAdapter::load("a", &adapter_dir("a_r8_all"), &f.model.config, 128).unwrap();
    assert_eq!(a.pairs().count(), 7 * f.model.config.num_layers);
    assert_eq!(a.config.rank_and_scale(0, LoraModule::Q), (8, 2.0));
    let b = LoraAdapter::load("b", &adapter_dir("b_r16_qv_rslora"), &f.model.config, 128).unwrap();
    assert_eq!(b.pairs().count(), 2 * f.model.config.num_layers);
    // rsLoRA: alpha / sqrt(r) = 32 / 4.
    assert_eq!(b.config.rank_and_scale(5, LoraModule::V), (16, 8.0));
    assert!(b.layers[0][LoraModule::K.index()].is_none());
}

#[test]
fn score_matches_peft_last_logits_and_argmax() {
    let f = fixture();
    let g = golden_tensors();
    for (ai, name) in ADAPTERS.iter().enumerate() {
        for (i, p) in prompts().iter().enumerate() {
            let s = score_with_adapter(&f.model, &f.be, &ids(&p["ids"]), Some(&f.adapters[ai])).unwrap();
            assert_eq!(s.argmax, ids(&p[format!("{name}_argmax")]), "{name} prompt {i}: argmax");
            let want = g.f32(&format!("{name}.p{i}.last_logits")).unwrap().data;
            let base = g.f32(&format!("base.p{i}.last_logits")).unwrap().data;
            let err = rel_l2(&s.last_logits, &want);
            // The adapter must matter: otherwise matching the golden would prove nothing.
            let shift = rel_l2(&base, &want);
            eprintln!("{name} prompt {i}: last-logits rel L2 {err:.3e} (adapter moves logits by {shift:.3e})");
            assert!(err < 1e-4, "{name} prompt {i}: rel L2 {err}");
            assert!(shift > 100.0 * err, "{name} prompt {i}: adapter effect {shift} too small to test");
        }
    }
}

#[test]
fn greedy24_matches_peft() {
    let f = fixture();
    let g = Generator::new(&f.model, &f.be, &f.tok);
    for (ai, name) in ADAPTERS.iter().enumerate() {
        for (i, p) in prompts().iter().enumerate() {
            let opts = greedy(24);
            let req = SeqRequest { prompt_ids: ids(&p["ids"]), options: opts };
            let out = g.generate_with_adapters(&[req], &[Some(&f.adapters[ai])], |_, _| {}).unwrap();
            let out = out.into_iter().next().unwrap().unwrap();
            assert_greedy_matches(
                &out.token_ids,
                &ids(&p[format!("{name}_greedy24")]),
                &floats(&p[format!("{name}_greedy24_gap")]),
                &format!("{name} prompt {i}"),
            );
        }
    }
}

/// Every golden prompt under the base and under each adapter, nine sequences in one batch,
/// interleaved so adapters are not contiguous in request order: each gives its tokens alone.
#[test]
fn mixed_adapter_batch_equals_each_alone() {
    let f = fixture();
    let g = Generator::new(&f.model, &f.be, &f.tok);
    let opts = greedy(12);
    let mut reqs = Vec::new();
    let mut which: Vec<Option<&LoadedAdapter<CpuBackend>>> = Vec::new();
    for p in prompts() {
        for a in [None, Some(&f.adapters[0]), Some(&f.adapters[1])] {
            reqs.push(SeqRequest { prompt_ids: ids(&p["ids"]), options: opts.clone() });
            which.push(a);
        }
    }
    let batched = g.generate_with_adapters(&reqs, &which, |_, _| {}).unwrap();
    let mut distinct = std::collections::HashSet::new();
    for (i, (r, a)) in reqs.iter().zip(&which).enumerate() {
        let alone = g.generate_with_adapters(std::slice::from_ref(r), &[*a], |_, _| {}).unwrap();
        let alone = alone.into_iter().next().unwrap().unwrap();
        let got = batched[i].as_ref().unwrap();
        assert_eq!(got.token_ids, alone.token_ids, "sequence {i} (adapter {:?})", a.map(|a| &a.id));
        distinct.insert(got.token_ids.clone());
    }
    // The adapters change the output of at least one prompt, so the mix is a real test.
    assert!(distinct.len() > prompts().len(), "adapters changed no output");
}

#[test]
fn save_then_load_round_trips() {
    let f = fixture();
    let a = LoraAdapter::load("b", &adapter_dir("b_r16_qv_rslora"), &f.model.config, 128).unwrap();
    let dir_guard = tempfile::Builder::new().prefix("lorafleet-adapter-rt-").tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    a.save(&dir).unwrap();
    let back = LoraAdapter::load("b2", &dir, &f.model.config, 128).unwrap();
    assert_eq!(back.config.rank_and_scale(3, LoraModule::Q), a.config.rank_and_scale(3, LoraModule::Q));
    for ((l1, m1, p1), (l2, m2, p2)) in a.pairs().zip(back.pairs()) {
        assert_eq!((l1, m1), (l2, m2));
        assert_eq!(p1.a.data, p2.a.data);
        assert_eq!(p1.b.data, p2.b.data);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes a copy of `a_r8_all` with its config edited (and, with `transpose_a`, layer 0's
/// q_proj A stored as [in, r]) and expects a load error whose message contains `want`.
fn expect_reject(edit_config: impl Fn(&mut serde_json::Value), transpose_a: bool, max_rank: usize, want: &str) {
    let f = fixture();
    let src = adapter_dir("a_r8_all");
    let dir_guard = tempfile::Builder::new().prefix("lorafleet-bad-adapter-").tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    let mut a = LoraAdapter::load("tmp", &src, &f.model.config, 128).unwrap();
    if transpose_a {
        let p = a.layers[0][LoraModule::Q.index()].as_mut().unwrap();
        (p.a.rows, p.a.cols) = (p.a.cols, p.a.rows);
    }
    a.save(&dir).unwrap();
    // save() writes the adapter's own config; put the edited peft one over it.
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    edit_config(&mut cfg);
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let err = LoraAdapter::load("bad", &dir, &f.model.config, max_rank).err().unwrap_or_else(|| panic!("{want}: loaded"));
    let msg = err.to_string();
    eprintln!("rejected as expected: {msg}");
    assert!(matches!(err, Error::Adapter { .. }), "{want}: {msg}");
    assert!(msg.contains(want), "expected {want:?} in: {msg}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rejects_unsupported_and_mismatched_adapters() {
    expect_reject(|c| c["use_dora"] = true.into(), false, 128, "DoRA");
    expect_reject(|c| c["modules_to_save"] = serde_json::json!(["lm_head"]), false, 128, "modules_to_save");
    expect_reject(|c| c["target_modules"] = serde_json::json!(["q_proj", "embed_tokens"]), false, 128, "embed_tokens");
    expect_reject(|c| c["target_modules"] = serde_json::json!(["q_proj"]), false, 128, "unexpected tensors");
    expect_reject(|_| {}, false, 4, "above the configured maximum");
    expect_reject(|_| {}, true, 128, "another base model");
    // Scales that overflow the activations (lora_alpha 1e30 decoded NaN logits as token 0).
    expect_reject(|c| c["lora_alpha"] = 1e30.into(), false, 128, "lora_alpha = 1000000000000000000000000000000 is outside");
    expect_reject(|c| c["lora_alpha"] = (-16.0).into(), false, 128, "lora_alpha = -16 is outside");
    expect_reject(|c| c["alpha_pattern"] = serde_json::json!({"q_proj": 1e9}), false, 128, "alpha_pattern[q_proj]");
    expect_reject(|c| c["lora_dropout"] = 2.0.into(), false, 128, "lora_dropout = 2 is outside");
    // A directory without adapter files.
    let f = fixture();
    let err = LoraAdapter::load("none", &std::env::temp_dir(), &f.model.config, 128).unwrap_err();
    assert!(err.to_string().contains("not a peft adapter directory"), "{err}");
}

/// On the NF4 base (quantized while loading, double quant), adapter `a_r8_all` gives peft's
/// logits on bitsandbytes' dequantized base within 1e-3 relative L2.
#[test]
fn nf4_base_with_adapter_matches_peft_on_bnb() {
    use lorafleet::model::{BaseFormat, LoadOptions};
    let f = fixture();
    let opts = LoadOptions { format: BaseFormat::Nf4, ..LoadOptions::default() };
    let model = Llama::load_with(&f.be, &model_dir(), opts).expect("load NF4 model");
    let g = golden_tensors();
    for (i, p) in prompts().iter().enumerate() {
        let s = score_with_adapter(&model, &f.be, &ids(&p["ids"]), Some(&f.adapters[0])).unwrap();
        let want = g.f32(&format!("nf4base_a.p{i}.last_logits")).unwrap().data;
        let err = rel_l2(&s.last_logits, &want);
        let shift = rel_l2(&g.f32(&format!("nf4base.p{i}.last_logits")).unwrap().data, &want);
        eprintln!("nf4 base + a_r8_all prompt {i}: last-logits rel L2 {err:.3e} (adapter moves logits by {shift:.3e})");
        assert!(err < 1e-3, "prompt {i}: rel L2 {err}");
        assert!(shift > 10.0 * err, "prompt {i}: adapter effect {shift} too small to test");
    }
}
