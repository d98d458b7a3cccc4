//! Finite-difference checks of every backward op of the CPU backend (`backend::cpu::backward`,
//! `frozen`, NF4 and bf16) against its forward, on small random shapes. Each check builds a scalar
//! `L = Σ r ⊙ f(x)` with random `r` (so every output element matters, with a different weight),
//! takes the analytic gradient from the backward op (fed `dL/df = r`), and compares it with the
//! central difference `(L(x + h e_i) − L(x − h e_i)) / 2h` of the f32 forward, accumulated in
//! f64. Tolerance: relative L2 over the whole gradient < 5e-3 (f32 forward with h = 1e-2 gives
//! ~1e-4..1e-3 of truncation and rounding error; a wrong term gives O(1)).

use lorafleet::backend::cpu::{backward as bw, frozen, matmul, nf4, ops};
use lorafleet::quant::Nf4Tensor;

const H: f32 = 1e-2;
const TOL: f64 = 5e-3;

fn rand(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn weighted_sum(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `f` at `x`.
fn numeric_grad(x: &[f32], f: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + H;
            let up = f(&xp);
            xp[i] = x[i] - H;
            let down = f(&xp);
            xp[i] = x[i];
            (up - down) / (2.0 * H as f64)
        })
        .collect()
}

fn assert_close(what: &str, analytic: &[f32], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
    let err: f64 = analytic.iter().zip(numeric).map(|(&a, &n)| (a as f64 - n).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt();
    assert!(norm > 1e-6, "{what}: the numeric gradient is zero; the check would prove nothing");
    assert!(err / norm < TOL, "{what}: relative L2 error {} (|grad| {norm})", err / norm);
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let mut s = 1;
    for (rows, n) in [(3usize, 8usize), (2, 33)] {
        let x = rand(rows * n, &mut s);
        let w = rand(n, &mut s);
        let r = rand(rows * n, &mut s);
        let f = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            ops::rms_norm(x, &w, 1e-5, &mut y);
            weighted_sum(&y, &r)
        };
        // Accumulate onto a non-zero buffer to check the accumulate path too.
        let base = rand(rows * n, &mut s);
        let mut dx = base.clone();
        bw::rms_norm_backward(&x, &w, 1e-5, &r, &mut dx, true);
        let dx: Vec<f32> = dx.iter().zip(&base).map(|(a, b)| a - b).collect();
        assert_close("rms_norm", &dx, &numeric_grad(&x, f));
    }
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut s = 2;
    let (heads, d, max_pos) = (3usize, 8usize, 16usize);
    let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
    let (cos, sin) = ops::rope_tables(&inv, max_pos);
    let positions = [0u32, 5, 15, 3];
    let x = rand(positions.len() * heads * d, &mut s);
    let r = rand(x.len(), &mut s);
    let f = |x: &[f32]| {
        let mut y = x.to_vec();
        ops::rope_inplace(&mut y, &positions, heads, d, &cos, &sin);
        weighted_sum(&y, &r)
    };
    let mut dx = r.clone();
    bw::rope_backward_inplace(&mut dx, &positions, heads, d, &cos, &sin);
    assert_close("rope", &dx, &numeric_grad(&x, f));
}

#[test]
fn silu_mul_backward_matches_finite_differences() {
    let mut s = 3;
    let n = 40;
    let g: Vec<f32> = rand(n, &mut s).iter().map(|v| v * 4.0).collect();
    let u = rand(n, &mut s);
    let r = rand(n, &mut s);
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    bw::silu_mul_backward(&g, &u, &r, &mut dg, &mut du);
    let out = |g: &[f32], u: &[f32]| {
        let mut y = vec![0.0; n];
        ops::silu_mul(g, u, &mut y);
        weighted_sum(&y, &r)
    };
    assert_close("silu_mul dgate", &dg, &numeric_grad(&g, |g| out(g, &u)));
    assert_close("silu_mul dup", &du, &numeric_grad(&u, |u| out(&g, u)));
}

#[test]
fn causal_attention_backward_matches_finite_differences() {
    let mut s = 4;
    // Two packed sequences (attention must not cross them), grouped-query heads 4 over 2.
    let (heads, kv, d) = (4usize, 2usize, 8usize);
    let seqs = [bw::SeqSpan::new(0, 5), bw::SeqSpan::new(5, 3)];
    let t = 8;
    let q = rand(t * heads * d, &mut s);
    let k = rand(t * kv * d, &mut s);
    let v = rand(t * kv * d, &mut s);
    let r = rand(t * heads * d, &mut s);
    let f = |q: &[f32], k: &[f32], v: &[f32]| weighted_sum(&bw::causal_attention_forward(q, k, v, &seqs, heads, kv, d).0, &r);
    let (out, lse) = bw::causal_attention_forward(&q, &k, &v, &seqs, heads, kv, d);
    let (dq, dk, dv) = bw::causal_attention_backward(&q, &k, &v, &out, &lse, &r, &seqs, heads, kv, d);
    assert_close("attention dq", &dq, &numeric_grad(&q, |q| f(q, &k, &v)));
    assert_close("attention dk", &dk, &numeric_grad(&k, |k| f(&q, k, &v)));
    assert_close("attention dv", &dv, &numeric_grad(&v, |v| f(&q, &k, v)));
    // The first sequence's outputs do not depend on the second's keys: row 0 attends to itself only.
    for h in 0..heads {
        let (o, vv) = (&out[h * d..(h + 1) * d], &v[(h / 2) * d..(h / 2 + 1) * d]);
        for (a, b) in o.iter().zip(vv) {
            assert!((a - b).abs() < 1e-6, "row 0 must equal its own value row");
        }
    }
}

