//! The `TrainBackend` ops one at a time, CUDA against the CPU twin (backend/cpu/train.rs), on
//! fresh random inputs over several shapes including odd ones (not multiples of the kernels' 16 x
//! 16 tiles): `linear_dx` through dense f32, bf16 and NF4 weights (accumulating and not),
//! `lora_forward` (y += s·(x·Aᵀ)·Bᵀ, keeping x·Aᵀ), `mul`, the labelled rows' gather and scatter.
//! Within 1e-5 relative L2 (f32 math on both sides; only the summation order differs). Bad
//! shapes fail that call with an error, before any launch.
//!
//! Runs on a GPU, else on the CPU emulator (kernels/emu); skips only where neither exists.

use lorafleet::backend::cpu::CpuBackend;
use lorafleet::backend::cuda::{test_device, CudaBackend, DType};
use lorafleet::backend::train::TrainBackend;
use lorafleet::backend::{Backend, HostMatrix, HostWeight};
use lorafleet::quant::Nf4Tensor;
use lorafleet::rng::SplitMix64;
use lorafleet::train::{TokenizedExample, TrainBatch};

use crate::common::rel_l2;

const TOL: f64 = 1e-5;

fn cuda(test: &str) -> Option<CudaBackend> {
    Some(CudaBackend::with_device(test_device(test)?, DType::F32).expect("the CUDA backend's kernels load"))
}

/// `[rows, cols]` of fresh random values on both backends.
fn pair(
    cpu: &CpuBackend,
    gpu: &CudaBackend,
    rng: &mut SplitMix64,
    rows: usize,
    cols: usize,
) -> (Vec<f32>, <CpuBackend as Backend>::Tensor, <CudaBackend as Backend>::Tensor) {
    let v = rng.nonzero(rows * cols, 1.0);
    (v.clone(), cpu.tensor_from_host(&v, rows, cols).unwrap(), gpu.tensor_from_host(&v, rows, cols).unwrap())
}

/// A frozen weight `[rows, cols]` as dense f32, bf16 or NF4.
fn weight(kind: &str, data: &[f32], rows: usize, cols: usize) -> HostWeight {
    let name = format!("w.{kind}");
    match kind {
        "f32" => HostWeight::Dense(HostMatrix { name, rows, cols, data: data.to_vec() }),
        "bf16" => HostWeight::Bf16 { name, rows, cols, data: data.iter().map(|&x| lorafleet::backend::numeric::f32_to_bf16(x)).collect() },
        _ => HostWeight::Nf4 { name, tensor: Nf4Tensor::quantize(data, &[rows, cols], true) },
    }
}

#[test]
fn linear_dx_matches_the_cpu_for_every_weight_type() {
    let Some(gpu) = cuda("train ops: linear_dx") else { return };
    let cpu = CpuBackend::new();
    let mut rng = SplitMix64::new(3);
    // (rows t, out features, in features): tile multiples, odd, one row, NF4 needs in·out % 64.
    for (t, out, inp) in [(16, 32, 64), (7, 48, 128), (1, 64, 192), (33, 96, 64)] {
        for kind in ["f32", "bf16", "nf4"] {
            let w = rng.nonzero(out * inp, 0.5);
            let (wc, wg) = (cpu.upload_matrix(weight(kind, &w, out, inp)).unwrap(), gpu.upload_matrix(weight(kind, &w, out, inp)).unwrap());
            let (_, dyc, dyg) = pair(&cpu, &gpu, &mut rng, t, out);
            for accumulate in [false, true] {
                let (_, mut dxc, mut dxg) = pair(&cpu, &gpu, &mut rng, t, inp);
                cpu.linear_dx(&dyc, &wc, &mut dxc, accumulate).unwrap();
                gpu.linear_dx(&dyg, &wg, &mut dxg, accumulate).unwrap();
                let e = rel_l2(&gpu.to_host(&dxg).unwrap(), &dxc.data);
                assert!(e < TOL, "linear_dx {kind} [{t}, {out}] · [{out}, {inp}] accumulate {accumulate}: {e:.2e}");
            }
            let (_, _, mut wrong) = pair(&cpu, &gpu, &mut rng, t, inp + 1);
            assert!(gpu.linear_dx(&dyg, &wg, &mut wrong, false).is_err(), "a dx of the wrong width is refused");
        }
    }
}

#[test]
fn lora_forward_and_mul_match_the_cpu() {
    let Some(gpu) = cuda("train ops: lora_forward, mul") else { return };
    let cpu = CpuBackend::new();
    let mut rng = SplitMix64::new(4);
    for (t, inp, out, r) in [(16, 64, 32, 8), (5, 37, 19, 3), (40, 576, 192, 16)] {
        let (_, xc, xg) = pair(&cpu, &gpu, &mut rng, t, inp);
        let (_, ac, ag) = pair(&cpu, &gpu, &mut rng, r, inp);
        let (_, bc, bg) = pair(&cpu, &gpu, &mut rng, out, r);
        let (_, mut yc, mut yg) = pair(&cpu, &gpu, &mut rng, t, out);
        let xa_c = cpu.lora_forward(&mut yc, &xc, &ac, &bc, 1.75).unwrap();
        let xa_g = gpu.lora_forward(&mut yg, &xg, &ag, &bg, 1.75).unwrap();
        let e = rel_l2(&gpu.to_host(&xa_g).unwrap(), &xa_c.data);
        assert!(e < TOL, "x·Aᵀ [{t}, {inp}] r {r}: {e:.2e}");
        let e = rel_l2(&gpu.to_host(&yg).unwrap(), &yc.data);
        assert!(e < TOL, "y += s·xa·Bᵀ [{t}, {out}] r {r}: {e:.2e}");
        let (_, mc, mg) = pair(&cpu, &gpu, &mut rng, t, inp);
        let e = rel_l2(&gpu.to_host(&gpu.mul(&xg, &mg).unwrap()).unwrap(), &cpu.mul(&xc, &mc).unwrap().data);
        assert!(e < TOL, "mul [{t}, {inp}]: {e:.2e}");
        assert!(gpu.lora_forward(&mut yg, &xg, &bg, &ag, 1.0).is_err(), "A and B swapped are refused");
        assert!(gpu.mul(&xg, &yg).is_err() || inp == out, "a mask of another shape is refused");
    }
}

