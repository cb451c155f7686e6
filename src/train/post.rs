//! The trainer's side of the post-training objectives: what `sft` and `rlvr` load in place of a
//! corpus, and the pieces of one RLVR batch that `Trainer::rlvr_steps` calls in order.
//!
//! Legend: Q questions per step, G samples per question, N samples in one micro-batch, U
//! trained-token slots per sample, T window (row) length, V vocabulary.
//!
//! - **SFT** (`data::sft`, `objective::sft`): the examples of `data.path`, rendered with the
//!   chat template of `model.path/tokenizer_config.json` when it has one, cut to
//!   `data.max_context` tokens; the last `data.heldout_docs` examples are held out (their
//!   response NLL is logged every `logging.eval_every` steps).
//! - **RLVR** (`objective::rlvr`): the items of `data.path`, each question's prompt encoded once;
//!   every rank walks the same seeded question order and owns questions rank, rank + W, … of
//!   each step. The reference of the KL term is a frozen copy of the model as loaded (before any
//!   resume), so a resumed run penalises against the same model.

use super::data_parallel as dp;
use super::grads::{GradAccumulator, PolicyGradient};
use super::trainer::Trainer;
use crate::config::{Advantage, ObjectiveName, RlvrPrompt, TrainConfig};
use crate::data::corpus::{TokenizedCorpus, TokenizedDocs};
use crate::data::sft::{load_sft, sft_batch, tokenize_sft, ChatTemplate, SftDocs, SftPacker};
use crate::eval::generate::{GenSpec, Generation};
use crate::eval::items::{load_items, Item};
use crate::model::Model;
use crate::objective::rlp::SurrogateStats;
use crate::objective::rlvr::{self, AdvantageKind, GenBans, Graded, LossParams, PromptLayout, QuestionOrder, RewardSpec, SampleInputs, SampleRow, StepSeed};
use crate::objective::sft::{masked_nll_sum, trained_count};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use anyhow::{bail, Context as _, Result};
use candle_core::{Tensor, Var};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

/// What a post-training objective reads instead of a corpus.
pub(crate) enum PostData {
    Sft(SftData),
    Rlvr(RlvrData),
}

pub(crate) struct SftData {
    pub docs: SftDocs,
    /// The last `data.heldout_docs` examples (none: no held-out loss).
    pub heldout: Option<SftDocs>,
    pub packer: SftPacker,
    pub eos: u32,
}

pub(crate) struct RlvrData {
    pub items: Vec<Item>,
    /// Prompt ids of every item (`objective.rlvr_prompt`, `<think>` last when thinking).
    pub prompts: Vec<Vec<u32>>,
    pub order: QuestionOrder,
    /// The frozen model as loaded, in the compute dtype, when `objective.kl_coef` > 0.
    pub reference: Option<Model>,
    pub bans: GenBans,
    pub spec: GenSpec,
    pub reward: RewardSpec,
}

/// The examples or items of a post-training run, and a stand-in corpus of their token ids
/// (the trainer's position sampler and packer are built on it and left unused).
pub(crate) fn load_post_data(cfg: &TrainConfig, tok: &Tok, model_vocab: usize) -> Result<(PostData, TokenizedCorpus)> {
    let eos = tok.eos_ids.first().copied().context("the tokenizer has no end-of-text token (<|endoftext|>, </s>, ...): SFT packing and RLVR answers need one")?;
    match cfg.objective.name {
        ObjectiveName::Sft => {
            let records = load_sft(&cfg.data.path)?;
            let h = cfg.data.heldout_docs;
            if h >= records.len() {
                bail!("data.heldout_docs = {h} leaves no SFT example to train on: {} has {} examples; lower data.heldout_docs", cfg.data.path.display(), records.len());
            }
            let tpl_path = cfg.model.path.join("tokenizer_config.json");
            let template = if cfg.model.path.is_dir() && tpl_path.exists() { ChatTemplate::from_tokenizer_config(&tpl_path)? } else { None };
            let max = Some(cfg.data.max_context);
            let (train, held) = records.split_at(records.len() - h);
            let docs = tokenize_sft(tok, train, template.as_ref(), max)?;
            if docs.tokens.is_empty() {
                bail!("no SFT example of {} has a response token left within data.max_context = {}: raise data.max_context", cfg.data.path.display(), cfg.data.max_context);
            }
            let heldout = if held.is_empty() { None } else { Some(tokenize_sft(tok, held, template.as_ref(), max)?) };
            let corpus = TokenizedCorpus { train: docs.tokens.clone(), heldout: TokenizedDocs::default(), skipped_short: 0 };
            let packer = SftPacker::new(docs.tokens.len(), cfg.train.seed, eos)?;
            Ok((PostData::Sft(SftData { docs, heldout, packer, eos }), corpus))
        }
        ObjectiveName::Rlvr => {
            let items = load_items(&cfg.data.path)?;
            let (o, r) = (&cfg.objective, &cfg.rollout);
            let layout = match o.rlvr_prompt {
                RlvrPrompt::Bench => PromptLayout::Bench,
                RlvrPrompt::Raw => PromptLayout::Raw,
            };
            let thinking = r.thought_budget > 0;
            let prompts: Vec<Vec<u32>> = items.iter().map(|it| rlvr::prompt(tok, it, layout, thinking)).collect::<Result<_>>()?;
            if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
                bail!("RLVR item {} (`{}`) of {} encodes to no token: give it a question", i + 1, items[i].id, cfg.data.path.display());
            }
            let corpus = TokenizedCorpus { train: TokenizedDocs::from_documents(items.iter().zip(&prompts).map(|(it, p)| (it.id.clone(), p.clone()))), heldout: TokenizedDocs::default(), skipped_short: 0 };
            let sp = SamplingParams { temperature: r.temperature as f32, top_p: r.top_p as f32, top_k: r.top_k };
            let spec = GenSpec { think_budget: r.thought_budget, answer_tokens: o.rlvr_answer_tokens, sampling: Some(sp), answer_sampling: Some(sp) };
            let order = QuestionOrder::new(items.len(), cfg.train.seed)?;
            let bans = GenBans::for_tokenizer(tok, model_vocab, sp.temperature);
            let reward = RewardSpec { format_weight: o.rlvr_format_weight as f32 };
            Ok((PostData::Rlvr(RlvrData { items, prompts, order, reference: None, bans, spec, reward }), corpus))
        }
        other => bail!("objective.name = {other:?} is not a post-training objective"),
    }
}

