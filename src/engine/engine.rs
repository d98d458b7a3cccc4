//! The engine: one thread owns the model, the paged KV cache and the adapter cache, and runs
//! continuous batching over every submitted request. Clients call `Engine::submit` from any
//! thread (tokenization and validation happen there) and read token events from the returned
//! handle.
//!
//! Each step: take new requests and drop cancelled ones; ask the adapter cache for the adapters
//! of waiting requests (a request whose adapter is loading stays queued and blocks nobody);
//! plan the step with `scheduler::plan_step`; carry out preemptions and admissions; run one
//! forward over the step's prefill chunks and decode tokens, sorted by adapter so each adapter
//! is one LoRA segment; sample, stream, and retire finished sequences (their blocks go back to
//! the pool and their adapter pin is released). The thread and its steps are `worker::Worker`;
//! this file is the handle (`Engine`) that sends it commands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam::channel::{unbounded, Sender};

use super::events;
use super::output::SeqOutput;
use super::request::{Finished, GenerateRequest, Prompt, RequestHandle};
use super::scheduler::Limits;
use super::stats::EngineStats;
use super::worker::{Command, QueueSlot, Submission, Worker, WorkerParts};
use crate::backend::Backend;
use crate::constrain::ConstraintCompiler;
use crate::kv::{BlockPool, DEFAULT_BLOCK_SIZE};
use crate::lora::cache::AdapterCache;
pub use crate::lora::cache::{CacheOptions, CacheStats};
use crate::lora::LoraAdapter;
use crate::model::Llama;
use crate::tokenizer::TextTokenizer;
use crate::types::config::ModelConfig;
use crate::{Error, Result};

/// The most alternatives per token a request may ask log-probabilities for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How the engine sizes its KV cache, batches and queues (`EngineBuilder` sets them one by one).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// KV cache size in bytes (K and V of every layer; the CPU backend stores f32).
    pub kv_cache_bytes: usize,
    /// Exact number of KV blocks, overriding `kv_cache_bytes` (tests).
    pub kv_blocks: Option<usize>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Tokens per step (decode tokens + prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences running (holding KV blocks) at once.
    pub max_running: usize,
    /// Distinct adapters (the base counts as one) in the running batch.
    pub max_active_adapters: usize,
    /// Where adapters come from and how many stay resident.
    pub cache: CacheOptions,
    /// Keep full KV blocks after their request ends and reuse them for later requests with the
    /// same leading tokens under the same adapter (`kv::prefix`); `--no-prefix-cache` turns it
    /// off.
    pub prefix_cache: bool,
    /// The most requests submitted and not yet ended (queued or running); one more is refused
    /// with `Error::QueueFull`. None: unbounded.
    pub max_queued_requests: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            kv_cache_bytes: 512 << 20,
            kv_blocks: None,
            block_size: DEFAULT_BLOCK_SIZE,
            max_batch_tokens: 512,
            max_running: 64,
            max_active_adapters: 32,
            cache: CacheOptions::default(),
            prefix_cache: true,
            max_queued_requests: None,
        }
    }
}

/// The client side of the engine: cheap to share (`Arc<Engine>`); dropping it stops the thread.
pub struct Engine {
    commands: Sender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    tokenizer: Arc<TextTokenizer>,
    config: ModelConfig,
    pool: BlockPool,
    limits: Limits,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// `Backend::name` of the backend the engine runs on.
    backend_name: String,
    /// Requests submitted and not ended, against `max_queued_requests`.
    in_flight: Arc<AtomicUsize>,
    max_queued_requests: Option<usize>,
    /// What `EngineBuilder` opened, in words ("device: cpu, avx512 kernels").
    device_note: String,
    /// The caller's request ids (`GenerateRequest::request_id`) of live requests, to cancel by.
    by_request_id: Mutex<HashMap<String, Vec<Weak<AtomicBool>>>>,
    /// Structured output's token trie and parser factory, built on the first constrained
    /// request (~0.1 s; an error is kept and returned to every constrained request).
    constraints: std::sync::OnceLock<std::result::Result<Arc<ConstraintCompiler>, String>>,
}

