//! The tiered adapter cache: a device budget that holds 2 adapters serving requests for 5 in
//! turn; LRU eviction among unpinned adapters; a pinned adapter is never evicted; memory back
//! to the baseline after unloading; loads in the background; unknown and broken adapters fail
//! alone.

use std::sync::Arc;

use crate::common::*;
use lorafleet::backend::cpu::CpuBackend;
use lorafleet::engine::score_with_adapter;
use lorafleet::lora::{AdapterCache, AdapterStatus, CacheOptions, LoadedAdapter, LoraAdapter, LoraModule};
use lorafleet::model::Llama;
use lorafleet::Error;

struct Fixture {
    be: Arc<CpuBackend>,
    model: Llama<CpuBackend>,
    dir: std::path::PathBuf,
    /// Device bytes of one of the random adapters.
    bytes: usize,
}

const IDS: [&str; 5] = ["t0", "t1", "t2", "t3", "t4"];

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let be = Arc::new(CpuBackend::new());
        let model = Llama::load(&*be, &model_dir(), false).expect("load model");
        let dir = std::env::temp_dir().join(format!("lorafleet-cache-test-{}", std::process::id()));
        let mut bytes = 0;
        for (i, id) in IDS.iter().enumerate() {
            // b_scale 0.05: large enough that each adapter visibly moves the logits.
            let a = LoraAdapter::random(id, &model.config, 8, 16.0, &[LoraModule::Q, LoraModule::V, LoraModule::Down], 100 + i as u64, 0.05);
            bytes = a.weight_bytes();
            a.save(&dir.join(id)).expect("save adapter");
        }
        Fixture { be, model, dir, bytes }
    })
}

fn cache(budget_adapters: usize, max_host: usize) -> AdapterCache<CpuBackend> {
    let f = fixture();
    let opts = CacheOptions {
        adapter_dir: Some(f.dir.clone()),
        max_host_adapters: max_host,
        device_budget_bytes: budget_adapters * f.bytes,
        max_rank: 64,
        allow_paths: true,
        synthetic: None,
    };
    AdapterCache::new(f.be.clone(), f.model.config.clone(), opts)
}

fn last_logits(a: &LoadedAdapter<CpuBackend>) -> Vec<f32> {
    let f = fixture();
    score_with_adapter(&f.model, &f.be, &[504, 3575, 282, 4649, 314], Some(a)).unwrap().last_logits
}

#[test]
fn lists_adapters_and_rejects_unknown_ids() {
    let mut c = cache(2, 4);
    assert_eq!(c.available(), IDS);
    for bad in ["nope", "../t0", "", "t0/.."] {
        assert!(matches!(c.request(bad), Err(Error::UnknownAdapter(_))), "{bad:?}");
    }
    // A path is an id too.
    let p = fixture().dir.join("t3");
    assert!(c.get_blocking(p.to_str().unwrap()).is_ok());
}

#[test]
fn budget_of_two_serves_five_in_turn_with_lru_eviction() {
    let f = fixture();
    let mut c = cache(2, 5);
    // Reference logits from adapters loaded directly, without the cache.
    let want: Vec<Vec<f32>> = IDS
        .iter()
        .map(|id| {
            let a = LoraAdapter::load(id, &f.dir.join(id), &f.model.config, 64).unwrap();
            last_logits(&LoadedAdapter::upload(&*f.be, &a).unwrap())
        })
        .collect();
    assert!(rel_l2(&want[0], &want[1]) > 1e-3, "adapters too similar to tell apart");
    // Two rounds over five adapters, each request scored while it holds its pin.
    for round in 0..2 {
        for (i, id) in IDS.iter().enumerate() {
            let a = c.get_blocking(id).unwrap();
            assert_eq!(last_logits(&a), want[i], "round {round} adapter {id}");
            let s = c.stats();
            assert!(s.device_bytes <= 2 * f.bytes, "over budget: {s:?}");
        }
    }
    let s = c.stats();
    assert_eq!(s.device_loads, 10, "every request after the second one loads again: {s:?}");
    assert_eq!(s.disk_loads, 5, "the second round comes from host memory: {s:?}");
    assert_eq!(s.device_evictions, 8);
    // LRU: t3 and t4 are resident; touching t3 then loading t0 evicts t4, not t3.
    assert_eq!(c.resident().iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["t3", "t4"]);
    drop(c.get_blocking("t3").unwrap());
    drop(c.get_blocking("t0").unwrap());
    assert_eq!(c.resident().iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["t0", "t3"]);
}

