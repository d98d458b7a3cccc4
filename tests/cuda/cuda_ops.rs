//! Parity of the `kernels/ops.cu` kernels with their CPU twins (`backend::cpu::ops`), and the
//! argument checks in front of them.
//!
//! GPU tests: fresh seeded random inputs (never zeros) over several shapes, odd ones included,
//! f32 (relative L2 < 1e-5) and bf16 (< 1e-2, against the CPU op on the bf16-rounded inputs).
//! Every buffer a kernel sees is a view into a larger allocation, with guard elements before and
//! after it, at an aligned offset (the 16-byte vector path where the length allows) and at an
//! offset of one element (the scalar path): outputs are poisoned with NaN so an unwritten element
//! fails, and the guards must come back untouched, so a write outside the view fails too.
//! Without a GPU (or without kernels) they print `SKIP <test>: <reason>` and pass, unless
//! LORAFLEET_REQUIRE_GPU=1, where they fail.
//!
//! Validation tests run everywhere: the checks are pure functions (`backend::cuda::validate`).

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use half::bf16;
use lorafleet::backend::cpu::ops as cpu;
use lorafleet::backend::cuda::{test_device, validate, CudaDevice, RopeDims};
use lorafleet::rng::SplitMix64 as Rng;

use crate::common::cuda_elem::{is_invalid_argument, quantize, TestElem, GUARD};
use crate::common::rel_l2_f32 as rel_l2;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Offsets of a view in its allocation: 16 elements (16-byte aligned for f32 and bf16: the vector
/// path where the length allows) and 1 element (misaligned: the scalar path).
const OFFSETS: [usize; 2] = [16, 1];

/// A device buffer `[fill; off] ++ data ++ [fill; GUARD]`; the data is at `off..off + data.len()`.
fn padded<T: TestElem>(ops: &CudaDevice, data: &[T], off: usize, fill: T) -> CudaSlice<T> {
    let mut host = vec![fill; off];
    host.extend_from_slice(data);
    host.extend(std::iter::repeat_n(fill, GUARD));
    ops.upload(&host).expect("upload")
}

fn view<T>(buf: &CudaSlice<T>, off: usize, len: usize) -> CudaView<'_, T> {
    buf.slice(off..off + len)
}

fn view_mut<T>(buf: &mut CudaSlice<T>, off: usize, len: usize) -> CudaViewMut<'_, T> {
    buf.slice_mut(off..off + len)
}

/// Downloads a padded buffer, checks its guards still hold `fill` bit for bit (a kernel wrote
/// outside its view otherwise) and returns the data as f32.
fn unpad<T: TestElem>(ops: &CudaDevice, buf: &CudaSlice<T>, off: usize, len: usize, fill: T, what: &str) -> Vec<f32> {
    let host = ops.download(buf).expect("download");
    let bits_eq = |a: T, b: T| a.to_f32().to_bits() == b.to_f32().to_bits();
    for (i, &g) in host[..off].iter().chain(&host[off + len..]).enumerate() {
        assert!(bits_eq(g, fill), "{what}: guard element {i} was overwritten with {g:?}");
    }
    host[off..off + len].iter().map(|&x| x.to_f32()).collect()
}

fn assert_close<T: TestElem>(got: &[f32], want: &[f32], what: &str) {
    let e = rel_l2(got, want, what);
    assert!(e < T::TOL, "{what}: relative L2 error {e:.3e} >= {:.0e}", T::TOL);
}

const ROWS: [usize; 3] = [1, 3, 77];
/// 576 (SmolLM2-135M hidden), 1000 (vector path), 1004 (f32 vector, bf16 scalar), 4096, 7 (odd).
const COLS: [usize; 5] = [576, 1000, 1004, 4096, 7];

// ---------------------------------------------------------------------------------------------
// RMSNorm

