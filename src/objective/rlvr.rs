//! RLVR: reinforcement learning with verifiable rewards on question/answer items (the JSONL
//! `rlp eval --task jsonl:FILE` reads, `eval::items`).
//!
//! One step: each question's prompt (thinking first, as `rlp eval` prompts) is sampled G times
//! with `eval::generate::think_then_answer`; each answer is graded by `rlp eval`'s own rules
//! (`eval::bench::grade`) into a 1/0 reward; rewards become group-relative advantages (RLOO or
//! GRPO, `objective::rlp::group_advantages`); the loss is RLP's clipped surrogate
//! (`objective::rlp::clipped_surrogate`) over the generated tokens, plus optionally β times the
//! k3 KL to a fixed reference (`objective::rlp::kl_penalty`).
//!
//! Legend: Q questions, G samples per question, N samples in one micro-batch (a slice of the
//! Q·G), U generated-token slots per sample (padded), R rows, T row length, M trained tokens,
//! D hidden size, V vocabulary.
//!
//! Choices, and why:
//! - **Prompt.** [`PromptLayout::Bench`] is `rlp eval`'s (`Question: …\nAnswer:` then
//!   `<think>`); [`PromptLayout::Raw`] is the question text itself then `<think>` (the demo's
//!   tallies, which its base model reads without a wrapper). No `<think>` with a thought budget 0.
//! - **Reward.** 1 when `grade` says right, else 0 (wrong or nothing extractable). The optional
//!   format reward adds `format_weight` when the sample is well formed: it wrote `</think>`
//!   itself (not forced at the budget; with budget 0 this part is waived) and its answer has
//!   something `grade` can read. Off (0) by default, as in the paper's RLVR on MATH.
//! - **Which tokens train.** Sampled thought tokens, `</think>` when sampled (not when forced),
//!   and the answer tokens: the same rule as RLP's thoughts. The token that ended the answer
//!   (EOS, or the newline after visible text) is not part of `Generation::answer`, so it is not
//!   trained.
//! - **Log-probs.** Those of the distribution sampled from, as the RLP policy forward computes
//!   them: logits / temperature with each phase's banned tokens removed (thought: EOS,
//!   `<think>`, ids past the tokenizer, and `</think>` at the first thought token; answer:
//!   `<think>`, `</think>`, ids past the tokenizer). `think_then_answer` does not return its
//!   behaviour log-probs, so `logp_old` is this same function on the policy before the update
//!   (no gradient), and ρ = 1 exactly on the first PPO epoch. Top-k / top-p truncation is not
//!   in the computed distribution (as in RLP).
//! - **Questions and RNG.** [`QuestionOrder`] walks a seeded shuffle of the items, reshuffled
//!   each epoch; [`sample_groups_seeded`] draws each question's G samples from
//!   `rollout::context_rng(seed, step, question index)`, so samples do not depend on ranks or
//!   batching and resume needs no RNG state ([`sample_groups`] shares one RNG, batching more rows).
//! - **Aggregation.** RLP's: mean over each sample's trained tokens, then the sum over samples
//!   divided by the step's total sample count (all micro-batches and ranks).
//! - **KL.** Against the reference's log-probs of the same tokens under the same distribution;
//!   per token k3 = exp(d) − d − 1 with d = logp_ref − logp_new, aggregated like the surrogate.
//! - **Metrics** (GRPO users' names): `reward_std` is the mean over groups of the group's sample
//!   std, as TRL logs it; a group is solved when all G samples are right and unsolved when none
//!   is; `truncated_frac` counts a sample whose thought hit the budget or whose answer hit
//!   `answer_tokens`.

