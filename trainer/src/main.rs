//! lorafleet-train: the QLoRA trainer CLI. `gradients` runs one forward + backward and writes the
//! loss and every LoRA gradient (the check against PyTorch autograd); `train` fine-tunes a LoRA
//! adapter on a JSONL file of {"prompt", "completion"} examples.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lorafleet::backend::device::{open_backend, ActDtype, DeviceChoice, OpenedBackend};
use lorafleet::backend::train::TrainBackend;
use lorafleet::lora::{LoraAdapter, LoraModule};
use lorafleet::quant::Quantization;
use lorafleet::train::{BaseFormat, StepOptions, TokenizedExample, TrainModel};
use lorafleet::{Error, Result, TextTokenizer};
use lorafleet_trainer::optim::{AdamWConfig, Schedule};
use lorafleet_trainer::train_loop::{Batching, TrainConfig};
use lorafleet_trainer::{data, gradients, train_loop};

#[derive(Parser)]
#[command(
    name = "lorafleet-train",
    version,
    about = "QLoRA trainer for lorafleet: LoRA adapters on a frozen (f32, bf16 or NF4) base, on the CPU or a CUDA GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One forward + backward of one (prompt, completion) pair: writes `loss` and `grad.<PEFT key>`
    /// for every LoRA parameter to a safetensors file.
    Gradients(GradientsArgs),
    /// Fine-tune a LoRA adapter.
    Train(TrainArgs),
}

#[derive(Args)]
struct BaseArgs {
    /// HF model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Quantize the base's linear weights to NF4 while loading (QLoRA).
    #[arg(long)]
    quantize: Option<Quantization>,
    /// Hold the base's linear weights as bf16 (rounded to nearest even as they load: half the
    /// memory of f32; the math stays f32). Embeddings, norms and lm_head stay f32.
    #[arg(long, value_enum, default_value_t = BaseDtype::F32, conflicts_with = "quantize")]
    base_dtype: BaseDtype,
    /// Keep only each layer's input during the forward and recompute the layer in the backward.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Vocabulary rows per chunk of the fused lm_head + cross-entropy.
    #[arg(long, default_value_t = 8192)]
    vocab_chunk: usize,
    /// Where the forward and backward run: auto (CUDA device 0 when one is available, else the
    /// CPU, saying why), cpu, cuda or cuda:N. The same trainer on either: the CUDA run's loss and
    /// gradients are the CPU's within f32 rounding (f32 activations).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct GradientsArgs {
    #[command(flatten)]
    base: BaseArgs,
    /// peft adapter directory whose parameters get gradients.
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long, required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    #[arg(long, required_unless_present = "completion_ids")]
    completion: Option<String>,
    /// The prompt as token ids, comma-separated (instead of --prompt).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, value_delimiter = ',', conflicts_with = "completion")]
    completion_ids: Option<Vec<u32>>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    base: BaseArgs,
    /// JSONL, one {"prompt": ..., "completion": ...} per line.
    #[arg(long)]
    data: PathBuf,
    /// Output directory: checkpoints, loss.jsonl, loss.png, adapter/.
    #[arg(long)]
    out: PathBuf,
    /// Also publish the final adapter to this folder, e.g. `ADAPTER_DIR/NAME` of a running
    /// `lorafleet serve`: the weights are written first and the config last (each through a
    /// rename), so the server sees the folder only when it is complete and serves NAME from its
    /// next request (a folder it already served is read again: the new version).
    #[arg(long)]
    adapter_out: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Comma-separated projections, or all-linear.
    #[arg(long, default_value = "all-linear")]
    target_modules: String,
    #[arg(long, default_value_t = 2e-4)]
    lr: f32,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    schedule: Schedule,
    /// Fraction of the updates spent warming up linearly from 0.
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    /// Examples per micro-batch (one forward + backward).
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    /// Micro-batches per optimizer update (effective batch = micro-batch × this).
    #[arg(long, default_value_t = 4)]
    grad_accum: usize,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// LoRA dropout (PEFT's lora_dropout): each LoRA path's input elements are zeroed with this
    /// probability during training (the rest scaled by 1 / (1 - p)); fresh masks every micro-batch.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    #[arg(long, value_enum, default_value_t = Batching::SharedPrefix)]
    batching: Batching,
    #[arg(long, default_value_t = 512)]
    max_seq_len: usize,
    /// Seed of the LoRA init and of the data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Take the examples in file order every epoch instead of a seeded shuffle.
    #[arg(long)]
    no_shuffle: bool,
    /// Start from this PEFT adapter (same rank, alpha and modules) instead of a fresh init, e.g.
    /// the initial adapter of another trainer, to compare the two from the same weights.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    init_adapter: Option<PathBuf>,
    /// Save a checkpoint every N updates (0: only at the end).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Continue from a checkpoint directory (or the latest checkpoint-N under it).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this many updates as if interrupted (the schedule still spans the whole run).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BaseDtype {
    F32,
    Bf16,
}

