//! The paged KV cache, PagedAttention style: one pool of fixed-size blocks (16 tokens by
//! default) shared by every layer; each sequence owns a `BlockTable` listing its blocks in order;
//! blocks are reference-counted (so a prefix can be shared) and go back to the pool when the
//! table drops. Running out is `KvError::OutOfBlocks`, a value for the caller (queue, preempt,
//! or fail that one request), never a panic.
//!
//! This module only does the bookkeeping. The K/V storage itself belongs to the backend
//! (`Backend::Kv`): for every layer, K and V of shape `[num_blocks, block_size, kv_heads, head_dim]`;
//! token `p` of a sequence lives in block `table[p / block_size]`, row `p % block_size`.

mod batch;
pub mod prefix;

pub use batch::{BatchLayout, SeqView};
use prefix::PrefixCache;

use std::sync::{Arc, Mutex, MutexGuard};

/// Tokens per KV block unless configured (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// What the KV cache cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free blocks for an allocation.
    #[error("KV cache full: {needed} more blocks needed, {free} free of {total}")]
    OutOfBlocks {
        /// Blocks asked for.
        needed: usize,
        /// Blocks free.
        free: usize,
        /// Blocks in all.
        total: usize,
    },
    /// The cache cannot hold even one sequence's worth (budget below one block per layer).
    #[error("KV cache too small: {0}")]
    TooSmall(String),
}

/// Shape of the KV storage: what a backend needs to allocate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Decoder layers.
    pub num_layers: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks.
    pub num_blocks: usize,
}

impl KvLayout {
    /// Bytes of one block across all layers, K and V, at `elem_bytes` per value.
    pub fn bytes_per_block(&self, elem_bytes: usize) -> usize {
        2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem_bytes
    }

    /// Elements of one layer's K (or V) storage.
    pub fn layer_elems(&self) -> usize {
        self.num_blocks * self.block_size * self.num_kv_heads * self.head_dim
    }

    /// As many blocks as fit in `bytes`.
    pub fn with_budget(mut self, bytes: usize, elem_bytes: usize) -> Result<Self, KvError> {
        let per = self.bytes_per_block(elem_bytes);
        self.num_blocks = bytes / per.max(1);
        if self.num_blocks == 0 {
            return Err(KvError::TooSmall(format!("{bytes} bytes hold no block of {per} bytes")));
        }
        Ok(self)
    }
}

#[derive(Debug)]
struct PoolState {
    free: Vec<u32>,
    refs: Vec<u32>,
    /// Full blocks kept for later requests with the same prefix (`prefix`); None: no caching.
    cache: Option<PrefixCache>,
}

/// What the prefix cache has done: tokens looked up at admission and found, blocks it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixStats {
    /// Prompt tokens looked up.
    pub queried_tokens: u64,
    /// Of those, tokens found cached.
    pub hit_tokens: u64,
    /// Blocks the prefix cache holds now.
    pub cached_blocks: usize,
    /// Cached blocks no sequence uses (they count as free).
    pub evictable_blocks: usize,
}

