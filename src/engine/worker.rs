//! The engine thread: the waiting queues per adapter, the running sequences, and each step
//! (plan, preemption, admission with the prefix cache, the batched forward, acceptance, events).
//! `Engine` (engine.rs) is the handle that sends it commands.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use super::events::EventSender;
use super::output::SeqOutput;
use super::request::{Event, Finished};
use super::scheduler::{plan_step, Limits, Plan, RunningView, SeqId, WaitingView};
use super::stats::EngineStats;
use super::step::{run_step, StepSeq};
use crate::backend::Backend;
use crate::kv::{prefix, BlockPool, BlockTable};
use crate::lora::cache::{AdapterCache, AdapterStatus};
use crate::lora::{LoadedAdapter, LoraAdapter};
use crate::model::Llama;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// What the handle (`engine::Engine`) asks of the engine thread.
pub(super) enum Command {
    Submit(Box<Submission>),
    ListAdapters(Sender<Vec<String>>),
    /// Register a name for an adapter folder and load it (`AdapterCache::register_start`);
    /// the reply comes when the load is done, and the engine steps meanwhile.
    LoadAdapter {
        name: String,
        path: std::path::PathBuf,
        reply: Sender<Result<()>>,
    },
    /// Serve an in-memory adapter under a name (`AdapterCache::add_start`); replies as
    /// `LoadAdapter`.
    AddAdapter {
        name: String,
        adapter: Box<LoraAdapter>,
        reply: Sender<Result<()>>,
    },
    /// The adapter cache's counters.
    CacheStats(Sender<crate::lora::cache::CacheStats>),
    /// Publish the stats now (every command sent before this one taken in) and reply.
    Stats(Sender<EngineStats>),
    UnloadAdapter {
        name: String,
        reply: Sender<Result<()>>,
    },
    /// End every queued and running request with `Error::ShuttingDown(reason)`.
    AbortAll(String),
    Shutdown,
}

pub(super) struct Submission {
    pub(super) id: u64,
    pub(super) prompt: Vec<u32>,
    pub(super) adapter: Option<String>,
    pub(super) out: SeqOutput,
    pub(super) events: EventSender,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) submitted: Instant,
    /// The request's place under `EngineOptions::max_queued_requests`, given back when it ends.
    pub(super) slot: QueueSlot,
}

