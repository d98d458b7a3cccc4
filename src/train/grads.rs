//! Gradients of an adapter's LoRA parameters, laid out like the adapter (per layer, per module:
//! `(dA [r, in], dB [out, r])`).

use std::path::Path;

use crate::lora::{LoraAdapter, LoraModule};
use crate::{Error, Result};

/// Gradients of every LoRA parameter, shaped like an adapter's pairs.
#[derive(Debug, Clone)]
pub struct LoraGrads {
    /// Per layer and module, (dA, dB).
    pub layers: Vec<[Option<(Vec<f32>, Vec<f32>)>; 7]>,
}

impl LoraGrads {
    /// Zeros shaped like `adapter`'s A and B.
    pub fn zeros_like(adapter: &LoraAdapter) -> Self {
        let layers =
            adapter.layers.iter().map(|ll| std::array::from_fn(|i| ll[i].as_ref().map(|p| (vec![0.0; p.a.data.len()], vec![0.0; p.b.data.len()])))).collect();
        LoraGrads { layers }
    }

    /// Checks the shapes match `adapter`'s.
    pub fn check_fits(&self, adapter: &LoraAdapter) -> Result<()> {
        let fits = self.layers.len() == adapter.layers.len()
            && self.layers.iter().zip(&adapter.layers).all(|(g, a)| {
                g.iter().zip(a).all(|(g, a)| match (g, a) {
                    (None, None) => true,
                    (Some((da, db)), Some(p)) => da.len() == p.a.data.len() && db.len() == p.b.data.len(),
                    _ => false,
                })
            });
        if fits {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!("gradient buffers do not match adapter `{}`", adapter.id)))
        }
    }

    /// Sets every gradient to 0.
    pub fn zero(&mut self) {
        for (da, db) in self.layers.iter_mut().flatten().flatten() {
            da.fill(0.0);
            db.fill(0.0);
        }
    }

    /// Every gradient buffer, in a fixed order (layer, module, A then B).
    pub fn buffers(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.layers.iter().flatten().flatten().flat_map(|(a, b)| [a, b])
    }

    /// Every buffer, mutable, in the adapter's order.
    pub fn buffers_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.layers.iter_mut().flatten().flatten().flat_map(|(a, b)| [a, b])
    }

    /// The global L2 norm over every parameter's gradient (accumulated in f64).
    pub fn global_norm(&self) -> f64 {
        self.buffers().flat_map(|b| b.iter()).map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
    }

    /// `(grad.<PEFT key>, shape, values)` for every parameter, as `gradients` writes them.
    pub fn named<'a>(&'a self, adapter: &'a LoraAdapter) -> Vec<(String, [usize; 2], &'a [f32])> {
        let mut out = Vec::new();
        for (li, (g, a)) in self.layers.iter().zip(&adapter.layers).enumerate() {
            for m in LoraModule::ALL {
                if let (Some((da, db)), Some(p)) = (&g[m.index()], &a[m.index()]) {
                    out.push((format!("grad.{}", m.peft_key(li, 'A')), [p.a.rows, p.a.cols], &da[..]));
                    out.push((format!("grad.{}", m.peft_key(li, 'B')), [p.b.rows, p.b.cols], &db[..]));
                }
            }
        }
        out
    }
}

/// Writes named f32 tensors (`(name, shape, values)`) as one safetensors file, atomically.
pub fn write_f32_safetensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::InvalidArgument(format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let out = safetensors::serialize(views, None).map_err(|e| Error::InvalidArgument(format!("serializing {}: {e}", path.display())))?;
    crate::lora::adapter::write_atomic(path, &out)
}
