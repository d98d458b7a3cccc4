//! The training loop: LoRA init like peft, a deterministic data order, micro-batches (packed or
//! padded) with gradient accumulation, loss on completion tokens only, global-norm clipping,
//! AdamW under a schedule, a progress bar, a JSONL loss log, and checkpoints every N updates
//! that `--resume` continues from exactly (the resumed run follows the same loss curve).
//!
//! Loss normalisation: every labelled token of an optimizer step (all its micro-batches) weighs
//! `1 / labelled tokens of the step`, so the update is the gradient of the mean cross-entropy
//! over the effective batch's completion tokens whatever the micro-batch split (as HF Trainer
//! with `num_items_in_batch`).
//!
//! Data order: epoch `e` visits the examples in the permutation drawn by
//! `SplitMix64::new(seed ^ (e + 1) · 0x9E37…)`; an epoch is cut into micro-batches of
//! `micro_batch` examples and those into steps of `grad_accum` micro-batches (the epoch's last
//! step may hold fewer). Update `s` therefore covers a fixed set of examples given (seed, s).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lorafleet::backend::train::TrainBackend;
use lorafleet::backend::HostMatrix;
use lorafleet::lora::{LoraAdapter, LoraConfig, LoraModule, LoraPair};
use lorafleet::train::{LoraGrads, ResidentLora, StepOptions, TokenizedExample, TrainBatch, TrainModel};
use lorafleet::types::config::ModelConfig;
use lorafleet::{Error, Result};

use crate::checkpoint::{self, TrainerState};
pub use crate::log::LogEntry;
use crate::optim::{learning_rate, warmup_steps, AdamW, AdamWConfig, Schedule};
use lorafleet::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Batching {
    /// Sequences back to back, no padding (attention stays inside each).
    Packed,
    /// Every sequence right-padded to the micro-batch's longest.
    Padded,
    /// Packed, with the prompt prefix common to the micro-batch's examples (an instruction
    /// template) laid out and computed once; the same loss and gradients as packed.
    SharedPrefix,
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub out_dir: PathBuf,
    pub rank: usize,
    pub alpha: f32,
    pub modules: Vec<LoraModule>,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub epochs: usize,
    /// Overrides the number of updates epochs give.
    pub max_steps: Option<usize>,
    pub micro_batch: usize,
    pub grad_accum: usize,
    /// Global-norm clipping threshold; 0 turns clipping off.
    pub max_grad_norm: f32,
    pub adamw: AdamWConfig,
    pub batching: Batching,
    pub pad_id: u32,
    pub seed: u64,
    /// Shuffle the examples each epoch (seeded); off: every epoch in file order.
    pub shuffle: bool,
    /// Start from this PEFT adapter instead of a fresh init (its rank, alpha and modules must be
    /// the run's): to train from exactly the initial weights of another trainer.
    pub init_adapter: Option<PathBuf>,
    /// Save a checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    pub step: StepOptions,
    /// Stop after this many updates in total, as if interrupted (the schedule still spans the
    /// whole run): for tests of `--resume`.
    pub stop_after: Option<usize>,
    pub resume: Option<PathBuf>,
    pub progress: bool,
    /// Written into the adapter config.
    pub base_model_name: Option<String>,
}

pub struct TrainSummary {
    pub adapter: LoraAdapter,
    pub log: Vec<LogEntry>,
    pub total_steps: usize,
    pub tokens: u64,
    pub elapsed_s: f64,
}

/// peft's default init: A ~ kaiming_uniform(a = √5) = U(−1/√in, 1/√in), B = 0.
pub fn init_adapter(model: &ModelConfig, rank: usize, alpha: f32, modules: &[LoraModule], rng: &mut SplitMix64, base: Option<String>) -> LoraAdapter {
    let mut config = LoraConfig::new(rank, alpha, modules);
    config.base_model_name_or_path = base;
    let layers = (0..model.num_layers)
        .map(|li| {
            let mut ll: [Option<LoraPair>; 7] = Default::default();
            for m in LoraModule::ALL.into_iter().filter(|m| modules.contains(m)) {
                let (out_f, in_f) = m.dims(model);
                let (r, scale) = config.rank_and_scale(li, m);
                let bound = 1.0 / (in_f as f32).sqrt();
                let a = HostMatrix { name: m.peft_key(li, 'A'), rows: r, cols: in_f, data: (0..r * in_f).map(|_| rng.uniform_in(-bound, bound)).collect() };
                let b = HostMatrix { name: m.peft_key(li, 'B'), rows: out_f, cols: r, data: vec![0.0; out_f * r] };
                ll[m.index()] = Some(LoraPair { a, b, scale });
            }
            ll
        })
        .collect();
    LoraAdapter { id: "trained".into(), config, layers }
}

