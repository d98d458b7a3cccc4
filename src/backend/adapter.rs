//! An adapter resident on a backend: per layer, per `LoraModule`, its A and B matrices. The
//! backend reads them in a step's LoRA runs; `lora` makes them (`LoadedAdapter::upload` from a
//! PEFT adapter, `LoadedAdapter::random` for benchmarks).

use super::Backend;
use crate::types::LoraModule;

/// One module's pair on a backend.
pub struct LoadedPair<B: Backend> {
    /// `[r, in]`.
    pub a: B::Matrix,
    /// `[out, r]`.
    pub b: B::Matrix,
    /// The factor the product is multiplied by (alpha / r, or alpha / sqrt(r) with rsLoRA).
    pub scale: f32,
    /// The pair's rank r.
    pub rank: usize,
}

/// An adapter uploaded to a backend, ready for `Llama::forward_lora`.
pub struct LoadedAdapter<B: Backend> {
    /// The id requests name it by.
    pub id: String,
    /// A hash of everything the adapter computes with (ranks, scales, every A and B value; for
    /// a random adapter its seed and shape): the identity prefix-cached KV blocks are keyed by
    /// (`kv::prefix`), so an adapter reloaded from new files never meets its old blocks, and the
    /// same weights loaded again do.
    pub content_key: u64,
    /// Per layer, per `LoraModule::index`.
    pub layers: Vec<[Option<LoadedPair<B>>; 7]>,
    /// Bytes of A and B on the backend (f32).
    pub bytes: usize,
    /// The largest rank over its pairs.
    pub max_rank: usize,
}

impl<B: Backend> LoadedAdapter<B> {
    /// The pair of `layer`'s module `m`, if the adapter adapts it.
    pub fn pair(&self, layer: usize, m: LoraModule) -> Option<&LoadedPair<B>> {
        self.layers.get(layer).and_then(|l| l[m.index()].as_ref())
    }
}

impl<B: Backend> std::fmt::Debug for LoadedAdapter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAdapter").field("id", &self.id).field("bytes", &self.bytes).field("max_rank", &self.max_rank).finish()
    }
}
