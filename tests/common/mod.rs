//! Shared test support: the real model (fetched once through the project's own command into
//! `models/`, shared by every test binary) and the golden reference outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lorafleet::weights::WeightFiles;

pub mod cuda_elem;
pub mod server;

pub const MODEL: &str = "smollm2-135m-instruct";

/// The converted SmolLM2-135M-Instruct directory: `$LORAFLEET_MODEL_DIR`, else
/// `<repo>/models/smollm2-135m-instruct`, fetched and converted on first use.
pub fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::var_os("LORAFLEET_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(MODEL));
        // Several test binaries may start at once: take a lock file beside the directory.
        let lock = dir.with_extension("lock");
        if let Some(p) = lock.parent() {
            std::fs::create_dir_all(p).expect("create models dir");
        }
        let _guard = FileLock::acquire(&lock);
        lorafleet::model::fetch::fetch_model(MODEL, &dir, false).unwrap_or_else(|e| panic!("fetching the test model into {}: {e}", dir.display()))
    })
    .clone()
}

/// A crude cross-process lock: create_new on a file, removed on drop.
struct FileLock(PathBuf);
impl FileLock {
    fn acquire(p: &Path) -> FileLock {
        let start = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(p) {
                Ok(_) => return FileLock(p.to_path_buf()),
                Err(_) if start.elapsed().as_secs() < 900 => std::thread::sleep(std::time::Duration::from_millis(200)),
                Err(e) => panic!("lock {} held for 15 minutes ({e}); remove it if stale", p.display()),
            }
        }
    }
}
impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/smollm2")
}

pub fn golden_json() -> serde_json::Value {
    let p = golden_dir().join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("read golden.json")).expect("parse golden.json")
}

pub fn golden_tensors() -> WeightFiles {
    WeightFiles::open_files(&[golden_dir().join("golden.safetensors")]).expect("open golden.safetensors")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as u32).collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("float")).collect()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Greedy sequences compared up to the first step whose top-2 gap in the golden run is under
/// 1e-3 (past a near-tie, correct f32 implementations may part; see tests/golden/README.md).
pub fn assert_greedy_matches(got: &[u32], want: &[u32], gaps: &[f64], what: &str) {
    let n = gaps.iter().position(|&g| g < 1e-3).unwrap_or(want.len());
    assert!(got.len() >= n, "{what}: {} tokens, need {n}", got.len());
    assert_eq!(&got[..n], &want[..n], "{what}: greedy tokens differ (compared {n} of {})", want.len());
}

/// Relative L2 distance of `got` from `want` (the GPU parity tests' measure); panics on a
/// non-finite element of `got` or an all-zero reference (the test inputs would be wrong).
pub fn rel_l2_f32(got: &[f32], want: &[f32], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {}; want {}", got[i], want[i]);
    }
    let (num, den) = got.iter().zip(want).fold((0f64, 0f64), |(n, d), (&g, &w)| (n + (g as f64 - w as f64).powi(2), d + (w as f64).powi(2)));
    assert!(den > 0.0, "{what}: the reference is all zeros: the test inputs are wrong");
    (num / den).sqrt()
}

/// A small random-weight Llama config (2 layers, hidden 64, 4 query heads over 2 KV heads of 16,
/// vocabulary 97): the CUDA backend's tests run it on the emulator in seconds.
pub fn tiny_config(attention_bias: bool, tied: bool) -> lorafleet::types::config::ModelConfig {
    let json = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 97, "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": {tied},
            "attention_bias": {attention_bias}, "bos_token_id": 1, "eos_token_id": 2}}"#
    );
    lorafleet::types::config::ModelConfig::from_json_str(&json).expect("tiny config")
}

/// `log_softmax(logits)` in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// The log-probability of each of `gen` after `prompt` with the golden adapter `a_r8_all`,
/// from the in-process CPU model's `score` (last-position logits of each prefix): what a
/// server's reported logprobs must equal.
pub fn scored_logprobs(prompt: &[u32], gen: &[u32]) -> Vec<f64> {
    use lorafleet::backend::cpu::CpuBackend;
    use lorafleet::lora::{LoadedAdapter, LoraAdapter};
    let be = CpuBackend::new();
    let model = lorafleet::model::Llama::load(&be, &model_dir(), false).unwrap();
    let a = LoraAdapter::load("a_r8_all", &golden_dir().join("adapters/a_r8_all"), &model.config, 128).unwrap();
    let a = LoadedAdapter::upload(&be, &a).unwrap();
    let mut ids = prompt.to_vec();
    gen.iter()
        .map(|&t| {
            let s = lorafleet::engine::score_with_adapter(&model, &be, &ids, Some(&a)).unwrap();
            ids.push(t);
            log_softmax(&s.last_logits)[t as usize]
        })
        .collect()
}

/// Greedy generation of exactly `max_new_tokens` (EOS ignored): the engine tests' requests.
pub fn greedy(max_new_tokens: usize) -> lorafleet::engine::GenerateOptions {
    lorafleet::engine::GenerateOptions {
        max_new_tokens,
        sampling: lorafleet::engine::SamplingParams::greedy(),
        stop: vec![],
        ignore_eos: true,
        logprobs: None,
        prompt_logprobs: false,
        constraint: None,
    }
}

/// Polls `cond` every 10 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The tokens `Generator` gives one sequence alone, greedy, on any backend: the reference the
/// engine's batched answers are held to.
pub fn solo_tokens<B: lorafleet::backend::Backend>(
    model: &lorafleet::model::Llama<B>,
    be: &B,
    tok: &lorafleet::TextTokenizer,
    prompt: &[u32],
    adapter: Option<&lorafleet::lora::LoadedAdapter<B>>,
    max_new_tokens: usize,
) -> Vec<u32> {
    let g = lorafleet::engine::Generator::new(model, be, tok);
    let req = lorafleet::engine::SeqRequest { prompt_ids: prompt.to_vec(), options: greedy(max_new_tokens) };
    g.generate_with_adapters(&[req], &[adapter], |_, _| {}).expect("generate").remove(0).expect("the sequence").token_ids
}

/// The golden prompts: (ids, greedy24 of base, of a_r8_all, of b_r16_qv_rslora, their gaps).
pub struct GoldenPrompt {
    pub ids: Vec<u32>,
    pub greedy: [Vec<u32>; 3],
    pub gaps: [Vec<f64>; 3],
}

pub fn golden_prompts() -> Vec<GoldenPrompt> {
    let g = golden_json();
    let keys = ["base", "a_r8_all", "b_r16_qv_rslora"];
    g["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| GoldenPrompt {
            ids: ids(&p["ids"]),
            greedy: keys.map(|k| ids(&p[format!("{k}_greedy24")])),
            gaps: keys.map(|k| floats(&p[format!("{k}_greedy24_gap")])),
        })
        .collect()
}

/// (Here, not in server.rs: the trainer's tests include server.rs alone.)
impl server::TestServer {
    /// `lorafleet serve` on the test model with the golden adapters and a 64M KV cache, plus
    /// `extra` flags (a later flag wins over an earlier one).
    pub fn start_golden(extra: &[&str]) -> server::TestServer {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--model".into(), model_dir().into(), "--adapter-dir".into(), golden_dir().join("adapters").into(), "--kv-cache-bytes".into(), "64M".into()];
        args.extend(extra.iter().map(|a| a.into()));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        server::TestServer::start(&args, &[], std::time::Duration::from_secs(300))
    }
}