fn rms_norm_case<T: TestElem>(ops: &CudaDevice, rng: &mut Rng, rows: usize, cols: usize, off: usize) {
    let what = format!("rms_norm {} rows {rows} cols {cols} offset {off}", T::NAME);
    // Rows of very different scales: the norm must not depend on it.
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let scale = [1e-3f32, 1.0, 30.0][rng.below(3)];
        x.extend(rng.nonzero(cols, scale));
    }
    let w: Vec<f32> = (0..cols).map(|_| 0.5 + rng.unit()).collect();
    let eps = 1e-5;
    let (xt, xf) = quantize::<T>(&x);
    let (wt, wf) = quantize::<T>(&w);
    let mut want = vec![0f32; rows * cols];
    cpu::rms_norm(&xf, &wf, eps, &mut want);

    let nan = T::from_f32(f32::NAN);
    let xd = padded(ops, &xt, off, nan);
    let wd = padded(ops, &wt, off, nan);
    let mut od = padded(ops, &vec![nan; rows * cols], off, nan);
    ops.rms_norm_into(&view(&xd, off, rows * cols), &view(&wd, off, cols), &mut view_mut(&mut od, off, rows * cols), rows, cols, eps).expect("rms_norm_into");
    let got = unpad(ops, &od, off, rows * cols, nan, &what);
    assert_close::<T>(&got, &want, &what);
}

fn rms_norm_parity<T: TestElem>(ops: &CudaDevice) {
    let mut rng = Rng::new(1);
    for rows in ROWS {
        for cols in COLS {
            for off in OFFSETS {
                rms_norm_case::<T>(ops, &mut rng, rows, cols, off);
            }
        }
    }
    // The allocating form.
    let (rows, cols) = (5, 576);
    let (xt, xf) = quantize::<T>(&rng.nonzero(rows * cols, 2.0));
    let (wt, wf) = quantize::<T>(&rng.nonzero(cols, 1.0));
    let mut want = vec![0f32; rows * cols];
    cpu::rms_norm(&xf, &wf, 1e-6, &mut want);
    let out = ops.rms_norm(&ops.upload(&xt).unwrap(), &ops.upload(&wt).unwrap(), rows, cols, 1e-6).expect("rms_norm");
    let got: Vec<f32> = ops.download(&out).unwrap().into_iter().map(T::to_f32).collect();
    assert_close::<T>(&got, &want, &format!("rms_norm {} allocating", T::NAME));
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(ops) = test_device("cuda_ops::rms_norm_matches_cpu") else { return };
    rms_norm_parity::<f32>(&ops);
    rms_norm_parity::<bf16>(&ops);
    ops.synchronize().expect("no asynchronous error");
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// cos/sin tables `[max_pos, head_dim / 2]` as HF computes them (theta 10000).
fn tables(head_dim: usize, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32)).collect();
    cpu::rope_tables(&inv_freq, max_pos)
}