/// The pool of block ids. Cheap to clone (a handle); the engine thread owns the only pool.
#[derive(Debug, Clone)]
pub struct BlockPool {
    state: Arc<Mutex<PoolState>>,
    block_size: usize,
    num_blocks: usize,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks of `block_size` tokens, all free, without a prefix cache.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self::build(num_blocks, block_size, false)
    }

    /// A pool that keeps full blocks for reuse by later sequences with the same prefix
    /// (`prefix`): `lookup` finds them, `BlockTable::publish_full` offers them.
    pub fn with_prefix_cache(num_blocks: usize, block_size: usize) -> Self {
        Self::build(num_blocks, block_size, true)
    }

    fn build(num_blocks: usize, block_size: usize, cache: bool) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        assert!(num_blocks <= u32::MAX as usize, "block ids are u32");
        // Hand out low ids first (pop from the end).
        let free = (0..num_blocks as u32).rev().collect();
        BlockPool {
            state: Arc::new(Mutex::new(PoolState { free, refs: vec![0; num_blocks], cache: cache.then(PrefixCache::default) })),
            block_size,
            num_blocks,
        }
    }

    /// Whether this pool caches prefixes.
    pub fn prefix_caching(&self) -> bool {
        self.lock().cache.is_some()
    }

    /// The blocks cached under the leading `keys` (stopping at the first miss), each taken
    /// (reference count + 1; an evictable one is in use again). Records `queried_tokens` and the
    /// hit tokens (`blocks found * block_size`) in the stats.
    pub fn lookup(&self, keys: &[u64], queried_tokens: usize) -> Vec<u32> {
        let mut s = self.lock();
        let PoolState { refs, cache, .. } = &mut *s;
        let Some(cache) = cache.as_mut() else { return Vec::new() };
        let mut out = Vec::new();
        for &k in keys {
            let Some(b) = cache.find(k) else { break };
            if refs[b as usize] == 0 {
                cache.touch(b);
            }
            refs[b as usize] += 1;
            out.push(b);
        }
        cache.queried_tokens += queried_tokens as u64;
        cache.hit_tokens += (out.len() * self.block_size) as u64;
        out
    }

    /// How many of the leading `keys` are cached (stopping at the first miss), and how many of
    /// those blocks sequences use now; takes nothing (the planner's view of a waiting sequence).
    pub fn probe(&self, keys: &[u64]) -> (usize, usize) {
        let s = self.lock();
        let Some(cache) = s.cache.as_ref() else { return (0, 0) };
        let (mut found, mut in_use) = (0, 0);
        for &k in keys {
            let Some(b) = cache.find(k) else { break };
            found += 1;
            in_use += usize::from(s.refs[b as usize] > 0);
        }
        (found, in_use)
    }

    /// Offers `block` (full, its K/V written) to the cache under `key`; no-op without a cache.
    fn publish(&self, block: u32, key: u64) {
        if let Some(c) = self.lock().cache.as_mut() {
            c.publish(block, key);
        }
    }

    /// The prefix cache's counters (zeros without one).
    pub fn prefix_stats(&self) -> PrefixStats {
        let s = self.lock();
        s.cache.as_ref().map_or_else(PrefixStats::default, |c| PrefixStats {
            queried_tokens: c.queried_tokens,
            hit_tokens: c.hit_tokens,
            cached_blocks: c.cached(),
            evictable_blocks: c.evictable(),
        })
    }

    /// Drops every cached block no sequence uses (they go back to the free list).
    pub fn clear_prefix_cache(&self) {
        let mut s = self.lock();
        let freed = s.cache.as_mut().map(PrefixCache::clear_evictable).unwrap_or_default();
        s.free.extend(freed);
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave the state half-updated (every update
        // below is a single push/pop plus a counter), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Blocks in all.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// Blocks a table can take now: free ones, and cached ones no sequence uses (evicted on
    /// demand).
    pub fn num_free(&self) -> usize {
        let s = self.lock();
        s.free.len() + s.cache.as_ref().map_or(0, PrefixCache::evictable)
    }
    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Takes `n` blocks, all or none: free ones first, then the least recently released cached
    /// ones (evicted from the prefix cache).
    fn alloc(&self, n: usize) -> Result<Vec<u32>, KvError> {
        let mut s = self.lock();
        let available = s.free.len() + s.cache.as_ref().map_or(0, PrefixCache::evictable);
        if available < n {
            return Err(KvError::OutOfBlocks { needed: n, free: available, total: self.num_blocks });
        }
        let from_free = n.min(s.free.len());
        let at = s.free.len() - from_free;
        let mut got: Vec<u32> = s.free.split_off(at);
        while got.len() < n {
            let b = s.cache.as_mut().and_then(PrefixCache::evict).expect("evictable blocks counted above");
            got.push(b);
        }
        for &b in &got {
            debug_assert_eq!(s.refs[b as usize], 0);
            s.refs[b as usize] = 1;
        }
        Ok(got)
    }

    fn retain(&self, blocks: &[u32]) {
        let mut s = self.lock();
        for &b in blocks {
            debug_assert!(s.refs[b as usize] > 0);
            s.refs[b as usize] += 1;
        }
    }

    fn release(&self, blocks: &[u32]) {
        let mut s = self.lock();
        let PoolState { free, refs, cache } = &mut *s;
        for &b in blocks {
            let r = &mut refs[b as usize];
            assert!(*r > 0, "block {b} released more often than taken");
            *r -= 1;
            // A cached block stays cached (evictable) for the next request with its prefix.
            if *r == 0 && !cache.as_mut().is_some_and(|c| c.released(b)) {
                free.push(b);
            }
        }
    }

    /// Reference count of a block (tests and metrics).
    pub fn refcount(&self, block: u32) -> u32 {
        self.lock().refs[block as usize]
    }
}

/// One sequence's blocks, in token order. Dropping it returns the blocks to the pool.
#[derive(Debug)]
pub struct BlockTable {
    pool: BlockPool,
    blocks: Vec<u32>,
    /// Tokens whose K/V are written.
    len: usize,
}

impl BlockTable {
    /// An empty table over `pool`.
    pub fn new(pool: &BlockPool) -> Self {
        BlockTable { pool: pool.clone(), blocks: Vec::new(), len: 0 }
    }

    /// A table that starts with `blocks`, full and written (taken by `BlockPool::lookup`).
    pub fn with_cached_prefix(pool: &BlockPool, blocks: Vec<u32>) -> Self {
        let len = blocks.len() * pool.block_size;
        BlockTable { pool: pool.clone(), blocks, len }
    }

    /// Offers this table's full blocks `from ..` to the prefix cache under `keys[i]` (the hash
    /// chain of the sequence's tokens, `prefix::extend_keys`), as far as both reach.
    pub fn publish_full(&self, keys: &[u64], from: usize) {
        let full = (self.len / self.pool.block_size).min(keys.len()).min(self.blocks.len());
        for i in from..full {
            self.pool.publish(self.blocks[i], keys[i]);
        }
    }

    /// Tokens the table holds.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Its block ids, in order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.pool.block_size
    }
    /// Tokens its blocks can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * self.pool.block_size
    }

    /// Makes room for `n` more tokens, taking blocks from the pool (all or none).
    pub fn reserve(&mut self, n: usize) -> Result<(), KvError> {
        let need = self.pool.blocks_for(self.len + n).saturating_sub(self.blocks.len());
        if need > 0 {
            let got = self.pool.alloc(need)?;
            self.blocks.extend(got);
        }
        Ok(())
    }

    /// Marks `n` more tokens as written (after a forward step filled them).
    pub fn advance(&mut self, n: usize) {
        assert!(self.len + n <= self.capacity(), "advance past the reserved blocks");
        self.len += n;
    }

    /// Forgets tokens past `len` and frees the blocks no longer needed.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        self.len = len;
        let keep = self.pool.blocks_for(len);
        let gone = self.blocks.split_off(keep);
        self.pool.release(&gone);
    }

    /// A second table sharing every full block of this one (prefix sharing). The partly filled
    /// last block is not shared: the fork re-computes those tokens, so no block is ever written
    /// by two sequences and no copy-on-write is needed.
    pub fn fork_prefix(&self) -> BlockTable {
        let full = self.len / self.pool.block_size;
        let blocks = self.blocks[..full].to_vec();
        self.pool.retain(&blocks);
        BlockTable { pool: self.pool.clone(), blocks, len: full * self.pool.block_size }
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.pool.release(&self.blocks);
    }
}

#[cfg(test)]
mod tests;