impl Engine {
    /// Allocates the KV cache and starts the engine thread.
    ///
    /// On the CPU backend each step runs on a thread of rayon's global pool
    /// (`Backend::run_step`): wait for results (`RequestHandle::wait`, `recv`) from threads of
    /// your own, not from inside a rayon job, which would keep that pool thread from the steps
    /// (with a one-thread pool, forever).
    pub fn start<B: Backend>(be: Arc<B>, model: Arc<Llama<B>>, tokenizer: Arc<TextTokenizer>, opts: EngineOptions) -> Result<Engine> {
        if opts.max_batch_tokens == 0 || opts.max_running == 0 || opts.max_active_adapters == 0 || opts.block_size == 0 {
            return Err(Error::InvalidArgument("max batch tokens, max running, max active adapters and block size must be at least 1".into()));
        }
        opts.cache.check().map_err(Error::InvalidArgument)?;
        let bs = opts.block_size;
        let blocks = match opts.kv_blocks {
            Some(n) if n > 0 => n,
            Some(_) => return Err(Error::InvalidArgument("the KV cache needs at least one block".into())),
            // Sized in the backend's K/V element type (f32 on the CPU, the activation dtype on CUDA).
            None => model.kv_layout(bs, 0).with_budget(opts.kv_cache_bytes, be.kv_elem_bytes())?.num_blocks,
        };
        // The cache first: its fit check (host or device memory) must come before anything sized
        // by the block count, the pool's bookkeeping included.
        let kv = be.alloc_kv(model.kv_layout(bs, blocks))?;
        let pool = if opts.prefix_cache { BlockPool::with_prefix_cache(blocks, bs) } else { BlockPool::new(blocks, bs) };
        let limits = Limits {
            max_batch_tokens: opts.max_batch_tokens,
            max_running: opts.max_running,
            max_active_adapters: opts.max_active_adapters,
            block_size: bs,
            watermark_blocks: (blocks / 100).max(1),
        };
        let stats = Arc::new(Mutex::new(EngineStats::new(blocks)));
        let (tx, rx) = unbounded();
        let config = model.config.clone();
        let worker_pool = pool.clone();
        let worker_stats = stats.clone();
        let worker_tok = tokenizer.clone();
        let cache_opts = opts.cache.clone();
        let backend_name = be.name();
        let thread = std::thread::Builder::new()
            .name("lorafleet-engine".into())
            .spawn(move || {
                let cache = AdapterCache::new(be.clone(), model.config.clone(), cache_opts);
                let mut w =
                    Worker::new(WorkerParts { be, model, tokenizer: worker_tok, pool: worker_pool, kv, cache, limits, commands: rx, shared: worker_stats });
                w.run();
            })
            .map_err(|e| Error::InvalidArgument(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands: tx,
            stats,
            tokenizer,
            config,
            pool,
            limits,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
            backend_name,
            in_flight: Arc::default(),
            max_queued_requests: opts.max_queued_requests,
            device_note: String::new(),
            by_request_id: Mutex::default(),
            constraints: std::sync::OnceLock::new(),
        })
    }

