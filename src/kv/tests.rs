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
