//! The tiered adapter cache (LoRAX's dynamic adapter loading with tiered weight caching):
//! adapters live on disk; up to `max_host_adapters` stay parsed in host memory; a byte budget
//! of backend (GPU) memory holds the active ones.
//!
//! The cache is owned by one thread (the engine's). Loads run on a background worker thread,
//! so sequences whose adapters are resident keep running while another adapter loads. The pin
//! on a resident adapter is the `Arc` that `request` hands out: a running sequence holds it, and
//! the cache only evicts (least recently requested first) adapters whose `Arc` nobody else
//! holds, so an adapter in use is never evicted, and dropping the last sequence's `Arc` is what
//! makes it evictable again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam::channel::{unbounded, Receiver, Sender};
use serde::Serialize;

use super::adapter::{LoraAdapter, LoraConfig, LoraModule};
use super::LoadedAdapter;
use crate::backend::Backend;
use crate::types::config::ModelConfig;
use crate::types::Histogram;
use crate::{Error, Result};

/// Where adapters come from and how many stay resident.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Every folder under this directory that holds an `adapter_config.json` is offered by its
    /// folder name. An adapter id may also be a path to an adapter folder.
    pub adapter_dir: Option<PathBuf>,
    /// Parsed adapters kept in host memory (a re-activated adapter then skips the disk).
    pub max_host_adapters: usize,
    /// Bytes of backend memory for resident adapters.
    pub device_budget_bytes: usize,
    /// Largest LoRA rank accepted.
    pub max_rank: usize,
    /// Let an adapter id be a path to an adapter folder anywhere on this machine (the CLI's
    /// `--adapter PATH`). Off for servers unless `--allow-adapter-paths`: a client could
    /// otherwise make the server read any directory.
    pub allow_paths: bool,
    /// Also offer `synthetic-0` .. `synthetic-{count-1}`: seeded random adapters made on the
    /// backend when first requested (`LoadedAdapter::random`), for benchmarks.
    pub synthetic: Option<SyntheticAdapters>,
}

/// `count` random adapters of rank `rank` on all seven projections (alpha = 2 rank), the i-th
/// seeded with `seed + i`, offered as `synthetic-I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticAdapters {
    /// How many (`synthetic-0` ..).
    pub count: usize,
    /// Their rank.
    pub rank: usize,
    /// Seed of the first; the i-th uses `seed + i`.
    pub seed: u64,
}

impl SyntheticAdapters {
    /// The id of the i-th.
    pub fn id(i: usize) -> String {
        format!("synthetic-{i}")
    }

    /// The index `id` names, if it is one of these.
    pub fn index(&self, id: &str) -> Option<usize> {
        let i: usize = id.strip_prefix("synthetic-")?.parse().ok()?;
        (i < self.count && Self::id(i) == id).then_some(i)
    }
}

impl CacheOptions {
    /// The adapter directory, when given, is a readable directory: a missing folder or a file
    /// used to start a server that then offered no adapter and failed every request for one.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(d) = &self.adapter_dir {
            let meta = std::fs::metadata(d).map_err(|e| format!("adapter directory {}: {e}", d.display()))?;
            if !meta.is_dir() {
                return Err(format!("adapter directory {}: not a directory", d.display()));
            }
            std::fs::read_dir(d).map_err(|e| format!("adapter directory {}: cannot be listed: {e}", d.display()))?;
        }
        Ok(())
    }
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { adapter_dir: None, max_host_adapters: 64, device_budget_bytes: 1 << 30, max_rank: 128, allow_paths: false, synthetic: None }
    }
}

/// What `request` found.
pub enum AdapterStatus<B: Backend> {
    /// Resident; the `Arc` pins it until dropped.
    Ready(Arc<LoadedAdapter<B>>),
    /// Being loaded, or waiting for pinned adapters to free room; ask again on a later step.
    Loading,
}

/// Counters for logs, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Adapters resident on the backend.
    pub device_resident: usize,
    /// Bytes of resident adapters plus loads in flight.
    pub device_bytes: usize,
    /// Parsed adapters kept in host memory.
    pub host_resident: usize,
    /// Their bytes.
    pub host_bytes: usize,
    /// Adapters read from disk.
    pub disk_loads: u64,
    /// Uploads to the backend.
    pub device_loads: u64,
    /// Resident adapters evicted for room.
    pub device_evictions: u64,
}