#[test]
fn pinned_adapters_are_never_evicted_and_memory_returns_to_baseline() {
    let mut c = cache(2, 1);
    let baseline = c.stats();
    let a0 = c.get_blocking("t0").unwrap();
    let a1 = c.get_blocking("t1").unwrap();
    let weak0 = Arc::downgrade(&a0);
    // Both slots pinned: t2 waits (Loading, no load started) instead of evicting.
    assert!(matches!(c.request("t2").unwrap(), AdapterStatus::Loading));
    assert!(matches!(c.request("t2").unwrap(), AdapterStatus::Loading));
    assert_eq!(c.stats().device_loads, 2);
    assert!(c.get_blocking("t2").is_err(), "no room while both are pinned");
    // Unpin t0: now t2 evicts it (t1 stays pinned).
    drop(a0);
    let a2 = c.get_blocking("t2").unwrap();
    assert!(weak0.upgrade().is_none(), "t0's device copy was freed");
    assert_eq!(c.resident().iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["t1", "t2"]);
    // max_host_adapters = 1 keeps only the latest parsed adapter.
    assert_eq!(c.stats().host_resident, 1);
    drop((a1, a2));
    assert_eq!(c.unload_unused(), 2);
    let s = c.stats();
    assert_eq!((s.device_resident, s.device_bytes, s.host_resident, s.host_bytes), (0, 0, 0, 0));
    assert_eq!((baseline.device_bytes, baseline.host_bytes), (0, 0));
}

