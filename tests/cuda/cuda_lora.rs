//! Parity of the batched LoRA kernels (kernels/lora_sgmv.cu: SGMV and BGMV shrink + expand) with
//! their CPU twin (`backend::cpu::lora::lora_apply`), and the checks in front of them
//! (`backend::cuda::lora::plan_lora`).
//!
//! GPU tests: fresh seeded random x, y, A, B (never zeros) and scales; ranks 8, 16, 32, 64 and 128
//! mixed in one batch (plus odd ranks 3, 12, 17 for the scalar expand path); 1, 8 and 32 distinct
//! adapters; 1, 7, 64 and 300 tokens; hidden sizes 4096 -> 4096, 576 -> 1536, 100 -> 77 and
//! 4096 -> 14336; segments with gaps (base-model rows, which must come back bit for bit
//! unchanged); decode batches (every segment one token) and prefill batches, each through the
//! kernel the dispatch picks and through the other one forced (SGMV and BGMV must agree). x and
//! y are views into larger buffers whose guard elements must come back untouched, at an aligned
//! offset (16-byte vector paths) and at one element off with adapters also misaligned (scalar
//! paths).
//!
//! Tolerances: f32 storage, relative L2 < 1e-5; bf16 storage (x, y, A, B in bf16, f32
//! accumulation, y rounded once per update), relative L2 < 1e-2 against the CPU twin run on the
//! bf16-rounded inputs, both on y and on the update y - y0 alone (so a wrong LoRA term cannot
//! hide under y0). SGMV vs BGMV on the same batch: < 1e-5 (f32) / 1e-2 (bf16).
//!
//! Without a GPU they print `SKIP <test>: <reason>` and pass, unless LORAFLEET_REQUIRE_GPU=1,
//! where they fail. The validation tests at the end run everywhere.

use cudarc::driver::CudaSlice;
use half::bf16;
use lorafleet::backend::cpu::lora::{self as cpu, LoraSegmentRef};
use lorafleet::backend::cuda::ffi::{LF_LORA_MAX_RANK, LF_LORA_TILE_TOKENS};
use lorafleet::backend::cuda::lora::{plan_lora, CudaLora, CudaLoraSegment, LoraKernel, LoraSegmentDesc, LoraShape};
use lorafleet::backend::cuda::{test_device, CudaDevice, DType};
use lorafleet::rng::SplitMix64 as Rng;

use crate::common::cuda_elem::{is_invalid_argument, quantize, TestElem, GUARD};
use crate::common::rel_l2_f32 as rel_l2;

// ---------------------------------------------------------------------------------------------
// Helpers

/// One adapter: A `[rank, d_in]`, B `[d_out, rank]` in T and f32, and its scale.
struct Adapter<T> {
    rank: usize,
    scale: f32,
    a_t: Vec<T>,
    b_t: Vec<T>,
    a_f: Vec<f32>,
    b_f: Vec<f32>,
}

fn make_adapters<T: TestElem>(rng: &mut Rng, ranks: &[usize], d_in: usize, d_out: usize) -> Vec<Adapter<T>> {
    ranks
        .iter()
        .map(|&rank| {
            // Scaled so v and the update are O(1) whatever d_in and the rank.
            let (a_t, a_f) = quantize::<T>(&rng.nonzero(rank * d_in, 1.7 / (d_in as f32).sqrt()));
            let (b_t, b_f) = quantize::<T>(&rng.nonzero(d_out * rank, 1.7 / (rank as f32).sqrt()));
            let scale = 0.5 + 1.5 * rng.unit();
            Adapter { rank, scale, a_t, b_t, a_f, b_f }
        })
        .collect()
}

/// A batch: `(start, len, adapter)` segments in row order over `t_rows` rows.
struct Batch {
    t_rows: usize,
    segs: Vec<(usize, usize, usize)>,
}

/// Decode: every row its own segment, adapters drawn at random, every `base_every`-th row (if
/// any) a base-model row.
fn decode_batch(rng: &mut Rng, t_rows: usize, n_adapters: usize, base_every: Option<usize>) -> Batch {
    let segs =
        (0..t_rows).filter(|r| base_every.is_none_or(|e| r % e != e - 1)).map(|r| (r, 1, if r < n_adapters { r } else { rng.below(n_adapters) })).collect();
    Batch { t_rows, segs }
}

