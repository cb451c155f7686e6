//! The trainer on a fresh tiny NemotronH (`M*-M-`, untied head) whose tokenizer lacks the think
//! tokens: they are added (embedding and lm_head grown), RLP and NTP steps run, resume is exact,
//! and checkpoints are Hugging Face NemotronH directories that reload with identical logits.

mod common;

use common::{checkpoint_weights, fresh_nemotron_h, metrics, test_data, tiny_config, without_timings};
use rlp::model;
use rlp::model::init::random_model;
use rlp::train::trainer::Trainer;
use serde_json::Value;

#[test]
fn rlp_on_nemotron_h_grows_think_tokens_resumes_exactly_and_saves_hf_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let (model_path, vocab) = fresh_nemotron_h(tmp.path());
    let model_key = format!("model.path={:?}", model_path.display().to_string());
    let overrides = |extra: &[&str]| -> Vec<String> {
        let mut o = vec![model_key.clone(), "checkpoint.every=2".into(), "train.steps=4".into()];
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    };
    let cfg = |extra: &[&str]| tiny_config(&overrides(extra).iter().map(String::as_str).collect::<Vec<_>>());
    let straight = tmp.path().join("straight");
    Trainer::new(cfg(&[]), &straight, false).unwrap().run().unwrap();
    let split = tmp.path().join("split");
    Trainer::new(cfg(&["train.steps=2"]), &split, false).unwrap().run().unwrap();
    Trainer::new(cfg(&[]), &split, true).unwrap().run().unwrap();
    let m = metrics(&straight);
    assert_eq!(m.len(), 4);
    for v in &m {
        assert!(v["loss"].as_f64().is_some_and(f64::is_finite) && v["grad_norm"].as_f64().unwrap() > 0.0, "{v}");
    }
    assert_eq!(without_timings(&m), without_timings(&metrics(&split)), "resumed metrics differ");
    let (a, b) = (checkpoint_weights(&straight, 4), checkpoint_weights(&split, 4));
    assert_eq!(a, b, "resumed weights differ");
    // training moved every parameter (think-token rows included)
    let start = checkpoint_weights(&straight, 2);
    for ((name, x), (_, y)) in a.iter().zip(&start) {
        assert!(x != y, "{name} did not change between steps 2 and 4");
    }

    // the checkpoint: NemotronH config with the grown vocabulary, backbone.* tensors
    let ck = straight.join("checkpoints/step-000004");
    let cfg_json: Value = serde_json::from_str(&std::fs::read_to_string(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["architectures"][0], "NemotronHForCausalLM");
    assert_eq!(cfg_json["model_type"], "nemotron_h");
    assert_eq!(cfg_json["layers_block_type"], serde_json::json!(["linear_attention", "full_attention", "mlp", "linear_attention", "mlp"]));
    assert_eq!(cfg_json["vocab_size"].as_u64().unwrap() as usize, vocab + 2, "<think> and </think> were added");
    let tensors = model::weights::load_safetensors_dir(&ck).unwrap();
    assert_eq!(tensors["backbone.embeddings.weight"].dims(), &[vocab + 2, 64]);
    assert_eq!(tensors["lm_head.weight"].dims(), &[vocab + 2, 64]);
    assert!(tensors.contains_key("backbone.layers.0.mixer.A_log") && tensors.contains_key("backbone.norm_f.weight"));
    assert!(tensors.keys().all(|k| k.starts_with("backbone.") || k == "lm_head.weight"), "{:?}", tensors.keys());
    let back = model::weights::load(&ck).unwrap();
    let ids = vec![vec![5u32, 60, 7, vocab as u32, vocab as u32 + 1]];
    let trainer = Trainer::new(cfg(&[]), &straight, true).unwrap(); // resumes at step 4: nothing to do
    let d = (trainer.policy.forward_logits(&ids).unwrap() - back.model.forward_logits(&ids).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0, "the checkpoint reloads with other logits");
}

#[test]
fn ntp_on_nemotron_h_packs_documents_and_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let (model_path, _) = fresh_nemotron_h(tmp.path());
    let model_key = format!("model.path={:?}", model_path.display().to_string());
    let run = tmp.path().join("ntp");
    let cfg = tiny_config(&[&model_key, "objective.name=\"ntp\"", "train.steps=8", "optim.lr=3e-3", "data.max_context=64"]);
    Trainer::new(cfg, &run, false).unwrap().run().unwrap();
    let m = metrics(&run);
    let loss = |v: &Value| v["loss"].as_f64().unwrap();
    assert!(m.iter().all(|v| loss(v).is_finite()));
    assert!(loss(&m[7]) < loss(&m[0]) - 0.3, "ntp did not lower the loss: {} -> {}", loss(&m[0]), loss(&m[7]));
}

#[test]
fn init_model_writes_a_nemotron_h_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(test_data("text/sample.txt")).unwrap();
    let tok = rlp::tokenizer::train_byte_level_bpe(text.lines(), 300, &["<|endoftext|>"]).unwrap();
    let tok_path = tmp.path().join("tokenizer.json");
    tok.save(&tok_path, false).unwrap();
    let out = tmp.path().join("model");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_rlp"))
        .args(["init-model", "--arch", "nemotron-h", "--pattern", "M-*M", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--untied", "--seed", "5"])
        .arg("--tokenizer")
        .arg(&tok_path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let m = model::weights::load(&out).unwrap().model;
    assert_eq!(m.cfg.arch, model::Arch::NemotronH);
    assert_eq!(m.cfg.hybrid.as_ref().unwrap().pattern(), "M-*M");
    assert_eq!(m.cfg.vocab_size, tok.get_vocab_size(true) + 2, "think tokens are added at init");
    let fresh = random_model(&m.cfg, 5).unwrap();
    for ((n, a), (_, b)) in m.named_tensors().iter().zip(fresh.named_tensors()) {
        let (a, b): (Vec<f32>, Vec<f32>) = (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
        assert_eq!(a, b, "{n}: the saved weights are not the seed's");
    }
    // A = 1..=H, D = 1, dt = softplus(dt_bias) within [time_step_min, time_step_max]
    let t: std::collections::HashMap<String, candle_core::Tensor> = m.named_tensors().into_iter().collect();
    let a_log: Vec<f32> = t["backbone.layers.0.mixer.A_log"].to_vec1().unwrap();
    assert!(a_log.iter().enumerate().all(|(i, &x)| (x.exp() - (i + 1) as f32).abs() < 1e-4), "{a_log:?}");
    let dt_bias: Vec<f32> = t["backbone.layers.0.mixer.dt_bias"].to_vec1().unwrap();
    assert!(dt_bias.iter().all(|&b| { let dt = (b.exp() + 1.0).ln(); (0.00099..=0.1001).contains(&dt) }), "{dt_bias:?}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_rlp"))
        .args(["init-model", "--arch", "nemotron-h", "--pattern", "M*E", "--hidden", "64"])
        .arg("--tokenizer")
        .arg(&tok_path)
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--pattern"), "{}", String::from_utf8_lossy(&bad.stderr));
}
