//! The RLP trainer end to end on the tiny config: it optimises its objective, micro-batching
//! does not change the gradient, resume is exact, checkpoints reload, bad input is refused.

mod common;

use common::{checkpoint_weights, config, config_path, metrics, test_data, tiny_config, without_timings};
use rlp::config::TrainConfig;
use rlp::model;
use rlp::train::trainer::Trainer;
use serde_json::Value;
use std::path::Path;

/// RLP on `tests/data/tiny-think`, a tiny model pretrained by rlp on arithmetic text with
/// worked solutions in thoughts, on 4 fixed entropy-filtered contexts (`configs/tiny-think.toml`).
/// (On a random model the information gain of a thought is noise, and no such test is honest.)
#[test]
fn rlp_raises_the_reasoned_score_repeatably() {
    let runs: Vec<Vec<Value>> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            Trainer::new(config("tiny-think.toml", &[]), dir.path(), false).unwrap().run().unwrap();
            metrics(dir.path())
        })
        .collect();
    assert_eq!(without_timings(&runs[0]), without_timings(&runs[1]), "same seed, different metrics");
    let m = &runs[0];
    assert_eq!(m.len(), 16);
    let mean = |r: &[Value], k: &str| r.iter().map(|v| v[k].as_f64().unwrap()).sum::<f64>() / r.len() as f64;
    let (first, last) = (&m[..4], &m[12..]);
    let (r0, r1) = (mean(first, "reward_mean"), mean(last, "reward_mean"));
    let (s0, s1) = (mean(first, "s_pred_mean"), mean(last, "s_pred_mean"));
    assert!(r1 > r0 + 1.0, "reward did not rise: {r0:.3} -> {r1:.3}");
    assert!(s1 > s0 + 1.0, "S_pred did not rise: {s0:.3} -> {s1:.3}");
    for v in m {
        for k in ["step", "lr", "reward_mean", "reward_std", "s_pred_mean", "s_ema_mean", "adv_abs_mean", "frac_zero_std_groups", "thought_len_mean", "thought_truncated_frac", "clip_frac_low", "clip_frac_high", "ratio_mean", "entropy", "loss", "grad_norm", "ema_drift", "tokens_per_s_sample", "tokens_per_s_train", "step_s", "sample_s", "score_s", "train_s", "optimizer_s"] {
            assert!(v[k].is_number(), "metric {k} missing or not a number in {v}");
        }
        // one PPO epoch: the policy is the behaviour policy, so the ratio is 1
        assert!((v["ratio_mean"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn gradient_does_not_depend_on_micro_batching() {
    let dir = tempfile::tempdir().unwrap();
    // B = 2 contexts × G = 4 = 8 thoughts
    let mut t = Trainer::new(tiny_config(&["data.contexts_per_step=2"]), dir.path(), false).unwrap();
    let batch = t.rollout_batch().unwrap();
    let idx: Vec<usize> = (0..8).collect();
    let grads: Vec<Vec<Vec<f32>>> = [8, 4, 1]
        .iter()
        .map(|&micro| {
            let pg = t.policy_gradient(&batch, &idx, 8, micro).unwrap();
            t.vars.iter().map(|(_, v)| pg.grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect()
        })
        .collect();
    // ‖g_a − g_b‖ / ‖g_a‖ per parameter tensor
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    for (name, i) in t.vars.iter().map(|(n, _)| n).zip(0..) {
        for other in &grads[1..] {
            let diff: Vec<f32> = grads[0][i].iter().zip(&other[i]).map(|(x, y)| x - y).collect();
            let rel = norm(&diff) / norm(&grads[0][i]).max(1e-30);
            assert!(rel < 1e-6, "{name}: micro-batched gradient differs by {rel:e} relative");
        }
    }
}

#[test]
fn gradient_checkpointing_and_a_chunked_head_give_the_same_policy_gradient() {
    let dir = tempfile::tempdir().unwrap();
    // with the KL term too, so the chunked head's loss is more than the surrogate
    let mut t = Trainer::new(tiny_config(&["data.contexts_per_step=2", "objective.kl_coef=0.1"]), dir.path(), false).unwrap();
    let batch = t.rollout_batch().unwrap();
    let idx: Vec<usize> = (0..8).collect();
    let mut runs = Vec::new();
    // (checkpointing, micro-batch, head chunk): one chunk for all tokens, and chunks of 5
    for (checkpointed, micro, chunk) in [(false, 8, 0), (true, 8, 100_000), (true, 3, 100_000), (true, 8, 5), (true, 3, 5)] {
        t.cfg.train.grad_checkpoint = checkpointed;
        t.cfg.train.logprob_chunk = chunk;
        let pg = t.policy_gradient(&batch, &idx, 8, micro).unwrap();
        let g: Vec<Vec<f32>> = t.vars.iter().map(|(_, v)| pg.grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
        runs.push((pg.loss, pg.entropy, g));
    }
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let (loss, entropy, plain) = &runs[0];
    assert!(plain.iter().any(|g| norm(g) > 0.0), "the plain gradient is zero: nothing is compared");
    for (l, e, other) in &runs[1..] {
        // ρ = 1 on the first epoch and advantages sum to 0 per group: the loss itself is ~0
        assert!((l - loss).abs() <= 1e-6, "loss {l} vs {loss}");
        assert!((e - entropy).abs() <= 1e-6 * entropy.abs(), "entropy {e} vs {entropy}");
        for ((name, _), (a, b)) in t.vars.iter().zip(plain.iter().zip(other)) {
            let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let rel = norm(&diff) / norm(a).max(1e-30);
            assert!(rel < 1e-5, "{name}: checkpointed gradient differs by {rel:e} relative");
        }
    }
}

#[test]
fn sharing_the_prefix_gives_the_same_policy_gradient() {
    let dir = tempfile::tempdir().unwrap();
    // 3 contexts × G = 4, ragged prefixes and thoughts, with the KL term
    let mut t = Trainer::new(tiny_config(&["data.contexts_per_step=3", "objective.kl_coef=0.1"]), dir.path(), false).unwrap();
    let batch = t.rollout_batch().unwrap();
    let lens: Vec<usize> = batch.contexts.iter().map(|c| c.prefix.len()).collect();
    assert!(lens.iter().any(|&l| l != lens[0]), "prefixes are not ragged: {lens:?}");
    let idx: Vec<usize> = (0..12).collect();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    // (checkpointing, micro-batch): micro-batches of 5 split contexts between them
    for (checkpointed, micro) in [(false, 12), (false, 5), (true, 12), (true, 5)] {
        t.cfg.train.grad_checkpoint = checkpointed;
        let mut runs = Vec::new();
        for share in [false, true] {
            t.cfg.train.share_prefix = share;
            let pg = t.policy_gradient(&batch, &idx, 12, micro).unwrap();
            let g: Vec<Vec<f32>> = t.vars.iter().map(|(_, v)| pg.grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
            runs.push((pg.loss, pg.entropy, pg.kl, pg.forward_tokens, g));
        }
        let ((l0, e0, k0, f0, g0), (l1, e1, k1, f1, g1)) = (&runs[0], &runs[1]);
        assert!((l0 - l1).abs() <= 1e-6 && (e0 - e1).abs() <= 1e-5 * e0.abs() && (k0 - k1).abs() <= 1e-5 * k0.abs().max(1e-6), "loss/entropy/kl {l1} {e1} {k1} vs {l0} {e0} {k0}");
        assert!(f1 < f0, "sharing did not cut the forward tokens: {f1} vs {f0}");
        assert!(g0.iter().any(|g| norm(g) > 0.0), "the gradient is zero: nothing is compared");
        for ((name, _), (a, b)) in t.vars.iter().zip(g0.iter().zip(g1)) {
            let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let rel = norm(&diff) / norm(a).max(1e-30);
            assert!(rel < 1e-5, "{name}: shared-prefix gradient differs by {rel:e} relative (checkpointed {checkpointed}, micro {micro})");
        }
    }
}

#[test]
fn resume_is_exact() {
    let straight = tempfile::tempdir().unwrap();
    Trainer::new(tiny_config(&["checkpoint.every=3"]), straight.path(), false).unwrap().run().unwrap();
    let split = tempfile::tempdir().unwrap();
    Trainer::new(tiny_config(&["checkpoint.every=3", "train.steps=3"]), split.path(), false).unwrap().run().unwrap();
    // a refused restart without --resume leaves the run untouched
    assert!(Trainer::new(tiny_config(&["checkpoint.every=3"]), split.path(), false).is_err());
    Trainer::new(tiny_config(&["checkpoint.every=3"]), split.path(), true).unwrap().run().unwrap();
    assert_eq!(without_timings(&metrics(straight.path())), without_timings(&metrics(split.path())));
    assert_eq!(checkpoint_weights(straight.path(), 6), checkpoint_weights(split.path(), 6));
    let samples = |p: &Path| std::fs::read_to_string(p.join("samples.jsonl")).unwrap();
    assert_eq!(samples(straight.path()), samples(split.path()));
}

#[test]
fn checkpoint_is_a_model_directory_that_reloads_with_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(tiny_config(&["train.steps=2"]), dir.path(), false).unwrap();
    t.run().unwrap();
    let ck = dir.path().join("checkpoints/step-000002");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "trainer_state.json", "trainer_state.safetensors"] {
        assert!(ck.join(f).exists(), "{f} missing from the checkpoint");
    }
    let back = model::weights::load(&ck).unwrap().model;
    let ids = vec![vec![5u32, 60, 7, 398, 399]];
    let a = t.policy.forward_logits(&ids).unwrap();
    let b = back.forward_logits(&ids).unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0);
}

fn train_err(overrides: &[&str], run: &Path) -> String {
    let cfg = tiny_config(overrides);
    match Trainer::new(cfg, run, false) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // empty corpus
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = train_err(&[&format!("data.path={:?}", empty.display().to_string())], &run);
    assert!(e.contains("empty") || e.contains("no .txt or .jsonl"), "{e}");
    // a JSONL line without `text`
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine line one two three four five six\"}\n{\"body\": \"x\"}\n").unwrap();
    let e = train_err(&[&format!("data.path={:?}", bad.display().to_string())], &run);
    assert!(e.contains("bad.jsonl:2") && e.contains("text"), "{e}");
    // unreadable corpus path
    let e = train_err(&["data.path=\"/nonexistent/corpus\""], &run);
    assert!(e.contains("/nonexistent/corpus"), "{e}");
    // a model without think tokens when adding them is forbidden
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(test_data("tiny-rlp").join(f), plain.join(f)).unwrap();
    }
    let tok = rlp::tokenizer::train_byte_level_bpe(["a b c d e f g"].iter(), 300, &["<|endoftext|>"]).unwrap();
    tok.save(plain.join("tokenizer.json"), false).unwrap();
    let e = train_err(&[&format!("model.path={:?}", plain.display().to_string()), "model.add_think_tokens=false"], &run);
    assert!(e.contains("<think>") && e.contains("add_think_tokens"), "{e}");
    assert!(!run.exists(), "a refused run must not create its run directory");
}

#[test]
fn config_errors_name_the_key() {
    let path = config_path("tiny.toml");
    let e = format!("{:#}", TrainConfig::load(&path, &["rollout.gg=3".into()]).unwrap_err());
    assert!(e.contains("gg"), "{e}");
    let e = format!("{:#}", TrainConfig::load(&path, &["rollout.g=1".into()]).and_then(|c| c.validate().map(|_| c)).unwrap_err());
    assert!(e.contains("rollout.g"), "{e}");
}

#[test]
fn periodic_eval_logs_heldout_loss_and_think_metrics() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(tiny_config(&["logging.eval_every=3"]), dir.path(), false).unwrap().run().unwrap();
    let m = metrics(dir.path());
    for v in &m {
        let step = v["step"].as_u64().unwrap();
        for k in ["eval_nll", "eval_acc_no_think", "eval_acc_think", "eval_info_gain"] {
            if step % 3 == 0 {
                assert!(v[k].as_f64().is_some_and(f64::is_finite), "step {step}: {k} = {}", v[k]);
            } else {
                assert!(v.get(k).is_none(), "step {step} has {k}");
            }
        }
    }
    // a random model: loss near ln(vocab) = ln 400 ≈ 6
    assert!((m[2]["eval_nll"].as_f64().unwrap() - 400f64.ln()).abs() < 1.0);
}
