//! torch's CPU float32 sum of a contiguous 1-D tensor, reproduced to the bit, because
//! bitsandbytes' double quantization subtracts `absmax.mean()` (= that sum / n in f32) before
//! quantizing, and an offset one ulp away moves values across the 8-bit code's bins.
//!
//! The algorithm (aten/src/ATen/native/cpu/SumKernel.cpp, `vectorized_inner_sum`): the input is
//! read as `n / 8` vectors of 8 lanes (`Vectorized<float>`; checked against torch 2.15 on an
//! AVX-512 machine, where the float sum still uses 8 lanes); those vectors are summed by
//! `row_sum` as rows of 4 vectors with a 4-level cascade (`multi_row_sum`: level 0 adds
//! `2^level_power` rows, then carries into level 1, and so on), the leftover vectors go into
//! the first partial, the 4 partials are added in order; finally the scalar tail
//! (`n % 8` elements) is summed first and the 8 lanes are added to it one by one.

/// Lanes of torch's `Vectorized<float>` on the sum path.
const LANES: usize = 8;
/// `row_sum`'s instruction-level parallelism (vectors per row).
const ILP: usize = 4;
/// Levels of `multi_row_sum`'s cascade.
const LEVELS: usize = 4;

type Vec8 = [f32; LANES];

fn add(a: &mut Vec8, b: &Vec8) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// c10's `CeilLog2`: 1 for x <= 2, else ceil(log2(x)).
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// `multi_row_sum` over `rows` rows of ILP vectors each: `vecs[row * ILP + k]`.
fn multi_row_sum(vecs: &[Vec8], rows: usize) -> [Vec8; ILP] {
    let level_power = 4.max(ceil_log2(rows) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; LANES]; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= rows {
        for _ in 0..level_step {
            for k in 0..ILP {
                add(&mut acc[0][k], &vecs[i * ILP + k]);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], &lower);
                acc[j - 1][k] = [0.0; LANES];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < rows {
        for k in 0..ILP {
            add(&mut acc[0][k], &vecs[i * ILP + k]);
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            let upper = acc[j][k];
            add(&mut acc[0][k], &upper);
        }
    }
    acc[0]
}

/// `torch.sum` of a contiguous float32 tensor on the CPU (single-threaded: torch splits a
/// reduction across threads only past 32768 elements; bitsandbytes' absmax vectors of up to
/// 16384 blocks stay below that for a 1M-weight matrix, and larger ones are checked only to 1e-6).
pub fn torch_sum_f32(x: &[f32]) -> f32 {
    let vecs: Vec<Vec8> = x.chunks_exact(LANES).map(|c| std::array::from_fn(|i| c[i])).collect();
    let rows = vecs.len() / ILP;
    let mut partials = if rows > 0 { multi_row_sum(&vecs, rows) } else { [[0f32; LANES]; ILP] };
    for v in &vecs[rows * ILP..] {
        add(&mut partials[0], v);
    }
    for k in 1..ILP {
        let p = partials[k];
        add(&mut partials[0], &p);
    }
    let mut total = 0f32;
    for &t in &x[vecs.len() * LANES..] {
        total += t;
    }
    for &lane in &partials[0] {
        total += lane;
    }
    total
}

/// `torch.mean` of a contiguous float32 tensor on the CPU: the sum above divided by n in f32.
pub fn torch_mean_f32(x: &[f32]) -> f32 {
    torch_sum_f32(x) / x.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_summed_before_the_lanes() {
        assert_eq!(torch_sum_f32(&[]), 0.0);
        assert_eq!(torch_sum_f32(&[1.0, 2.0, 3.0]), 6.0);
        // Lanes [1e8, 0 x 7], tail [4, 4]: torch adds 4 + 4 first, then 1e8 (exact: 100000008);
        // a left-to-right sum loses each 4 against 1e8's spacing of 8 and gives 1e8.
        assert_eq!(torch_sum_f32(&[1e8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 4.0]), 100000008.0);
    }

    #[test]
    fn matches_torch_on_a_long_vector() {
        // torch.tensor([((i * 7919) % 1000) * 1e-4 + 0.01 for i in range(5184)]).sum() with
        // torch 2.15 on the CPU: 0x439b5bf4 (310.71838), while the correctly rounded sum is
        // 310.71841: the cascade's order matters at this length.
        let x: Vec<f32> = (0..5184).map(|i| (((i * 7919) % 1000) as f64 * 1e-4 + 0.01) as f32).collect();
        assert_eq!(torch_sum_f32(&x).to_bits(), 0x439b5bf4);
        assert_eq!(torch_mean_f32(&x), f32::from_bits(0x439b5bf4) / 5184.0);
    }
}