/// A shared context (a prompt prefix laid out once, `SeqSpan::with_context`): the backward
/// matches finite differences, and forward and gradients equal those of the same sequences with
/// the prefix repeated in each (the context rows' dk/dv = the sum of the copies').
#[test]
fn causal_attention_with_a_shared_context_equals_the_repeated_prefix() {
    let mut s = 14;
    let (heads, kv, d) = (4usize, 2usize, 8usize);
    let (c, l1, l2) = (3usize, 4usize, 2usize);
    // Shared layout: context rows 0..3, then sequence 1 (4 rows), sequence 2 (2 rows).
    let shared = [bw::SeqSpan::new(0, c), bw::SeqSpan::with_context(c, l1, 0, c), bw::SeqSpan::with_context(c + l1, l2, 0, c)];
    let t = c + l1 + l2;
    let q = rand(t * heads * d, &mut s);
    let k = rand(t * kv * d, &mut s);
    let v = rand(t * kv * d, &mut s);
    let r = rand(t * heads * d, &mut s);
    let f = |q: &[f32], k: &[f32], v: &[f32]| weighted_sum(&bw::causal_attention_forward(q, k, v, &shared, heads, kv, d).0, &r);
    let (out, lse) = bw::causal_attention_forward(&q, &k, &v, &shared, heads, kv, d);
    let (dq, dk, dv) = bw::causal_attention_backward(&q, &k, &v, &out, &lse, &r, &shared, heads, kv, d);
    assert_close("shared attention dq", &dq, &numeric_grad(&q, |q| f(q, &k, &v)));
    assert_close("shared attention dk", &dk, &numeric_grad(&k, |k| f(&q, k, &v)));
    assert_close("shared attention dv", &dv, &numeric_grad(&v, |v| f(&q, &k, v)));

    // The repeated layout: [ctx, seq 1] then [ctx, seq 2], each a sequence of its own. The
    // context rows' upstream gradient goes in the first copy (only one copy's output is counted).
    let rows_of = |x: &[f32], w: usize, rows: &[usize]| rows.iter().flat_map(|&i| x[i * w..(i + 1) * w].to_vec()).collect::<Vec<f32>>();
    let rows: Vec<usize> = (0..c).chain(c..c + l1).chain(0..c).chain(c + l1..t).collect();
    let (qw, kw) = (heads * d, kv * d);
    let (q2, k2, v2) = (rows_of(&q, qw, &rows), rows_of(&k, kw, &rows), rows_of(&v, kw, &rows));
    let mut r2 = rows_of(&r, qw, &rows);
    r2[(c + l1) * qw..(2 * c + l1) * qw].iter_mut().for_each(|x| *x = 0.0);
    let repeated = [bw::SeqSpan::new(0, c + l1), bw::SeqSpan::new(c + l1, c + l2)];
    let (out2, lse2) = bw::causal_attention_forward(&q2, &k2, &v2, &repeated, heads, kv, d);
    let (dq2, dk2, dv2) = bw::causal_attention_backward(&q2, &k2, &v2, &out2, &lse2, &r2, &repeated, heads, kv, d);
    let back = |x: &[f32], w: usize| -> Vec<f32> {
        // Sum the copies of each original row.
        let mut acc = vec![0.0f32; t * w];
        for (j, &i) in rows.iter().enumerate() {
            for (a, b) in acc[i * w..(i + 1) * w].iter_mut().zip(&x[j * w..(j + 1) * w]) {
                *a += b;
            }
        }
        acc
    };
    let close = |name: &str, a: &[f32], b: &[f32]| {
        let (num, den) = a.iter().zip(b).fold((0.0f64, 0.0f64), |(n, d), (&x, &y)| (n + ((x - y) as f64).powi(2), d + (y as f64).powi(2)));
        assert!(den > 0.0 && (num / den).sqrt() < 1e-5, "{name}: shared vs repeated rel L2 {}", (num / den).sqrt());
    };
    // Outputs: each original row once (the first copy of the context rows).
    let first: Vec<usize> = (0..c + l1).chain(2 * c + l1..2 * c + l1 + l2).collect();
    close("output", &out, &rows_of(&out2, qw, &first));
    // The second copy of the context has no upstream gradient, so its dq is 0 and the sums are dq.
    close("dq", &dq, &back(&dq2, qw));
    close("dk", &dk, &back(&dk2, kw));
    close("dv", &dv, &back(&dv2, kw));
}