/// Loads the frozen base as the flags say onto `backend` and reports what it holds.
fn load_base<B: TrainBackend>(b: &BaseArgs, backend: B) -> Result<TrainModel<B>> {
    let format = BaseFormat::from_flags(b.quantize, b.base_dtype == BaseDtype::Bf16);
    let model = TrainModel::load_on(backend, &b.model, format)?;
    eprintln!("base {}: linear weights {format:?}, {:.1} MB", b.model.display(), model.linear_weight_bytes() as f64 / 1e6);
    Ok(model)
}

/// Runs `$body` with `$model` the base loaded on the backend `--device` opens (f32 activations:
/// the trainer's math is f32 on every backend).
macro_rules! on_device {
    ($args:expr, $model:ident => $body:expr) => {{
        let (opened, note) = open_backend($args.device, ActDtype::F32, false)?;
        eprintln!("{note}");
        match opened {
            OpenedBackend::Cpu(be) => {
                let $model = load_base(&$args, be)?;
                $body
            }
            OpenedBackend::Cuda(be) => {
                let $model = load_base(&$args, be)?;
                $body
            }
        }
    }};
}

/// The step options the flags give; `--vocab-chunk 0` is refused (it used to be taken as 1
/// without a word).
fn step_options(b: &BaseArgs) -> Result<StepOptions> {
    if b.vocab_chunk == 0 {
        return Err(Error::InvalidArgument("--vocab-chunk must be at least 1".into()));
    }
    Ok(StepOptions { checkpoint_activations: b.checkpoint_activations, vocab_chunk: b.vocab_chunk, ..StepOptions::default() })
}

fn run_gradients(a: GradientsArgs) -> Result<()> {
    let t0 = Instant::now();
    on_device!(a.base, model => gradients_on(&model, &a, t0))
}

fn gradients_on<B: TrainBackend>(model: &TrainModel<B>, a: &GradientsArgs, t0: Instant) -> Result<()> {
    let (prompt, completion) = match (a.prompt_ids.clone(), a.completion_ids.clone()) {
        (Some(p), Some(c)) => (p, c),
        (p, c) => {
            let tok = TextTokenizer::from_dir(&a.base.model)?;
            lorafleet::model::check::tokenizer_in(&a.base.model, &tok, Some(model.config.vocab_size))?;
            let p = match p {
                Some(p) => p,
                None => tok.encode(a.prompt.as_deref().unwrap_or_default())?,
            };
            let c = match c {
                Some(c) => c,
                None => tok.encode(a.completion.as_deref().unwrap_or_default())?,
            };
            (p, c)
        }
    };
    let id = a.adapter.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
    let adapter = LoraAdapter::load(&id, &a.adapter, &model.config, usize::MAX)?;
    let loaded = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (loss, grads) = gradients::gradients(model, &adapter, &TokenizedExample::new(&prompt, &completion), step_options(&a.base)?)?;
    let step = t1.elapsed().as_secs_f64();
    gradients::write(&a.out, loss, &grads, &adapter)?;
    eprintln!(
        "loss {loss:.6} over {} completion tokens ({} tokens); grad norm {:.6e}; load {loaded:.2}s, forward+backward {step:.2}s; wrote {}",
        completion.len(),
        prompt.len() + completion.len(),
        grads.global_norm(),
        a.out.display()
    );
    Ok(())
}

