//! Everything else on a NemotronH: a fresh tiny hybrid model (`M*-M-`, untied head, think tokens
//! added) runs RPT, SFT and RLVR through the trainer; gradient checkpointing (with and without a
//! chunked head) gives the gradients, losses and updates of the plain backward; bf16 compute
//! runs and stays within bf16 rounding of f32; and `rlp eval`'s held-out NLL, think-vs-no-think
//! and jsonl tasks give sane numbers on a NemotronH checkpoint.
//!
//! Two fixtures are built once per test binary (under CARGO_TARGET_TMPDIR): the fresh model, and
//! that model after 12 SFT steps on the tally pairs, which has learnt the tally vocabulary and to
//! close its thoughts, so that RPT's and RLVR's rewards are not all equal (on a random model they
//! are all 0 and every gradient vanishes: nothing would be tested).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{checkpoint_dir, dir_weights, fresh_nemotron_h, metrics, named_weights, repo, single_thread_config, tiny_config};
use rlp::data::sft::{load_sft, sft_batch, tokenize_sft, ChatTemplate, SftPacker};
use rlp::eval::cli::{load_model, run_eval, EvalArgs};
use rlp::model;
use rlp::objective::sft::sft_loss;
use rlp::train::trainer::Trainer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SFT_STEPS: usize = 12;

/// A fresh directory under this test binary's scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nemotron_h_objectives").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fresh model, built once.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| fresh_nemotron_h(&scratch("base")).0)
}

fn model_key(path: &Path) -> String {
    format!("model.path={:?}", path.display().to_string())
}

fn sft_sets(model: &Path) -> Vec<String> {
    let steps = format!("train.steps={SFT_STEPS}");
    let every = format!("logging.eval_every={SFT_STEPS}");
    [model_key(model), steps, every].into_iter().chain(["data.contexts_per_step=4", "data.max_context=64", "optim.lr=3e-3", "optim.warmup_steps=0", "optim.schedule=\"constant\""].map(String::from)).collect()
}

/// The SFT run from `base()` (its run directory), built once: its last checkpoint is the model
/// RPT, RLVR and eval start from.
fn sft_run() -> &'static Path {
    static SFT: OnceLock<PathBuf> = OnceLock::new();
    SFT.get_or_init(|| {
        let run = scratch("sft");
        let sets = sft_sets(base());
        let cfg = single_thread_config("post-sft.toml", &sets.iter().map(String::as_str).collect::<Vec<_>>());
        Trainer::new(cfg, &run, false).unwrap().run().unwrap();
        run
    })
}

fn sft_model() -> PathBuf {
    checkpoint_dir(sft_run(), SFT_STEPS as u64)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// ‖a − b‖ / ‖a‖.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&d) / norm(a).max(1e-30)
}

/// Every tensor moved between `before` and `after` (names in the same order).
fn assert_all_moved(before: &[(String, Vec<f32>)], after: &[(String, Vec<f32>)], what: &str) {
    assert_eq!(before.len(), after.len());
    for ((n, a), (m, b)) in before.iter().zip(after) {
        assert_eq!(n, m);
        assert!(a != b, "{what}: {n} did not change");
    }
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("metric {k} missing or not a number in {v}"))
}

// ---------------------------------------------------------------- objectives

