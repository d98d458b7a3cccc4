//! CPU matmul against an NF4 weight, `out [t, n] = x [t, k] · Wᵀ` with `W [n, k]` stored as
//! bitsandbytes NF4 (flat blocks of `blocksize` elements, row-major). The whole dequantized
//! matrix is never materialised: each rayon task dequantizes a tile of `frozen::TILE_ROWS` weight rows
//! (`TILE_ROWS × k` f32, 147 KB for k = 576) into its own buffer and multiplies it with the dense
//! kernel. Decode (≤ 4 rows, the usual layouts) takes the fused kernel in `gemv`, which dots the
//! packed nibbles through the 16-level table without dequantizing even a tile.

pub mod gemv;

use super::frozen;
use super::isa;
use super::simd::{dispatch, Simd};
use crate::quant::Nf4Tensor;

/// An NF4 matrix prepared for the CPU: double-quantized absmax resolved to f32 once at upload
/// (`numel / blocksize` floats, 1/16 of the packed size at block 64).
#[derive(Debug, Clone)]
pub struct Nf4Matrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Elements per absmax scale.
    pub blocksize: usize,
    /// `ceil(rows * cols / 2)` bytes, element `2i` in the high nibble of byte `i`.
    pub packed: Vec<u8>,
    /// One scale per block.
    pub absmax: Vec<f32>,
    /// The 16 NF4 levels.
    pub code: [f32; 16],
}

impl Nf4Matrix {
    /// A 2-D NF4 tensor, checked for consistent lengths.
    pub fn new(t: &Nf4Tensor) -> Result<Self, String> {
        let [rows, cols] = t.shape[..] else {
            return Err(format!("NF4 weight has shape {:?}, expected 2-D", t.shape));
        };
        t.validate()?;
        Ok(Nf4Matrix { rows, cols, blocksize: t.blocksize, packed: t.packed.clone(), absmax: t.block_absmax(), code: t.code })
    }

    /// Dequantizes rows `r0..r0 + out.len() / cols` into `out` (row-major).
    pub fn dequantize_rows(&self, r0: usize, out: &mut [f32]) {
        self.dequantize_rows_at(Some(isa::current()), r0, out)
    }

    /// [`Nf4Matrix::dequantize_rows`] with the vector path at `level`, or (None) the scalar
    /// loops only (the tests hold every level to them, bit for bit).
    pub fn dequantize_rows_at(&self, level: Option<isa::Level>, r0: usize, out: &mut [f32]) {
        let start = r0 * self.cols;
        debug_assert!(start + out.len() <= self.rows * self.cols);
        let bs = self.blocksize;
        if let (Some(level), true) = (level, bs.is_multiple_of(32) && start.is_multiple_of(bs) && out.len().is_multiple_of(bs)) {
            // Whole blocks of whole 16-byte groups (bitsandbytes' 64): vectors of levels, their
            // high and low nibbles interleaved back into element order, at the process's level.
            let (b0, blocks) = (start / bs, out.len() / bs);
            let bytes = &self.packed[start / 2..(start + out.len()) / 2];
            return dispatch!(level, s => dequantize_blocks(s, bytes, &self.absmax[b0..b0 + blocks], &self.code, bs, out));
        }
        if bs.is_multiple_of(2) && start.is_multiple_of(bs) && out.len().is_multiple_of(bs) {
            // Whole blocks (rows a multiple of the block): one scale and a byte slice per block,
            // no per-element index arithmetic.
            let b0 = start / bs;
            let bytes = &self.packed[start / 2..(start + out.len()) / 2];
            for ((chunk, src), &s) in out.chunks_exact_mut(bs).zip(bytes.chunks_exact(bs / 2)).zip(&self.absmax[b0..]) {
                let lut: [f32; 16] = std::array::from_fn(|i| self.code[i] * s);
                for (pair, &b) in chunk.chunks_exact_mut(2).zip(src) {
                    pair[0] = lut[(b >> 4) as usize];
                    pair[1] = lut[(b & 0xf) as usize];
                }
            }
        } else if start.is_multiple_of(2) && out.len().is_multiple_of(2) && bs.is_multiple_of(2) {
            // Whole bytes, and a byte never straddles two blocks (even block size).
            for (j, pair) in out.chunks_exact_mut(2).enumerate() {
                let e = start + 2 * j;
                let b = self.packed[e / 2];
                let s = self.absmax[e / bs];
                pair[0] = self.code[(b >> 4) as usize] * s;
                pair[1] = self.code[(b & 0xf) as usize] * s;
            }
        } else {
            for (j, o) in out.iter_mut().enumerate() {
                let e = start + j;
                let b = self.packed[e / 2];
                let q = if e & 1 == 0 { b >> 4 } else { b & 0xf };
                *o = self.code[q as usize] * self.absmax[e / bs];
            }
        }
    }

    /// The whole matrix as f32 (tests and tools; the forward pass never calls it).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.dequantize_rows(0, &mut out);
        out
    }
}

