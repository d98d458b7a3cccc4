//! Parity of the dense linear kernels (kernels/linear.cu) with their CPU twins
//! (`cpu::matmul::linear` for f32 weights, `cpu::bf16::linear` for bf16 weights), for f32 and bf16
//! activations, with and without a bias, on the GEMV (fast and generic) and GEMM paths, over odd
//! shapes and misaligned views. Fresh seeded random inputs; outputs poisoned with NaN so an
//! unwritten element fails; guard elements around y must come back untouched.
//!
//! Runs on a GPU, else on the CPU emulator (kernels/emu); skips only where neither exists.

use cudarc::driver::{CudaSlice, CudaView};
use half::bf16;
use lorafleet::backend::cpu::{bf16 as cpu_bf16, matmul};
use lorafleet::backend::cuda::linear::{CudaLinear, LinearKernel};
use lorafleet::backend::cuda::{big_shapes, test_device, CudaDevice, CudaElem};
use lorafleet::rng::SplitMix64 as Rng;

use crate::common::rel_l2_f32 as rel_l2;

trait El: CudaElem + std::fmt::Debug + PartialEq {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    const NAME: &'static str;
}
impl El for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    const NAME: &'static str = "f32";
}
impl El for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    const NAME: &'static str = "bf16";
}

const GUARD: usize = 8;

