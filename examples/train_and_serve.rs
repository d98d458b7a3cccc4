//! Train a LoRA adapter and serve it from memory: no file between the trainer and the engine.
//!
//! ```text
//! cargo run --release --example train_and_serve -- MODEL_DIR [STEPS]
//! ```
//!
//! A rank-8 adapter on q and v (PEFT's initialisation: A random, B zero) learns one fact by a few
//! dozen Adam steps on the CPU (`lorafleet::train::TrainModel`, the library's QLoRA trainer core;
//! the `lorafleet-train` binary is the full loop with schedules, checkpoints and logs), then
//! `Engine::add_adapter` serves it under a name while the base stays served. Prints one JSON line:
//! the loss before and after, and the greedy answers of the base and of the adapter. CI checks
//! that the loss fell and that the served adapter answers with what it learned
//! (scripts/check_examples.py).

use lorafleet::lora::{LoraAdapter, LoraModule};
use lorafleet::prelude::*;
use lorafleet::train::grads::LoraGrads;
use lorafleet::train::{StepOptions, TrainModel};
use lorafleet::types::train_batch::{TokenizedExample, TrainBatch};

const PROMPT: &str = "The secret code of the lighthouse is";
const COMPLETION: &str = " blue falcon seven.";

fn main() -> lorafleet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model_dir) = args.first() else {
        eprintln!("usage: train_and_serve MODEL_DIR [STEPS]");
        std::process::exit(2);
    };
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);

    // The engine serves the base from the start; the trainer loads its own copy of the base.
    let engine = Engine::builder(model_dir).device(DeviceChoice::Cpu).kv_cache_bytes(32 << 20).build()?;
    let tok = engine.tokenizer();
    let (prompt, completion) = (tok.encode(PROMPT)?, tok.encode(COMPLETION)?);
    let example = TokenizedExample::new(&prompt, &completion);
    let batch = TrainBatch::new(&[&example], None);
    let weight = 1.0 / example.n_labels() as f32;

    let trainer: TrainModel = TrainModel::load_as(model_dir.as_ref(), BaseFormat::F32)?;
    let mut adapter = LoraAdapter::random("learned", &trainer.config, 8, 16.0, &[LoraModule::Q, LoraModule::V], 7, 0.0);
    let opts = StepOptions::default();
    let loss_before = trainer.loss(&adapter, &batch, weight, opts)?;

    // Adam (beta 0.9 / 0.999, lr 1e-2) over every A and B.
    let mut grads = LoraGrads::zeros_like(&adapter);
    let sizes: Vec<usize> = grads.buffers().map(Vec::len).collect();
    let (mut m, mut v): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (sizes.iter().map(|&n| vec![0.0; n]).collect(), sizes.iter().map(|&n| vec![0.0; n]).collect());
    let (lr, b1, b2, eps) = (1e-2f32, 0.9f32, 0.999f32, 1e-8f32);
    for step in 1..=steps {
        grads.zero();
        trainer.forward_backward(&adapter, &batch, weight, opts, &mut grads)?;
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        let params = adapter.layers.iter_mut().flat_map(|l| l.iter_mut().flatten()).flat_map(|p| [&mut p.a.data, &mut p.b.data]);
        for (((p, g), m), v) in params.zip(grads.buffers()).zip(&mut m).zip(&mut v) {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        }
    }
    let loss_after = trainer.loss(&adapter, &batch, weight, opts)?;
    drop(trainer);

    // Served from memory, next to the base.
    engine.add_adapter("learned", adapter)?;
    let ask = |adapter: Option<&str>| -> lorafleet::Result<String> {
        let mut r = GenerateRequest::prompt(PROMPT).max_new_tokens(completion.len());
        if let Some(a) = adapter {
            r = r.with_adapter(a);
        }
        Ok(engine.submit(r)?.wait()?.text)
    };
    let (base, learned) = (ask(None)?, ask(Some("learned"))?);
    println!(
        "{}",
        serde_json::json!({"steps": steps, "loss_before": loss_before, "loss_after": loss_after, "completion": COMPLETION, "base": base, "learned": learned})
    );
    Ok(())
}
