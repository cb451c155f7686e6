//! Rollouts: thoughts respect the masks and the budget, behaviour log-probs and S_pred agree
//! with the full differentiable forward, and sampling is reproducible.

mod common;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rlp::model::{target_logprobs, Model};
use rlp::rollout::{no_think_scores, sample_thoughts, Prompt, RolloutParams};
use rlp::sampling::{tempered_logprobs, SamplingParams};

fn tiny() -> Model {
    common::fixture_model("tiny-llama").detached().unwrap()
}

fn params(end_think_id: u32, budget: usize, temperature: f32) -> RolloutParams {
    RolloutParams {
        g: 4,
        budget,
        sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0 },
        think_id: 510,
        end_think_id,
        banned: vec![2, 510],
        separator: vec![],
        guess_tokens: 0,
    }
}

fn last_logprob(m: &Model, seq: &[u32], target: u32) -> f32 {
    let logits = m.forward_logits(&[seq.to_vec()]).unwrap().squeeze(0).unwrap();
    let last = logits.get(seq.len() - 1).unwrap().unsqueeze(0).unwrap();
    target_logprobs(&last, &Tensor::new(&[target], &Device::Cpu).unwrap()).unwrap().to_vec1::<f32>().unwrap()[0]
}

#[test]
fn thoughts_respect_budget_masks_and_score_like_the_full_forward() {
    // A peaky copy of the random model (lm_head ×60), with `</think>` set to the token its greedy
    // thought reaches third: some rollouts close themselves, others run into the budget.
    let base = tiny();
    let mut w: std::collections::HashMap<String, Tensor> = base.named_tensors().into_iter().collect();
    let head = (w["lm_head.weight"].clone() * 60.0).unwrap();
    w.insert("lm_head.weight".into(), head);
    let m = Model::from_tensors(base.cfg.clone(), w, "peaky").unwrap();
    let greedy = m.generate(&[vec![7, 8, 9, 510]], 3, None, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0)).unwrap();
    let end = greedy[0][2];
    let mut p = params(end, 6, 1.0);
    p.g = 8;
    p.separator = vec![13];
    let prefixes = [vec![7u32, 8, 9], vec![100, 200, 300, 400, 500]];
    let prompts: Vec<Prompt> = prefixes.iter().map(|x| Prompt { prefix: x, target: 42 }).collect();
    let rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut rngs = vec![rng.clone(), rng];
    let out = sample_thoughts(&m, &prompts, &p, &mut rngs).unwrap();
    assert_eq!(out.len(), 2);
    let (mut closed, mut forced) = (0, 0);
    for (b, group) in out.iter().enumerate() {
        assert_eq!(group.len(), 8);
        for t in group {
            assert!(!t.ids.is_empty() && t.ids.len() <= 6, "thought length {}", t.ids.len());
            assert!(t.ids.iter().all(|x| ![2, 510, end].contains(x)), "banned token in {:?}", t.ids);
            assert_eq!(t.logp_old.len(), t.ids.len() + usize::from(t.closed));
            if t.closed { closed += 1 } else { forced += 1; assert_eq!(t.ids.len(), 6) }
            // S_pred from the rollout cache equals the full forward over the whole sequence
            let seq = [prefixes[b].as_slice(), &[510], &t.ids, &[end, 13]].concat();
            let want = last_logprob(&m, &seq, 42);
            assert!((t.s_pred - want).abs() < 1e-4, "S_pred {} vs {want}", t.s_pred);
            // behaviour log-probs equal the tempered, masked distribution of the full forward
            let ctx = [prefixes[b].as_slice(), &[510], &t.ids].concat();
            let logits = m.forward_logits(&[ctx.clone()]).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            let start = prefixes[b].len(); // position of `<think>`: its logits give thought token 0
            for (u, &lp) in t.logp_old.iter().enumerate() {
                let tok = if u < t.ids.len() { t.ids[u] } else { end };
                let want = tempered_logprobs(&logits[start + u], 1.0, &p.banned_at(u))[tok as usize] as f32;
                assert!((lp - want).abs() < 1e-4, "logp_old[{u}] {lp} vs {want}");
            }
        }
    }
    assert!(closed > 0 && forced > 0, "both endings should occur (closed {closed}, forced {forced})");
}

