//! Shared-prefix policy forward (`train.share_prefix`): the thoughts of one prefix packed into
//! one row give the same log-probs, loss and every parameter's gradient as one row per thought,
//! on the tiny Llama / Qwen2 / Qwen3 fixtures, with ragged prefixes and thoughts, a sampled and a
//! forced `</think>`, plain and checkpointed backward. The trainer-level comparison is in
//! tests/train.rs.

mod common;

use candle_core::{Tensor, Var};
use rlp::model::Model;
use rlp::rollout::{RolloutParams, Thought};
use rlp::sampling::SamplingParams;
use rlp::train::policy::{checkpointed_policy_backward, thought_inputs, thought_logprobs, ThoughtRow};

fn fixture(name: &str) -> (Model, Vec<Var>) {
    let (m, vars) = common::fixture_model(name).into_vars().unwrap();
    (m, vars.into_iter().map(|(_, v)| v).collect())
}

fn params(m: &Model) -> RolloutParams {
    let v = m.cfg.vocab_size as u32;
    RolloutParams {
        g: 3,
        budget: 6,
        sampling: SamplingParams { temperature: 0.8, top_p: 1.0, top_k: 0 },
        think_id: v - 2,
        end_think_id: v - 1,
        banned: vec![0],
        separator: vec![],
        guess_tokens: 0,
    }
}

/// A thought of `ids`, closed (a sampled `</think>`) or forced at the budget.
fn thought(ids: &[u32], closed: bool) -> Thought {
    let n = ids.len() + usize::from(closed);
    Thought { ids: ids.to_vec(), logp_old: (0..n).map(|i| -1.0 - 0.1 * i as f32).collect(), closed, s_pred: 0.0, guess: vec![], guess_logp_old: vec![] }
}

/// Loss Σ advantage · Σ_u logp over the thoughts, and every parameter's gradient.
fn loss_and_grads(m: &Model, vars: &[Var], rows: &[ThoughtRow], p: &RolloutParams, shared: bool, checkpointed: bool) -> (f32, Vec<Vec<f32>>) {
    let adv: Vec<f32> = (0..rows.len()).map(|i| [0.7f32, -1.3, 0.4, 1.1, -0.5][i % 5]).collect();
    let adv = Tensor::new(adv.as_slice(), m.embed.device()).unwrap();
    let loss_of = |logp: &Tensor, mask: &Tensor| (logp * mask).unwrap().sum(1).unwrap().mul(&adv).unwrap().sum_all().unwrap();
    let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let (loss, grads) = if checkpointed {
        let inp = thought_inputs(m, rows, p, false, shared).unwrap();
        let (loss, grads, _) = checkpointed_policy_backward(m, &inp, p, &tensors, 4, |lp| Ok(loss_of(&lp.logp, &lp.mask))).unwrap();
        (loss, grads)
    } else {
        let lp = thought_logprobs(m, rows, p, false, shared).unwrap();
        let loss = loss_of(&lp.logp, &lp.mask);
        let grads = loss.backward().unwrap();
        (loss, grads)
    };
    let g = tensors.iter().map(|t| grads.get(t).map_or_else(|| vec![0.0; t.elem_count()], |g| g.flatten_all().unwrap().to_vec1().unwrap())).collect();
    (loss.to_scalar().unwrap(), g)
}

fn check(name: &str) {
    let (m, vars) = fixture(name);
    let p = params(&m);
    let prefixes: [Vec<u32>; 2] = [vec![5, 9, 13, 2, 7], vec![3, 4, 8, 21, 6, 11, 17, 19, 10]];
    let thoughts = [thought(&[12, 14, 3], true), thought(&[8], false), thought(&[30, 31, 32, 33, 34, 35], false), thought(&[22, 5], true), thought(&[7, 7, 7, 7], true)];
    // contexts 0, 0, 0, 1, 1: ragged prefixes (5 and 9) and thoughts (1 to 6 tokens)
    let rows: Vec<ThoughtRow> = thoughts.iter().enumerate().map(|(i, t)| ThoughtRow { prefix: &prefixes[usize::from(i >= 3)], thought: t }).collect();

    let unshared = thought_logprobs(&m, &rows, &p, false, false).unwrap();
    let shared = thought_logprobs(&m, &rows, &p, false, true).unwrap();
    let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (unshared.logp.to_vec2().unwrap(), shared.logp.to_vec2().unwrap());
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{name}: log-prob {y} shared vs {x} unshared");
        }
    }
    assert_eq!(unshared.mask.to_vec2::<f32>().unwrap(), shared.mask.to_vec2::<f32>().unwrap());
    // fewer tokens through the forward: each prefix once
    assert_eq!(unshared.forward_tokens - shared.forward_tokens, 2 * prefixes[0].len() + prefixes[1].len(), "{name}");

    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    for checkpointed in [false, true] {
        let (l0, g0) = loss_and_grads(&m, &vars, &rows, &p, false, checkpointed);
        let (l1, g1) = loss_and_grads(&m, &vars, &rows, &p, true, checkpointed);
        assert!((l0 - l1).abs() <= 1e-5 * l0.abs().max(1.0), "{name}: loss {l1} shared vs {l0}");
        assert!(g0.iter().any(|g| norm(g) > 0.0), "{name}: zero gradient, nothing compared");
        for (i, (x, y)) in g0.iter().zip(&g1).enumerate() {
            let diff: Vec<f32> = x.iter().zip(y).map(|(a, b)| a - b).collect();
            let rel = norm(&diff) / norm(x).max(1e-30);
            assert!(rel <= 1e-5, "{name}: parameter {i} gradient differs by {rel:e} relative (checkpointed {checkpointed})");
        }
    }
}

#[test]
fn shared_prefix_matches_unshared_on_tiny_llama() {
    check("tiny-llama");
}

#[test]
fn shared_prefix_matches_unshared_on_tiny_qwen2() {
    check("tiny-qwen2");
}

#[test]
fn shared_prefix_matches_unshared_on_tiny_qwen3() {
    check("tiny-qwen3");
}
