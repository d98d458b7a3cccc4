//! Products with a frozen weight stored compactly (NF4, bf16) and decoded to f32 a tile of rows at
//! a time, never whole: the forward `out [t, n] = x [t, k] · Wᵀ` and the backward's input gradient
//! `dx [t, k] (+)= dy [t, n] · W`, for `W [n, k]`. Each rayon task decodes `TILE_ROWS` rows
//! (`64 × k` f32: 147 KB at k = 576, 1 MB at k = 4096, within L2) into its own buffer and hands
//! them to the dense kernels (`matmul::linear`, `backward::gemm`). What a format must provide is
//! `DecodeRows`; everything else is shared, so a new storage format is one `decode_rows`.

use rayon::prelude::*;

use super::backward::gemm;
use super::matmul;

/// Weight rows decoded at a time.
pub const TILE_ROWS: usize = 64;

/// A row-major `[rows, cols]` weight that can write any run of whole rows as f32.
pub trait DecodeRows: Sync {
    /// Output features.
    fn rows(&self) -> usize;
    /// Input features.
    fn cols(&self) -> usize;
    /// Rows `r0 .. r0 + out.len() / cols` into `out` (row-major f32).
    fn decode_rows(&self, r0: usize, out: &mut [f32]);
}

/// From this many activation rows on (prefill), `linear_tiled` decodes panels of up to
/// `PANEL_BYTES` of W (the whole matrix for SmolLM2's shapes) with all threads and multiplies each
/// panel with one GEMM over all rows: the GEMM packs `x` once per panel, not once per 64-row tile
/// (a 512-token prompt repacked its 1.2 MB of activations 9-24 times per projection).
const PANEL_MIN_ROWS: usize = 32;
/// Decoded f32 bytes per panel.
const PANEL_BYTES: usize = 8 << 20;

thread_local! {
    /// The decoded panel, reused by every call on this thread (a forward pass runs its ops on one
    /// thread), so it is neither allocated nor cleared per call.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out [t, n] = x [t, k] · Wᵀ`, any shape and row count.
pub fn linear_tiled<W: DecodeRows + ?Sized>(x: &[f32], t: usize, w: &W, out: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), t * k, "x is not [t, k]");
    assert_eq!(out.len(), t * n, "out is not [t, n]");
    if t == 0 || n == 0 {
        return;
    }
    if t >= PANEL_MIN_ROWS && k > 0 {
        return PANEL.with_borrow_mut(|panel| linear_panels(x, t, w, out, panel));
    }
    // Each task: decode its tile, multiply into a task-local [t, rows] result; then scatter
    // (out is [t, n], so a tile's columns are strided).
    let tiles: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(TILE_ROWS))
        .into_par_iter()
        .map_init(Vec::new, |buf: &mut Vec<f32>, ti| {
            let r0 = ti * TILE_ROWS;
            let rows = TILE_ROWS.min(n - r0);
            buf.resize(rows * k, 0.0);
            w.decode_rows(r0, buf);
            let mut part = vec![0.0; t * rows];
            matmul::linear(x, t, k, buf, rows, &mut part);
            (r0, part)
        })
        .collect();
    for (r0, part) in tiles {
        let rows = part.len() / t;
        for ti in 0..t {
            out[ti * n + r0..ti * n + r0 + rows].copy_from_slice(&part[ti * rows..(ti + 1) * rows]);
        }
    }
}

/// The prefill path of [`linear_tiled`]: W decoded a panel of rows at a time into `panel`, each
/// panel multiplied into its block of columns of `out` by one GEMM.
fn linear_panels<W: DecodeRows + ?Sized>(x: &[f32], t: usize, w: &W, out: &mut [f32], panel: &mut Vec<f32>) {
    let (n, k) = (w.rows(), w.cols());
    let panel_rows = (PANEL_BYTES / (4 * k)).max(TILE_ROWS).min(n);
    if panel.len() < panel_rows * k {
        panel.resize(panel_rows * k, 0.0);
    }
    for r0 in (0..n).step_by(panel_rows) {
        let rows = panel_rows.min(n - r0);
        let p = &mut panel[..rows * k];
        p.par_chunks_mut(TILE_ROWS * k).enumerate().for_each(|(i, c)| w.decode_rows(r0 + i * TILE_ROWS, c));
        // SAFETY: out is [t, n] (checked by the caller), a unique borrow; from column r0 its t
        // rows of `rows` <= n - r0 values, n apart, end at (t - 1) n + r0 + rows <= t n. x is
        // [t, k], p is [rows, k]; neither overlaps out.
        unsafe { matmul::gemm_f32_raw(out.as_mut_ptr().add(r0), n, x, t, k, p, rows) };
    }
}

