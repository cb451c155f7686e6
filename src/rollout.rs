//! Thought rollouts and the reasoned score S_pred, in one batched KV-cache decode.
//!
//! For each context the prefix `x_<t + <think>` is encoded once; its cache rows are duplicated
//! into G rollouts. Every rollout samples thought tokens (EOS, pad and a second `<think>`
//! banned, `</think>` banned at the first step so |c| ≥ 1) until it samples `</think>` or hits
//! the budget, where `</think>` is forced. The rollout then feeds `</think>` and the separator
//! tokens on its own cache, and the logits after the last of them give
//! S_pred = log p_θ(x_t | x_<t, <think>, c, </think>, sep). Finished rows leave the batch.

use crate::model::{KvCache, Model};
use crate::sampling::{sample, tempered_logprobs, SamplingParams};
use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct RolloutParams {
    pub g: usize,
    /// Most thought tokens before `</think>` is forced.
    pub budget: usize,
    pub sampling: SamplingParams,
    pub think_id: u32,
    pub end_think_id: u32,
    /// Never sampled inside a thought: EOS, pad, `<think>`.
    pub banned: Vec<u32>,
    /// Tokens between `</think>` and the scored token (often empty).
    pub separator: Vec<u32>,
    /// RPT: tokens the model samples after `</think>` + separator as its guess of the
    /// continuation (0 for RLP).
    pub guess_tokens: usize,
}

impl RolloutParams {
    /// Thought rollouts for `tok`'s think markers on a model with `model_vocab` embedding rows:
    /// EOS, `<think>`, and embedding rows the tokenizer has no token for (Qwen pads its
    /// embedding past the vocabulary) are banned inside a thought. No separator, no RPT guess.
    pub fn for_tokenizer(tok: &crate::tokenizer::Tok, model_vocab: usize, g: usize, budget: usize, sampling: SamplingParams) -> RolloutParams {
        let mut banned = tok.eos_ids.clone();
        banned.push(tok.think_id);
        banned.extend(tok.vocab_size() as u32..model_vocab as u32);
        RolloutParams { g, budget, sampling, think_id: tok.think_id, end_think_id: tok.end_think_id, banned, separator: vec![], guess_tokens: 0 }
    }

    /// Tokens banned at thought position `u` (`</think>` too at u = 0).
    pub fn banned_at(&self, u: usize) -> Vec<u32> {
        let mut b = self.banned.clone();
        if u == 0 {
            b.push(self.end_think_id);
        }
        b
    }

    /// Tokens banned in an RPT guess: those banned in a thought (EOS, `<think>`, ids past the
    /// tokenizer) and `</think>`, the same set as at the first thought position.
    pub fn banned_in_guess(&self) -> Vec<u32> {
        self.banned_at(0)
    }
}

/// The sampling RNG of one context: a pure function of (seed, step, global context index), so
/// rollouts do not depend on batch composition, micro-batching or the number of ranks, and need
/// no state in a checkpoint.
pub fn context_rng(seed: u64, step: u64, context: u64) -> ChaCha8Rng {
    use rand::SeedableRng;
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&step.to_le_bytes());
    key[16..24].copy_from_slice(&context.to_le_bytes());
    key[24..].copy_from_slice(b"rollout\0");
    ChaCha8Rng::from_seed(key)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Thought {
    /// Thought tokens c, without `<think>` and `</think>`.
    pub ids: Vec<u32>,
    /// Behaviour log-prob of each sampled token: the thought tokens, then `</think>` when it
    /// was sampled (not when forced).
    pub logp_old: Vec<f32>,
    /// The model sampled `</think>` itself (false: forced at the budget).
    pub closed: bool,
    /// S_pred = log p_θ(x_t | prefix, <think>, c, </think>, sep), untempered.
    pub s_pred: f32,
    /// RPT guess: tokens sampled after `</think>` + separator, and their behaviour log-probs.
    pub guess: Vec<u32>,
    pub guess_logp_old: Vec<f32>,
}

impl Thought {
    /// Number of sampled tokens that carry the policy gradient.
    pub fn sampled_len(&self) -> usize {
        self.logp_old.len()
    }
}

/// One context: the prefix x_<t (without `<think>`) and its true next token x_t.
pub struct Prompt<'a> {
    pub prefix: &'a [u32],
    pub target: u32,
}

