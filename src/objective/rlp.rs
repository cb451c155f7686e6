//! The RLP objective (rlp-paper.md §2–3): information-gain rewards, group-relative (RLOO)
//! advantages, and the PPO-style clipped surrogate over thought tokens.
//!
//! Rewards and advantages carry no gradient, so they are plain `f32` slices. The surrogate is
//! built from candle ops because its gradient w.r.t. the current policy's log-probs is the
//! whole update.
//!
//! Legend: B contexts, G thoughts per context, N thoughts in one micro-batch (a slice of the
//! B·G thoughts), U thought-token slots per thought (padded to the longest thought).
//!
//! The trainer calls [`batch_rewards`] for a rollout batch, [`group_advantages`] on them, and
//! [`policy_loss`] once per micro-batch (RPT shares the advantages and the loss; only its
//! reward differs, `objective::rpt`).
//!
//! Not here: sampling, scoring (S_pred, S_ema), and the trainer's micro-batch loop.

use crate::rollout::Thought;
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Tensor};

/// Information-gain reward for the G thoughts of one context (paper eq. 3):
/// `r_i = S_pred_i − S_ema`, with `S_pred_i = log p_θ(x_t | x_<t, c_i)` and
/// `S_ema = log p̄_φ(x_t | x_<t)`.
pub fn info_gain_rewards(s_pred: &[f32], s_ema: f32) -> Vec<f32> {
    s_pred.iter().map(|s| s - s_ema).collect()
}

/// The rewards of a rollout batch, [B·G] (thoughts of a context adjacent): the information gain
/// of each thought over its context's `S_ema`.
pub fn batch_rewards(thoughts: &[Vec<Thought>], s_ema: &[f32]) -> Vec<f32> {
    let mut r = Vec::with_capacity(thoughts.iter().map(Vec::len).sum());
    for (group, &se) in thoughts.iter().zip(s_ema) {
        let s_pred: Vec<f32> = group.iter().map(|t| t.s_pred).collect();
        r.extend(info_gain_rewards(&s_pred, se));
    }
    r
}

/// Added to the group std before dividing, in the GRPO (std-normalised) advantage.
pub const STD_EPS: f64 = 1e-6;

/// A group whose reward std is at or below this counts as "zero std" (all G thoughts earned
/// the same reward, so its advantages are all zero and it carries no gradient). Same
/// tolerance as `torch.isclose(std, 0)` in TRL's `frac_reward_zero_std`.
pub const ZERO_STD_TOL: f32 = 1e-8;

fn check_groups(len: usize, g: usize) -> Result<()> {
    if g < 2 {
        bail!("group size G = {g}: group-relative advantages need G >= 2 thoughts per context");
    }
    if len % g != 0 {
        bail!("{len} rewards cannot be split into groups of G = {g}; expected B·G rewards");
    }
    Ok(())
}

/// Group-relative advantages. `rewards` holds B groups of G consecutive entries (thoughts of
/// the same context are adjacent); the result has the same layout.
///
/// - `std_normalize = false` (the paper, eq. 7, our default): `A_i = G/(G−1)·(r_i − r̄)`, where
///   r̄ is the group mean. This equals the RLOO advantage `r_i − mean_{j≠i} r_j`.
/// - `std_normalize = true` (plain GRPO, as TRL's `scale_rewards="group"`):
///   `A_i = (r_i − r̄)/(s + 1e-6)` with s the *sample* std of the group (divisor G−1, as
///   `torch.std`). The G/(G−1) factor is **not** applied: it corrects the RLOO baseline's
///   shrinkage, and after dividing by the std the scale is a convention anyway; applying both
///   (as the unofficial S8 prototype does) matches neither the paper nor GRPO.
///
/// Sums are taken in f64. Errors if G < 2 or `rewards.len()` is not a multiple of G.
pub fn group_advantages(rewards: &[f32], g: usize, std_normalize: bool) -> Result<Vec<f32>> {
    check_groups(rewards.len(), g)?;
    let rloo_factor = g as f64 / (g as f64 - 1.0);
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(g) {
        let (mean, std) = mean_and_sample_std(group);
        for &r in group {
            let centred = r as f64 - mean;
            let a = if std_normalize { centred / (std + STD_EPS) } else { rloo_factor * centred };
            out.push(a as f32);
        }
    }
    Ok(out)
}