/// Prefill: consecutive segments of random lengths (1 to 2 * mean), each adapter used at least
/// once where the rows allow, with gaps of 0 to 3 base rows between segments.
fn prefill_batch(rng: &mut Rng, t_rows: usize, n_adapters: usize, gaps: bool) -> Batch {
    let mean = (t_rows / n_adapters).max(1);
    let mut segs = Vec::new();
    let mut row = 0;
    let mut i = 0;
    while row < t_rows {
        if gaps {
            row += rng.below(4);
        }
        if row >= t_rows {
            break;
        }
        let len = (1 + rng.below(2 * mean)).min(t_rows - row);
        let adapter = if i < n_adapters { i } else { rng.below(n_adapters) };
        segs.push((row, len, adapter));
        row += len;
        i += 1;
    }
    Batch { t_rows, segs }
}

/// Uploads `data` at element `off` of a buffer with `GUARD` elements after it, every other
/// element `fill`.
fn padded<T: TestElem>(ops: &CudaDevice, data: &[T], off: usize, fill: T) -> CudaSlice<T> {
    let mut host = vec![fill; off + data.len() + GUARD];
    host[off..off + data.len()].copy_from_slice(data);
    ops.upload(&host).expect("upload")
}

/// Runs one batch on the GPU with `kernel` (None: the dispatch's choice) and returns y in f32,
/// after checking its guards.
#[allow(clippy::too_many_arguments)]
fn run_gpu<T: TestElem>(
    ops: &CudaDevice,
    lora: &CudaLora,
    shape: LoraShape,
    x: &[T],
    y0: &[T],
    adapters: &[Adapter<T>],
    batch: &Batch,
    kernel: Option<LoraKernel>,
    off: usize,
    what: &str,
) -> (Vec<f32>, LoraKernel) {
    let LoraShape { t_rows, d_in, d_out } = shape;
    let sentinel = T::from_f32(-7.25);
    let dx = padded(ops, x, off, sentinel);
    let mut dy = padded(ops, y0, off, sentinel);
    // Adapters at element `off` of their buffers too: off = 1 misaligns them (scalar paths).
    let dev: Vec<(CudaSlice<T>, CudaSlice<T>)> = adapters.iter().map(|a| (padded(ops, &a.a_t, off, sentinel), padded(ops, &a.b_t, off, sentinel))).collect();
    let segs: Vec<CudaLoraSegment<'_, T>> = batch
        .segs
        .iter()
        .map(|&(start, len, ai)| {
            let (a, b) = &dev[ai];
            let ad = &adapters[ai];
            CudaLoraSegment { start, len, a: a.slice(off..off + ad.a_t.len()), b: b.slice(off..off + ad.b_t.len()), rank: ad.rank, scale: ad.scale }
        })
        .collect();
    let chosen;
    {
        let xv = dx.slice(off..off + t_rows * d_in);
        let mut yv = dy.slice_mut(off..off + t_rows * d_out);
        let mut prep = lora.prepare(ops, shape, &segs, kernel).unwrap_or_else(|e| panic!("{what}: prepare: {e}"));
        chosen = prep.plan().kernel;
        lora.shrink(ops, &xv, &mut prep).unwrap_or_else(|e| panic!("{what}: shrink: {e}"));
        lora.expand(ops, &mut yv, &prep).unwrap_or_else(|e| panic!("{what}: expand: {e}"));
    }
    let host = ops.download(&dy).unwrap_or_else(|e| panic!("{what}: download: {e}"));
    assert!(host[..off].iter().all(|&v| v == sentinel), "{what}: guard before y overwritten");
    assert!(host[off + t_rows * d_out..].iter().all(|&v| v == sentinel), "{what}: guard after y overwritten");
    let xh = ops.download(&dx).expect("download");
    assert!(xh[off..off + x.len()] == *x, "{what}: x was modified");
    (host[off..off + t_rows * d_out].iter().map(|v| v.to_f32()).collect(), chosen)
}