/// A copy of the weights that no update reaches (the optimizer writes into the `Var`s'
/// storage, which a detached view would share), as a model in `dtype`.
pub(crate) fn frozen_copy(cfg: &crate::model::Config, vars: &[(String, Var)], dtype: candle_core::DType) -> Result<Model> {
    let map: HashMap<String, Tensor> = vars.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?))).collect::<Result<_>>()?;
    Model::from_tensors(cfg.clone(), map, "RLVR reference")?.to_dtype(dtype)
}

/// Mean NLL (nats) of the response tokens of `docs`, packed in corpus order into windows of
/// `len` tokens that cover every example once (the last window may run on into the first
/// example again, which is then counted twice).
pub fn heldout_response_nll(model: &Model, docs: &SftDocs, len: usize, eos: u32, no_cross_doc: bool) -> Result<f64> {
    let n = docs.tokens.len();
    let total: usize = (0..n).map(|i| docs.tokens.tokens(i).len() + 1).sum();
    let mut packer = SftPacker::in_order(n, eos)?;
    let windows = (0..total.div_ceil(len)).map(|_| packer.next_window(docs, len)).collect::<Result<Vec<_>>>()?;
    let (mut nll, mut count) = (0f64, 0usize);
    for chunk in windows.chunks(8) {
        let (ids, targets, mask, layout) = sft_batch(chunk, no_cross_doc, model.embed.device())?;
        let logits = model.logits(&model.forward_hidden(&ids, &layout, None)?)?; // [B, T, V]
        nll += masked_nll_sum(&logits, &targets, &mask)?.to_scalar::<f32>()? as f64;
        count += trained_count(&mask)?;
    }
    Ok(nll / count.max(1) as f64)
}

/// One RLVR batch: this rank's questions, their G samples each, grades and advantages, and the
/// pre-update log-probs of every micro-batch the updates will train.
pub struct RlvrBatch {
    /// Position (0..Q) in the step's questions of each question this rank owns.
    pub global_index: Vec<usize>,
    /// Item index of each question this rank owns.
    pub items: Vec<usize>,
    /// G per owned question, adjacent.
    pub gens: Vec<Generation>,
    pub graded: Vec<Graded>,
    pub advantages: Vec<f32>,
    /// [minibatch][micro-batch] → [N, U] log-probs under the policy that sampled.
    pub logp_old: Vec<Vec<Tensor>>,
    pub sample_s: f64,
    pub score_s: f64,
}

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
        let mut acc = super::accounting::counter(&self.totals, &self.dist);
        let prompts: Vec<&[u32]> = items.iter().map(|&i| d.prompts[i].as_slice()).collect();
        super::accounting::count_rlvr_samples(&mut acc, &self.shape, &prompts, &gens, g, d.spec.think_budget > 0);
        super::accounting::fold_into(&mut self.totals, acc, &self.dist)?;
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
        let mut acc = super::accounting::counter(&self.totals, &self.dist);
        super::accounting::count_rlvr_training(&mut acc, &self.shape, &lens, with_ref);
        super::accounting::fold_into(&mut self.totals, acc, &self.dist)
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

/// Tokens a sample generated: thought, `</think>` when thinking, answer.
pub fn rlvr_generated(s: &Generation, thinking: bool) -> usize {
    s.thought.len() + usize::from(thinking) + s.answer.len()
}