use super::rlp::{clipped_surrogate, frac_zero_std_groups, group_advantages, group_reward_std, kl_penalty, SurrogateStats};
use crate::eval::bench::{grade, prompt_ids};
use crate::eval::generate::{think_then_answer, GenSpec, Generation};
use crate::eval::items::Item;
use crate::model::transformer::pad_right;
use crate::model::{AttnLayout, Model};
use crate::rollout::context_rng;
use crate::tokenizer::Tok;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, D};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How group-relative advantages are formed (`objective::rlp::group_advantages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvantageKind {
    /// `G/(G−1)·(r − r̄)`: leave-one-out baseline, no std division (RLP's default).
    Rloo,
    /// `(r − r̄)/(s + 1e-6)`, s the group's sample std (GRPO).
    Grpo,
}

impl AdvantageKind {
    /// `"rloo"` or `"grpo"`.
    pub fn parse(s: &str) -> Result<AdvantageKind> {
        match s {
            "rloo" => Ok(AdvantageKind::Rloo),
            "grpo" => Ok(AdvantageKind::Grpo),
            other => bail!("unknown RLVR advantage `{other}`: use rloo or grpo"),
        }
    }
}

/// Advantages of Q groups of G consecutive rewards.
pub fn advantages(rewards: &[f32], g: usize, kind: AdvantageKind) -> Result<Vec<f32>> {
    group_advantages(rewards, g, kind == AdvantageKind::Grpo)
}

/// What the model sees before it thinks (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptLayout {
    /// `rlp eval`'s: `Question: {q}\n[A. choice\n…]Answer:`.
    Bench,
    /// The question text as it is.
    Raw,
}

/// Prompt ids of `item`, ending with `<think>` when `think`.
pub fn prompt(tok: &Tok, item: &Item, layout: PromptLayout, think: bool) -> Result<Vec<u32>> {
    match layout {
        PromptLayout::Bench => prompt_ids(tok, item, think),
        PromptLayout::Raw => {
            let mut ids = tok.encode(&item.question)?;
            if think {
                ids.push(tok.think_id);
            }
            Ok(ids)
        }
    }
}

/// G samples per prompt, the G of one prompt adjacent, decoded `batch` rows at a time.
/// `spec.sampling` and `spec.answer_sampling` should be set (None would make all G identical).
pub fn sample_groups(model: &Model, tok: &Tok, prompts: &[Vec<u32>], g: usize, spec: &GenSpec, batch: usize, rng: &mut ChaCha8Rng) -> Result<Vec<Generation>> {
    ensure!(g >= 2, "RLVR needs G >= 2 samples per question for group-relative advantages, got {g}");
    let rows: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), g)).collect();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        out.extend(think_then_answer(model, tok, chunk, spec, rng)?);
    }
    Ok(out)
}

/// Which RNG stream each question of a step samples from (see [`sample_groups_seeded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSeed {
    pub seed: u64,
    pub step: u64,
    /// Global index, within the step, of the first of the prompts passed.
    pub first_question: u64,
}

/// `sample_groups` with one RNG per question, `rollout::context_rng(seed, step, index)` for
/// the question's global index in the step (`first_question` + its position in `prompts`),
/// so the samples do not depend on how questions are split over ranks or batches, and resume
/// needs no RNG state. The G samples of one question are decoded together.
pub fn sample_groups_seeded(model: &Model, tok: &Tok, prompts: &[Vec<u32>], g: usize, spec: &GenSpec, at: StepSeed) -> Result<Vec<Generation>> {
    ensure!(g >= 2, "RLVR needs G >= 2 samples per question for group-relative advantages, got {g}");
    let mut out = Vec::with_capacity(prompts.len() * g);
    for (q, p) in prompts.iter().enumerate() {
        let mut rng = context_rng(at.seed, at.step, at.first_question + q as u64);
        out.extend(think_then_answer(model, tok, &vec![p.clone(); g], spec, &mut rng)?);
    }
    Ok(out)
}

/// Where [`QuestionOrder`] is; serialise it into a checkpoint to resume exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionOrderState {
    num_items: usize,
    seed: u64,
    epoch: u64,
    /// Next position in this epoch's order.
    cursor: usize,
}