fn parse_modules(s: &str) -> Result<Vec<LoraModule>> {
    if s == "all-linear" {
        return Ok(LoraModule::ALL.to_vec());
    }
    s.split(',')
        .map(|name| {
            LoraModule::ALL.into_iter().find(|m| m.name() == name.trim()).ok_or_else(|| {
                Error::InvalidArgument(format!("unknown target module `{name}` (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, all-linear)"))
            })
        })
        .collect()
}

fn run_train(a: TrainArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.lora_dropout) {
        return Err(Error::InvalidArgument(format!("--lora-dropout {} is outside [0, 1)", a.lora_dropout)));
    }
    let cfg = TrainConfig {
        out_dir: a.out.clone(),
        rank: a.rank,
        alpha: a.alpha,
        modules: parse_modules(&a.target_modules)?,
        lr: a.lr,
        schedule: a.schedule,
        warmup_ratio: a.warmup_ratio,
        epochs: a.epochs,
        max_steps: a.max_steps,
        micro_batch: a.micro_batch,
        grad_accum: a.grad_accum,
        max_grad_norm: a.max_grad_norm,
        adamw: AdamWConfig { weight_decay: a.weight_decay, ..AdamWConfig::default() },
        batching: a.batching,
        pad_id: 0, // set from the model below
        seed: a.seed,
        shuffle: !a.no_shuffle,
        init_adapter: a.init_adapter.clone(),
        checkpoint_every: a.checkpoint_every,
        step: StepOptions { lora_dropout: a.lora_dropout, ..step_options(&a.base)? },
        stop_after: a.stop_after,
        resume: a.resume.clone(),
        progress: !a.no_progress,
        base_model_name: Some(a.base.model.display().to_string()),
    };
    // Every count and rate, before anything loads.
    cfg.validate()?;
    on_device!(a.base, model => train_on(&model, &a, cfg))
}

fn train_on<B: TrainBackend>(model: &TrainModel<B>, a: &TrainArgs, mut cfg: TrainConfig) -> Result<()> {
    let tok = TextTokenizer::from_dir(&a.base.model)?;
    lorafleet::model::check::tokenizer_in(&a.base.model, &tok, Some(model.config.vocab_size))?;
    let examples = data::read_examples(&a.data, &tok, a.max_seq_len)?;
    cfg.pad_id = model.config.eos_token_ids.first().copied().unwrap_or(0);
    let tokens: usize = examples.iter().map(|e| e.ids.len()).sum();
    eprintln!("{} examples ({tokens} tokens) from {}; {} updates", examples.len(), a.data.display(), train_loop::total_steps(examples.len(), &cfg));
    let s = train_loop::train(model, &examples, &cfg)?;
    if let Some(last) = s.log.last() {
        eprintln!(
            "step {}/{}: loss {:.4}; {} tokens in {:.1}s ({:.1} tokens/s); log {}",
            last.step,
            s.total_steps,
            last.loss,
            s.tokens,
            s.elapsed_s,
            s.tokens as f64 / s.elapsed_s.max(1e-9),
            a.out.join("loss.jsonl").display()
        );
    }
    if let Some(dest) = &a.adapter_out {
        publish_adapter(&a.out.join("adapter"), dest)?;
        eprintln!("adapter published to {}", dest.display());
    }
    Ok(())
}

/// Copies the adapter folder `from` to `to`: weights first, config last, each file through a
/// temporary file and a rename (a server watching `to` never reads half a file, and reads the
/// folder as an adapter only once its config is there).
fn publish_adapter(from: &std::path::Path, to: &std::path::Path) -> lorafleet::Result<()> {
    std::fs::create_dir_all(to).map_err(|e| lorafleet::Error::io(to, e))?;
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        let src = from.join(f);
        let bytes = std::fs::read(&src).map_err(|e| lorafleet::Error::io(&src, e))?;
        lorafleet::lora::adapter::write_atomic(&to.join(f), &bytes)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // Before any thread starts: freed activation buffers stay in the process (src/heap.rs).
    lorafleet::heap::keep_freed_memory();
    let cli: Cli = lorafleet::cli_env::parse();
    // The whole run on a thread of the CPU backend's pool (why: backend::cpu::on_pool).
    let r = lorafleet::backend::cpu::on_pool(|| match cli.command {
        Command::Gradients(a) => run_gradients(a),
        Command::Train(a) => run_train(a),
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", lorafleet::cli_flags::with_flag_names(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
