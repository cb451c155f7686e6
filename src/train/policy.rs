//! The policy's log-probabilities of sampled thought tokens, with gradient: one forward over
//! `prefix + <think> + thought`, logits only at thought positions.
//!
//! The distribution is the sampler's: logits / temperature, with the rollout's banned tokens
//! removed (`</think>` too at the first thought position). Removing a set S from a softmax gives
//! log p'(x) = log p(x) − log(1 − Σ_{s∈S} p(s)) = z_x − log Σ_{j∉S} exp z_j, which is what is
//! computed here (fused, `model::fused::masked_target_logprobs`), so that the ratio
//! π_θ / π_θold is exactly 1 on the first PPO epoch up to float rounding.

use crate::model::{AttnLayout, Model};
use crate::rollout::{RolloutParams, Thought};
use anyhow::Result;
use crate::model::fused::{masked_target_logprobs, tempered_entropy, Exclusions};
use candle_core::Tensor;

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

/// Tokens of a thought that carry the policy gradient: the sampled ones, plus a forced
/// `</think>` when `grad_on_forced_end`.
pub fn grad_len(t: &Thought, grad_on_forced_end: bool) -> usize {
    t.sampled_len() + usize::from(!t.closed && grad_on_forced_end)
}

pub fn thought_logprobs(model: &Model, rows: &[ThoughtRow], p: &RolloutParams, grad_on_forced_end: bool) -> Result<ThoughtLogprobs> {
    let dev = model.embed.device().clone();
    let n = rows.len();
    let lens: Vec<usize> = rows.iter().map(|r| grad_len(r.thought, grad_on_forced_end)).collect();
    let u_max = lens.iter().copied().max().unwrap_or(0).max(1);
    // Input row: prefix, <think>, thought tokens up to the last one whose successor is scored.
    let seqs: Vec<Vec<u32>> = rows
        .iter()
        .zip(&lens)
        .map(|(r, &l)| {
            let mut s = Vec::with_capacity(r.prefix.len() + 1 + l);
            s.extend_from_slice(r.prefix);
            s.push(p.think_id);
            s.extend_from_slice(&r.thought.ids[..l.saturating_sub(1).min(r.thought.ids.len())]);
            s
        })
        .collect();
    let t_max = seqs.iter().map(|s| s.len()).max().unwrap();
    let (ids, seq_lens, _) = crate::model::transformer::pad_right(&seqs, &dev)?;
    let hidden = model.forward_hidden(&ids, &AttnLayout::right_padded(&seq_lens, t_max), None)?; // [N, T, D]
    // Gather the hidden state that predicts each thought token: row r, position |prefix| + u.
    let mut rows_idx = Vec::new();
    let mut targets = Vec::new();
    let mut first = Vec::new(); // 1.0 where u == 0 (`</think>` banned there)
    let mut slot = vec![0u32; n * u_max]; // [N, U] -> index into the gathered tokens (M = padding)
    for (r, (row, &l)) in rows.iter().zip(&lens).enumerate() {
        for u in 0..l {
            slot[r * u_max + u] = rows_idx.len() as u32;
            rows_idx.push((r * t_max + row.prefix.len() + u) as u32);
            targets.push(if u < row.thought.ids.len() { row.thought.ids[u] } else { p.end_think_id });
            first.push(if u == 0 { 1f32 } else { 0.0 });
        }
    }
    let m = rows_idx.len();
    for (r, &l) in lens.iter().enumerate() {
        for u in l..u_max {
            slot[r * u_max + u] = m as u32;
        }
    }
    let d = model.cfg.hidden_size;
    let h = hidden.reshape((n * t_max, d))?.index_select(&Tensor::new(rows_idx.as_slice(), &dev)?, 0)?; // [M, D]
    let z = model.logits(&h)?; // [M, V]
    let vocab = model.cfg.vocab_size as u32;
    let excl = Exclusions { banned: p.banned.iter().copied().filter(|&b| b < vocab).collect(), first_banned: Some(p.end_think_id), first_rows: first.iter().map(|&f| f > 0.0).collect() };
    let lp_tok = masked_target_logprobs(&z, &targets, &excl, p.sampling.temperature)?; // [M]
    let entropy_sum = tempered_entropy(&z, p.sampling.temperature)?.sum_all()?.to_scalar::<f32>()? as f64;
    let padded = Tensor::cat(&[&lp_tok, &Tensor::zeros(1, candle_core::DType::F32, &dev)?], 0)?;
    let logp = padded.index_select(&Tensor::new(slot.as_slice(), &dev)?, 0)?.reshape((n, u_max))?; // [N, U]
    let mut mask = vec![0f32; n * u_max];
    let mut old = vec![0f32; n * u_max];
    let now = lp_tok.detach().to_vec1::<f32>()?;
    for (r, (row, &l)) in rows.iter().zip(&lens).enumerate() {
        for u in 0..l {
            mask[r * u_max + u] = 1.0;
            old[r * u_max + u] = row.thought.logp_old.get(u).copied().unwrap_or(now[slot[r * u_max + u] as usize]);
        }
    }
    Ok(ThoughtLogprobs {
        logp,
        mask: Tensor::from_vec(mask, (n, u_max), &dev)?,
        logp_old: Tensor::from_vec(old, (n, u_max), &dev)?,
        entropy_sum,
        n_tokens: m,
        forward_tokens: seqs.iter().map(|s| s.len()).sum(),
    })
}