/// Per-group sample std of the rewards (divisor G−1), one entry per group, for logging and for
/// `frac_zero_std_groups`. Same layout and errors as [`group_advantages`].
pub fn group_reward_std(rewards: &[f32], g: usize) -> Result<Vec<f32>> {
    check_groups(rewards.len(), g)?;
    Ok(rewards.chunks(g).map(|group| mean_and_sample_std(group).1 as f32).collect())
}

/// Fraction of groups whose reward std is at most [`ZERO_STD_TOL`]; 0 for no groups.
pub fn frac_zero_std_groups(group_stds: &[f32]) -> f32 {
    if group_stds.is_empty() {
        return 0.0;
    }
    let zero = group_stds.iter().filter(|&&s| s <= ZERO_STD_TOL).count();
    zero as f32 / group_stds.len() as f32
}

/// (mean, sample std with divisor n−1) of a group of at least two values, in f64.
fn mean_and_sample_std(xs: &[f32]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let sq: f64 = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
    (mean, (sq / (n - 1.0)).sqrt())
}

/// Diagnostics of one surrogate evaluation, computed without gradient. Counts (not fractions)
/// so that micro-batches [`merge`](Self::merge) exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SurrogateStats {
    /// Thoughts (rows) in the micro-batch.
    pub n_thoughts: usize,
    /// Loss-carrying thought tokens (mask > 0).
    pub n_tokens: usize,
    /// Tokens where the low clip is active: ρ < 1−ε_low and A < 0 (the clipped branch is the
    /// minimum, so the token gets no gradient).
    pub n_clipped_low: usize,
    /// Tokens where the high clip is active: ρ > 1+ε_high and A > 0.
    pub n_clipped_high: usize,
    /// Σ ρ over loss-carrying tokens.
    pub ratio_sum: f64,
    /// max ρ over loss-carrying tokens (0 when there are none).
    pub ratio_max: f32,
}

impl SurrogateStats {
    /// Accumulate another micro-batch's stats into these.
    pub fn merge(&mut self, other: &SurrogateStats) {
        self.n_thoughts += other.n_thoughts;
        self.n_tokens += other.n_tokens;
        self.n_clipped_low += other.n_clipped_low;
        self.n_clipped_high += other.n_clipped_high;
        self.ratio_sum += other.ratio_sum;
        self.ratio_max = self.ratio_max.max(other.ratio_max);
    }
    pub fn clip_frac_low(&self) -> f32 {
        frac(self.n_clipped_low, self.n_tokens)
    }
    pub fn clip_frac_high(&self) -> f32 {
        frac(self.n_clipped_high, self.n_tokens)
    }
    /// Mean importance ratio over loss-carrying tokens (1 when on-policy; 0 with no tokens).
    pub fn ratio_mean(&self) -> f32 {
        if self.n_tokens == 0 {
            0.0
        } else {
            (self.ratio_sum / self.n_tokens as f64) as f32
        }
    }
}

fn frac(count: usize, total: usize) -> f32 {
    if total == 0 {
        0.0
    } else {
        count as f32 / total as f32
    }
}

