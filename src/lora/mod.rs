//! LoRA adapters: PEFT files in and out (`adapter`), adapters resident on a backend
//! (`LoadedAdapter`), and the tiered cache that decides which adapters are resident (`cache`).

pub mod adapter;
pub mod cache;

pub use adapter::{LoraAdapter, LoraConfig, LoraModule, LoraPair};
pub use cache::{AdapterCache, AdapterStatus, CacheOptions, CacheStats, SyntheticAdapters};

use crate::backend::Backend;
use crate::Result;

/// One module's pair on a backend.
pub struct LoadedPair<B: Backend> {
    /// `[r, in]`.
    pub a: B::Matrix,
    /// `[out, r]`.
    pub b: B::Matrix,
    pub scale: f32,
    pub rank: usize,
}

/// An adapter uploaded to a backend, ready for `Llama::forward_lora`.
pub struct LoadedAdapter<B: Backend> {
    pub id: String,
    /// Per layer, per `LoraModule::index`.
    pub layers: Vec<[Option<LoadedPair<B>>; 7]>,
    /// Bytes of A and B on the backend (f32).
    pub bytes: usize,
    pub max_rank: usize,
}

impl<B: Backend> LoadedAdapter<B> {
    pub fn upload(be: &B, adapter: &LoraAdapter) -> Result<Self> {
        let mut layers = Vec::with_capacity(adapter.layers.len());
        for ll in &adapter.layers {
            let mut out: [Option<LoadedPair<B>>; 7] = Default::default();
            for (slot, p) in out.iter_mut().zip(ll) {
                if let Some(p) = p {
                    *slot = Some(LoadedPair { a: be.upload_matrix(p.a.clone())?, b: be.upload_matrix(p.b.clone())?, scale: p.scale, rank: p.rank() });
                }
            }
            layers.push(out);
        }
        Ok(LoadedAdapter { id: adapter.id.clone(), layers, bytes: adapter.weight_bytes(), max_rank: adapter.max_rank() })
    }

    /// A seeded random adapter made where it lives (on a CUDA device by kernels/random.cu; the
    /// CPU backend makes the same values): rank `rank` on all seven projections of every layer,
    /// A ~ U(-1, 1) / sqrt(in), B ~ U(-b_scale, b_scale), scale alpha / rank. For benchmarks
    /// (`bench --synthetic-adapters`): no file, no host copy.
    pub fn random(be: &B, id: &str, model: &crate::model::ModelConfig, rank: usize, alpha: f32, seed: u64, b_scale: f32) -> Result<Self> {
        use crate::backend::random::{RandomFormat, RandomSpec};
        use crate::backend::HostWeight;
        if rank == 0 {
            return Err(crate::Error::InvalidArgument(format!("adapter {id}: rank must be at least 1")));
        }
        let spec = |name: String, rows: usize, cols: usize, scale: f32| {
            // Each matrix's seed is a function of (seed, its name) only.
            let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
            HostWeight::Random(RandomSpec { name, rows, cols, format: RandomFormat::F32, seed: crate::rng::SplitMix64::new(seed ^ h).next_u64(), scale })
        };
        let mut layers = Vec::with_capacity(model.num_layers);
        let mut bytes = 0;
        for layer in 0..model.num_layers {
            let mut out: [Option<LoadedPair<B>>; 7] = Default::default();
            for m in LoraModule::ALL {
                let (out_f, in_f) = m.dims(model);
                let a = be.upload_matrix(spec(m.peft_key(layer, 'A'), rank, in_f, 1.0 / (in_f as f32).sqrt()))?;
                let b = be.upload_matrix(spec(m.peft_key(layer, 'B'), out_f, rank, b_scale))?;
                bytes += rank * (in_f + out_f) * 4;
                out[m.index()] = Some(LoadedPair { a, b, scale: alpha / rank as f32, rank });
            }
            layers.push(out);
        }
        Ok(LoadedAdapter { id: id.to_string(), layers, bytes, max_rank: rank })
    }

    pub fn pair(&self, layer: usize, m: LoraModule) -> Option<&LoadedPair<B>> {
        self.layers.get(layer).and_then(|l| l[m.index()].as_ref())
    }
}

impl<B: Backend> std::fmt::Debug for LoadedAdapter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAdapter").field("id", &self.id).field("bytes", &self.bytes).field("max_rank", &self.max_rank).finish()
    }
}