/// The questions of each step: a seeded shuffle of all items, reshuffled each epoch (the
/// paper's RLVR is one epoch over MATH train).
pub struct QuestionOrder {
    state: QuestionOrderState,
    order: Vec<usize>,
}

fn question_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x726c_7672_5f71_7573); // "rlvr_qus"
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

impl QuestionOrder {
    pub fn new(num_items: usize, seed: u64) -> Result<QuestionOrder> {
        ensure!(num_items > 0, "the RLVR set has no questions");
        Ok(QuestionOrder { state: QuestionOrderState { num_items, seed, epoch: 0, cursor: 0 }, order: question_order(seed, 0, num_items) })
    }

    /// The next `q` item indices (an epoch boundary continues into the next epoch's order).
    pub fn next_batch(&mut self, q: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(q);
        while out.len() < q {
            if self.state.cursor == self.state.num_items {
                self.state.epoch += 1;
                self.state.cursor = 0;
                self.order = question_order(self.state.seed, self.state.epoch, self.state.num_items);
            }
            out.push(self.order[self.state.cursor]);
            self.state.cursor += 1;
        }
        out
    }

    /// Epochs completed over the questions (0 during the first).
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    pub fn state(&self) -> &QuestionOrderState {
        &self.state
    }

    pub fn restore(&mut self, state: QuestionOrderState) -> Result<()> {
        ensure!(
            state.num_items == self.state.num_items && state.seed == self.state.seed && state.cursor <= state.num_items,
            "cannot resume the RLVR question order: it was saved for {} questions and seed {}, this run has {} and {}",
            state.num_items,
            state.seed,
            self.state.num_items,
            self.state.seed
        );
        self.order = question_order(state.seed, state.epoch, state.num_items);
        self.state = state;
        Ok(())
    }
}

/// Reward settings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RewardSpec {
    /// Added for a well-formed sample (module docs); 0 turns the format reward off.
    pub format_weight: f32,
}

/// One graded sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Graded {
    pub correct: bool,
    /// `grade` could read an answer.
    pub extracted: bool,
    /// Closed its own thought (or had none to close) and has a readable answer.
    pub formatted: bool,
    pub reward: f32,
}

/// Grade a sample's decoded answer. `thinking`: the prompt asked for a thought (budget > 0);
/// `closed`: the sample wrote `</think>` itself.
pub fn grade_sample(item: &Item, answer: &str, closed: bool, thinking: bool, spec: &RewardSpec) -> Graded {
    let outcome = grade(item, answer);
    let correct = outcome == Some(true);
    let extracted = outcome.is_some();
    let formatted = extracted && (closed || !thinking);
    let reward = f32::from(u8::from(correct)) + if formatted { spec.format_weight } else { 0.0 };
    Graded { correct, extracted, formatted, reward }
}

/// Grade Q·G samples (G per item, adjacent) with `tok` decoding each answer.
pub fn grade_groups(tok: &Tok, items: &[Item], gens: &[Generation], g: usize, thinking: bool, spec: &RewardSpec) -> Result<Vec<Graded>> {
    ensure!(gens.len() == items.len() * g, "{} samples for {} questions of G = {g}: expected {}", gens.len(), items.len(), items.len() * g);
    gens.iter().enumerate().map(|(i, s)| Ok(grade_sample(&items[i / g], &tok.decode(&s.answer)?, s.closed, thinking, spec))).collect()
}

/// The banned tokens of each phase and the temperature: the distribution samples were drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct GenBans {
    /// First thought token: EOS, `<think>`, ids past the tokenizer, `</think>`.
    pub first_thought: Vec<u32>,
    /// Later thought tokens and a sampled `</think>`: EOS, `<think>`, ids past the tokenizer.
    pub thought: Vec<u32>,
    /// Answer tokens: `<think>`, `</think>`, ids past the tokenizer.
    pub answer: Vec<u32>,
    pub temperature: f32,
    pub end_think_id: u32,
}

