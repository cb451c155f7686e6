//! The policy's log-probabilities of sampled thought tokens (and RPT guess tokens), with gradient: one forward over
//! `prefix + <think> + thought`, logits only at thought positions.
//!
//! The distribution is the sampler's: logits / temperature, with the rollout's banned tokens
//! removed (`</think>` too at the first thought position). Removing a set S from a softmax gives
//! log p'(x) = log p(x) − log(1 − Σ_{s∈S} p(s)), which is what is computed here, so that the
//! ratio π_θ / π_θold is exactly 1 on the first PPO epoch up to float rounding.

use crate::model::grad_store::{empty_grad_store, take_grads};
use crate::model::{AttnLayout, Model};
use crate::rollout::{RolloutParams, Thought};
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var, D};

/// One thought to score: its context's prefix and the thought.
pub struct ThoughtRow<'a> {
    pub prefix: &'a [u32],
    pub thought: &'a Thought,
}

pub struct ThoughtLogprobs {
    /// [N, U] log π_θ of each loss-carrying token (0 on padding), differentiable.
    pub logp: Tensor,
    /// [N, U] 1 on loss-carrying tokens.
    pub mask: Tensor,
    /// [N, U] behaviour log-probs (for a forced `</think>` with gradient, the current value).
    pub logp_old: Tensor,
    /// Sum over loss-carrying tokens of the policy's entropy (nats), no gradient.
    pub entropy_sum: f64,
    pub n_tokens: usize,
    /// Tokens through the forward (prefix + thought), for throughput.
    pub forward_tokens: usize,
}

/// Which distribution a trained token was drawn from (see the module docs).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ban {
    /// First thought token: the rollout's banned tokens and `</think>`.
    FirstThought,
    /// Later thought tokens and a sampled `</think>`: the rollout's banned tokens.
    Thought,
    /// RPT guess tokens: like the first thought token (`RolloutParams::banned_in_guess`).
    Guess,
}

/// One token that carries the policy gradient: its offset after `<think>`, its id, where it
/// was drawn from, and its behaviour log-prob (None: forced, use the current value).
struct Trained {
    offset: usize,
    token: u32,
    ban: Ban,
    logp_old: Option<f32>,
}

/// The tokens of a rollout that carry the policy gradient: the sampled thought tokens, a
/// sampled `</think>` (a forced one only with `grad_on_forced_end`), and RPT guess tokens.
/// Completion after `<think>`: thought, `</think>`, separator, guess.
fn trained_tokens(t: &Thought, p: &RolloutParams, grad_on_forced_end: bool) -> Vec<Trained> {
    let mut out = Vec::with_capacity(t.ids.len() + 1 + t.guess.len());
    for (u, &tok) in t.ids.iter().enumerate() {
        let ban = if u == 0 { Ban::FirstThought } else { Ban::Thought };
        out.push(Trained { offset: u, token: tok, ban, logp_old: Some(t.logp_old[u]) });
    }
    if t.closed || grad_on_forced_end {
        out.push(Trained { offset: t.ids.len(), token: p.end_think_id, ban: Ban::Thought, logp_old: t.logp_old.get(t.ids.len()).copied().filter(|_| t.closed) });
    }
    let guess_start = t.ids.len() + 1 + p.separator.len();
    for (j, (&tok, &lp)) in t.guess.iter().zip(&t.guess_logp_old).enumerate() {
        out.push(Trained { offset: guess_start + j, token: tok, ban: Ban::Guess, logp_old: Some(lp) });
    }
    out
}

/// Number of tokens of a rollout that carry the policy gradient.
pub fn grad_len(t: &Thought, p: &RolloutParams, grad_on_forced_end: bool) -> usize {
    trained_tokens(t, p, grad_on_forced_end).len()
}