/// The data order, as recorded in a checkpoint (a resumed run must use the same).
fn order_rule(shuffle: bool) -> &'static str {
    if shuffle {
        "epoch e: SplitMix64(seed ^ (e+1)*0x9E3779B97F4A7C15) Fisher-Yates permutation"
    } else {
        "file order every epoch"
    }
}

/// `--init-adapter`: a PEFT adapter whose rank, alpha and modules are this run's.
fn load_init_adapter<B: TrainBackend>(dir: &Path, model: &TrainModel<B>, cfg: &TrainConfig) -> Result<LoraAdapter> {
    let mut a = LoraAdapter::load("init", dir, &model.config, usize::MAX)?;
    let c = &a.config;
    let modules: Vec<LoraModule> = LoraModule::ALL.into_iter().filter(|m| a.layers.iter().any(|l| l[m.index()].is_some())).collect();
    let mut want = cfg.modules.clone();
    want.sort_by_key(|m| m.index());
    let uniform = a.pairs().all(|(_, _, p)| p.rank() == cfg.rank);
    if c.r != cfg.rank
        || c.lora_alpha != cfg.alpha
        || c.use_rslora
        || !uniform
        || modules != want
        || a.layers.iter().any(|l| l.iter().flatten().count() != want.len())
    {
        return Err(Error::InvalidArgument(format!(
            "{}: the initial adapter (r {}, alpha {}, rslora {}, modules {:?}, on every layer: {}) does not match this run (r {}, alpha {}, modules {:?})",
            dir.display(),
            c.r,
            c.lora_alpha,
            c.use_rslora,
            modules,
            uniform,
            cfg.rank,
            cfg.alpha,
            want
        )));
    }
    a.id = "trained".into();
    a.config.base_model_name_or_path = cfg.base_model_name.clone();
    Ok(a)
}

/// The examples (indices) of each micro-batch of update `step`.
/// The dropout seed of micro-batch `micro` of update `step`.
fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let mut r = SplitMix64::new(seed ^ 0xd40f_0a7e ^ ((step as u64) << 20 | micro as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    r.next_u64()
}

fn step_micro_batches(n: usize, micro_batch: usize, grad_accum: usize, seed: u64, shuffle: bool, step: usize) -> Vec<Vec<usize>> {
    let mbs_per_epoch = n.div_ceil(micro_batch);
    let steps_per_epoch = mbs_per_epoch.div_ceil(grad_accum);
    let (epoch, k) = (step / steps_per_epoch, step % steps_per_epoch);
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        SplitMix64::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
    }
    (k * grad_accum..((k + 1) * grad_accum).min(mbs_per_epoch)).map(|j| order[j * micro_batch..((j + 1) * micro_batch).min(n)].to_vec()).collect()
}

pub fn total_steps(n: usize, cfg: &TrainConfig) -> usize {
    cfg.max_steps.unwrap_or(n.div_ceil(cfg.micro_batch).div_ceil(cfg.grad_accum) * cfg.epochs)
}

/// Keeps the log lines of updates `<= step` (a resumed run rewrites what follows).
fn read_log(path: &Path, up_to: usize) -> Vec<LogEntry> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str::<LogEntry>(l).ok()).filter(|e| e.step <= up_to).collect())
        .unwrap_or_default()
}

fn write_log(path: &Path, log: &[LogEntry]) -> Result<()> {
    let mut text = String::new();
    for e in log {
        text.push_str(&serde_json::to_string(e).map_err(|e| Error::InvalidArgument(e.to_string()))?);
        text.push('\n');
    }
    lorafleet::lora::adapter::write_atomic(path, text.as_bytes())
}

fn progress_bar(show: bool, total: usize, start: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} [{elapsed_precise} eta {eta}]") {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_position(start as u64);
    b
}

impl TrainConfig {
    /// Every count at least 1 and every rate finite and in range, naming the flag at fault: a
    /// zero batch would divide by zero, a NaN rate would train into NaN weights.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        for (flag, v) in [("--micro-batch", self.micro_batch), ("--grad-accum", self.grad_accum), ("--rank", self.rank)] {
            if v == 0 {
                return bad(format!("{flag} must be at least 1"));
            }
        }
        // A rank past this is no adapter (it exceeds every projection of released models and
        // would allocate gigabytes per layer before the first step).
        if self.rank > 1024 {
            return bad(format!("--rank {} is above the limit of 1024", self.rank));
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return bad("--epochs must be at least 1 (or give --max-steps)".into());
        }
        if self.max_steps == Some(0) {
            return bad("--max-steps must be at least 1".into());
        }
        if self.modules.is_empty() {
            return bad("--target-modules names no module".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {} must be a finite number above 0", self.lr));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("--alpha {} must be a finite number above 0", self.alpha));
        }
        if !(self.warmup_ratio.is_finite() && (0.0..=1.0).contains(&self.warmup_ratio)) {
            return bad(format!("--warmup-ratio {} is outside [0, 1]", self.warmup_ratio));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!("--max-grad-norm {} must be finite and at least 0 (0: no clipping)", self.max_grad_norm));
        }
        if !(self.adamw.weight_decay.is_finite() && self.adamw.weight_decay >= 0.0) {
            return bad(format!("--weight-decay {} must be finite and at least 0", self.adamw.weight_decay));
        }
        let p = self.step.lora_dropout;
        if !(0.0..1.0).contains(&p) {
            return bad(format!("--lora-dropout {p} is outside [0, 1)"));
        }
        Ok(())
    }
}