impl GenBans {
    /// The bans of `eval::generate::think_then_answer` for `tok` on a model with `model_vocab`
    /// embedding rows, sampling at `temperature`.
    pub fn for_tokenizer(tok: &Tok, model_vocab: usize, temperature: f32) -> GenBans {
        let out_of_vocab = tok.vocab_size() as u32..model_vocab as u32;
        let mut thought: Vec<u32> = tok.eos_ids.clone();
        thought.push(tok.think_id);
        thought.extend(out_of_vocab.clone());
        let mut first_thought = thought.clone();
        first_thought.push(tok.end_think_id);
        let mut answer = vec![tok.think_id, tok.end_think_id];
        answer.extend(out_of_vocab);
        GenBans { first_thought, thought, answer, temperature, end_think_id: tok.end_think_id }
    }

    fn of(&self, phase: Phase) -> &[u32] {
        match phase {
            Phase::FirstThought => &self.first_thought,
            Phase::Thought => &self.thought,
            Phase::Answer => &self.answer,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    FirstThought,
    Thought,
    Answer,
}

const PHASES: [Phase; 3] = [Phase::FirstThought, Phase::Thought, Phase::Answer];

/// One sample to score: its prompt and what was generated after it.
pub struct SampleRow<'a> {
    pub prompt: &'a [u32],
    pub gen: &'a Generation,
}

/// Trained tokens of a sample: (index in its sequence, phase it was drawn in).
type TrainedTokens = Vec<(usize, Phase)>;

/// A sample's full sequence (prompt, thought, `</think>` when thinking, answer) and its trained
/// tokens as (index in the sequence, phase).
fn sequence(row: &SampleRow, thinking: bool, end_think: u32) -> (Vec<u32>, TrainedTokens) {
    let p = row.prompt.len();
    let mut seq = row.prompt.to_vec();
    let mut trained = Vec::new();
    if thinking {
        for (u, &t) in row.gen.thought.iter().enumerate() {
            trained.push((seq.len(), if u == 0 { Phase::FirstThought } else { Phase::Thought }));
            seq.push(t);
        }
        if row.gen.closed {
            trained.push((seq.len(), Phase::Thought));
        }
        seq.push(end_think);
    }
    for &t in &row.gen.answer {
        trained.push((seq.len(), Phase::Answer));
        seq.push(t);
    }
    debug_assert!(trained.iter().all(|&(i, _)| i >= p.max(1)));
    (seq, trained)
}

/// The policy forward's inputs for N samples: right-padded rows `prompt + generated` (the last
/// token left off, nothing predicts from it) and where each trained token's predicting hidden
/// state sits.
pub struct SampleInputs {
    /// [R = N, T] ids and their causal layout.
    pub ids: Tensor,
    pub layout: AttnLayout,
    /// [N, U] 1.0 on trained tokens, 0.0 on padding.
    pub mask: Tensor,
    /// Trained tokens per sample (the mask's row sums).
    pub lens: Vec<usize>,
    /// [M] flat index (row·T + position) of the hidden state predicting each trained token.
    rows_idx: Vec<u32>,
    /// [M] the trained tokens and the phase each was drawn in.
    targets: Vec<u32>,
    phases: Vec<Phase>,
    /// [N·U] index into the M trained tokens (M = padding).
    slot: Vec<u32>,
    u_max: usize,
}

impl SampleInputs {
    /// Inputs for `rows`; `thinking`: the prompts end with `<think>` and each sample has a thought.
    pub fn new(rows: &[SampleRow], thinking: bool, bans: &GenBans, dev: &candle_core::Device) -> Result<SampleInputs> {
        ensure!(!rows.is_empty(), "no RLVR samples to score");
        ensure!(rows.iter().all(|r| !r.prompt.is_empty()), "an RLVR prompt has no tokens: every question must encode to at least one token");
        let seqs: Vec<(Vec<u32>, TrainedTokens)> = rows.iter().map(|r| sequence(r, thinking, bans.end_think_id)).collect();
        let fed: Vec<Vec<u32>> = seqs.iter().map(|(s, _)| s[..(s.len() - 1).max(1)].to_vec()).collect();
        let (ids, lens_fed, t) = pad_right(&fed, dev)?; // [N, T]
        let layout = AttnLayout::right_padded(&lens_fed, t);
        let u_max = seqs.iter().map(|(_, tr)| tr.len()).max().unwrap_or(0).max(1);
        let (mut rows_idx, mut targets, mut phases) = (Vec::new(), Vec::new(), Vec::new());
        let mut slot = vec![0u32; rows.len() * u_max];
        let mut mask = vec![0f32; rows.len() * u_max];
        for (r, (seq, trained)) in seqs.iter().enumerate() {
            for (u, &(i, phase)) in trained.iter().enumerate() {
                slot[r * u_max + u] = rows_idx.len() as u32;
                mask[r * u_max + u] = 1.0;
                rows_idx.push((r * t + i - 1) as u32);
                targets.push(seq[i]);
                phases.push(phase);
            }
        }
        let m = rows_idx.len() as u32;
        for (r, (_, trained)) in seqs.iter().enumerate() {
            for s in &mut slot[r * u_max + trained.len()..(r + 1) * u_max] {
                *s = m;
            }
        }
        let lens = seqs.iter().map(|(_, tr)| tr.len()).collect();
        Ok(SampleInputs { ids, layout, mask: Tensor::from_vec(mask, (rows.len(), u_max), dev)?, lens, rows_idx, targets, phases, slot, u_max })
    }