/// The policy forward's inputs for a batch of thoughts: token rows and where the hidden state
/// predicting each trained token sits.
///
/// Unshared, each thought is its own right-padded row `prefix <think> completion`. Shared, the
/// thoughts of one prefix are packed into one row, `prefix (<think> completion_1) (<think>
/// completion_2) …`: a branch's tokens sit at the positions they would have after the prefix
/// alone and see the prefix and their own branch only, so every trained token gets exactly the
/// hidden state it gets unshared, and the prefix's gradient is the sum over its thoughts.
pub struct ThoughtInputs {
    /// [R, T] token ids (R rows: thoughts, or distinct prefixes when shared) and their layout.
    pub ids: Tensor,
    pub layout: AttnLayout,
    trained: Vec<Vec<Trained>>,
    /// [M] flat index (row * T + position) of the hidden state predicting each trained token.
    rows_idx: Vec<u32>,
    /// [M] the trained tokens.
    targets: Vec<u32>,
    /// Per `Ban` kind, [M] 1.0 where the token was drawn from that distribution.
    weights: [Vec<f32>; 3],
    /// [N, U] index into the M trained tokens (M = padding).
    slot: Vec<u32>,
    u_max: usize,
    forward_tokens: usize,
}

/// Log-probs of the thoughts' trained tokens under `model`, with gradient.
pub fn thought_logprobs(model: &Model, rows: &[ThoughtRow], p: &RolloutParams, grad_on_forced_end: bool, share_prefix: bool) -> Result<ThoughtLogprobs> {
    let inp = thought_inputs(model, rows, p, grad_on_forced_end, share_prefix)?;
    let hidden = model.forward_hidden(&inp.ids, &inp.layout, None)?; // [R, T, D]
    logprobs_from_hidden(model, &inp, &hidden, p)
}

/// Whether the policy forward shares prefixes on a model of `cfg` when `train.share_prefix` asks.
/// A Mamba-2 scan runs along the row, so branches packed after one another would see each other
/// through the SSM state: hybrid (NemotronH) models keep one row per thought.
pub fn prefix_is_shared(cfg: &crate::model::Config, requested: bool) -> bool {
    requested && cfg.arch != crate::model::Arch::NemotronH
}

/// Which thoughts share one input row of the policy forward: with `share`, all thoughts whose
/// prefixes are equal (in order of first appearance), else one row each. `prefixes[i]` is
/// thought i's prefix; returns the thought indices of each row. FLOP accounting counts the
/// rows this gives, so it counts what runs.
pub fn packed_rows(prefixes: &[&[u32]], share: bool) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = Vec::new();
    for (i, p) in prefixes.iter().enumerate() {
        match rows.iter_mut().find(|r| share && prefixes[r[0]] == *p) {
            Some(r) => r.push(i),
            None => rows.push(vec![i]),
        }
    }
    rows
}

/// One input row: a prefix and the thoughts (indices into `rows`) that branch off it.
struct PackedRow<'a> {
    prefix: &'a [u32],
    branches: Vec<usize>,
}