/// Trains an adapter on `examples`; writes checkpoints, `loss.jsonl` and the final adapter
/// (`adapter/`) under `cfg.out_dir`.
pub fn train<B: TrainBackend>(model: &TrainModel<B>, examples: &[TokenizedExample], cfg: &TrainConfig) -> Result<TrainSummary> {
    cfg.validate()?;
    if examples.is_empty() {
        return Err(Error::InvalidArgument("train: no examples".into()));
    }
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
    let n = examples.len();
    let total = total_steps(n, cfg);
    let warmup = warmup_steps(cfg.warmup_ratio, total);
    let mut rng = SplitMix64::new(cfg.seed);
    let log_path = cfg.out_dir.join("loss.jsonl");
    let (mut adapter, mut opt, mut state, mut log) = match &cfg.resume {
        Some(dir) => {
            let dir = checkpoint::resolve(dir)?;
            let (mut adapter, opt, state) = checkpoint::load(&dir, &model.config, cfg.adamw)?;
            if state.order_rule != order_rule(cfg.shuffle) {
                return Err(Error::InvalidArgument(format!(
                    "{}: the checkpoint's data order is \"{}\"; this run's is \"{}\" (--no-shuffle must match)",
                    dir.display(),
                    state.order_rule,
                    order_rule(cfg.shuffle)
                )));
            }
            if state.seed != cfg.seed
                || state.n_examples != n
                || state.total_steps != total
                || state.micro_batch != cfg.micro_batch
                || state.grad_accum != cfg.grad_accum
            {
                return Err(Error::InvalidArgument(format!(
                    "{}: the checkpoint was taken with seed {}, {} examples, {} steps, micro-batch {}, accumulation {}; this run has seed {}, {n}, {total}, {}, {}",
                    dir.display(), state.seed, state.n_examples, state.total_steps, state.micro_batch, state.grad_accum, cfg.seed, cfg.micro_batch, cfg.grad_accum
                )));
            }
            // The adapter must be the one these flags would train.
            let c = &adapter.config;
            let mut modules: Vec<&str> = cfg.modules.iter().map(|m| m.name()).collect();
            modules.sort_unstable();
            let mut saved: Vec<&str> = LoraModule::ALL.iter().filter(|m| adapter.layers.iter().any(|l| l[m.index()].is_some())).map(|m| m.name()).collect();
            saved.sort_unstable();
            if c.r != cfg.rank || c.lora_alpha != cfg.alpha || saved != modules {
                return Err(Error::InvalidArgument(format!(
                    "{}: the checkpoint's adapter has rank {}, alpha {} on {saved:?}; this run asks rank {}, alpha {} on {modules:?}",
                    dir.display(),
                    c.r,
                    c.lora_alpha,
                    cfg.rank,
                    cfg.alpha
                )));
            }
            adapter.id = "trained".into();
            let log = read_log(&log_path, state.step);
            (adapter, opt, state, log)
        }
        None => {
            let adapter = match &cfg.init_adapter {
                Some(dir) => load_init_adapter(dir, model, cfg)?,
                None => init_adapter(&model.config, cfg.rank, cfg.alpha, &cfg.modules, &mut rng, cfg.base_model_name.clone()),
            };
            let opt = AdamW::new(cfg.adamw, &LoraGrads::zeros_like(&adapter));
            let state = TrainerState {
                step: 0,
                total_steps: total,
                seed: cfg.seed,
                rng_state: rng.state(),
                n_examples: n,
                micro_batch: cfg.micro_batch,
                grad_accum: cfg.grad_accum,
                order_rule: order_rule(cfg.shuffle).into(),
                tokens_seen: 0,
                elapsed_s: 0.0,
            };
            (adapter, opt, state, Vec::new())
        }
    };
    // What the adapter_config.json of every checkpoint and of the result records.
    adapter.config.lora_dropout = cfg.step.lora_dropout;
    // Start the log afresh (or cut it back to the resumed step); lines are appended as we go.
    write_log(&log_path, &log)?;
    // Names and shapes of the checkpoints' tensors; the values live on the backend.
    let grads = LoraGrads::zeros_like(&adapter);
    // The adapter, its gradients and AdamW's moments stay on the backend for the whole run; the
    // host copies are brought up to date for each checkpoint and the final adapter.
    let mut resident = ResidentLora::upload(model, &adapter, &opt.exp_avg, &opt.exp_avg_sq)?;
    let bar = progress_bar(cfg.progress, total, state.step);
    let started = Instant::now();
    let elapsed0 = state.elapsed_s;
    let end = cfg.stop_after.map_or(total, |s| s.min(total));
    while state.step < end {
        let step_started = Instant::now();
        let lr = learning_rate(cfg.schedule, cfg.lr, state.step, total, warmup);
        let micro = step_micro_batches(n, cfg.micro_batch, cfg.grad_accum, cfg.seed, cfg.shuffle, state.step);
        let labels: usize = micro.iter().flatten().map(|&i| examples[i].n_labels()).sum();
        resident.zero_grads(model)?;
        let (mut loss, mut tokens) = (0.0f64, 0usize);
        if labels > 0 {
            let weight = 1.0 / labels as f32;
            for (mi, mb) in micro.iter().enumerate() {
                let exs: Vec<&TokenizedExample> = mb.iter().map(|&i| &examples[i]).collect();
                let batch = match cfg.batching {
                    Batching::Packed => TrainBatch::new(&exs, None),
                    Batching::Padded => TrainBatch::new(&exs, Some(cfg.pad_id)),
                    Batching::SharedPrefix => TrainBatch::shared_prefix(&exs),
                };
                tokens += exs.iter().map(|e| e.ids.len()).sum::<usize>();
                // Fresh dropout masks per micro-batch, a function of (seed, update, micro-batch)
                // only, so a resumed run draws the same ones.
                let step_opts = StepOptions { dropout_seed: dropout_seed(cfg.seed, state.step, mi), ..cfg.step };
                loss += model.forward_backward_resident(&adapter, &mut resident, &batch, weight, step_opts)?;
            }
        }
        let grad_norm = resident.grad_norm(model)?;
        // A diverged step stops the run before it reaches the weights (or the checkpoints).
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "update {}: the loss is {loss} and the gradient norm {grad_norm}: training diverged (lower --lr or --alpha, or check the data); the last checkpoint is intact",
                state.step + 1
            )));
        }
        // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6).
        let clip = if cfg.max_grad_norm > 0.0 && grad_norm > cfg.max_grad_norm as f64 { (cfg.max_grad_norm as f64 / (grad_norm + 1e-6)) as f32 } else { 1.0 };
        resident.adamw(model, &opt.next_step(lr, clip))?;
        state.step += 1;
        state.tokens_seen += tokens as u64;
        let dt = step_started.elapsed().as_secs_f64();
        let elapsed = elapsed0 + started.elapsed().as_secs_f64();
        state.elapsed_s = elapsed;
        let steps_per_epoch = n.div_ceil(cfg.micro_batch).div_ceil(cfg.grad_accum);
        let entry = LogEntry {
            step: state.step,
            epoch: state.step as f64 / steps_per_epoch as f64,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            elapsed_s: elapsed,
        };
        bar.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", entry.loss, lr, entry.tokens_per_s));
        bar.set_position(state.step as u64);
        append_log(&log_path, &entry)?;
        log.push(entry);
        if (cfg.checkpoint_every > 0 && state.step.is_multiple_of(cfg.checkpoint_every)) || state.step == total {
            resident.download(model, &mut adapter, &mut opt.exp_avg, &mut opt.exp_avg_sq)?;
            checkpoint::save(&cfg.out_dir, &adapter, &opt, &grads, &state)?;
            draw_plot(&cfg.out_dir, &log);
        }
    }
    bar.finish_and_clear();
    resident.download(model, &mut adapter, &mut opt.exp_avg, &mut opt.exp_avg_sq)?;
    if state.step == total {
        adapter.save(&cfg.out_dir.join("adapter"))?;
    }
    Ok(TrainSummary { adapter, log, total_steps: total, tokens: state.tokens_seen, elapsed_s: state.elapsed_s })
}

/// `loss.png` next to the log; a plot that fails (e.g. no font, a full disk) warns and training
/// goes on.
fn draw_plot(out: &Path, log: &[LogEntry]) {
    if let Err(e) = crate::plot::plot_loss(&out.join("loss.png"), log) {
        eprintln!("warning: {e}");
    }
}

/// Appends one line, so the log is readable while training runs.
fn append_log(path: &Path, e: &LogEntry) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|err| Error::io(path, err))?;
    let line = serde_json::to_string(e).map_err(|err| Error::InvalidArgument(err.to_string()))?;
    writeln!(f, "{line}").map_err(|err| Error::io(path, err))
}