    /// Trained tokens in all (M).
    pub fn n_tokens(&self) -> usize {
        self.targets.len()
    }
}

/// [N, U] log-probs of the trained tokens (0 on padding) from the final hidden states
/// [N, T, D] of `inp.ids`, under the sampling distribution of `bans` (module docs).
/// Differentiable when `hidden` is.
pub fn sample_logprobs_from_hidden(model: &Model, inp: &SampleInputs, hidden: &Tensor, bans: &GenBans) -> Result<Tensor> {
    let dev = hidden.device().clone();
    let (r, t, d) = hidden.dims3()?;
    let n = inp.lens.len();
    let m = inp.targets.len();
    if m == 0 {
        return Ok(Tensor::zeros((n, inp.u_max), DType::F32, &dev)?);
    }
    let h = hidden.reshape((r * t, d))?.index_select(&Tensor::new(inp.rows_idx.as_slice(), &dev)?, 0)?; // [M, D]
    let z = (model.logits(&h)? / bans.temperature as f64)?; // [M, V]
    let lp_all = candle_nn::ops::log_softmax(&z, D::Minus1)?; // [M, V]
    let lp_tok = lp_all.gather(&Tensor::new(inp.targets.as_slice(), &dev)?.unsqueeze(1)?, 1)?.squeeze(1)?; // [M]
    // The probability mass each token's phase banned: log p'(x) = log p(x) − log(1 − Σ_banned p).
    let vocab = lp_all.dim(1)? as u32;
    let mut removed = Tensor::zeros(m, DType::F32, &dev)?; // [M]
    for phase in PHASES {
        let banned: Vec<u32> = bans.of(phase).iter().copied().filter(|&b| b < vocab).collect();
        let weight: Vec<f32> = inp.phases.iter().map(|&p| f32::from(u8::from(p == phase))).collect();
        if banned.is_empty() || weight.iter().all(|&w| w == 0.0) {
            continue;
        }
        let mass = lp_all.index_select(&Tensor::new(banned.as_slice(), &dev)?, 1)?.exp()?.sum(1)?; // [M]
        removed = (removed + (mass * Tensor::new(weight.as_slice(), &dev)?)?)?;
    }
    let lp_tok = (lp_tok - (1.0 - removed)?.log()?)?; // [M]
    let padded = Tensor::cat(&[&lp_tok, &Tensor::zeros(1, DType::F32, &dev)?], 0)?; // [M + 1]
    Ok(padded.index_select(&Tensor::new(inp.slot.as_slice(), &dev)?, 0)?.reshape((n, inp.u_max))?) // [N, U]
}

/// `sample_logprobs_from_hidden` after the forward of `model` over `inp`.
pub fn sample_logprobs(model: &Model, inp: &SampleInputs, bans: &GenBans) -> Result<Tensor> {
    let hidden = model.forward_hidden(&inp.ids, &inp.layout, None)?; // [N, T, D]
    sample_logprobs_from_hidden(model, inp, &hidden, bans)
}

/// Loss settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossParams {
    pub eps_low: f64,
    pub eps_high: f64,
    /// KL coefficient; 0 (or no reference log-probs) leaves the KL term out.
    pub beta: f64,
}