fn rope_case<T: TestElem>(ops: &CudaDevice, rng: &mut Rng, rows: usize, dims: RopeDims, off: usize) {
    let RopeDims { n_q_heads, n_k_heads, head_dim } = dims;
    let what = format!("rope {} rows {rows} heads {n_q_heads}/{n_k_heads} head_dim {head_dim} offset {off}", T::NAME);
    let max_pos = 2048;
    let (cos, sin) = tables(head_dim, max_pos);
    // Random positions, with the first and the last table row always used.
    let mut positions: Vec<u32> = (0..rows).map(|_| rng.below(max_pos) as u32).collect();
    positions[0] = max_pos as u32 - 1;
    if rows > 1 {
        positions[1] = 0;
    }
    let (nq, nk) = (rows * n_q_heads * head_dim, rows * n_k_heads * head_dim);
    let (qt, mut want_q) = quantize::<T>(&rng.nonzero(nq, 2.0));
    let (kt, mut want_k) = quantize::<T>(&rng.nonzero(nk, 2.0));
    cpu::rope_inplace(&mut want_q, &positions, n_q_heads, head_dim, &cos, &sin);
    cpu::rope_inplace(&mut want_k, &positions, n_k_heads, head_dim, &cos, &sin);

    // In place: the guards hold a sentinel, not NaN.
    let fill = T::from_f32(12345.0);
    let mut qd = padded(ops, &qt, off, fill);
    let mut kd = padded(ops, &kt, off, fill);
    let cd = padded(ops, &cos, off, f32::NAN);
    let sd = padded(ops, &sin, off, f32::NAN);
    ops.rope(&mut view_mut(&mut qd, off, nq), &mut view_mut(&mut kd, off, nk), &positions, &view(&cd, off, cos.len()), &view(&sd, off, sin.len()), dims)
        .expect("rope");
    let got_q = unpad(ops, &qd, off, nq, fill, &format!("{what} q"));
    let got_k = unpad(ops, &kd, off, nk, fill, &format!("{what} k"));
    assert_close::<T>(&got_q, &want_q, &format!("{what} q"));
    assert_close::<T>(&got_k, &want_k, &format!("{what} k"));
}

fn rope_parity<T: TestElem>(ops: &CudaDevice) {
    let mut rng = Rng::new(2);
    // head_dim 64, 96, 128: vector paths; 72: f32 vector, bf16 scalar (36 % 8 != 0); 6: scalar.
    for head_dim in [64, 96, 128, 72, 6] {
        // (q heads, k heads): MHA, GQA 4:1 and 4:1 at Llama-8B size, GQA 3:1, MQA.
        for (n_q_heads, n_k_heads) in [(1, 1), (4, 1), (32, 8), (9, 3), (7, 1)] {
            for rows in ROWS {
                for off in OFFSETS {
                    rope_case::<T>(ops, &mut rng, rows, RopeDims { n_q_heads, n_k_heads, head_dim }, off);
                }
            }
        }
    }
}

#[test]
fn rope_matches_cpu() {
    let Some(ops) = test_device("cuda_ops::rope_matches_cpu") else { return };
    rope_parity::<f32>(&ops);
    rope_parity::<bf16>(&ops);
    ops.synchronize().expect("no asynchronous error");
}

// ---------------------------------------------------------------------------------------------
// SiLU * mul and add (flat)

/// Flat lengths: every rows x cols above, tails of every length mod 8, and one large enough
/// that the grid-stride loop wraps (the grid is capped at 16 blocks of 256 per SM).
fn flat_lengths() -> Vec<usize> {
    let mut v: Vec<usize> = vec![1, 2, 3, 5, 7, 8, 9, 13, 4099, 5_000_001];
    for rows in ROWS {
        for cols in COLS {
            v.push(rows * cols);
        }
    }
    v
}

fn silu_mul_case<T: TestElem>(ops: &CudaDevice, rng: &mut Rng, n: usize, off: usize, scale: f32) {
    let what = format!("silu_mul {} n {n} offset {off} scale {scale}", T::NAME);
    let (gt, gf) = quantize::<T>(&rng.nonzero(n, scale));
    let (ut, uf) = quantize::<T>(&rng.nonzero(n, 2.0));
    let mut want = vec![0f32; n];
    cpu::silu_mul(&gf, &uf, &mut want);
    let nan = T::from_f32(f32::NAN);
    let gd = padded(ops, &gt, off, nan);
    let ud = padded(ops, &ut, off, nan);
    let mut od = padded(ops, &vec![nan; n], off, nan);
    ops.silu_mul_into(&view(&gd, off, n), &view(&ud, off, n), &mut view_mut(&mut od, off, n)).expect("silu_mul_into");
    let got = unpad(ops, &od, off, n, nan, &what);
    assert_close::<T>(&got, &want, &what);
}