/// SFT on the tally pairs: step 1's logged loss is the response-token NLL of the packed windows
/// as the library computes it from the model as loaded (think tokens added), the loss falls,
/// the held-out response NLL is logged, and every parameter moves.
#[test]
fn sft_on_nemotron_h_trains_the_response_tokens() {
    let run = sft_run();
    let m = metrics(run);
    assert_eq!(m.len(), SFT_STEPS);
    // step 1 by hand: the trainer's windows from the same seed, the same masks
    let sets = sft_sets(base());
    let cfg = single_thread_config("post-sft.toml", &sets.iter().map(String::as_str).collect::<Vec<_>>());
    let (model, tok) = model::weights::load_for_thinking(&cfg.model.path, true, "test").unwrap();
    assert!(tok.added_think_tokens, "the fixture's tokenizer must lack the think tokens");
    let recs = load_sft(&cfg.data.path).unwrap();
    let tpl = cfg.model.path.join("tokenizer_config.json");
    let template = if tpl.exists() { ChatTemplate::from_tokenizer_config(&tpl).unwrap() } else { None };
    let docs = tokenize_sft(&tok, &recs[..recs.len() - cfg.data.heldout_docs], template.as_ref(), Some(64)).unwrap();
    let mut packer = SftPacker::new(docs.tokens.len(), cfg.train.seed, tok.eos_ids[0]).unwrap();
    let windows: Vec<_> = (0..4).map(|_| packer.next_window(&docs, 64).unwrap()).collect();
    let (ids, targets, mask, layout) = sft_batch(&windows, true, &Device::Cpu).unwrap();
    let logits = model.logits(&model.forward_hidden(&ids, &layout, None).unwrap()).unwrap();
    let want = sft_loss(&logits, &targets, &mask).unwrap().to_scalar::<f32>().unwrap() as f64;
    let all_tokens = sft_loss(&logits, &targets, &mask.ones_like().unwrap()).unwrap().to_scalar::<f32>().unwrap() as f64;
    let got = num(&m[0], "loss");
    assert!((got - want).abs() <= 1e-5 * want, "step 1 loss {got}, response NLL by hand {want}");
    assert!((all_tokens - want).abs() > 1e-3, "prompt tokens would not change the loss ({all_tokens} vs {want}): the comparison proves little");
    // it learns: from about ln V to well below
    let (first, last) = (num(&m[0], "loss"), num(&m[SFT_STEPS - 1], "loss"));
    eprintln!("sft: loss {first:.3} -> {last:.3}, held-out response nll {:.3}", num(&m[SFT_STEPS - 1], "heldout_response_nll"));
    assert!(first > 5.0 && last < first - 2.0, "sft loss {first:.3} -> {last:.3}");
    let heldout = num(&m[SFT_STEPS - 1], "heldout_response_nll");
    assert!(heldout.is_finite() && heldout < first - 1.5, "held-out response NLL {heldout:.3} (step 1 loss {first:.3})");
    // the checkpoint has the grown vocabulary; the model as loaded here grew it the same way
    assert_all_moved(&named_weights(&model), &dir_weights(&sft_model()), "sft");
}

/// RLVR from the SFT checkpoint, thinking first, with a KL term and a format reward: rewards
/// differ within groups, the first update's ratio is 1, the KL is finite, and weights move.
#[test]
fn rlvr_on_nemotron_h_from_its_sft_checkpoint() {
    let start = sft_model();
    let run = scratch("rlvr");
    let key = model_key(&start);
    let cfg = single_thread_config("post-rlvr.toml", &[&key, "data.contexts_per_step=4", "rollout.g=4", "objective.kl_coef=0.05", "objective.rlvr_format_weight=0.5", "train.steps=2", "optim.lr=1e-3", "optim.warmup_steps=0"]);
    Trainer::new(cfg, &run, false).unwrap().run().unwrap();
    let m = metrics(&run);
    assert_eq!(m.len(), 2);
    for v in &m {
        eprintln!("rlvr: {v}");
        assert!(num(v, "loss").is_finite() && num(v, "grad_norm") > 0.0, "{v}");
        assert!((0.0..=1.0).contains(&num(v, "accuracy")) && (0.0..=1.0).contains(&num(v, "frac_zero_std_groups")), "{v}");
        assert!(num(v, "frac_zero_std_groups") < 1.0, "every group had equal rewards: no gradient is tested: {v}");
        assert!(num(v, "kl").is_finite() && num(v, "kl") >= 0.0, "{v}");
    }
    // the SFT model closes some thoughts and answers with numbers
    assert!(num(&m[0], "no_answer_frac") < 1.0 && num(&m[0], "thought_truncated_frac") < 1.0, "{}", m[0]);
    assert!((num(&m[0], "ratio_mean") - 1.0).abs() < 1e-5, "{}", m[0]);
    assert_eq!(num(&m[0], "kl"), 0.0, "the first step's policy is the reference");
    assert_all_moved(&dir_weights(&start), &dir_weights(&checkpoint_dir(&run, 2)), "rlvr");
}

