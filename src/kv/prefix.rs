//! Automatic prefix caching (vLLM's "automatic prefix caching", LoRAX's prefix cache): full
//! blocks of K/V kept after their sequence ends, found again by a key that names everything
//! their contents depend on, so a new request whose leading tokens match skips their prefill.
//!
//! The key of block `i` of a sequence is a hash chain: `key_i = H(key_{i-1}, adapter, tokens of
//! block i)`, `key_{-1} = 0`, so a key names the whole prefix up to the block's end, under one
//! adapter (LoRA on any projection changes the hidden states later layers' K/V come from, so
//! the adapter identity — a hash of its weights, `LoadedAdapter::content_key`; 0 for the base —
//! is part of every key, and an adapter reloaded from new files cannot hit its old blocks).
//! Positions are implied: block `i` always holds positions `i * block_size ..`.
//!
//! Only full blocks are cached: a sequence's partly filled last block stays its own, so a cached
//! block is never written again (no copy-on-write). Cached blocks whose last user finished are
//! *evictable*: they count as free, and the pool takes the least recently released first when
//! it needs blocks. A block in use (reference count above 0) is never evicted.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The key of a block from its parent's key, the adapter's identity and its tokens.
pub fn block_key(parent: u64, adapter: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    adapter.hash(&mut h);
    tokens.hash(&mut h);
    // 0 is "no parent": keep it out of the key space.
    h.finish().max(1)
}

/// The keys of every full block of `tokens` under `adapter`, extending `keys` (which holds the
/// keys of the first `keys.len()` blocks already).
pub fn extend_keys(keys: &mut Vec<u64>, adapter: u64, tokens: &[u32], block_size: usize) {
    let full = tokens.len() / block_size;
    while keys.len() < full {
        let i = keys.len();
        let parent = keys.last().copied().unwrap_or(0);
        keys.push(block_key(parent, adapter, &tokens[i * block_size..(i + 1) * block_size]));
    }
}

/// The cache's bookkeeping, inside the pool's lock.
#[derive(Debug, Default)]
pub(super) struct PrefixCache {
    /// key -> the block holding it.
    by_key: HashMap<u64, u32>,
    /// block -> its key, for cached blocks.
    key_of: HashMap<u32, u64>,
    /// Evictable cached blocks (reference count 0), by the order they were released.
    lru: BTreeMap<u64, u32>,
    /// block -> its stamp in `lru`.
    stamp_of: HashMap<u32, u64>,
    next_stamp: u64,
    /// Tokens looked up at admission, and how many of them were found.
    pub queried_tokens: u64,
    pub hit_tokens: u64,
}

impl PrefixCache {
    /// Evictable blocks (they count as free).
    pub fn evictable(&self) -> usize {
        self.lru.len()
    }

    /// Blocks the cache holds (in use or evictable).
    pub fn cached(&self) -> usize {
        self.by_key.len()
    }

    /// The block cached under `key`.
    pub fn find(&self, key: u64) -> Option<u32> {
        self.by_key.get(&key).copied()
    }

    /// `block` is in use again (its reference count goes from 0 to 1): not evictable.
    pub fn touch(&mut self, block: u32) {
        if let Some(stamp) = self.stamp_of.remove(&block) {
            self.lru.remove(&stamp);
        }
    }

    /// Caches `block` (full, written) under `key`, unless the key is cached already (another
    /// sequence computed the same prefix at the same time: this block stays uncached).
    pub fn publish(&mut self, block: u32, key: u64) -> bool {
        if self.by_key.contains_key(&key) || self.key_of.contains_key(&block) {
            return false;
        }
        self.by_key.insert(key, block);
        self.key_of.insert(block, key);
        true
    }

    /// `block`'s reference count reached 0: true when it is cached (now evictable), false when
    /// it goes back to the free list.
    pub fn released(&mut self, block: u32) -> bool {
        if !self.key_of.contains_key(&block) {
            return false;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.lru.insert(stamp, block);
        self.stamp_of.insert(block, stamp);
        true
    }

    /// Takes the least recently released evictable block out of the cache.
    pub fn evict(&mut self) -> Option<u32> {
        let (&stamp, &block) = self.lru.iter().next()?;
        self.lru.remove(&stamp);
        self.stamp_of.remove(&block);
        if let Some(key) = self.key_of.remove(&block) {
            self.by_key.remove(&key);
        }
        Some(block)
    }

    /// Forgets every evictable block (returned, to go back to the free list).
    pub fn clear_evictable(&mut self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.lru.len());
        while let Some(b) = self.evict() {
            out.push(b);
        }
        out
    }
}
