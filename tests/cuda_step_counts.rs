//! One forward step on the CUDA backend uploads its metadata once, downloads only the sampled ids
//! (sampling runs on the device) and, once its buffers have grown to the batch sizes in use,
//! allocates nothing: counted on the emulated driver, which
//! counts every host-to-device copy and every allocation (one test per binary, since the counters
//! are the process's). Skips on a real GPU (the driver's counters are the emulator's).

mod common;

use common::tiny_config;
use lorafleet::backend::cuda::{emu, test_device, tests_on_emulator, CudaBackend, DType};
use lorafleet::backend::Backend;
use lorafleet::engine::{Sampler, SamplingParams};
use lorafleet::kv::{BatchLayout, BlockPool, BlockTable};
use lorafleet::lora::{LoadedAdapter, LoraAdapter, LoraModule};
use lorafleet::model::random::RandomWeights;
use lorafleet::model::Llama;

#[test]
fn a_decode_step_uploads_once_and_allocates_nothing() {
    let Some(ops) = test_device("cuda_step_counts") else { return };
    if !tests_on_emulator() {
        eprintln!("SKIP cuda_step_counts: the copy and allocation counters are the emulated driver's");
        return;
    }
    let be = CudaBackend::with_device(ops, DType::F32).unwrap();
    let cfg = tiny_config(true, false);
    let model = Llama::from_source(&be, cfg.clone(), &RandomWeights { seed: 5, nf4: true }, false).unwrap();
    let ad = LoadedAdapter::upload(&be, &LoraAdapter::random("a", &cfg, 8, 16.0, &LoraModule::ALL, 3, 0.2)).unwrap();
    let pool = BlockPool::new(32, 16);
    let mut kv = be.alloc_kv(model.kv_layout(16, pool.num_blocks())).unwrap();
    let mut tables: Vec<BlockTable> = (0..3).map(|_| BlockTable::new(&pool)).collect();
    let adapters = [None, Some(&ad), Some(&ad)];
    let mut step = |news: &[usize], ids: &[u32]| -> (emu::Counters, emu::Counters) {
        for (t, &n) in tables.iter_mut().zip(news) {
            t.reserve(n).unwrap();
        }
        let parts: Vec<(&BlockTable, usize)> = tables.iter().zip(news.iter().copied()).collect();
        let batch = BatchLayout::new(16, &parts);
        let mut samplers: Vec<Sampler> = (0..3)
            .map(|i| {
                Sampler::new(SamplingParams { temperature: if i == 1 { 0.8 } else { 0.0 }, top_k: 20, top_p: 0.9, seed: 7, penalties: Default::default() })
            })
            .collect();
        let mut refs: Vec<&mut Sampler> = samplers.iter_mut().collect();
        let before = emu::counters().unwrap();
        let next = model.forward_sample(&be, ids, &batch, &mut kv, &batch.last_rows(), &adapters, &mut refs).unwrap();
        let after = emu::counters().unwrap();
        assert!(next.iter().all(|&t| t < 97));
        for (t, &n) in tables.iter_mut().zip(news) {
            t.advance(n);
        }
        (before, after)
    };
    // Prefill, then decode steps (three sequences, one token each).
    let (b, a) = step(&[5, 9, 2], &(0..16).map(|i| (i * 7 + 3) % 97).collect::<Vec<u32>>());
    eprintln!("prefill: {} uploads, {} allocations, {} launches", a.htod - b.htod, a.allocs - b.allocs, a.launches - b.launches);
    assert_eq!(a.htod - b.htod, 1, "the prefill uploads its metadata once");
    assert_eq!(a.dtoh - b.dtoh, 1, "the prefill downloads its sampled ids once");
    for i in 0..6 {
        let (b, a) = step(&[1, 1, 1], &[10 + i, 20 + i, 30 + i]);
        let (uploads, allocs, launches) = (a.htod - b.htod, a.allocs - b.allocs, a.launches - b.launches);
        eprintln!("decode {i}: {uploads} uploads ({} bytes), {allocs} allocations, {launches} launches", a.htod_bytes - b.htod_bytes);
        assert_eq!(uploads, 1, "decode step {i}: one metadata upload");
        assert_eq!(a.dtoh - b.dtoh, 1, "decode step {i}: one download, the sampled ids");
        if i >= 1 {
            // The first decode step may grow the pool for its new (smaller) tensor sizes.
            assert_eq!(allocs, 0, "decode step {i}: no allocation once warm");
        }
    }
}