/// One parity case: the batch through the dispatch's kernel and through the other one, each
/// against the CPU twin, and against each other.
#[allow(clippy::too_many_arguments)]
fn lora_case<T: TestElem>(
    ops: &CudaDevice,
    lora: &CudaLora,
    rng: &mut Rng,
    (d_in, d_out): (usize, usize),
    ranks: &[usize],
    batch: &Batch,
    off: usize,
    label: &str,
) {
    let t_rows = batch.t_rows;
    let what = format!("{label} {} {d_in}->{d_out} tokens {t_rows} segments {} adapters {} off {off}", T::NAME, batch.segs.len(), ranks.len());
    let adapters = make_adapters::<T>(rng, ranks, d_in, d_out);
    let (x_t, x_f) = quantize::<T>(&rng.nonzero(t_rows * d_in, 1.0));
    let (y_t, y0_f) = quantize::<T>(&rng.nonzero(t_rows * d_out, 0.5));

    let cpu_segs: Vec<LoraSegmentRef<'_>> = batch
        .segs
        .iter()
        .map(|&(start, len, ai)| {
            let a = &adapters[ai];
            LoraSegmentRef { start, len, a: &a.a_f, b: &a.b_f, rank: a.rank, scale: a.scale }
        })
        .collect();
    let mut want = y0_f.clone();
    cpu::lora_apply(&x_f, d_in, &cpu_segs, &mut want, d_out).expect("cpu lora_apply");
    let want_delta: Vec<f32> = want.iter().zip(&y0_f).map(|(w, y)| w - y).collect();

    let shape = LoraShape { t_rows, d_in, d_out };
    let all_one = batch.segs.iter().all(|s| s.1 == 1);
    let expect = if all_one { LoraKernel::Bgmv } else { LoraKernel::Sgmv };
    let other = if all_one { LoraKernel::Sgmv } else { LoraKernel::Bgmv };
    let (got, chosen) = run_gpu(ops, lora, shape, &x_t, &y_t, &adapters, batch, None, off, &what);
    assert_eq!(chosen, expect, "{what}: dispatch");
    let (got_other, _) = run_gpu(ops, lora, shape, &x_t, &y_t, &adapters, batch, Some(other), off, &what);

    let covered = |r: usize| batch.segs.iter().any(|&(s, l, _)| r >= s && r < s + l);
    for (name, g) in [(format!("{expect:?}"), &got), (format!("{other:?} (forced)"), &got_other)] {
        let w = format!("{what} {name}");
        let e = rel_l2(g, &want, &w);
        assert!(e < T::TOL, "{w}: relative L2 error of y {e:.3e} >= {:.0e}", T::TOL);
        let delta: Vec<f32> = g.iter().zip(&y0_f).map(|(g, y)| g - y).collect();
        let e = rel_l2(&delta, &want_delta, &w);
        assert!(e < T::TOL, "{w}: relative L2 error of the update {e:.3e} >= {:.0e}", T::TOL);
        // Base rows: bit for bit unchanged.
        for r in (0..t_rows).filter(|&r| !covered(r)) {
            let (a, b) = (&g[r * d_out..(r + 1) * d_out], &y0_f[r * d_out..(r + 1) * d_out]);
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{w}: base row {r} was written");
        }
        // Per segment too: an error confined to one short segment would hide in the batch's L2.
        for &(s, l, _) in &batch.segs {
            let rows = s * d_out..(s + l) * d_out;
            let d: Vec<f32> = g[rows.clone()].iter().zip(&y0_f[rows.clone()]).map(|(g, y)| g - y).collect();
            let e = rel_l2(&d, &want_delta[rows], &w);
            assert!(e < 4.0 * T::TOL, "{w}: segment at row {s} (len {l}): relative L2 error {e:.3e}");
        }
    }
    let e = rel_l2(&got_other, &got, &format!("{what} SGMV vs BGMV"));
    assert!(e < T::TOL, "{what}: SGMV and BGMV differ: relative L2 {e:.3e}");
}

