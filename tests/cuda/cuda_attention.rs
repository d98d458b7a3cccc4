//! Parity of the paged attention kernels (kernels/paged_attention.cu) with their CPU twin
//! (`backend::cpu::attention::{write_kv, paged_attention}`), and the checks in front of them.
//!
//! GPU tests: seeded random q/K/V (never zeros); the cache is filled through
//! `reshape_and_cache` (and compared bit for bit with `write_kv`), block tables are shuffled
//! (non-contiguous, out of order), outputs are views into NaN-poisoned buffers with guard elements
//! after them. Shapes: decode at batch 1, 7 and 32 with contexts from 1 to 3000 keys mixed in one
//! batch (some spanning many blocks and several flash-decoding partitions of 512), prefill chunks
//! with and without earlier context, prefill and decode mixed in one batch, block_size 16 and 8,
//! GQA ratios 1, 3, 4, 8 and MQA, head_dim 64, 96, 128 (specialised kernels) and 80, 40 (generic).
//! Tolerance: relative L2 < 1e-5 with an f32 cache; < 5e-3 with a bf16 cache (q, K, V and out in
//! bf16) against the CPU on the bf16-rounded inputs. Without a GPU they print `SKIP` and pass,
//! unless LORAFLEET_REQUIRE_GPU=1.
//!
//! Validation tests run everywhere (`plan_attention`, `plan_reshape_and_cache` are pure).

use cudarc::driver::CudaSlice;
use half::bf16;
use lorafleet::backend::cpu::attention as cpu;
use lorafleet::backend::cuda::attention::{plan_attention, plan_reshape_and_cache};
use lorafleet::backend::cuda::{test_device, AttnDims, AttnKernel, CudaAttention, CudaDevice, CudaKvCache};
use lorafleet::kv::{BatchLayout, KvLayout, SeqView};
use lorafleet::rng::SplitMix64 as Rng;

use crate::common::cuda_elem::{is_invalid_argument, quantize, TestElem, GUARD};
use crate::common::rel_l2_f32 as rel_l2;

