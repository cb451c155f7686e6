//! Token and FLOP totals of a run (`flops.rs` conventions: matmuls only), counted as the work
//! is done, saved in checkpoints and logged every step.
//!
//! Under several ranks each rank counts its own work into a zeroed [`Totals`] and
//! [`fold_into`] sums those over ranks; a single process counts straight into the run's
//! totals, so its sums are taken in the same order as the work.

use crate::data::sampler::Context;
use crate::dist::{Dist, ReduceOp};
use crate::flops::{self, ModelShape};
use crate::eval::generate::Generation;
use crate::rollout::{RolloutParams, Thought};
use anyhow::Result;

/// Counters that accumulate over the whole run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Corpus tokens the run consumed: prefixes and targets (rlp/rpt), packed windows (ntp).
    pub input_tokens: u64,
    /// Tokens sampled by rollouts (thoughts, `</think>`, RPT guesses).
    pub generated_tokens: u64,
    /// Tokens through the training forward.
    pub trained_tokens: u64,
    pub flops_sample: f64,
    pub flops_score: f64,
    pub flops_train: f64,
}

impl Totals {
    pub fn flops_total(&self) -> f64 {
        self.flops_sample + self.flops_score + self.flops_train
    }
}

/// Where a rank counts its share of some work: the run's totals themselves in a single
/// process, zeros under several ranks (summed by [`fold_into`]).
pub fn counter(totals: &Totals, dist: &Dist) -> Totals {
    if dist.world() == 1 {
        totals.clone()
    } else {
        Totals::default()
    }
}

/// Fold a [`counter`] back into the run's totals, summing every rank's counts.
pub fn fold_into(totals: &mut Totals, counted: Totals, dist: &Dist) -> Result<()> {
    if dist.world() == 1 {
        *totals = counted;
        return Ok(());
    }
    let c = counted;
    let mut v = [c.input_tokens as f64, c.generated_tokens as f64, c.trained_tokens as f64, c.flops_sample, c.flops_score, c.flops_train];
    dist.all_reduce_f64("token and FLOP counts", &mut v, ReduceOp::Sum)?;
    totals.input_tokens += v[0].round() as u64;
    totals.generated_tokens += v[1].round() as u64;
    totals.trained_tokens += v[2].round() as u64;
    totals.flops_sample += v[3];
    totals.flops_score += v[4];
    totals.flops_train += v[5];
    Ok(())
}

/// Sampling and scoring one rollout batch: per context a prefill of prefix + `<think>`, per
/// rollout its decode and its S_pred forward, and one no-think S_ema forward.
pub fn count_rollouts(acc: &mut Totals, shape: &ModelShape, p: &RolloutParams, contexts: &[Context], thoughts: &[Vec<Thought>]) {
    let sep = p.separator.len() as u64;
    for (c, group) in contexts.iter().zip(thoughts) {
        let prompt = c.prefix.len() as u64 + 1; // prefix + <think>
        acc.input_tokens += c.prefix.len() as u64 + 1;
        acc.flops_sample += flops::prefill_flops(shape, prompt);
        for t in group {
            // sampled: thought, </think>, guess; fed after the prefill: all but the last
            let generated = t.ids.len() as u64 + 1 + t.guess.len() as u64;
            acc.generated_tokens += generated;
            acc.flops_sample += flops::decode_flops(shape, prompt, generated + sep);
            acc.flops_score += flops::score_flops(shape, prompt + t.ids.len() as u64 + sep, 1);
        }
        acc.flops_score += flops::score_flops(shape, 0, c.prefix.len() as u64);
    }
}

/// The policy forward and backward over the thoughts `idx` (flat b·G+i) in micro-batches of
/// `micro`, as run: within a micro-batch the thoughts packed into one row
/// (`policy::packed_rows`: equal prefixes, when `shared`) branch off one prefix.
#[allow(clippy::too_many_arguments)]
pub fn count_policy_training(acc: &mut Totals, shape: &ModelShape, p: &RolloutParams, grad_on_forced_end: bool, shared: bool, contexts: &[Context], thoughts: &[Vec<Thought>], idx: &[usize], micro: usize) {
    let g = p.g;
    for chunk in idx.chunks(micro.max(1)) {
        let prefixes: Vec<&[u32]> = chunk.iter().map(|&k| contexts[k / g].prefix.as_slice()).collect();
        for row in super::policy::packed_rows(&prefixes, shared) {
            let branches: Vec<(u64, u64)> = row
                .iter()
                .map(|&j| {
                    let k = chunk[j];
                    let t = &thoughts[k / g][k % g];
                    (t.ids.len() as u64 + 1 + t.guess.len() as u64, super::policy::grad_len(t, p, grad_on_forced_end) as u64)
                })
                .collect();
            acc.flops_train += flops::policy_train_flops(shape, prefixes[row[0]].len() as u64, &branches, shared);
        }
    }
}

/// Sampling one RLVR batch and its pre-update log-probs: per question a prompt (its tokens
/// counted once as input), G prefills and decodes of it, and per sample one forward over prompt
/// and generated tokens (`logp_old`). `prompts[i]` is owned question i's, `gens` G per question.
pub fn count_rlvr_samples(acc: &mut Totals, shape: &ModelShape, prompts: &[&[u32]], gens: &[Generation], g: usize, thinking: bool) {
    for (p, group) in prompts.iter().zip(gens.chunks(g)) {
        let prompt = p.len() as u64;
        acc.input_tokens += prompt;
        for s in group {
            let generated = rlvr_generated(s, thinking) as u64;
            acc.generated_tokens += generated;
            acc.flops_sample += flops::prefill_flops(shape, prompt) + flops::decode_flops(shape, prompt, generated);
            let fed = (prompt + generated).saturating_sub(1);
            acc.flops_score += flops::forward_flops(shape, 0, fed, fed);
        }
    }
}

/// The RLVR policy forward and backward over rows of `lens` fed tokens (prompt and generated,
/// the last left off), logits at every position; with `with_ref` also the reference's forward.
pub fn count_rlvr_training(acc: &mut Totals, shape: &ModelShape, lens: &[u64], with_ref: bool) {
    for &t in lens {
        let forward = flops::forward_flops(shape, 0, t, t);
        acc.flops_train += 3.0 * forward + if with_ref { forward } else { 0.0 };
        acc.trained_tokens += t;
    }
}

/// Tokens a sample generated: thought, `</think>` when thinking, answer.
pub fn rlvr_generated(s: &Generation, thinking: bool) -> usize {
    s.thought.len() + usize::from(thinking) + s.answer.len()
}
