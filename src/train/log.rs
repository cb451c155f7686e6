//! What a run writes as it goes: one typed [`StepMetrics`] per optimizer step (metrics.jsonl,
//! TensorBoard, the progress line), the periodic held-out evaluation, and the logged thoughts
//! (samples.jsonl). Rank 0 alone writes.

use super::accounting::Totals;
use super::rollouts::RolloutBatch;
use crate::data::sampler::Context;
use crate::objective::rlp::frac_zero_std_groups;
use crate::objective::rlvr::RlvrMetrics;
use crate::rollout::{RolloutParams, Thought};
use crate::tokenizer::Tok;
use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

/// One line of metrics.jsonl. The optional groups are absent for objectives they do not apply to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
    /// Of the clipped, summed gradient; None when the step was skipped.
    pub grad_norm: Option<f32>,
    /// The step had a non-finite loss or gradient and changed nothing.
    pub skipped: bool,
    pub tokens_per_s_sample: f64,
    pub tokens_per_s_train: f64,
    pub step_s: f64,
    pub sample_s: f64,
    pub score_s: f64,
    pub train_s: f64,
    pub optimizer_s: f64,
    pub input_tokens_total: u64,
    pub generated_tokens_total: u64,
    pub trained_tokens_total: u64,
    pub flops_sample_total: f64,
    pub flops_score_total: f64,
    pub flops_train_total: f64,
    pub flops_total: f64,
    #[serde(flatten)]
    pub rollout: Option<RolloutMetrics>,
    #[serde(flatten)]
    pub policy: Option<PolicyMetrics>,
    #[serde(flatten)]
    pub sft: Option<SftMetrics>,
    #[serde(flatten)]
    pub rlvr: Option<RlvrMetrics>,
    #[serde(flatten)]
    pub eval: Option<EvalMetrics>,
}

/// Of an SFT step (already global: counted over the whole step's windows).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SftMetrics {
    /// Response tokens trained this step (the loss's denominator).
    pub response_tokens_step: u64,
    /// Of the step's target positions, the fraction that are response tokens.
    pub response_frac: f64,
    /// `logging.eval_every`: mean NLL (nats) of the held-out examples' response tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_response_nll: Option<f64>,
}

/// Of a rollout batch (RLP, RPT); means over this rank's thoughts or contexts until reduced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RolloutMetrics {
    pub reward_mean: f64,
    /// Population std of the rewards of all B·G thoughts.
    pub reward_std: f64,
    pub s_pred_mean: f64,
    pub s_ema_mean: f64,
    pub adv_abs_mean: f64,
    pub frac_zero_std_groups: f64,
    pub thought_len_mean: f64,
    pub thought_truncated_frac: f64,
    /// ‖θ − φ‖ / ‖θ‖, how far the teacher lags.
    pub ema_drift: f64,
    /// Tokens the rollouts sampled (thoughts, `</think>`, guesses).
    pub generated_tokens_step: u64,
}

/// Of the policy gradient (already global: from the reduced gradient's statistics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyMetrics {
    pub clip_frac_low: f64,
    pub clip_frac_high: f64,
    pub ratio_mean: f64,
    pub entropy: f64,
    pub kl: f64,
}

/// `logging.eval_every`: a small held-out evaluation at this step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalMetrics {
    pub eval_nll: f64,
    pub eval_acc_no_think: f64,
    pub eval_acc_think: f64,
    pub eval_info_gain: f64,
}

/// Phase timings of one optimizer step.
pub struct Timing {
    pub sample_s: f64,
    pub score_s: f64,
    pub train_s: f64,
    pub optim_s: f64,
    pub train_tokens: usize,
}

/// What the update reports for the log.
pub struct UpdateReport {
    pub lr: f64,
    pub grad_norm: Option<f32>,
    pub skipped: bool,
}

