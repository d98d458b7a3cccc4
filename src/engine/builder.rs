//! `Engine::builder(model_dir)`: everything an embedding program needs to start serving, in one
//! chain, with the device chosen at run time (`DeviceChoice::Auto` takes a CUDA GPU when there is
//! one): open the backend, load the model and its tokenizer once, size the KV cache and the
//! adapter budget (from free device memory on a GPU, unless set), start the engine thread. The
//! `Engine` it returns is the same type on every backend, so the caller writes no generic code.
//!
//! ```no_run
//! use lorafleet::prelude::*;
//!
//! # fn main() -> lorafleet::Result<()> {
//! let engine = Engine::builder("models/smollm2-135m-instruct")
//!     .device(DeviceChoice::Cpu)
//!     .adapter_dir("adapters")
//!     .kv_cache_bytes(64 << 20)
//!     .build()?;
//! let done = engine.submit(GenerateRequest::prompt("The capital of France is").max_new_tokens(8))?.wait()?;
//! println!("{}", done.text);
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use super::engine::{Engine, EngineOptions};
use crate::backend::device::{open_backend, ActDtype, DeviceChoice, OpenedBackend};
use crate::backend::Backend;
use crate::model::random::RandomModel;
use crate::model::{BaseFormat, HeadFormat};
use crate::runtime::{self, ModelSource};
use crate::Result;

/// Builds an `Engine` from a model folder (see the module docs). Every setting has the
/// default the `lorafleet serve` command uses.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build()"]
pub struct EngineBuilder {
    source: ModelSource,
    device: DeviceChoice,
    act: ActDtype,
    cuda_graphs: bool,
    threads: Option<usize>,
    options: EngineOptions,
    kv_cache_set: bool,
    adapter_memory_set: bool,
}

impl Engine {
    /// A builder that loads a model folder on a device chosen at run time (`EngineBuilder`).
    pub fn builder(model_dir: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder::new(model_dir)
    }
}

impl EngineBuilder {
    fn new(model_dir: impl Into<PathBuf>) -> Self {
        EngineBuilder {
            source: ModelSource { dir: model_dir.into(), format: BaseFormat::default(), head: HeadFormat::default(), random: None, progress: false },
            device: DeviceChoice::Auto,
            act: ActDtype::default(),
            cuda_graphs: true,
            threads: None,
            options: EngineOptions::default(),
            kv_cache_set: false,
            adapter_memory_set: false,
        }
    }

    /// Where to run: `Auto` (the default: CUDA device 0 when available, else the CPU), `Cpu`,
    /// or `Cuda(n)`.
    pub fn device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }

    /// How the base weights are held: f32 (default), bf16, or NF4 (4-bit, QLoRA's format).
    pub fn quantize(mut self, format: BaseFormat) -> Self {
        self.source.format = format;
        self
    }

    /// How the lm_head is held (f32 by default; q8 on the CPU).
    pub fn lm_head(mut self, head: HeadFormat) -> Self {
        self.source.head = head;
        self
    }

    /// Activation dtype on CUDA (f32 by default; bf16 halves activation and KV memory).
    pub fn act_dtype(mut self, act: ActDtype) -> Self {
        self.act = act;
        self
    }

    /// Replay decode steps as CUDA graphs (on by default).
    pub fn cuda_graphs(mut self, on: bool) -> Self {
        self.cuda_graphs = on;
        self
    }

    /// Threads of the CPU pool (all cores by default). Takes effect only if nothing in the
    /// process has used the pool yet.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Seeded random weights of a known shape instead of the folder's checkpoint (tests and
    /// benchmarks; the folder's tokenizer is still used).
    pub fn random_weights(mut self, random: RandomModel) -> Self {
        self.source.random = Some(random);
        self
    }

    /// Progress bars on stderr while the weights load (off by default; drawn only with the
    /// `progress` feature).
    pub fn progress(mut self, on: bool) -> Self {
        self.source.progress = on;
        self
    }

    /// Every folder under `dir` holding an `adapter_config.json` is served by its folder name.
    pub fn adapter_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.cache.adapter_dir = Some(dir.into());
        self
    }

    /// Let a request name an adapter by its path anywhere on this machine.
    pub fn allow_adapter_paths(mut self, on: bool) -> Self {
        self.options.cache.allow_paths = on;
        self
    }

    /// Bytes of backend memory for resident adapters (default: a tenth of the free device
    /// memory on a GPU, the cache's default on the CPU).
    pub fn adapter_memory(mut self, bytes: usize) -> Self {
        self.options.cache.device_budget_bytes = bytes;
        self.adapter_memory_set = true;
        self
    }

    /// Largest LoRA rank accepted.
    pub fn max_rank(mut self, rank: usize) -> Self {
        self.options.cache.max_rank = rank;
        self
    }

    /// KV cache size in bytes (default: 60% of the free device memory on a GPU, 512 MiB on the
    /// CPU).
    pub fn kv_cache_bytes(mut self, bytes: usize) -> Self {
        self.options.kv_cache_bytes = bytes;
        self.kv_cache_set = true;
        self
    }

    /// Tokens per step (decode tokens + prefill chunks).
    pub fn max_batch_tokens(mut self, n: usize) -> Self {
        self.options.max_batch_tokens = n;
        self
    }

    /// Sequences running at once.
    pub fn max_running(mut self, n: usize) -> Self {
        self.options.max_running = n;
        self
    }

    /// Distinct adapters (the base counts as one) in one batch.
    pub fn max_active_adapters(mut self, n: usize) -> Self {
        self.options.max_active_adapters = n;
        self
    }

    /// The most requests queued or running; one more is refused with `Error::QueueFull`.
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.options.max_queued_requests = Some(n);
        self
    }

    /// Reuse the KV blocks of earlier requests with the same leading tokens (on by default).
    pub fn prefix_cache(mut self, on: bool) -> Self {
        self.options.prefix_cache = on;
        self
    }

    /// Every engine setting at once (replaces those set before).
    pub fn options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self.kv_cache_set = true;
        self.adapter_memory_set = true;
        self
    }

    /// Sizes the KV cache (`kv`) and the adapter budget (`adapters`) from the free device
    /// memory on a GPU even though `options` set them (the server's defaults when its flags
    /// are not given).
    #[cfg(feature = "server")]
    pub(crate) fn size_from_device_memory(mut self, kv: bool, adapters: bool) -> Self {
        self.kv_cache_set = !kv;
        self.adapter_memory_set = !adapters;
        self
    }

    /// Opens the device, loads the model and starts the engine.
    pub fn build(self) -> Result<Engine> {
        runtime::set_threads(self.threads)?;
        runtime::check_model_dir(&self.source.dir)?;
        self.options.cache.check().map_err(|e| crate::Error::InvalidArgument(format!("adapter folder (option `adapter_dir`): {e}")))?;
        let (opened, note) = open_backend(self.device, self.act, self.cuda_graphs)?;
        let engine = match opened {
            OpenedBackend::Cpu(be) => self.start(be)?,
            OpenedBackend::Cuda(be) => self.start(be)?,
        };
        Ok(engine.with_device_note(note))
    }

    fn start<B: Backend>(&self, be: B) -> Result<Engine> {
        let runtime::Loaded { be, model, tok } = runtime::load(be, &self.source)?;
        let mut options = self.options.clone();
        if let Some((free, _total)) = be.device_memory() {
            if !self.kv_cache_set {
                options.kv_cache_bytes = free / 10 * 6;
            }
            if !self.adapter_memory_set {
                options.cache.device_budget_bytes = free / 10;
            }
        }
        Engine::start(be, Arc::new(model), Arc::new(tok), options)
    }
}
