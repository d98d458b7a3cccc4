//! `lorafleet-train gradients`: one forward + backward of one (prompt, completion) pair, batch 1,
//! no dropout, writing the loss and the gradient of every LoRA parameter. This is how the
//! trainer is checked against PyTorch autograd (the golden `train` pair).

use std::path::Path;

use lorafleet::backend::train::TrainBackend;
use lorafleet::lora::LoraAdapter;
use lorafleet::train::grads::write_f32_safetensors;
use lorafleet::train::{LoraGrads, StepOptions, TokenizedExample, TrainBatch, TrainModel};
use lorafleet::{Error, Result};

/// The loss (mean cross-entropy over the completion tokens, HF's causal-LM loss) and the
/// gradients of `adapter`'s parameters for one example.
pub fn gradients<B: TrainBackend>(model: &TrainModel<B>, adapter: &LoraAdapter, example: &TokenizedExample, opts: StepOptions) -> Result<(f64, LoraGrads)> {
    let n = example.n_labels();
    if n == 0 {
        return Err(Error::InvalidArgument("the completion has no token to score (it is empty, or the prompt is)".into()));
    }
    let batch = TrainBatch::new(&[example], None);
    let mut grads = LoraGrads::zeros_like(adapter);
    let loss = model.forward_backward(adapter, &batch, 1.0 / n as f32, opts, &mut grads)?;
    Ok((loss, grads))
}

/// Writes `loss` (one f32, shape `[1]`) and `grad.<PEFT key>` for every parameter.
pub fn write(path: &Path, loss: f64, grads: &LoraGrads, adapter: &LoraAdapter) -> Result<()> {
    let loss_v = [loss as f32];
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = vec![("loss".to_string(), vec![1], &loss_v[..])];
    for (name, shape, v) in grads.named(adapter) {
        tensors.push((name, shape.to_vec(), v));
    }
    write_f32_safetensors(path, &tensors)
}
