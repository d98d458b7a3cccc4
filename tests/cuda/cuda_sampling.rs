//! Sampling on the device (kernels/sampling.cu) against its CPU twin (`backend::sampling`): greedy
//! rows equal the CPU sampler's argmax rule exactly (ties to the lowest index); seeded draws with
//! temperature, top-k and top-p equal the twin's (the same f32 arithmetic in the same order) on at
//! least 99% of rows (a GPU's expf may differ from the host's in the last bit), over f32 and bf16
//! logits, odd vocabularies and many rows; bad parameters are refused before any launch. Rows
//! with a token mask (structured output) draw as the twin draws from the row with every
//! disallowed logit set to `f32::MIN`, beside unmasked rows in the same launch.

use cudarc::driver::CudaSlice;
use half::bf16;
use lorafleet::backend::cuda::sampling::CudaSampler;
use lorafleet::backend::cuda::{test_device, CudaDevice};
use lorafleet::backend::sampler::{argmax, TokenMask};
use lorafleet::backend::sampling::{sample_row, SampleRow, NON_FINITE};
use lorafleet::rng::SplitMix64 as Rng;

fn rows_for(n: usize, seed: u64) -> Vec<SampleRow> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| match i % 5 {
            0 => SampleRow { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, draw: 0 },
            1 => SampleRow { temperature: 0.7, top_k: 0, top_p: 1.0, seed: rng.next_u64(), draw: i as u64 },
            2 => SampleRow { temperature: 1.3, top_k: 40, top_p: 1.0, seed: rng.next_u64(), draw: 3 },
            3 => SampleRow { temperature: 0.9, top_k: 0, top_p: 0.9, seed: rng.next_u64(), draw: 7 },
            _ => SampleRow { temperature: 1.0, top_k: 50, top_p: 0.8, seed: rng.next_u64(), draw: 11 },
        })
        .collect()
}

fn check(ops: &CudaDevice, s: &CudaSampler, vocab: usize, n: usize, bf: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    // Logits with a few ties at the top of some rows.
    let mut logits: Vec<f32> = rng.nonzero(n * vocab, 4.0);
    for r in (0..n).step_by(3) {
        let (a, b) = (rng.below(vocab), rng.below(vocab));
        logits[r * vocab + a] = 9.0;
        logits[r * vocab + b] = 9.0;
    }
    // Every seventh row holds a NaN or an infinity (at a random place): the marker, not a token.
    let bad_row = |i: usize| i % 7 == 5;
    for r in (0..n).filter(|&r| bad_row(r)) {
        logits[r * vocab + rng.below(vocab)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][r % 3];
    }
    if bf {
        logits.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
    }
    let rows = rows_for(n, seed);
    let got = if bf {
        let d: CudaSlice<bf16> = ops.upload(&logits.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>()).unwrap();
        s.sample(ops, &d, vocab, &rows).unwrap()
    } else {
        let d: CudaSlice<f32> = ops.upload(&logits).unwrap();
        s.sample(ops, &d, vocab, &rows).unwrap()
    };
    let mut differ = 0;
    for (i, r) in rows.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let want = sample_row(row, r);
        if bad_row(i) {
            assert_eq!((got[i], want), (NON_FINITE, NON_FINITE), "vocab {vocab} row {i}: a non-finite row");
            continue;
        }
        if r.temperature == 0.0 {
            assert_eq!(got[i], argmax(row), "vocab {vocab} row {i}: greedy is the CPU's argmax rule");
            assert_eq!(got[i], want);
        } else if got[i] != want {
            differ += 1;
        }
        assert!((got[i] as usize) < vocab);
    }
    assert!(differ * 100 <= n, "vocab {vocab} bf16 {bf}: {differ} of {n} draws differ from the twin");
}

#[test]
fn sampling_matches_the_cpu_twin() {
    let Some(ops) = test_device("cuda_sampling") else { return };
    let s = CudaSampler::new(&ops).expect("the sampling kernels load");
    for (vocab, n, bf, seed) in [(97, 50, false, 1), (1000, 40, true, 2), (777, 30, false, 3), (49152, 10, false, 4), (32000, 5, true, 5), (1, 3, false, 6)] {
        check(&ops, &s, vocab, n, bf, seed);
    }
}