/// A corpus of the tally pairs as plain text (thought markers dropped): text the SFT model
/// predicts, so RPT's exact-match rewards are sometimes 1.
fn tally_corpus(dir: &Path) -> PathBuf {
    let path = dir.join("tally.jsonl");
    let lines: String = load_sft(&repo("tests/data/post/sft.jsonl"))
        .unwrap()
        .iter()
        .take(40)
        .map(|r| match &r.example {
            rlp::data::sft::SftExample::Pair { prompt, response } => {
                let text = format!("{prompt}{}", response.replace("<think>", "").replace("</think>", ""));
                serde_json::json!({ "text": text }).to_string() + "\n"
            }
            other => panic!("{other:?}"),
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// RPT (binary next-token rewards) on a NemotronH from the SFT checkpoint: rewards are 1 exactly
/// when the guess is the true next token and differ between samples, one PPO epoch is on-policy
/// (ratio 1), the loss is finite, and every parameter moves.
#[test]
fn rpt_on_nemotron_h_rewards_exact_guesses_and_trains() {
    let start = sft_model();
    let run = scratch("rpt");
    let corpus = format!("data.path={:?}", tally_corpus(&scratch("rpt-data")).display().to_string());
    let key = model_key(&start);
    let cfg = tiny_config(&[&key, &corpus, "objective.name=\"rpt\"", "objective.advantage=\"grpo\"", "train.steps=2", "rollout.thought_budget=4", "logging.samples_every=1", "data.min_prefix=3"]);
    Trainer::new(cfg, &run, false).unwrap().run().unwrap();
    let samples: Vec<Value> = std::fs::read_to_string(run.join("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(samples.len(), 2 * 4 * 4);
    let mut hits = 0;
    for s in &samples {
        let r = num(s, "reward");
        assert!(r == 0.0 || r == 1.0, "RPT reward {r}");
        assert_eq!(r == 1.0, s["guess"] == s["x_t"], "{s}");
        hits += (r == 1.0) as usize;
    }
    eprintln!("rpt: {hits} of {} guesses right", samples.len());
    assert!(hits > 0 && hits < samples.len(), "{hits} of {} guesses right: the rewards do not differ", samples.len());
    let m = metrics(&run);
    assert_eq!(m.len(), 2);
    for v in &m {
        assert!(num(v, "loss").is_finite() && num(v, "grad_norm") > 0.0, "{v}");
        assert!((num(v, "ratio_mean") - 1.0).abs() < 1e-4, "{v}");
    }
    assert_all_moved(&dir_weights(&start), &dir_weights(&checkpoint_dir(&run, 2)), "rpt");
}

// ---------------------------------------------------------------- gradient checkpointing

/// Every parameter's gradient as a flat vector, in `t.vars` order.
fn grads_of(t: &Trainer, grads: &candle_core::backprop::GradStore) -> Vec<Vec<f32>> {
    t.vars.iter().map(|(n, v)| grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {n}")).flatten_all().unwrap().to_vec1().unwrap()).collect()
}

fn assert_same_grads(t: &Trainer, plain: &[Vec<f32>], other: &[Vec<f32>], what: &str) {
    assert!(plain.iter().all(|g| norm(g) > 0.0), "{what}: a parameter's plain gradient is zero: nothing is compared for it");
    for ((name, _), (a, b)) in t.vars.iter().zip(plain.iter().zip(other)) {
        let r = rel(a, b);
        eprintln!("{what}: {name} checkpointed gradient relative difference {r:e}");
        assert!(r <= 1e-5, "{what}: {name}: gradient differs by {r:e} relative");
    }
}

/// RLP's policy gradient on NemotronH with per-block checkpointing, with and without micro-
/// batches and a chunked head (`train.logprob_chunk`), equals the plain backward's.
#[test]
fn gradient_checkpointing_gives_the_same_rlp_gradient_on_nemotron_h() {
    let key = model_key(base());
    let mut t = Trainer::new(tiny_config(&[&key, "data.contexts_per_step=2", "objective.kl_coef=0.1"]), &scratch("ckpt-rlp"), false).unwrap();
    let batch = t.rollout_batch().unwrap();
    let idx: Vec<usize> = (0..8).collect();
    let mut runs = Vec::new();
    // (checkpointing, micro-batch, head chunk): one chunk for all tokens, and chunks of 5
    for (checkpointed, micro, chunk) in [(false, 8, 0), (true, 8, 100_000), (true, 3, 5)] {
        t.cfg.train.grad_checkpoint = checkpointed;
        t.cfg.train.logprob_chunk = chunk;
        let pg = t.policy_gradient(&batch, &idx, 8, micro).unwrap();
        runs.push((pg.loss, pg.entropy, grads_of(&t, &pg.grads)));
    }
    let (loss, entropy, plain) = &runs[0];
    for (l, e, other) in &runs[1..] {
        assert!((l - loss).abs() <= 1e-6 && (e - entropy).abs() <= 1e-5 * entropy.abs(), "loss {l} vs {loss}, entropy {e} vs {entropy}");
        assert_same_grads(&t, plain, other, "rlp");
    }
}

/// Step 1 of `name` from `model` with and without `train.grad_checkpoint`: the logged loss and
/// grad norm, and each parameter's update, agree to 1e-5 relative.
fn assert_checkpointed_step_is_the_same(name: &str, model: &Path, sets: &[&str]) {
    let key = model_key(model);
    let step = |checkpointed: bool| {
        let run = scratch(&format!("ckpt-{}-{checkpointed}", name.trim_end_matches(".toml")));
        let ckpt = format!("train.grad_checkpoint={checkpointed}");
        let all: Vec<&str> = [&key, "train.steps=1", &ckpt].into_iter().chain(sets.iter().copied()).collect();
        Trainer::new(single_thread_config(name, &all), &run, false).unwrap().run().unwrap();
        (metrics(&run).remove(0), dir_weights(&checkpoint_dir(&run, 1)))
    };
    let ((m0, w0), (m1, w1)) = (step(false), step(true));
    for k in ["loss", "grad_norm"] {
        let (a, b) = (num(&m0, k), num(&m1, k));
        assert!(a > 0.0 && (a - b).abs() <= 1e-5 * a, "{name}: {k} {a} plain vs {b} checkpointed");
    }
    let start = dir_weights(model);
    for (((n, s), (_, a)), (_, b)) in start.iter().zip(&w0).zip(&w1) {
        let da: Vec<f32> = a.iter().zip(s).map(|(x, y)| x - y).collect();
        let db: Vec<f32> = b.iter().zip(s).map(|(x, y)| x - y).collect();
        assert!(norm(&da) > 0.0, "{name}: {n} did not move");
        let r = rel(&da, &db);
        eprintln!("{name}: {n} checkpointed update relative difference {r:e}");
        assert!(r <= 1e-5, "{name}: {n}: the checkpointed update differs by {r:e} relative");
    }
}

#[test]
fn gradient_checkpointing_takes_the_same_ntp_and_sft_steps_on_nemotron_h() {
    // from the SFT checkpoint: it carries the think tokens, so step 1's checkpoint and the start
    // have the same tensors to subtract
    let start = sft_model();
    assert_checkpointed_step_is_the_same("tiny.toml", &start, &["objective.name=\"ntp\"", "data.max_context=64"]);
    assert_checkpointed_step_is_the_same("post-sft.toml", &start, &["data.contexts_per_step=4", "data.max_context=64", "train.micro_batch=2", "optim.warmup_steps=0"]);
}

/// RLVR's gradient (clipped surrogate + KL to the model as loaded) with checkpointing equals
/// the plain one, on a batch sampled from the SFT checkpoint.
#[test]
fn gradient_checkpointing_gives_the_same_rlvr_gradient_on_nemotron_h() {
    let key = model_key(&sft_model());
    let cfg = single_thread_config("post-rlvr.toml", &[&key, "data.contexts_per_step=4", "rollout.g=4", "objective.kl_coef=0.05", "objective.rlvr_format_weight=0.5"]);
    let mut t = Trainer::new(cfg, &scratch("ckpt-rlvr"), false).unwrap();
    let batch = t.rlvr_batch().unwrap();
    assert!(batch.advantages.iter().any(|&a| a != 0.0), "every advantage is 0: the gradient is 0 and nothing is compared");
    let idx: Vec<usize> = (0..16).collect();
    let mut runs = Vec::new();
    for checkpointed in [false, true] {
        t.cfg.train.grad_checkpoint = checkpointed;
        let pg = t.rlvr_gradient(&batch, 0, &idx, 16).unwrap();
        runs.push((pg.loss, grads_of(&t, &pg.grads)));
    }
    assert!((runs[0].0 - runs[1].0).abs() <= 1e-6, "loss {} vs {}", runs[0].0, runs[1].0);
    assert_same_grads(&t, &runs[0].1, &runs[1].1, "rlvr");
}

// ---------------------------------------------------------------- bf16 compute

fn log_softmax_rows(logits: &Tensor) -> Vec<Vec<f32>> {
    candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), 1).unwrap().to_vec2().unwrap()
}

/// `train.compute_dtype = "bf16"` on NemotronH: the forward (weights and activations in bf16;
/// the SSM scan, log-softmax and losses in f32) stays within bf16 rounding of f32, one NTP step
/// logs the f32 step's loss and grad norm to within that rounding, RLP runs end to end, and its
/// policy gradient through the differentiable bf16 cast is close to the f32 one.
///
/// Tolerances: bf16 keeps 8 significant bits, a unit roundoff of u = 2⁻⁹ ≈ 2e-3 per rounding.
/// Each weight and each block's input and output is rounded; over the 5 blocks these errors add
/// roughly as a random walk, so log-probs (≈ −ln V ≈ −5.7 here) move by a few u: measured max
/// |Δ log p| 9.2e-3, mean 1.4e-3 (bounds 3e-2, 5e-3). The NTP loss averages 256 such errors of
/// both signs: measured 1.2e-6 relative (bound u); its grad norm 5.6e-4 (bound 5e-3). The RLP
/// policy gradient is Σ Aᵢ ∇log p over thoughts whose advantages sum to 0 per group, so the
/// per-thought rounding is amplified by that cancellation: measured 1.2e-2 relative overall and
/// 3.6e-2 for the worst tensor (a Mamba `A_log`, whose gradient is small); bounds 5e-2 and 0.15.
/// A dropped or mis-cast gradient path is off by O(1).
#[test]
fn bf16_compute_on_nemotron_h_stays_within_bf16_rounding_of_f32() {
    let (m, tok) = model::weights::load_for_thinking(base(), true, "test").unwrap();
    let text = std::fs::read_to_string(repo("tests/data/text/sample.txt")).unwrap();
    let ids: Vec<u32> = tok.encode(&text).unwrap().into_iter().take(64).collect();
    let f32_lp = log_softmax_rows(&m.forward_logits(&[ids.clone()]).unwrap());
    let bf16 = m.to_dtype(DType::BF16).unwrap();
    assert_eq!(bf16.dtype(), DType::BF16);
    let bf16_lp = log_softmax_rows(&bf16.forward_logits(&[ids.clone()]).unwrap());
    let (mut max, mut sum, mut n) = (0f32, 0f64, 0usize);
    for (a, b) in f32_lp.iter().flatten().zip(bf16_lp.iter().flatten()) {
        assert!(b.is_finite());
        max = max.max((a - b).abs());
        sum += (a - b).abs() as f64;
        n += 1;
    }
    let mean = sum / n as f64;
    eprintln!("bf16 vs f32 log-probs: max |Δ| {max:.5}, mean {mean:.5}");
    assert!(max > 0.0, "the bf16 forward equals the f32 one: it did not run in bf16");
    assert!(max < 3e-2 && mean < 5e-3, "bf16 log-probs are off by up to {max} (mean {mean})");

    // one NTP step in each dtype
    let key = model_key(base());
    let step = |dtype: &str| {
        let run = scratch(&format!("bf16-ntp-{dtype}"));
        let d = format!("train.compute_dtype=\"{dtype}\"");
        Trainer::new(tiny_config(&[&key, "objective.name=\"ntp\"", "train.steps=1", "data.max_context=64", &d]), &run, false).unwrap().run().unwrap();
        metrics(&run).remove(0)
    };
    let (a, b) = (step("f32"), step("bf16"));
    let close = |k: &str, tol: f64| {
        let (x, y) = (num(&a, k), num(&b, k));
        eprintln!("ntp step 1 {k}: f32 {x}, bf16 {y}, relative {:e}", (x - y).abs() / x);
        assert!(y.is_finite() && (x - y).abs() <= tol * x.abs(), "{k}: f32 {x}, bf16 {y}");
        assert!(x != y, "{k}: bf16 gave exactly the f32 value: it did not run in bf16");
    };
    close("loss", 2e-3);
    close("grad_norm", 5e-3);

    // RLP in bf16 end to end: rollouts by the bf16 cached decode, the update by the bf16 forward
    let run = scratch("bf16-rlp");
    Trainer::new(tiny_config(&[&key, "train.steps=2", "train.compute_dtype=\"bf16\"", "data.contexts_per_step=2"]), &run, false).unwrap().run().unwrap();
    let m = metrics(&run);
    assert_eq!(m.len(), 2);
    for v in &m {
        assert!(num(v, "loss").is_finite() && num(v, "grad_norm") > 0.0 && num(v, "reward_mean").is_finite() && num(v, "entropy").is_finite(), "{v}");
    }

    // the policy gradient of one rollout batch through the bf16 cast against f32
    let mut t = Trainer::new(tiny_config(&[&key, "data.contexts_per_step=2"]), &scratch("bf16-grad"), false).unwrap();
    let batch = t.rollout_batch().unwrap();
    let idx: Vec<usize> = (0..8).collect();
    let full = grads_of(&t, &t.policy_gradient(&batch, &idx, 8, 8).unwrap().grads);
    t.compute_dtype = DType::BF16;
    let half = grads_of(&t, &t.policy_gradient(&batch, &idx, 8, 8).unwrap().grads);
    let (all_f, all_h): (Vec<f32>, Vec<f32>) = (full.concat(), half.concat());
    let r = rel(&all_f, &all_h);
    let worst = t.vars.iter().zip(full.iter().zip(&half)).map(|((n, _), (a, b))| (rel(a, b), n.clone())).fold((0.0, String::new()), |m, x| if x.0 > m.0 { x } else { m });
    eprintln!("bf16 vs f32 policy gradient: {r:e} relative overall, worst {worst:?}");
    assert!(r > 0.0, "the bf16 gradient equals the f32 one: it did not run in bf16");
    assert!(r < 5e-2 && worst.0 < 0.15, "bf16 policy gradient off by {r:e} overall, {worst:?}");
}

// ---------------------------------------------------------------- eval

fn eval_args(model: &Path, task: &str, out: &Path, data: &Path) -> EvalArgs {
    EvalArgs {
        model: Some(model.to_path_buf()),
        task: task.to_string(),
        config: None,
        run: None,
        limit: Some(6),
        samples: Some(3),
        think_budget: Some(16),
        answer_tokens: 4,
        temperature: Some(0.7),
        top_p: Some(1.0),
        out: Some(out.to_path_buf()),
        seed: Some(7),
        data: Some(data.to_path_buf()),
        heldout_docs: Some(4),
        text_field: Some("text".into()),
        min_prefix: Some(4),
        max_context: Some(32),
        add_think_tokens: false,
        batch: 4,
        device: "cpu".into(),
    }
}

/// `rlp eval` on NemotronH checkpoints: held-out NLL (equal to a one-row-at-a-time computation,
/// and far below the fresh model's ≈ ln V after SFT on the same text), think vs no-think
/// (info gain is their difference, the no-think log-prob is the rollout scorer's), and a jsonl
/// task (deterministic, scores in [0, 1], the SFT model answers with numbers).
#[test]
fn eval_on_nemotron_h_checkpoints() {
    let ck = sft_model();
    let out = scratch("eval");
    let corpus = tally_corpus(&out);

    // held-out NLL: the SFT checkpoint against the fresh model (think tokens added untrained)
    let mut a = eval_args(&ck, "nll", &out.join("nll.json"), &corpus);
    a.limit = Some(60);
    let trained = run_eval(&a).unwrap().metrics;
    let mut a = eval_args(base(), "nll", &out.join("nll-base.json"), &corpus);
    a.limit = Some(60);
    a.add_think_tokens = true;
    let fresh = run_eval(&a).unwrap().metrics;
    let ln_v = 302f64.ln();
    eprintln!("eval nll: sft checkpoint {:.3}, fresh {:.3}", trained["nll"], fresh["nll"]);
    assert!((fresh["nll"] - ln_v).abs() < 1.0, "a random model's nll {} is not near ln V = {ln_v:.2}", fresh["nll"]);
    assert!(trained["nll"] < fresh["nll"] - 1.5, "sft checkpoint nll {} vs fresh {}", trained["nll"], fresh["nll"]);
    for m in [&trained, &fresh] {
        assert_eq!(m["tokens"], 60.0);
        assert!((m["ppl"] - m["nll"].exp()).abs() < 1e-6 * m["ppl"], "{m:?}");
    }

    // the library's NLL over ragged documents (right-padded batches) against one row at a time
    let (model, tok) = load_model(&ck, false, true).unwrap();
    let docs: Vec<Vec<u32>> = ["tally a5 b6 c9 is a5 b1 c0 0.", "tally a2 b9 c0 d3 e5 f1 is a2 b1 c1 d4 e9 f0 0.", "tally a1 is 1."].iter().map(|s| tok.encode(s).unwrap()).collect();
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let m = rlp::eval::nll_eval(&model, &tok, &refs, 64).unwrap();
    let (mut nll, mut n) = (0f64, 0usize);
    for d in &docs {
        let lp = log_softmax_rows(&model.forward_logits(&[d[..d.len() - 1].to_vec()]).unwrap());
        for (i, &target) in d[1..].iter().enumerate() {
            nll -= lp[i][target as usize] as f64;
            n += 1;
        }
    }
    assert_eq!(m["tokens"] as usize, n);
    assert!((m["nll"] - nll / n as f64).abs() < 1e-4, "nll_eval {} vs one row at a time {}", m["nll"], nll / n as f64);

    // think vs no think
    let r = run_eval(&eval_args(&ck, "think", &out.join("think.json"), &corpus)).unwrap();
    let t = &r.metrics;
    eprintln!("eval think: {t:?}");
    for k in ["acc_no_think", "acc_think", "acc_think_best", "thought_closed_frac"] {
        assert!((0.0..=1.0).contains(&t[k]), "{k} = {}", t[k]);
    }
    assert!(t.values().all(|v| v.is_finite()), "{t:?}");
    assert!((t["info_gain"] - (t["logp_think"] - t["logp_no_think"])).abs() < 1e-9);
    assert!(t["logp_no_think"] < 0.0 && t["logp_think_best"] >= t["logp_think"] - 1e-9);
    assert!(t["thought_len_mean"] >= 1.0 && t["thought_len_max"] <= 16.0);
    let contexts = vec![rlp::eval::HeldOut { prefix: tok.encode("tally a5 b6 c9 is a5 b1").unwrap(), target: tok.encode(" c0").unwrap()[0] }];
    let p = rlp::rollout::RolloutParams::for_tokenizer(&tok, model.cfg.vocab_size, 2, 4, rlp::sampling::SamplingParams { temperature: 0.7, top_p: 1.0, top_k: 0 });
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let m = rlp::eval::think_eval(&model, &contexts, &p, &mut rng).unwrap();
    let s = rlp::rollout::no_think_scores(&model, &[rlp::rollout::Prompt { prefix: &contexts[0].prefix, target: contexts[0].target }]).unwrap();
    let by_hand = log_softmax_rows(&model.forward_logits(&[contexts[0].prefix.clone()]).unwrap());
    let want = by_hand.last().unwrap()[contexts[0].target as usize] as f64;
    assert!((m["logp_no_think"] - want).abs() < 1e-4 && (s[0] as f64 - want).abs() < 1e-4, "logp_no_think {} / scorer {} / forward {want}", m["logp_no_think"], s[0]);

    // a jsonl task of tally questions
    let task = format!("jsonl:{}", repo("tests/data/post/rlvr.jsonl").display());
    let a = run_eval(&eval_args(&ck, &task, &out.join("a.json"), &corpus)).unwrap();
    let b = run_eval(&eval_args(&ck, &task, &out.join("b.json"), &corpus)).unwrap();
    assert_eq!((&a.metrics, &a.examples), (&b.metrics, &b.examples), "same seed, other numbers");
    assert_eq!(a.n, 6);
    eprintln!("eval jsonl: {:?}", a.metrics);
    for k in ["greedy", "pass@1", "no_answer_frac", "thought_closed_frac"] {
        assert!((0.0..=1.0).contains(&a.metrics[k]), "{k} = {:?}", a.metrics.get(k));
    }
    assert!(a.metrics["no_answer_frac"] < 1.0, "the SFT checkpoint gave no readable answer: {:?}", a.metrics);
}