struct Job<B: Backend> {
    id: String,
    source: JobSource,
    _backend: std::marker::PhantomData<B>,
}

enum JobSource {
    /// A PEFT folder; `host` is set when the parsed adapter is already in host memory (only the
    /// upload is left).
    Disk { path: PathBuf, host: Option<Arc<LoraAdapter>> },
    /// `synthetic-I`: made on the backend, never on the host.
    Synthetic { rank: usize, seed: u64 },
}

/// A finished load: the parsed adapter (None for a synthetic one) and its upload.
/// With the seconds the loader spent on it (read, parse and check, upload).
type LoadResult<B> = (String, Result<(Option<Arc<LoraAdapter>>, LoadedAdapter<B>)>, f64);

/// Where a copy of an adapter is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterTier {
    /// On the backend, ready for a step (counted against `device_budget_bytes`).
    Device,
    /// Parsed in host memory (a re-activation skips the disk).
    Host,
}

impl AdapterTier {
    /// "device" or "host" (the metrics' `tier` label).
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterTier::Device => "device",
            AdapterTier::Host => "host",
        }
    }
}

/// One copy of an adapter the cache holds (`AdapterCache::residency`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdapterResidency {
    /// The adapter's id.
    pub adapter: String,
    /// Where the copy is.
    pub tier: AdapterTier,
    /// Its bytes (f32 A and B).
    pub bytes: usize,
    /// It cannot be evicted now: on the device, running sequences hold it; on the host, it was
    /// handed over in memory (`add_start`) and this is its only copy.
    pub pinned: bool,
}

struct Resident<B: Backend> {
    adapter: Arc<LoadedAdapter<B>>,
    last_used: u64,
}

struct HostEntry {
    adapter: Arc<LoraAdapter>,
    last_used: u64,
}

/// The tiered adapter cache (disk, host LRU, backend byte budget): loads on a background thread,
/// adapters in use pinned, least recently used evicted. Owned by the engine thread.
pub struct AdapterCache<B: Backend> {
    opts: CacheOptions,
    model: ModelConfig,
    device: HashMap<String, Resident<B>>,
    /// Loads in flight, with the bytes reserved for each.
    loading: HashMap<String, usize>,
    /// Load failures not yet reported.
    failed: HashMap<String, String>,
    host: HashMap<String, HostEntry>,
    clock: u64,
    stats: CacheStats,
    jobs: Option<Sender<Job<B>>>,
    results: Receiver<LoadResult<B>>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// Names registered at run time (vLLM's `/v1/load_lora_adapter`) and the folders they name.
    aliases: HashMap<String, PathBuf>,
    /// Adapters handed over in memory (`add`): never read from a folder, never dropped from the
    /// host tier (this map is their only source).
    in_memory: HashMap<String, Arc<LoraAdapter>>,
    /// For each adapter read from a folder: its folder and the files' stamp when the load
    /// started. A later request that finds other files there (a trainer wrote a new version)
    /// drops the cached copies and loads the new one; requests already running keep theirs.
    stamps: HashMap<String, (PathBuf, FolderStamp)>,
    /// Device copies of replaced versions still held by running requests: counted against the
    /// budget until the last holder lets go.
    retired: Vec<Arc<LoadedAdapter<B>>>,
    /// Seconds of each successful load on the loader thread (disk or host copy to resident).
    load_seconds: Histogram,
}

/// Modification times and sizes of an adapter folder's two files. `LoraAdapter::save` writes
/// the weights and then the config, each through a rename, so a changed stamp means a complete
/// new version (or one being written: the config, renamed last, changes last).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FolderStamp([Option<(std::time::SystemTime, u64)>; 2]);

impl FolderStamp {
    fn of(dir: &Path) -> Self {
        let stamp = |f: &str| std::fs::metadata(dir.join(f)).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        FolderStamp([stamp("adapter_config.json"), stamp("adapter_model.safetensors")])
    }
}

