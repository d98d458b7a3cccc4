//! A run interrupted after a checkpoint and resumed from it follows the same loss curve, and
//! ends with the same adapter, as an uninterrupted run (tiny random Llama, f32, NF4 and bf16 bases,
//! packed, padded and shared-prefix batches, accumulation, clipping, cosine warm-up, LoRA dropout).

use lorafleet::lora::LoraModule;
use lorafleet::quant::Quantization;
use lorafleet::train::{BaseFormat, StepOptions, TokenizedExample, TrainModel};
use lorafleet_trainer::optim::{AdamWConfig, Schedule};
use lorafleet_trainer::train_loop::{train, Batching, TrainConfig};

fn examples() -> Vec<TokenizedExample> {
    (0..10u32)
        .map(|i| {
            // A common two-token start (as a prompt template), so shared-prefix batches share it.
            let prompt: Vec<u32> = [1, 4].into_iter().chain((0..3 + i % 4).map(|k| 3 + (i * 7 + k * 5) % 60)).collect();
            TokenizedExample::new(&prompt, &[10 + i % 3, 2])
        })
        .collect()
}

fn config(out: &std::path::Path, batching: Batching) -> TrainConfig {
    TrainConfig {
        out_dir: out.to_path_buf(),
        rank: 4,
        alpha: 8.0,
        modules: LoraModule::ALL.to_vec(),
        lr: 5e-3,
        schedule: Schedule::Cosine,
        warmup_ratio: 0.2,
        epochs: 2,
        max_steps: None,
        micro_batch: 2,
        grad_accum: 2,
        max_grad_norm: 1.0,
        adamw: AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() },
        batching,
        pad_id: 2,
        seed: 7,
        shuffle: true,
        init_adapter: None,
        checkpoint_every: 2,
        step: StepOptions::default(),
        stop_after: None,
        resume: None,
        progress: false,
        base_model_name: None,
    }
}

fn check(quantize: Option<Quantization>, batching: Batching) {
    check_with(quantize.into(), batching, 0.0)
}