/// Runs one case at element offset `off` inside padded buffers; returns the kernel used.
#[allow(clippy::too_many_arguments)]
fn case<TX: El, TW: El>(
    ops: &CudaDevice,
    lin: &CudaLinear,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    with_bias: bool,
    off: usize,
    force_gemm: bool,
) -> LinearKernel {
    let what = format!("x {} w {} [{m}, {k}] x [{n}, {k}] bias {with_bias} off {off} gemm {force_gemm}", TX::NAME, TW::NAME);
    // Inputs rounded to the storage types; the CPU twin computes on exactly those values.
    let x: Vec<TX> = rng.nonzero(m * k, 1.0).into_iter().map(TX::from_f32).collect();
    let w: Vec<TW> = rng.nonzero(n * k, 0.5).into_iter().map(TW::from_f32).collect();
    let bias: Vec<f32> = rng.nonzero(n, 0.5);
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let mut want = vec![0f32; m * n];
    if TW::NAME == "bf16" {
        let wm = cpu_bf16::Bf16Matrix { rows: n, cols: k, data: w.iter().map(|v| cpu_bf16::f32_to_bf16(v.to_f32())).collect() };
        cpu_bf16::linear(&xf, m, &wm, &mut want);
    } else {
        matmul::linear(&xf, m, k, &wf, n, &mut want);
    }
    if with_bias {
        for row in want.chunks_exact_mut(n) {
            for (o, b) in row.iter_mut().zip(&bias) {
                *o += b;
            }
        }
    }
    let pad = |v: &[f32]| -> Vec<f32> { std::iter::repeat_n(7.0, off).chain(v.iter().copied()).chain(std::iter::repeat_n(7.0, GUARD)).collect() };
    let xd: CudaSlice<TX> = ops.upload(&pad(&xf).into_iter().map(TX::from_f32).collect::<Vec<_>>()).unwrap();
    let wd: CudaSlice<TW> = ops.upload(&pad(&wf).into_iter().map(TW::from_f32).collect::<Vec<_>>()).unwrap();
    let bd = ops.upload(&bias).unwrap();
    let y_host: Vec<TX> = (0..off + m * n + GUARD).map(|i| TX::from_f32(if (off..off + m * n).contains(&i) { f32::NAN } else { 3.0 })).collect();
    let mut yd: CudaSlice<TX> = ops.upload(&y_host).unwrap();
    let xv: CudaView<TX> = xd.slice(off..off + m * k);
    let wv: CudaView<TW> = wd.slice(off..off + n * k);
    let kernel = {
        let mut yv = yd.slice_mut(off..off + m * n);
        lin.linear(ops, (m, n, k), &xv, &wv, with_bias.then_some(&bd), &mut yv, force_gemm).unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    let got: Vec<TX> = ops.download(&yd).unwrap();
    assert!(got[..off].iter().chain(&got[off + m * n..]).all(|g| g.to_f32() == 3.0), "{what}: a guard element was written");
    let got: Vec<f32> = got[off..off + m * n].iter().map(|v| v.to_f32()).collect();
    let tol = if TX::NAME == "bf16" { 1e-2 } else { 1e-5 };
    let e = rel_l2(&got, &want, &what);
    assert!(e < tol, "{what}: rel L2 {e:.2e} (kernel {kernel:?})");
    kernel
}

fn sweep<TX: El, TW: El>(ops: &CudaDevice, lin: &CudaLinear, seed: u64) {
    let mut rng = Rng::new(seed);
    // (130, 260, 136): several 64 x 128 tensor-core tiles in both directions and three k tiles.
    let mut shapes = vec![(1, 576, 576), (3, 100, 77), (8, 65, 64), (9, 130, 96), (33, 200, 40), (70, 17, 300), (1, 1, 1), (2, 49, 576), (130, 260, 136)];
    if big_shapes() {
        shapes.extend([(1, 4096, 4096), (5, 14336, 4096), (100, 4096, 4096)]);
    }
    for &(m, n, k) in &shapes {
        for with_bias in [false, true] {
            let kern = case::<TX, TW>(ops, lin, &mut rng, (m, n, k), with_bias, 16, false);
            // bf16 x with bf16 W: the tensor-core GEMM (fast loaders when k % 8 == 0); else f32 FMAs.
            let tiled = if TX::NAME == "bf16" && TW::NAME == "bf16" { LinearKernel::GemmTc { fast: k % 8 == 0 } } else { LinearKernel::Gemm };
            if m <= 8 {
                assert!(matches!(kern, LinearKernel::Gemv { fast, .. } if fast == (k % 8 == 0)), "{m}x{n}x{k}: {kern:?}");
                // The tiled path on the same small shape.
                assert_eq!(case::<TX, TW>(ops, lin, &mut rng, (m, n, k), with_bias, 16, true), tiled);
            } else {
                assert_eq!(kern, tiled);
            }
        }
        // A misaligned view: the generic GEMV, or the generic tensor-core loaders.
        let kern = case::<TX, TW>(ops, lin, &mut rng, (m, n, k), false, 1, false);
        if m <= 8 {
            assert!(matches!(kern, LinearKernel::Gemv { fast: false, .. }), "misaligned {m}x{n}x{k}: {kern:?}");
        } else if TX::NAME == "bf16" && TW::NAME == "bf16" {
            assert_eq!(kern, LinearKernel::GemmTc { fast: false }, "misaligned {m}x{n}x{k}");
        }
    }
}

fn device(test: &str) -> Option<(CudaDevice, CudaLinear)> {
    let ops = test_device(test)?;
    let lin = CudaLinear::new(&ops).expect("the linear kernels load");
    Some((ops, lin))
}

#[test]
fn linear_f32_weights_f32_activations() {
    let Some((ops, lin)) = device("cuda_linear::f32_f32") else { return };
    sweep::<f32, f32>(&ops, &lin, 1);
}

#[test]
fn linear_bf16_weights_f32_activations() {
    let Some((ops, lin)) = device("cuda_linear::f32_bf16") else { return };
    sweep::<f32, bf16>(&ops, &lin, 2);
}

#[test]
fn linear_f32_weights_bf16_activations() {
    let Some((ops, lin)) = device("cuda_linear::bf16_f32") else { return };
    sweep::<bf16, f32>(&ops, &lin, 3);
}

#[test]
fn linear_bf16_weights_bf16_activations() {
    let Some((ops, lin)) = device("cuda_linear::bf16_bf16") else { return };
    sweep::<bf16, bf16>(&ops, &lin, 4);
}

#[test]
fn linear_rejects_bad_shapes_before_launching() {
    let Some((ops, lin)) = device("cuda_linear::rejects") else { return };
    let x = ops.upload(&[1f32; 12]).unwrap();
    let w = ops.upload(&[1f32; 12]).unwrap();
    let bias = ops.upload(&[1f32; 2]).unwrap();
    let mut y = ops.upload(&[0f32; 9]).unwrap();
    let e = lin.linear(&ops, (3, 3, 4), &x, &w, None, &mut y, false).expect("a valid launch");
    assert!(matches!(e, LinearKernel::Gemv { mt: 4, .. }));
    let e = lin.linear(&ops, (3, 3, 5), &x, &w, None, &mut y, false).unwrap_err();
    assert!(e.to_string().contains("`x` has 12 elements"), "{e}");
    let e = lin.linear(&ops, (3, 3, 4), &x, &w, Some(&bias), &mut y, false).unwrap_err();
    assert!(e.to_string().contains("bias has 2 elements"), "{e}");
    assert_eq!(ops.download(&y).unwrap(), vec![4.0; 9], "the refused launches wrote nothing");
}