fn silu_mul_parity<T: TestElem>(ops: &CudaDevice) {
    let mut rng = Rng::new(3);
    for n in flat_lengths() {
        for off in OFFSETS {
            silu_mul_case::<T>(ops, &mut rng, n, off, 4.0);
        }
    }
    // Gates far into both tails of the sigmoid (exp overflows to inf for g < -88).
    silu_mul_case::<T>(ops, &mut rng, 4096, 16, 120.0);
    let (gt, gf) = quantize::<T>(&rng.nonzero(1000, 3.0));
    let (ut, uf) = quantize::<T>(&rng.nonzero(1000, 3.0));
    let mut want = vec![0f32; 1000];
    cpu::silu_mul(&gf, &uf, &mut want);
    let out = ops.silu_mul(&ops.upload(&gt).unwrap(), &ops.upload(&ut).unwrap()).expect("silu_mul");
    let got: Vec<f32> = ops.download(&out).unwrap().into_iter().map(T::to_f32).collect();
    assert_close::<T>(&got, &want, &format!("silu_mul {} allocating", T::NAME));
}

#[test]
fn silu_mul_matches_cpu() {
    let Some(ops) = test_device("cuda_ops::silu_mul_matches_cpu") else { return };
    silu_mul_parity::<f32>(&ops);
    silu_mul_parity::<bf16>(&ops);
    ops.synchronize().expect("no asynchronous error");
}

fn add_parity<T: TestElem>(ops: &CudaDevice) {
    let mut rng = Rng::new(4);
    for n in flat_lengths() {
        for off in OFFSETS {
            let what = format!("add_assign {} n {n} offset {off}", T::NAME);
            let (xt, mut want) = quantize::<T>(&rng.nonzero(n, 3.0));
            let (yt, yf) = quantize::<T>(&rng.nonzero(n, 3.0));
            cpu::add_assign(&mut want, &yf);
            let fill = T::from_f32(12345.0);
            let mut xd = padded(ops, &xt, off, fill);
            let yd = padded(ops, &yt, off, T::from_f32(f32::NAN));
            ops.add_assign(&mut view_mut(&mut xd, off, n), &view(&yd, off, n)).expect("add_assign");
            let got = unpad(ops, &xd, off, n, fill, &what);
            assert_close::<T>(&got, &want, &what);
            if T::NAME == "f32" {
                // One IEEE add per element on both sides: bit-exact.
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: not bit-exact");
            }
        }
    }
}

#[test]
fn add_assign_matches_cpu() {
    let Some(ops) = test_device("cuda_ops::add_assign_matches_cpu") else { return };
    add_parity::<f32>(&ops);
    add_parity::<bf16>(&ops);
    ops.synchronize().expect("no asynchronous error");
}

// ---------------------------------------------------------------------------------------------
// Embedding

fn embedding_parity<T: TestElem>(ops: &CudaDevice) {
    let mut rng = Rng::new(5);
    for vocab in [1usize, 50, 1000] {
        for hidden in COLS {
            for n_ids in ROWS {
                for off in OFFSETS {
                    let what = format!("embedding {} vocab {vocab} hidden {hidden} ids {n_ids} offset {off}", T::NAME);
                    let (tt, tf) = quantize::<T>(&rng.nonzero(vocab * hidden, 2.0));
                    // Random ids with repeats, the first and the last row always used.
                    let mut ids: Vec<u32> = (0..n_ids).map(|_| rng.below(vocab) as u32).collect();
                    ids[0] = vocab as u32 - 1;
                    if n_ids > 1 {
                        ids[1] = 0;
                    }
                    let mut want = vec![0f32; n_ids * hidden];
                    cpu::embedding(&tf, hidden, &ids, &mut want);
                    let nan = T::from_f32(f32::NAN);
                    let td = padded(ops, &tt, off, nan);
                    let mut od = padded(ops, &vec![nan; n_ids * hidden], off, nan);
                    ops.embedding_into(&view(&td, off, vocab * hidden), hidden, &ids, &mut view_mut(&mut od, off, n_ids * hidden)).expect("embedding_into");
                    let got = unpad(ops, &od, off, n_ids * hidden, nan, &what);
                    assert_close::<T>(&got, &want, &what);
                    // A gather is a copy: bit-exact.
                    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: not bit-exact");
                }
            }
        }
    }
    let (tt, tf) = quantize::<T>(&rng.nonzero(10 * 64, 1.0));
    let ids = [3u32, 3, 9, 0];
    let mut want = vec![0f32; ids.len() * 64];
    cpu::embedding(&tf, 64, &ids, &mut want);
    let out = ops.embedding(&ops.upload(&tt).unwrap(), 64, &ids).expect("embedding");
    let got: Vec<f32> = ops.download(&out).unwrap().into_iter().map(T::to_f32).collect();
    assert_eq!(got, want, "embedding {} allocating", T::NAME);
}

