//! A LoRA adapter kept on the backend for a whole training run: its parameters, their gradients
//! and AdamW's moments, so that an update never leaves the device (`TrainBackend::adamw_step`
//! per tensor, the global gradient norm from `sum_squares`). The host copies (`LoraAdapter`,
//! the trainer's `AdamW` state) are brought up to date by `download`, for checkpoints and the
//! final adapter only.

use crate::backend::train::{AdamWStep, TrainBackend};
use crate::lora::LoraAdapter;
use crate::{Error, Result};

use super::model::{PerModule, StepPair};
use super::TrainModel;

/// Per parameter tensor (layer, module, A then B): the moments `(m, v)`.
type Moments<T> = PerModule<((T, T), (T, T))>;

/// An adapter under training kept on the backend for the whole run: its pairs, their gradients
/// and AdamW's moments (host copies only for checkpoints).
pub struct ResidentLora<B: TrainBackend> {
    pairs: PerModule<StepPair<B>>,
    grads: PerModule<(B::Tensor, B::Tensor)>,
    moments: Moments<B::Tensor>,
}

impl<B: TrainBackend> ResidentLora<B> {
    /// Puts `adapter` and its AdamW moments on `model`'s backend. `exp_avg` and `exp_avg_sq` hold
    /// one buffer per parameter tensor in the order of `LoraGrads::buffers` (layer, module, A then
    /// B), as the trainer's checkpoints store them.
    pub fn upload(model: &TrainModel<B>, adapter: &LoraAdapter, exp_avg: &[Vec<f32>], exp_avg_sq: &[Vec<f32>]) -> Result<Self> {
        let be = model.backend();
        let pairs = model.upload_pairs(adapter)?;
        let grads = model.zeros_like(&pairs)?;
        let n = pairs.iter().flatten().flatten().count() * 2;
        if exp_avg.len() != n || exp_avg_sq.len() != n {
            return Err(Error::InvalidArgument(format!("optimizer state holds {} tensors, the adapter {n}", exp_avg.len())));
        }
        let (mut m_it, mut v_it) = (exp_avg.iter(), exp_avg_sq.iter());
        let mut moments = Vec::with_capacity(pairs.len());
        for ll in &pairs {
            let mut out: [Option<_>; 7] = Default::default();
            for (slot, p) in out.iter_mut().zip(ll) {
                if let Some(p) = p {
                    let mut pair_moments = Vec::with_capacity(2);
                    for t in [&p.a, &p.b] {
                        let (r, c) = be.dims(t);
                        let (m, v) = (m_it.next(), v_it.next());
                        let (Some(m), Some(v)) = (m, v) else { return Err(Error::InvalidArgument("optimizer state is short".into())) };
                        if m.len() != r * c || v.len() != r * c {
                            return Err(Error::InvalidArgument("optimizer state does not match the adapter's shapes".into()));
                        }
                        pair_moments.push((be.tensor_from_host(m, r, c)?, be.tensor_from_host(v, r, c)?));
                    }
                    let b = pair_moments.pop();
                    let a = pair_moments.pop();
                    if let (Some(a), Some(b)) = (a, b) {
                        *slot = Some((a, b));
                    }
                }
            }
            moments.push(out);
        }
        Ok(ResidentLora { pairs, grads, moments })
    }

    pub(super) fn pairs_and_grads(&mut self) -> (&PerModule<StepPair<B>>, &mut PerModule<(B::Tensor, B::Tensor)>) {
        (&self.pairs, &mut self.grads)
    }

    /// Sets every gradient to zero (before an update's first micro-batch).
    pub fn zero_grads(&mut self, model: &TrainModel<B>) -> Result<()> {
        let be = model.backend();
        for (da, db) in self.grads.iter_mut().flatten().flatten() {
            be.fill_zero(da)?;
            be.fill_zero(db)?;
        }
        Ok(())
    }

    /// The global L2 norm of the gradients (each tensor's `Σ g²` in f64, summed on the host).
    pub fn grad_norm(&self, model: &TrainModel<B>) -> Result<f64> {
        let be = model.backend();
        let mut sum = 0.0;
        for (da, db) in self.grads.iter().flatten().flatten() {
            sum += be.sum_squares(da)? + be.sum_squares(db)?;
        }
        Ok(sum.sqrt())
    }

    /// One AdamW update of every parameter from its gradient, on the backend.
    pub fn adamw(&mut self, model: &TrainModel<B>, step: &AdamWStep) -> Result<()> {
        let be = model.backend();
        let slots = self.pairs.iter_mut().flatten().flatten().zip(self.grads.iter().flatten().flatten()).zip(self.moments.iter_mut().flatten().flatten());
        for ((p, (da, db)), ((ma, va), (mb, vb))) in slots {
            be.adamw_step(&mut p.a, da, ma, va, step)?;
            be.adamw_step(&mut p.b, db, mb, vb, step)?;
        }
        Ok(())
    }

    /// Copies the parameters into `adapter` and the moments into `exp_avg`, `exp_avg_sq` (same
    /// layout as `upload`'s).
    pub fn download(&self, model: &TrainModel<B>, adapter: &mut LoraAdapter, exp_avg: &mut [Vec<f32>], exp_avg_sq: &mut [Vec<f32>]) -> Result<()> {
        let be = model.backend();
        let host = adapter.layers.iter_mut().flatten().flatten();
        let mut tensors = exp_avg.iter_mut().zip(exp_avg_sq.iter_mut());
        for ((h, p), ((ma, va), (mb, vb))) in host.zip(self.pairs.iter().flatten().flatten()).zip(self.moments.iter().flatten().flatten()) {
            h.a.data = be.to_host(&p.a)?;
            h.b.data = be.to_host(&p.b)?;
            for (m, v) in [(ma, va), (mb, vb)] {
                let (hm, hv) = tensors.next().ok_or_else(|| Error::InvalidArgument("optimizer state is short".into()))?;
                *hm = be.to_host(m)?;
                *hv = be.to_host(v)?;
            }
        }
        Ok(())
    }
}