    /// The constraint compiler of this model (built on first use).
    pub fn constraint_compiler(&self) -> Result<Arc<ConstraintCompiler>> {
        self.constraints
            .get_or_init(|| {
                ConstraintCompiler::new(self.tokenizer.clone(), self.config.vocab_size, &self.config.eos_token_ids).map(Arc::new).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| Error::InvalidRequest { field: "constraint", msg: format!("structured output is not available for this model: {e}") })
    }

    /// The model's tokenizer (and chat template).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The backend the engine runs on (`Backend::name`: "cpu", "cuda:0", ...).
    pub fn backend_name(&self) -> &str {
        &self.backend_name
    }

    /// The device the engine runs on, in words ("device: cpu, avx512 kernels"; for an engine
    /// from `Engine::start`, the backend's name).
    pub fn device_description(&self) -> &str {
        if self.device_note.is_empty() {
            &self.backend_name
        } else {
            &self.device_note
        }
    }

    pub(super) fn with_device_note(mut self, note: String) -> Self {
        self.device_note = note;
        self
    }

    /// Whether the engine thread is still running (it ends only on a panic or at shutdown).
    pub fn is_alive(&self) -> bool {
        self.thread.lock().ok().is_some_and(|t| t.as_ref().is_some_and(|h| !h.is_finished()))
    }

    /// The base model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Tokens the KV cache holds in all (a request's prompt + max_new_tokens must fit).
    pub fn kv_capacity_tokens(&self) -> usize {
        self.pool.num_blocks() * self.pool.block_size()
    }

    /// Free KV blocks right now.
    pub fn kv_free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// KV blocks in all.
    pub fn kv_total_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// The batch limits the scheduler works within.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counters now: the engine thread answers between two steps, after taking in every request
    /// submitted before this call (so a request just submitted counts as queued). Waits for
    /// the step in progress; `stats_snapshot` does not wait.
    pub fn stats(&self) -> EngineStats {
        let (tx, rx) = unbounded();
        if self.commands.send(Command::Stats(tx)).is_ok() {
            if let Ok(s) = rx.recv() {
                return s;
            }
        }
        self.stats_snapshot()
    }

    /// Counters as of the end of the last step (or the last `stats` call), without waiting.
    pub fn stats_snapshot(&self) -> EngineStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The adapter cache's counters (resident adapters and bytes per tier, loads, evictions).
    pub fn cache_stats(&self) -> Result<CacheStats> {
        let (tx, rx) = unbounded();
        self.commands.send(Command::CacheStats(tx)).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())
    }

    /// Adapter ids the engine offers, sorted: folders under the adapter dir, names given by
    /// `load_adapter` / `add_adapter`, then the synthetic ones.
    pub fn available_adapters(&self) -> Vec<String> {
        let (tx, rx) = unbounded();
        if self.commands.send(Command::ListAdapters(tx)).is_err() {
            return Vec::new();
        }
        rx.recv().unwrap_or_default()
    }