fn device(test: &str) -> Option<(CudaDevice, CudaLora)> {
    let ops = test_device(test)?;
    let lora = CudaLora::new(&ops).expect("the lora_sgmv kernels load");
    Some((ops, lora))
}

/// Runs `f` for f32 and then bf16 storage.
fn both(test: &str, f: impl Fn(&CudaDevice, &CudaLora, &mut Rng, bool)) {
    let Some((ops, lora)) = device(test) else { return };
    let mut rng = Rng::new(0x10_5a);
    f(&ops, &lora, &mut rng, false);
    f(&ops, &lora, &mut rng, true);
}

macro_rules! case {
    ($bf:expr, $($a:expr),*) => {
        if $bf { lora_case::<bf16>($($a),*) } else { lora_case::<f32>($($a),*) }
    };
}

/// Ranks of `n` adapters: 8, 16, 32, 64, 128 in turn, so every mix of at least 5 has them all.
fn ranks(n: usize) -> Vec<usize> {
    (0..n).map(|i| [8, 16, 32, 64, 128][i % 5]).collect()
}

const DIMS: [(usize, usize); 3] = [(4096, 4096), (576, 1536), (100, 77)];

// ---------------------------------------------------------------------------------------------
// GPU parity

#[test]
fn decode_batches_mixed_ranks() {
    both("cuda_lora::decode_batches_mixed_ranks", |ops, lora, rng, bf| {
        for dims in DIMS {
            for (tokens, n_adapters) in [(1, 1), (7, 1), (7, 8), (64, 1), (64, 8), (64, 32)] {
                // At most one adapter per token: 7 tokens take 7 of the 8.
                let n = n_adapters.min(tokens);
                let b = decode_batch(rng, tokens, n, None);
                case!(bf, ops, lora, rng, dims, &ranks(n), &b, 0, "decode");
            }
            // Base-model rows between the adapters' rows.
            let b = decode_batch(rng, 64, 32, Some(3));
            case!(bf, ops, lora, rng, dims, &ranks(32), &b, 0, "decode with base rows");
        }
    });
}

#[test]
fn prefill_segments_with_gaps() {
    both("cuda_lora::prefill_segments_with_gaps", |ops, lora, rng, bf| {
        for dims in DIMS {
            for (tokens, n_adapters) in [(7, 1), (7, 8), (64, 1), (64, 8), (64, 32), (300, 1), (300, 8), (300, 32)] {
                for gaps in [false, true] {
                    let b = prefill_batch(rng, tokens, n_adapters, gaps);
                    case!(bf, ops, lora, rng, dims, &ranks(n_adapters), &b, 0, "prefill");
                }
            }
        }
    });
}

#[test]
fn large_intermediate_size() {
    // The MLP's up projection of an 8B model: d_out 14336, and its many output blocks.
    both("cuda_lora::large_intermediate_size", |ops, lora, rng, bf| {
        let b = prefill_batch(rng, 300, 8, true);
        case!(bf, ops, lora, rng, (4096, 14336), &ranks(8), &b, 0, "prefill");
        let b = decode_batch(rng, 64, 32, Some(5));
        case!(bf, ops, lora, rng, (4096, 14336), &ranks(32), &b, 0, "decode");
    });
}

#[test]
fn one_segment_covering_the_batch_and_tile_edges() {
    both("cuda_lora::one_segment_covering_the_batch_and_tile_edges", |ops, lora, rng, bf| {
        let tile = LF_LORA_TILE_TOKENS as usize;
        for len in [tile - 1, tile, tile + 1, 2 * tile, 300] {
            let b = Batch { t_rows: len, segs: vec![(0, len, 0)] };
            for r in [8, 128] {
                case!(bf, ops, lora, rng, (4096, 4096), &[r], &b, 0, "one segment");
            }
        }
        // The largest rank the kernels take.
        let b = Batch { t_rows: 20, segs: vec![(2, 17, 0)] };
        case!(bf, ops, lora, rng, (576, 1536), &[LF_LORA_MAX_RANK as usize], &b, 0, "max rank");
    });
}