impl StepMetrics {
    /// The fields every objective logs: step, lr, loss, grad norm, timings, throughput, totals.
    /// `generated` is the tokens the step's rollouts sampled (0 for ntp).
    pub fn new(step: u64, upd: &UpdateReport, loss: f64, t: &Timing, generated: u64, totals: &Totals) -> StepMetrics {
        let rate = |n: f64, s: f64| if s > 0.0 { n / s } else { 0.0 };
        StepMetrics {
            step,
            lr: upd.lr,
            loss,
            grad_norm: upd.grad_norm,
            skipped: upd.skipped,
            tokens_per_s_sample: rate(generated as f64, t.sample_s),
            tokens_per_s_train: rate(t.train_tokens as f64, t.train_s),
            step_s: t.sample_s + t.score_s + t.train_s + t.optim_s,
            sample_s: t.sample_s,
            score_s: t.score_s,
            train_s: t.train_s,
            optimizer_s: t.optim_s,
            input_tokens_total: totals.input_tokens,
            generated_tokens_total: totals.generated_tokens,
            trained_tokens_total: totals.trained_tokens,
            flops_sample_total: totals.flops_sample,
            flops_score_total: totals.flops_score,
            flops_train_total: totals.flops_train,
            flops_total: totals.flops_total(),
            rollout: None,
            policy: None,
            sft: None,
            rlvr: None,
            eval: None,
        }
    }

    /// As a JSON object with its keys sorted, the form of a metrics.jsonl line.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("metrics serialise")
    }
}

impl RolloutMetrics {
    /// Of this rank's share of `batch`; `ema_drift` from the caller (θ and φ live in the trainer).
    pub fn of_batch(batch: &RolloutBatch, ema_drift: f64) -> RolloutMetrics {
        let all: Vec<&Thought> = batch.thoughts.iter().flatten().collect();
        let n = all.len().max(1) as f64;
        let mean = |xs: &[f32]| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64;
        let r_mean = mean(&batch.rewards);
        let r_std = (batch.rewards.iter().map(|&r| (r as f64 - r_mean).powi(2)).sum::<f64>() / batch.rewards.len().max(1) as f64).sqrt();
        let s_pred: Vec<f32> = all.iter().map(|t| t.s_pred).collect();
        RolloutMetrics {
            reward_mean: r_mean,
            reward_std: r_std,
            s_pred_mean: mean(&s_pred),
            s_ema_mean: mean(&batch.s_ema),
            adv_abs_mean: batch.advantages.iter().map(|a| a.abs() as f64).sum::<f64>() / n,
            frac_zero_std_groups: frac_zero_std_groups(&batch.group_std) as f64,
            thought_len_mean: all.iter().map(|t| t.ids.len() as f64).sum::<f64>() / n,
            thought_truncated_frac: all.iter().filter(|t| !t.closed).count() as f64 / n,
            ema_drift,
            generated_tokens_step: all.iter().map(|t| t.ids.len() + 1 + t.guess.len()).sum::<usize>() as u64,
        }
    }

    /// Warnings for a batch that cannot teach much (from the reduced, global metrics).
    pub fn warn_if_degenerate(&self, step: u64, budget: usize) {
        if self.thought_truncated_frac > 0.9 && budget > 1 {
            eprintln!("warning: step {step}: {:.0}% of thoughts hit the {budget}-token budget; consider a larger rollout.thought_budget", 100.0 * self.thought_truncated_frac);
        }
        if self.frac_zero_std_groups == 1.0 {
            eprintln!("warning: step {step}: every group has zero reward spread, so every advantage is 0 and nothing is learned");
        }
    }
}

pub fn append_jsonl(run: &Path, name: &str, v: &Value) -> Result<()> {
    let p = run.join(name);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))?;
    writeln!(f, "{v}").with_context(|| format!("cannot write {}", p.display()))
}

/// Drop the lines of a JSONL log whose `step` is past `step` (they belong to steps that will
/// run again after a resume).
pub fn truncate_jsonl_after(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step))
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("cannot rewrite {}", path.display()))
}