#[test]
fn bad_sampling_parameters_are_refused() {
    let Some(ops) = test_device("cuda_sampling::bad") else { return };
    let s = CudaSampler::new(&ops).unwrap();
    let d: CudaSlice<f32> = ops.upload(&[1.0f32; 20]).unwrap();
    let ok = SampleRow { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1, draw: 0 };
    for (bad, needle) in [
        (SampleRow { temperature: -1.0, ..ok }, "temperature"),
        (SampleRow { temperature: f32::NAN, ..ok }, "temperature"),
        (SampleRow { top_p: 0.0, ..ok }, "top_p"),
        (SampleRow { top_p: 1.5, ..ok }, "top_p"),
    ] {
        let e = s.sample(&ops, &d, 10, &[bad, ok]).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    let e = s.sample(&ops, &d, 7, &[ok, ok]).unwrap_err();
    assert!(e.to_string().contains("[2, 7] needs 14"), "{e}");
}

/// Masked rows beside unmasked ones: the kernel applies each row's mask and draws as the twin
/// draws from the masked copy; a masked row never yields a disallowed token; a row whose mask
/// allows one token gets it at any temperature; a NaN hidden under a mask still fails the row.
fn check_masked(ops: &CudaDevice, s: &CudaSampler, vocab: usize, n: usize, bf: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut logits: Vec<f32> = rng.nonzero(n * vocab, 4.0);
    if bf {
        logits.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
    }
    let rows = rows_for(n, seed);
    // Row i: every third row unmasked; others a random mask of density ~1/3, or (i % 5 == 4) a
    // single allowed token; row 1 has a NaN at a disallowed place.
    let masks: Vec<Option<TokenMask>> = (0..n)
        .map(|i| match i % 3 {
            0 => None,
            _ if i % 5 == 4 => Some(TokenMask::only(&[rng.below(vocab) as u32], vocab)),
            _ => {
                let ids: Vec<u32> = (0..vocab as u32).filter(|_| rng.below(3) == 0).collect();
                Some(TokenMask::only(if ids.is_empty() { &[0] } else { &ids }, vocab))
            }
        })
        .collect();
    let nan_row = 1;
    if let Some(m) = &masks[nan_row] {
        if let Some(t) = (0..vocab).find(|&t| !m.allows(t as u32)) {
            logits[nan_row * vocab + t] = f32::NAN;
        }
    }
    let refs: Vec<Option<&TokenMask>> = masks.iter().map(Option::as_ref).collect();
    let got = if bf {
        let d: CudaSlice<bf16> = ops.upload(&logits.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>()).unwrap();
        s.sample_masked(ops, &d, vocab, &rows, &refs).unwrap()
    } else {
        let d: CudaSlice<f32> = ops.upload(&logits).unwrap();
        s.sample_masked(ops, &d, vocab, &rows, &refs).unwrap()
    };
    let mut differ = 0;
    for (i, r) in rows.iter().enumerate() {
        let raw = &logits[i * vocab..(i + 1) * vocab];
        let mut row = raw.to_vec();
        if let Some(m) = &masks[i] {
            m.apply(&mut row);
        }
        if raw.iter().any(|v| !v.is_finite()) {
            assert_eq!(got[i], NON_FINITE, "vocab {vocab} row {i}: a NaN under the mask still fails the row");
            continue;
        }
        let want = sample_row(&row, r);
        if let Some(m) = &masks[i] {
            assert!(m.allows(got[i]), "vocab {vocab} row {i}: token {} is not allowed", got[i]);
            if m.count() == 1 {
                assert_eq!(got[i], want, "vocab {vocab} row {i}: the only allowed token");
            }
        }
        if r.temperature == 0.0 {
            assert_eq!(got[i], want, "vocab {vocab} row {i}: greedy over the allowed tokens");
        } else if got[i] != want {
            differ += 1;
        }
    }
    assert!(differ * 100 <= n, "vocab {vocab} bf16 {bf}: {differ} of {n} masked draws differ from the twin");
}

#[test]
fn masked_sampling_matches_the_cpu_twin() {
    let Some(ops) = test_device("cuda_sampling::masked") else { return };
    let s = CudaSampler::new(&ops).expect("the sampling kernels load");
    for (vocab, n, bf, seed) in [(97, 30, false, 11), (1000, 25, true, 12), (777, 20, false, 13), (49152, 8, false, 14), (33, 10, true, 15)] {
        check_masked(&ops, &s, vocab, n, bf, seed);
    }
    // A mask of another width is refused before the launch.
    let d: CudaSlice<f32> = ops.upload(&[1.0f32; 20]).unwrap();
    let row = SampleRow { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, draw: 0 };
    let narrow = TokenMask::only(&[1], 9);
    let e = s.sample_masked(&ops, &d, 10, &[row, row], &[Some(&narrow), None]).unwrap_err();
    assert!(e.to_string().contains("covers 9 ids"), "{e}");
}
