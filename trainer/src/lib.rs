//! lorafleet-trainer: the QLoRA trainer on lorafleet's backends. The math (training forward,
//! backward ops, gradients) is in `lorafleet::train`; this crate holds the verbs around it:
//! `gradients` (one forward + backward, checked against PyTorch autograd) and the training loop
//! (`train_loop`: data, AdamW, schedules, accumulation, clipping, checkpoints, resume, logs).

pub mod checkpoint;
pub mod data;
pub mod gradients;
pub mod log;
pub mod optim;
pub mod plot;
pub mod train_loop;
