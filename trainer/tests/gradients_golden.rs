//! `lorafleet-train gradients` against PyTorch autograd: on the golden `train` pair (fed as ids)
//! with adapter `a_r8_all` on the f32 SmolLM2-135M-Instruct, the loss is within 1e-5 relative of
//! HF's and every `grad.*` tensor of golden.safetensors is within 1e-4 relative L2. Runs the
//! binary end to end (arguments, model and adapter loading, the file it writes).

use std::path::PathBuf;
use std::process::Command;

use lorafleet::model::weights::WeightFiles;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ids(v: &serde_json::Value) -> String {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id").to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn gradients_match_pytorch_autograd_on_the_golden_pair() {
    let golden_dir = root().join("tests/golden/smollm2");
    let model = root().join("models/smollm2-135m-instruct");
    assert!(model.join("config.json").is_file(), "test model missing at {}", model.display());
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden_dir.join("golden.json")).unwrap()).unwrap();
    let train = &golden["train"];
    let out = std::env::temp_dir().join(format!("lorafleet-grads-{}.safetensors", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_lorafleet-train"))
        .args(["gradients", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(golden_dir.join("adapters/a_r8_all"))
        .args(["--prompt-ids", &ids(&train["prompt_ids"]), "--completion-ids", &ids(&train["completion_ids"]), "--out"])
        .arg(&out)
        .status()
        .expect("run lorafleet-train");
    assert!(status.success(), "lorafleet-train gradients failed");
    let got = WeightFiles::open_files(std::slice::from_ref(&out)).unwrap();
    let want = WeightFiles::open_files(&[golden_dir.join("golden.safetensors")]).unwrap();
    let loss = got.f32("loss").unwrap().data[0] as f64;
    let want_loss = train["loss"].as_f64().unwrap();
    assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss {loss} vs HF {want_loss}");
    let names: Vec<String> = want.names().filter(|n| n.starts_with("grad.")).map(str::to_string).collect();
    assert_eq!(names.len(), 420, "golden grads");
    let mut worst = (0.0f64, String::new());
    for name in &names {
        let w = want.f32(name).unwrap();
        let g = got.f32(name).unwrap_or_else(|e| panic!("{name} missing from the output: {e}"));
        assert_eq!(g.shape, w.shape, "{name}");
        let err: f64 = g.data.iter().zip(&w.data).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = w.data.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        assert!(norm > 0.0, "{name}: golden gradient is zero");
        let rel = err / norm;
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    let count = got.names().filter(|n| n.starts_with("grad.")).count();
    assert_eq!(count, names.len(), "the output holds extra gradients");
    eprintln!("loss {loss} (HF {want_loss}); worst grad rel L2 {:.3e} at {}", worst.0, worst.1);
    assert!(worst.0 < 1e-4, "grad rel L2 {:.3e} at {}", worst.0, worst.1);
    let _ = std::fs::remove_file(&out);
}