/// Attention keeps its accumulators and softmax in f32: bf16 outputs are held to half the
/// shared bf16 bound.
fn tol<T: TestElem>() -> f64 {
    if T::NAME == "bf16" {
        5e-3
    } else {
        T::TOL
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A ragged batch: each sequence `(context_len, n_new)` gets shuffled blocks from a pool of
/// `num_blocks` (with spare blocks, so ids are spread over the whole cache). Returns the layout
/// and the cache rows of every token of every sequence (context then new), in order.
fn make_batch(rng: &mut Rng, block_size: usize, seqs: &[(usize, usize)], spare: usize) -> (BatchLayout, Vec<u32>, usize) {
    let need: usize = seqs.iter().map(|&(c, n)| (c + n).div_ceil(block_size)).sum();
    let num_blocks = need + spare;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    rng.shuffle(&mut ids);
    let mut l = BatchLayout { block_size, ..Default::default() };
    let mut all_slots = Vec::new();
    let mut next = 0;
    for &(ctx, n_new) in seqs {
        let nb = (ctx + n_new).div_ceil(block_size);
        let blocks = ids[next..next + nb].to_vec();
        next += nb;
        let slot = |p: usize| blocks[p / block_size] * block_size as u32 + (p % block_size) as u32;
        let token_start = l.positions.len();
        for p in ctx..ctx + n_new {
            l.positions.push(p as u32);
            l.slots.push(slot(p));
        }
        all_slots.extend((0..ctx + n_new).map(slot));
        l.seqs.push(SeqView { token_start, n_new, context_len: ctx, blocks });
    }
    (l, all_slots, num_blocks)
}

/// One parity case: fills the cache with every token's K/V through `reshape_and_cache` (checked
/// bit for bit against `write_kv`), runs attention for the new tokens, compares with the CPU.
#[allow(clippy::too_many_arguments)]
fn attn_case<T: TestElem>(
    ops: &CudaDevice,
    attn: &CudaAttention,
    rng: &mut Rng,
    block_size: usize,
    seqs: &[(usize, usize)],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) {
    let what = format!(
        "paged_attention {} bs {block_size} heads {n_heads}/{n_kv_heads} hd {head_dim} seqs {:?}",
        T::NAME,
        if seqs.len() > 8 { &seqs[..8] } else { seqs }
    );
    let (batch, all_slots, num_blocks) = make_batch(rng, block_size, seqs, 5);
    let kv_dim = n_kv_heads * head_dim;
    let q_dim = n_heads * head_dim;
    let n_all = all_slots.len();
    let t = batch.n_tokens();
    let (k_t, k_f) = quantize::<T>(&rng.nonzero(n_all * kv_dim, 1.0));
    let (v_t, v_f) = quantize::<T>(&rng.nonzero(n_all * kv_dim, 1.0));
    // q scaled so the softmax is neither flat nor one-hot.
    let (q_t, q_f) = quantize::<T>(&rng.nonzero(t * q_dim, 2.0));

    // CPU.
    let rows = num_blocks * block_size;
    let mut kc = vec![0f32; rows * kv_dim];
    let mut vc = vec![0f32; rows * kv_dim];
    cpu::write_kv(&k_f, &v_f, &all_slots, kv_dim, &mut kc, &mut vc);
    let mut want = vec![0f32; t * q_dim];
    cpu::paged_attention(&q_f, &kc, &vc, &batch, n_heads, n_kv_heads, head_dim, &mut want);

    // GPU.
    let layout = KvLayout { num_layers: 2, num_kv_heads: n_kv_heads, head_dim, block_size, num_blocks };
    let mut cache = CudaKvCache::<T>::new(ops, layout).expect("cache");
    let layer = 1;
    let dk = ops.upload(&k_t).expect("upload");
    let dv = ops.upload(&v_t).expect("upload");
    attn.reshape_and_cache(ops, &dk, &dv, &all_slots, &mut cache, layer).expect("reshape_and_cache");
    let (gk, gv) = cache.layer(layer);
    let gk: Vec<f32> = ops.download(gk).expect("download").into_iter().map(|x| x.to_f32()).collect();
    let gv: Vec<f32> = ops.download(gv).expect("download").into_iter().map(|x| x.to_f32()).collect();
    assert!(gk.iter().zip(&kc).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: K cache differs from write_kv");
    assert!(gv.iter().zip(&vc).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: V cache differs from write_kv");
    let (l0k, _) = cache.layer(0);
    assert!(ops.download(l0k).unwrap().iter().all(|x| x.to_f32() == 0.0), "{what}: layer 0 was written");

    let dq = ops.upload(&q_t).expect("upload");
    let nan = T::from_f32(f32::NAN);
    let mut out: CudaSlice<T> = ops.upload(&vec![nan; t * q_dim + GUARD]).expect("upload");
    {
        let mut view = out.slice_mut(0..t * q_dim);
        attn.paged_attention(ops, &dq, &cache, layer, &batch, n_heads, &mut view).expect("paged_attention");
    }
    let host = ops.download(&out).expect("download");
    assert!(host[t * q_dim..].iter().all(|x| x.to_f32().is_nan()), "{what}: guard elements overwritten");
    let got: Vec<f32> = host[..t * q_dim].iter().map(|x| x.to_f32()).collect();
    let e = rel_l2(&got, &want, &what);
    assert!(e < tol::<T>(), "{what}: relative L2 error {e:.3e} >= {:.0e}", tol::<T>());
    // Per row too: an error confined to one short sequence would hide in the batch's L2.
    for r in 0..t {
        let e = rel_l2(&got[r * q_dim..(r + 1) * q_dim], &want[r * q_dim..(r + 1) * q_dim], &what);
        assert!(e < 4.0 * tol::<T>(), "{what}: row {r}: relative L2 error {e:.3e}");
    }
}

fn device(test: &str) -> Option<(CudaDevice, CudaAttention)> {
    let ops = test_device(test)?;
    let attn = CudaAttention::new(&ops).expect("the paged_attention kernels load");
    Some((ops, attn))
}

fn both<F: Fn(&CudaDevice, &CudaAttention, &mut Rng, bool)>(test: &str, f: F) {
    let Some((ops, attn)) = device(test) else { return };
    let mut rng = Rng::new(0xa77e);
    f(&ops, &attn, &mut rng, false);
    f(&ops, &attn, &mut rng, true);
}

macro_rules! case {
    ($bf:expr, $($a:expr),*) => {
        if $bf { attn_case::<bf16>($($a),*) } else { attn_case::<f32>($($a),*) }
    };
}

// ---------------------------------------------------------------------------------------------
// GPU parity

#[test]
fn decode_batch_1() {
    both("decode_batch_1", |ops, attn, rng, bf| {
        for keys in [1, 2, 15, 16, 17, 511, 512, 513, 1500, 3000] {
            for bs in [16, 8] {
                case!(bf, ops, attn, rng, bs, &[(keys - 1, 1)], 32, 8, 128);
            }
        }
    });
}

#[test]
fn decode_batch_7_mixed_contexts() {
    both("decode_batch_7_mixed_contexts", |ops, attn, rng, bf| {
        let seqs: Vec<(usize, usize)> = [1, 16, 33, 512, 1025, 3000, 7].iter().map(|&k| (k - 1, 1)).collect();
        for bs in [16, 8] {
            for hd in [128, 64, 96, 80] {
                case!(bf, ops, attn, rng, bs, &seqs, 32, 8, hd);
            }
        }
    });
}

#[test]
fn decode_batch_32_random_contexts() {
    both("decode_batch_32_random_contexts", |ops, attn, rng, bf| {
        for bs in [16, 8] {
            let seqs: Vec<(usize, usize)> = (0..32).map(|_| (rng.below(3000), 1)).collect();
            case!(bf, ops, attn, rng, bs, &seqs, 32, 8, 128);
        }
    });
}

#[test]
fn gqa_ratios_and_mqa() {
    both("gqa_ratios_and_mqa", |ops, attn, rng, bf| {
        let seqs = [(0, 1), (40, 1), (700, 1), (9, 5)];
        // (n_heads, n_kv_heads): ratio 1, 3, 4, 8, MQA with 8 and 12 query heads.
        for (nh, nkv) in [(8, 8), (12, 4), (16, 4), (32, 4), (8, 1), (12, 1)] {
            for hd in [64, 96, 128, 80, 40] {
                case!(bf, ops, attn, rng, 16, &seqs, nh, nkv, hd);
            }
        }
    });
}

#[test]
fn prefill_with_and_without_context() {
    both("prefill_with_and_without_context", |ops, attn, rng, bf| {
        for bs in [16, 8] {
            // No earlier context.
            case!(bf, ops, attn, rng, bs, &[(0, 37)], 16, 4, 128);
            case!(bf, ops, attn, rng, bs, &[(0, 128), (0, 1), (0, 70)], 16, 4, 64);
            // Chunks after earlier context, one crossing a partition boundary.
            case!(bf, ops, attn, rng, bs, &[(100, 50), (600, 20), (500, 30)], 16, 4, 96);
            case!(bf, ops, attn, rng, bs, &[(1, 3), (15, 17)], 12, 4, 80);
        }
    });
}

#[test]
fn prefill_and_decode_mixed() {
    both("prefill_and_decode_mixed", |ops, attn, rng, bf| {
        let seqs = [(1200, 1), (0, 45), (33, 1), (256, 64), (2999, 1), (0, 1), (517, 9)];
        for bs in [16, 8] {
            case!(bf, ops, attn, rng, bs, &seqs, 32, 8, 128);
            case!(bf, ops, attn, rng, bs, &seqs, 24, 8, 64);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Validation (no GPU needed)

fn dims(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttnDims {
    AttnDims { n_heads, n_kv_heads, head_dim }
}

#[test]
fn plan_builds_metadata() {
    let mut rng = Rng::new(1);
    let (b, _, nb) = make_batch(&mut rng, 16, &[(0, 3), (1000, 1), (20, 2)], 2);
    let d = dims(8, 2, 128);
    let q = b.n_tokens() * 8 * 128;
    let p = plan_attention(&b, d, nb, q, q).unwrap();
    assert_eq!(p.row_seq, vec![0, 0, 0, 1, 2, 2]);
    assert_eq!(p.row_pos, vec![0, 1, 2, 1000, 20, 21]);
    assert_eq!(p.query_start, vec![0, 3, 4, 6]);
    assert_eq!(p.context_lens, vec![3, 1001, 22]);
    assert_eq!(p.params.max_blocks, 63);
    assert_eq!(p.block_table.len(), 3 * 63);
    assert_eq!(&p.block_table[63..63 + 63], b.seqs[1].blocks.iter().map(|&x| x as i32).collect::<Vec<_>>().as_slice());
    assert_eq!(p.block_table[1], 0, "padding");
    assert_eq!(p.params.max_partitions, 2);
    assert_eq!(p.params.heads_per_block, 4);
    assert_eq!(p.grid(), (6, 2, 2));
    assert_eq!(p.partial_len(), 6 * 8 * 2);
    assert_eq!(p.kernel, AttnKernel::Hd128);
    assert!((p.params.scale - 1.0 / 128f32.sqrt()).abs() < 1e-9);
    let p = plan_attention(&b, dims(8, 2, 80), nb, b.n_tokens() * 640, b.n_tokens() * 640).unwrap();
    assert_eq!(p.kernel, AttnKernel::Generic);
}

#[test]
fn plan_rejects_bad_arguments() {
    let mut rng = Rng::new(2);
    let (b, _, nb) = make_batch(&mut rng, 16, &[(10, 1), (40, 2)], 0);
    let q = 3 * 8 * 64;
    let ok = |b: &BatchLayout| plan_attention(b, dims(8, 2, 64), nb, q, q);
    ok(&b).unwrap();
    is_invalid_argument(plan_attention(&b, dims(8, 3, 64), nb, 3 * 8 * 64, q), "not a multiple");
    is_invalid_argument(plan_attention(&b, dims(8, 2, 63), nb, 3 * 8 * 63, 3 * 8 * 63), "head_dim = 63");
    is_invalid_argument(plan_attention(&b, dims(8, 2, 258), nb, 3 * 8 * 258, 3 * 8 * 258), "head_dim = 258");
    is_invalid_argument(plan_attention(&b, dims(0, 2, 64), nb, 0, 0), "n_heads is 0");
    is_invalid_argument(plan_attention(&b, dims(8, 2, 64), nb, q - 1, q), "`q`");
    is_invalid_argument(plan_attention(&b, dims(8, 2, 64), nb, q, q + 1), "`out`");
    // A block id outside the cache.
    is_invalid_argument(plan_attention(&b, dims(8, 2, 64), nb - 1, q, q), "outside the cache");
    let mut bad = b.clone();
    bad.seqs[1].blocks[0] = nb as u32;
    is_invalid_argument(ok(&bad), "outside the cache");
    // A table too short for context + new tokens.
    let mut bad = b.clone();
    bad.seqs[1].blocks.pop();
    is_invalid_argument(ok(&bad), "need 3");
    // Rows not contiguous.
    let mut bad = b.clone();
    bad.seqs[1].token_start = 2;
    is_invalid_argument(ok(&bad), "contiguous");
    // Rows not all covered.
    let mut bad = b.clone();
    bad.seqs[1].n_new = 1;
    is_invalid_argument(ok(&bad), "cover");
    // Slots of another length.
    let mut bad = b.clone();
    bad.slots.pop();
    is_invalid_argument(ok(&bad), "slots");
    // Empty batch, zero block size.
    is_invalid_argument(ok(&BatchLayout { block_size: 16, ..Default::default() }), "number of sequences is 0");
    let mut bad = b.clone();
    bad.block_size = 0;
    is_invalid_argument(ok(&bad), "block_size is 0");
    // Grid y limit: 524288 query heads of one kv head, 4 per block.
    let huge = 524288;
    is_invalid_argument(plan_attention(&b, dims(huge, 1, 2), nb, 3 * huge * 2, 3 * huge * 2), "grid");
}

#[test]
fn reshape_plan_checks_slots_and_lengths() {
    let p = plan_reshape_and_cache(2 * 256, 2 * 256, &[5, 0], 256, 6).unwrap();
    assert_eq!((p.n_tokens, p.kv_dim, p.cache_rows), (2, 256, 6));
    is_invalid_argument(plan_reshape_and_cache(2 * 256, 2 * 256, &[6, 0], 256, 6), "slots[0] = 6");
    is_invalid_argument(plan_reshape_and_cache(2 * 256 - 1, 2 * 256, &[1, 0], 256, 6), "`k`");
    is_invalid_argument(plan_reshape_and_cache(2 * 256, 256, &[1, 0], 256, 6), "`v`");
    is_invalid_argument(plan_reshape_and_cache(0, 0, &[], 256, 6), "n_tokens");
    is_invalid_argument(plan_reshape_and_cache(2, 2, &[1, 0], 0, 6), "kv_dim is 0");
}