/// The input rows and the trained tokens' bookkeeping for `rows` (no forward yet).
pub fn thought_inputs(model: &Model, rows: &[ThoughtRow], p: &RolloutParams, grad_on_forced_end: bool, share_prefix: bool) -> Result<ThoughtInputs> {
    let dev = model.embed.device().clone();
    let n = rows.len();
    let trained: Vec<Vec<Trained>> = rows.iter().map(|r| trained_tokens(r.thought, p, grad_on_forced_end)).collect();
    let u_max = trained.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    // A branch: <think>, then the completion up to the token before the last trained one.
    let branches: Vec<Vec<u32>> = rows
        .iter()
        .zip(&trained)
        .map(|(r, tr)| {
            let completion: Vec<u32> = r.thought.ids.iter().copied().chain([p.end_think_id]).chain(p.separator.iter().copied()).chain(r.thought.guess.iter().copied()).collect();
            let upto = tr.last().map_or(0, |t| t.offset);
            std::iter::once(p.think_id).chain(completion[..upto].iter().copied()).collect()
        })
        .collect();
    let prefixes: Vec<&[u32]> = rows.iter().map(|r| r.prefix).collect();
    let packed: Vec<PackedRow> = packed_rows(&prefixes, prefix_is_shared(&model.cfg, share_prefix))
        .into_iter()
        .map(|branches| PackedRow { prefix: rows[branches[0]].prefix, branches })
        .collect();
    let lens: Vec<usize> = packed.iter().map(|q| q.prefix.len() + q.branches.iter().map(|&i| branches[i].len()).sum::<usize>()).collect();
    let t_max = *lens.iter().max().context("no thoughts to score")?;
    let mut ids = vec![0u32; packed.len() * t_max];
    let mut positions = vec![0u32; packed.len() * t_max];
    let mut mask = vec![crate::model::layout::MASKED; packed.len() * t_max * t_max];
    // start[i]: where thought i's branch begins in its row; row_of[i]: that row.
    let (mut start, mut row_of) = (vec![0usize; n], vec![0usize; n]);
    for (r, q) in packed.iter().enumerate() {
        let pl = q.prefix.len();
        let base = r * t_max;
        let see = |mask: &mut Vec<f32>, i: usize, j: usize| mask[(base + i) * t_max + j] = 0.0;
        for (i, &tok) in q.prefix.iter().enumerate() {
            ids[base + i] = tok;
            positions[base + i] = i as u32;
            (0..=i).for_each(|j| see(&mut mask, i, j));
        }
        let mut at = pl;
        for &b in &q.branches {
            (start[b], row_of[b]) = (at, r);
            for (u, &tok) in branches[b].iter().enumerate() {
                ids[base + at + u] = tok;
                positions[base + at + u] = (pl + u) as u32;
                (0..pl).chain(at..=at + u).for_each(|j| see(&mut mask, at + u, j));
            }
            at += branches[b].len();
        }
        // Padding queries see the first key (their output is ignored; a row of only masked
        // keys would give NaN).
        (at..t_max).for_each(|i| see(&mut mask, i, 0));
    }
    let ids = Tensor::from_vec(ids, (packed.len(), t_max), &dev)?;
    // Gather the hidden state that predicts each trained token: its branch's <think> + offset.
    let mut rows_idx = Vec::new();
    let mut targets = Vec::new();
    let mut weights = [Vec::new(), Vec::new(), Vec::new()]; // per Ban kind: 1.0 where it applies
    let mut slot = vec![0u32; n * u_max]; // [N, U] -> index into the gathered tokens (M = padding)
    for (i, tr) in trained.iter().enumerate() {
        for (u, t) in tr.iter().enumerate() {
            slot[i * u_max + u] = rows_idx.len() as u32;
            rows_idx.push((row_of[i] * t_max + start[i] + t.offset) as u32);
            targets.push(t.token);
            for (k, w) in weights.iter_mut().enumerate() {
                w.push(if t.ban as usize == k { 1f32 } else { 0.0 });
            }
        }
    }
    let m = rows_idx.len();
    for (i, tr) in trained.iter().enumerate() {
        for u in tr.len()..u_max {
            slot[i * u_max + u] = m as u32;
        }
    }
    Ok(ThoughtInputs { ids, layout: AttnLayout { positions, mask }, trained, rows_idx, targets, weights, slot, u_max, forward_tokens: lens.iter().sum() })
}

/// The trained tokens' log-probs from the final hidden states [R, T, D] of `inp.ids`.
pub fn logprobs_from_hidden(model: &Model, inp: &ThoughtInputs, hidden: &Tensor, p: &RolloutParams) -> Result<ThoughtLogprobs> {
    let dev = hidden.device().clone();
    let (r, t_max, d) = (hidden.dim(0)?, hidden.dim(1)?, model.cfg.hidden_size);
    let h = hidden.reshape((r * t_max, d))?.index_select(&Tensor::new(inp.rows_idx.as_slice(), &dev)?, 0)?; // [M, D]
    let (lp_tok, entropy_sum) = token_logprobs(model, inp, &h, 0, p, true)?;
    assemble(inp, &lp_tok, entropy_sum)
}

