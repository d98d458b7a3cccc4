use super::*;

/// Small deterministic PRNG for the property tests (no rand crate).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn reserve_advance_and_drop_return_blocks() {
    let pool = BlockPool::new(8, 4);
    {
        let mut t = BlockTable::new(&pool);
        t.reserve(9).unwrap();
        assert_eq!(t.blocks().len(), 3);
        assert_eq!(pool.num_free(), 5);
        t.advance(9);
        t.reserve(3).unwrap(); // fits in the third block
        assert_eq!(pool.num_free(), 5);
        t.advance(3);
        t.reserve(1).unwrap();
        assert_eq!(pool.num_free(), 4);
    }
    assert_eq!(pool.num_free(), 8);
}

#[test]
fn out_of_blocks_is_a_value_and_takes_nothing() {
    let pool = BlockPool::new(4, 16);
    let mut a = BlockTable::new(&pool);
    a.reserve(48).unwrap();
    let mut b = BlockTable::new(&pool);
    let e = b.reserve(40).unwrap_err();
    assert_eq!(e, KvError::OutOfBlocks { needed: 3, free: 1, total: 4 });
    assert_eq!(pool.num_free(), 1, "a failed reserve takes no block");
    assert!(b.blocks().is_empty());
    drop(a);
    b.reserve(40).unwrap();
}

