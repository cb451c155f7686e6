//! `rlp train`: the training loop, read top to bottom.
//!
//! RLP and RPT (rollout objectives), one rollout batch and its optimizer steps
//! ([`Trainer::rollout_steps`]):
//! ```text
//! draw contexts (contexts.rs) ─▶ rollouts by θ + S_ema by φ (rollouts.rs)
//!   ─▶ rewards, advantages (objective/) ─▶ per minibatch: policy gradient (grads.rs)
//!   ─▶ all-reduce (data_parallel.rs) ─▶ clip, AdamW, EMA (update) ─▶ log (log.rs)
//!   ─▶ samples, checkpoint (checkpoint.rs)
//! ```
//! NTP (the CPT baseline, [`Trainer::ntp_step`]): packed windows ─▶ next-token loss
//! (objective/ntp.rs) ─▶ the same all-reduce, update, log and checkpoint.
//!
//! Post-training. SFT ([`Trainer::sft_step`]): packed examples (data/sft.rs) ─▶ response-token
//! loss (objective/sft.rs) ─▶ as NTP. RLVR ([`Trainer::rlvr_steps`]): questions, G samples each,
//! grades, advantages and `logp_old` (post.rs) ─▶ per minibatch the clipped surrogate + KL to
//! the model as loaded (objective/rlvr.rs) ─▶ the same all-reduce, update, log and checkpoint.
//!
//! Under several ranks (`mpirun`/`srun`, `data_parallel.rs`) every rank draws the same global
//! batch, works on its share of it, and sums gradients and statistics before the shared update;
//! rank 0 alone writes files.