/// The RLVR loss of one micro-batch: clipped surrogate + β·KL(k3) when `logp_ref` is given.
/// `logp_new` [N, U] (differentiable), `logp_old`, `logp_ref` [N, U] (constants), `mask`
/// [N, U], `adv` [N]; `total_samples` counts every sample of the optimizer step (all
/// micro-batches and ranks). Returns (loss, surrogate stats, mean k3 over this micro-batch's
/// trained tokens when the KL term was computed).
pub fn rlvr_loss(logp_new: &Tensor, logp_old: &Tensor, logp_ref: Option<&Tensor>, mask: &Tensor, adv: &Tensor, p: &LossParams, total_samples: usize) -> Result<(Tensor, SurrogateStats, Option<f32>)> {
    let (surrogate, stats) = clipped_surrogate(logp_new, logp_old, mask, adv, p.eps_low, p.eps_high, total_samples)?;
    match logp_ref {
        Some(reference) if p.beta > 0.0 => {
            let (kl, mean_kl) = kl_penalty(logp_new, reference, mask, p.beta, total_samples)?;
            Ok(((surrogate + kl)?, stats, Some(mean_kl)))
        }
        _ => Ok((surrogate, stats, None)),
    }
}

/// What a GRPO user expects to see per step (module docs for the definitions).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlvrMetrics {
    pub samples: usize,
    pub groups: usize,
    pub reward_mean: f64,
    /// Mean over groups of the group's sample std (TRL's `reward_std`).
    pub reward_std: f64,
    /// Fraction of samples graded right.
    pub accuracy: f64,
    /// Fraction of samples with nothing `grade` could read.
    pub no_answer_frac: f64,
    /// Fraction of well-formed samples (whether or not the format reward is on).
    pub format_frac: f64,
    pub frac_solved_groups: f64,
    pub frac_unsolved_groups: f64,
    pub frac_zero_std_groups: f64,
    /// Generated tokens per sample: thought, `</think>` when thinking, answer.
    pub response_len_mean: f64,
    pub response_len_max: usize,
    pub thought_len_mean: f64,
    pub answer_len_mean: f64,
    pub truncated_frac: f64,
    pub thought_truncated_frac: f64,
    pub answer_truncated_frac: f64,
    pub clip_frac_low: f64,
    pub clip_frac_high: f64,
    pub ratio_mean: f64,
    pub ratio_max: f64,
    /// Mean k3 KL to the reference over trained tokens (None: no KL term).
    pub kl: Option<f64>,
}