#[test]
fn blocks_are_reused_after_free() {
    let pool = BlockPool::new(2, 16);
    let mut a = BlockTable::new(&pool);
    a.reserve(32).unwrap();
    let ids: Vec<u32> = a.blocks().to_vec();
    drop(a);
    let mut b = BlockTable::new(&pool);
    b.reserve(32).unwrap();
    let mut got = b.blocks().to_vec();
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn fork_shares_full_blocks_only() {
    let pool = BlockPool::new(8, 4);
    let mut a = BlockTable::new(&pool);
    a.reserve(10).unwrap();
    a.advance(10);
    let f = a.fork_prefix();
    assert_eq!(f.len(), 8);
    assert_eq!(f.blocks(), &a.blocks()[..2]);
    assert_eq!(pool.refcount(a.blocks()[0]), 2);
    assert_eq!(pool.refcount(a.blocks()[2]), 1);
    drop(a);
    assert_eq!(pool.num_free(), 8 - 2);
    drop(f);
    assert_eq!(pool.num_free(), 8);
}

#[test]
fn batch_layout_slots_walk_the_block_table() {
    let pool = BlockPool::new(16, 4);
    let mut junk = BlockTable::new(&pool);
    junk.reserve(5).unwrap(); // so the tables below get non-trivial block ids
    let mut a = BlockTable::new(&pool);
    a.reserve(6).unwrap();
    a.advance(6);
    a.reserve(3).unwrap();
    let mut b = BlockTable::new(&pool);
    b.reserve(2).unwrap();
    let l = BatchLayout::new(4, &[(&a, 3), (&b, 2)]);
    assert_eq!(l.positions, vec![6, 7, 8, 0, 1]);
    let ab = a.blocks();
    assert_eq!(l.slots[0], ab[1] * 4 + 2);
    assert_eq!(l.slots[2], ab[2] * 4);
    assert_eq!(l.slots[3], b.blocks()[0] * 4);
    assert_eq!(l.last_rows(), vec![2, 4]);
    assert_eq!(l.seqs[1].token_start, 3);
}

/// Random reserve / advance / fork / truncate / free: no block leaked or freed twice, and the
/// free count returns to its start.
#[test]
fn property_random_ops_never_leak() {
    for seed in 0..20u64 {
        let mut rng = Lcg(seed * 7919 + 1);
        let pool = BlockPool::new(64, 1 + rng.below(16) as usize);
        let mut tables: Vec<BlockTable> = Vec::new();
        for _ in 0..400 {
            match rng.below(5) {
                0 => tables.push(BlockTable::new(&pool)),
                1 if !tables.is_empty() => {
                    let i = rng.below(tables.len() as u64) as usize;
                    let n = 1 + rng.below(40) as usize;
                    let before = pool.num_free();
                    match tables[i].reserve(n) {
                        Ok(()) => tables[i].advance(n),
                        Err(KvError::OutOfBlocks { free, .. }) => assert_eq!(free, before),
                        Err(e) => panic!("{e}"),
                    }
                }
                2 if !tables.is_empty() => {
                    let i = rng.below(tables.len() as u64) as usize;
                    tables.swap_remove(i);
                }
                3 if !tables.is_empty() => {
                    let i = rng.below(tables.len() as u64) as usize;
                    let f = tables[i].fork_prefix();
                    tables.push(f);
                }
                4 if !tables.is_empty() => {
                    let i = rng.below(tables.len() as u64) as usize;
                    let l = rng.below(tables[i].len() as u64 + 1) as usize;
                    tables[i].truncate(l);
                }
                _ => {}
            }
            // Invariant: each block's refcount equals the number of tables holding it, and
            // free blocks are exactly those with no holder.
            let mut holders = vec![0u32; pool.num_blocks()];
            for t in &tables {
                assert!(t.capacity() >= t.len());
                for &b in t.blocks() {
                    holders[b as usize] += 1;
                }
            }
            for (b, &h) in holders.iter().enumerate() {
                assert_eq!(pool.refcount(b as u32), h, "seed {seed} block {b}");
            }
            assert_eq!(pool.num_free(), holders.iter().filter(|&&h| h == 0).count());
        }
        tables.clear();
        assert_eq!(pool.num_free(), pool.num_blocks(), "seed {seed}: blocks leaked");
    }
}

/// Full blocks published by a finished sequence are found again by the same key chain (and
/// only by it), count as free while unused, and are evicted least recently released first,
/// never while in use.
#[test]
fn prefix_cache_finds_counts_and_evicts_full_blocks() {
    let bs = 4;
    let pool = BlockPool::with_prefix_cache(6, bs);
    let tokens: Vec<u32> = (0..10).collect(); // 2 full blocks and 2 tokens
    let mut keys = Vec::new();
    prefix::extend_keys(&mut keys, 7, &tokens, bs);
    assert_eq!(keys.len(), 2);
    {
        let mut t = BlockTable::new(&pool);
        t.reserve(10).unwrap();
        t.advance(10);
        t.publish_full(&keys, 0);
        assert_eq!(pool.prefix_stats().cached_blocks, 2);
        assert_eq!(pool.num_free(), 3, "in use: not free");
    }
    // Released: cached and evictable, so free again.
    assert_eq!(pool.num_free(), 6);
    assert_eq!(pool.prefix_stats().evictable_blocks, 2);
    // Same tokens, same adapter: both blocks; another adapter or another first block: none.
    let hit = pool.lookup(&keys, 10);
    assert_eq!(hit.len(), 2);
    assert!(hit.iter().all(|&b| pool.refcount(b) == 1));
    assert_eq!(pool.num_free(), 4, "a hit block is in use again");
    let mut other = Vec::new();
    prefix::extend_keys(&mut other, 8, &tokens, bs);
    assert!(pool.lookup(&other, 10).is_empty(), "another adapter shares nothing");
    let mut shifted = Vec::new();
    prefix::extend_keys(&mut shifted, 7, &[[99u32].as_slice(), &tokens[1..]].concat(), bs);
    assert!(shifted.iter().zip(&keys).all(|(a, b)| a != b));
    assert!(pool.lookup(&shifted, 10).is_empty(), "a different first block changes every key after it");
    let stats = pool.prefix_stats();
    assert_eq!((stats.queried_tokens, stats.hit_tokens), (30, 8));
    // A table starting from the hit holds them; a block in use is never evicted: taking all 4
    // free blocks leaves the 2 cached ones alone, and a 5th fails.
    let table = BlockTable::with_cached_prefix(&pool, hit.clone());
    assert_eq!(table.len(), 8);
    let mut big = BlockTable::new(&pool);
    big.reserve(16).unwrap();
    assert!(matches!(BlockTable::new(&pool).reserve(1), Err(KvError::OutOfBlocks { .. })));
    assert_eq!(pool.lookup(&keys, 0).len(), 2, "still cached");
    drop(big);
    drop(table);
    // Now the two cached blocks are evictable again (and each was looked up once more above:
    // release them). Taking all 6 evicts them, oldest first, and they drop out of the cache.
    for b in &hit {
        while pool.refcount(*b) > 0 {
            pool.release(&[*b]);
        }
    }
    let mut all = BlockTable::new(&pool);
    all.reserve(24).unwrap();
    assert_eq!(pool.prefix_stats().cached_blocks, 0);
    assert!(pool.lookup(&keys, 0).is_empty());
    drop(all);
    assert_eq!(pool.num_free(), 6);
}

/// Without a cache the pool behaves as before: nothing is kept or found.
#[test]
fn without_a_prefix_cache_nothing_is_kept() {
    let pool = BlockPool::new(4, 4);
    let mut keys = Vec::new();
    prefix::extend_keys(&mut keys, 0, &[1, 2, 3, 4, 5, 6, 7, 8], 4);
    {
        let mut t = BlockTable::new(&pool);
        t.reserve(8).unwrap();
        t.advance(8);
        t.publish_full(&keys, 0);
    }
    assert!(pool.lookup(&keys, 8).is_empty());
    assert_eq!(pool.prefix_stats(), PrefixStats::default());
    assert_eq!(pool.num_free(), 4);
}

/// Two sequences that fill the same prefix at the same time: the first to publish is cached,
/// the other's copy stays its own and is freed normally.
#[test]
fn a_key_is_cached_once() {
    let pool = BlockPool::with_prefix_cache(4, 2);
    let mut keys = Vec::new();
    prefix::extend_keys(&mut keys, 0, &[5, 6], 2);
    let mut a = BlockTable::new(&pool);
    let mut b = BlockTable::new(&pool);
    for t in [&mut a, &mut b] {
        t.reserve(2).unwrap();
        t.advance(2);
        t.publish_full(&keys, 0);
    }
    assert_eq!(pool.prefix_stats().cached_blocks, 1);
    drop(a);
    drop(b);
    assert_eq!(pool.num_free(), 4);
    assert_eq!(pool.prefix_stats().evictable_blocks, 1);
}