#[test]
fn embedding_matches_cpu() {
    let Some(ops) = test_device("cuda_ops::embedding_matches_cpu") else { return };
    embedding_parity::<f32>(&ops);
    embedding_parity::<bf16>(&ops);
    ops.synchronize().expect("no asynchronous error");
}

// ---------------------------------------------------------------------------------------------
// Bad arguments through the device wrappers: rejected before any launch (the poisoned output is
// left as it was).

#[test]
fn wrappers_reject_bad_arguments_before_launching() {
    let Some(ops) = test_device("cuda_ops::wrappers_reject_bad_arguments_before_launching") else { return };
    let mut rng = Rng::new(6);
    let nan = f32::NAN;
    let x = ops.upload(&rng.nonzero(3 * 64, 1.0)).unwrap();
    let w = ops.upload(&rng.nonzero(64, 1.0)).unwrap();
    let mut out = ops.upload(&vec![nan; 3 * 64]).unwrap();
    let untouched = |ops: &CudaDevice, out: &CudaSlice<f32>| {
        assert!(ops.download(out).unwrap().iter().all(|v| v.is_nan()), "a rejected op wrote its output");
    };

    is_invalid_argument(ops.rms_norm_into(&x, &w, &mut out, 3, 65, 1e-5), "`x` has 192 elements");
    is_invalid_argument(ops.rms_norm_into(&x, &w, &mut out, 0, 64, 1e-5), "rows is 0");
    is_invalid_argument(ops.rms_norm_into(&x, &w, &mut out, 3, 64, f32::NAN), "eps");
    is_invalid_argument(ops.rms_norm(&x, &w, 3, 64, -1.0), "eps");
    untouched(&ops, &out);

    // Ids at the vocabulary size, through both forms.
    let table = ops.upload(&rng.nonzero(4 * 64, 1.0)).unwrap();
    is_invalid_argument(ops.embedding_into(&table, 64, &[0, 4, 1], &mut out), "ids[1] = 4");
    is_invalid_argument(ops.embedding(&table, 64, &[u32::MAX]), "ids[0]");
    is_invalid_argument(ops.embedding(&table, 64, &[]), "ids.len() is 0");
    is_invalid_argument(ops.embedding(&table, 60, &[0]), "not a positive multiple");
    untouched(&ops, &out);

    // Positions at the table size; odd head_dim.
    let (cos, sin) = tables(64, 8);
    let (cd, sd) = (ops.upload(&cos).unwrap(), ops.upload(&sin).unwrap());
    let mut q = ops.upload(&vec![nan; 3 * 2 * 64]).unwrap();
    let mut k = ops.upload(&vec![nan; 3 * 64]).unwrap();
    let dims = RopeDims { n_q_heads: 2, n_k_heads: 1, head_dim: 64 };
    is_invalid_argument(ops.rope(&mut q, &mut k, &[0, 8, 1], &cd, &sd, dims), "positions[1] = 8");
    is_invalid_argument(ops.rope(&mut q, &mut k, &[0, 1], &cd, &sd, dims), "`q` has");
    is_invalid_argument(ops.rope(&mut q, &mut k, &[0, 1, 2], &cd, &sd, RopeDims { head_dim: 63, ..dims }), "odd");
    is_invalid_argument(ops.rope(&mut q, &mut k, &[0, 1, 2], &cd, &cd.slice(0..10), dims), "`sin`");
    untouched(&ops, &q);
    untouched(&ops, &k);

    let y = ops.upload(&rng.nonzero(3 * 64 + 1, 1.0)).unwrap();
    is_invalid_argument(ops.silu_mul_into(&x, &y, &mut out), "`up` has 193 elements");
    is_invalid_argument(ops.silu_mul(&x, &y), "`up`");
    is_invalid_argument(ops.add_assign(&mut out, &y), "`y` has 193 elements");
    untouched(&ops, &out);
    ops.synchronize().expect("no asynchronous error");
}