#[test]
fn unaligned_buffers_and_odd_ranks_take_the_scalar_paths() {
    both("cuda_lora::unaligned_buffers_and_odd_ranks_take_the_scalar_paths", |ops, lora, rng, bf| {
        for dims in [(4096, 4096), (100, 77), (576, 1536)] {
            // Views one element off: x, y, A and B all misaligned.
            let b = prefill_batch(rng, 64, 8, true);
            case!(bf, ops, lora, rng, dims, &ranks(8), &b, 1, "misaligned prefill");
            let b = decode_batch(rng, 7, 5, Some(4));
            case!(bf, ops, lora, rng, dims, &ranks(5), &b, 1, "misaligned decode");
            // Ranks that are not whole 16-byte vectors of B rows (12 is, for f32).
            let b = prefill_batch(rng, 64, 3, true);
            case!(bf, ops, lora, rng, dims, &[3, 12, 17], &b, 0, "odd ranks");
        }
    });
}

#[test]
fn empty_batch_changes_nothing() {
    let Some((ops, lora)) = device("cuda_lora::empty_batch_changes_nothing") else { return };
    let shape = LoraShape { t_rows: 5, d_in: 64, d_out: 32 };
    let x = ops.upload(&vec![bf16::from_f32(1.0); 5 * 64]).unwrap();
    let y0 = vec![bf16::from_f32(0.25); 5 * 32];
    let mut y = ops.upload(&y0).unwrap();
    lora.apply::<bf16>(&ops, &mut y, &x, shape, &[], None).unwrap();
    assert_eq!(ops.download(&y).unwrap(), y0);
}

// ---------------------------------------------------------------------------------------------
// Validation (no GPU needed)

fn desc(start: usize, len: usize, rank: usize, d_in: usize, d_out: usize) -> LoraSegmentDesc {
    LoraSegmentDesc {
        start,
        len,
        rank,
        scale: 2.0,
        a_len: rank * d_in,
        b_len: d_out * rank,
        a_ptr: 0x1000 * (start as u64 % 1000 + 1),
        b_ptr: 0x2000 * (start as u64 % 1000 + 1),
    }
}

fn shape(t_rows: usize, d_in: usize, d_out: usize) -> LoraShape {
    LoraShape { t_rows, d_in, d_out }
}

#[test]
fn plan_tiles_prefill_segments() {
    let (d_in, d_out) = (4096, 1536);
    let segs = [desc(0, 3, 8, d_in, d_out), desc(5, 40, 64, d_in, d_out), desc(45, 16, 16, d_in, d_out)];
    let p = plan_lora(DType::Bf16, shape(70, d_in, d_out), 70 * d_in, 70 * d_out, &segs, None).unwrap();
    assert_eq!(p.kernel, LoraKernel::Sgmv);
    let tiles: Vec<(i32, i32)> = p.tiles.iter().map(|t| (t.segment, t.token0)).collect();
    assert_eq!(tiles, vec![(0, 0), (1, 5), (1, 21), (1, 37), (2, 45)]);
    assert_eq!(p.params.n_tiles, 5);
    assert_eq!(p.params.n_segments, 3);
    assert_eq!(p.params.r_max, 64);
    // 5 tiles: chunks shrink to the smallest (512 bytes: 256 bf16) to give 5 x 16 blocks.
    assert_eq!((p.params.chunk, p.params.n_chunks), (256, 16));
    assert_eq!(p.shrink_grid(), (5, 16, 1));
    assert_eq!(p.expand_grid(), (5, 6, 1));
    assert_eq!(p.part_len(), 16 * 70 * 64);
    assert!(p.token_seg.is_empty());
    let s = p.segments[1];
    assert_eq!((s.a, s.b, s.start, s.len, s.rank, s.scale), (0x6000, 0xc000, 5, 40, 64, 2.0));
    // f32: 128-element chunks.
    let p = plan_lora(DType::F32, shape(70, d_in, d_out), 70 * d_in, 70 * d_out, &segs, None).unwrap();
    assert_eq!((p.params.chunk, p.params.n_chunks), (128, 32));
    // Enough tiles for the device: the largest chunk (2048 bytes), fewest partial sums.
    let segs = [desc(0, 300, 16, d_in, d_out)];
    let p = plan_lora(DType::Bf16, shape(300, d_in, d_out), 300 * d_in, 300 * d_out, &segs, Some(LoraKernel::Bgmv)).unwrap();
    assert_eq!((p.params.chunk, p.params.n_chunks), (1024, 4));
    // In between: 64 tokens of BGMV want 5 chunks of 4096: 820, rounded up to 1024.
    let segs: Vec<_> = (0..64).map(|t| desc(t, 1, 16, d_in, d_out)).collect();
    let p = plan_lora(DType::Bf16, shape(64, d_in, d_out), 64 * d_in, 64 * d_out, &segs, None).unwrap();
    assert_eq!((p.kernel, p.params.chunk, p.params.n_chunks), (LoraKernel::Bgmv, 1024, 4));
    // Odd sizes: a partial last chunk and output block.
    let p = plan_lora(DType::Bf16, shape(3, 100, 77), 300, 231, &[desc(1, 2, 17, 100, 77)], None).unwrap();
    assert_eq!((p.params.n_chunks, p.expand_grid()), (1, (1, 1, 1)));
}

