//! The trainer's side of data parallelism: which contexts of the global batch this rank
//! samples and trains on, and summing a rank's policy gradient into the global one.
//!
//! Every rank draws the same global batch of B contexts (same seed, same sampler state) and
//! keeps contexts rank, rank + W, … (`data::sampler::shard`). Each context's thoughts come from
//! its own RNG (`rollout::context_rng`, keyed by seed, step and global index), so the
//! union of the ranks' thoughts is what one process would sample. Losses are divided by the
//! global thought count, so the sum of the ranks' gradients is the single-process gradient;
//! every rank then applies the same clip, AdamW and EMA update to identical weights.
//!
//! NTP and SFT the same way: every rank packs the same global windows and trains windows rank,
//! rank + W, …, with the loss divided by the global target (response-token) count. RLVR as
//! the rollout objectives: every rank walks the same question order and owns questions rank,
//! rank + W, …, each sampled from its own RNG (`objective::rlvr::sample_groups_seeded`).

//!
//! Step metrics combine by field ([`reduce_step_metrics`]), so that rank 0 logs what a single
//! process with the whole batch would have logged (up to float rounding).

use super::grads::PolicyGradient;
use super::log::StepMetrics;
use crate::objective::rlvr::RlvrMetrics;
use crate::config::{ObjectiveName, TrainConfig};
use crate::data::sampler::shard;
use crate::device::DeviceSpec;
use crate::dist::grads::all_reduce_grads;
use crate::dist::{Dist, ReduceOp};
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Var};
use std::ops::Range;

/// Global indices (in 0..b) of the contexts this rank owns.
pub fn local_contexts(b: usize, dist: &Dist) -> Result<Vec<usize>> {
    shard(&(0..b).collect::<Vec<_>>(), dist.rank(), dist.world())
}

/// This rank's flat thought indices (local context × G + i) for the minibatch made of the
/// global contexts `global_range`; `global_index[c]` is local context c's global index.
pub fn minibatch_thoughts(global_index: &[usize], global_range: Range<usize>, g: usize) -> Vec<usize> {
    global_index
        .iter()
        .enumerate()
        .filter(|(_, gi)| global_range.contains(gi))
        .flat_map(|(c, _)| (c * g)..(c * g + g))
        .collect()
}

/// This rank's items rank, rank + W, … of a global list (NTP's packed windows).
pub fn local_items<T>(items: Vec<T>, dist: &Dist) -> Vec<T> {
    let (rank, world) = (dist.rank(), dist.world());
    items.into_iter().skip(rank).step_by(world).collect()
}

/// Refuse a world size that would leave some rank without a context in some minibatch (or,
/// for ntp, without a packed window in a step).
pub fn check_batch_fits_world(cfg: &TrainConfig, world: usize) -> Result<()> {
    if cfg.objective.name == ObjectiveName::Ntp {
        let n = cfg.ntp_windows_per_step();
        if n < world {
            bail!(
                "objective.name = \"ntp\" packs {n} windows of data.max_context = {} tokens per step, fewer than the \
                 {world} ranks: every rank needs at least one. Raise objective.ntp_tokens_per_step to at least {} or \
                 start fewer ranks",
                cfg.data.max_context,
                world * cfg.data.max_context
            );
        }
        return Ok(());
    }
    let b = cfg.data.contexts_per_step;
    let mb = cfg.objective.minibatches.max(1);
    if b / mb < world {
        bail!(
            "data.contexts_per_step = {b} split into objective.minibatches = {mb} gives {} contexts per update, \
             fewer than the {world} ranks: every rank needs at least one. Raise data.contexts_per_step to at \
             least {} or start fewer ranks",
            b / mb,
            world * mb
        );
    }
    Ok(())
}

/// The device this rank trains on, from `train.device`. Under several ranks a plain "cuda"
/// means the GPU numbered by the rank's node-local rank (one GPU per rank: `mpirun -np 8` on an
/// 8-GPU node gives ranks 0..7 GPUs 0..7); "cuda:N" is taken as written.
pub fn rank_device(name: &str, dist: &Dist) -> Result<Device> {
    let spec = match DeviceSpec::parse(name)? {
        DeviceSpec::Cuda(0) if dist.world() > 1 && name.trim() == "cuda" => DeviceSpec::Cuda(crate::dist::launcher_local_rank()),
        spec => spec,
    };
    spec.open()
}