/// log π of trained tokens `start..start + C` from their hidden states h [C, D] (after the final
/// norm): logits / temperature, log-softmax, the target's entry, minus the log of the mass the
/// sampler removed. Returns lp [C] (differentiable) and, when asked, Σ entropy (no gradient).
fn token_logprobs(model: &Model, inp: &ThoughtInputs, h: &Tensor, start: usize, p: &RolloutParams, entropy: bool) -> Result<(Tensor, f64)> {
    let c = h.dim(0)?;
    let logits = model.logits(h)?; // [C, V]
    let kinds = [0, 1, 2].map(|k| &inp.weights[k][start..start + c]);
    sampler_logprobs(&logits, &inp.targets[start..start + c], kinds, p, entropy)
}

/// log π(target) of C tokens under the sampler's distribution, from their logits [C, V]:
/// log-softmax of logits / temperature at the target, minus log(1 − mass removed), where the
/// removed mass is the rollout's banned tokens, plus `</think>` for tokens drawn at the first
/// thought slot or in a guess. `kinds[k]` [C] is 1.0 where token c was drawn from `Ban` kind k.
/// Also returns, when asked, Σ over the C tokens of the tempered distribution's entropy (before
/// the bans; no gradient).
fn sampler_logprobs(logits: &Tensor, targets: &[u32], kinds: [&[f32]; 3], p: &RolloutParams, entropy: bool) -> Result<(Tensor, f64)> {
    let dev = logits.device().clone();
    let (c, vocab) = logits.dims2()?;
    let z = (logits / p.sampling.temperature as f64)?; // [C, V]
    let lp_all = candle_nn::ops::log_softmax(&z, D::Minus1)?; // [C, V]
    let targets_t = Tensor::new(targets, &dev)?;
    let lp_tok = lp_all.gather(&targets_t.unsqueeze(1)?, 1)?.squeeze(1)?; // [C]
    // Probability mass each token's sampling distribution removed (see the module docs).
    let banned: Vec<u32> = p.banned.iter().copied().filter(|&b| (b as usize) < vocab).collect();
    let banned_mass = if banned.is_empty() { Tensor::zeros(c, DType::F32, &dev)? } else { lp_all.index_select(&Tensor::new(banned.as_slice(), &dev)?, 1)?.exp()?.sum(1)? };
    let end_p = lp_all.narrow(1, p.end_think_id as usize, 1)?.squeeze(1)?.exp()?; // [C]
    let w = |k: Ban| Tensor::new(kinds[k as usize], &dev);
    let first_or_guess = (w(Ban::FirstThought)? + w(Ban::Guess)?)?;
    let removed = (((&banned_mass + &end_p)? * first_or_guess)? + (&banned_mass * w(Ban::Thought)?)?)?;
    let lp_tok = (lp_tok - (1.0 - removed)?.log()?)?; // [C]
    let entropy_sum = if entropy { (lp_all.detach().exp()? * lp_all.detach())?.sum_all()?.neg()?.to_scalar::<f32>()? as f64 } else { 0.0 };
    Ok((lp_tok, entropy_sum))
}

