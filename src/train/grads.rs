//! The policy gradient of one optimizer step: the clipped surrogate (+ KL) of `objective::rlp`
//! over the step's thoughts, summed over micro-batches, with or without gradient checkpointing.

use super::policy::{checkpointed_policy_backward, logprobs_from_hidden, thought_inputs, thought_logprobs, ThoughtLogprobs, ThoughtRow};
use super::rollouts::RolloutBatch;
use crate::model::grad_store::{empty_grad_store, take_grads};
use crate::model::Model;
use crate::objective::rlp::{policy_loss, LossSettings, PolicyLoss, SurrogateStats};
use crate::rollout::RolloutParams;
use anyhow::{Context as _, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::time::Instant;

/// How the policy forward and backward run (`rollout.grad_on_forced_end`, `train.*`).
#[derive(Debug, Clone, Copy)]
pub struct PolicySettings {
    pub loss: LossSettings,
    pub grad_on_forced_end: bool,
    pub share_prefix: bool,
    pub grad_checkpoint: bool,
    /// Trained tokens per chunk of the policy head under gradient checkpointing.
    pub logprob_chunk: usize,
}

/// The summed gradient of one optimizer step and what to log about it.
pub struct PolicyGradient {
    pub grads: GradStore,
    pub loss: f64,
    pub stats: SurrogateStats,
    /// Mean entropy (nats) of the tempered policy at trained positions.
    pub entropy: f64,
    pub forward_tokens: usize,
    /// Mean k3 KL to the EMA teacher per token (0 when `kl_coef` = 0).
    pub kl: f64,
    /// Seconds in the forward (to the loss) and in the backward; under gradient checkpointing
    /// the two interleave and all of it counts as backward.
    pub forward_s: f64,
    pub backward_s: f64,
}

/// Gradient of the policy loss over the thoughts `idx` (flat b·G+i indices) of `batch` with
/// respect to `vars`, normalised by `total_thoughts` (the step's thoughts over every rank),
/// summed over micro-batches of `micro` thoughts. `reference` is the KL's reference policy
/// (given when `kl_coef` > 0).
#[allow(clippy::too_many_arguments)]
pub fn policy_gradient(policy: &Model, reference: Option<&Model>, vars: &[(String, Var)], batch: &RolloutBatch, idx: &[usize], total_thoughts: usize, micro: usize, p: &RolloutParams, s: &PolicySettings) -> Result<PolicyGradient> {
    let g = p.g;
    let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
    let mut acc = GradAccumulator::default();
    let (mut loss_sum, mut entropy_sum, mut tokens, mut fwd_tokens, mut kl_sum) = (0f64, 0f64, 0usize, 0usize, 0f64);
    let (mut forward_s, mut backward_s) = (0f64, 0f64);
    let mut stats = SurrogateStats::default();
    for chunk in idx.chunks(micro.max(1)) {
        let t0 = Instant::now();
        let rows: Vec<ThoughtRow> = chunk.iter().map(|&k| ThoughtRow { prefix: &batch.contexts[k / g].prefix, thought: &batch.thoughts[k / g][k % g] }).collect();
        let adv: Vec<f32> = chunk.iter().map(|&k| batch.advantages[k]).collect();
        let adv = Tensor::new(adv.as_slice(), policy.embed.device())?; // [N]
        let reference_lp = reference.map(|r| thought_logprobs(r, &rows, p, s.grad_on_forced_end, s.share_prefix)).transpose()?;
        let loss_of = |lp: &ThoughtLogprobs| policy_loss(&lp.logp, &lp.logp_old, &lp.mask, lp.n_tokens, &adv, reference_lp.as_ref().map(|r| &r.logp), s.loss, total_thoughts);
        let inp = thought_inputs(policy, &rows, p, s.grad_on_forced_end, s.share_prefix)?;
        let mut chunk_forward_s = 0.0;
        let (out, grads, lp) = if s.grad_checkpoint {
            let mut logged = None;
            let (loss, grads, lp) = checkpointed_policy_backward(policy, &inp, p, &params, s.logprob_chunk, |lp| {
                let out = loss_of(lp)?;
                let loss = out.loss.clone();
                logged = Some(out);
                Ok(loss)
            })?;
            let out = PolicyLoss { loss, ..logged.context("the policy loss was not computed")? };
            (out, grads, lp)
        } else {
            let hidden = policy.forward_hidden(&inp.ids, &inp.layout, None)?; // [R, T, D]
            let lp = logprobs_from_hidden(policy, &inp, &hidden, p)?;
            let out = loss_of(&lp)?;
            chunk_forward_s = t0.elapsed().as_secs_f64();
            let grads = out.loss.backward()?;
            (out, grads, lp)
        };
        loss_sum += out.loss.to_scalar::<f32>()? as f64;
        kl_sum += out.kl_token_sum;
        stats.merge(&out.stats);
        entropy_sum += lp.entropy_sum;
        tokens += lp.n_tokens;
        fwd_tokens += lp.forward_tokens;
        acc.add(grads, &params)?;
        forward_s += chunk_forward_s;
        backward_s += t0.elapsed().as_secs_f64() - chunk_forward_s;
    }
    let per_token = |x: f64| if tokens > 0 { x / tokens as f64 } else { 0.0 };
    Ok(PolicyGradient { grads: acc.finish()?, loss: loss_sum, stats, entropy: per_token(entropy_sum), forward_tokens: fwd_tokens, kl: per_token(kl_sum), forward_s, backward_s })
}

/// Sums the gradients of several backward passes (micro-batches).
#[derive(Default)]
pub struct GradAccumulator {
    acc: Option<GradStore>,
}

impl GradAccumulator {
    /// Adds the gradients of `params` from one backward pass. Nothing else of the store is
    /// kept: its gradients of constant operands (advantages, masks) are built from tracked
    /// tensors and would hold the micro-batch's whole forward graph alive (see `take_grads`).
    pub fn add(&mut self, mut g: GradStore, params: &[&Tensor]) -> Result<()> {
        if self.acc.is_none() {
            let dev = params.first().context("no trainable weights")?.device();
            self.acc = Some(empty_grad_store(dev)?);
        }
        take_grads(self.acc.as_mut().expect("set above"), &mut g, params)
    }

    pub fn finish(self) -> Result<GradStore> {
        self.acc.context("no micro-batch was run: nothing to train on")
    }
}