#[test]
fn loads_in_the_background() {
    let mut c = cache(5, 5);
    // The first request starts a load and returns at once.
    assert!(matches!(c.request("t4").unwrap(), AdapterStatus::Loading));
    let t0 = std::time::Instant::now();
    loop {
        match c.request("t4").unwrap() {
            AdapterStatus::Ready(a) => {
                assert_eq!(a.id, "t4");
                break;
            }
            AdapterStatus::Loading => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
        assert!(t0.elapsed().as_secs() < 60, "load never finished");
    }
}

#[test]
fn a_broken_adapter_fails_alone() {
    let f = fixture();
    let dir = std::env::temp_dir().join(format!("lorafleet-cache-broken-{}", std::process::id()));
    for id in ["good", "broken"] {
        let src = f.dir.join("t0");
        std::fs::create_dir_all(dir.join(id)).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(src.join(file), dir.join(id).join(file)).unwrap();
        }
    }
    // Truncate the broken one's weights.
    let w = dir.join("broken/adapter_model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&w).unwrap().set_len(len / 2).unwrap();
    let opts = CacheOptions {
        adapter_dir: Some(dir.clone()),
        max_host_adapters: 4,
        device_budget_bytes: 4 * f.bytes,
        max_rank: 64,
        allow_paths: true,
        synthetic: None,
    };
    let mut c = AdapterCache::new(f.be.clone(), f.model.config.clone(), opts);
    let err = c.get_blocking("broken").err().expect("broken adapter loaded");
    assert!(err.to_string().contains("broken"), "{err}");
    assert!(c.get_blocking("good").is_ok());
    assert_eq!(c.stats().device_bytes, f.bytes, "the failed load released its reservation");
    // Rank above the configured maximum is refused too.
    let opts = CacheOptions {
        adapter_dir: Some(dir.clone()),
        max_host_adapters: 4,
        device_budget_bytes: 4 * f.bytes,
        max_rank: 4,
        allow_paths: true,
        synthetic: None,
    };
    let mut c = AdapterCache::new(f.be.clone(), f.model.config.clone(), opts);
    assert!(c.get_blocking("good").unwrap_err().to_string().contains("maximum"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `synthetic-I` adapters are made by the cache on the backend (no files): listed after the
/// folders, seeded (the same id gives the same adapter), distinct ids differ, each moves the
/// logits, ids outside 0..count (or not in canonical form) are unknown, and their bytes count
/// against the budget like any other.
#[test]
fn synthetic_adapters_are_made_on_the_backend() {
    use lorafleet::lora::SyntheticAdapters;
    let f = fixture();
    let synthetic = Some(SyntheticAdapters { count: 3, rank: 4, seed: 9 });
    let opts =
        CacheOptions { adapter_dir: Some(f.dir.clone()), max_host_adapters: 4, device_budget_bytes: 1 << 30, max_rank: 64, allow_paths: true, synthetic };
    let mut c = AdapterCache::new(f.be.clone(), f.model.config.clone(), opts.clone());
    let listed = c.available();
    assert_eq!(&listed[listed.len() - 3..], ["synthetic-0", "synthetic-1", "synthetic-2"]);
    for bad in ["synthetic-3", "synthetic-01", "synthetic-", "synthetic--1"] {
        assert!(matches!(c.request(bad), Err(Error::UnknownAdapter(_))), "{bad:?}");
    }
    let a = c.get_blocking("synthetic-1").unwrap();
    let b = c.get_blocking("synthetic-2").unwrap();
    assert_eq!((a.max_rank, a.layers.len()), (4, f.model.config.num_layers));
    assert!(a.layers.iter().all(|l| l.iter().all(|p| p.as_ref().is_some_and(|p| p.rank == 4))), "all seven projections");
    let base = score_with_adapter(&f.model, &f.be, &[504, 3575, 282, 4649, 314], None).unwrap().last_logits;
    let (la, lb) = (last_logits(&a), last_logits(&b));
    assert!(la != base && la != lb, "each synthetic adapter moves the logits its own way");
    // Another cache, the same seed: the same adapter.
    let mut c2 = AdapterCache::new(f.be.clone(), f.model.config.clone(), opts);
    assert_eq!(last_logits(&c2.get_blocking("synthetic-1").unwrap()), la);
    // Budget: the bytes of one, then a budget too small for one is refused with the reason.
    let one = a.bytes;
    let small = CacheOptions { device_budget_bytes: one - 1, allow_paths: true, synthetic, ..CacheOptions::default() };
    let mut c3 = AdapterCache::new(f.be.clone(), f.model.config.clone(), small);
    let e = c3.request("synthetic-0").err().expect("over the budget").to_string();
    assert!(e.contains("adapter memory"), "{e}");
}

/// Train -> serve: a folder rewritten with a new version of its adapter (as the trainer's
/// `LoraAdapter::save` writes it) is read again by the next request; a request that still holds
/// the old version keeps it (counted against the budget until it lets go); a folder that is gone
/// is an unknown adapter.
#[test]
fn a_rewritten_adapter_folder_is_reloaded() {
    let f = fixture();
    let tmp = tempfile::Builder::new().prefix("lorafleet-cache-rewrite-").tempdir().unwrap();
    let version = |seed: u64| LoraAdapter::random("x", &f.model.config, 8, 16.0, &[LoraModule::Q, LoraModule::V, LoraModule::Down], seed, 0.05);
    let want = |a: &LoraAdapter| last_logits(&LoadedAdapter::upload(&*f.be, a).unwrap());
    let (v1, v2) = (version(501), version(502));
    v1.save(&tmp.path().join("x")).unwrap();
    let opts = CacheOptions {
        adapter_dir: Some(tmp.path().to_path_buf()),
        max_host_adapters: 4,
        device_budget_bytes: 4 * f.bytes,
        max_rank: 64,
        allow_paths: false,
        synthetic: None,
    };
    let mut c = AdapterCache::new(f.be.clone(), f.model.config.clone(), opts);
    let old = c.get_blocking("x").unwrap();
    assert!(rel_l2(&last_logits(&old), &want(&v1)) < 1e-6);
    // Unchanged: the same resident copy.
    assert!(Arc::ptr_eq(&old, &c.get_blocking("x").unwrap()));
    std::thread::sleep(std::time::Duration::from_millis(20));
    v2.save(&tmp.path().join("x")).unwrap();
    let new = c.get_blocking("x").unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    let (got_old, got_new) = (last_logits(&old), last_logits(&new));
    assert!(rel_l2(&got_new, &want(&v2)) < 1e-6, "the new version is served");
    assert!(rel_l2(&got_old, &want(&v1)) < 1e-6 && rel_l2(&got_old, &got_new) > 1e-3, "the holder keeps the old one");
    assert_eq!(c.stats().device_bytes, old.bytes + new.bytes, "the held old copy still counts");
    drop(old);
    c.poll();
    assert_eq!(c.stats().device_bytes, new.bytes);
    drop(new);
    std::fs::remove_dir_all(tmp.path().join("x")).unwrap();
    assert!(matches!(c.request("x"), Err(Error::UnknownAdapter(_))));
    assert_eq!(c.stats().device_bytes, 0);
}