impl<B: Backend> AdapterCache<B> {
    /// A cache for `model` on `be`, with its loader thread.
    pub fn new(be: Arc<B>, model: ModelConfig, opts: CacheOptions) -> Self {
        let (job_tx, job_rx) = unbounded::<Job<B>>();
        let (res_tx, res_rx) = unbounded::<LoadResult<B>>();
        let (cfg, max_rank) = (model.clone(), opts.max_rank);
        let worker = std::thread::Builder::new()
            .name("lorafleet-adapter-loader".into())
            .spawn(move || {
                // Ends when the cache (the job sender) is dropped.
                for job in job_rx {
                    let started = std::time::Instant::now();
                    let r = (|| match job.source {
                        JobSource::Disk { path, host } => {
                            let host = match host {
                                Some(h) => h,
                                None => Arc::new(LoraAdapter::load(&job.id, &path, &cfg, max_rank)?),
                            };
                            let dev = LoadedAdapter::upload(&*be, &host)?;
                            Ok((Some(host), dev))
                        }
                        JobSource::Synthetic { rank, seed } => Ok((None, LoadedAdapter::random(&*be, &job.id, &cfg, rank, 2.0 * rank as f32, seed, 0.004)?)),
                    })();
                    if res_tx.send((job.id, r, started.elapsed().as_secs_f64())).is_err() {
                        break;
                    }
                }
            })
            .ok();
        AdapterCache {
            opts,
            model,
            device: HashMap::new(),
            loading: HashMap::new(),
            failed: HashMap::new(),
            host: HashMap::new(),
            clock: 0,
            stats: CacheStats::default(),
            jobs: Some(job_tx),
            results: res_rx,
            worker,
            aliases: HashMap::new(),
            in_memory: HashMap::new(),
            load_seconds: Histogram::latency(),
            stamps: HashMap::new(),
            retired: Vec::new(),
        }
    }

    /// Registers `name` for the adapter folder `path` and loads it (vLLM's load_lora_adapter).
    /// The folder must lie under `adapter_dir` unless `allow_paths`; a name already offered is
    /// refused. Blocks until the adapter is on the backend, so a bad adapter fails here.
    pub fn register(&mut self, name: &str, path: &Path) -> Result<()> {
        self.register_start(name, path)?;
        self.finish_blocking(name)
    }

    /// `register` without the wait: the name is offered at once and its load started; the
    /// caller asks `request(name)` on later steps (Ready: loaded; Err: it failed, and
    /// `withdraw(name)` takes the name back).
    pub fn register_start(&mut self, name: &str, path: &Path) -> Result<()> {
        self.check_new_name(name)?;
        let canon = path.canonicalize().map_err(|_| Error::UnknownAdapter(path.display().to_string()))?;
        let inside = self.opts.adapter_dir.as_ref().and_then(|d| d.canonicalize().ok()).is_some_and(|d| canon.starts_with(d));
        if !inside && !self.opts.allow_paths {
            return Err(Error::BadRequest(
                "the adapter path is outside the adapter folder (option `adapter_dir`; option `allow_paths` loads from anywhere)".into(),
            ));
        }
        if !canon.join("adapter_config.json").is_file() {
            return Err(Error::UnknownAdapter(path.display().to_string()));
        }
        self.aliases.insert(name.to_string(), canon);
        self.request(name).map(|_| ()).inspect_err(|_| self.withdraw(name))
    }

    /// Serves the in-memory `adapter` as `name` (the trainer's output, with no file): checked
    /// against the base model and `max_rank`, then loaded as a folder's would be. Returns at
    /// once; see `register_start`.
    pub fn add_start(&mut self, name: &str, adapter: LoraAdapter) -> Result<()> {
        self.check_new_name(name)?;
        adapter.check_fits(&self.model, self.opts.max_rank)?;
        let mut adapter = adapter;
        adapter.id = name.to_string();
        self.in_memory.insert(name.to_string(), Arc::new(adapter));
        self.request(name).map(|_| ()).inspect_err(|_| self.withdraw(name))
    }

    /// Waits for the load `register_start` or `add_start` began; on failure the name is
    /// withdrawn.
    pub fn finish_blocking(&mut self, name: &str) -> Result<()> {
        self.get_blocking(name).map(|_| ()).inspect_err(|_| self.withdraw(name))
    }

