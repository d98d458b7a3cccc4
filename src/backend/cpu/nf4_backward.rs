//! The transposed product through a frozen NF4 weight, for the backward pass:
//! `dx [t, k] (+)= dy [t, n] · W [n, k]` with `W` stored as bitsandbytes NF4 (`nf4::Nf4Matrix`).
//! As in the forward (`nf4::linear`), the matrix is never dequantized whole: each rayon task
//! walks a contiguous range of `TILE_ROWS`-row tiles of W, dequantizes one tile at a time into
//! its own buffer and adds `dy[:, tile] · W_tile` into a task-local `[t, k]` partial sum; the
//! partials are summed at the end (one per task, so `tasks × t × k` floats of scratch).

use rayon::prelude::*;

use super::backward::gemm;
use super::nf4::Nf4Matrix;

/// Weight rows dequantized at a time (64 × 576 f32 = 147 KB: fits L2).
const TILE_ROWS: usize = 64;

/// `dx [t, w.cols] = (dx if accumulate) + dy [t, w.rows] · W`.
pub fn linear_backward_dx(dy: &[f32], t: usize, w: &Nf4Matrix, dx: &mut [f32], accumulate: bool) {
    let (n, k) = (w.rows, w.cols);
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
                w.dequantize_rows(r0, &mut tile);
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
    use crate::quant::Nf4Tensor;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_the_product_with_the_dequantized_matrix() {
        // Odd shapes: blocks straddling rows, n not a multiple of the tile, t = 1.
        for (t, n, k) in [(1usize, 77usize, 100usize), (3, 130, 96), (9, 200, 64), (5, 65, 33)] {
            let wt = Nf4Tensor::quantize(&rand_vec(n * k, 1), &[n, k], true);
            let m = Nf4Matrix::new(&wt).unwrap();
            let dense = wt.dequantize();
            let dy = rand_vec(t * n, 2);
            let base = rand_vec(t * k, 3);
            let mut got = base.clone();
            linear_backward_dx(&dy, t, &m, &mut got, true);
            for r in 0..t {
                for c in 0..k {
                    let want: f64 = base[r * k + c] as f64 + (0..n).map(|j| dy[r * n + j] as f64 * dense[j * k + c] as f64).sum::<f64>();
                    let g = got[r * k + c] as f64;
                    assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "[{t}, {n}, {k}] ({r}, {c}): {g} vs {want}");
                }
            }
        }
    }
}