/// Lay the M trained tokens' log-probs lp_tok [M] out as [N, U] with mask and behaviour log-probs.
fn assemble(inp: &ThoughtInputs, lp_tok: &Tensor, entropy_sum: f64) -> Result<ThoughtLogprobs> {
    let dev = lp_tok.device().clone();
    let ThoughtInputs { trained, slot, u_max, .. } = inp;
    let (n, u_max, m) = (trained.len(), *u_max, inp.rows_idx.len());
    let padded = Tensor::cat(&[lp_tok, &Tensor::zeros(1, DType::F32, &dev)?], 0)?;
    let logp = padded.index_select(&Tensor::new(slot.as_slice(), &dev)?, 0)?.reshape((n, u_max))?; // [N, U]
    let mut mask = vec![0f32; n * u_max];
    let mut old = vec![0f32; n * u_max];
    let now = lp_tok.detach().to_vec1::<f32>()?;
    for (r, tr) in trained.iter().enumerate() {
        for (u, t) in tr.iter().enumerate() {
            mask[r * u_max + u] = 1.0;
            old[r * u_max + u] = t.logp_old.unwrap_or(now[slot[r * u_max + u] as usize]);
        }
    }
    Ok(ThoughtLogprobs {
        logp,
        mask: Tensor::from_vec(mask, (n, u_max), &dev)?,
        logp_old: Tensor::from_vec(old, (n, u_max), &dev)?,
        entropy_sum,
        n_tokens: m,
        forward_tokens: inp.forward_tokens,
    })
}