// ---------------------------------------------------------------------------------------------
// Validation, without a GPU.

#[test]
fn validate_rms_norm() {
    let p = validate::rms_norm(77 * 7, 7, 77 * 7, 77, 7, 1e-6).expect("valid");
    assert_eq!((p.rows, p.cols, p.eps), (77, 7, 1e-6));
    validate::rms_norm(4096, 4096, 4096, 1, 4096, 0.0).expect("eps 0 is allowed");
    is_invalid_argument(validate::rms_norm(0, 7, 0, 0, 7, 1e-6), "rows is 0");
    is_invalid_argument(validate::rms_norm(0, 0, 0, 3, 0, 1e-6), "cols is 0");
    is_invalid_argument(validate::rms_norm(20, 7, 21, 3, 7, 1e-6), "`x` has 20 elements");
    is_invalid_argument(validate::rms_norm(21, 6, 21, 3, 7, 1e-6), "`w` has 6 elements");
    is_invalid_argument(validate::rms_norm(21, 7, 22, 3, 7, 1e-6), "`out` has 22 elements");
    is_invalid_argument(validate::rms_norm(21, 7, 21, 3, 7, -1e-6), "eps");
    is_invalid_argument(validate::rms_norm(21, 7, 21, 3, 7, f32::INFINITY), "eps");
    is_invalid_argument(validate::rms_norm(21, 7, 21, 3, 7, f32::NAN), "eps");
    // Past the grid / int32 limits, and products that overflow.
    let big = i32::MAX as usize + 1;
    is_invalid_argument(validate::rms_norm(big, 1, big, big, 1, 1e-6), "rows = 2147483648");
    is_invalid_argument(validate::rms_norm(big, big, big, 1, big, 1e-6), "cols = 2147483648");
    let max = i32::MAX as usize;
    assert_eq!(validate::rms_norm(max, 1, max, max, 1, 0.0).expect("the largest grid").rows, i32::MAX);
}

