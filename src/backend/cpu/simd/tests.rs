//! Every operation of every level the CPU has, against its scalar definition.

use super::*;
use crate::rng::SplitMix64;

/// `f(level)` for every level this CPU supports, with the level's name for messages.
fn each_level(mut f: impl FnMut(Level, &str)) {
    for level in isa::available() {
        f(level, level.isa().name());
    }
}

/// The lanes of `v`, through `store`.
fn lanes<S: Simd>(s: S, v: S::F) -> Vec<f32> {
    let mut out = vec![0f32; S::LANES];
    // SAFETY: out holds LANES floats.
    unsafe { s.store(out.as_mut_ptr(), v) };
    out
}

/// A vector from the first `S::LANES` values of `x`.
fn vector<S: Simd>(s: S, x: &[f32]) -> S::F {
    assert!(x.len() >= S::LANES);
    // SAFETY: x holds at least LANES floats.
    unsafe { s.load(x.as_ptr()) }
}

#[test]
fn exp_is_within_two_ulp_of_expf_at_every_level() {
    let mut xs: Vec<f32> = (-2000..=1770).map(|i| i as f32 * 0.05).collect();
    xs.extend([-0.0, -1e-7, 1e-7, -87.0, -88.5, -103.0, -150.0, 88.7, 88.8, 200.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN]);
    each_level(|level, name| {
        let got: Vec<f32> = dispatch!(level, s => {
            let mut got = Vec::new();
            for chunk in xs.chunks(S_LANES_MAX) {
                let mut padded = chunk.to_vec();
                padded.resize(S_LANES_MAX, 0.0);
                for part in padded.chunks(lanes_of(s)) {
                    got.extend(lanes(s, exp(s, vector(s, part))));
                }
            }
            got
        });
        for (&x, &g) in xs.iter().zip(&got) {
            let want = x.exp();
            if x.is_nan() {
                assert!(g.is_nan(), "{name}: exp(NaN) = {g}");
            } else if want.is_infinite() {
                assert_eq!(g, want, "{name}: exp({x})");
            } else if want < 1e-37 {
                assert!((0.0..1e-37).contains(&g), "{name}: exp({x}) = {g}, want {want}");
            } else {
                assert!((g - want).abs() <= 2.0 * f32::EPSILON * want, "{name}: exp({x}) = {g}, want {want}");
            }
        }
    });
}

/// The widest level's lanes: test inputs are padded to a multiple of it.
const S_LANES_MAX: usize = 16;

fn lanes_of<S: Simd>(_: S) -> usize {
    S::LANES
}

#[test]
fn silu_mul_matches_the_scalar_loop_at_every_level() {
    let mut rng = SplitMix64::new(31);
    for n in [0usize, 1, 7, 8, 15, 16, 17, 1536, 1000] {
        // Gates over [-40, 40]: both tails of the sigmoid.
        let g = rng.nonzero(n, 40.0);
        let u = rng.nonzero(n, 2.0);
        let mut want = vec![f32::NAN; n];
        silu_mul_scalar(&g, &u, &mut want);
        each_level(|level, name| {
            let mut got = vec![f32::NAN; n + 1];
            silu_mul_at(level, &g, &u, &mut got[..n]);
            assert!(got[n].is_nan(), "{name}: wrote past the end");
            for i in 0..n {
                assert!(
                    (got[i] - want[i]).abs() <= 4.0 * f32::EPSILON * want[i].abs() + 1e-30,
                    "{name} n {n} [{i}] silu({})*{}: {} vs {}",
                    g[i],
                    u[i],
                    got[i],
                    want[i]
                );
            }
        });
    }
}

