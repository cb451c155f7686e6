//! Objectives: how contexts and rollouts become rewards and a loss. One file each:
//!
//! - `rlp`: information-gain rewards, group-relative advantages, the clipped surrogate (+ KL);
//! - `rpt`: the RPT baseline's prefix-match reward and entropy filter (RLP's advantages and loss);
//! - `ntp`: next-token batches and loss (the CPT baseline);
//! - `sft`: supervised fine-tuning, the next-token loss on response tokens only;
//! - `rlvr`: reinforcement learning with verifiable rewards (post-training on question/answer
//!   items graded by `rlp eval`'s answer extraction).
//!
//! The trainer calls [`rollout_rewards`] for RLP and RPT, then `rlp::group_advantages` and
//! `rlp::policy_loss`; for NTP `ntp::window_batch` and `ntp::window_loss`. `rlp bench step`
//! calls the same functions.

pub mod ntp;
pub mod rlp;
pub mod rpt;
pub mod rlvr;
pub mod sft;

use crate::config::ObjectiveName;
use crate::data::corpus::TokenizedDocs;
use crate::data::sampler::Context;
use crate::rollout::Thought;
use crate::tokenizer::Tok;
use anyhow::{bail, Result};

/// What a rollout objective's reward reads of one batch of B contexts × G rollouts.
pub struct RewardInputs<'a> {
    pub contexts: &'a [Context],
    pub thoughts: &'a [Vec<Thought>], // [B][G]
    pub s_ema: &'a [f32],             // [B]
    /// The documents the contexts were drawn from (RPT reads the true continuation).
    pub docs: &'a TokenizedDocs,
    pub tok: &'a Tok,
    pub guess_tokens: usize,
}

/// The reward of every rollout, [B·G], by the run's objective.
pub fn rollout_rewards(objective: ObjectiveName, x: &RewardInputs) -> Result<Vec<f32>> {
    Ok(match objective {
        ObjectiveName::Rlp => rlp::batch_rewards(x.thoughts, x.s_ema),
        ObjectiveName::Rpt => rpt::batch_rewards(x.tok, x.docs, x.contexts, x.thoughts, x.guess_tokens),
        other @ (ObjectiveName::Ntp | ObjectiveName::Sft | ObjectiveName::Rlvr) => bail!("objective.name = {other:?} has no thought rollouts to reward"),
    })
}