/// Checks the [N, U] / [N] shapes shared by the surrogate and the KL term; returns (N, U).
fn check_token_shapes(a: &Tensor, b: &Tensor, mask: &Tensor, total_thoughts: usize) -> Result<(usize, usize)> {
    let (n, u) = a.dims2()?;
    ensure!(b.dims() == [n, u], "log-prob shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    ensure!(mask.dims() == [n, u], "mask shape {:?} differs from log-prob shape [{n}, {u}]", mask.dims());
    ensure!(
        total_thoughts >= n && total_thoughts > 0,
        "total_thoughts = {total_thoughts} must count every thought of the step, so be >= this micro-batch's N = {n} and > 0"
    );
    Ok((n, u))
}

/// `b − a` on loss-carrying tokens and exactly 0 elsewhere, so that padding slots (which may
/// hold −inf or garbage log-probs) neither produce NaN nor receive gradient.
fn masked_log_ratio(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let active = mask.gt(0.0)?; // [N, U] u8
    let diff = (b - a)?; // [N, U]
    Ok(active.where_cond(&diff, &diff.zeros_like()?)?)
}

/// The paper's aggregation (eq. 8): per thought the mask-weighted mean over its tokens
/// (divisor max(1, Σ_u mask)), then the sum over the N thoughts divided by the *global*
/// `total_thoughts` (all B·G thoughts of the optimizer step, on all ranks). Summing this over
/// micro-batches gives the full-batch mean, and so do the gradients.
fn token_mean_then_thought_sum(per_token: &Tensor, mask: &Tensor, total_thoughts: usize) -> Result<Tensor> {
    let per_thought_sum = (per_token * mask)?.sum(1)?; // [N]
    let n_tokens = mask.sum(1)?.maximum(1.0)?; // [N]
    let per_thought_mean = (per_thought_sum / n_tokens)?; // [N]
    Ok((per_thought_mean.sum_all()? / total_thoughts as f64)?)
}

/// PPO clipped surrogate loss over thought tokens (paper eq. 8), for one micro-batch.
///
/// - `logp_new` [N, U]: log π_θ of each thought token under the current policy (differentiable).
/// - `logp_old` [N, U]: log π_θold from the behaviour policy (treated as a constant).
/// - `mask` [N, U]: 1.0 on thought tokens that carry loss, 0.0 on padding and on forced tokens.
/// - `adv` [N]: one advantage per thought (constant).
///
/// Per token `ρ = exp(logp_new − logp_old)` and `s = min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)`;
/// per thought `−Σ_u mask·s / max(1, Σ_u mask)`; the loss is the sum over the N thoughts
/// divided by `total_thoughts` (see `token_mean_then_thought_sum`).
///
/// Gradient: `min` and `clip` are candle's `minimum`/`clamp`, so the gradient is zero exactly
/// where the clipped branch is the minimum and the clip binds. Where both branches are equal
/// (ρ inside the clip range, or A = 0) candle splits the gradient half/half between two
/// identical expressions, which sums to the unclipped gradient. Tokens with mask 0 get exactly
/// zero gradient, whatever their log-prob values.
pub fn clipped_surrogate(
    logp_new: &Tensor,
    logp_old: &Tensor,
    mask: &Tensor,
    adv: &Tensor,
    eps_low: f64,
    eps_high: f64,
    total_thoughts: usize,
) -> Result<(Tensor, SurrogateStats)> {
    let (n, u) = check_token_shapes(logp_new, logp_old, mask, total_thoughts)?;
    ensure!(adv.dims() == [n], "advantage shape {:?}, expected [{n}] (one per thought)", adv.dims());
    ensure!(
        (0.0..1.0).contains(&eps_low) && eps_high >= 0.0,
        "clip range needs 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}"
    );

    let log_ratio = masked_log_ratio(&logp_old.detach(), logp_new, mask)?; // [N, U]
    let ratio = log_ratio.exp()?; // [N, U]
    let adv_tok = adv.detach().reshape((n, 1))?.broadcast_as((n, u))?; // [N, U]
    let unclipped = (&ratio * &adv_tok)?; // [N, U]
    let clipped = (ratio.clamp(1.0 - eps_low, 1.0 + eps_high)? * &adv_tok)?; // [N, U]
    let surrogate = unclipped.minimum(&clipped)?; // [N, U]
    let loss = token_mean_then_thought_sum(&surrogate, mask, total_thoughts)?.neg()?; // []

    let stats = surrogate_stats(&ratio, mask, adv, eps_low, eps_high)?;
    Ok((loss, stats))
}

fn surrogate_stats(ratio: &Tensor, mask: &Tensor, adv: &Tensor, eps_low: f64, eps_high: f64) -> Result<SurrogateStats> {
    let ratio = ratio.detach().to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mask = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let adv = adv.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let (lo, hi) = ((1.0 - eps_low) as f32, (1.0 + eps_high) as f32);
    let mut s = SurrogateStats { n_thoughts: adv.len(), ..Default::default() };
    for ((ratios, masks), &a) in ratio.iter().zip(&mask).zip(&adv) {
        for (&r, _) in ratios.iter().zip(masks).filter(|(_, &m)| m > 0.0) {
            s.n_tokens += 1;
            s.n_clipped_low += (r < lo && a < 0.0) as usize;
            s.n_clipped_high += (r > hi && a > 0.0) as usize;
            s.ratio_sum += r as f64;
            s.ratio_max = s.ratio_max.max(r);
        }
    }
    Ok(s)
}

/// Optional KL penalty toward a fixed reference policy (the paper's β ablation; β = 0, i.e. not
/// called, by default). Per token the k3 estimator `exp(d) − d − 1` with
/// `d = logp_ref − logp_new` (≥ 0, unbiased for KL(π_θ‖π_ref) under samples from π_θ),
/// aggregated exactly like [`clipped_surrogate`] and multiplied by `beta`.
///
/// Returns (β·aggregated KL, to add to the loss; the mean k3 over this micro-batch's
/// loss-carrying tokens, for logging). `logp_ref` is treated as a constant.
pub fn kl_penalty(
    logp_new: &Tensor,
    logp_ref: &Tensor,
    mask: &Tensor,
    beta: f64,
    total_thoughts: usize,
) -> Result<(Tensor, f32)> {
    check_token_shapes(logp_new, logp_ref, mask, total_thoughts)?;
    let d = masked_log_ratio(logp_new, &logp_ref.detach(), mask)?; // [N, U]
    let k3 = ((d.exp()? - &d)? - 1.0)?; // [N, U]
    let loss = (token_mean_then_thought_sum(&k3, mask, total_thoughts)? * beta)?;
    let masked_sum = (k3.detach() * mask)?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let n_tokens = mask.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    let mean_kl = if n_tokens > 0.0 { masked_sum / n_tokens } else { 0.0 };
    Ok((loss, mean_kl))
}

/// The settings of the policy loss (`objective.eps_low`, `eps_high`, `kl_coef`).
#[derive(Debug, Clone, Copy)]
pub struct LossSettings {
    pub eps_low: f64,
    pub eps_high: f64,
    /// β of the KL penalty; 0 leaves it out.
    pub kl_coef: f64,
}

/// One micro-batch's policy loss and what is logged about it.
pub struct PolicyLoss {
    /// [] the clipped surrogate (+ β·KL), differentiable.
    pub loss: Tensor,
    pub stats: SurrogateStats,
    /// Σ over the micro-batch's loss-carrying tokens of the k3 KL (0 without a reference).
    pub kl_token_sum: f64,
}

/// The loss of RLP and RPT for one micro-batch of N thoughts: [`clipped_surrogate`] of the
/// policy log-probs `logp` [N, U] against the behaviour ones `logp_old` [N, U] with advantages
/// `adv` [N], plus [`kl_penalty`] toward `reference_logp` [N, U] when given; `n_tokens` is the
/// number of ones in `mask` [N, U].
pub fn policy_loss(logp: &Tensor, logp_old: &Tensor, mask: &Tensor, n_tokens: usize, adv: &Tensor, reference_logp: Option<&Tensor>, s: LossSettings, total_thoughts: usize) -> Result<PolicyLoss> {
    let (mut loss, stats) = clipped_surrogate(logp, logp_old, mask, adv, s.eps_low, s.eps_high, total_thoughts)?;
    let mut kl_token_sum = 0.0;
    if let Some(reference) = reference_logp {
        let (kl, mean_kl) = kl_penalty(logp, reference, mask, s.kl_coef, total_thoughts)?;
        loss = (loss + kl)?;
        kl_token_sum = mean_kl as f64 * n_tokens as f64;
    }
    Ok(PolicyLoss { loss, stats, kl_token_sum })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    fn t2(rows: &[&[f32]]) -> Tensor {
        let u = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), u), &Device::Cpu).unwrap()
    }

    fn t1(xs: &[f32]) -> Tensor {
        Tensor::new(xs, &Device::Cpu).unwrap()
    }

    #[test]
    fn reward_is_pred_minus_ema() {
        // S_ema = −2.0: −1.0 − (−2.0) = 1.0; −2.5 − (−2.0) = −0.5.
        close(&info_gain_rewards(&[-1.0, -2.5], -2.0), &[1.0, -0.5], 1e-7);
    }

    #[test]
    fn advantage_has_rloo_factor() {
        // Group 1: r = [1,2,3,6], mean 3, centred [−2,−1,0,3], ×4/3 → [−8/3, −4/3, 0, 4].
        // (RLOO check: 1 − mean(2,3,6) = 1 − 11/3 = −8/3.)
        // Group 2: r = [0,0,0,4], mean 1, centred [−1,−1,−1,3], ×4/3 → [−4/3,−4/3,−4/3,4].
        let a = group_advantages(&[1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0], 4, false).unwrap();
        let third = 1.0 / 3.0;
        close(&a, &[-8.0 * third, -4.0 * third, 0.0, 4.0, -4.0 * third, -4.0 * third, -4.0 * third, 4.0], 1e-6);
    }

    #[test]
    fn advantage_is_independent_of_ema_baseline() {
        // Shifting every reward of a group by the same S_ema leaves the advantages unchanged.
        let a = group_advantages(&info_gain_rewards(&[1.0, 2.0, 3.0, 6.0], 0.0), 4, false).unwrap();
        let b = group_advantages(&info_gain_rewards(&[1.0, 2.0, 3.0, 6.0], -5.0), 4, false).unwrap();
        close(&a, &b, 1e-6);
    }

    #[test]
    fn advantage_std_normalized_uses_sample_std_without_rloo_factor() {
        // r = [1,2,3,6]: centred [−2,−1,0,3], Σ sq = 4+1+0+9 = 14, sample var 14/3,
        // s = √4.6667 = 2.1602469; A = centred / s = [−0.9258201, −0.4629100, 0, 1.3887301].
        let a = group_advantages(&[1.0, 2.0, 3.0, 6.0], 4, true).unwrap();
        close(&a, &[-0.925_82, -0.462_91, 0.0, 1.388_73], 1e-5);
        close(&group_reward_std(&[1.0, 2.0, 3.0, 6.0], 4).unwrap(), &[2.160_246_9], 1e-5);
    }

    #[test]
    fn zero_std_group_has_zero_advantage_and_is_counted() {
        // Group 1 all 5.0 (std 0); group 2 [1,3] (mean 2, sample std √2).
        let r = [5.0, 5.0, 1.0, 3.0];
        let stds = group_reward_std(&r, 2).unwrap();
        close(&stds, &[0.0, std::f32::consts::SQRT_2], 1e-6);
        assert_eq!(frac_zero_std_groups(&stds), 0.5);
        close(&group_advantages(&r, 2, true).unwrap()[..2], &[0.0, 0.0], 0.0);
        assert_eq!(frac_zero_std_groups(&[]), 0.0);
    }

    #[test]
    fn advantage_rejects_bad_groups() {
        assert!(group_advantages(&[1.0, 2.0], 1, false).is_err());
        assert!(group_advantages(&[1.0, 2.0, 3.0], 2, false).is_err());
        assert!(group_reward_std(&[1.0, 2.0, 3.0], 2).is_err());
    }

    /// Six one-token thoughts, logp_old = 0 so ρ = exp(logp_new), ε_low = ε_high = 0.2.
    /// | A  | ρ   | ρA   | clip(ρ)·A | min  | d min/d logp_new (= ρA if unclipped branch, else 0) |
    /// | +1 | 1.5 | 1.5  | 1.2       | 1.2  | 0     (high clip active)                        |
    /// | +1 | 0.5 | 0.5  | 0.8       | 0.5  | 0.5                                             |
    /// | +1 | 1.1 | 1.1  | 1.1       | 1.1  | 1.1   (inside)                                  |
    /// | −1 | 1.5 | −1.5 | −1.2      | −1.5 | −1.5                                            |
    /// | −1 | 0.5 | −0.5 | −0.8      | −0.8 | 0     (low clip active)                         |
    /// | −1 | 0.9 | −0.9 | −0.9      | −0.9 | −0.9  (inside)                                  |
    /// Σ min = 1.2+0.5+1.1−1.5−0.8−0.9 = −0.4; loss = −(−0.4)/6 = 0.0666667.
    /// d loss / d logp_new = −(d min)/6 = [0, −0.0833333, −0.1833333, 0.25, 0, 0.15].
    /// ρ mean = (1.5+0.5+1.1+1.5+0.5+0.9)/6 = 1.0.
    #[test]
    fn surrogate_clips_both_sides_for_both_advantage_signs() {
        let rho = [1.5f32, 0.5, 1.1, 1.5, 0.5, 0.9];
        let logp_new = Var::from_tensor(&t1(&rho.map(f32::ln)).reshape((6, 1)).unwrap()).unwrap();
        let logp_old = Tensor::zeros((6, 1), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::ones((6, 1), DType::F32, &Device::Cpu).unwrap();
        let adv = t1(&[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]);
        let (loss, stats) = clipped_surrogate(&logp_new, &logp_old, &mask, &adv, 0.2, 0.2, 6).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 0.066_666_7).abs() < 1e-6);
        let grad = loss.backward().unwrap().get(&logp_new).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        close(&grad, &[0.0, -0.083_333_3, -0.183_333_3, 0.25, 0.0, 0.15], 1e-6);
        assert_eq!((stats.n_thoughts, stats.n_tokens, stats.n_clipped_low, stats.n_clipped_high), (6, 6, 1, 1));
        assert!((stats.clip_frac_low() - 1.0 / 6.0).abs() < 1e-7);
        assert!((stats.ratio_mean() - 1.0).abs() < 1e-6);
        assert_eq!(stats.ratio_max, 1.5);
    }

    /// Two thoughts of lengths 3 and 1 (U = 3), on-policy (ρ = 1), A = [1, 2], and a global
    /// count of 4 thoughts (two more live in another micro-batch).
    /// Thought means: (1+1+1)/3 = 1 and 2/1 = 2; loss = −(1 + 2)/4 = −0.75.
    /// (A mean over all 4 tokens would give −(1+1+1+2)/4 = −1.25: the per-thought mean weighs
    /// each thought equally.) Gradient per token = −A/(len·4): thought 1 → −1/12 on each of its 3
    /// tokens; thought 2 → −2/4 = −0.5 on its token, exactly 0 on its two padding slots, even
    /// though logp_old there is −inf.
    #[test]
    fn aggregation_is_token_mean_then_global_thought_mean_and_masks_get_no_gradient() {
        let inf = f32::NEG_INFINITY;
        let logp_new = Var::from_tensor(&t2(&[&[-0.5, -1.2, -2.0], &[-0.3, 7.0, 0.0]])).unwrap();
        let logp_old = t2(&[&[-0.5, -1.2, -2.0], &[-0.3, inf, inf]]);
        let mask = t2(&[&[1.0, 1.0, 1.0], &[1.0, 0.0, 0.0]]);
        let adv = t1(&[1.0, 2.0]);
        let (loss, stats) = clipped_surrogate(&logp_new, &logp_old, &mask, &adv, 0.2, 0.2, 4).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() + 0.75).abs() < 1e-6);
        let grad = loss.backward().unwrap().get(&logp_new).unwrap().to_vec2::<f32>().unwrap();
        let g12 = -1.0 / 12.0;
        close(&grad[0], &[g12, g12, g12], 1e-7);
        assert_eq!(grad[1], vec![-0.5, 0.0, 0.0]);
        assert_eq!((stats.n_tokens, stats.n_clipped_low, stats.n_clipped_high), (4, 0, 0));
        assert_eq!(stats.ratio_mean(), 1.0);
    }

    #[test]
    fn surrogate_gradient_matches_finite_differences() {
        // f64 throughout so that central differences are accurate to ~1e-9. Values avoid the
        // clip boundaries (ρ = 0.8, 1.2) where the loss has a kink.
        let dev = Device::Cpu;
        let new = [0.3f64, -0.4, 0.05, -0.1, 0.25, -0.3, 0.1, 0.0, 0.15, -0.05, 0.4, -0.2];
        let old = [0.0f64, 0.0, 0.1, 0.1, -0.1, 0.0, 0.2, 0.3, 0.0, 0.0, 0.0, 0.1];
        let mask = Tensor::from_vec(vec![1f64, 1., 1., 0., 1., 1., 1., 1., 1., 1., 0., 0.], (3, 4), &dev).unwrap();
        let old_t = Tensor::from_vec(old.to_vec(), (3, 4), &dev).unwrap();
        let adv = Tensor::new(&[0.7f64, -1.3, 0.4], &dev).unwrap();
        let loss_at = |x: &[f64]| -> f64 {
            let t = Tensor::from_vec(x.to_vec(), (3, 4), &dev).unwrap();
            let (l, _) = clipped_surrogate(&t, &old_t, &mask, &adv, 0.2, 0.28, 5).unwrap();
            l.to_scalar::<f64>().unwrap()
        };
        let var = Var::from_tensor(&Tensor::from_vec(new.to_vec(), (3, 4), &dev).unwrap()).unwrap();
        let (loss, stats) = clipped_surrogate(&var, &old_t, &mask, &adv, 0.2, 0.28, 5).unwrap();
        let grad = loss.backward().unwrap().get(&var).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // The example must exercise both clips, or the test would not check the zero branch.
        assert!(stats.n_clipped_low >= 1 && stats.n_clipped_high >= 1, "{stats:?}");
        let h = 1e-6;
        for i in 0..new.len() {
            let (mut up, mut down) = (new, new);
            up[i] += h;
            down[i] -= h;
            let fd = (loss_at(&up) - loss_at(&down)) / (2.0 * h);
            assert!((fd - grad[i]).abs() < 1e-7, "token {i}: finite difference {fd} vs backward {}", grad[i]);
        }
    }

    #[test]
    fn split_micro_batches_sum_to_full_batch_gradient() {
        let theta =
            Var::from_tensor(&t2(&[&[-0.1, -0.2, 0.3], &[0.2, 0.0, -0.4], &[0.1, 0.5, -0.2], &[-0.3, 0.1, 0.0]]))
                .unwrap();
        let old = t2(&[&[0.0, 0.0, 0.0], &[0.1, 0.1, 0.1], &[0.0, 0.2, 0.0], &[0.0, 0.0, 0.3]]);
        let mask = t2(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 1.0], &[1.0, 0.0, 0.0], &[1.0, 1.0, 0.0]]);
        let adv = t1(&[0.5, -1.0, 2.0, -0.3]);

        let (full, _) = clipped_surrogate(&theta, &old, &mask, &adv, 0.2, 0.2, 4).unwrap();
        let g_full = full.backward().unwrap().get(&theta).unwrap().to_vec2::<f32>().unwrap();

        let part = |lo: usize, len: usize| {
            let narrow = |t: &Tensor| t.narrow(0, lo, len).unwrap();
            clipped_surrogate(&narrow(&theta), &narrow(&old), &narrow(&mask), &narrow(&adv), 0.2, 0.2, 4).unwrap()
        };
        let ((l1, s1), (l2, s2)) = (part(0, 1), part(1, 3));
        let g1 = l1.backward().unwrap().get(&theta).unwrap().clone();
        let g2 = l2.backward().unwrap().get(&theta).unwrap().clone();
        let g_split = (g1 + g2).unwrap().to_vec2::<f32>().unwrap();
        let l_split = l1.to_scalar::<f32>().unwrap() + l2.to_scalar::<f32>().unwrap();
        assert!((l_split - full.to_scalar::<f32>().unwrap()).abs() < 1e-6);
        for (a, b) in g_full.iter().zip(&g_split) {
            close(a, b, 1e-6);
        }
        assert!(g_full[0][0] != 0.0, "the test needs a non-trivial gradient");
        let mut merged = s1;
        merged.merge(&s2);
        assert_eq!((merged.n_thoughts, merged.n_tokens), (4, 8)); // 2 + 3 + 1 + 2 tokens
    }

    #[test]
    fn surrogate_rejects_bad_shapes_and_counts() {
        let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let adv = t1(&[1.0, 1.0]);
        assert!(clipped_surrogate(&z, &z, &z, &adv, 0.2, 0.2, 1).is_err(), "total < N");
        assert!(clipped_surrogate(&z, &z, &z, &t1(&[1.0]), 0.2, 0.2, 2).is_err(), "adv len");
        let z3 = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(clipped_surrogate(&z, &z3, &z, &adv, 0.2, 0.2, 2).is_err(), "old shape");
    }

    /// One thought of two tokens, new = [0, 0], ref = [ln 2, 0], β = 0.1, total 1.
    /// d = ref − new = [ln 2, 0]; k3 = [2 − 0.6931472 − 1, 1 − 0 − 1] = [0.3068528, 0].
    /// Thought mean 0.1534264; loss = 0.1 · 0.1534264 = 0.01534264.
    /// d k3/d new = 1 − exp(d) = [−1, 0]; gradient = β/(2 tokens · 1) · [−1, 0] = [−0.05, 0].
    /// The third slot is padding (mask 0, ref −inf) and gets exactly zero.
    #[test]
    fn kl_penalty_k3_hand_numbers() {
        let new = Var::from_tensor(&t2(&[&[0.0, 0.0, 3.0]])).unwrap();
        let reference = t2(&[&[std::f32::consts::LN_2, 0.0, f32::NEG_INFINITY]]);
        let mask = t2(&[&[1.0, 1.0, 0.0]]);
        let (loss, mean_kl) = kl_penalty(&new, &reference, &mask, 0.1, 1).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 0.015_342_64).abs() < 1e-7);
        assert!((mean_kl - 0.153_426_4).abs() < 1e-6);
        let grad = loss.backward().unwrap().get(&new).unwrap().to_vec2::<f32>().unwrap();
        close(&grad[0], &[-0.05, 0.0, 0.0], 1e-7);
        assert_eq!(grad[0][2], 0.0);
    }
}