/// Sum an NTP step's gradient and loss over all ranks, in place.
pub fn all_reduce_loss_and_grads(dist: &Dist, grads: &mut GradStore, loss: &mut f64, vars: &[Var]) -> Result<()> {
    if !dist.is_distributed() {
        return Ok(());
    }
    all_reduce_grads(dist, grads, vars)?;
    let mut l = [*loss];
    dist.all_reduce_f64("loss", &mut l, ReduceOp::Sum)?;
    *loss = l[0];
    Ok(())
}

/// Sum the gradient and the loss statistics of `pg` over all ranks, in place. Afterwards every
/// rank holds the global gradient, loss, clip counts, entropy, KL and token count.
pub fn all_reduce_policy_gradient(dist: &Dist, pg: &mut PolicyGradient, vars: &[Var]) -> Result<()> {
    if !dist.is_distributed() {
        return Ok(());
    }
    all_reduce_grads(dist, &mut pg.grads, vars)?;
    let st = &mut pg.stats;
    let tokens = st.n_tokens as f64;
    let mut sums = [
        pg.loss,
        st.n_thoughts as f64,
        tokens,
        st.n_clipped_low as f64,
        st.n_clipped_high as f64,
        st.ratio_sum,
        pg.entropy * tokens,
        pg.kl * tokens,
        pg.forward_tokens as f64,
    ];
    dist.all_reduce_f64("loss statistics", &mut sums, ReduceOp::Sum)?;
    let mut max = [st.ratio_max as f64];
    dist.all_reduce_f64("largest policy ratio", &mut max, ReduceOp::Max)?;
    let [loss, thoughts, tokens, low, high, ratio_sum, entropy, kl, fwd] = sums;
    pg.loss = loss;
    (st.n_thoughts, st.n_tokens, st.n_clipped_low, st.n_clipped_high) =
        (thoughts as usize, tokens as usize, low as usize, high as usize);
    st.ratio_sum = ratio_sum;
    st.ratio_max = max[0] as f32;
    pg.entropy = if tokens > 0.0 { entropy / tokens } else { 0.0 };
    pg.kl = if tokens > 0.0 { kl / tokens } else { 0.0 };
    pg.forward_tokens = fwd as usize;
    Ok(())
}

/// This rank's share of a rollout batch, the weights of its means.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub thoughts: usize,
    pub contexts: usize,
}

/// Replace this rank's values of `m` with the global ones. What is already global or the same
/// on every rank keeps its value: step, lr, grad norm, loss and the policy statistics (from the
/// reduced gradient), the EMA drift (every rank holds the same θ and φ), the totals (summed
/// as they are counted), and the train throughput (global tokens over rank 0's time). Then:
/// wall-clock times are the slowest rank's; sampling throughput and sampled tokens are summed;
/// means over thoughts or contexts are weighted by each rank's share; the reward std follows
/// from the global E[r²] and E[r].
pub fn reduce_step_metrics(dist: &Dist, m: &mut StepMetrics, share: Share) -> Result<()> {
    if dist.world() == 1 {
        return Ok(());
    }
    let mut maxes = [m.step_s, m.sample_s, m.score_s, m.train_s, m.optimizer_s];
    dist.all_reduce_f64("step times", &mut maxes, ReduceOp::Max)?;
    [m.step_s, m.sample_s, m.score_s, m.train_s, m.optimizer_s] = maxes;
    let (nt, nc) = (share.thoughts as f64, share.contexts as f64);
    let r = m.rollout.clone().unwrap_or_default();
    let mut sums = [
        m.tokens_per_s_sample,
        r.generated_tokens_step as f64,
        nt,
        nc,
        nt * r.reward_mean,
        nt * (r.reward_std * r.reward_std + r.reward_mean * r.reward_mean), // Σ r² over this rank's thoughts
        nt * r.s_pred_mean,
        nt * r.adv_abs_mean,
        nt * r.thought_len_mean,
        nt * r.thought_truncated_frac,
        nc * r.s_ema_mean,
        nc * r.frac_zero_std_groups,
    ];
    dist.all_reduce_f64("step metrics", &mut sums, ReduceOp::Sum)?;
    let [tps_sample, generated, nt, nc, reward, reward_sq, s_pred, adv, len, truncated, s_ema, zero_std] = sums;
    m.tokens_per_s_sample = tps_sample;
    if let Some(r) = &mut m.rollout {
        let (nt, nc) = (nt.max(1.0), nc.max(1.0));
        r.generated_tokens_step = generated.round() as u64;
        r.reward_mean = reward / nt;
        r.reward_std = (reward_sq / nt - r.reward_mean * r.reward_mean).max(0.0).sqrt();
        r.s_pred_mean = s_pred / nt;
        r.adv_abs_mean = adv / nt;
        r.thought_len_mean = len / nt;
        r.thought_truncated_frac = truncated / nt;
        r.s_ema_mean = s_ema / nc;
        r.frac_zero_std_groups = zero_std / nc;
    }
    if let Some(x) = &mut m.rlvr {
        reduce_rlvr_metrics(dist, x)?;
    }
    Ok(())
}


