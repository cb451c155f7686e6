//! The pieces of one RLVR batch that `Trainer::rlvr_steps` (trainer.rs) calls in order: this
//! rank's questions, G samples each, their grades, group advantages and `logp_old`
//! (`rlvr_batch`), then per minibatch the gradient of objective/rlvr.rs's loss
//! (`rlvr_gradient`); and the SFT held-out loss (`sft_heldout_nll`). What they read, loaded when
//! the trainer starts, is post_data.rs's.
//!
//! Legend: Q questions per step, G samples per question, N samples in one micro-batch, U
//! trained-token slots per sample, T window (row) length, V vocabulary.

use super::accounting::{self, rlvr_generated};
use super::data_parallel as dp;
use super::grads::{GradAccumulator, PolicyGradient};
use super::post_data::{heldout_response_nll, PostData, RlvrBatch, RlvrData};
use super::trainer::Trainer;
use crate::config::Advantage;
use crate::eval::generate::GenSpec;
use crate::eval::items::Item;
use crate::objective::rlp::SurrogateStats;
use crate::objective::rlvr::{self, AdvantageKind, LossParams, SampleInputs, SampleRow, StepSeed};
use anyhow::{bail, Context as _, Result};
use candle_core::Tensor;
use std::cell::RefCell;
use std::time::Instant;

impl Trainer {
    fn rlvr_data(&self) -> Result<&RlvrData> {
        match &self.post {
            Some(PostData::Rlvr(d)) => Ok(d),
            _ => bail!("the RLVR step needs objective.name = \"rlvr\" data"),
        }
    }

    /// This rank's flat sample indices of minibatch `m` (global questions m·Q/mb .. (m+1)·Q/mb)
    /// and the global sample count of that minibatch.
    pub(crate) fn rlvr_minibatch(&self, batch: &RlvrBatch, m: usize) -> (Vec<usize>, usize) {
        let (q, g, mb) = (self.cfg.data.contexts_per_step, self.rollout.g, self.cfg.objective.minibatches);
        let range = (m * q / mb)..((m + 1) * q / mb);
        let total = range.len() * g;
        (dp::minibatch_thoughts(&batch.global_index, range, g), total)
    }

    fn sample_inputs(&self, batch: &RlvrBatch, chunk: &[usize]) -> Result<SampleInputs> {
        let (d, g) = (self.rlvr_data()?, self.rollout.g);
        let rows: Vec<SampleRow> = chunk.iter().map(|&k| SampleRow { prompt: &d.prompts[batch.items[k / g]], gen: &batch.gens[k] }).collect();
        SampleInputs::new(&rows, d.spec.think_budget > 0, &d.bans, &self.device)
    }

    fn micro(&self, total: usize) -> usize {
        self.cfg.train.micro_batch.unwrap_or(total).max(1)
    }

    /// Draw the step's Q questions (every rank the same), sample G answers to each of this
    /// rank's by θ, grade them, and compute the advantages and the pre-update log-probs.
    pub fn rlvr_batch(&mut self) -> Result<RlvrBatch> {
        let (q, g) = (self.cfg.data.contexts_per_step, self.rollout.g);
        let all = match &mut self.post {
            Some(PostData::Rlvr(d)) => d.order.next_batch(q),
            _ => bail!("the RLVR step needs objective.name = \"rlvr\" data"),
        };
        let global_index = dp::local_contexts(q, &self.dist)?;
        let items: Vec<usize> = global_index.iter().map(|&i| all[i]).collect();
        let t0 = Instant::now();
        let sampler = self.inference_model()?;
        let d = self.rlvr_data()?;
        let mut gens = Vec::with_capacity(items.len() * g);
        for (&gi, &it) in global_index.iter().zip(&items) {
            let at = StepSeed { seed: self.cfg.train.seed, step: self.step, first_question: gi as u64 };
            gens.extend(rlvr::sample_groups_seeded(&sampler, &self.tok, std::slice::from_ref(&d.prompts[it]), g, &d.spec, at)?);
        }
        let sample_s = t0.elapsed().as_secs_f64();
        let owned: Vec<Item> = items.iter().map(|&i| d.items[i].clone()).collect();
        let graded = rlvr::grade_groups(&self.tok, &owned, &gens, g, d.spec.think_budget > 0, &d.reward)?;
        let rewards: Vec<f32> = graded.iter().map(|x| x.reward).collect();
        let kind = if self.cfg.objective.advantage == Advantage::Grpo { AdvantageKind::Grpo } else { AdvantageKind::Rloo };
        let advantages = rlvr::advantages(&rewards, g, kind)?;
        let mut acc = accounting::counter(&self.totals, &self.dist);
        let prompts: Vec<&[u32]> = items.iter().map(|&i| d.prompts[i].as_slice()).collect();
        accounting::count_rlvr_samples(&mut acc, &self.shape, &prompts, &gens, g, d.spec.think_budget > 0);
        accounting::fold_into(&mut self.totals, acc, &self.dist)?;
        let mut batch = RlvrBatch { global_index, items, gens, graded, advantages, logp_old: Vec::new(), sample_s, score_s: 0.0 };
        // logp_old of every micro-batch the updates will train, before the first update
        let t1 = Instant::now();
        let bans = self.rlvr_data()?.bans.clone();
        for m in 0..self.cfg.objective.minibatches {
            let (idx, total) = self.rlvr_minibatch(&batch, m);
            let mut per_micro = Vec::new();
            for chunk in idx.chunks(self.micro(total)) {
                let inp = self.sample_inputs(&batch, chunk)?;
                per_micro.push(rlvr::sample_logprobs(&sampler, &inp, &bans)?.detach()); // [N, U]
            }
            batch.logp_old.push(per_micro);
        }
        batch.score_s = t1.elapsed().as_secs_f64();
        Ok(batch)
    }