    /// Takes back a name whose load failed (its copies are forgotten).
    pub fn withdraw(&mut self, name: &str) {
        self.aliases.remove(name);
        self.in_memory.remove(name);
        self.forget(name);
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." || name.chars().any(char::is_control) {
            return Err(Error::InvalidRequest { field: "adapter name", msg: format!("adapter name {name:?}: a plain name is needed (no path separators)") });
        }
        if self.aliases.contains_key(name) || self.in_memory.contains_key(name) || self.resolve(name).is_ok() {
            return Err(Error::InvalidRequest { field: "adapter name", msg: format!("an adapter named {name:?} is already served") });
        }
        if self.opts.synthetic.is_some_and(|s| s.index(name).is_some()) {
            return Err(Error::InvalidRequest { field: "adapter name", msg: format!("{name:?} is the name of a synthetic adapter") });
        }
        Ok(())
    }

    /// Forgets a name `register` gave, and its copies nobody holds (running requests keep
    /// theirs to the end). Names under `adapter_dir` cannot be unregistered.
    pub fn unregister(&mut self, name: &str) -> Result<()> {
        if self.aliases.remove(name).is_none() && self.in_memory.remove(name).is_none() {
            return Err(Error::UnknownAdapter(name.to_string()));
        }
        self.poll();
        self.forget(name);
        Ok(())
    }

    /// Its options.
    pub fn options(&self) -> &CacheOptions {
        &self.opts
    }

    /// Adapter ids offered under `adapter_dir` (folders with an `adapter_config.json`), sorted.
    /// Then the synthetic ones, in index order.
    pub fn available(&self) -> Vec<String> {
        let mut ids: Vec<String> = match self.opts.adapter_dir.as_ref().and_then(|d| std::fs::read_dir(d).ok()) {
            Some(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("adapter_config.json").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect(),
            None => Vec::new(),
        };
        ids.extend(self.aliases.keys().cloned());
        ids.extend(self.in_memory.keys().cloned());
        ids.sort();
        ids.dedup();
        if let Some(s) = &self.opts.synthetic {
            ids.extend((0..s.count).map(SyntheticAdapters::id));
        }
        ids
    }

    /// The folder an id names: `adapter_dir/<id>` (a plain name: no separators, no `..`), then,
    /// with `allow_paths`, `id` as a path.
    pub fn resolve(&self, id: &str) -> Result<PathBuf> {
        let is_adapter = |p: &Path| p.join("adapter_config.json").is_file();
        if let Some(p) = self.aliases.get(id) {
            return Ok(p.clone());
        }
        if let Some(dir) = &self.opts.adapter_dir {
            // A plain name only: `..` or separators must not walk out of adapter_dir.
            if !id.is_empty() && !id.contains(['/', '\\']) && id != "." && id != ".." {
                let p = dir.join(id);
                if is_adapter(&p) {
                    return Ok(p);
                }
            }
        }
        if self.opts.allow_paths {
            let p = PathBuf::from(id);
            if !id.is_empty() && is_adapter(&p) {
                return Ok(p);
            }
        }
        Err(Error::UnknownAdapter(id.to_string()))
    }

    /// Bytes the adapter in `dir` needs on the device, from its config alone (f32 A and B).
    fn estimate_bytes(&self, id: &str, dir: &Path) -> Result<usize> {
        let p = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let json = serde_json::from_str(&text).map_err(|e| Error::Adapter { id: id.into(), msg: format!("{}: not valid JSON: {e}", p.display()) })?;
        let cfg = LoraConfig::from_json(&json).map_err(|m| Error::Adapter { id: id.into(), msg: format!("{}: {m}", p.display()) })?;
        let mut bytes = 0;
        for layer in 0..self.model.num_layers {
            for m in LoraModule::ALL.into_iter().filter(|m| cfg.target_modules.iter().any(|t| t == "all-linear" || t == m.name())) {
                let (out_f, in_f) = m.dims(&self.model);
                bytes += cfg.rank_and_scale(layer, m).0 * (in_f + out_f) * 4;
            }
        }
        Ok(bytes)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Takes in finished background loads; frees replaced versions nobody holds any more.
    pub fn poll(&mut self) {
        while let Ok((id, r, seconds)) = self.results.try_recv() {
            self.take_result(id, r, seconds);
        }
        self.retired.retain(|a| Arc::strong_count(a) > 1);
    }

    /// Forgets the cached copies of `id` when its folder's files changed since they were read
    /// (or the folder is gone): the next load reads the new version.
    fn drop_if_changed(&mut self, id: &str) {
        let Some((dir, stamp)) = self.stamps.get(id) else { return };
        if FolderStamp::of(dir) == *stamp {
            return;
        }
        self.forget(id);
    }

    /// Drops every cached copy of `id`; a device copy that running requests hold is retired
    /// (still counted against the budget) until they end.
    fn forget(&mut self, id: &str) {
        self.stamps.remove(id);
        self.host.remove(id);
        if let Some(r) = self.device.remove(id) {
            if Arc::strong_count(&r.adapter) > 1 {
                self.retired.push(r.adapter);
            }
        }
    }

    fn take_result(&mut self, id: String, r: Result<(Option<Arc<LoraAdapter>>, LoadedAdapter<B>)>, seconds: f64) {
        self.loading.remove(&id);
        match r {
            Ok((host, dev)) => {
                self.load_seconds.observe(seconds);
                let t = self.tick();
                self.stats.device_loads += 1;
                if let Some(host) = host {
                    if !self.host.contains_key(&id) && !self.in_memory.contains_key(&id) {
                        self.stats.disk_loads += 1;
                    }
                    self.host.insert(id.clone(), HostEntry { adapter: host, last_used: t });
                    self.trim_host();
                }
                self.device.insert(id, Resident { adapter: Arc::new(dev), last_used: t });
            }
            Err(e) => {
                self.failed.insert(id, e.to_string());
            }
        }
    }

    /// Drops least recently used parsed adapters past `max_host_adapters`.
    fn trim_host(&mut self) {
        while self.host.len() > self.opts.max_host_adapters {
            let Some(id) = self.host.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else { break };
            self.host.remove(&id);
        }
    }

    fn used_bytes(&self) -> usize {
        self.device.values().map(|r| r.adapter.bytes).sum::<usize>()
            + self.loading.values().sum::<usize>()
            + self.retired.iter().map(|a| a.bytes).sum::<usize>()
    }

    /// Evicts least recently used unpinned adapters until `need` more bytes fit. Returns false
    /// (having evicted what it could) when pinned adapters hold too much.
    fn make_room(&mut self, need: usize) -> bool {
        while self.used_bytes() + need > self.opts.device_budget_bytes {
            let victim = self.device.iter().filter(|(_, r)| Arc::strong_count(&r.adapter) == 1).min_by_key(|(_, r)| r.last_used).map(|(k, _)| k.clone());
            match victim {
                Some(id) => {
                    self.device.remove(&id);
                    self.stats.device_evictions += 1;
                }
                None => return false,
            }
        }
        true
    }

    /// See `AdapterStatus`. Never blocks on a load.
    pub fn request(&mut self, id: &str) -> Result<AdapterStatus<B>> {
        self.poll();
        self.drop_if_changed(id);
        let t = self.tick();
        if let Some(r) = self.device.get_mut(id) {
            r.last_used = t;
            return Ok(AdapterStatus::Ready(r.adapter.clone()));
        }
        if let Some(msg) = self.failed.remove(id) {
            return Err(Error::Adapter { id: id.to_string(), msg: format!("failed to load: {msg}") });
        }
        if self.loading.contains_key(id) {
            return Ok(AdapterStatus::Loading);
        }
        let synthetic = self.opts.synthetic.and_then(|s| s.index(id).map(|i| (s, i)));
        let (source, bytes) = match synthetic {
            Some((s, i)) => {
                if s.rank == 0 || s.rank > self.opts.max_rank {
                    return Err(Error::Adapter { id: id.to_string(), msg: format!("rank {} is outside 1..={}", s.rank, self.opts.max_rank) });
                }
                let per_rank: usize = LoraModule::ALL.iter().map(|m| m.dims(&self.model)).map(|(o, i)| o + i).sum();
                (JobSource::Synthetic { rank: s.rank, seed: s.seed.wrapping_add(i as u64) }, self.model.num_layers * s.rank * per_rank * 4)
            }
            None if self.in_memory.contains_key(id) => {
                let host = self.in_memory[id].clone();
                let bytes = host.weight_bytes();
                (JobSource::Disk { path: PathBuf::new(), host: Some(host) }, bytes)
            }
            None => {
                let path = self.resolve(id)?;
                self.stamps.insert(id.to_string(), (path.clone(), FolderStamp::of(&path)));
                let bytes = self.estimate_bytes(id, &path)?;
                let host = self.host.get_mut(id).map(|e| {
                    e.last_used = t;
                    e.adapter.clone()
                });
                (JobSource::Disk { path, host }, bytes)
            }
        };
        if bytes > self.opts.device_budget_bytes {
            return Err(Error::Adapter {
                id: id.to_string(),
                msg: format!("needs {bytes} bytes of adapter memory; the whole budget is {} (option `adapter_memory`)", self.opts.device_budget_bytes),
            });
        }
        if !self.make_room(bytes) {
            // Every resident adapter is in use: wait for a sequence to finish.
            return Ok(AdapterStatus::Loading);
        }
        let job = Job { id: id.to_string(), source, _backend: std::marker::PhantomData };
        match self.jobs.as_ref().map(|j| j.send(job)) {
            Some(Ok(())) => {
                self.loading.insert(id.to_string(), bytes);
                Ok(AdapterStatus::Loading)
            }
            _ => Err(Error::Adapter { id: id.to_string(), msg: "the adapter loader thread is gone".into() }),
        }
    }

    /// Blocks until `id` is resident (or fails): for one-shot CLI use, not for the engine loop.
    pub fn get_blocking(&mut self, id: &str) -> Result<Arc<LoadedAdapter<B>>> {
        loop {
            match self.request(id)? {
                AdapterStatus::Ready(a) => return Ok(a),
                AdapterStatus::Loading => {
                    if self.loading.contains_key(id) {
                        // Wait for the worker's next result instead of spinning.
                        match self.results.recv() {
                            Ok((rid, r, seconds)) => self.take_result(rid, r, seconds),
                            Err(_) => return Err(Error::Adapter { id: id.to_string(), msg: "the adapter loader thread is gone".into() }),
                        }
                    } else {
                        return Err(Error::Adapter { id: id.to_string(), msg: "no room: every resident adapter is in use and the budget is full".into() });
                    }
                }
            }
        }
    }

    /// Every copy held, device tier then host tier, each sorted by id (for metrics and the
    /// gateway's view of which replica holds which adapter).
    pub fn residency(&self) -> Vec<AdapterResidency> {
        let mut device: Vec<AdapterResidency> = self
            .device
            .iter()
            .map(|(id, r)| AdapterResidency {
                adapter: id.clone(),
                tier: AdapterTier::Device,
                bytes: r.adapter.bytes,
                pinned: Arc::strong_count(&r.adapter) > 1,
            })
            .collect();
        let mut host: Vec<AdapterResidency> = self
            .host
            .iter()
            .map(|(id, e)| AdapterResidency {
                adapter: id.clone(),
                tier: AdapterTier::Host,
                bytes: e.adapter.weight_bytes(),
                pinned: self.in_memory.contains_key(id),
            })
            .collect();
        device.sort_by(|a, b| a.adapter.cmp(&b.adapter));
        host.sort_by(|a, b| a.adapter.cmp(&b.adapter));
        device.extend(host);
        device
    }

    /// Seconds each successful load took on the loader thread (read, check, upload).
    pub fn load_seconds(&self) -> &Histogram {
        &self.load_seconds
    }

    /// Resident adapter ids and bytes, for metrics.
    pub fn resident(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self.device.iter().map(|(k, r)| (k.clone(), r.adapter.bytes)).collect();
        v.sort();
        v
    }

    /// Drops every resident and host copy nobody holds (memory back to the baseline); returns
    /// how many device copies were dropped.
    pub fn unload_unused(&mut self) -> usize {
        self.poll();
        let before = self.device.len();
        self.device.retain(|_, r| Arc::strong_count(&r.adapter) > 1);
        let n = before - self.device.len();
        self.stats.device_evictions += n as u64;
        self.host.clear();
        n
    }

    /// Its counters now.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            device_resident: self.device.len(),
            device_bytes: self.used_bytes(),
            host_resident: self.host.len(),
            host_bytes: self.host.values().map(|e| e.adapter.weight_bytes()).sum(),
            ..self.stats.clone()
        }
    }
}

impl<B: Backend> Drop for AdapterCache<B> {
    fn drop(&mut self) {
        // Closing the job channel ends the worker once its current load is done.
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