#[test]
fn plan_picks_bgmv_for_decode_with_token_indices() {
    let (d_in, d_out) = (576, 1536);
    // Rows 0, 1, 3, 4 have adapters; row 2 and 5 are the base model's; an empty segment is ignored.
    let segs = [desc(0, 1, 8, d_in, d_out), desc(1, 1, 128, d_in, d_out), desc(3, 0, 16, d_in, d_out), desc(3, 1, 16, d_in, d_out), desc(4, 1, 8, d_in, d_out)];
    let p = plan_lora(DType::Bf16, shape(6, d_in, d_out), 6 * d_in, 6 * d_out, &segs, None).unwrap();
    assert_eq!(p.kernel, LoraKernel::Bgmv);
    assert_eq!(p.token_seg, vec![0, 1, -1, 2, 3, -1]);
    assert_eq!(p.segments.len(), 4, "the empty segment is dropped");
    assert_eq!(p.params.n_segments, 4);
    assert_eq!(p.params.n_tiles, 0);
    // 6 tokens: 576 split into the smallest chunks (256 bf16), 3 of them.
    assert_eq!(p.shrink_grid(), (6, 3, 1));
    assert_eq!(p.expand_grid(), (6, 6, 1));
    // Forcing SGMV on the same batch: one tile per segment.
    let p = plan_lora(DType::Bf16, shape(6, d_in, d_out), 6 * d_in, 6 * d_out, &segs, Some(LoraKernel::Sgmv)).unwrap();
    assert_eq!(p.kernel, LoraKernel::Sgmv);
    assert_eq!(p.tiles.len(), 4);
    // Forcing BGMV on a prefill batch maps every covered row.
    let segs = [desc(1, 3, 8, d_in, d_out)];
    let p = plan_lora(DType::Bf16, shape(5, d_in, d_out), 5 * d_in, 5 * d_out, &segs, Some(LoraKernel::Bgmv)).unwrap();
    assert_eq!(p.token_seg, vec![-1, 0, 0, 0, -1]);
    assert_eq!(LoraKernel::for_segment_lens([1, 1, 0, 1]), LoraKernel::Bgmv);
    assert_eq!(LoraKernel::for_segment_lens([1, 2]), LoraKernel::Sgmv);
}

