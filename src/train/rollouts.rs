//! One rollout batch: the B contexts, G thoughts sampled for each by θ (with S_pred), S_ema of
//! each context under the EMA teacher φ, and the rewards and advantages that follow.

use crate::data::sampler::Context;
use crate::model::Model;
use crate::rollout::{context_rng, no_think_scores, sample_thoughts, Prompt, RolloutParams, Thought};
use anyhow::Result;
use std::time::Instant;

/// Everything sampled and scored for one rollout batch.
pub struct RolloutBatch {
    /// This rank's contexts (all of them in a single process).
    pub contexts: Vec<Context>,
    /// Each local context's index in the global batch of B.
    pub global_index: Vec<usize>,
    pub thoughts: Vec<Vec<Thought>>, // [B][G]
    pub s_ema: Vec<f32>,             // [B]
    pub rewards: Vec<f32>,           // [B*G]
    pub advantages: Vec<f32>,        // [B*G]
    pub group_std: Vec<f32>,         // [B]
    /// Optimizer steps the weights had taken when they sampled and scored this batch: the
    /// checkpoint `step-{model_step}` holds the weights that reproduce its S_pred.
    pub model_step: u64,
    pub sample_s: f64,
    pub score_s: f64,
}

/// What [`sample_and_score`] returns: thoughts [B][G] with their S_pred, S_ema [B], seconds.
pub struct Scored {
    pub thoughts: Vec<Vec<Thought>>,
    pub s_ema: Vec<f32>,
    pub sample_s: f64,
    pub score_s: f64,
}

/// Sample G thoughts per context with `sampler` (θ), each context from its own RNG keyed by
/// the run's seed, the step and the context's index in the global batch (so that the ranks of a
/// data-parallel run together sample what one process would), then S_ema with `teacher` (φ).
pub fn sample_and_score(sampler: &Model, teacher: impl FnOnce() -> Result<Model>, contexts: &[Context], global_index: &[usize], p: &RolloutParams, seed: u64, step: u64) -> Result<Scored> {
    let prompts: Vec<Prompt> = contexts.iter().map(|c| Prompt { prefix: &c.prefix, target: c.target }).collect();
    let t0 = Instant::now();
    let mut rngs: Vec<_> = global_index.iter().map(|&i| context_rng(seed, step, i as u64)).collect();
    let thoughts = sample_thoughts(sampler, &prompts, p, &mut rngs)?;
    let sample_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let s_ema = no_think_scores(&teacher()?, &prompts)?;
    let score_s = t1.elapsed().as_secs_f64();
    Ok(Scored { thoughts, s_ema, sample_s, score_s })
}
