//! AdamW with f32 moments and decoupled weight decay (PyTorch's `torch.optim.AdamW`), and the
//! learning-rate schedules of HF transformers (`get_{cosine,linear,constant}_schedule_with_warmup`).

use lorafleet::backend::train::AdamWStep;
use lorafleet::lora::LoraAdapter;
use lorafleet::train::LoraGrads;
use lorafleet::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's betas and eps; weight decay 0 as HF `TrainingArguments` defaults.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments of every LoRA parameter, laid out like `LoraGrads::buffers`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates done so far (the bias correction's t).
    pub step: u64,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

/// The adapter's parameters in the order of `LoraGrads::buffers` (layer, module, A then B).
pub fn params_mut(adapter: &mut LoraAdapter) -> impl Iterator<Item = &mut Vec<f32>> {
    adapter.layers.iter_mut().flatten().flatten().flat_map(|p| [&mut p.a.data, &mut p.b.data])
}

impl AdamW {
    pub fn new(config: AdamWConfig, grads: &LoraGrads) -> Self {
        let zeros: Vec<Vec<f32>> = grads.buffers().map(|b| vec![0.0; b.len()]).collect();
        AdamW { config, step: 0, exp_avg: zeros.clone(), exp_avg_sq: zeros }
    }

    /// Counts one more update and returns its scalars (PyTorch's: `step_size = lr / (1 − β1^t)`,
    /// `√(1 − β2^t)`, `1 − lr·wd`), with `grad_scale` the clipping factor (1: none); the update
    /// itself runs where the parameters are (`ResidentLora::adamw`, or `update` on the host).
    pub fn next_step(&mut self, lr: f32, grad_scale: f32) -> AdamWStep {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.step as i32);
        AdamWStep {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            // torch: step_size = lr / bc1; denom = sqrt(v) / sqrt(bc2) + eps.
            step_size: (lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: 1.0 - lr * c.weight_decay,
            grad_scale,
        }
    }

    /// One update of every parameter with learning rate `lr`, on the host:
    /// `p ← p − lr·wd·p`, then `p ← p − lr · m̂ / (√v̂ + eps)`.
    pub fn update(&mut self, adapter: &mut LoraAdapter, grads: &LoraGrads, lr: f32) -> Result<()> {
        let n = grads.buffers().count();
        if n != self.exp_avg.len() {
            return Err(Error::InvalidArgument(format!("optimizer state holds {} tensors, the adapter {n}", self.exp_avg.len())));
        }
        let step = self.next_step(lr, 1.0);
        for (((p, g), m), v) in params_mut(adapter).zip(grads.buffers()).zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
            if p.len() != g.len() || m.len() != g.len() {
                return Err(Error::InvalidArgument("optimizer state does not match the adapter's shapes".into()));
            }
            for i in 0..p.len() {
                (p[i], m[i], v[i]) = step.apply(p[i], g[i], m[i], v[i]);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// The learning rate of update `step` (0-based) out of `total`, with `warmup` linear warm-up
/// updates, exactly as HF's LambdaLR schedules (so update 0 has lr 0 when warmup > 0).
pub fn learning_rate(schedule: Schedule, peak: f32, step: usize, total: usize, warmup: usize) -> f32 {
    if step < warmup {
        return peak * step as f32 / warmup.max(1) as f32;
    }
    let rest = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / rest;
    let factor = match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => ((total as f64 - step as f64) / rest).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    };
    peak * factor as f32
}

/// HF's warm-up steps for a ratio: `ceil(ratio · total)`.
pub fn warmup_steps(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use lorafleet::lora::LoraModule;
    use lorafleet::types::config::ModelConfig;

    /// Two updates of one parameter against torch.optim.AdamW worked by hand:
    /// p = 1, g = 0.5, lr = 0.1, wd = 0.01. Update 1: m = 0.05, v = 2.5e-4, p = 0.999 − 0.1 ·
    /// (0.05/0.1) / (√(2.5e-4/0.001) + 1e-8) = 0.899. Update 2 (same g): m = 0.095,
    /// v = 4.9975e-4, m̂ = 0.5, v̂ = 0.25, p = 0.899 · 0.999 − 0.1 = 0.798101.
    #[test]
    fn adamw_matches_torch_by_hand() {
        let cfg = ModelConfig::from_json_str(lorafleet::train::tiny::CONFIG_JSON).unwrap();
        let mut adapter = lorafleet::lora::LoraAdapter::random("t", &cfg, 1, 1.0, &[LoraModule::Q], 1, 0.1);
        for p in params_mut(&mut adapter) {
            p.fill(1.0);
        }
        let mut grads = LoraGrads::zeros_like(&adapter);
        for g in grads.buffers_mut() {
            g.fill(0.5);
        }
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() }, &grads);
        opt.update(&mut adapter, &grads, 0.1).unwrap();
        let p0 = adapter.layers[0][0].as_ref().unwrap().a.data[0];
        assert!((p0 - 0.899).abs() < 1e-6, "{p0}");
        opt.update(&mut adapter, &grads, 0.1).unwrap();
        for p in params_mut(&mut adapter) {
            assert!(p.iter().all(|&v| (v - 0.798101).abs() < 1e-5), "{}", p[0]);
        }
    }

    #[test]
    fn schedules_match_hf() {
        // cosine, 100 steps, warmup 3: 0, peak/3, 2peak/3, peak, ..., tail -> 0.
        assert_eq!(learning_rate(Schedule::Cosine, 1.0, 0, 100, 3), 0.0);
        assert!((learning_rate(Schedule::Cosine, 1.0, 2, 100, 3) - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(learning_rate(Schedule::Cosine, 1.0, 3, 100, 3), 1.0);
        let mid = learning_rate(Schedule::Cosine, 1.0, 3 + 97 / 2, 100, 3);
        assert!((mid - 0.5).abs() < 0.02, "{mid}");
        assert!(learning_rate(Schedule::Cosine, 1.0, 99, 100, 3) < 1e-3);
        assert!((learning_rate(Schedule::Linear, 2.0, 50, 100, 0) - 1.0).abs() < 1e-6);
        assert_eq!(learning_rate(Schedule::Constant, 2.0, 99, 100, 10), 2.0);
        assert_eq!(warmup_steps(0.03, 100), 3);
        assert_eq!(warmup_steps(0.03, 101), 4);
    }
}
