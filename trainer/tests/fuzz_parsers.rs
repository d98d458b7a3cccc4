//! Seeded mutation fuzzing of every parser of untrusted input: safetensors files (header and
//! data), GGUF headers and tensor infos (and the conversion that reads them), config.json (then
//! the model built from it and the load-time checks), tokenizer.json (then the same checks),
//! adapter_config.json and training checkpoints (trainer_state.json + optimizer.safetensors).
//! Every case must end in a clean error or a valid result: no panic, no hang (10 s per case), no
//! abort. The cases run in a child process under a 3 GiB address-space cap (`ulimit -v`), so a
//! size taken on trust that allocates without end aborts the child, and the test says which
//! parser and case did it.
//!
//! `LORAFLEET_FUZZ_CASES` (default 2000) cases per parser, `LORAFLEET_FUZZ_SEED` (default 1, so
//! CI is reproducible) picks the mutations; the child prints one summary line per parser. With
//! the block_count check of the GGUF conversion removed, seed 22 aborts the child at the cap:
//! the harness sees what it is for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lorafleet::lora::LoraConfig;
use lorafleet::model::gguf::{convert_gguf, GgufFile, OutDType};
use lorafleet::model::ModelConfig;
use lorafleet::rng::SplitMix64;
use lorafleet::train::{BaseFormat, StepOptions, TokenizedExample, TrainModel};
use lorafleet::weights::WeightFiles;
use lorafleet_trainer::checkpoint;
use lorafleet_trainer::optim::{AdamWConfig, Schedule};
use lorafleet_trainer::train_loop::{train, Batching, TrainConfig};

