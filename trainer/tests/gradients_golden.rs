//! `lorafleet-train gradients` against PyTorch autograd: on the golden `train` pair (fed as ids)
//! with adapter `a_r8_all` on the f32 SmolLM2-135M-Instruct, the loss is within 1e-5 relative of
//! HF's and every `grad.*` tensor of golden.safetensors is within 1e-4 relative L2. The same on
//! the bf16 base (`--base-dtype bf16`) against bf16base_train.safetensors (PyTorch with the
//! decoder's linear weights rounded to bf16, scripts/golden_bf16_base.py): the loss, the kept
//! layers' gradients and the global gradient norm. With `--device cuda` (a GPU, else the CPU
//! emulator of kernels/emu): the f32 base against PyTorch autograd at the same bounds, and the
//! NF4 base against the CPU's NF4 run (loss 1e-5, every gradient 1e-4). Runs the binary end to end
//! (arguments, device choice, model and adapter loading, the file it writes).

use std::path::PathBuf;
use std::process::Command;

use lorafleet::weights::WeightFiles;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ids(v: &serde_json::Value) -> String {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id").to_string()).collect::<Vec<_>>().join(",")
}

/// Runs `lorafleet-train gradients` on the golden pair with `extra` flags; returns the output.
fn run_gradients(extra: &[&str], tag: &str) -> (WeightFiles, serde_json::Value, PathBuf) {
    run_gradients_env(extra, tag, &[])
}

/// The child's environment for `--device cuda`: the emulator's switch when the tests run on it;
/// None (the test skips, or fails under LORAFLEET_REQUIRE_GPU=1) where there is no device.
fn cuda_env(test: &str) -> Option<Vec<(&'static str, &'static str)>> {
    lorafleet::backend::cuda::test_device(test)?;
    Some(if lorafleet::backend::cuda::tests_on_emulator() { vec![("LORAFLEET_CUDA_EMU", "1")] } else { Vec::new() })
}