#[test]
fn rollouts_are_reproducible_for_a_seed() {
    let m = tiny();
    let prefix = vec![1u32, 2, 3, 4];
    let prompts = [Prompt { prefix: &prefix, target: 5 }];
    let p = params(511, 5, 0.7);
    let run = |seed| sample_thoughts(&m, &prompts, &p, &mut [rand_chacha::ChaCha8Rng::seed_from_u64(seed)]).unwrap();
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn no_think_score_is_the_prefix_logprob() {
    let m = tiny();
    let (a, b) = (vec![3u32, 4, 5], vec![9u32, 8]);
    let prompts = [Prompt { prefix: &a, target: 6 }, Prompt { prefix: &b, target: 7 }];
    let s = no_think_scores(&m, &prompts).unwrap();
    assert!((s[0] - last_logprob(&m, &a, 6)).abs() < 1e-4);
    assert!((s[1] - last_logprob(&m, &b, 7)).abs() < 1e-4);
}

#[test]
fn per_context_rngs_make_thoughts_independent_of_the_batch() {
    // What data-parallel ranks rely on: a context sampled alone gives the thoughts it gets as
    // part of a larger batch, when its RNG comes from (seed, step, global index) alone.
    use rlp::rollout::context_rng;
    let m = tiny();
    let p = params(511, 5, 1.0);
    let prefixes = [vec![7u32, 8, 9], vec![100, 200, 300, 400, 500], vec![3, 4, 5, 6, 7, 8, 9, 10]];
    let prompts: Vec<Prompt> = prefixes.iter().map(|x| Prompt { prefix: x, target: 42 }).collect();
    let mut rngs: Vec<_> = (0..3).map(|b| context_rng(9, 2, b)).collect();
    let together = sample_thoughts(&m, &prompts, &p, &mut rngs).unwrap();
    for b in 0..3 {
        let alone = sample_thoughts(&m, &prompts[b..b + 1], &p, &mut [context_rng(9, 2, b as u64)]).unwrap();
        for (x, y) in together[b].iter().zip(&alone[0]) {
            assert_eq!(x.ids, y.ids, "context {b}: thoughts differ alone and in a batch");
            assert!((x.s_pred - y.s_pred).abs() < 1e-5, "context {b}: S_pred {} vs {}", x.s_pred, y.s_pred);
        }
    }
    let other_batch = sample_thoughts(&m, &prompts[..1], &p, &mut [context_rng(9, 3, 0)]).unwrap();
    let ids = |g: &[rlp::rollout::Thought]| g.iter().map(|t| t.ids.clone()).collect::<Vec<_>>();
    assert_ne!(ids(&together[0]), ids(&other_batch[0]), "another step must draw other thoughts");
    assert!(sample_thoughts(&m, &prompts, &p, &mut rngs[..2]).is_err());
}

#[test]
fn decode_rows_gives_every_row_its_own_logits_while_rows_leave_the_batch() {
    // Three ragged prompts decoded greedily for 4, 1 and 3 tokens: rows leave the batch at
    // different steps, and each must still see exactly the logits of decoding it alone.
    let m = tiny();
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 42], vec![7], vec![100, 3, 9, 250, 11]];
    let lengths = [4usize, 1, 3];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .zip(lengths)
        .map(|(p, n)| m.generate(&[p.clone()], n, None, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0)).unwrap().remove(0))
        .collect();
    let cap = prompts.iter().map(|p| p.len()).max().unwrap() + 4;
    let (logits, cache) = m.prefill(&prompts, cap).unwrap();
    let rows: Vec<(usize, Vec<u32>)> = (0..prompts.len()).map(|r| (r, vec![])).collect();
    let mut out = vec![vec![]; prompts.len()];
    let mut calls = 0;
    m.decode_rows(cache, logits.to_vec2::<f32>().unwrap(), rows, |(r, got), l| {
        calls += 1;
        got.push(rlp::sampling::argmax(l));
        if got.len() == lengths[*r] {
            out[*r] = std::mem::take(got);
            return Ok(None);
        }
        Ok(Some(*got.last().unwrap()))
    })
    .unwrap();
    assert_eq!(out, alone);
    assert_eq!(calls, 4 + 1 + 3, "a finished row is not asked again");
}
