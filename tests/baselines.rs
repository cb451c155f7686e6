//! The paper's baselines in the same trainer: NTP (compute-matched CPT) and RPT, the packing
//! mask, compute accounting and `rlp plan`.

mod common;

use candle_core::{Device, Tensor};
use common::{config, config_path, fixture_model, metrics};
use rlp::config::TrainConfig;
use rlp::model::AttnLayout;
use rlp::train::trainer::Trainer;
use serde_json::Value;

#[test]
fn ntp_lowers_heldout_loss_and_counts_its_compute() {
    let dir = tempfile::tempdir().unwrap();
    // a random model (tiny-rlp) on the synthetic text: next-token loss has far to fall
    let corpus = format!("data.path={:?}", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-think/train.jsonl"));
    let cfg = config("tiny.toml", &["objective.name=\"ntp\"", &corpus, "data.heldout_docs=20", "train.steps=25", "optim.lr=3e-3", "data.max_context=64"]);
    let mut t = Trainer::new(cfg, dir.path(), false).unwrap();
    let heldout_nll = |t: &Trainer| {
        let docs: Vec<&[u32]> = (0..t.data.heldout.len()).map(|i| t.data.heldout.tokens(i)).collect();
        let m = rlp::eval::nll_eval(&t.policy.detached().unwrap(), &t.tok, &docs, 64).unwrap();
        (m["nll"], m["tokens"] as usize)
    };
    let (before, n) = heldout_nll(&t);
    t.run().unwrap();
    let (after, _) = heldout_nll(&t);
    assert!(n > 500, "too few held-out tokens: {n}");
    assert!(after < before - 0.5, "held-out loss {before:.4} -> {after:.4}");
    let m = metrics(dir.path());
    assert_eq!(m.len(), 25);
    // 4 windows of 64 tokens per step, 6·N-style FLOPs that grow every step
    assert_eq!(m[0]["input_tokens_total"], 256);
    let flops: Vec<f64> = m.iter().map(|v| v["flops_total"].as_f64().unwrap()).collect();
    assert!(flops.windows(2).all(|w| w[1] > w[0]), "flops_total must grow every step");
    let shape = rlp::flops::ModelShape::from_config(&t.policy.cfg);
    let want = rlp::flops::train_flops(&shape, 64, 256);
    assert!((flops[0] - want).abs() < 1e-6 * want, "{} vs {want}", flops[0]);
}

#[test]
fn ntp_with_gradient_checkpointing_takes_the_same_step() {
    let corpus = format!("data.path={:?}", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-think/train.jsonl"));
    let first_step = |checkpointed: bool| {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = format!("train.grad_checkpoint={checkpointed}");
        let cfg = config("tiny.toml", &["objective.name=\"ntp\"", &corpus, "train.steps=1", "data.max_context=64", &ckpt]);
        Trainer::new(cfg, dir.path(), false).unwrap().run().unwrap();
        metrics(dir.path()).remove(0)
    };
    let (plain, ckpt) = (first_step(false), first_step(true));
    for key in ["loss", "grad_norm"] {
        let (a, b) = (plain[key].as_f64().unwrap(), ckpt[key].as_f64().unwrap());
        assert!(a > 0.0 && (a - b).abs() <= 1e-5 * a, "{key}: {a} plain vs {b} checkpointed");
    }
}

#[test]
fn packed_windows_do_not_attend_across_documents() {
    let m = fixture_model("tiny-think");
    let (a, b) = (vec![5u32, 9, 12, 40, 7], vec![33u32, 8, 21, 6]);
    let packed: Vec<u32> = [a.clone(), vec![0], b.clone()].concat();
    let segs: Vec<u32> = [vec![0u32; 6], vec![1u32; 4]].concat();
    let ids = Tensor::from_vec(packed.clone(), (1, packed.len()), &Device::Cpu).unwrap();
    let hidden = m.forward_hidden(&ids, &AttnLayout::segmented(&[segs], packed.len()), None).unwrap();
    let got = m.logits(&hidden).unwrap().squeeze(0).unwrap().narrow(0, 6, 4).unwrap();
    let alone = m.forward_logits(&[b]).unwrap().squeeze(0).unwrap();
    let d = (got - alone).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "the second document saw the first: {d}");
    // without the mask the second document does see the first
    let hidden = m.forward_hidden(&ids, &AttnLayout::right_padded(&[packed.len()], packed.len()), None).unwrap();
    let mixed = m.logits(&hidden).unwrap().squeeze(0).unwrap().narrow(0, 6, 4).unwrap();
    let alone = m.forward_logits(&[vec![33u32, 8, 21, 6]]).unwrap().squeeze(0).unwrap();
    assert!((mixed - alone).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3);
}

#[test]
fn rpt_rewards_are_binary_prefix_matches() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("tiny-think.toml", &["objective.name=\"rpt\"", "objective.advantage=\"grpo\"", "train.steps=2", "rollout.thought_budget=8", "logging.samples_every=1"]);
    Trainer::new(cfg, dir.path(), false).unwrap().run().unwrap();
    let samples: Vec<Value> = std::fs::read_to_string(dir.path().join("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(samples.len(), 2 * 4 * 8);
    for s in &samples {
        let r = s["reward"].as_f64().unwrap();
        assert!(r == 0.0 || r == 1.0, "RPT reward {r}");
        // reward 1 exactly when the guess is the true next token (one guess token)
        assert_eq!(r == 1.0, s["guess"] == s["x_t"], "{s}");
    }
    let m = metrics(dir.path());
    assert_eq!(m.len(), 2);
    // thought and guess log-probs in the update come from the distribution the sampler drew from
    for v in &m {
        assert!((v["ratio_mean"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{v}");
    }
}

#[test]
fn plan_reproduces_the_papers_cpt_budget() {
    let exe = env!("CARGO_BIN_EXE_rlp");
    let out = std::process::Command::new(exe).args(["plan", "--shape", "qwen3-1.7b", "--steps", "200", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // the paper: 512 docs/step, G = 16, 2048-token thoughts, 200 steps, 170M input tokens -> ≈ 6B CPT tokens
    let paper = v["cpt_tokens_paper_formula"].as_f64().unwrap();
    assert!((5.5e9..6.5e9).contains(&paper), "paper formula gives {paper:e}");
    let input = v["input_tokens"].as_f64().unwrap();
    assert!((input - 170e6).abs() < 1e6, "input tokens {input:e}");
    for k in ["flops_total", "cpt_tokens_flop_parity"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
    // --set works as in rlp train, and --emit-cpt writes a loadable ntp config
    let tmp = tempfile::tempdir().unwrap();
    let cpt = tmp.path().join("cpt.toml");
    let cfg = config_path("tiny-think.toml");
    let out = std::process::Command::new(exe)
        .args(["plan", "--config", cfg.to_str().unwrap(), "--set", "rollout.g=4", "--json", "--emit-cpt", cpt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["g"], 4);
    let c = TrainConfig::load(&cpt, &[]).unwrap();
    assert_eq!(c.objective.name, rlp::config::ObjectiveName::Ntp);
    let tokens = c.objective.ntp_tokens_per_step.unwrap() as f64 * c.train.steps as f64;
    assert!(tokens >= v["cpt_tokens_flop_parity"].as_f64().unwrap());
}