/// Metrics of one step from its Q·G samples (G per group, adjacent), their grades, the merged
/// surrogate stats and the KL (token-weighted mean over micro-batches) if any.
pub fn rlvr_metrics(gens: &[Generation], graded: &[Graded], g: usize, spec: &GenSpec, stats: &SurrogateStats, kl: Option<f64>) -> Result<RlvrMetrics> {
    ensure!(gens.len() == graded.len() && !gens.is_empty(), "metrics need one grade per sample ({} samples, {} grades)", gens.len(), graded.len());
    let rewards: Vec<f32> = graded.iter().map(|x| x.reward).collect();
    let stds = group_reward_std(&rewards, g).context("RLVR metrics")?;
    let n = gens.len() as f64;
    let frac = |f: &dyn Fn(usize) -> bool| (0..gens.len()).filter(|&i| f(i)).count() as f64 / n;
    let groups: Vec<&[Graded]> = graded.chunks(g).collect();
    let group_frac = |f: &dyn Fn(&[Graded]) -> bool| groups.iter().filter(|gr| f(gr)).count() as f64 / groups.len() as f64;
    let thinking = spec.think_budget > 0;
    let resp_len = |s: &Generation| s.thought.len() + usize::from(thinking) + s.answer.len();
    let thought_cut = |i: usize| thinking && !gens[i].closed;
    let answer_cut = |i: usize| gens[i].answer.len() >= spec.answer_tokens;
    Ok(RlvrMetrics {
        samples: gens.len(),
        groups: groups.len(),
        reward_mean: rewards.iter().map(|&r| r as f64).sum::<f64>() / n,
        reward_std: stds.iter().map(|&s| s as f64).sum::<f64>() / stds.len() as f64,
        accuracy: frac(&|i| graded[i].correct),
        no_answer_frac: frac(&|i| !graded[i].extracted),
        format_frac: frac(&|i| graded[i].formatted),
        frac_solved_groups: group_frac(&|gr| gr.iter().all(|x| x.correct)),
        frac_unsolved_groups: group_frac(&|gr| gr.iter().all(|x| !x.correct)),
        frac_zero_std_groups: frac_zero_std_groups(&stds) as f64,
        response_len_mean: gens.iter().map(|s| resp_len(s) as f64).sum::<f64>() / n,
        response_len_max: gens.iter().map(resp_len).max().unwrap_or(0),
        thought_len_mean: gens.iter().map(|s| s.thought.len() as f64).sum::<f64>() / n,
        answer_len_mean: gens.iter().map(|s| s.answer.len() as f64).sum::<f64>() / n,
        truncated_frac: frac(&|i| thought_cut(i) || answer_cut(i)),
        thought_truncated_frac: frac(&thought_cut),
        answer_truncated_frac: frac(&answer_cut),
        clip_frac_low: stats.clip_frac_low() as f64,
        clip_frac_high: stats.clip_frac_high() as f64,
        ratio_mean: stats.ratio_mean() as f64,
        ratio_max: stats.ratio_max as f64,
        kl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(answer: &str) -> Item {
        Item { id: "t".into(), question: "What is 3 + 4?".into(), answer: answer.into(), choices: vec![] }
    }

    #[test]
    fn rewards_follow_the_eval_extraction_rules() {
        let it = item("7");
        let off = RewardSpec::default();
        let r = |a: &str, closed: bool, s: &RewardSpec| grade_sample(&it, a, closed, true, s).reward;
        assert_eq!(r(" 7", true, &off), 1.0);
        assert_eq!(r(" The answer is 7, not 8", true, &off), 1.0, "rule 3: first number after `answer is`");
        assert_eq!(r(" \\boxed{7} then 9", true, &off), 1.0, "rule 1: boxed wins");
        assert_eq!(r(" 3 + 4 = 8", true, &off), 0.0, "rule 4: the last number");
        assert_eq!(r(" seven", true, &off), 0.0, "nothing extractable");
        let fmt = RewardSpec { format_weight: 0.5 };
        assert_eq!(r(" 7", true, &fmt), 1.5);
        assert_eq!(r(" 7", false, &fmt), 1.0, "forced </think>: no format reward");
        assert_eq!(r(" 8", true, &fmt), 0.5, "well formed but wrong");
        assert_eq!(r(" seven", true, &fmt), 0.0);
        assert_eq!(grade_sample(&it, " 7", false, false, &fmt).reward, 1.5, "no thought asked: nothing to close");
    }

    #[test]
    fn advantage_kind_parses() {
        assert_eq!(AdvantageKind::parse("grpo").unwrap(), AdvantageKind::Grpo);
        assert!(AdvantageKind::parse("ppo").unwrap_err().to_string().contains("rloo or grpo"));
    }
}