#[test]
fn reductions_partial_loads_and_widening_match_their_definitions() {
    let mut rng = SplitMix64::new(5);
    let vals = rng.nonzero(256, 1.0);
    let bf16: Vec<u16> = vals.iter().map(|&x| crate::backend::numeric::f32_to_bf16(x)).collect();
    let codes: Vec<i8> = (0..64).map(|i| (i * 37 % 255) as i8).collect();
    let bytes: Vec<u8> = (0..64).map(|i| (i * 73 + 11) as u8).collect();
    let code: [f32; 16] = std::array::from_fn(|i| rng.nonzero(1, 1.0)[0] + i as f32);
    each_level(|level, name| {
        dispatch!(level, s => {
            let l = lanes_of(s);
            // reduce_lanes: lane j = sum of vector j; sum and max_lane of one vector.
            let a: Vec<_> = (0..l).map(|j| vector(s, &vals[l * j..])).collect();
            let got = lanes(s, s.reduce_lanes(&a));
            for j in 0..l {
                let want: f32 = vals[l * j..l * (j + 1)].iter().sum();
                assert!((got[j] - want).abs() <= 1e-5, "{name} reduce_lanes lane {j}: {} vs {want}", got[j]);
                assert!((s.sum(a[j]) - want).abs() <= 1e-5, "{name} sum {j}");
                let max = vals[l * j..l * (j + 1)].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(s.max_lane(a[j]), max, "{name} max_lane {j}");
            }
            // Partial loads leave zeros, partial stores touch only their lanes.
            for len in 0..l {
                let v = lanes(s, unsafe { s.load_first(vals.as_ptr(), len) });
                assert_eq!(&v[..len], &vals[..len], "{name} load_first {len}");
                assert!(v[len..].iter().all(|&x| x == 0.0), "{name} load_first {len}: {v:?}");
                let mut out = vec![f32::NAN; l];
                // SAFETY: out holds l >= len floats.
                unsafe { s.store_first(out.as_mut_ptr(), vector(s, &vals), len) };
                assert_eq!(&out[..len], &vals[..len]);
                assert!(out[len..].iter().all(|x| x.is_nan()), "{name} store_first {len}");
            }
            // bf16 and i8 widening, NF4 levels.
            // SAFETY: each source holds at least l values from offset 3.
            let (b, q, (hi, lo)) = unsafe { (s.load_bf16(bf16.as_ptr().add(3)), s.load_i8(codes.as_ptr().add(3)), s.nf4_levels(s.lut16(&code), bytes.as_ptr().add(3))) };
            let (b, q, hi, lo) = (lanes(s, b), lanes(s, q), lanes(s, hi), lanes(s, lo));
            for i in 0..l {
                assert_eq!(b[i], crate::backend::numeric::bf16_to_f32(bf16[3 + i]), "{name} bf16 {i}");
                assert_eq!(q[i], codes[3 + i] as f32, "{name} i8 {i}");
                assert_eq!(hi[i], code[(bytes[3 + i] >> 4) as usize], "{name} nf4 hi {i}");
                assert_eq!(lo[i], code[(bytes[3 + i] & 15) as usize], "{name} nf4 lo {i}");
            }
            // interleave: [a0, b0, a1, b1, ...].
            let (i0, i1) = s.interleave(vector(s, &vals), vector(s, &vals[100..]));
            let zipped: Vec<f32> = lanes(s, i0).into_iter().chain(lanes(s, i1)).collect();
            for i in 0..l {
                assert_eq!((zipped[2 * i], zipped[2 * i + 1]), (vals[i], vals[100 + i]), "{name} interleave {i}");
            }
            // round (ties to even) and scale_pow2 over its whole range.
            let xs: Vec<f32> = (0..l).map(|i| [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.7, -3.7][i % 8] + (i / 8) as f32 * 10.0).collect();
            let r = lanes(s, s.round(vector(s, &xs)));
            for i in 0..l {
                assert_eq!(r[i], xs[i].round_ties_even(), "{name} round({})", xs[i]);
            }
            for n0 in (-152..=130).step_by(l) {
                let n: Vec<f32> = (0..l).map(|i| (n0 + i as i32).min(130) as f32).collect();
                let x: Vec<f32> = (0..l).map(|i| 0.75 + i as f32 * 0.04).collect();
                let got = lanes(s, s.scale_pow2(vector(s, &x), vector(s, &n)));
                for i in 0..l {
                    let want = (x[i] as f64 * 2f64.powi(n[i] as i32)) as f32;
                    assert_eq!(got[i], want, "{name} {} * 2^{}", x[i], n[i]);
                }
            }
        })
    });
}

#[test]
fn dot_matches_f64_for_f32_and_bf16_weights_at_every_level() {
    let mut rng = SplitMix64::new(10);
    for n in [0usize, 1, 7, 8, 15, 16, 17, 31, 33, 576, 1001] {
        let a = rng.nonzero(n, 1.0);
        let w = rng.nonzero(n, 1.0);
        let b: Vec<u16> = w.iter().map(|&x| crate::backend::numeric::f32_to_bf16(x)).collect();
        let want32: f64 = a.iter().zip(&w).map(|(&x, &y)| x as f64 * y as f64).sum();
        let want16: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * crate::backend::numeric::bf16_to_f32(y) as f64).sum();
        each_level(|level, name| {
            let (g32, g16) = dispatch!(level, s => (dot(s, &a, &w), dot(s, &a, &b)));
            assert!((g32 as f64 - want32).abs() <= 1e-5 * (1.0 + want32.abs()), "{name} f32 n {n}: {g32} vs {want32}");
            assert!((g16 as f64 - want16).abs() <= 1e-5 * (1.0 + want16.abs()), "{name} bf16 n {n}: {g16} vs {want16}");
        });
    }
}

#[test]
fn exp_shifted_sum_matches_the_scalar_loop_at_every_level() {
    let mut rng = SplitMix64::new(12);
    for n in [0usize, 1, 5, 8, 16, 17, 100, 1000] {
        let x = rng.nonzero(n, 20.0);
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let want: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
        let want_sum: f64 = want.iter().map(|&v| v as f64).sum();
        each_level(|level, name| {
            let mut got = x.clone();
            let sum = exp_shifted_sum_at(level, &mut got, m);
            for i in 0..n {
                assert!((got[i] - want[i]).abs() <= 2.0 * f32::EPSILON * want[i] + 1e-38, "{name} n {n} [{i}]: {} vs {}", got[i], want[i]);
            }
            assert!((sum as f64 - want_sum).abs() <= 1e-5 * want_sum.max(1e-30), "{name} n {n}: sum {sum} vs {want_sum}");
        });
    }
}