/// Whole blocks: `bytes` `[blocks * bs / 2]`, `absmax` `[blocks]`, `out` `[blocks * bs]`, with
/// `bs % 32 == 0` (so each block is whole vectors of bytes at every level: 16 or 8 lanes).
#[inline(always)]
fn dequantize_blocks<S: Simd>(s: S, bytes: &[u8], absmax: &[f32], code: &[f32; 16], bs: usize, out: &mut [f32]) {
    let l = S::LANES;
    assert!(bs.is_multiple_of(2 * l) && bytes.len() * 2 == out.len() && out.len() == absmax.len() * bs, "dequantize_blocks: shapes");
    let lut = s.lut16(code);
    let (pb, po) = (bytes.as_ptr(), out.as_mut_ptr());
    for (b, &scale) in absmax.iter().enumerate() {
        let sc = s.splat(scale);
        for g in (0..bs / 2).step_by(l) {
            let byte = b * bs / 2 + g;
            // SAFETY: byte + l <= bytes.len() and 2 byte + 2 l <= out.len() (asserted shapes:
            // g + l <= bs / 2 within block b).
            unsafe {
                let (hi, lo) = s.nf4_levels(lut, pb.add(byte));
                let (first, second) = s.interleave(hi, lo);
                s.store(po.add(2 * byte), s.mul(first, sc));
                s.store(po.add(2 * byte + l), s.mul(second, sc));
            }
        }
    }
}

/// `out [t, w.rows] = x [t, w.cols] · wᵀ`.
pub fn linear(x: &[f32], t: usize, w: &Nf4Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), t * k, "x is not [t, k]");
    assert_eq!(out.len(), t * n, "out is not [t, n]");
    if t == 0 || n == 0 {
        return;
    }
    if t <= gemv::MAX_ROWS && gemv::supports(w) {
        // Decode: the fused kernel reads each packed byte once and never writes a weight.
        return gemv::linear(x, t, w, out);
    }
    // A batched decode step (up to 16 rows): the fused kernel on 4 rows at a time, W decoded in
    // registers once per 4 rows, beats decoding 64-row tiles for the dense kernel (criterion
    // linear_1536x576_t8: ~210 vs 300 µs). x's and out's rows are contiguous, so a chunk of rows
    // is a slice of each.
    if t <= super::matmul::GEMV_MAX_ROWS && k > 0 && gemv::supports(w) {
        for (xc, oc) in x.chunks(gemv::MAX_ROWS * k).zip(out.chunks_mut(gemv::MAX_ROWS * n)) {
            gemv::linear(xc, xc.len() / k, w, oc);
        }
        return;
    }
    linear_tiled(x, t, w, out)
}

/// The generic path, any shape and row count: dequantize `TILE_ROWS` weight rows per task and
/// multiply them with the dense kernel (`linear` uses it above 4 rows or for layouts the fused
/// kernel does not take; public for benchmarks and as a reference).
pub fn linear_tiled(x: &[f32], t: usize, w: &Nf4Matrix, out: &mut [f32]) {
    frozen::linear_tiled(x, t, w, out)
}

impl frozen::DecodeRows for Nf4Matrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn decode_rows(&self, r0: usize, out: &mut [f32]) {
        self.dequantize_rows(r0, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::matmul;

    /// Test values in ±[0.025, 0.5), never zero (the crate's one generator).
    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::SplitMix64::new(seed).nonzero(n, 0.5)
    }

    #[test]
    fn vector_dequantization_equals_the_scalar_loops_at_every_level() {
        for (n, k, bs) in [(3usize, 64usize, 64usize), (5, 128, 32), (2, 576, 64), (4, 96, 32)] {
            // Any bytes and scales: the layout, not the quantizer, is under test.
            let packed: Vec<u8> = (0..n * k / 2).map(|i| (i * 151 + 7) as u8).collect();
            let absmax: Vec<f32> = rand_vec(n * k / bs, 9).iter().map(|x| x + 1.0).collect();
            let code: [f32; 16] = std::array::from_fn(|i| i as f32 / 7.5 - 1.0);
            let m = Nf4Matrix { rows: n, cols: k, blocksize: bs, packed, absmax, code };
            let mut want = vec![f32::NAN; n * k];
            m.dequantize_rows_at(None, 0, &mut want);
            for level in isa::available() {
                for r0 in 0..n {
                    let mut got = vec![f32::NAN; (n - r0) * k];
                    m.dequantize_rows_at(Some(level), r0, &mut got);
                    assert_eq!(got, want[r0 * k..], "{} [{n}, {k}] block {bs} from row {r0}", level.isa());
                }
            }
        }
    }

    #[test]
    fn matches_dense_matmul_of_the_dequantized_matrix() {
        // Odd shapes: k not a multiple of the block (blocks straddle rows), n not of the tile.
        for (t, n, k, double) in
            [(1, 77, 100, false), (3, 130, 96, true), (9, 200, 64, true), (5, 65, 33, false), (2, 70, 128, true), (16, 64, 128, true), (17, 40, 64, false)]
        {
            let w = Nf4Tensor::quantize(&rand_vec(n * k, 1), &[n, k], double);
            let m = Nf4Matrix::new(&w).unwrap();
            let dense = w.dequantize();
            assert_eq!(m.dequantize(), dense);
            let x = rand_vec(t * k, 2);
            let mut got = vec![0.0; t * n];
            linear(&x, t, &m, &mut got);
            let mut want = vec![0.0; t * n];
            matmul::linear(&x, t, k, &dense, n, &mut want);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "[{t}, {n}, {k}]: {g} vs {w}");
            }
        }
    }
}