struct Row {
    /// Index of this rollout in the output, b·G + i.
    slot: usize,
    context: usize,
    thought: Thought,
    /// Tokens still to feed after the thought ended (`</think>`, then the separator).
    closing: Option<std::collections::VecDeque<u32>>,
    /// S_pred has been read; the row is sampling its RPT guess.
    guessing: bool,
}

/// Sample G thoughts for each prompt and score each one. `model` should be a detached view;
/// `rngs[b]` drives every draw of prompt b's G rollouts. Returns thoughts grouped by context:
/// result[b][i].
pub fn sample_thoughts(model: &Model, prompts: &[Prompt], p: &RolloutParams, rngs: &mut [ChaCha8Rng]) -> Result<Vec<Vec<Thought>>> {
    if p.g == 0 || p.budget == 0 {
        bail!("rollouts need g ≥ 1 and a thought budget ≥ 1");
    }
    if rngs.len() != prompts.len() {
        bail!("{} RNGs for {} prompts", rngs.len(), prompts.len());
    }
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|c| [c.prefix, &[p.think_id]].concat()).collect();
    let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let cap = longest + p.budget + 1 + p.separator.len() + p.guess_tokens;
    let (logits, cache) = model.prefill(&seqs, cap)?;
    // Duplicate each context's row G times: rows b*G .. b*G+G-1 belong to context b.
    let dup: Vec<u32> = (0..prompts.len()).flat_map(|b| std::iter::repeat(b as u32).take(p.g)).collect();
    let cache: KvCache = cache.select_rows(&dup)?;
    let logits: Vec<Vec<f32>> = {
        let l = logits.to_vec2::<f32>()?;
        dup.iter().map(|&b| l[b as usize].clone()).collect()
    };
    let rows: Vec<Row> = dup
        .iter()
        .enumerate()
        .map(|(slot, &b)| Row { slot, context: b as usize, thought: Thought::default(), closing: None, guessing: false })
        .collect();
    let mut done: Vec<Option<Thought>> = vec![None; rows.len()];
    model.decode_rows(cache, logits, rows, |row, logits| {
        if row.guessing || row.closing.as_ref().is_some_and(|q| q.is_empty()) {
            if !row.guessing {
                // logits follow `</think>` + separator: score the true next token
                let target = prompts[row.context].target as usize;
                row.thought.s_pred = tempered_logprobs(logits, 1.0, &[])[target] as f32;
                row.guessing = true;
            }
            if row.thought.guess.len() < p.guess_tokens {
                let (tok, lp) = sample(logits, &p.sampling, &p.banned_in_guess(), &mut rngs[row.context]);
                row.thought.guess.push(tok);
                row.thought.guess_logp_old.push(lp);
                if row.thought.guess.len() < p.guess_tokens {
                    return Ok(Some(tok));
                }
            }
            done[row.slot] = Some(std::mem::take(&mut row.thought));
            return Ok(None);
        }
        if let Some(queue) = &mut row.closing {
            return Ok(queue.pop_front());
        }
        let u = row.thought.ids.len();
        let tok = if u == p.budget {
            p.end_think_id // forced: no behaviour log-prob, no gradient
        } else {
            let (tok, lp) = sample(logits, &p.sampling, &p.banned_at(u), &mut rngs[row.context]);
            row.thought.logp_old.push(lp);
            tok
        };
        if tok == p.end_think_id {
            row.thought.closed = u < p.budget;
            // feed `</think>` now, then the separator tokens one per step
            row.closing = Some(p.separator.iter().copied().collect());
        } else {
            row.thought.ids.push(tok);
        }
        Ok(Some(tok))
    })?;
    let mut out: Vec<Vec<Thought>> = (0..prompts.len()).map(|_| Vec::with_capacity(p.g)).collect();
    for (i, t) in done.into_iter().enumerate() {
        out[i / p.g].push(t.expect("every rollout finishes"));
    }
    Ok(out)
}

/// S_ema = log p̄_φ(x_t | x_<t) for each prompt, from the (detached) EMA teacher.
pub fn no_think_scores(teacher: &Model, prompts: &[Prompt]) -> Result<Vec<f32>> {
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|c| c.prefix.to_vec()).collect();
    let cap = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
    let (logits, _) = teacher.prefill(&seqs, cap)?;
    let logits = logits.to_vec2::<f32>()?;
    Ok(prompts.iter().zip(&logits).map(|(c, l)| tempered_logprobs(l, 1.0, &[])[c.target as usize] as f32).collect())
}
