//! Devices and compute dtypes on the CPU: a CPU-only build refuses `cuda` at once and says how
//! to get a CUDA build; bf16 compute (f32 master weights, weights cast at use) gives gradients
//! close to f32 compute and trains with finite losses.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{config_path, metrics, next_token_logprobs, tiny_config};
use rlp::config::TrainConfig;
use rlp::model::{self, AttnLayout, Model};
use rlp::train::trainer::Trainer;
use serde_json::Value;
use std::path::Path;

const TINY: &str = "tests/data/tiny-rlp";

/// The message every CPU-only refusal of a GPU must carry.
#[cfg(not(feature = "cuda"))]
fn says_how_to_build_cuda(msg: &str) {
    assert!(msg.contains("built without CUDA") && msg.contains("--features cuda") && msg.contains("scripts/build-cuda.sh"), "unhelpful message: {msg}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_refuses_cuda_in_the_trainer_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    for dev in ["cuda", "cuda:1"] {
        let cfg = tiny_config(&[&format!("train.device=\"{dev}\"")]);
        cfg.validate().unwrap(); // a valid name: the build, not the config, is at fault
        let err = Trainer::new(cfg, &run, false).err().expect("a CPU build must refuse cuda");
        says_how_to_build_cuda(&format!("{err:#}"));
        assert!(!run.exists(), "the run directory was created before the device was checked");
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_refuses_cuda_on_the_command_line() {
    let exe = env!("CARGO_BIN_EXE_rlp");
    let cases: [&[&str]; 4] = [
        &["score", "--model", TINY, "--ids", "1,2,3", "--device", "cuda"],
        &["generate", "--model", TINY, "--ids", "1,2,3", "--device", "cuda:0"],
        &["eval", "--model", TINY, "--task", "nll", "--data", "tests/data/corpus/small", "--device", "cuda"],
        &["bench", "forward", "--model", TINY, "--device", "cuda"],
    ];
    for args in cases {
        let out = std::process::Command::new(exe).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        says_how_to_build_cuda(&String::from_utf8_lossy(&out.stderr));
    }
    // and the CPU still works through the same flag
    let out = std::process::Command::new(exe).args(["score", "--model", TINY, "--ids", "1,2,3", "--device", "cpu"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_device_and_dtype_names_are_config_errors() {
    for (set, key) in [("train.device=\"gpu\"", "train.device"), ("train.compute_dtype=\"f16\"", "train.compute_dtype")] {
        let err = match TrainConfig::load(&config_path("tiny.toml"), &[set.to_string()]) {
            Ok(cfg) => format!("{:#}", cfg.validate().unwrap_err()),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(key), "{set}: the error does not name {key}: {err}");
    }
}

/// Summed next-token log-prob of right-padded rows under `m` (its own dtype), as an f32 loss.
fn nll_loss(m: &Model, rows: &[Vec<u32>]) -> Tensor {
    let (ids, lens, t) = model::transformer::pad_right(rows, m.device()).unwrap();
    let logits = m.logits(&m.forward_hidden(&ids, &AttnLayout::right_padded(&lens, t), None).unwrap()).unwrap(); // [B, T, V]
    assert_eq!(logits.dtype(), DType::F32, "logits must come back f32 whatever the compute dtype");
    let mut loss = Tensor::zeros((), DType::F32, m.device()).unwrap();
    for (b, r) in rows.iter().enumerate() {
        let lp = next_token_logprobs(&logits.get(b).unwrap(), r); // [len − 1]
        loss = (loss - lp.sum_all().unwrap()).unwrap();
    }
    loss
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (d / n.max(1e-30)).sqrt()
}

#[test]
fn bf16_compute_gives_f32_gradients_close_to_f32_compute() {
    let (policy, vars) = model::weights::load(Path::new(TINY)).unwrap().model.into_vars().unwrap();
    let v = policy.cfg.vocab_size as u32;
    let rows: Vec<Vec<u32>> = (0..3).map(|r| (0..(20 - 3 * r)).map(|i| (7 + 31 * i as u32 + 13 * r as u32) % v).collect()).collect();
    let f32_loss = nll_loss(&policy, &rows);
    let g32 = f32_loss.backward().unwrap();
    let bf16 = policy.to_dtype(DType::BF16).unwrap();
    assert_eq!(bf16.dtype(), DType::BF16);
    let bf16_loss = nll_loss(&bf16, &rows);
    let g16 = bf16_loss.backward().unwrap();
    let (l32, l16) = (f32_loss.to_scalar::<f32>().unwrap(), bf16_loss.to_scalar::<f32>().unwrap());
    assert!((l32 - l16).abs() / l32.abs() < 1e-2, "loss f32 {l32} vs bf16 {l16}");
    assert_ne!(l32, l16, "the bf16 forward computed exactly the f32 loss: was it run in bf16 at all?");
    let mut worst = (0f64, String::new());
    for (name, var) in &vars {
        let a: &Var = var;
        assert_eq!(a.dtype(), DType::F32, "{name}: master weight not f32");
        let want = g32.get(a.as_tensor()).unwrap_or_else(|| panic!("{name}: no f32 gradient"));
        let got = g16.get(a.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient through the bf16 cast"));
        assert_eq!(got.dtype(), DType::F32, "{name}: the gradient of an f32 master weight must be f32");
        let r = rel_l2(got, want);
        if r > worst.0 {
            worst = (r, name.clone());
        }
        assert!(r < 2e-2, "{name}: bf16 gradient differs from f32 by {r:.2e} (relative L2)");
    }
    eprintln!("largest relative L2 gradient difference bf16 vs f32: {:.2e} ({})", worst.0, worst.1);
}

/// Gradient checkpointing through the bf16 cast: the per-block backward passes reach the f32
/// master weights through the cast, and their gradients are the plain bf16 backward's.
#[test]
fn bf16_compute_with_gradient_checkpointing_gives_the_plain_gradients() {
    let (policy, vars) = model::weights::load(Path::new(TINY)).unwrap().model.into_vars().unwrap();
    let v = policy.cfg.vocab_size as u32;
    let rows: Vec<Vec<u32>> = (0..3).map(|r| (0..(20 - 3 * r)).map(|i| (5 + 29 * i as u32 + 11 * r as u32) % v).collect()).collect();
    let bf16 = policy.to_dtype(DType::BF16).unwrap();
    let (ids, lens, t) = model::transformer::pad_right(&rows, &Device::Cpu).unwrap();
    let layout = AttnLayout::right_padded(&lens, t);
    let loss_of = |hidden: &Tensor| -> anyhow::Result<Tensor> { Ok(candle_nn::ops::log_softmax(&bf16.logits(hidden)?, 2)?.mean_all()?) };
    let plain = loss_of(&bf16.forward_hidden(&ids, &layout, None).unwrap()).unwrap().backward().unwrap();
    let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
    let (_, ckpt) = bf16.checkpointed_backward(&ids, &layout, &params, loss_of).unwrap();
    for (name, var) in &vars {
        let want = plain.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no plain gradient"));
        let got = ckpt.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no checkpointed gradient through the bf16 cast"));
        assert_eq!(got.dtype(), DType::F32, "{name}: gradient not f32");
        let r = rel_l2(got, want);
        assert!(r < 1e-3, "{name}: checkpointed bf16 gradient differs by {r:.2e} (relative L2)");
    }
}

#[test]
fn bf16_decode_matches_f32_greedy_on_a_short_continuation() {
    let m = model::weights::load(Path::new(TINY)).unwrap().model.detached().unwrap();
    let prompts = vec![vec![5u32, 9, 14, 3], vec![11, 2]];
    let (l32, mut c32) = m.prefill(&prompts, 8).unwrap();
    let bf = m.to_dtype(DType::BF16).unwrap();
    let (l16, mut c16) = bf.prefill(&prompts, 8).unwrap();
    assert_eq!(l16.dtype(), DType::F32);
    let rel = rel_l2(&l16, &l32);
    assert!(rel > 0.0 && rel < 2e-2, "prefill logits bf16 vs f32: relative L2 {rel:.2e}");
    let next = [1u32, 2];
    let d32 = m.decode_step(&next, &mut c32).unwrap();
    let d16 = bf.decode_step(&next, &mut c16).unwrap();
    let rel = rel_l2(&d16, &d32);
    assert!(rel < 2e-2, "decode-step logits bf16 vs f32: relative L2 {rel:.2e}");
}

#[test]
fn training_with_bf16_compute_runs_with_finite_losses_and_f32_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(&["train.compute_dtype=\"bf16\"", "train.steps=3"]);
    let mut t = Trainer::new(cfg, dir.path(), false).unwrap();
    assert_eq!(t.compute_dtype, DType::BF16);
    let before: Vec<Vec<f32>> = t.vars.iter().map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap()).collect();
    t.run().unwrap();
    let m = metrics(dir.path());
    assert_eq!(m.len(), 3);
    for v in &m {
        assert_eq!(v["skipped"], Value::Bool(false), "a bf16 step was skipped: {v}");
        for k in ["loss", "grad_norm", "reward_mean", "s_pred_mean", "entropy"] {
            assert!(v[k].as_f64().is_some_and(f64::is_finite), "{k} not finite: {v}");
        }
        // sampler (bf16 copy, KV cache) and trainer (bf16 cast, full forward) see the same policy
        let ratio = v["ratio_mean"].as_f64().unwrap();
        assert!((ratio - 1.0).abs() < 0.05, "policy ratio {ratio} on the first epoch: sampler and trainer disagree");
    }
    for (name, var) in &t.vars {
        assert_eq!(var.dtype(), DType::F32, "{name}: master weight not f32 after training");
    }
    let after: Vec<Vec<f32>> = t.vars.iter().map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap()).collect();
    assert_ne!(before, after, "three bf16 steps left the weights unchanged");
    // the checkpoint holds f32 weights and reloads
    let ck = dir.path().join("checkpoints/step-000003");
    let st = candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(st.values().all(|t| t.dtype() == DType::F32), "checkpoint weights not f32");
    let state = candle_core::safetensors::load(ck.join("trainer_state.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(state.keys().any(|k| k.starts_with("adam.m.")) && state.keys().any(|k| k.starts_with("ema.")));
    assert!(state.values().all(|t| t.dtype() == DType::F32), "AdamW moments or EMA not f32");
}
