//! LoRA adapters: PEFT files in and out (`adapter`), adapters resident on a backend
//! (`LoadedAdapter`), and the tiered cache that decides which adapters are resident (`cache`).

pub mod adapter;
pub mod cache;

pub use adapter::{LoraAdapter, LoraConfig, LoraModule, LoraPair};
pub use cache::{AdapterCache, AdapterStatus, CacheOptions, CacheStats};

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

    pub fn pair(&self, layer: usize, m: LoraModule) -> Option<&LoadedPair<B>> {
        self.layers.get(layer).and_then(|l| l[m.index()].as_ref())
    }
}

impl<B: Backend> std::fmt::Debug for LoadedAdapter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAdapter").field("id", &self.id).field("bytes", &self.bytes).field("max_rank", &self.max_rank).finish()
    }
}