/// The RLVR group of a step's metrics over all ranks, from this rank's samples and groups:
/// counts summed, per-sample means weighted by samples, per-group means (the reward std
/// included, TRL's mean of group stds) by groups, the longest response the longest of any
/// rank. The clip, ratio and KL fields came from the reduced gradient statistics, already global.
pub fn reduce_rlvr_metrics(dist: &Dist, x: &mut RlvrMetrics) -> Result<()> {
    let (ns, ng) = (x.samples as f64, x.groups as f64);
    let mut sums = [
        ns,
        ng,
        ns * x.reward_mean,
        ns * x.accuracy,
        ns * x.no_answer_frac,
        ns * x.format_frac,
        ns * x.response_len_mean,
        ns * x.thought_len_mean,
        ns * x.answer_len_mean,
        ns * x.truncated_frac,
        ns * x.thought_truncated_frac,
        ns * x.answer_truncated_frac,
        ng * x.reward_std,
        ng * x.frac_solved_groups,
        ng * x.frac_unsolved_groups,
        ng * x.frac_zero_std_groups,
    ];
    dist.all_reduce_f64("rlvr metrics", &mut sums, ReduceOp::Sum)?;
    let mut longest = [x.response_len_max as f64];
    dist.all_reduce_f64("longest rlvr response", &mut longest, ReduceOp::Max)?;
    let [ns, ng, reward, acc, no_answer, format, len, thought, answer, trunc, thought_trunc, answer_trunc, std, solved, unsolved, zero_std] = sums;
    let (s, g) = (ns.max(1.0), ng.max(1.0));
    x.samples = ns.round() as usize;
    x.groups = ng.round() as usize;
    (x.reward_mean, x.accuracy, x.no_answer_frac, x.format_frac) = (reward / s, acc / s, no_answer / s, format / s);
    (x.response_len_mean, x.thought_len_mean, x.answer_len_mean) = (len / s, thought / s, answer / s);
    (x.truncated_frac, x.thought_truncated_frac, x.answer_truncated_frac) = (trunc / s, thought_trunc / s, answer_trunc / s);
    (x.reward_std, x.frac_solved_groups, x.frac_unsolved_groups, x.frac_zero_std_groups) = (std / g, solved / g, unsolved / g, zero_std / g);
    x.response_len_max = longest[0] as usize;
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_split_the_batch_and_each_minibatch_between_them() {
        // B = 6 over 2 ranks: rank 0 owns contexts 0, 2, 4, rank 1 owns 1, 3, 5; G = 2.
        let owned = [vec![0, 2, 4], vec![1, 3, 5]];
        // Minibatch of global contexts 0..3: rank 0 trains local contexts 0, 1 (global 0, 2).
        assert_eq!(minibatch_thoughts(&owned[0], 0..3, 2), vec![0, 1, 2, 3]);
        assert_eq!(minibatch_thoughts(&owned[1], 0..3, 2), vec![0, 1]);
        assert_eq!(minibatch_thoughts(&owned[1], 3..6, 2), vec![2, 3, 4, 5]);
        assert_eq!(local_contexts(6, &Dist::Single).unwrap(), (0..6).collect::<Vec<_>>());
    }
}