#[test]
fn validate_rope() {
    let dims = RopeDims { n_q_heads: 32, n_k_heads: 8, head_dim: 128 };
    let pos = [0u32, 5, 4095];
    let (q, k, t) = (3 * 32 * 128, 3 * 8 * 128, 4096 * 64);
    let p = validate::rope(q, k, &pos, t, t, dims).expect("valid");
    assert_eq!((p.rows, p.n_q_heads, p.n_k_heads, p.head_dim, p.max_pos), (3, 32, 8, 128, 4096));
    is_invalid_argument(validate::rope(q, k, &[0, 5, 4096], t, t, dims), "positions[2] = 4096");
    is_invalid_argument(validate::rope(q, k, &[u32::MAX, 5, 1], t, t, dims), "positions[0]");
    is_invalid_argument(validate::rope(0, 0, &[], t, t, dims), "rows (positions.len()) is 0");
    is_invalid_argument(validate::rope(q, k, &pos, t, t, RopeDims { head_dim: 127, ..dims }), "odd");
    is_invalid_argument(validate::rope(q, k, &pos, t, t, RopeDims { head_dim: 0, ..dims }), "head_dim is 0");
    is_invalid_argument(validate::rope(q, k, &pos, t, t, RopeDims { n_q_heads: 0, ..dims }), "n_q_heads is 0");
    is_invalid_argument(validate::rope(q, k, &pos, t, t, RopeDims { n_k_heads: 0, ..dims }), "n_k_heads is 0");
    is_invalid_argument(validate::rope(q + 1, k, &pos, t, t, dims), "`q` has");
    is_invalid_argument(validate::rope(q, k - 1, &pos, t, t, dims), "`k` has");
    is_invalid_argument(validate::rope(q, k, &pos, t + 1, t + 1, dims), "not a positive multiple");
    is_invalid_argument(validate::rope(q, k, &pos, 0, 0, dims), "not a positive multiple");
    is_invalid_argument(validate::rope(q, k, &pos, t, t - 64, dims), "`sin` has");
    // A row of q and k together must fit int32 indexing.
    let huge = RopeDims { n_q_heads: 1 << 20, n_k_heads: 1 << 20, head_dim: 1024 };
    is_invalid_argument(validate::rope(0, 0, &[0], 512, 512, huge), "exceeds the kernel limit");
    // head_dim 2 is the smallest: tables of one column.
    let tiny = RopeDims { n_q_heads: 1, n_k_heads: 1, head_dim: 2 };
    assert_eq!(validate::rope(2, 2, &[6], 7, 7, tiny).expect("valid").max_pos, 7);
}

#[test]
fn validate_elementwise() {
    assert_eq!(validate::silu_mul(7, 7, 7).expect("valid").n, 7);
    assert_eq!(validate::add_assign(1, 1).expect("valid").n, 1);
    is_invalid_argument(validate::silu_mul(0, 0, 0), "`gate` is empty");
    is_invalid_argument(validate::silu_mul(8, 7, 8), "`up` has 7 elements");
    is_invalid_argument(validate::silu_mul(8, 8, 9), "`out` has 9 elements");
    is_invalid_argument(validate::add_assign(0, 0), "`x` is empty");
    is_invalid_argument(validate::add_assign(4, 5), "`y` has 5 elements");
}

#[test]
fn validate_embedding() {
    let ids = [0u32, 49, 7, 7];
    let p = validate::embedding(50 * 576, 576, &ids, 4 * 576).expect("valid");
    assert_eq!((p.n_ids, p.hidden, p.vocab), (4, 576, 50));
    is_invalid_argument(validate::embedding(50 * 576, 576, &[0, 50], 2 * 576), "ids[1] = 50");
    is_invalid_argument(validate::embedding(50 * 576, 576, &[u32::MAX], 576), "ids[0]");
    is_invalid_argument(validate::embedding(50 * 576, 576, &[], 0), "ids.len() is 0");
    is_invalid_argument(validate::embedding(50 * 576, 0, &ids, 0), "hidden is 0");
    is_invalid_argument(validate::embedding(50 * 576 + 1, 576, &ids, 4 * 576), "not a positive multiple");
    is_invalid_argument(validate::embedding(0, 576, &ids, 4 * 576), "not a positive multiple");
    is_invalid_argument(validate::embedding(50 * 576, 576, &ids, 3 * 576), "`out` has 1728 elements");
}

/// The skip reason is stated (this passes on a GPU machine as well: there it checks nothing
/// is unavailable).
#[test]
fn availability_is_reported_without_panicking() {
    match lorafleet::backend::cuda::check_available(0) {
        Ok(()) => assert!(lorafleet::backend::cuda::kernels_built()),
        Err(why) => assert!(!why.to_string().is_empty()),
    }
    // An ordinal no machine has is unavailable, never a panic.
    assert!(lorafleet::backend::cuda::check_available(1 << 20).is_err());
}