fn check_with(format: BaseFormat, batching: Batching, lora_dropout: f32) {
    let tmp_guard = tempfile::Builder::new().prefix("lorafleet-resume-").tempdir().unwrap();
    let tmp = tmp_guard.path().to_path_buf();
    let _ = std::fs::remove_dir_all(&tmp);
    lorafleet::train::tiny::write_tiny_model(&tmp.join("model"), 3).unwrap();
    let model = TrainModel::load_as(&tmp.join("model"), format).unwrap();
    let ex = examples();
    // Uninterrupted.
    let with_dropout = |mut c: TrainConfig| {
        c.step.lora_dropout = lora_dropout;
        c
    };
    let full = train(&model, &ex, &with_dropout(config(&tmp.join("full"), batching))).unwrap();
    assert_eq!(full.total_steps, 6, "10 examples, micro-batch 2, accumulation 2, 2 epochs");
    assert_eq!(full.log.len(), 6);
    assert!(full.log.last().unwrap().loss < full.log[0].loss, "the loss should fall: {:?}", full.log.iter().map(|e| e.loss).collect::<Vec<_>>());
    // Interrupted after update 3 (last checkpoint: 2), then resumed from the output directory.
    let mut cfg = with_dropout(config(&tmp.join("split"), batching));
    cfg.stop_after = Some(3);
    let first = train(&model, &ex, &cfg).unwrap();
    assert_eq!(first.log.len(), 3);
    cfg.stop_after = None;
    cfg.resume = Some(tmp.join("split"));
    let resumed = train(&model, &ex, &cfg).unwrap();
    assert_eq!(resumed.log.len(), 6, "log = steps 1-2 from the first run, 3-6 from the resumed one");
    for (a, b) in full.log.iter().zip(&resumed.log) {
        assert_eq!(a.step, b.step);
        assert!((a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(), "step {}: loss {} vs {}", a.step, a.loss, b.loss);
        assert_eq!(a.lr, b.lr);
    }
    for ((_, _, p), (_, _, q)) in full.adapter.pairs().zip(resumed.adapter.pairs()) {
        for (x, y) in p.a.data.iter().chain(&p.b.data).zip(q.a.data.iter().chain(&q.b.data)) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "final adapters differ: {x} vs {y}");
        }
    }
    // The log on disk is the resumed curve, and the final adapter and checkpoints exist.
    let text = std::fs::read_to_string(tmp.join("split/loss.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert!(tmp.join("split/adapter/adapter_model.safetensors").is_file());
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.join("split/adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["lora_dropout"].as_f64().unwrap() as f32, lora_dropout, "adapter_config.json records the dropout");
    assert!(tmp.join("split/checkpoint-6/optimizer.safetensors").is_file());
    assert!(!tmp.join("split/checkpoint-6.tmp").exists());
    let png = std::fs::read(tmp.join("split/loss.png")).expect("loss.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "loss.png is not a PNG");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn resumed_run_follows_the_same_loss_curve_f32_packed() {
    check(None, Batching::Packed);
}

#[test]
fn resumed_run_follows_the_same_loss_curve_nf4_padded() {
    check(Some(Quantization::Nf4), Batching::Padded);
}

#[test]
fn resumed_run_follows_the_same_loss_curve_f32_shared_prefix() {
    check(None, Batching::SharedPrefix);
}

/// With LoRA dropout the masks are a function of (seed, update, micro-batch): a resumed run draws
/// the same ones. On the bf16 base.
#[test]
fn resumed_run_follows_the_same_loss_curve_bf16_with_lora_dropout() {
    check_with(BaseFormat::Bf16, Batching::SharedPrefix, 0.2);
}

/// A run whose loss becomes non-finite (an absurd learning rate) stops with an error naming the
/// update, instead of writing NaN weights; the checkpoint before it stays loadable; and the loss
/// plot of a log holding a NaN is drawn from the finite points (it used to loop forever).
#[test]
fn a_diverged_run_stops_with_an_error() {
    let tmp_guard = tempfile::Builder::new().prefix("lorafleet-diverge-").tempdir().unwrap();
    let tmp = tmp_guard.path().to_path_buf();
    let _ = std::fs::remove_dir_all(&tmp);
    lorafleet::train::tiny::write_tiny_model(&tmp.join("model"), 3).unwrap();
    let model = TrainModel::load_as(&tmp.join("model"), BaseFormat::F32).unwrap();
    let mut cfg = config(&tmp.join("out"), Batching::Packed);
    cfg.lr = 1e30;
    cfg.warmup_ratio = 0.0;
    cfg.max_grad_norm = 0.0;
    cfg.checkpoint_every = 1;
    let e = train(&model, &examples(), &cfg).err().expect("a diverged run must fail").to_string();
    assert!(e.contains("training diverged"), "{e}");
    let log = std::fs::read_to_string(tmp.join("out/loss.jsonl")).unwrap_or_default();
    assert!(log.lines().all(|l| !l.contains("NaN") && !l.contains("null")), "no non-finite loss was logged: {log}");
    // The plot skips non-finite points.
    let mut entries = vec![lorafleet_trainer::train_loop::LogEntry {
        step: 1,
        epoch: 0.1,
        loss: 2.0,
        lr: 1e-3,
        grad_norm: 1.0,
        tokens: 10,
        tokens_per_s: 1.0,
        elapsed_s: 1.0,
    }];
    entries.push(lorafleet_trainer::train_loop::LogEntry { step: 2, loss: f64::NAN, ..entries[0].clone() });
    entries.push(lorafleet_trainer::train_loop::LogEntry { step: 3, loss: 1.5, ..entries[0].clone() });
    let t = std::time::Instant::now();
    lorafleet_trainer::plot::plot_loss(&tmp.join("nan.png"), &entries).unwrap();
    assert!(t.elapsed().as_secs() < 30, "plotting took {:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `--resume` refuses checkpoints no run could have written (they used to resume): a step past
/// the end, an optimizer step that disagrees with the trainer state, NaN moments, and an adapter
/// of another rank than the flags ask.
#[test]
fn inconsistent_checkpoints_are_refused() {
    use lorafleet::weights::WeightFiles;
    let tmp_guard = tempfile::Builder::new().prefix("lorafleet-bad-ckpt-").tempdir().unwrap();
    let tmp = tmp_guard.path().to_path_buf();
    let _ = std::fs::remove_dir_all(&tmp);
    lorafleet::train::tiny::write_tiny_model(&tmp.join("model"), 3).unwrap();
    let model = TrainModel::load_as(&tmp.join("model"), BaseFormat::F32).unwrap();
    let mut cfg = config(&tmp.join("run"), Batching::Packed);
    cfg.stop_after = Some(2);
    train(&model, &examples(), &cfg).unwrap();
    let ckpt = tmp.join("run/checkpoint-2");
    let state_path = ckpt.join("trainer_state.json");
    let good_state = std::fs::read_to_string(&state_path).unwrap();
    let opt_path = ckpt.join("optimizer.safetensors");
    let good_opt = std::fs::read(&opt_path).unwrap();
    cfg.stop_after = None;
    cfg.resume = Some(ckpt.clone());
    let resume_err = |cfg: &TrainConfig| train(&model, &examples(), cfg).err().expect("must be refused").to_string();

    let mut st: serde_json::Value = serde_json::from_str(&good_state).unwrap();
    st["step"] = 999.into();
    std::fs::write(&state_path, st.to_string()).unwrap();
    let e = resume_err(&cfg);
    assert!(e.contains("step 999 is outside"), "{e}");

    st["step"] = 1.into();
    std::fs::write(&state_path, st.to_string()).unwrap();
    let e = resume_err(&cfg);
    assert!(e.contains("differs from trainer_state.json"), "{e}");
    std::fs::write(&state_path, &good_state).unwrap();

    // NaN in one first moment.
    let w = WeightFiles::open_files(std::slice::from_ref(&opt_path)).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = w
        .names()
        .map(|n| {
            let t = w.f32(n).unwrap();
            (n.to_string(), t.shape, t.data)
        })
        .collect();
    drop(w);
    let m = tensors.iter_mut().find(|t| t.0.starts_with("exp_avg.")).unwrap();
    m.2[0] = f32::NAN;
    let refs: Vec<(String, Vec<usize>, &[f32])> = tensors.iter().map(|(n, s, d)| (n.clone(), s.clone(), &d[..])).collect();
    lorafleet::train::grads::write_f32_safetensors(&opt_path, &refs).unwrap();
    let e = resume_err(&cfg);
    assert!(e.contains("non-finite or negative"), "{e}");
    std::fs::write(&opt_path, &good_opt).unwrap();

    // Another rank than the checkpoint's.
    let mut other = cfg.clone();
    other.rank = 8;
    let e = resume_err(&other);
    assert!(e.contains("rank 4") && e.contains("rank 8"), "{e}");

    // The untouched checkpoint still resumes.
    train(&model, &examples(), &cfg).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The same trainer on the CUDA backend (a GPU, else the CPU emulator of kernels/emu): 20 updates
/// of the NF4 base (shared-prefix batches, LoRA dropout, clipping, cosine warm-up) follow the CPU's
/// loss curve within 1e-4 relative, and a CUDA run interrupted after update 11 and resumed from
/// its checkpoint (update 10) follows its own uninterrupted curve.
#[test]
fn a_cuda_run_follows_the_cpu_loss_curve_and_resumes() {
    use lorafleet::backend::cuda::{test_device, CudaBackend, DType};
    let Some(ops) = test_device("train on CUDA (20 updates)") else { return };
    let tmp_guard = tempfile::Builder::new().prefix("lorafleet-cuda-train-").tempdir().unwrap();
    let tmp = tmp_guard.path().to_path_buf();
    lorafleet::train::tiny::write_tiny_model(&tmp.join("model"), 3).unwrap();
    let cpu = TrainModel::load_as(&tmp.join("model"), BaseFormat::Nf4).unwrap();
    let be = CudaBackend::with_device(ops, DType::F32).expect("the CUDA backend's kernels load");
    let cuda = TrainModel::load_on(be, &tmp.join("model"), BaseFormat::Nf4).unwrap();
    let ex = examples();
    let config20 = |dir: &str| {
        let mut c = config(&tmp.join(dir), Batching::SharedPrefix);
        (c.grad_accum, c.epochs, c.step.lora_dropout) = (1, 4, 0.1);
        c
    };
    let on_cpu = train(&cpu, &ex, &config20("cpu")).unwrap();
    let on_cuda = train(&cuda, &ex, &config20("cuda")).unwrap();
    assert_eq!((on_cpu.log.len(), on_cuda.log.len()), (20, 20), "10 examples, micro-batch 2, 4 epochs");
    assert!(on_cpu.log[19].loss < on_cpu.log[0].loss, "the loss should fall");
    for (a, b) in on_cpu.log.iter().zip(&on_cuda.log) {
        assert!((a.loss - b.loss).abs() <= 1e-4 * a.loss.abs(), "update {}: loss {} on CUDA vs {} on the CPU", a.step, b.loss, a.loss);
    }
    let mut cfg = config20("cuda-split");
    cfg.stop_after = Some(11);
    train(&cuda, &ex, &cfg).unwrap();
    (cfg.stop_after, cfg.resume) = (None, Some(tmp.join("cuda-split")));
    let resumed = train(&cuda, &ex, &cfg).unwrap();
    assert_eq!(resumed.log.len(), 20);
    for (a, b) in on_cuda.log.iter().zip(&resumed.log) {
        assert!((a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(), "update {}: resumed loss {} vs {}", a.step, b.loss, a.loss);
    }
    eprintln!(
        "20 updates, NF4 base: loss {:.5} -> {:.5} on the CPU, {:.5} -> {:.5} on CUDA; resumed from update 10 on CUDA: same curve",
        on_cpu.log[0].loss, on_cpu.log[19].loss, on_cuda.log[0].loss, on_cuda.log[19].loss
    );
}