#[test]
fn plan_metadata_image_is_the_c_layout() {
    let segs = [desc(0, 2, 8, 64, 32), desc(2, 1, 16, 64, 32)];
    let p = plan_lora(DType::F32, shape(4, 64, 32), 4 * 64, 4 * 32, &segs, Some(LoraKernel::Bgmv)).unwrap();
    let (bytes, off) = p.metadata_bytes();
    assert_eq!(off, 64);
    assert_eq!(bytes.len(), 64 + 4 * 4);
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
    let int = |i: usize| i32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    assert_eq!((word(32), word(40)), (0x3000, 0x6000));
    assert_eq!((int(48), int(52), int(56)), (2, 1, 16));
    assert_eq!(f32::from_le_bytes(bytes[60..64].try_into().unwrap()), 2.0);
    assert_eq!((int(64), int(68), int(72), int(76)), (0, 0, 1, -1));
    let p = plan_lora(DType::F32, shape(4, 64, 32), 4 * 64, 4 * 32, &segs, Some(LoraKernel::Sgmv)).unwrap();
    let (bytes, off) = p.metadata_bytes();
    assert_eq!((off, bytes.len()), (64, 64 + 2 * 8));
    let int = |i: usize| i32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    assert_eq!((int(64), int(68), int(72), int(76)), (0, 0, 1, 2));
}

#[test]
fn plan_rejects_bad_arguments() {
    let (d_in, d_out) = (64, 32);
    let sh = shape(8, d_in, d_out);
    let (x, y) = (8 * d_in, 8 * d_out);
    let ok = |segs: &[LoraSegmentDesc]| plan_lora(DType::Bf16, sh, x, y, segs, None);
    ok(&[desc(0, 8, 8, d_in, d_out)]).unwrap();
    // Overlapping, out of order, past the batch.
    is_invalid_argument(ok(&[desc(0, 3, 8, d_in, d_out), desc(2, 2, 8, d_in, d_out)]), "inside the previous segment");
    is_invalid_argument(ok(&[desc(4, 1, 8, d_in, d_out), desc(1, 1, 8, d_in, d_out)]), "inside the previous segment");
    is_invalid_argument(ok(&[desc(6, 3, 8, d_in, d_out)]), "past the batch");
    is_invalid_argument(ok(&[desc(usize::MAX, 3, 8, d_in, d_out)]), "past the batch");
    // Ranks: zero, above the kernels' maximum.
    is_invalid_argument(ok(&[desc(0, 1, 0, d_in, d_out)]), "rank 0");
    let big = LF_LORA_MAX_RANK as usize + 1;
    is_invalid_argument(ok(&[desc(0, 1, big, d_in, d_out)]), &format!("rank {big}"));
    // A and B of the wrong size (A of another d_in, B of another rank).
    let mut s = desc(0, 1, 8, d_in, d_out);
    s.a_len = 8 * (d_in + 1);
    is_invalid_argument(ok(&[s]), "A has");
    let mut s = desc(0, 1, 8, d_in, d_out);
    s.b_len = d_out * 16;
    is_invalid_argument(ok(&[s]), "B has");
    // Scale, null addresses.
    let mut s = desc(0, 1, 8, d_in, d_out);
    s.scale = f32::NAN;
    is_invalid_argument(ok(&[s]), "not finite");
    let mut s = desc(0, 1, 8, d_in, d_out);
    s.a_ptr = 0;
    is_invalid_argument(ok(&[s]), "null");
    // x and y of the wrong length; zero dimensions.
    let segs = [desc(0, 1, 8, d_in, d_out)];
    is_invalid_argument(plan_lora(DType::Bf16, sh, x - 1, y, &segs, None), "`x`");
    is_invalid_argument(plan_lora(DType::Bf16, sh, x, y + 1, &segs, None), "`y`");
    is_invalid_argument(plan_lora(DType::Bf16, shape(0, d_in, d_out), 0, 0, &[], None), "t_rows is 0");
    is_invalid_argument(plan_lora(DType::Bf16, shape(8, 0, d_out), 0, y, &[], None), "d_in is 0");
    // Grid limits: d_out needing more than 65535 output blocks, d_in more than 65535 chunks.
    let wide = 65536 * 256;
    is_invalid_argument(plan_lora(DType::Bf16, shape(1, 8, wide), 8, wide, &[], None), "d_out");
    let deep = 65536 * 1024;
    is_invalid_argument(plan_lora(DType::Bf16, shape(1, deep, 8), deep, 8, &[], None), "d_in");
    // No segment at all: a valid step that launches nothing.
    let p = plan_lora(DType::Bf16, sh, x, y, &[], None).unwrap();
    assert!(p.is_empty());
}