/// `loss_of(log-probs)` and its gradient with gradient checkpointing per block
/// (`Model::checkpointed_backward_from`) and the head run over chunks of `chunk` trained tokens,
/// so that at most chunk × V logits are alive at once instead of M × V (M trained tokens in the
/// micro-batch: 16 thoughts × 2048 tokens × 151k vocabulary would be 20 GB per copy in f32).
/// Two passes over the chunks: without gradient to get every log-prob and, from the loss,
/// g = ∂loss/∂lp [M]; then with gradient, back-propagating Σ lp ⊙ g chunk by chunk. The loss may
/// be any function of the log-probs (the clipped surrogate, the KL term). Returns the loss, the
/// gradients, and the log-probs (detached) for logging.
pub fn checkpointed_policy_backward(model: &Model, inp: &ThoughtInputs, p: &RolloutParams, params: &[&Tensor], chunk: usize, loss_of: impl FnOnce(&ThoughtLogprobs) -> Result<Tensor>) -> Result<(Tensor, GradStore, ThoughtLogprobs)> {
    let chunk = chunk.max(1);
    let mut logprobs = None;
    let (loss, grads) = model.checkpointed_backward_from(&inp.ids, &inp.layout, params, |top| {
        let dev = top.device().clone();
        let (r, t_max, d) = (top.dim(0)?, top.dim(1)?, model.cfg.hidden_size);
        let h = top.as_tensor().reshape((r * t_max, d))?.index_select(&Tensor::new(inp.rows_idx.as_slice(), &dev)?, 0)?; // [M, D], pre-norm
        let m = h.dim(0)?;
        let spans: Vec<(usize, usize)> = (0..m).step_by(chunk).map(|s| (s, chunk.min(m - s))).collect();
        // Pass 1, no gradient: every trained token's log-prob, then the loss and ∂loss/∂lp.
        let h0 = h.detach();
        let (mut parts, mut entropy_sum) = (Vec::with_capacity(spans.len()), 0.0);
        for &(s, c) in &spans {
            let (lp, e) = token_logprobs(model, inp, &model.final_norm(&h0.narrow(0, s, c)?)?, s, p, true)?;
            parts.push(lp.detach());
            entropy_sum += e;
        }
        let lp_var = Var::from_tensor(&Tensor::cat(&parts, 0)?)?; // [M]
        let lp = assemble(inp, lp_var.as_tensor(), entropy_sum)?;
        let loss = loss_of(&lp)?;
        let g = loss.backward()?.remove(lp_var.as_tensor()).context("the loss does not depend on the log-probs")?; // [M]
        logprobs = Some(ThoughtLogprobs { logp: lp.logp.detach(), ..lp });
        // Pass 2, with gradient, one chunk at a time: the head weights' and `top`'s gradients.
        let mut keep = params.to_vec();
        keep.push(top.as_tensor());
        let mut grads = empty_grad_store(&dev)?;
        for &(s, c) in &spans {
            let (lp, _) = token_logprobs(model, inp, &model.final_norm(&h.narrow(0, s, c)?)?, s, p, false)?;
            take_grads(&mut grads, &mut (lp * g.narrow(0, s, c)?)?.sum_all()?.backward()?, &keep)?;
        }
        Ok((loss, grads))
    })?;
    Ok((loss, grads, logprobs.context("the policy head was not run")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;
    use candle_core::Device;

    /// V = 4: ids 0 and 1 are text, 2 is `</think>`, 3 is `<think>` (always banned).
    fn params(temperature: f32) -> RolloutParams {
        RolloutParams {
            g: 2,
            budget: 4,
            sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0 },
            think_id: 3,
            end_think_id: 2,
            banned: vec![3],
            separator: vec![],
            guess_tokens: 0,
        }
    }

    fn thought(ids: &[u32], closed: bool) -> Thought {
        let n = ids.len() + closed as usize;
        Thought { ids: ids.to_vec(), closed, logp_old: vec![-1.0; n], s_pred: 0.0, guess: vec![], guess_logp_old: vec![] }
    }

    #[test]
    fn log_probs_are_tempered_and_renormalised_over_what_the_sampler_allowed() {
        // logits [0, 1, 2, 4] at T = 2 → z = [0, 0.5, 1, 2].
        let logits = Tensor::new(&[[0f32, 1.0, 2.0, 4.0], [0.0, 1.0, 2.0, 4.0], [0.0, 1.0, 2.0, 4.0]], &Device::Cpu).unwrap();
        let e = |x: f64| x.exp();
        let z = [0.0, 0.5, 1.0, 2.0];
        // token 0: first thought slot, so `</think>` (2) and `<think>` (3) are both removed:
        // log(e^0 / (e^0 + e^0.5)).
        let first = (e(z[0]) / (e(z[0]) + e(z[1]))).ln();
        // token 1: a later thought token, only `<think>` removed: log(e^0.5 / (1 + e^0.5 + e^1)).
        let later = (e(z[1]) / (e(z[0]) + e(z[1]) + e(z[2]))).ln();
        // token 2: a sampled `</think>` (a later slot): log(e^1 / (1 + e^0.5 + e^1)).
        let end = (e(z[2]) / (e(z[0]) + e(z[1]) + e(z[2]))).ln();
        let kinds: [&[f32]; 3] = [&[1.0, 0.0, 0.0], &[0.0, 1.0, 1.0], &[0.0, 0.0, 0.0]];
        let (lp, entropy) = sampler_logprobs(&logits, &[0, 1, 2], kinds, &params(2.0), true).unwrap();
        let lp: Vec<f32> = lp.to_vec1().unwrap();
        for (got, want) in lp.iter().zip([first, later, end]) {
            assert!((*got as f64 - want).abs() < 1e-6, "{lp:?} vs {first}, {later}, {end}");
        }
        // entropy of softmax(z) before any ban, three times
        let zs: f64 = z.iter().map(|&x| e(x)).sum();
        let h: f64 = -z.iter().map(|&x| e(x) / zs * (x - zs.ln())).sum::<f64>();
        assert!((entropy - 3.0 * h).abs() < 1e-5, "entropy {entropy} vs {}", 3.0 * h);
    }

    #[test]
    fn the_first_thought_slot_bans_end_think_and_later_slots_do_not() {
        let t = thought(&[0, 1], true);
        let trained = trained_tokens(&t, &params(1.0), false);
        let kinds: Vec<(usize, u32, Ban)> = trained.iter().map(|x| (x.offset, x.token, x.ban)).collect();
        assert_eq!(kinds, vec![(0, 0, Ban::FirstThought), (1, 1, Ban::Thought), (2, 2, Ban::Thought)]);
        // a `</think>` forced at the budget carries no gradient unless asked, and then its
        // behaviour log-prob is the current one (None)
        let forced = thought(&[0, 1], false);
        assert_eq!(trained_tokens(&forced, &params(1.0), false).len(), 2);
        let with_end = trained_tokens(&forced, &params(1.0), true);
        assert_eq!((with_end[2].token, with_end[2].logp_old), (2, None));
    }
}