#[test]
fn labelled_rows_gather_and_scatter_match_the_cpu() {
    let Some(gpu) = cuda("train ops: label rows") else { return };
    let cpu = CpuBackend::new();
    let cfg = lorafleet::types::config::ModelConfig::from_json_str(lorafleet::train::tiny::CONFIG_JSON).unwrap();
    let ex = [TokenizedExample::new(&[1, 5, 9, 33], &[40, 41, 2]), TokenizedExample::new(&[1, 60, 3, 4, 5, 6], &[22, 2])];
    let batch = TrainBatch::new(&ex.iter().collect::<Vec<_>>(), None);
    let (bc, bg) = (cpu.begin_batch(&batch, &cfg).unwrap(), gpu.begin_batch(&batch, &cfg).unwrap());
    let mut rng = SplitMix64::new(5);
    let width = 37;
    let (_, xc, xg) = pair(&cpu, &gpu, &mut rng, batch.ids.len(), width);
    let (sc, sg) = (cpu.gather_label_rows(&xc, &bc).unwrap(), gpu.gather_label_rows(&xg, &bg).unwrap());
    assert_eq!(gpu.dims(&sg), (batch.label_rows.len(), width));
    assert_eq!(gpu.to_host(&sg).unwrap(), sc.data, "a gather is exact");
    let (_, dc, dg) = pair(&cpu, &gpu, &mut rng, batch.label_rows.len(), width);
    let (oc, og) = (cpu.scatter_label_rows(&dc, &bc).unwrap(), gpu.scatter_label_rows(&dg, &bg).unwrap());
    assert_eq!(gpu.to_host(&og).unwrap(), oc.data, "a scatter is exact (unlabelled rows zero)");
    assert!(oc.data[..width].iter().all(|&v| v == 0.0), "row 0 of a 4-token prompt carries no label");
    assert!(gpu.scatter_label_rows(&xg, &bg).is_err(), "more rows than labels are refused");
    let mut bad = batch.clone();
    bad.targets[0] = cfg.vocab_size as u32;
    assert!(gpu.begin_batch(&bad, &cfg).is_err(), "a target outside the vocabulary is refused");
}

#[test]
fn adamw_and_sum_squares_match_the_cpu() {
    let Some(gpu) = cuda("train ops: adamw, sum_squares") else { return };
    let cpu = CpuBackend::new();
    let mut rng = SplitMix64::new(6);
    let step = lorafleet::backend::train::AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, step_size: 2e-3, bc2_sqrt: 0.0447, decay: 0.9999, grad_scale: 0.37 };
    for (rows, cols) in [(8, 576), (3, 17), (1537, 8)] {
        let (_, mut pc, mut pg) = pair(&cpu, &gpu, &mut rng, rows, cols);
        let (_, gc, gg) = pair(&cpu, &gpu, &mut rng, rows, cols);
        let mv = rng.nonzero(rows * cols, 0.01);
        let vv: Vec<f32> = rng.nonzero(rows * cols, 0.01).iter().map(|x| x * x).collect();
        let (mut mc, mut mg) = (cpu.tensor_from_host(&mv, rows, cols).unwrap(), gpu.tensor_from_host(&mv, rows, cols).unwrap());
        let (mut vc, mut vg) = (cpu.tensor_from_host(&vv, rows, cols).unwrap(), gpu.tensor_from_host(&vv, rows, cols).unwrap());
        for _ in 0..3 {
            cpu.adamw_step(&mut pc, &gc, &mut mc, &mut vc, &step).unwrap();
            gpu.adamw_step(&mut pg, &gg, &mut mg, &mut vg, &step).unwrap();
        }
        for (what, g, c) in [("p", &pg, &pc), ("m", &mg, &mc), ("v", &vg, &vc)] {
            let e = rel_l2(&gpu.to_host(g).unwrap(), &c.data);
            assert!(e < TOL, "adamw [{rows}, {cols}] {what}: {e:.2e}");
        }
        let (sc, sg) = (cpu.sum_squares(&gc).unwrap(), gpu.sum_squares(&gg).unwrap());
        assert!((sc - sg).abs() <= 1e-12 * sc, "sum_squares [{rows}, {cols}]: {sg} vs {sc}");
        assert!(gpu.adamw_step(&mut pg, &gg, &mut mg, &mut gpu.zeros(rows, cols + 1).unwrap(), &step).is_err(), "a moment of another shape is refused");
    }
}