/// One request counted against the engine's queue bound; dropping it (the sequence finished,
/// failed or was cancelled) frees the place.
pub(super) struct QueueSlot(pub(super) Arc<std::sync::atomic::AtomicUsize>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long an adapter may wait for its load before the engine stops admitting sequences of
/// other adapters (so their pins drain and the adapter budget makes room for it).
const STARVING_AFTER: Duration = Duration::from_secs(5);

/// A request inside the engine: waiting in its adapter's queue, or running.
struct Seq<B: Backend> {
    id: SeqId,
    /// "" = the base.
    adapter_key: String,
    /// The pin: set while running, dropped when the sequence finishes or is preempted.
    adapter: Option<Arc<LoadedAdapter<B>>>,
    /// Prompt, then every generated token.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Blocks while running; None while waiting.
    table: Option<BlockTable>,
    /// With prefix caching: the hash-chain key of each full block of `tokens` computed so far
    /// (`kv::prefix::extend_keys`), under `key_adapter` (the adapter's `content_key`, 0 for the
    /// base; the keys are recomputed if a re-admission finds the adapter reloaded).
    block_keys: Vec<u64>,
    key_adapter: u64,
    out: SeqOutput,
    events: EventSender,
    cancel: Arc<AtomicBool>,
    _slot: QueueSlot,
    submitted: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    preemptions: u32,
}

impl<B: Backend> Seq<B> {
    /// The prefix-cache keys of the full blocks this sequence may take from the cache under the
    /// adapter whose identity is `ident` (recomputed if the adapter changed since): at most
    /// `(len - 1) / block_size` blocks, so at least one token is always computed, for the logits
    /// of the next.
    fn cacheable_keys(&mut self, ident: u64, block_size: usize) -> &[u64] {
        if ident != self.key_adapter {
            self.block_keys.clear();
            self.key_adapter = ident;
        }
        let most = (self.tokens.len() - 1) / block_size;
        prefix::extend_keys(&mut self.block_keys, ident, &self.tokens[..most * block_size], block_size);
        &self.block_keys[..most]
    }
    fn kv_len(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.len())
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// What the engine thread starts with (`Engine::start` builds it): the model on its backend, the
/// KV cache and its block pool, the adapter cache, the limits, the command channel and the
/// stats it publishes.
pub(super) struct WorkerParts<B: Backend> {
    pub(super) be: Arc<B>,
    pub(super) model: Arc<Llama<B>>,
    pub(super) tokenizer: Arc<TextTokenizer>,
    pub(super) pool: BlockPool,
    pub(super) kv: B::Kv,
    pub(super) cache: AdapterCache<B>,
    pub(super) limits: Limits,
    pub(super) commands: Receiver<Command>,
    pub(super) shared: Arc<Mutex<EngineStats>>,
}

pub(super) struct Worker<B: Backend> {
    be: Arc<B>,
    model: Arc<Llama<B>>,
    tokenizer: Arc<TextTokenizer>,
    pool: BlockPool,
    kv: B::Kv,
    cache: AdapterCache<B>,
    limits: Limits,
    commands: Receiver<Command>,
    /// Waiting sequences per adapter key, in queue order (preempted ones go to the front).
    queues: BTreeMap<String, VecDeque<Seq<B>>>,
    /// Running sequences in admission order (oldest first).
    running: Vec<Seq<B>>,
    /// Adapter key whose queue is served first next step (round-robin).
    rr_next: String,
    /// Since when each waiting adapter has been `Loading`.
    loading_since: HashMap<String, Instant>,
    stats: EngineStats,
    shared: Arc<Mutex<EngineStats>>,
    /// Adapter loads asked for by name (`Engine::load_adapter`, `add_adapter`) and not done yet,
    /// with the caller waiting for each.
    pending_loads: Vec<(String, Sender<Result<()>>)>,
}

/// A copy of an error for each of several requests (`Error` holds an io::Error, not Clone).
fn error_copy(e: &Error) -> Error {
    match e {
        Error::UnknownAdapter(id) => Error::UnknownAdapter(id.clone()),
        Error::Adapter { id, msg } => Error::Adapter { id: id.clone(), msg: msg.clone() },
        Error::PromptTooLong { tokens, new_tokens, context } => Error::PromptTooLong { tokens: *tokens, new_tokens: *new_tokens, context: *context },
        Error::BadRequest(m) => Error::BadRequest(m.clone()),
        Error::InvalidRequest { field, msg } => Error::InvalidRequest { field, msg: msg.clone() },
        Error::EngineStopped(m) => Error::EngineStopped(m.clone()),
        Error::Cuda(m) => Error::Cuda(m.clone()),
        Error::ShuttingDown(m) => Error::ShuttingDown(m.clone()),
        other => Error::InvalidArgument(other.to_string()),
    }
}

impl<B: Backend> Worker<B> {
    /// The engine thread's state: `pool` and `kv` are the KV cache's block ids and storage,
    /// `shared` the stats the `Engine` handle reads.
    pub(super) fn new(p: WorkerParts<B>) -> Self {
        let WorkerParts { be, model, tokenizer, pool, kv, cache, limits, commands, shared } = p;
        let blocks = pool.num_blocks();
        Worker {
            be,
            model,
            tokenizer,
            pool,
            kv,
            cache,
            limits,
            commands,
            queues: BTreeMap::new(),
            running: Vec::new(),
            rr_next: String::new(),
            loading_since: HashMap::new(),
            stats: EngineStats::new(blocks),
            shared,
            pending_loads: Vec::new(),
        }
    }

    pub(super) fn run(&mut self) {
        loop {
            if !self.take_commands() {
                return;
            }
            self.poll_loads();
            // On the CPU, the whole step on a pool thread (`Backend::run_step`).
            let be = self.be.clone();
            if let Err(e) = be.run_step(|| self.step()) {
                // A failure of the whole step (the backend): every running request gets it,
                // the engine goes on with the rest.
                for s in std::mem::take(&mut self.running) {
                    self.fail(s, error_copy(&e));
                }
            }
            self.publish();
        }
    }

    /// Answers the adapter loads that finished (or failed) since the last step.
    fn poll_loads(&mut self) {
        let mut i = 0;
        while i < self.pending_loads.len() {
            let done = match self.cache.request(&self.pending_loads[i].0) {
                Ok(AdapterStatus::Loading) => None,
                Ok(AdapterStatus::Ready(_)) => Some(Ok(())),
                Err(e) => {
                    self.cache.withdraw(&self.pending_loads[i].0);
                    Some(Err(e))
                }
            };
            match done {
                Some(r) => {
                    let (_, reply) = self.pending_loads.swap_remove(i);
                    let _ = reply.send(r);
                }
                None => i += 1,
            }
        }
    }

    fn queued(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Takes new commands: blocks while there is nothing to do, waits briefly while only
    /// adapter loads are pending. Returns false on shutdown.
    fn take_commands(&mut self) -> bool {
        let mut first = if self.running.is_empty() && self.queues.is_empty() && self.pending_loads.is_empty() {
            match self.commands.recv() {
                Ok(c) => Some(c),
                Err(_) => return false,
            }
        } else if self.running.is_empty() {
            // Only waiting requests or adapter loads (adapters loading, or blocks held by
            // nobody): poll.
            match self.commands.recv_timeout(Duration::from_millis(2)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        } else {
            None
        };
        loop {
            let cmd = match first.take() {
                Some(c) => c,
                None => match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(crossbeam::channel::TryRecvError::Empty) => return true,
                    Err(crossbeam::channel::TryRecvError::Disconnected) => return false,
                },
            };
            match cmd {
                Command::Submit(s) => {
                    let s = *s;
                    let key = s.adapter.clone().unwrap_or_default();
                    let prompt_len = s.prompt.len();
                    let seq = Seq {
                        id: s.id,
                        adapter_key: key.clone(),
                        adapter: None,
                        tokens: s.prompt,
                        prompt_len,
                        table: None,
                        block_keys: Vec::new(),
                        key_adapter: 0,
                        out: s.out,
                        events: s.events,
                        cancel: s.cancel,
                        _slot: s.slot,
                        submitted: s.submitted,
                        admitted: None,
                        first_token: None,
                        last_token: None,
                        preemptions: 0,
                    };
                    self.queues.entry(key).or_default().push_back(seq);
                }
                Command::ListAdapters(reply) => {
                    let _ = reply.send(self.cache.available());
                }
                Command::LoadAdapter { name, path, reply } => match self.cache.register_start(&name, &path) {
                    Ok(()) => self.pending_loads.push((name, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::AddAdapter { name, adapter, reply } => match self.cache.add_start(&name, *adapter) {
                    Ok(()) => self.pending_loads.push((name, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::CacheStats(reply) => {
                    let _ = reply.send(self.cache.stats());
                }
                Command::Stats(reply) => {
                    self.publish();
                    let _ = reply.send(self.stats.clone());
                }
                Command::UnloadAdapter { name, reply } => {
                    let _ = reply.send(self.cache.unregister(&name));
                }
                Command::AbortAll(reason) => self.abort_all(&reason),
                Command::Shutdown => {
                    // Every stream gets a final event, also when the engine itself goes away.
                    self.abort_all("the engine was stopped");
                    return false;
                }
            }
        }
    }

    /// Ends every queued and running request with `Error::ShuttingDown(reason)` (their blocks
    /// return to the pool as their tables drop).
    fn abort_all(&mut self, reason: &str) {
        let queued: Vec<Seq<B>> = std::mem::take(&mut self.queues).into_values().flatten().collect();
        for s in std::mem::take(&mut self.running).into_iter().chain(queued) {
            self.fail(s, Error::ShuttingDown(reason.to_string()));
        }
        self.publish();
    }

    fn fail(&mut self, s: Seq<B>, e: Error) {
        self.stats.requests_failed += 1;
        let _ = s.events.send(Event::Error(e));
    }

    /// Drops cancelled requests (their blocks return to the pool as their tables drop).
    /// Each stream ends with `Error::Cancelled` (nobody may be reading it any more).
    fn drop_cancelled(&mut self) {
        let mut gone: Vec<Seq<B>> = Vec::new();
        let (keep, cancelled): (Vec<Seq<B>>, Vec<Seq<B>>) = std::mem::take(&mut self.running).into_iter().partition(|s| !s.cancelled());
        self.running = keep;
        gone.extend(cancelled);
        for q in self.queues.values_mut() {
            if q.iter().any(|s| s.cancelled()) {
                let (keep, cancelled): (VecDeque<Seq<B>>, VecDeque<Seq<B>>) = std::mem::take(q).into_iter().partition(|s| !s.cancelled());
                *q = keep;
                gone.extend(cancelled);
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        self.stats.requests_cancelled += gone.len() as u64;
        for s in gone {
            s.events.send(Event::Error(Error::Cancelled));
        }
    }

    /// Asks the cache for every waiting adapter: the ready ones (with their Arc), in the order
    /// their queues are served this step. Requests for adapters that failed get the error.
    fn ready_adapters(&mut self) -> Vec<(String, Option<Arc<LoadedAdapter<B>>>)> {
        // Adapters still loading are asked first, oldest first, while this step holds no Arc
        // of another adapter (a held Arc is a pin: the cache could not evict it to make room).
        let mut keys: Vec<String> = self.queues.keys().cloned().collect();
        keys.sort_by_key(|k| self.loading_since.get(k).copied().map_or((1, None), |t| (0, Some(t))));
        let mut ready = Vec::new();
        for key in keys {
            if key.is_empty() {
                ready.push((key, None));
                continue;
            }
            match self.cache.request(&key) {
                Ok(AdapterStatus::Ready(a)) => {
                    self.loading_since.remove(&key);
                    ready.push((key, Some(a)));
                }
                Ok(AdapterStatus::Loading) => {
                    self.loading_since.entry(key).or_insert_with(Instant::now);
                }
                Err(e) => {
                    self.loading_since.remove(&key);
                    let q = self.queues.remove(&key).unwrap_or_default();
                    for s in q {
                        self.fail(s, error_copy(&e));
                    }
                }
            }
        }
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        self.loading_since.retain(|k, _| self.queues.contains_key(k));
        // An adapter that has waited this long is most likely waiting for room in the adapter
        // budget, which only running sequences of other adapters (their pins) hold: admit no
        // more sequences of other adapters until it gets in, so it cannot starve.
        if self.loading_since.values().any(|t| t.elapsed() > STARVING_AFTER) {
            ready.retain(|(k, _)| k.is_empty());
        }
        // Round-robin: start at the first key >= rr_next, wrapping.
        let at = ready.iter().position(|(k, _)| *k >= self.rr_next).unwrap_or(0);
        ready.rotate_left(at);
        ready
    }

    fn step(&mut self) -> Result<()> {
        self.drop_cancelled();
        let ready = self.ready_adapters();
        // What the prefix cache holds of each waiting sequence the planner could admit (the
        // first `max_running` of each queue: no more can be admitted in one step).
        let mut cached: HashMap<SeqId, (usize, usize)> = HashMap::new();
        if self.pool.prefix_caching() {
            let bs = self.limits.block_size;
            for (k, a) in &ready {
                let ident = a.as_ref().map_or(0, |a| a.content_key);
                let Some(q) = self.queues.get_mut(k) else { continue };
                for s in q.iter_mut().take(self.limits.max_running) {
                    let (blocks, shared) = self.pool.probe(s.cacheable_keys(ident, bs));
                    cached.insert(s.id, (blocks * bs, shared));
                }
            }
        }
        let plan = {
            let running: Vec<RunningView<'_>> = self
                .running
                .iter()
                .map(|s| RunningView {
                    id: s.id,
                    adapter: &s.adapter_key,
                    kv_len: s.kv_len(),
                    pending: s.tokens.len() - s.kv_len(),
                    blocks: s.table.as_ref().map_or(0, |t| t.blocks().len()),
                })
                .collect();
            let waiting: Vec<Vec<WaitingView<'_>>> = ready
                .iter()
                .filter_map(|(k, _)| self.queues.get(k))
                .map(|q| {
                    q.iter()
                        .map(|s| {
                            let (cached_tokens, shared_blocks) = cached.get(&s.id).copied().unwrap_or_default();
                            WaitingView { id: s.id, adapter: &s.adapter_key, tokens: s.tokens.len(), cached_tokens, shared_blocks }
                        })
                        .collect()
                })
                .collect();
            plan_step(&self.limits, &running, &waiting, self.pool.num_free())
        };
        // Next step starts with the queue after this step's first one.
        if let Some((first, _)) = ready.first() {
            self.rr_next = format!("{first}\u{0}");
        }
        self.apply(plan, &ready)
    }

    /// Carries out one step's plan, phase by phase: preempt, admit, run the forward, deliver.
    fn apply(&mut self, plan: Plan, ready: &[(String, Option<Arc<LoadedAdapter<B>>>)]) -> Result<()> {
        self.preempt(&plan.preempt);
        let skipped = self.admit(&plan.admit, ready, Instant::now());
        let work = self.reserve_work(&plan.work, &skipped);
        if work.is_empty() {
            return Ok(());
        }
        let next = self.run_forward(&work)?;
        self.deliver(&work, &next);
        Ok(())
    }

    /// Preempted sequences give their blocks and adapter pin back and wait at the front of
    /// their adapter's queue (their tokens are prefilled again on re-admission).
    fn preempt(&mut self, preempt: &[SeqId]) {
        for id in preempt {
            let Some(i) = self.running.iter().position(|s| s.id == *id) else { continue };
            let mut s = self.running.remove(i);
            s.table = None;
            s.adapter = None;
            s.preemptions += 1;
            self.stats.preemptions += 1;
            self.queues.entry(s.adapter_key.clone()).or_default().push_front(s);
        }
    }

    /// Admitted sequences get their adapter pin and blocks (the prefix cache's leading blocks
    /// first) and, once, their prompt's log-probabilities. Returns the ids the pool could not
    /// place (back in their queue).
    fn admit(&mut self, admit: &[SeqId], ready: &[(String, Option<Arc<LoadedAdapter<B>>>)], now: Instant) -> Vec<SeqId> {
        let mut skipped: Vec<SeqId> = Vec::new();
        for id in admit {
            let Some((key, q)) = self.queues.iter_mut().find(|(_, q)| q.iter().any(|s| s.id == *id)) else { continue };
            let key = key.clone();
            let i = q.iter().position(|s| s.id == *id).unwrap_or(0);
            let Some(mut s) = q.remove(i) else { continue };
            if q.is_empty() {
                self.queues.remove(&key);
            }
            s.adapter = ready.iter().find(|(k, _)| *k == key).and_then(|(_, a)| a.clone());
            // The leading full blocks another request (or this one, before a preemption) left in
            // the prefix cache under this adapter: shared, not prefilled again. At least one
            // token always runs, for the logits of the next.
            let mut table = if self.pool.prefix_caching() {
                let ident = s.adapter.as_ref().map_or(0, |a| a.content_key);
                let queried = s.tokens.len();
                let hit = self.pool.lookup(s.cacheable_keys(ident, self.limits.block_size), queried);
                BlockTable::with_cached_prefix(&self.pool, hit)
            } else {
                BlockTable::new(&self.pool)
            };
            if table.reserve(s.tokens.len() - table.len()).is_err() {
                // The plan counted these blocks as free; cannot happen, but never lose a request.
                skipped.push(s.id);
                s.adapter = None;
                self.queues.entry(key).or_default().push_front(s);
                continue;
            }
            s.table = Some(table);
            let first_admission = s.admitted.is_none();
            s.admitted.get_or_insert(now);
            if s.out.options.prompt_logprobs && first_admission {
                // Once, at the first admission: the prompt's log-probabilities by a forward of
                // their own (the request asked for them; others are not slowed but by this step).
                let prompt = s.tokens[..s.prompt_len].to_vec();
                let top_n = s.out.options.logprobs.unwrap_or(0);
                match super::score::prompt_logprobs(&*self.model, &*self.be, &prompt, s.adapter.as_deref(), top_n) {
                    Ok(logprobs) => {
                        let _ = s.events.send(Event::Prompt { ids: prompt, logprobs });
                    }
                    Err(e) => {
                        let _ = s.events.send(Event::Error(e));
                        self.stats.requests_failed += 1;
                        continue;
                    }
                }
            }
            self.running.push(s);
        }
        skipped
    }

    /// The step's work: `(index into running, tokens to run)`, blocks reserved for each.
    fn reserve_work(&mut self, planned: &[(SeqId, usize)], skipped: &[SeqId]) -> Vec<(usize, usize)> {
        let index: HashMap<SeqId, usize> = self.running.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        let mut work: Vec<(usize, usize)> = Vec::new();
        for &(id, n) in planned {
            if skipped.contains(&id) {
                continue;
            }
            let Some(&i) = index.get(&id) else { continue };
            let s = &mut self.running[i];
            let Some(t) = s.table.as_mut() else { continue };
            // The plan counted a newly admitted sequence's whole prompt; a prefix-cache hit at
            // admission left fewer tokens to compute.
            let n = n.min(s.tokens.len() - t.len());
            if n == 0 || t.reserve(n).is_err() {
                continue;
            }
            work.push((i, n));
        }
        // In running order (the step sorts by adapter itself): `run_forward` pairs them in one pass.
        work.sort_unstable_by_key(|&(i, _)| i);
        work
    }

    /// One forward over the work (`step::run_step`): each sequence's next token where its chunk
    /// reaches the end of its known tokens.
    fn run_forward(&mut self, work: &[(usize, usize)]) -> Result<Vec<Option<u32>>> {
        // `work` is in running order (`reserve_work`): one pass pairs each entry with its sequence,
        // and the step's answers come back in the same order.
        let mut todo = work.iter().peekable();
        let mut seqs: Vec<StepSeq<'_, B>> = Vec::with_capacity(work.len());
        for (i, s) in self.running.iter_mut().enumerate() {
            let Some(&(_, n)) = todo.next_if(|w| w.0 == i) else { continue };
            let Seq { table: Some(table), tokens, adapter, out, .. } = s else {
                return Err(Error::InvalidArgument(format!("sequence {} was scheduled without KV blocks", s.id)));
            };
            let kv = table.len();
            let sampler = if kv + n == tokens.len() { Some(out.sampler_mut()) } else { None };
            seqs.push(StepSeq { table, tokens: &tokens[kv..kv + n], adapter: adapter.as_deref(), sampler });
        }
        let next = run_step(&self.model, &*self.be, &mut self.kv, self.limits.block_size, &mut seqs)?;
        self.stats.steps += 1;
        Ok(next)
    }

    /// After the forward: full blocks go to the prefix cache, sampled tokens to their sequences
    /// and clients (with timings and stats), finished and failed sequences leave (their blocks and
    /// adapter pins are freed on drop).
    fn deliver(&mut self, work: &[(usize, usize)], next: &[Option<u32>]) {
        let eos = self.model.config.eos_token_ids.clone();
        let mut done: Vec<usize> = Vec::new();
        let mut finished: Vec<(EventSender, Finished)> = Vec::new();
        let caching = self.pool.prefix_caching();
        let bs = self.limits.block_size;
        self.precommit_constraints(work, next);
        for (j, &(i, n)) in work.iter().enumerate() {
            let s = &mut self.running[i];
            if let Some(t) = s.table.as_mut() {
                let before = t.len() - n;
                if caching {
                    // Blocks this step filled are offered to the prefix cache.
                    let len = t.len();
                    prefix::extend_keys(&mut s.block_keys, s.key_adapter, &s.tokens[..len], bs);
                    t.publish_full(&s.block_keys, before / bs);
                }
            }
            let Some(token) = next[j] else { continue };
            let logprobs = s.out.sampler_mut().take_logprobs();
            let a = s.out.accept_token(&self.tokenizer, &eos, token);
            let a = match a {
                Ok(a) => a,
                Err(e) => {
                    let _ = s.events.send(Event::Error(e));
                    s.cancel.store(true, Ordering::Relaxed);
                    self.stats.requests_failed += 1;
                    done.push(i);
                    continue;
                }
            };
            s.tokens.push(a.token);
            let t = Instant::now();
            match s.last_token {
                None => self.stats.ttft.observe((t - s.submitted).as_secs_f64()),
                Some(prev) => self.stats.inter_token.observe((t - prev).as_secs_f64()),
            }
            s.first_token.get_or_insert(t);
            s.last_token = Some(t);
            self.stats.generated_tokens += 1;
            let sent = s.events.send(Event::Token { id: a.token, text: a.text, special: a.special, logprobs });
            if !sent {
                // The client went away: cancelled.
                s.cancel.store(true, Ordering::Relaxed);
                done.push(i);
                self.stats.requests_cancelled += 1;
                continue;
            }
            if let Some(reason) = s.out.finish {
                let generated = s.tokens.len() - s.prompt_len;
                let f = Finished {
                    reason,
                    prompt_tokens: s.prompt_len,
                    generated_tokens: generated,
                    token_ids: s.tokens[s.prompt_len..].to_vec(),
                    text: s.out.text().to_string(),
                    ttft: s.first_token.map_or(Duration::ZERO, |f| f - s.submitted),
                    total: t - s.submitted,
                    queue_time: s.admitted.map_or(Duration::ZERO, |a| a - s.submitted),
                    preemptions: s.preemptions,
                };
                self.stats.requests_finished += 1;
                self.stats.prompt_tokens += s.prompt_len as u64;
                finished.push((s.events.clone(), f));
                done.push(i);
            }
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            // Dropping the sequence frees its blocks and its adapter pin.
            self.running.remove(i);
        }
        if !finished.is_empty() {
            // The statistics first, then the answers: a caller who reads `stats()` (or /metrics)
            // once its request finished sees it counted.
            self.publish();
            for (events, f) in finished {
                let _ = events.send(Event::Finished(f));
            }
        }
    }

    /// Structured output: every constrained sequence of the step takes its token into its
    /// parser and computes its next mask (~0.1 ms a token at a 49k vocabulary, bench/structured.rs),
    /// all at once on the pool rather than one after another on the engine thread.
    fn precommit_constraints(&mut self, work: &[(usize, usize)], next: &[Option<u32>]) {
        use rayon::prelude::*;
        let mut token_of: HashMap<usize, u32> = HashMap::new();
        for (j, &(i, _)) in work.iter().enumerate() {
            if let Some(t) = next[j] {
                token_of.insert(i, t);
            }
        }
        let mut todo: Vec<(&mut SeqOutput, u32)> = self
            .running
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.out.is_constrained())
            .filter_map(|(i, s)| token_of.get(&i).map(|&t| (&mut s.out, t)))
            .collect();
        if todo.len() > 1 {
            todo.par_iter_mut().for_each(|(out, t)| out.precommit(*t));
        } else if let Some((out, t)) = todo.pop() {
            out.precommit(t);
        }
    }

    fn publish(&mut self) {
        self.stats.queued = self.queued();
        self.stats.running = self.running.len();
        self.stats.kv_blocks_used = self.pool.num_blocks() - self.pool.num_free();
        self.stats.prefix = self.pool.prefix_stats();
        self.stats.resident_adapters = self.cache.resident();
        self.stats.adapter_residency = self.cache.residency();
        self.stats.adapter_load = self.cache.load_seconds().clone();
        let c = self.cache.stats();
        (self.stats.adapter_disk_loads, self.stats.adapter_uploads, self.stats.adapter_evictions) = (c.disk_loads, c.device_loads, c.device_evictions);
        self.stats.kv_block_size = self.limits.block_size;
        self.stats.max_lora = self.limits.max_active_adapters.saturating_sub(1);
        let mut running: Vec<String> = self.running.iter().map(|s| s.adapter_key.clone()).filter(|k| !k.is_empty()).collect();
        running.sort();
        running.dedup();
        self.stats.running_adapters = running;
        self.stats.waiting_adapters = self.queues.iter().filter(|(k, q)| !k.is_empty() && !q.is_empty()).map(|(k, _)| k.clone()).collect();
        self.stats.updated_unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = self.stats.clone();
    }
}