const CHILD_ENV: &str = "LORAFLEET_FUZZ_CHILD";
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn parsers_survive_mutated_input() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // the child runs `fuzz_child` only
    }
    let exe = std::env::current_exe().expect("the test binary");
    // A fixed default, so a CI run is reproducible; other seeds explore further.
    let seed = std::env::var("LORAFLEET_FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(1);
    let t = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg("ulimit -v 3145728 && exec \"$0\" --exact fuzz_child --ignored --nocapture --test-threads 1")
        .arg(&exe)
        .env(CHILD_ENV, "1")
        .env("LORAFLEET_FUZZ_SEED", seed.to_string())
        .output()
        .expect("run the fuzzing child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    // (The first summary shares its line with the harness's `test fuzz_child ... `.)
    let lines: Vec<&str> = stdout.lines().chain(stderr.lines()).filter_map(|l| l.find("fuzz ").map(|i| &l[i..])).collect();
    for l in &lines {
        eprintln!("{l}");
    }
    assert!(
        out.status.success(),
        "the fuzzing child failed (seed {seed}; a signal means an abort, e.g. an allocation past the 3 GiB cap): {}\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(lines.iter().filter(|l| l.contains(" cases, ")).count(), 6, "one summary per parser: {lines:?}");
    eprintln!("fuzzing: seed {seed}, {:.1} s", t.elapsed().as_secs_f64());
}

/// The cases themselves (run by `parsers_survive_mutated_input` in a capped child).
#[test]
#[ignore]
fn fuzz_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let seed: u64 = std::env::var("LORAFLEET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cases: usize = std::env::var("LORAFLEET_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir_guard = tempfile::Builder::new().prefix("lorafleet-fuzz-").tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = Seeds::make(&dir);

    let model_dir = dir.join("model");
    run("safetensors", seed, cases, &seeds.safetensors, &dir, |path| {
        let w = WeightFiles::open_files(&[path.to_path_buf()]).map_err(|e| e.to_string())?;
        let names: Vec<String> = w.names().map(str::to_string).collect();
        for n in names {
            w.f32(&n).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    run("gguf", seed, cases, &seeds.gguf, &dir, |path| {
        // Valid = the reader accepts it; the conversion then runs too (it stops at the missing
        // tokenizer at the latest), so its metadata checks meet the same mutations.
        GgufFile::open(path).map_err(|e| e.to_string())?;
        let out = path.with_extension("out");
        let _ = convert_gguf(path, &out, OutDType::F32, false);
        let _ = std::fs::remove_dir_all(&out);
        Ok(())
    });
    // A config that parses must also build the model from the tiny weights or fail cleanly (a
    // size taken on trust would allocate past the cap here and abort the child).
    let config_case = dir.join("config-case");
    std::fs::create_dir_all(&config_case).unwrap();
    std::fs::copy(model_dir.join("model.safetensors"), config_case.join("model.safetensors")).unwrap();
    let cpu = lorafleet::backend::cpu::CpuBackend::new();
    std::fs::copy(model_dir.join("tokenizer.json"), config_case.join("tokenizer.json")).unwrap();
    let tiny_tok = lorafleet::TextTokenizer::from_dir(&config_case).unwrap();
    run("config.json", seed, cases, &seeds.config, &dir, |path| {
        ModelConfig::from_file(path).map_err(|e| e.to_string())?;
        std::fs::copy(path, config_case.join("config.json")).unwrap();
        let m = lorafleet::model::Llama::load(&cpu, &config_case, false).map_err(|e| e.to_string())?;
        // The load-time checks every verb runs: special ids (in the parse), layers, tokenizer.
        lorafleet::model::check::tokenizer_in(&config_case, &tiny_tok, Some(m.config.vocab_size)).map_err(|e| e.to_string())
    });
    // tokenizer.json: what every verb loads beside the model, then checks (usable, ids inside
    // the vocabulary).
    let tok_case = dir.join("tokenizer-case");
    std::fs::create_dir_all(&tok_case).unwrap();
    run("tokenizer.json", seed, cases, &seeds.tokenizer, &dir, |path| {
        std::fs::copy(path, tok_case.join("tokenizer.json")).unwrap();
        let tok = lorafleet::TextTokenizer::from_dir(&tok_case).map_err(|e| e.to_string())?;
        lorafleet::model::check::tokenizer_in(&tok_case, &tok, Some(64)).map_err(|e| e.to_string())
    });
    run("adapter_config.json", seed, cases, &seeds.adapter_config, &dir, |path| {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        LoraConfig::from_json(&v)?;
        Ok(())
    });
    // Checkpoints: trainer_state.json and optimizer.safetensors mutated in turn, then loaded.
    let model_cfg = ModelConfig::from_file(&model_dir.join("config.json")).unwrap();
    let ckpt = seeds.checkpoint.clone();
    let state_seed = std::fs::read(ckpt.join("trainer_state.json")).unwrap();
    let opt_seed = std::fs::read(ckpt.join("optimizer.safetensors")).unwrap();
    let mut n = 0;
    run("checkpoint", seed, cases, &state_seed, &dir, |path| {
        // Alternate: the state file mutated (this case's bytes), or the optimizer file mutated
        // from a generator of its own (the first case: both as written).
        n += 1;
        let case_dir = path.with_extension("ckpt");
        let _ = std::fs::remove_dir_all(&case_dir);
        std::fs::create_dir_all(&case_dir).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(ckpt.join(f), case_dir.join(f)).unwrap();
        }
        if n == 1 || n % 2 == 0 {
            std::fs::copy(path, case_dir.join("trainer_state.json")).unwrap();
            std::fs::write(case_dir.join("optimizer.safetensors"), &opt_seed).unwrap();
        } else {
            let mut rng = SplitMix64::new(seed ^ n as u64);
            std::fs::write(case_dir.join("trainer_state.json"), &state_seed).unwrap();
            std::fs::write(case_dir.join("optimizer.safetensors"), mutate(&opt_seed, &mut rng)).unwrap();
        }
        let r = checkpoint::load(&case_dir, &model_cfg, AdamWConfig::default()).map(|_| ()).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&case_dir);
        r
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `cases` mutations of `seed_bytes` through `parse` (each from a file), each on its own
/// thread with a deadline; prints `fuzz PARSER: N cases, E errors, V valid, 0 panics, 0 hangs`.
fn run(name: &str, seed: u64, cases: usize, seed_bytes: &[u8], dir: &Path, mut parse: impl FnMut(&Path) -> Result<(), String> + Send) {
    let mut rng = SplitMix64::new(seed ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let (mut errors, mut valid) = (0, 0);
    let path = dir.join(format!("case-{}", name.replace('.', "-")));
    for case in 0..cases {
        // The unmutated seed first: it must parse.
        let bytes = if case == 0 { seed_bytes.to_vec() } else { mutate(seed_bytes, &mut rng) };
        std::fs::write(&path, &bytes).unwrap();
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        let outcome = std::thread::scope(|s| {
            let parse = &mut parse;
            let path = &path;
            s.spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(path)));
                let _ = tx.send(r);
            });
            match rx.recv_timeout(CASE_TIMEOUT) {
                Ok(r) => r,
                Err(_) => {
                    // A hang cannot be stopped from here: report it and end the child.
                    println!("fuzz {name}: case {case} HANGS (over {CASE_TIMEOUT:?}); input kept at {}", path.display());
                    std::process::exit(3);
                }
            }
        });
        match outcome {
            Ok(Ok(())) => valid += 1,
            Ok(Err(msg)) => {
                assert!(!msg.trim().is_empty(), "fuzz {name}: case {case} failed without saying why");
                errors += 1;
            }
            Err(_) => {
                let kept = dir.join(format!("panic-{}-{case}", name.replace('.', "-")));
                let _ = std::fs::copy(&path, &kept);
                panic!("fuzz {name}: case {case} (seed {seed}) PANICKED; input kept at {}", kept.display());
            }
        }
        assert!(case > 0 || valid == 1, "fuzz {name}: the unmutated seed does not parse");
        if started.elapsed() > CASE_TIMEOUT / 2 {
            println!("fuzz {name}: case {case} took {:?}", started.elapsed());
        }
    }
    println!("fuzz {name}: {cases} cases, {errors} clean errors, {valid} valid, 0 panics, 0 hangs");
}

/// One to four byte-level or number-level mutations.
fn mutate(src: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    const WORDS: [u64; 8] = [0, 1, u64::MAX, 1 << 62, 1_000_000_000, 0x7fff_ffff, 0x8000_0000, 4096];
    const NUMBERS: [&str; 10] = ["0", "-1", "1e308", "-1e308", "1e9", "4611686018427387904", "1e-45", "3.5", "\"x\"", "null"];
    let mut b = src.to_vec();
    let ops = 1 + rng.next_u64() % 4;
    for _ in 0..ops {
        if b.is_empty() {
            b.push(0);
        }
        let at = (rng.next_u64() % b.len() as u64) as usize;
        match rng.next_u64() % 8 {
            7 => {
                // Binary headers: a small little-endian count or size (1..=65536, at any offset:
                // GGUF fields are packed) made huge, the likeliest field to be taken on trust.
                let small: Vec<usize> =
                    (0..b.len().saturating_sub(3)).filter(|&i| (1..=65536).contains(&u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))).collect();
                if !small.is_empty() {
                    let i = small[(rng.next_u64() % small.len() as u64) as usize];
                    let big = [1_000_000_000u32, u32::MAX, 0x7fff_ffff, 1 << 24][(rng.next_u64() % 4) as usize];
                    b[i..i + 4].copy_from_slice(&big.to_le_bytes());
                }
            }
            0 => b[at] ^= 1 << (rng.next_u64() % 8),
            1 => b[at] = [0u8, 0xff, 0x7f, 0x80, b'9', b'-', b'"'][(rng.next_u64() % 7) as usize],
            2 => {
                let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].to_le_bytes();
                for (i, x) in w.iter().enumerate() {
                    if at + i < b.len() {
                        b[at + i] = *x;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let len = (rng.next_u64() % 64) as usize;
                let chunk: Vec<u8> = b[at..(at + len).min(b.len())].to_vec();
                b.splice(at..at, chunk);
            }
            5 => {
                // Replace the number starting at or after `at` (JSON files).
                if let Some(s) = (at..b.len()).find(|&i| b[i].is_ascii_digit()) {
                    let e = (s..b.len()).find(|&i| !(b[i].is_ascii_digit() || b"+-.eE".contains(&b[i]))).unwrap_or(b.len());
                    let n = NUMBERS[(rng.next_u64() % NUMBERS.len() as u64) as usize].as_bytes().to_vec();
                    b.splice(s..e, n);
                }
            }
            _ => {
                let n = (rng.next_u64() % 16) as usize;
                let noise: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, noise);
            }
        }
    }
    b
}

/// The valid inputs the mutations start from.
struct Seeds {
    safetensors: Vec<u8>,
    gguf: Vec<u8>,
    config: Vec<u8>,
    tokenizer: Vec<u8>,
    adapter_config: Vec<u8>,
    checkpoint: PathBuf,
}

impl Seeds {
    fn make(dir: &Path) -> Seeds {
        let model = dir.join("model");
        lorafleet::train::tiny::write_tiny_model(&model, 5).unwrap();
        let adapter_config =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/smollm2/adapters/a_r8_all/adapter_config.json")).unwrap();
        // A real checkpoint of a short run on the tiny model.
        let tm = TrainModel::load_as(&model, BaseFormat::F32).unwrap();
        let examples: Vec<TokenizedExample> = (0..4u32).map(|i| TokenizedExample::new(&[1, 4, 5 + i], &[10 + i, 2])).collect();
        let cfg = TrainConfig {
            out_dir: dir.join("run"),
            rank: 2,
            alpha: 4.0,
            modules: vec![lorafleet::lora::LoraModule::Q, lorafleet::lora::LoraModule::V],
            lr: 1e-3,
            schedule: Schedule::Constant,
            warmup_ratio: 0.0,
            epochs: 1,
            max_steps: Some(2),
            micro_batch: 2,
            grad_accum: 1,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            batching: Batching::Packed,
            pad_id: 2,
            seed: 1,
            shuffle: false,
            init_adapter: None,
            checkpoint_every: 1,
            step: StepOptions::default(),
            stop_after: None,
            resume: None,
            progress: false,
            base_model_name: None,
        };
        train(&tm, &examples, &cfg).unwrap();
        Seeds {
            safetensors: std::fs::read(model.join("model.safetensors")).unwrap(),
            gguf: minimal_gguf(),
            config: std::fs::read(model.join("config.json")).unwrap(),
            tokenizer: std::fs::read(model.join("tokenizer.json")).unwrap(),
            adapter_config,
            checkpoint: dir.join("run/checkpoint-1"),
        }
    }
}

/// A small valid GGUF v3 file: llama metadata of a 1-layer model and its F32 tensors (it converts
/// up to the tokenizer, which it lacks: the reader and the metadata checks are what is fuzzed).
fn minimal_gguf() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let (h, ff, vocab) = (8u64, 16u64, 12u64);
    let kv_u32 = [
        ("llama.block_count", 1u32),
        ("llama.context_length", 64),
        ("llama.embedding_length", h as u32),
        ("llama.feed_forward_length", ff as u32),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
    ];
    let tensors: Vec<(String, Vec<u64>)> = [
        ("token_embd.weight".to_string(), vec![h, vocab]),
        ("output_norm.weight".into(), vec![h]),
        ("blk.0.attn_norm.weight".into(), vec![h]),
        ("blk.0.attn_q.weight".into(), vec![h, h]),
        ("blk.0.attn_k.weight".into(), vec![h, h / 2]),
        ("blk.0.attn_v.weight".into(), vec![h, h / 2]),
        ("blk.0.attn_output.weight".into(), vec![h, h]),
        ("blk.0.ffn_norm.weight".into(), vec![h]),
        ("blk.0.ffn_gate.weight".into(), vec![h, ff]),
        ("blk.0.ffn_up.weight".into(), vec![h, ff]),
        ("blk.0.ffn_down.weight".into(), vec![ff, h]),
    ]
    .into_iter()
    .collect();
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend(((kv_u32.len() + 2) as u64).to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    for (k, v) in kv_u32 {
        s(&mut b, k);
        b.extend(4u32.to_le_bytes());
        b.extend(v.to_le_bytes());
    }
    s(&mut b, "llama.attention.layer_norm_rms_epsilon");
    b.extend(6u32.to_le_bytes());
    b.extend(1e-5f32.to_le_bytes());
    let mut offset = 0u64;
    let mut sizes = Vec::new();
    for (name, dims) in &tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
        let n = dims.iter().product::<u64>() * 4;
        sizes.push(n);
        offset += n.next_multiple_of(32);
    }
    b.resize(b.len().next_multiple_of(32), 0);
    let mut rng = SplitMix64::new(9);
    for n in sizes {
        let start = b.len();
        for _ in 0..n / 4 {
            b.extend(((rng.next_u64() % 1000) as f32 / 1000.0 - 0.5).to_le_bytes());
        }
        b.resize(start + (n as usize).next_multiple_of(32), 0);
    }
    b
}