/// The samples.jsonl rows of a batch, one per thought (`context` is the index in the global
/// batch), each with the token ids that replay it: the model of checkpoint `step-{model_step}`
/// on `prefix_ids`, `<think>`, `thought_ids`, `</think>`, `separator_ids` gives
/// log p(`x_t_id`) = `s_pred` (`rlp score --ids`).
pub fn sample_rows(tok: &Tok, batch: &RolloutBatch, p: &RolloutParams, step: u64) -> Result<Vec<Value>> {
    let g = p.g;
    let mut rows = Vec::new();
    for (b, (ctx, group)) in batch.contexts.iter().zip(&batch.thoughts).enumerate() {
        let tail = &ctx.prefix[ctx.prefix.len().saturating_sub(32)..];
        for (i, t) in group.iter().enumerate() {
            let mut rec = json!({
                "step": step,
                "model_step": batch.model_step,
                "context": batch.global_index[b],
                "doc": ctx.doc,
                "pos": ctx.pos,
                "prefix_tail": tok.decode(tail)?,
                "thought": tok.decode(&t.ids)?,
                "closed": t.closed,
                "x_t": tok.decode(&[ctx.target])?,
                "s_pred": t.s_pred,
                "s_ema": batch.s_ema[b],
                "reward": batch.rewards[b * g + i],
                "advantage": batch.advantages[b * g + i],
            });
            for (k, v) in replay_fields(ctx, t, p).as_object().expect("an object") {
                rec[k] = v.clone();
            }
            if !t.guess.is_empty() {
                rec["guess"] = json!(tok.decode(&t.guess)?);
                rec["guess_ids"] = json!(t.guess);
            }
            rows.push(rec);
        }
    }
    Ok(rows)
}

/// The ids of one logged thought and its behaviour log-probs (tempered at
/// `rollout.temperature`, as sampled): `prefix_ids` is the prefix the model saw (already cut to
/// `data.max_context`), `thought_logprobs` has one entry per thought token, `end_think_logprob`
/// is that of a sampled `</think>` (null when it was forced at the budget).
fn replay_fields(ctx: &Context, t: &Thought, p: &RolloutParams) -> Value {
    let n = t.ids.len();
    json!({
        "prefix_ids": ctx.prefix,
        "think_id": p.think_id,
        "thought_ids": t.ids,
        "end_think_id": p.end_think_id,
        "separator_ids": p.separator,
        "x_t_id": ctx.target,
        "thought_logprobs": t.logp_old[..n.min(t.logp_old.len())],
        "end_think_logprob": if t.closed { t.logp_old.get(n).copied() } else { None },
    })
}

/// Thoughts per rollout batch shown in TensorBoard's text tab.
#[cfg(feature = "tensorboard")]
pub const TENSORBOARD_THOUGHTS: usize = 4;

/// The first `n` thoughts of a batch as markdown: prefix tail, thought, true next token, S_pred
/// and reward, one paragraph each.
#[cfg(feature = "tensorboard")]
pub fn samples_markdown(tok: &Tok, batch: &RolloutBatch, n: usize) -> Result<String> {
    let g = batch.thoughts.first().map_or(1, |t| t.len().max(1));
    let quote = |s: String| format!("`{}`", s.replace('`', "'").replace('\n', "⏎"));
    let mut out = Vec::new();
    for (k, t) in batch.thoughts.iter().flatten().take(n).enumerate() {
        let ctx = &batch.contexts[k / g];
        let tail = &ctx.prefix[ctx.prefix.len().saturating_sub(32)..];
        out.push(format!(
            "**context {} · thought {}** (model step {}): …{} **&lt;think&gt;** {} **&lt;/think&gt;** → {} · S_pred {:.3} · S_ema {:.3} · reward {:+.3}{}",
            batch.global_index[k / g],
            k % g,
            batch.model_step,
            quote(tok.decode(tail)?),
            quote(tok.decode(&t.ids)?),
            quote(tok.decode(&[ctx.target])?),
            t.s_pred,
            batch.s_ema[k / g],
            batch.rewards[k],
            if t.closed { "" } else { " (budget hit)" },
        ));
    }
    Ok(out.join("\n\n"))
}

/// The batch as written to `nonfinite-batch-step-*.json` when a run stops on repeated faults.
pub fn bad_rollout_batch_json(batch: &RolloutBatch) -> Value {
    json!({
        "contexts": batch.contexts.iter().map(|c| json!({"doc": c.doc, "pos": c.pos, "prefix": c.prefix, "target": c.target})).collect::<Vec<_>>(),
        "thoughts": batch.thoughts.iter().map(|g| g.iter().map(|t| json!({"ids": t.ids, "logp_old": t.logp_old, "s_pred": t.s_pred, "closed": t.closed, "guess": t.guess})).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "rewards": batch.rewards,
        "advantages": batch.advantages,
    })
}
