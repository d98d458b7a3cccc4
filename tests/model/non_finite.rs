//! Broken numerics never come out as tokens: an adapter whose (finite) weights overflow the
//! activations makes non-finite logits, and its sequence fails with `NonFiniteLogits` while the
//! others in the same batch complete with their own tokens; on the CPU and on the device
//! (the sampling kernel flags the row). Before, the NaN logits decoded as token 0 forever.

use crate::common;

use lorafleet::backend::Backend;
use lorafleet::engine::{GenerateOptions, Generator, SamplingParams, SeqRequest};
use lorafleet::lora::LoadedAdapter;
use lorafleet::model::random::RandomModel;
use lorafleet::model::BaseFormat;
use lorafleet::{Error, TextTokenizer};

fn check<B: Backend>(be: &B, what: &str) {
    let rm = RandomModel::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_shape.json"), 2).unwrap();
    let model = rm.load(be, BaseFormat::F32, false).unwrap();
    let tok = TextTokenizer::from_dir(&common::model_dir()).unwrap();
    // B ~ U(-1e30, 1e30): finite weights, overflowing products.
    let bad = LoadedAdapter::random(be, "overflow", &rm.config, 4, 8.0, 1, 1e30).unwrap();
    let opts = |temperature: f32| GenerateOptions {
        max_new_tokens: 4,
        sampling: SamplingParams { temperature, top_k: 0, top_p: 1.0, seed: 3, penalties: Default::default() },
        stop: vec![],
        ignore_eos: true,
        logprobs: None,
        prompt_logprobs: false,
        constraint: None,
    };
    let reqs: Vec<SeqRequest> = [0.0, 0.0, 0.8, 0.8]
        .iter()
        .enumerate()
        .map(|(i, &t)| SeqRequest { prompt_ids: (0..5).map(|k| 300 + 17 * (i + k) as u32).collect(), options: opts(t) })
        .collect();
    let which = [None, Some(&bad), None, Some(&bad)];
    let g = Generator::new(&model, be, &tok);
    let out = g.generate_with_adapters(&reqs, &which, |_, _| {}).unwrap();
    for (i, o) in out.iter().enumerate() {
        if which[i].is_some() {
            assert!(matches!(o, Err(Error::NonFiniteLogits { step: 0 })), "{what}: sequence {i} must fail on its first token: {o:?}");
        } else {
            let o = o.as_ref().unwrap_or_else(|e| panic!("{what}: sequence {i} failed: {e}"));
            assert_eq!(o.token_ids.len(), 4, "{what}: sequence {i}");
            assert!(o.token_ids.iter().all(|&t| (t as usize) < rm.config.vocab_size), "{what}: {:?}", o.token_ids);
        }
    }
    // Each good sequence's tokens are its tokens alone.
    for i in [0, 2] {
        let solo = g.generate_with_adapters(&reqs[i..=i], &[None], |_, _| {}).unwrap().remove(0).unwrap();
        assert_eq!(solo.token_ids, out[i].as_ref().unwrap().token_ids, "{what}: sequence {i} alone");
    }
}

#[test]
fn non_finite_logits_fail_their_sequence_on_the_cpu() {
    check(&lorafleet::backend::cpu::CpuBackend::new(), "cpu");
}

#[test]
fn non_finite_logits_fail_their_sequence_on_the_device() {
    use lorafleet::backend::cuda::{test_device, CudaBackend, DType};
    let Some(dev) = test_device("non_finite") else { return };
    check(&CudaBackend::with_device(dev, DType::F32).unwrap(), "cuda");
}
