//! Training checkpoints: `OUT/checkpoint-<step>/` holding the adapter as peft saves it
//! (`adapter_config.json`, `adapter_model.safetensors`), the AdamW moments
//! (`optimizer.safetensors`: `exp_avg.<PEFT key>`, `exp_avg_sq.<PEFT key>`) and
//! `trainer_state.json` (step, seed, the data-order rule, the run's shape). The directory is
//! written as `checkpoint-<step>.tmp` and renamed when complete, so a crash mid-write never
//! leaves a directory that looks like a checkpoint.

use std::path::{Path, PathBuf};

use lorafleet::lora::LoraAdapter;
use lorafleet::train::grads::write_f32_safetensors;
use lorafleet::train::LoraGrads;
use lorafleet::types::config::ModelConfig;
use lorafleet::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamW, AdamWConfig};

/// What a resumed run needs besides the adapter and the moments. The data order is a pure
/// function of (`seed`, epoch), so `step` and `seed` place the run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer updates done.
    pub step: usize,
    pub total_steps: usize,
    pub seed: u64,
    /// State of the generator after the LoRA initialisation (recorded for audit; the data order
    /// is re-derived from `seed`).
    pub rng_state: u64,
    pub n_examples: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub order_rule: String,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
}

pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

fn moments_named<'a>(opt: &'a AdamW, grads: &LoraGrads, adapter: &LoraAdapter) -> Vec<(String, Vec<usize>, &'a [f32])> {
    let named = grads.named(adapter);
    let mut out = Vec::new();
    for (((name, shape, _), m), v) in named.iter().zip(&opt.exp_avg).zip(&opt.exp_avg_sq) {
        let key = name.trim_start_matches("grad.");
        out.push((format!("exp_avg.{key}"), shape.to_vec(), &m[..]));
        out.push((format!("exp_avg_sq.{key}"), shape.to_vec(), &v[..]));
    }
    out
}

/// Writes the checkpoint of `state.step` under `out` and returns its directory.
pub fn save(out: &Path, adapter: &LoraAdapter, opt: &AdamW, grads: &LoraGrads, state: &TrainerState) -> Result<PathBuf> {
    let dir = checkpoint_dir(out, state.step);
    let tmp = out.join(format!("checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    adapter.save(&tmp)?;
    let mut tensors = moments_named(opt, grads, adapter);
    let step_v = [opt.step as f32];
    tensors.push(("step".into(), vec![1], &step_v[..]));
    write_f32_safetensors(&tmp.join("optimizer.safetensors"), &tensors)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    lorafleet::lora::adapter::write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// `dir` itself when it is a checkpoint, else its `checkpoint-<N>` with the largest N.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join("trainer_state.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let best = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join("trainer_state.json").is_file().then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    best.map(|(_, p)| p).ok_or_else(|| Error::InvalidArgument(format!("{}: not a checkpoint and holds no checkpoint-<step> directory", dir.display())))
}

/// Loads a checkpoint: the adapter, the optimizer (moments and step) and the trainer state.
pub fn load(dir: &Path, model: &ModelConfig, adamw: AdamWConfig) -> Result<(LoraAdapter, AdamW, TrainerState)> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::InvalidArgument(format!("{}: {e}", state_path.display())))?;
    let adapter = LoraAdapter::load("checkpoint", dir, model, usize::MAX)?;
    let grads = LoraGrads::zeros_like(&adapter);
    let mut opt = AdamW::new(adamw, &grads);
    let path = dir.join("optimizer.safetensors");
    let w = lorafleet::weights::WeightFiles::open_files(std::slice::from_ref(&path))?;
    for (i, (name, shape, _)) in grads.named(&adapter).iter().enumerate() {
        let key = name.trim_start_matches("grad.");
        opt.exp_avg[i] = w.f32_shaped(&format!("exp_avg.{key}"), &shape[..])?.data;
        opt.exp_avg_sq[i] = w.f32_shaped(&format!("exp_avg_sq.{key}"), &shape[..])?.data;
    }
    let step = w.f32_shaped("step", &[1])?.data[0];
    // The state must be one a run could have written: a step inside the run, the optimizer's
    // step equal to it, finite moments and second moments that are not negative.
    let bad = |m: String| Err(Error::InvalidArgument(format!("{}: {m}; the checkpoint is inconsistent", dir.display())));
    if state.step == 0 || state.step > state.total_steps {
        return bad(format!("trainer_state.json step {} is outside 1..={}", state.step, state.total_steps));
    }
    if !(step.is_finite() && step as u64 as f32 == step && step as usize == state.step) {
        return bad(format!("the optimizer's step {step} differs from trainer_state.json's {}", state.step));
    }
    opt.step = step as u64;
    for (i, (m, v)) in opt.exp_avg.iter().zip(&opt.exp_avg_sq).enumerate() {
        if m.iter().any(|x| !x.is_finite()) || v.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return bad(format!("optimizer moment {i} holds a non-finite or negative value"));
        }
    }
    if state.micro_batch == 0 || state.grad_accum == 0 || state.n_examples == 0 {
        return bad("trainer_state.json has a zero micro_batch, grad_accum or n_examples".into());
    }
    Ok((adapter, opt, state))
}