use super::accounting::{self, Totals};
use super::checkpoint::{self, TrainerState};
use super::contexts::ContextDraw;
use super::data_parallel::{self as dp, Share};
use super::ema::EmaTeacher;
use super::grads::{self, GradAccumulator, PolicyGradient, PolicySettings};
use super::log::{self, EvalMetrics, PolicyMetrics, RolloutMetrics, SftMetrics, StepMetrics, Timing, UpdateReport};
use super::post_data::{self, PostData, RlvrBatch};
use super::optim::{clip_grad_norm, grads_have_non_finite, AdamW, AdamWConfig};
use super::rollouts::{sample_and_score, RolloutBatch};
use super::schedule::{LrSchedule, ScheduleKind};
use crate::config::{Advantage, Dtype, ObjectiveName, Schedule, TrainConfig};
use crate::data::corpus::{Corpus, TokenizedCorpus};
use crate::data::packer::{Packer, Window};
use crate::dist::Dist;
use crate::flops::{self, ModelShape};
use crate::model::{self, AttnLayout, Model};
use crate::objective::rlp::{group_advantages, group_reward_std, LossSettings};
use crate::objective::{self, ntp, rlvr, sft, RewardInputs};
use crate::run_dir;
use crate::data::sft::sft_batch;
use crate::rollout::{context_rng, RolloutParams};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use anyhow::{bail, Context as _, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

pub struct Trainer {
    pub cfg: TrainConfig,
    pub run: PathBuf,
    pub tok: Tok,
    pub policy: Model,
    pub vars: Vec<(String, Var)>,
    pub(crate) opt: AdamW,
    pub(crate) ema: EmaTeacher,
    pub(crate) schedule: LrSchedule,
    pub data: TokenizedCorpus,
    pub(crate) contexts: ContextDraw,
    pub(crate) packer: Packer,
    pub(crate) rollout: RolloutParams,
    /// sft and rlvr: their examples or items, packer or question order, reference model.
    pub(crate) post: Option<PostData>,
    pub(crate) shape: ModelShape,
    /// This process's rank and world.
    pub dist: Rc<Dist>,
    /// Where the weights, moments, EMA teacher and gradients live (`train.device`).
    pub device: Device,
    /// The dtype of every forward (`train.compute_dtype`); master weights stay f32.
    pub compute_dtype: DType,
    pub step: u64,
    pub(crate) nonfinite_streak: usize,
    pub totals: Totals,
    pub(crate) started: Instant,
    pub(crate) start_step: u64,
    /// `logging.tensorboard`: rank 0's event file in RUN/tb/.
    #[cfg(feature = "tensorboard")]
    pub(crate) tensorboard: Option<super::tensorboard::TensorBoard>,
}

impl Trainer {
    /// Load the model, tokenizer and corpus, prepare the run directory, and resume from its
    /// newest checkpoint when `resume` is set. Nothing is written before every input is valid.
    pub fn new(cfg: TrainConfig, run: &Path, resume: bool) -> Result<Trainer> {
        Trainer::new_distributed(cfg, run, resume, Rc::new(Dist::Single))
    }

    /// [`Trainer::new`] as one rank of a data-parallel job (`mpirun`/`srun`).
    pub fn new_distributed(cfg: TrainConfig, run: &Path, resume: bool, dist: Rc<Dist>) -> Result<Trainer> {
        cfg.validate()?;
        super::faults::injected_steps()?; // a malformed fault-injection knob fails here, not mid-run
        dp::check_batch_fits_world(&cfg, dist.world())?;
        // before anything is loaded: a CPU-only build asked for cuda fails here
        let device = dp::rank_device(&cfg.train.device, &dist)?;
        dist.use_device(&device)?; // NCCL on GPUs (feature nccl), collective
        let compute_dtype = match cfg.train.compute_dtype {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
        };
        let existing = run_dir::checkpoints(run)?;
        if !resume && (!existing.is_empty() || run.join("metrics.jsonl").exists()) {
            bail!("run directory {} already holds a run: pass --resume to continue it, or choose another --out", run.display());
        }
        let (policy, tok) = model::weights::load_for_thinking(&cfg.model.path, cfg.model.add_think_tokens, "rlp train")?;
        // sft and rlvr read examples or items; the others a corpus
        let (post, data) = if cfg.objective.name.is_post_training() {
            let (post, data) = post_data::load_post_data(&cfg, &tok, policy.cfg.vocab_size)?;
            (Some(post), data)
        } else {
            let corpus = Corpus::open(&cfg.data.path, &cfg.data.text_field)?;
            (None, TokenizedCorpus::build(&corpus, |t| tok.encode(t), cfg.data.min_prefix + 1, cfg.data.heldout_docs)?)
        };
        let contexts = ContextDraw::new(&cfg, &data)?;
        let eos = tok.eos_ids.first().copied().context("the tokenizer has no end-of-text token (<|endoftext|>, </s>, ...): ntp packing needs one")?;
        let packer = Packer::new(data.train.len(), cfg.train.seed, eos)?;
        let shape = ModelShape::from_config(&policy.cfg);
        let (policy, vars) = policy.to_device(&device)?.into_vars()?;
        let mut post = post;
        if let Some(PostData::Rlvr(d)) = &mut post {
            if cfg.objective.kl_coef > 0.0 {
                d.reference = Some(post_data::frozen_copy(&policy.cfg, &vars, compute_dtype)?); // the model as loaded
            }
        }
        let o = &cfg.optim;
        let opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), AdamWConfig { beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weight_decay: o.weight_decay })?;
        let schedule = LrSchedule {
            base_lr: o.lr,
            warmup_steps: o.warmup_steps as u64,
            kind: match o.schedule {
                Schedule::Constant => ScheduleKind::Constant,
                Schedule::Cosine => ScheduleKind::Cosine { min_lr: o.min_lr },
            },
            total_steps: cfg.train.steps as u64,
        };
        schedule.validate()?;
        let r = &cfg.rollout;
        let sampling = SamplingParams { temperature: r.temperature as f32, top_p: r.top_p as f32, top_k: r.top_k };
        let rollout = RolloutParams {
            separator: if r.separator.is_empty() { vec![] } else { tok.encode(&r.separator)? },
            guess_tokens: if cfg.objective.name == ObjectiveName::Rpt { cfg.objective.rpt_guess_tokens } else { 0 },
            ..RolloutParams::for_tokenizer(&tok, policy.cfg.vocab_size, r.g, r.thought_budget, sampling)
        };
        let mut t = Trainer {
            cfg,
            run: run.to_path_buf(),
            tok,
            policy,
            vars,
            opt,
            ema: EmaTeacher::new(),
            schedule,
            data,
            contexts,
            packer,
            rollout,
            post,
            shape,
            dist,
            device,
            compute_dtype,
            step: 0,
            nonfinite_streak: 0,
            totals: Totals::default(),
            started: Instant::now(),
            start_step: 0,
            #[cfg(feature = "tensorboard")]
            tensorboard: None,
        };
        if t.dist.is_root() {
            std::fs::create_dir_all(run).with_context(|| format!("cannot create run directory {}", run.display()))?;
            run_dir::remove_partial_checkpoints(run)?;
        }
        if resume {
            match existing.last() {
                Some((_, dir)) => t.restore(dir)?,
                // a run killed before its first checkpoint restarts from step 0
                None if run.join("config.toml").exists() => t.restart_without_checkpoint()?,
                None => bail!("--resume: {} has no complete checkpoint to resume from", run.display()),
            }
        }
        if t.dist.is_root() && t.cfg.logging.tensorboard {
            // after the resume: events past the checkpoint's step are dropped, as are those lines
            #[cfg(feature = "tensorboard")]
            {
                t.tensorboard = Some(super::tensorboard::TensorBoard::open(run, t.step)?);
            }
            #[cfg(not(feature = "tensorboard"))]
            eprintln!("note: this rlp was built without TensorBoard support, so RUN/tb/ is not written (build with `--features tensorboard`, which needs protoc; or set logging.tensorboard = false)");
        }
        let resolved = t.cfg.to_toml_string()?;
        t.dist.check_same_on_all_ranks("resolved config", resolved.as_bytes())?;
        if t.dist.is_root() {
            std::fs::write(run.join("config.toml"), resolved).with_context(|| format!("cannot write {}", run.join("config.toml").display()))?;
        }
        Ok(t)
    }

    /// Run until `train.steps` optimizer steps are done (or SIGINT/SIGTERM), then checkpoint.
    pub fn run(&mut self) -> Result<()> {
        if self.dist.is_root() {
            self.print_run_header();
        }
        self.started = Instant::now();
        self.start_step = self.step;
        while self.step < self.cfg.train.steps as u64 {
            match self.cfg.objective.name {
                ObjectiveName::Ntp => self.ntp_step()?,
                ObjectiveName::Sft => self.sft_step()?,
                ObjectiveName::Rlvr => self.rlvr_steps()?,
                ObjectiveName::Rlp | ObjectiveName::Rpt => self.rollout_steps()?,
            }
            // SIGINT/SIGTERM end the run here; the checkpoint below is written
            if super::signals::stop_requested().is_some() {
                break;
            }
        }
        if self.dist.is_root() && run_dir::checkpoints(&self.run)?.last().map(|(s, _)| *s) != Some(self.step) {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    /// One rollout batch and its `ppo_epochs × minibatches` optimizer steps.
    fn rollout_steps(&mut self) -> Result<()> {
        let batch = self.rollout_batch()?;
        // b is the global batch: minibatches split the global contexts, each rank trains its
        // own among them
        let (b, g, mb) = (self.cfg.data.contexts_per_step, self.rollout.g, self.cfg.objective.minibatches);
        let share = Share { thoughts: batch.contexts.len() * g, contexts: batch.contexts.len() };
        let mut last = None;
        'epochs: for _epoch in 0..self.cfg.objective.ppo_epochs {
            for m in 0..mb {
                if self.step >= self.cfg.train.steps as u64 {
                    break 'epochs;
                }
                let ctx_range = (m * b / mb)..((m + 1) * b / mb);
                let total_thoughts = ctx_range.len() * g; // the global normaliser
                let idx = dp::minibatch_thoughts(&batch.global_index, ctx_range, g); // this rank's share
                let t0 = Instant::now();
                let micro = self.cfg.train.micro_batch.unwrap_or(total_thoughts);
                let mut pg = self.policy_gradient(&batch, &idx, total_thoughts, micro)?;
                // the global gradient and loss statistics, before any clip or update
                dp::all_reduce_policy_gradient(&self.dist, &mut pg, &self.var_list())?;
                let train_s = t0.elapsed().as_secs_f64();
                self.count_policy_training(&batch, &idx, micro)?;
                self.totals.trained_tokens += pg.forward_tokens as u64; // already global
                let (upd, optim_s) = self.apply_update(pg.grads, pg.loss, || log::bad_rollout_batch_json(&batch))?;
                self.step += 1;
                // sampling and scoring are charged to the batch's first step
                let first = last.is_none();
                let (sample_s, score_s) = if first { (batch.sample_s, batch.score_s) } else { (0.0, 0.0) };
                let drift = if self.ema.is_initialized() { self.ema.drift(&self.var_list())? as f64 } else { 0.0 };
                let rollout = RolloutMetrics::of_batch(&batch, drift);
                let timing = Timing { sample_s, score_s, train_s, optim_s, train_tokens: pg.forward_tokens };
                let mut metrics = StepMetrics::new(self.step, &upd, pg.loss, &timing, rollout.generated_tokens_step, &self.totals);
                let st = &pg.stats;
                metrics.policy = Some(PolicyMetrics { clip_frac_low: st.clip_frac_low() as f64, clip_frac_high: st.clip_frac_high() as f64, ratio_mean: st.ratio_mean() as f64, entropy: pg.entropy, kl: pg.kl });
                metrics.rollout = Some(rollout);
                dp::reduce_step_metrics(&self.dist, &mut metrics, share)?;
                self.log_step(metrics.clone())?;
                last = Some(metrics);
            }
        }
        let every = self.cfg.logging.samples_every as u64;
        let per_batch = (self.cfg.objective.ppo_epochs * mb) as u64;
        if every > 0 && (self.step.div_ceil(per_batch) - 1) % every == 0 {
            self.write_samples(&batch)?;
        }
        if let (Some(r), true) = (last.and_then(|m| m.rollout), self.dist.is_root()) {
            r.warn_if_degenerate(self.step, self.rollout.budget);
        }
        self.maybe_checkpoint(per_batch)
    }

    /// Sample and score one rollout batch of B contexts (this rank's share of them), with its
    /// rewards and advantages.
    pub fn rollout_batch(&mut self) -> Result<RolloutBatch> {
        // Every rank draws the same global batch (the entropy filter depends only on the model,
        // identical on every rank) and keeps contexts rank, rank + W, ….
        let (policy, dtype) = (&self.policy, self.compute_dtype);
        let judge = || policy.detached()?.to_dtype(dtype); // θ, as `inference_model`
        let all = self.contexts.next_batch(&self.cfg, &self.data, judge)?;
        if self.dist.world() > 1 {
            let key: Vec<u8> = all.iter().flat_map(|c| [c.doc as u64, c.pos as u64]).flat_map(u64::to_le_bytes).collect();
            self.dist.check_same_on_all_ranks("batch of contexts", &key)?;
        }
        let global_index = dp::local_contexts(all.len(), &self.dist)?;
        let contexts = if self.dist.world() > 1 { global_index.iter().map(|&i| all[i].clone()).collect() } else { all };
        let sampler = self.inference_model()?;
        if !self.ema.is_initialized() {
            self.ema.init_from(&self.var_list())?; // φ starts as θ
        }
        let scored = sample_and_score(&sampler, || self.ema_model(), &contexts, &global_index, &self.rollout, self.cfg.train.seed, self.step)?;
        let x = RewardInputs { contexts: &contexts, thoughts: &scored.thoughts, s_ema: &scored.s_ema, docs: &self.data.train, tok: &self.tok, guess_tokens: self.rollout.guess_tokens };
        let rewards = objective::rollout_rewards(self.cfg.objective.name, &x)?;
        let g = self.rollout.g;
        let advantages = group_advantages(&rewards, g, self.cfg.objective.advantage == Advantage::Grpo)?;
        let group_std = group_reward_std(&rewards, g)?;
        let mut acc = accounting::counter(&self.totals, &self.dist);
        accounting::count_rollouts(&mut acc, &self.shape, &self.rollout, &contexts, &scored.thoughts);
        accounting::fold_into(&mut self.totals, acc, &self.dist)?;
        Ok(RolloutBatch { contexts, global_index, thoughts: scored.thoughts, s_ema: scored.s_ema, rewards, advantages, group_std, model_step: self.step, sample_s: scored.sample_s, score_s: scored.score_s })
    }

    /// Gradient of the policy loss over the thoughts `idx` (flat b·G+i indices) of `batch`,
    /// normalised by `total_thoughts`, accumulated over micro-batches of `micro` thoughts.
    pub fn policy_gradient(&self, batch: &RolloutBatch, idx: &[usize], total_thoughts: usize, micro: usize) -> Result<PolicyGradient> {
        let reference = if self.cfg.objective.kl_coef > 0.0 { Some(self.ema_model()?) } else { None };
        grads::policy_gradient(&self.train_model()?, reference.as_ref(), &self.vars, batch, idx, total_thoughts, micro, &self.rollout, &self.policy_settings())
    }

    /// How this run's policy forward and backward run.
    pub fn policy_settings(&self) -> PolicySettings {
        let (o, t) = (&self.cfg.objective, &self.cfg.train);
        PolicySettings {
            loss: LossSettings { eps_low: o.eps_low, eps_high: o.eps_high, kl_coef: o.kl_coef },
            grad_on_forced_end: self.cfg.rollout.grad_on_forced_end,
            share_prefix: t.share_prefix,
            grad_checkpoint: t.grad_checkpoint,
            logprob_chunk: t.logprob_chunk,
        }
    }

    /// One NTP optimizer step over `ntp_windows_per_step` packed windows. Every rank packs the
    /// same global windows in the same order and trains windows rank, rank + W, …; the loss is
    /// divided by the global target count and summed over ranks before the shared update.
    pub(crate) fn ntp_step(&mut self) -> Result<()> {
        let len = self.cfg.data.max_context;
        let n_windows = self.cfg.ntp_windows_per_step();
        let all: Vec<Window> = (0..n_windows).map(|_| self.packer.next_window(&self.data.train, len)).collect::<Result<_>>()?;
        let windows = if self.dist.world() > 1 { dp::local_items(all, &self.dist) } else { all };
        let total_targets = (n_windows * len) as f64;
        let micro = self.cfg.train.micro_batch.unwrap_or(n_windows).clamp(1, n_windows);
        let no_cross = self.cfg.objective.ntp_no_cross_doc_attention;
        let t0 = Instant::now();
        let (mut grads, mut loss) = self.windows_gradient(
            &windows,
            micro,
            |chunk, dev| {
                let (ids, targets, layout) = ntp::window_batch(chunk, no_cross, dev)?;
                Ok((ids, layout, targets))
            },
            |policy, hidden, targets| ntp::window_loss(policy, hidden, targets, total_targets),
        )?;
        dp::all_reduce_loss_and_grads(&self.dist, &mut grads, &mut loss, &self.var_list())?;
        let train_s = t0.elapsed().as_secs_f64();
        let tokens = n_windows * len; // global: every rank counts the whole step
        self.totals.input_tokens += tokens as u64;
        self.totals.trained_tokens += tokens as u64;
        self.totals.flops_train += flops::train_flops(&self.shape, len as u64, tokens as u64);
        let bad = || json!({"windows": windows.iter().map(|w| &w.tokens).collect::<Vec<_>>()});
        let (upd, optim_s) = self.apply_update(grads, loss, bad)?;
        self.step += 1;
        let timing = Timing { sample_s: 0.0, score_s: 0.0, train_s, optim_s, train_tokens: tokens };
        let mut metrics = StepMetrics::new(self.step, &upd, loss, &timing, 0, &self.totals);
        dp::reduce_step_metrics(&self.dist, &mut metrics, Share { thoughts: 0, contexts: 0 })?;
        self.log_step(metrics)?;
        self.maybe_checkpoint(1)
    }

    /// One SFT optimizer step over `data.contexts_per_step` packed windows of examples. As
    /// `ntp_step`: every rank packs the same global windows and trains windows rank, rank + W, …;
    /// the loss is divided by the global count of response tokens and summed over ranks.
    pub(crate) fn sft_step(&mut self) -> Result<()> {
        let len = self.cfg.data.max_context;
        let n_windows = self.cfg.data.contexts_per_step;
        let Some(PostData::Sft(d)) = &mut self.post else { bail!("the SFT step needs objective.name = \"sft\" data") };
        let all = (0..n_windows).map(|_| d.packer.next_window(&d.docs, len)).collect::<Result<Vec<_>>>()?;
        let total_trained: usize = all.iter().map(|w| w.loss[1..].iter().filter(|&&l| l > 0).count()).sum(); // global
        let windows = if self.dist.world() > 1 { dp::local_items(all, &self.dist) } else { all };
        let micro = self.cfg.train.micro_batch.unwrap_or(n_windows).clamp(1, n_windows);
        let no_cross = self.cfg.objective.ntp_no_cross_doc_attention;
        let t0 = Instant::now();
        let (mut grads, mut loss) = self.windows_gradient(
            &windows,
            micro,
            |chunk, dev| {
                let (ids, targets, mask, layout) = sft_batch(chunk, no_cross, dev)?; // [W, T] each
                Ok((ids, layout, (targets, mask)))
            },
            |policy, hidden, (targets, mask)| sft::sft_loss_of_step(&policy.logits(hidden)?, targets, mask, total_trained),
        )?;
        dp::all_reduce_loss_and_grads(&self.dist, &mut grads, &mut loss, &self.var_list())?;
        let train_s = t0.elapsed().as_secs_f64();
        let tokens = n_windows * len; // global: every rank counts the whole step
        self.totals.input_tokens += tokens as u64;
        self.totals.trained_tokens += tokens as u64;
        self.totals.flops_train += flops::train_flops(&self.shape, len as u64, tokens as u64);
        let bad = || json!({"windows": windows.iter().map(|w| &w.tokens).collect::<Vec<_>>()});
        let (upd, optim_s) = self.apply_update(grads, loss, bad)?;
        self.step += 1;
        let timing = Timing { sample_s: 0.0, score_s: 0.0, train_s, optim_s, train_tokens: tokens };
        let mut metrics = StepMetrics::new(self.step, &upd, loss, &timing, 0, &self.totals);
        let every = self.cfg.logging.eval_every as u64;
        let heldout_response_nll = if every > 0 && self.step % every == 0 && self.dist.is_root() { self.sft_heldout_nll()? } else { None };
        metrics.sft = Some(SftMetrics { response_tokens_step: total_trained as u64, response_frac: total_trained as f64 / tokens as f64, heldout_response_nll });
        dp::reduce_step_metrics(&self.dist, &mut metrics, Share { thoughts: 0, contexts: 0 })?;
        self.log_step(metrics)?;
        self.maybe_checkpoint(1)
    }

    /// One RLVR batch (Q questions × G samples) and its `ppo_epochs × minibatches` optimizer
    /// steps. Every rank walks the same question order and samples its own questions; losses
    /// are divided by the global sample count of the minibatch and summed over ranks.
    fn rlvr_steps(&mut self) -> Result<()> {
        let batch: RlvrBatch = self.rlvr_batch()?; // sample, grade, advantages, logp_old (post.rs)
        let (g, mb) = (self.rollout.g, self.cfg.objective.minibatches);
        let share = Share { thoughts: batch.gens.len(), contexts: batch.items.len() };
        'epochs: for epoch in 0..self.cfg.objective.ppo_epochs {
            for m in 0..mb {
                if self.step >= self.cfg.train.steps as u64 {
                    break 'epochs;
                }
                let (idx, total) = self.rlvr_minibatch(&batch, m); // this rank's samples, the global count
                let t0 = Instant::now();
                let mut pg = self.rlvr_gradient(&batch, m, &idx, total)?;
                dp::all_reduce_policy_gradient(&self.dist, &mut pg, &self.var_list())?;
                let train_s = t0.elapsed().as_secs_f64();
                self.count_rlvr_training(&batch, &idx)?;
                let bad = || json!({"items": batch.items, "answers": batch.gens.iter().map(|s| &s.answer).collect::<Vec<_>>()});
                let (upd, optim_s) = self.apply_update(pg.grads, pg.loss, bad)?;
                self.step += 1;
                let first = epoch == 0 && m == 0; // sampling is charged to the batch's first step
                let (sample_s, score_s) = if first { (batch.sample_s, batch.score_s) } else { (0.0, 0.0) };
                let generated = if first { batch.gens.iter().map(|s| accounting::rlvr_generated(s, self.rollout.budget > 0) as u64).sum() } else { 0 };
                let timing = Timing { sample_s, score_s, train_s, optim_s, train_tokens: pg.forward_tokens };
                let mut metrics = StepMetrics::new(self.step, &upd, pg.loss, &timing, generated, &self.totals);
                let spec = self.rlvr_spec()?;
                let kl = (self.cfg.objective.kl_coef > 0.0).then_some(pg.kl);
                metrics.rlvr = Some(rlvr::rlvr_metrics(&batch.gens, &batch.graded, g, &spec, &pg.stats, kl)?);
                dp::reduce_step_metrics(&self.dist, &mut metrics, share)?;
                self.log_step(metrics)?;
            }
        }
        self.maybe_checkpoint((self.cfg.objective.ppo_epochs * mb) as u64)
    }

    /// The summed gradient and loss of one step over packed `windows` (ntp, sft), in
    /// micro-batches of `micro`: `batch` builds a micro-batch's ids [W, T], layout and targets,
    /// `loss` its loss from the final hidden states, with or without gradient checkpointing.
    fn windows_gradient<W, T>(
        &self,
        windows: &[W],
        micro: usize,
        batch: impl Fn(&[W], &Device) -> Result<(Tensor, AttnLayout, T)>,
        loss: impl Fn(&Model, &Tensor, &T) -> Result<Tensor>,
    ) -> Result<(GradStore, f64)> {
        let params = self.var_tensors();
        let mut acc = GradAccumulator::default();
        let mut loss_sum = 0f64;
        let policy = self.train_model()?; // f32 vars, or their differentiable bf16 cast
        for chunk in windows.chunks(micro) {
            let (ids, layout, targets) = batch(chunk, policy.embed.device())?;
            let loss_of = |hidden: &Tensor| loss(&policy, hidden, &targets);
            let (l, grads) = if self.cfg.train.grad_checkpoint {
                policy.checkpointed_backward(&ids, &layout, &params, loss_of)?
            } else {
                let l = loss_of(&policy.forward_hidden(&ids, &layout, None)?)?;
                let grads = l.backward()?;
                (l, grads)
            };
            loss_sum += l.to_scalar::<f32>()? as f64;
            acc.add(grads, &params)?;
        }
        Ok((acc.finish()?, loss_sum))
    }

    /// Non-finite guard, grad-norm clipping, AdamW and (for rollout objectives) the EMA update;
    /// returns what to log and the seconds it took. `bad_batch` is written to the run directory
    /// when the run stops on repeated faults. Under several ranks `grads` and `loss` must already
    /// be summed over ranks, so that every rank takes the same decision and the same update.
    pub(crate) fn apply_update(&mut self, mut grads: GradStore, loss: f64, bad_batch: impl FnOnce() -> Value) -> Result<(UpdateReport, f64)> {
        let t0 = Instant::now();
        let vars = self.var_list();
        let lr = self.schedule.lr_at(self.step);
        super::faults::poison_if_injected(self.step + 1, &mut grads, &vars)?; // test knob
        let nonfinite = !loss.is_finite() || grads_have_non_finite(&grads, &vars)?;
        if nonfinite {
            self.nonfinite_streak += 1;
            if self.dist.is_root() {
                eprintln!("warning: step {}: non-finite loss or gradient, step skipped ({} in a row)", self.step + 1, self.nonfinite_streak);
            }
            if self.nonfinite_streak > self.cfg.train.max_consecutive_nonfinite {
                // each rank saves its own share of the batch
                let rank = if self.dist.world() > 1 { format!("-rank-{}", self.dist.rank()) } else { String::new() };
                let p = self.run.join(format!("nonfinite-batch-step-{:06}{rank}.json", self.step + 1));
                model::weights::write_json(&p, &bad_batch())?;
                bail!("{} consecutive steps had a non-finite loss or gradient; the run stops here (the last checkpoint is intact) and the offending batch is saved in {}", self.nonfinite_streak, p.display());
            }
            return Ok((UpdateReport { lr, grad_norm: None, skipped: true }, t0.elapsed().as_secs_f64()));
        }
        self.nonfinite_streak = 0;
        let grad_norm = clip_grad_norm(&mut grads, &vars, self.cfg.optim.grad_clip)?;
        self.opt.step(&grads, lr)?;
        if self.ema.is_initialized() {
            self.ema.update(&vars, self.cfg.objective.ema_tau)?;
        }
        Ok((UpdateReport { lr, grad_norm: Some(grad_norm), skipped: false }, t0.elapsed().as_secs_f64()))
    }

    /// The policy FLOPs of one minibatch as run, summed over ranks.
    fn count_policy_training(&mut self, batch: &RolloutBatch, idx: &[usize], micro: usize) -> Result<()> {
        let shared = super::policy::prefix_is_shared(&self.policy.cfg, self.cfg.train.share_prefix);
        let mut acc = accounting::counter(&self.totals, &self.dist);
        accounting::count_policy_training(&mut acc, &self.shape, &self.rollout, self.cfg.rollout.grad_on_forced_end, shared, &batch.contexts, &batch.thoughts, idx, micro);
        accounting::fold_into(&mut self.totals, acc, &self.dist)
    }

    pub(crate) fn var_list(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The trained weights (f32 master `Var`s) as tensors, the keys of their gradients.
    pub(crate) fn var_tensors(&self) -> Vec<&Tensor> {
        self.vars.iter().map(|(_, v)| v.as_tensor()).collect()
    }

    /// φ as a model in the compute dtype (a bf16 copy under bf16 compute; no gradient).
    fn ema_model(&self) -> Result<Model> {
        let phi = self.ema.params().context("EMA teacher not initialised")?;
        let map: HashMap<String, Tensor> = self.vars.iter().map(|(n, _)| n.clone()).zip(phi.iter().cloned()).collect();
        Model::from_tensors(self.policy.cfg.clone(), map, "EMA teacher")?.to_dtype(self.compute_dtype)
    }

    /// θ without gradient, in the compute dtype: what samples, scores and evaluates. Under bf16
    /// compute this is a bf16 copy made once per call (once per rollout batch), so decoding
    /// reads half the bytes per step; the training forward casts the same f32 weights the same
    /// way, so behaviour and policy log-probs agree.
    pub fn inference_model(&self) -> Result<Model> {
        self.policy.detached()?.to_dtype(self.compute_dtype)
    }

    /// θ as the training forward computes with it: the f32 `Var`s themselves, or each cast to
    /// bf16 (a differentiable cast: gradients reach the f32 master weights as f32).
    pub fn train_model(&self) -> Result<Model> {
        self.policy.to_dtype(self.compute_dtype)
    }

    fn print_run_header(&self) {
        let c = &self.cfg;
        println!("{}", c.batch_arithmetic());
        if self.dist.is_distributed() {
            println!("data parallel: gradients summed by {}", self.dist.gradient_backend());
            let ntp = c.objective.name == ObjectiveName::Ntp;
            let (unit, n) = if ntp { ("packed windows", c.ntp_windows_per_step()) } else { ("contexts", c.data.contexts_per_step) };
            println!("data parallel: {} ranks, each trains about {} of the {n} {unit} per step", self.dist.world(), n / self.dist.world());
        }
        println!("device: {}; compute dtype: {} (master weights, AdamW moments and EMA teacher f32)", c.train.device, format!("{:?}", self.compute_dtype).to_lowercase());
        if self.device.is_cpu() && self.compute_dtype == DType::BF16 {
            eprintln!("note: train.compute_dtype = \"bf16\" on the CPU is correct but slower than f32 (candle's CPU matmul widens bf16 to f32); it is meant for GPUs");
        }
        println!(
            "objective: {:?}; model: {} ({} params); corpus: {} training docs, {} held out, {} skipped as too short",
            c.objective.name,
            c.model.path.display(),
            self.policy.cfg.num_params(),
            self.data.train.len(),
            self.data.heldout.len(),
            self.data.skipped_short
        );
    }

    /// `logging.eval_every`: held-out next-token loss and think-then-predict on a small slice
    /// of the held-out documents (at most 8 documents, 8 positions, K = 2 thoughts).
    fn periodic_eval(&self) -> Result<Option<EvalMetrics>> {
        let every = self.cfg.logging.eval_every as u64;
        if every == 0 || self.step % every != 0 || self.data.heldout.is_empty() || self.post.is_some() {
            return Ok(None);
        }
        let model = self.inference_model()?;
        let docs = &self.data.heldout;
        let refs: Vec<&[u32]> = (0..docs.len().min(8)).map(|i| docs.tokens(i)).collect();
        let nll = crate::eval::nll_eval(&model, &self.tok, &refs, self.cfg.data.max_context)?;
        let d = &self.cfg.data;
        let contexts = crate::eval::heldout_contexts(docs, 8, self.cfg.train.seed, d.min_prefix, d.max_context)?;
        let p = RolloutParams { g: 2, guess_tokens: 0, ..self.rollout.clone() };
        let mut rng = context_rng(self.cfg.train.seed, self.step, u64::MAX);
        let think = crate::eval::think_eval(&model, &contexts, &p, &mut rng)?;
        let pick = |m: &crate::eval::Metrics, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        Ok(Some(EvalMetrics { eval_nll: pick(&nll, "nll"), eval_acc_no_think: pick(&think, "acc_no_think"), eval_acc_think: pick(&think, "acc_think"), eval_info_gain: pick(&think, "info_gain") }))
    }

    /// Append to metrics.jsonl (with the periodic eval) and print the progress line. Rank 0
    /// alone logs (and evaluates); `m` must already be reduced over ranks.
    fn log_step(&mut self, mut m: StepMetrics) -> Result<()> {
        if !self.dist.is_root() {
            return Ok(());
        }
        m.eval = self.periodic_eval()?;
        let line = m.to_json();
        log::append_jsonl(&self.run, "metrics.jsonl", &line)?;
        #[cfg(feature = "tensorboard")]
        if let Some(tb) = &mut self.tensorboard {
            tb.log_metrics(&line)?;
        }
        if self.cfg.logging.progress {
            let total = self.cfg.train.steps as u64;
            let elapsed = self.started.elapsed().as_secs_f64();
            let eta = elapsed / (self.step - self.start_step).max(1) as f64 * (total - self.step) as f64;
            eprintln!("{}", super::progress::progress_line(self.cfg.objective.name, self.step, total, &line, eta));
        }
        Ok(())
    }

    /// samples.jsonl (and TensorBoard's text tab): rank 0's own contexts of the batch.
    fn write_samples(&mut self, batch: &RolloutBatch) -> Result<()> {
        if !self.dist.is_root() {
            return Ok(());
        }
        for row in log::sample_rows(&self.tok, batch, &self.rollout, self.step)? {
            log::append_jsonl(&self.run, "samples.jsonl", &row)?;
        }
        #[cfg(feature = "tensorboard")]
        if let Some(tb) = &mut self.tensorboard {
            tb.log_text(self.step, "samples", &log::samples_markdown(&self.tok, batch, log::TENSORBOARD_THOUGHTS)?)?;
        }
        Ok(())
    }

    /// Checkpoint when a multiple of `checkpoint.every` was crossed during the last
    /// `steps_done` steps (checkpoints fall on rollout-batch boundaries), or at the end.
    /// Rank 0 alone writes checkpoints.
    pub(crate) fn maybe_checkpoint(&mut self, steps_done: u64) -> Result<()> {
        if !self.dist.is_root() {
            return Ok(());
        }
        let every = self.cfg.checkpoint.every as u64;
        let crossed = every > 0 && self.step / every > (self.step - steps_done.min(self.step)) / every;
        if crossed || self.step >= self.cfg.train.steps as u64 {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    fn state(&self) -> TrainerState {
        TrainerState {
            step: self.step,
            adam_step: Some(self.opt.step_count()),
            sampler: self.contexts.sampler.state().clone(),
            packer: self.packer.state().clone(),
            nonfinite_streak: self.nonfinite_streak,
            totals: self.totals.clone(),
            vocab_size: self.policy.cfg.vocab_size,
            fixed_pool: self.contexts.fixed_pool.clone(),
            fixed_cursor: self.contexts.fixed_cursor,
            sft_packer: match &self.post {
                Some(PostData::Sft(d)) => Some(d.packer.state().clone()),
                _ => None,
            },
            rlvr_order: match &self.post {
                Some(PostData::Rlvr(d)) => Some(d.order.state().clone()),
                _ => None,
            },
        }
    }

    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let mut tensors = self.opt.state_tensors();
        tensors.extend(self.ema.state_tensors());
        let dir = checkpoint::save(&self.run, self.step, &self.policy, self.tok.inner(), tensors, &self.state(), self.cfg.checkpoint.keep_last)?;
        if self.cfg.logging.progress {
            eprintln!("checkpoint: {}", dir.display());
        }
        Ok(dir)
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        let weights = model::weights::load_safetensors_dir(dir)?;
        for (name, var) in &self.vars {
            let t = weights.get(name).with_context(|| format!("checkpoint {} has no tensor `{name}`", dir.display()))?;
            if t.dims() != var.dims() {
                bail!("checkpoint {}: tensor `{name}` has shape {:?}, the model has {:?}", dir.display(), t.dims(), var.dims());
            }
            var.set(&t.to_device(var.device())?)?;
        }
        let (tensors, state) = checkpoint::load_state(dir)?;
        self.opt.load_state(&tensors, state.adam_step.unwrap_or(state.step))?;
        self.ema.load_state(&tensors, &self.var_list())?;
        self.contexts.sampler.restore(state.sampler).with_context(|| format!("{}: bad sampler state", dir.display()))?;
        self.packer.restore(state.packer).with_context(|| format!("{}: bad packer state", dir.display()))?;
        self.nonfinite_streak = state.nonfinite_streak;
        self.totals = state.totals;
        self.contexts.fixed_pool = state.fixed_pool;
        self.contexts.fixed_cursor = state.fixed_cursor;
        match (&mut self.post, state.sft_packer, state.rlvr_order) {
            (Some(PostData::Sft(d)), Some(p), _) => d.packer.restore(p).with_context(|| format!("{}: bad SFT packer state", dir.display()))?,
            (Some(PostData::Rlvr(d)), _, Some(o)) => d.order.restore(o).with_context(|| format!("{}: bad RLVR question order", dir.display()))?,
            (Some(_), _, _) => bail!(
                "checkpoint {} holds no {:?} data position: another objective wrote it. Start a new run from its weights (model.path = that checkpoint) instead of --resume",
                dir.display(),
                self.cfg.objective.name
            ),
            (None, _, _) => {}
        }
        self.step = state.step;
        // Lines logged after the checkpoint belong to steps that will run again.
        if self.dist.is_root() {
            for name in ["metrics.jsonl", "samples.jsonl"] {
                log::truncate_jsonl_after(&self.run.join(name), self.step)?;
            }
            eprintln!("resumed from {} at step {}", dir.display(), self.step);
        }
        Ok(())
    }

    /// `--resume` on a run that never completed a checkpoint starts it again from step 0,
    /// dropping the log lines of the lost steps.
    fn restart_without_checkpoint(&mut self) -> Result<()> {
        for name in ["metrics.jsonl", "samples.jsonl"] {
            log::truncate_jsonl_after(&self.run.join(name), 0)?;
        }
        eprintln!("--resume: {} has no complete checkpoint yet; starting again from step 0", self.run.display());
        Ok(())
    }
}
