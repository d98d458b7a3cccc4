//! LoRA adapters: PEFT files in and out (`adapter`), uploading them to a backend
//! (`LoadedAdapter::upload`, the type itself is the backend's), and the tiered cache that decides which adapters are resident (`cache`).

pub mod adapter;
pub mod cache;

pub use adapter::{LoraAdapter, LoraConfig, LoraModule, LoraPair};
pub use cache::{AdapterCache, AdapterStatus, CacheOptions, CacheStats, SyntheticAdapters};

pub use crate::backend::adapter::{LoadedAdapter, LoadedPair};
use crate::backend::Backend;
use crate::Result;

impl<B: Backend> LoadedAdapter<B> {
    /// Copies an adapter's pairs to the backend.
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
        Ok(LoadedAdapter { id: adapter.id.clone(), content_key: content_key(adapter), layers, bytes: adapter.weight_bytes(), max_rank: adapter.max_rank() })
    }

    /// A seeded random adapter made where it lives (on a CUDA device by kernels/random.cu; the
    /// CPU backend makes the same values): rank `rank` on all seven projections of every layer,
    /// A ~ U(-1, 1) / sqrt(in), B ~ U(-b_scale, b_scale), scale alpha / rank. For benchmarks
    /// (`bench --synthetic-adapters`): no file, no host copy.
    pub fn random(be: &B, id: &str, model: &crate::types::ModelConfig, rank: usize, alpha: f32, seed: u64, b_scale: f32) -> Result<Self> {
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
        let content_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (
                "random",
                rank,
                alpha.to_bits(),
                seed,
                b_scale.to_bits(),
                model.num_layers,
                model.hidden_size,
                model.intermediate_size,
                model.q_dim(),
                model.kv_dim(),
            )
                .hash(&mut h);
            h.finish().max(1)
        };
        Ok(LoadedAdapter { id: id.to_string(), content_key, layers, bytes, max_rank: rank })
    }
}

/// `LoadedAdapter::content_key` of a host adapter: FNV-1a-style mixing of every value's bits
/// (fast enough at ~1 GB/s that hashing a rank-8 adapter of a 7B model costs a few ms at load),
/// never 0 (the base's identity).
fn content_key(adapter: &LoraAdapter) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |x: u64| h = (h ^ x).wrapping_mul(0x100_0000_01b3).rotate_left(5);
    for (li, layer) in adapter.layers.iter().enumerate() {
        for (mi, p) in layer.iter().enumerate() {
            let Some(p) = p else { continue };
            mix(((li as u64) << 8) | mi as u64);
            mix(p.scale.to_bits() as u64);
            for m in [&p.a, &p.b] {
                mix(((m.rows as u64) << 32) | m.cols as u64);
                for pair in m.data.chunks(2) {
                    mix(pair.iter().fold(0u64, |acc, v| (acc << 32) | v.to_bits() as u64));
                }
            }
        }
    }
    h.max(1)
}