fn run_gradients_env(extra: &[&str], tag: &str, env: &[(&str, &str)]) -> (WeightFiles, serde_json::Value, PathBuf) {
    let golden_dir = root().join("tests/golden/smollm2");
    let model = root().join("models/smollm2-135m-instruct");
    assert!(model.join("config.json").is_file(), "test model missing at {}", model.display());
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden_dir.join("golden.json")).unwrap()).unwrap();
    let train = golden["train"].clone();
    let out = std::env::temp_dir().join(format!("lorafleet-grads-{}-{tag}.safetensors", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_lorafleet-train"))
        .args(["gradients", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(golden_dir.join("adapters/a_r8_all"))
        .args(["--prompt-ids", &ids(&train["prompt_ids"]), "--completion-ids", &ids(&train["completion_ids"]), "--out"])
        .arg(&out)
        .args(extra)
        .envs(env.iter().copied())
        .status()
        .expect("run lorafleet-train");
    assert!(status.success(), "lorafleet-train gradients {extra:?} failed");
    (WeightFiles::open_files(std::slice::from_ref(&out)).unwrap(), train, out)
}

/// Relative L2 distance of `got`'s `name` from `want`'s.
fn rel_l2(got: &WeightFiles, want: &WeightFiles, name: &str) -> f64 {
    let w = want.f32(name).unwrap();
    let g = got.f32(name).unwrap_or_else(|e| panic!("{name} missing from the output: {e}"));
    assert_eq!(g.shape, w.shape, "{name}");
    let err: f64 = g.data.iter().zip(&w.data).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = w.data.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 0.0, "{name}: golden gradient is zero");
    err / norm
}

fn grad_names(w: &WeightFiles) -> Vec<String> {
    w.names().filter(|n| n.starts_with("grad.")).map(str::to_string).collect()
}

#[test]
fn gradients_match_pytorch_autograd_on_the_golden_pair() {
    check_f32_against_pytorch(&run_gradients(&["--device", "cpu"], "f32"));
}

#[test]
fn cuda_gradients_match_pytorch_autograd_on_the_golden_pair() {
    let Some(env) = cuda_env("gradients --device cuda (f32 base)") else { return };
    check_f32_against_pytorch(&run_gradients_env(&["--device", "cuda"], "cuda-f32", &env));
}

#[test]
fn cuda_gradients_match_the_cpu_on_the_nf4_base() {
    let Some(env) = cuda_env("gradients --device cuda (NF4 base)") else { return };
    let (cpu, _, cpu_out) = run_gradients(&["--device", "cpu", "--quantize", "nf4"], "cpu-nf4");
    let (cuda, _, cuda_out) = run_gradients_env(&["--device", "cuda", "--quantize", "nf4"], "cuda-nf4", &env);
    let (l_cpu, l_cuda) = (cpu.f32("loss").unwrap().data[0] as f64, cuda.f32("loss").unwrap().data[0] as f64);
    assert!((l_cuda - l_cpu).abs() <= 1e-5 * l_cpu.abs(), "NF4 loss {l_cuda} on CUDA vs {l_cpu} on the CPU");
    let names = grad_names(&cpu);
    assert_eq!(names.len(), 420, "every LoRA parameter gets a gradient");
    assert_eq!(grad_names(&cuda).len(), 420);
    let worst = names.iter().map(|n| (rel_l2(&cuda, &cpu, n), n)).max_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    eprintln!("NF4 base: loss {l_cuda} on CUDA, {l_cpu} on the CPU; worst grad rel L2 {:.3e} at {}", worst.0, worst.1);
    assert!(worst.0 < 1e-4, "grad rel L2 {:.3e} at {}", worst.0, worst.1);
    let _ = std::fs::remove_file(&cpu_out);
    let _ = std::fs::remove_file(&cuda_out);
}

/// The loss within 1e-5 relative of HF's and all 420 gradients within 1e-4 relative L2 of
/// PyTorch autograd's (golden.safetensors).
fn check_f32_against_pytorch((got, train, out): &(WeightFiles, serde_json::Value, PathBuf)) {
    let want = WeightFiles::open_files(&[root().join("tests/golden/smollm2/golden.safetensors")]).unwrap();
    let loss = got.f32("loss").unwrap().data[0] as f64;
    let want_loss = train["loss"].as_f64().unwrap();
    assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss {loss} vs HF {want_loss}");
    let names = grad_names(&want);
    assert_eq!(names.len(), 420, "golden grads");
    let mut worst = (0.0f64, String::new());
    for name in &names {
        let rel = rel_l2(got, &want, name);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    assert_eq!(grad_names(&got).len(), names.len(), "the output holds extra gradients");
    eprintln!("loss {loss} (HF {want_loss}); worst grad rel L2 {:.3e} at {}", worst.0, worst.1);
    assert!(worst.0 < 1e-4, "grad rel L2 {:.3e} at {}", worst.0, worst.1);
    let _ = std::fs::remove_file(out);
}

#[test]
fn bf16_base_gradients_match_pytorch_with_bf16_rounded_weights() {
    let (got, train, out) = run_gradients(&["--device", "cpu", "--base-dtype", "bf16"], "bf16");
    let want = WeightFiles::open_files(&[root().join("tests/golden/smollm2/bf16base_train.safetensors")]).unwrap();
    let loss = got.f32("loss").unwrap().data[0] as f64;
    let want_loss = want.f32("loss").unwrap().data[0] as f64;
    let f32_loss = train["loss"].as_f64().unwrap();
    // The rounding is real: the bf16 base's loss is not the f32 base's.
    assert!((want_loss - f32_loss).abs() > 1e-4 * f32_loss, "reference bf16 loss {want_loss} equals the f32 one {f32_loss}");
    assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss {loss} vs PyTorch {want_loss}");
    let kept = grad_names(&want);
    assert_eq!(kept.len(), 42, "layers 0, 15, 29 x 7 modules x A, B");
    let worst = kept.iter().map(|n| (rel_l2(&got, &want, n), n)).max_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    let all = grad_names(&got);
    assert_eq!(all.len(), 420, "every LoRA parameter gets a gradient");
    let norm: f64 = all.iter().flat_map(|n| got.f32(n).unwrap().data).map(|x| x as f64 * x as f64).sum::<f64>().sqrt();
    let want_norm = want.f32("grad_norm").unwrap().data[0] as f64;
    eprintln!(
        "bf16 base: loss {loss} (PyTorch {want_loss}, f32 base {f32_loss}); worst kept grad rel L2 {:.3e} at {}; norm {norm} ({want_norm})",
        worst.0, worst.1
    );
    assert!(worst.0 < 1e-4, "grad rel L2 {:.3e} at {}", worst.0, worst.1);
    assert!((norm - want_norm).abs() <= 1e-4 * want_norm, "global grad norm {norm} vs PyTorch {want_norm}");
    let _ = std::fs::remove_file(&out);
}