    /// Gradient of the RLVR loss over this rank's samples `idx` of minibatch `m`, normalised by
    /// `total` (the minibatch's samples over every rank), in micro-batches.
    pub fn rlvr_gradient(&self, batch: &RlvrBatch, m: usize, idx: &[usize], total: usize) -> Result<PolicyGradient> {
        let d = self.rlvr_data()?;
        let o = &self.cfg.objective;
        let params = self.var_tensors();
        let policy = self.train_model()?;
        let loss_params = LossParams { eps_low: o.eps_low, eps_high: o.eps_high, beta: o.kl_coef };
        let (mut acc, mut loss, mut stats, mut kl_sum, mut fwd) = (GradAccumulator::default(), 0f64, SurrogateStats::default(), 0f64, 0usize);
        let t0 = Instant::now();
        for (c, chunk) in idx.chunks(self.micro(total)).enumerate() {
            let inp = self.sample_inputs(batch, chunk)?;
            let adv = Tensor::new(chunk.iter().map(|&k| batch.advantages[k]).collect::<Vec<f32>>(), &self.device)?; // [N]
            let old = &batch.logp_old[m][c]; // [N, U]
            let reference = match (&d.reference, o.kl_coef > 0.0) {
                (Some(r), true) => Some(rlvr::sample_logprobs(r, &inp, &d.bans)?.detach()), // [N, U]
                _ => None,
            };
            let out = RefCell::new(None);
            let loss_of = |hidden: &Tensor| -> Result<Tensor> {
                let new = rlvr::sample_logprobs_from_hidden(&policy, &inp, hidden, &d.bans)?; // [N, U]
                let (l, st, kl) = rlvr::rlvr_loss(&new, old, reference.as_ref(), &inp.mask, &adv, &loss_params, total)?;
                out.replace(Some((st, kl)));
                Ok(l)
            };
            let (l, grads) = if self.cfg.train.grad_checkpoint {
                policy.checkpointed_backward(&inp.ids, &inp.layout, &params, loss_of)?
            } else {
                let l = loss_of(&policy.forward_hidden(&inp.ids, &inp.layout, None)?)?;
                let grads = l.backward()?;
                (l, grads)
            };
            loss += l.to_scalar::<f32>()? as f64;
            acc.add(grads, &params)?;
            let (st, kl) = out.into_inner().context("the RLVR loss was not computed")?;
            kl_sum += kl.unwrap_or(0.0) as f64 * st.n_tokens as f64;
            stats.merge(&st);
            fwd += inp.ids.elem_count();
        }
        let kl = if stats.n_tokens > 0 { kl_sum / stats.n_tokens as f64 } else { 0.0 };
        let backward_s = t0.elapsed().as_secs_f64();
        Ok(PolicyGradient { grads: acc.finish()?, loss, stats, entropy: 0.0, forward_tokens: fwd, kl, forward_s: 0.0, backward_s })
    }

    /// The training FLOPs of the samples `idx` as run (policy forward and backward, and the
    /// reference forward under a KL term), summed over ranks.
    pub(crate) fn count_rlvr_training(&mut self, batch: &RlvrBatch, idx: &[usize]) -> Result<()> {
        let g = self.rollout.g;
        let thinking = self.rlvr_data()?.spec.think_budget > 0;
        let with_ref = self.cfg.objective.kl_coef > 0.0;
        let lens: Vec<u64> = {
            let d = self.rlvr_data()?;
            idx.iter().map(|&k| (d.prompts[batch.items[k / g]].len() + rlvr_generated(&batch.gens[k], thinking)).saturating_sub(1) as u64).collect()
        };
        let mut acc = accounting::counter(&self.totals, &self.dist);
        accounting::count_rlvr_training(&mut acc, &self.shape, &lens, with_ref);
        accounting::fold_into(&mut self.totals, acc, &self.dist)
    }

    /// The generation settings of this RLVR run.
    pub(crate) fn rlvr_spec(&self) -> Result<GenSpec> {
        Ok(self.rlvr_data()?.spec.clone())
    }

    /// `logging.eval_every` for sft: the held-out examples' response NLL at this step.
    pub fn sft_heldout_nll(&self) -> Result<Option<f64>> {
        let Some(PostData::Sft(d)) = &self.post else { return Ok(None) };
        let Some(held) = &d.heldout else { return Ok(None) };
        let model = self.inference_model()?;
        Ok(Some(heldout_response_nll(&model, held, self.cfg.data.max_context, d.eos, self.cfg.objective.ntp_no_cross_doc_attention)?))
    }
}