    /// Serves the adapter folder `path` as `name` from now on; returns once it is loaded (a
    /// bad adapter fails here). The folder must lie under the adapter dir unless the cache
    /// allows paths. The engine keeps stepping while the adapter loads (on its loader thread);
    /// requests for `name` submitted meanwhile wait for it.
    pub fn load_adapter(&self, name: &str, path: &std::path::Path) -> Result<()> {
        let (reply, rx) = unbounded();
        self.commands.send(Command::LoadAdapter { name: name.to_string(), path: path.to_path_buf(), reply }).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Serves an adapter held in memory (the trainer's output, or one built by hand) as `name`,
    /// with no file: checked against the base model's shapes and the maximum rank, uploaded
    /// like a folder's, and returns once it is resident. The engine keeps stepping meanwhile.
    pub fn add_adapter(&self, name: &str, adapter: LoraAdapter) -> Result<()> {
        let (reply, rx) = unbounded();
        self.commands.send(Command::AddAdapter { name: name.to_string(), adapter: Box::new(adapter), reply }).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Stops serving a name `load_adapter` or `add_adapter` gave (requests already running keep
    /// it to their end).
    pub fn unload_adapter(&self, name: &str) -> Result<()> {
        let (reply, rx) = unbounded();
        self.commands.send(Command::UnloadAdapter { name: name.to_string(), reply }).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Tokens of a request's prompt (what `submit` would feed the model).
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(t) => self.tokenizer.encode(t),
            Prompt::Ids(ids) => Ok(ids.clone()),
            Prompt::Chat(messages) => self.tokenizer.encode(&self.tokenizer.apply_chat_template(messages, true)?),
        }
    }

    /// Cancels every live request submitted with `request_id` (`GenerateRequest::request_id`):
    /// each stream ends with `Error::Cancelled` at the engine's next step. Returns how many
    /// requests were live under that id.
    pub fn cancel_request(&self, request_id: &str) -> usize {
        let mut map = self.by_request_id.lock().unwrap_or_else(|p| p.into_inner());
        let Some(flags) = map.remove(request_id) else { return 0 };
        flags.iter().filter_map(Weak::upgrade).map(|f| f.store(true, Ordering::Relaxed)).count()
    }

    /// Generates every request to its end through the engine (batched continuously, adapters
    /// mixed): offline batch generation. One result per request, in order; a request that
    /// fails does so alone.
    pub fn generate(&self, requests: Vec<GenerateRequest>) -> Vec<Result<Finished>> {
        let handles: Vec<Result<RequestHandle>> = requests.into_iter().map(|r| self.submit(r)).collect();
        handles.into_iter().map(|h| h.and_then(RequestHandle::wait)).collect()
    }

    /// Keeps `cancel` findable under the caller's id; drops the entries of ended requests now
    /// and then so the map stays as small as the live requests.
    fn remember_request_id(&self, request_id: &str, cancel: &Arc<AtomicBool>) {
        let mut map = self.by_request_id.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, flags| {
                flags.retain(|f| f.strong_count() > 0);
                !flags.is_empty()
            });
        }
        map.entry(request_id.to_string()).or_default().push(Arc::downgrade(cancel));
    }

    /// Checks a request and queues it. Errors found here (empty prompt, prompt + new tokens
    /// over the context or the KV cache, token ids outside the vocabulary, bad sampling
    /// parameters, a full queue) return at once without touching the engine; an unknown
    /// adapter or one that fails to load comes back as the handle's `Event::Error`.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestHandle> {
        let prompt = self.encode(&req.prompt)?;
        let o = &req.options;
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if o.max_new_tokens == 0 {
            return Err(Error::InvalidRequest { field: "max_new_tokens", msg: "max_new_tokens must be at least 1".into() });
        }
        let c = &self.config;
        let limit = c.max_position_embeddings.min(self.kv_capacity_tokens());
        if prompt.len() + o.max_new_tokens > limit {
            return Err(Error::PromptTooLong { tokens: prompt.len(), new_tokens: o.max_new_tokens, context: limit });
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidRequest { field: "prompt", msg: format!("token id {bad} is outside the vocabulary of {}", c.vocab_size) });
        }
        o.sampling.validate()?;
        if let Some(n) = o.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::InvalidRequest {
                field: "logprobs",
                msg: format!("at most {MAX_TOP_LOGPROBS} alternatives per token can be reported, {n} were asked for"),
            });
        }
        // A constraint compiles here, so a bad schema or grammar fails before anything is queued.
        let constraint = match &o.constraint {
            Some(c) => Some(self.constraint_compiler()?.compile(c)?),
            None => None,
        };
        if !self.is_alive() {
            return Err(stopped());
        }
        // A place in the queue, taken before anything is sent (given back if the send fails).
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let slot = QueueSlot(self.in_flight.clone());
        if let Some(limit) = self.max_queued_requests.filter(|&l| in_flight >= l) {
            return Err(Error::QueueFull { in_flight, limit });
        }
        let adapter = req.adapter.filter(|a| !a.is_empty());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = events::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        if let Some(rid) = &req.request_id {
            self.remember_request_id(rid, &cancel);
        }
        let prompt_tokens = prompt.len();
        let out = SeqOutput::new(req.options).with_prompt(&prompt).with_constraint(constraint);
        let sub = Submission { id, prompt, adapter, out, events: tx, cancel: cancel.clone(), submitted: Instant::now(), slot };
        self.commands.send(Command::Submit(Box::new(sub))).map_err(|_| stopped())?;
        Ok(RequestHandle { id, prompt_tokens, events: rx, cancel })
    }

    /// Requests submitted and not ended yet (queued or running).
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

fn stopped() -> Error {
    Error::EngineStopped("the engine thread has ended".into())
}

impl Engine {
    /// Ends every queued and running request now, each stream with a final
    /// `Event::Error(Error::ShuttingDown(reason))`; the engine goes on taking new requests. A
    /// server calls it when its shutdown timeout passes, so that no client sees a stream cut
    /// mid-chunk.
    pub fn abort_all(&self, reason: &str) {
        let _ = self.commands.send(Command::AbortAll(reason.to_string()));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}
