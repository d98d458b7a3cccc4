//! Training LoRA adapters on a frozen base (CPU): packed batches of prompt/completion examples
//! (`batch`), the training forward and the backward through the whole decoder (`model`, on the
//! backward ops of `backend::cpu::backward`), and the adapter's gradients (`grads`). The loop
//! (optimizer, schedules, checkpoints) lives in the `lorafleet-trainer` crate.

pub mod grads;
pub mod model;
pub mod resident;
pub mod tiny;

pub use crate::model::BaseFormat;
pub use crate::types::{TokenizedExample, TrainBatch};
pub use grads::LoraGrads;
pub use model::{StepOptions, TrainModel};
pub use resident::ResidentLora;