#[test]
fn linear_input_gradient_dense_and_nf4_match_finite_differences() {
    let mut s = 5;
    let (t, n, k) = (3usize, 70usize, 64usize);
    let x = rand(t * k, &mut s);
    let w = rand(n * k, &mut s);
    let r = rand(t * n, &mut s);
    let mut dx = vec![0.0; t * k];
    bw::gemm(t, k, n, &r, false, &w, false, &mut dx, false, 1.0);
    let dense = |x: &[f32]| {
        let mut y = vec![0.0; t * n];
        matmul::linear(x, t, k, &w, n, &mut y);
        weighted_sum(&y, &r)
    };
    assert_close("linear dx (dense)", &dx, &numeric_grad(&x, dense));
    let q = Nf4Tensor::quantize(&w, &[n, k], true);
    let m = nf4::Nf4Matrix::new(&q).unwrap();
    let mut dx4 = vec![0.0; t * k];
    frozen::linear_backward_dx(&r, t, &m, &mut dx4, false);
    let quant = |x: &[f32]| {
        let mut y = vec![0.0; t * n];
        nf4::linear(x, t, &m, &mut y);
        weighted_sum(&y, &r)
    };
    assert_close("linear dx (nf4)", &dx4, &numeric_grad(&x, quant));
}

#[test]
fn lora_backward_matches_finite_differences() {
    let mut s = 6;
    let (t, d_in, d_out, rank, scale) = (5usize, 12usize, 10usize, 3usize, 2.0f32);
    let x = rand(t * d_in, &mut s);
    let a = rand(rank * d_in, &mut s);
    let b = rand(d_out * rank, &mut s);
    let r = rand(t * d_out, &mut s);
    let fwd = |x: &[f32], a: &[f32], b: &[f32]| {
        let mut xa = vec![0.0; t * rank];
        matmul::linear(x, t, d_in, a, rank, &mut xa);
        let mut y = vec![0.0; t * d_out];
        matmul::linear(&xa, t, rank, b, d_out, &mut y);
        weighted_sum(&y, &r) * scale as f64
    };
    let mut xa = vec![0.0; t * rank];
    matmul::linear(&x, t, d_in, &a, rank, &mut xa);
    let (mut da, mut db, mut dx) = (vec![0.0; a.len()], vec![0.0; b.len()], vec![0.0; x.len()]);
    bw::lora_backward(&x, &xa, &r, t, &a, &b, rank, scale, &mut da, &mut db, Some(&mut dx));
    assert_close("lora dA", &da, &numeric_grad(&a, |a| fwd(&x, a, &b)));
    assert_close("lora dB", &db, &numeric_grad(&b, |b| fwd(&x, &a, b)));
    assert_close("lora dX", &dx, &numeric_grad(&x, |x| fwd(x, &a, &b)));
}

/// The fused, vocabulary-chunked cross-entropy: its loss equals the plain full-logits
/// computation (f64), and its gradient matches finite differences, for chunk sizes that do and
/// do not divide the vocabulary (and one chunk larger than it).
#[test]
fn cross_entropy_lm_head_matches_full_logits_and_finite_differences() {
    let mut s = 7;
    let (n, hidden, vocab) = (4usize, 16usize, 50usize);
    let h: Vec<f32> = rand(n * hidden, &mut s).iter().map(|v| v * 3.0).collect();
    let w = rand(vocab * hidden, &mut s);
    let targets = [3u32, 49, 0, 17];
    let weights = [0.25f32, 0.5, 1.0, 0.125];
    let full = |h: &[f32]| -> f64 {
        (0..n)
            .map(|r| {
                let logits: Vec<f64> = (0..vocab).map(|v| (0..hidden).map(|i| h[r * hidden + i] as f64 * w[v * hidden + i] as f64).sum()).collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
                weights[r] as f64 * (lse - logits[targets[r] as usize])
            })
            .sum()
    };
    let want = full(&h);
    for chunk in [7usize, 10, 50, 64] {
        let (loss, dh) = bw::cross_entropy_lm_head(&h, &w, hidden, &targets, &weights, chunk);
        assert!((loss - want).abs() < 1e-5 * want.abs(), "chunk {chunk}: loss {loss} vs {want}");
        assert_close(
            &format!("cross-entropy dh (chunk {chunk})"),
            &dh,
            &numeric_grad(&h, |h| bw::cross_entropy_lm_head(h, &w, hidden, &targets, &weights, chunk).0),
        );
    }
}