/// `dx [t, k] = (dx if accumulate) + dy [t, n] · W`: the input gradient through the frozen weight.
/// Each task walks a contiguous range of tiles and adds `dy[:, tile] · W_tile` into a task-local
/// `[t, k]` partial sum; the partials are summed at the end (`tasks × t × k` floats of scratch).
pub fn linear_backward_dx<W: DecodeRows + ?Sized>(dy: &[f32], t: usize, w: &W, dx: &mut [f32], accumulate: bool) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(dy.len(), t * n, "dy is not [t, n]");
    assert_eq!(dx.len(), t * k, "dx is not [t, k]");
    if !accumulate {
        dx.fill(0.0);
    }
    if t == 0 || n == 0 || k == 0 {
        return;
    }
    let n_tiles = n.div_ceil(TILE_ROWS);
    // Contiguous tile ranges, one per thread (a few more for balance, bounded so the partial
    // sums stay small).
    let tasks = (rayon::current_num_threads() * 2).clamp(1, n_tiles);
    let per_task = n_tiles.div_ceil(tasks);
    let partials: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .filter_map(|task| {
            let (first, last) = (task * per_task, ((task + 1) * per_task).min(n_tiles));
            if first >= last {
                return None;
            }
            let mut acc = vec![0.0f32; t * k];
            let mut tile = Vec::new();
            let mut dy_cols = Vec::new();
            for ti in first..last {
                let r0 = ti * TILE_ROWS;
                let rows = TILE_ROWS.min(n - r0);
                tile.resize(rows * k, 0.0);
                w.decode_rows(r0, &mut tile);
                // dy[:, r0..r0 + rows] as a contiguous [t, rows] block.
                dy_cols.clear();
                for r in 0..t {
                    dy_cols.extend_from_slice(&dy[r * n + r0..r * n + r0 + rows]);
                }
                gemm(t, k, rows, &dy_cols, false, &tile, false, &mut acc, true, 1.0);
            }
            Some(acc)
        })
        .collect();
    for p in partials {
        for (d, v) in dx.iter_mut().zip(&p) {
            *d += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::bf16::Bf16Matrix;
    use crate::backend::cpu::nf4::Nf4Matrix;
    use crate::quant::Nf4Tensor;
    use crate::rng::SplitMix64;

    /// Both products against f64 sums over the fully decoded matrix, for each format, on odd
    /// shapes (NF4 blocks straddling rows, n not a multiple of the tile, t = 1).
    fn check(w: &dyn DecodeRows, t: usize, rng: &mut SplitMix64, what: &str) {
        let (n, k) = (w.rows(), w.cols());
        let mut dense = vec![0.0f32; n * k];
        w.decode_rows(0, &mut dense);
        let x = rng.nonzero(t * k, 1.0);
        let mut y = vec![0.0f32; t * n];
        linear_tiled(&x, t, w, &mut y);
        for r in 0..t {
            for j in 0..n {
                let want: f64 = (0..k).map(|c| x[r * k + c] as f64 * dense[j * k + c] as f64).sum();
                // f32 rounding grows with the sum of |terms|, not with the (cancelled) result.
                let mag: f64 = (0..k).map(|c| (x[r * k + c] as f64 * dense[j * k + c] as f64).abs()).sum();
                let g = y[r * n + j] as f64;
                assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()) + 1e-6 * mag, "{what} forward [{t}, {n}, {k}] ({r}, {j}): {g} vs {want}");
            }
        }
        let dy = rng.nonzero(t * n, 1.0);
        let base = rng.nonzero(t * k, 1.0);
        let mut got = base.clone();
        linear_backward_dx(&dy, t, w, &mut got, true);
        for r in 0..t {
            for c in 0..k {
                let want: f64 = base[r * k + c] as f64 + (0..n).map(|j| dy[r * n + j] as f64 * dense[j * k + c] as f64).sum::<f64>();
                let mag: f64 = (0..n).map(|j| (dy[r * n + j] as f64 * dense[j * k + c] as f64).abs()).sum();
                let g = got[r * k + c] as f64;
                assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()) + 1e-6 * mag, "{what} dx [{t}, {n}, {k}] ({r}, {c}): {g} vs {want}");
            }
        }
    }

    #[test]
    fn tiled_products_match_the_decoded_matrix() {
        let mut rng = SplitMix64::new(404);
        // t >= PANEL_MIN_ROWS takes the panel path; (40, 3000, 1000) spans several panels.
        for (t, n, k) in [(1usize, 77usize, 100usize), (3, 130, 96), (9, 200, 64), (5, 65, 33), (33, 70, 64), (40, 3000, 1000)] {
            let data = rng.nonzero(n * k, 0.5);
            let nf4 = Nf4Matrix::new(&Nf4Tensor::quantize(&data, &[n, k], true)).unwrap();
            check(&nf4, t, &mut rng, "nf4");
            let bf16 = Bf16Matrix::from_f32(&data, n, k).unwrap();
            check(&bf16, t, &mut rng, "bf16");
        }
    }
}
