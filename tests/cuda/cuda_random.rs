//! Random weights made on the device (kernels/random.cu) equal their host twin
//! (`backend::random::materialize`) bit for bit: f32, bf16 and NF4 (codes and block scales), odd
//! shapes, several seeds; so a random model is the same on every backend.

use half::bf16;
use lorafleet::backend::cuda::values::{CudaWeight, DenseBuf};
use lorafleet::backend::cuda::{test_device, CudaBackend, DType};
use lorafleet::backend::random::{materialize, RandomFormat, RandomSpec};
use lorafleet::backend::{Backend, HostWeight};

#[test]
fn device_random_weights_equal_the_host_twin() {
    let Some(ops) = test_device("cuda_random") else { return };
    let be = CudaBackend::with_device(ops, DType::F32).unwrap();
    for (rows, cols, seed) in [(37, 51, 1u64), (64, 64, 2), (1, 7, 3), (130, 200, 4)] {
        for format in [RandomFormat::F32, RandomFormat::Bf16, RandomFormat::Nf4] {
            let spec = RandomSpec { name: "w".into(), rows, cols, format, seed, scale: 0.3 };
            let host = materialize(&spec);
            let m = be.upload_matrix(HostWeight::Random(spec.clone())).unwrap();
            let dev = be.device();
            match (&m.weight, host) {
                (CudaWeight::Dense(DenseBuf::F32(d)), HostWeight::Dense(h)) => {
                    let got = dev.download(d).unwrap();
                    let differ = got.iter().zip(&h.data).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    assert_eq!(differ, 0, "{spec:?}: {differ} of {} values differ", got.len());
                }
                (CudaWeight::Bf16(d), HostWeight::Bf16 { data, .. }) => {
                    let got: Vec<u16> = dev.download(d).unwrap().iter().map(|x: &bf16| x.to_bits()).collect();
                    let differ = got.iter().zip(&data).filter(|(a, b)| a != b).count();
                    assert_eq!(differ, 0, "{spec:?}: {differ} of {} values differ", got.len());
                }
                (CudaWeight::Nf4(w), HostWeight::Nf4 { tensor, .. }) => {
                    let (packed, absmax) = w.download_parts(dev).unwrap();
                    assert!(packed == tensor.packed, "{spec:?}: the codes differ");
                    assert!(absmax == tensor.block_absmax(), "{spec:?}: the block scales differ");
                }
                (w, h) => panic!(
                    "{spec:?}: device and host formats differ ({} vs {h:?})",
                    match w {
                        CudaWeight::Dense(_) => "dense",
                        CudaWeight::Bf16(_) => "bf16",
                        CudaWeight::Nf4(_) => "nf4",
                    }
                ),
            }
        }
    }
}

/// `--random-weights`: the same seeded model on the CPU and on the device (weights made on each
/// side) gives the same logits, for f32, bf16 and NF4 linear weights.
#[test]
fn a_random_model_is_the_same_on_cpu_and_device() {
    use lorafleet::backend::cpu::CpuBackend;
    use lorafleet::model::{random::RandomModel, BaseFormat};
    let Some(ops) = test_device("cuda_random") else { return };
    let shape = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_shape.json");
    let rm = RandomModel::new(shape, 11).unwrap();
    let cpu = CpuBackend::new();
    let cuda = CudaBackend::with_device(ops, DType::F32).unwrap();
    let ids: Vec<u32> = (0..9).map(|i| 300 + i * 997).collect();
    for format in [BaseFormat::F32, BaseFormat::Bf16, BaseFormat::Nf4] {
        let a = lorafleet::engine::score(&rm.load(&cpu, format, false).unwrap(), &cpu, &ids).unwrap().last_logits;
        let b = lorafleet::engine::score(&rm.load(&cuda, format, false).unwrap(), &cuda, &ids).unwrap().last_logits;
        let (num, den) = a.iter().zip(&b).fold((0f64, 0f64), |(n, d), (x, y)| (n + ((x - y) as f64).powi(2), d + (*x as f64).powi(2)));
        let rel = (num / den).sqrt();
        assert!(den > 0.0 && rel < 1e-5, "{format:?}: relative L2 {rel:e} between the CPU and the device");
    }
}

/// `bench --synthetic-adapters`: an adapter made on the device (`LoadedAdapter::random`) is the
/// one the CPU makes: a random model's logits under it agree across backends, and it moves them.
#[test]
fn a_synthetic_adapter_is_the_same_on_cpu_and_device() {
    use lorafleet::backend::cpu::CpuBackend;
    use lorafleet::engine::score::score_with_adapter;
    use lorafleet::lora::LoadedAdapter;
    use lorafleet::model::{random::RandomModel, BaseFormat};
    let Some(ops) = test_device("cuda_random") else { return };
    let rm = RandomModel::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_shape.json"), 5).unwrap();
    let cpu = CpuBackend::new();
    let cuda = CudaBackend::with_device(ops, DType::F32).unwrap();
    let ids: Vec<u32> = (0..7).map(|i| 500 + i * 3001).collect();
    let run = |be_cpu: bool| -> (Vec<f32>, Vec<f32>) {
        if be_cpu {
            let m = rm.load(&cpu, BaseFormat::Nf4, false).unwrap();
            let a = LoadedAdapter::random(&cpu, "s", &rm.config, 8, 16.0, 3, 0.05).unwrap();
            (score_with_adapter(&m, &cpu, &ids, Some(&a)).unwrap().last_logits, score_with_adapter(&m, &cpu, &ids, None).unwrap().last_logits)
        } else {
            let m = rm.load(&cuda, BaseFormat::Nf4, false).unwrap();
            let a = LoadedAdapter::random(&cuda, "s", &rm.config, 8, 16.0, 3, 0.05).unwrap();
            (score_with_adapter(&m, &cuda, &ids, Some(&a)).unwrap().last_logits, score_with_adapter(&m, &cuda, &ids, None).unwrap().last_logits)
        }
    };
    let ((cpu_lora, cpu_base), (dev_lora, _)) = (run(true), run(false));
    let rel = |a: &[f32], b: &[f32]| {
        let (n, d) = a.iter().zip(b).fold((0f64, 0f64), |(n, d), (x, y)| (n + ((x - y) as f64).powi(2), d + (*x as f64).powi(2)));
        (n / d).sqrt()
    };
    assert!(rel(&cpu_lora, &cpu_base) > 1e-3, "the adapter moves the logits ({:e})", rel(&cpu_lora, &cpu_base));
    let e = rel(&dev_lora, &cpu_lora);
    assert!(e < 1e-5, "device vs CPU under the same synthetic adapter: relative L2 {e:e}");
}
