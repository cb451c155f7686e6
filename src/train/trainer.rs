//! `rlp train`: the training loop, read top to bottom.
//!
//! RLP and RPT (rollout objectives):
//! ```text
//! contexts ─▶ rollouts (θ, shared prefix KV) ─▶ S_pred per thought, S_ema per context (φ)
//!   ─▶ rewards (info gain | RPT prefix match) ─▶ advantages ─▶ clipped surrogate (micro-batched)
//!   ─▶ clip grad norm ─▶ AdamW ─▶ EMA ─▶ metrics, samples, checkpoint
//! ```
//! NTP (the CPT baseline): packed windows ─▶ next-token loss ─▶ the same update (`ntp.rs`).

use super::checkpoint;
use super::data_parallel as dp; // [dist]
use super::ema::EmaTeacher;
use super::optim::{clip_grad_norm, grads_have_non_finite, AdamW, AdamWConfig};
use super::policy::{checkpointed_policy_backward, logprobs_from_hidden, thought_inputs, thought_logprobs, ThoughtLogprobs, ThoughtRow};
use super::schedule::{LrSchedule, ScheduleKind};
use crate::model::transformer::{empty_grad_store, take_grads};
use crate::config::{Advantage, Dtype, ObjectiveName, Schedule, TrainConfig};
use crate::data::corpus::{Corpus, TokenizedCorpus};
use crate::data::packer::{Packer, PackerState};
use crate::data::sampler::{Context, PositionSampler, SamplerState};
use crate::dist::metrics::{reduce_metrics, Share}; // [dist]
use crate::dist::{Dist, ReduceOp}; // [dist]
use crate::flops::{self, ModelShape};
use crate::model::{self, Model};
use crate::objective::rlp::{clipped_surrogate, frac_zero_std_groups, group_advantages, group_reward_std, info_gain_rewards, kl_penalty, SurrogateStats};
use crate::objective::rpt::{entropy_from_logits, prefix_match_reward, select_by_entropy, token_end_offsets};
use crate::rollout::{context_rng, no_think_scores, sample_thoughts, Prompt, RolloutParams, Thought};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use anyhow::{bail, Context as _, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

/// Counters that accumulate over the whole run (saved in checkpoints, logged every step).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Corpus tokens the run consumed: prefixes and targets (rlp/rpt), packed windows (ntp).
    pub input_tokens: u64,
    /// Tokens sampled by rollouts (thoughts, `</think>`, RPT guesses).
    pub generated_tokens: u64,
    /// Tokens through the training forward.
    pub trained_tokens: u64,
    pub flops_sample: f64,
    pub flops_score: f64,
    pub flops_train: f64,
}

impl Totals {
    pub fn flops_total(&self) -> f64 {
        self.flops_sample + self.flops_score + self.flops_train
    }
}

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
    pub(crate) sampler: PositionSampler,
    pub(crate) packer: Packer,
    pub(crate) rollout: RolloutParams,
    pub(crate) shape: ModelShape,
    /// [dist] This process's rank and world; rank 0 alone writes files.
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
    /// Entropy-filtered fixed contexts (`data.fixed_contexts` with a filter) and the next one.
    pub(crate) fixed_pool: Vec<Context>,
    pub(crate) fixed_cursor: usize,
    /// `logging.tensorboard`: rank 0's event file in RUN/tb/.
    #[cfg(feature = "tensorboard")]
    pub(crate) tensorboard: Option<super::tensorboard::TensorBoard>,
}

/// Everything sampled and scored for one rollout batch.
pub struct RolloutBatch {
    /// This rank's contexts (all of them in a single process).
    pub contexts: Vec<Context>,
    /// [dist] Each local context's index in the global batch of B.
    pub global_index: Vec<usize>,
    pub thoughts: Vec<Vec<Thought>>, // [B][G]
    pub s_ema: Vec<f32>,             // [B]
    pub rewards: Vec<f32>,           // [B*G]
    pub advantages: Vec<f32>,        // [B*G]
    pub group_std: Vec<f32>,         // [B]
    /// Optimizer steps the weights had taken when they sampled and scored this batch: the
    /// checkpoint `step-{model_step}` holds the weights that reproduce its S_pred.
    pub model_step: u64,
    pub sample_s: f64,
    pub score_s: f64,
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
}

/// What the shared update tail reports.
pub(crate) struct Update {
    pub lr: f64,
    pub grad_norm: Option<f32>,
    pub skipped: bool,
    pub optim_s: f64,
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
        super::faults::injected_steps()?; // robustness: a malformed test knob fails here, not mid-run
        dp::check_batch_fits_world(&cfg, dist.world())?; // [dist]
        // before anything is loaded: a CPU-only build asked for cuda fails here
        let device = dp::rank_device(&cfg.train.device, &dist)?; // [dist] GPU of the node-local rank
        dist.use_device(&device)?; // [dist] NCCL on GPUs (feature nccl), collective
        let compute_dtype = match cfg.train.compute_dtype {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
        };
        let existing = checkpoint::list(run)?;
        if !resume && (!existing.is_empty() || run.join("metrics.jsonl").exists()) {
            bail!("run directory {} already holds a run: pass --resume to continue it, or choose another --out", run.display());
        }
        let loaded = model::weights::load(&cfg.model.path)?;
        let raw_tok = loaded.tokenizer.with_context(|| format!("{} has no tokenizer.json; rlp train needs one", cfg.model.path.display()))?;
        let tok = Tok::from_tokenizer(raw_tok, cfg.model.add_think_tokens, &cfg.model.path.display().to_string())?;
        let mut policy = loaded.model;
        // robustness: only think tokens added here may lie past the model's embedding
        let rows = tok.rows_for_model(policy.cfg.vocab_size, &cfg.model.path.display().to_string())?;
        policy.grow_vocab(rows)?;
        let corpus = Corpus::open(&cfg.data.path, &cfg.data.text_field)?;
        let data = TokenizedCorpus::build(&corpus, |t| tok.encode(t), cfg.data.min_prefix + 1, cfg.data.heldout_docs)?;
        let sampler = PositionSampler::new(data.train.len(), cfg.train.seed, cfg.data.positions_per_doc, cfg.data.min_prefix, cfg.data.max_context, cfg.data.fixed_contexts)?;
        let eos = tok.eos_ids.first().copied().context("the tokenizer has no end-of-text token (<|endoftext|>, </s>, ...): ntp packing needs one")?;
        let packer = Packer::new(data.train.len(), cfg.train.seed, eos)?;
        let shape = ModelShape::from_config(&policy.cfg);
        let (policy, vars) = policy.to_device(&device)?.into_vars()?;
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
            sampler,
            packer,
            rollout,
            shape,
            dist,
            device,
            compute_dtype,
            step: 0,
            nonfinite_streak: 0,
            totals: Totals::default(),
            started: Instant::now(),
            start_step: 0,
            fixed_pool: Vec::new(),
            fixed_cursor: 0,
            #[cfg(feature = "tensorboard")]
            tensorboard: None,
        };
        if t.dist.is_root() {
            std::fs::create_dir_all(run).with_context(|| format!("cannot create run directory {}", run.display()))?;
            checkpoint::remove_partial(run)?;
        }
        if resume {
            match existing.last() {
                Some((_, dir)) => t.restore(dir)?,
                // robustness: a run killed before its first checkpoint restarts from step 0
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
        t.dist.check_same_on_all_ranks("resolved config", resolved.as_bytes())?; // [dist]
        if t.dist.is_root() {
            std::fs::write(run.join("config.toml"), resolved).with_context(|| format!("cannot write {}", run.join("config.toml").display()))?;
        }
        Ok(t)
    }

    pub(crate) fn var_list(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The trained weights (f32 master `Var`s) as tensors, the keys of their gradients.
    pub(crate) fn var_tensors(&self) -> Vec<&Tensor> {
        self.vars.iter().map(|(_, v)| v.as_tensor()).collect()
    }

    /// The EMA teacher φ as a model (detached). Initialised from θ on first use.
    fn teacher(&mut self) -> Result<Model> {
        if !self.ema.is_initialized() {
            self.ema.init_from(&self.var_list())?;
        }
        self.ema_model()
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

    /// B contexts for a rollout batch. With an entropy filter (`objective.rpt_entropy_threshold`
    /// or `objective.rpt_top_frac`: RPT's position selection, usable with RLP too) candidates
    /// are kept only when the model's own no-think next-token entropy passes it. With
    /// `data.fixed_contexts = n` as well, the first n contexts that pass (judged by the starting
    /// model) form the fixed set, cycled through and saved in checkpoints.
    fn draw_contexts(&mut self) -> Result<Vec<Context>> {
        let b = self.cfg.data.contexts_per_step;
        let o = &self.cfg.objective;
        if o.rpt_entropy_threshold.is_none() && o.rpt_top_frac.is_none() {
            return self.sampler.next_batch(&self.data, b);
        }
        let Some(n) = self.cfg.data.fixed_contexts else {
            let mut sampler = std::mem::replace(&mut self.sampler, PositionSampler::new(1, 0, 1, 0, 1, None)?);
            let out = self.filtered_contexts(&mut sampler, b);
            self.sampler = sampler;
            return out;
        };
        if self.fixed_pool.is_empty() {
            let d = &self.cfg.data;
            let mut walk = PositionSampler::new(self.data.train.len(), self.cfg.train.seed, d.positions_per_doc, d.min_prefix, d.max_context, None)?;
            self.fixed_pool = self.filtered_contexts(&mut walk, n)?;
        }
        let out = (0..b).map(|i| self.fixed_pool[(self.fixed_cursor + i) % n].clone()).collect();
        self.fixed_cursor = (self.fixed_cursor + b) % n;
        Ok(out)
    }

    /// The next `n` contexts of `sampler` whose no-think entropy passes the filter.
    fn filtered_contexts(&self, sampler: &mut PositionSampler, n: usize) -> Result<Vec<Context>> {
        let o = &self.cfg.objective;
        let (threshold, top_frac) = (o.rpt_entropy_threshold.map(|x| x as f32), o.rpt_top_frac.map(|x| x as f32));
        let model = self.inference_model()?;
        let batch = self.cfg.data.contexts_per_step.max(n);
        let mut kept = Vec::with_capacity(n);
        for _round in 0..64 {
            let candidates = sampler.next_batch(&self.data, batch)?;
            let seqs: Vec<Vec<u32>> = candidates.iter().map(|c| c.prefix.clone()).collect();
            let cap = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
            let (logits, _) = model.prefill(&seqs, cap)?;
            let entropy: Vec<f32> = logits.to_vec2::<f32>()?.iter().map(|l| entropy_from_logits(l)).collect();
            // top_frac is per document: group the candidates by document
            let mut by_doc: Vec<(usize, Vec<usize>)> = Vec::new();
            for (i, c) in candidates.iter().enumerate() {
                match by_doc.iter_mut().find(|(d, _)| *d == c.doc) {
                    Some((_, v)) => v.push(i),
                    None => by_doc.push((c.doc, vec![i])),
                }
            }
            for (_, members) in by_doc {
                let ent: Vec<f32> = members.iter().map(|&i| entropy[i]).collect();
                for j in select_by_entropy(&ent, threshold, top_frac) {
                    if kept.len() < n {
                        kept.push(candidates[members[j]].clone());
                    }
                }
            }
            if kept.len() == n {
                return Ok(kept);
            }
        }
        bail!("the entropy filter kept only {} of {n} contexts after 64 rounds of candidates: lower objective.rpt_entropy_threshold or raise objective.rpt_top_frac", kept.len())
    }

    /// RPT reward of each rollout: 1 when the guessed bytes are a prefix of the true
    /// continuation that ends on a true token boundary.
    fn rpt_rewards(&self, contexts: &[Context], thoughts: &[Vec<Thought>]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for (c, group) in contexts.iter().zip(thoughts) {
            let doc = self.data.train.tokens(c.doc);
            let window = &doc[c.pos..doc.len().min(c.pos + 4 * self.rollout.guess_tokens.max(1) + 4)];
            let pieces: Vec<Vec<u8>> = window.iter().map(|&id| self.tok.token_bytes(id).unwrap_or_default()).collect();
            let continuation: Vec<u8> = pieces.concat();
            let boundaries = token_end_offsets(&pieces.iter().map(|p| p.len()).collect::<Vec<_>>());
            for t in group {
                let guess: Vec<u8> = t.guess.iter().flat_map(|&id| self.tok.token_bytes(id).unwrap_or_default()).collect();
                out.push(prefix_match_reward(&guess, &continuation, &boundaries));
            }
        }
        Ok(out)
    }

    /// Sample and score one rollout batch of B contexts (this rank's share of them).
    pub fn rollout_batch(&mut self) -> Result<RolloutBatch> {
        // [dist] Every rank draws the same global batch (the entropy filter depends only on the
        // model, identical on every rank) and keeps contexts rank, rank + W, ….
        let all = self.draw_contexts()?;
        if self.dist.world() > 1 {
            let key: Vec<u8> = all.iter().flat_map(|c| [c.doc as u64, c.pos as u64]).flat_map(u64::to_le_bytes).collect();
            self.dist.check_same_on_all_ranks("batch of contexts", &key)?;
        }
        let global_index = dp::local_contexts(all.len(), &self.dist)?;
        let contexts: Vec<Context> = if self.dist.world() > 1 { global_index.iter().map(|&i| all[i].clone()).collect() } else { all };
        let prompts: Vec<Prompt> = contexts.iter().map(|c| Prompt { prefix: &c.prefix, target: c.target }).collect();
        let t0 = Instant::now();
        let sampler_model = self.inference_model()?;
        let seed = self.cfg.train.seed;
        // [dist] keyed by the context's index in the global batch, not in this rank's share
        let mut rngs: Vec<_> = global_index.iter().map(|&i| context_rng(seed, self.step, i as u64)).collect();
        let thoughts = sample_thoughts(&sampler_model, &prompts, &self.rollout, &mut rngs)?;
        let sample_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let teacher = self.teacher()?;
        let s_ema = no_think_scores(&teacher, &prompts)?;
        let score_s = t1.elapsed().as_secs_f64();
        let g = self.rollout.g;
        let rewards = if self.cfg.objective.name == ObjectiveName::Rpt {
            self.rpt_rewards(&contexts, &thoughts)?
        } else {
            let mut r = Vec::with_capacity(contexts.len() * g);
            for (group, &se) in thoughts.iter().zip(&s_ema) {
                let s_pred: Vec<f32> = group.iter().map(|t| t.s_pred).collect();
                r.extend(info_gain_rewards(&s_pred, se));
            }
            r
        };
        let advantages = group_advantages(&rewards, g, self.cfg.objective.advantage == Advantage::Grpo)?;
        let group_std = group_reward_std(&rewards, g)?;
        self.count_rollout_compute(&contexts, &thoughts)?;
        Ok(RolloutBatch { contexts, global_index, thoughts, s_ema, rewards, advantages, group_std, model_step: self.step, sample_s, score_s })
    }

    /// Tokens and FLOPs of sampling and scoring one rollout batch (`flops.rs` conventions),
    /// summed over ranks.
    fn count_rollout_compute(&mut self, contexts: &[Context], thoughts: &[Vec<Thought>]) -> Result<()> {
        let sep = self.rollout.separator.len() as u64;
        let mut acc = self.totals_accumulator();
        for (c, group) in contexts.iter().zip(thoughts) {
            let p = c.prefix.len() as u64 + 1; // prefix + <think>
            acc.input_tokens += c.prefix.len() as u64 + 1;
            acc.flops_sample += flops::prefill_flops(&self.shape, p);
            for t in group {
                // sampled: thought, </think>, guess; fed after the prefill: all but the last
                let generated = t.ids.len() as u64 + 1 + t.guess.len() as u64;
                acc.generated_tokens += generated;
                acc.flops_sample += flops::decode_flops(&self.shape, p, generated + sep);
                acc.flops_score += flops::score_flops(&self.shape, p + t.ids.len() as u64 + sep, 1);
            }
            acc.flops_score += flops::score_flops(&self.shape, 0, c.prefix.len() as u64);
        }
        self.add_totals(acc)
    }

    /// [dist] Where to count this rank's tokens and FLOPs: the run's totals themselves in a
    /// single process (so its sums are exactly as before), zeros under several ranks.
    fn totals_accumulator(&self) -> Totals {
        if self.dist.world() == 1 {
            self.totals.clone()
        } else {
            Totals::default()
        }
    }

    /// [dist] Fold an accumulator from [`Self::totals_accumulator`] into the totals, summing
    /// every rank's counts.
    fn add_totals(&mut self, acc: Totals) -> Result<()> {
        if self.dist.world() == 1 {
            self.totals = acc;
            return Ok(());
        }
        let mut v = [acc.input_tokens as f64, acc.generated_tokens as f64, acc.trained_tokens as f64, acc.flops_sample, acc.flops_score, acc.flops_train];
        self.dist.all_reduce_f64("token and FLOP counts", &mut v, ReduceOp::Sum)?;
        let t = &mut self.totals;
        t.input_tokens += v[0].round() as u64;
        t.generated_tokens += v[1].round() as u64;
        t.trained_tokens += v[2].round() as u64;
        t.flops_sample += v[3];
        t.flops_score += v[4];
        t.flops_train += v[5];
        Ok(())
    }

    /// Gradient of the clipped surrogate over the thoughts `idx` (flat b*G+i indices) of `batch`,
    /// normalised by `total_thoughts`, accumulated over micro-batches of `micro` thoughts.
    pub fn policy_gradient(&self, batch: &RolloutBatch, idx: &[usize], total_thoughts: usize, micro: usize) -> Result<PolicyGradient> {
        let g = self.rollout.g;
        let obj = &self.cfg.objective;
        let teacher = if obj.kl_coef > 0.0 { Some(self.ema_model()?) } else { None };
        let policy = self.train_model()?;
        let mut acc = GradAccumulator::default();
        let (mut loss_sum, mut entropy_sum, mut tokens, mut fwd_tokens, mut kl_sum) = (0f64, 0f64, 0usize, 0usize, 0f64);
        let mut stats = SurrogateStats::default();
        for chunk in idx.chunks(micro.max(1)) {
            let rows: Vec<ThoughtRow> = chunk.iter().map(|&k| ThoughtRow { prefix: &batch.contexts[k / g].prefix, thought: &batch.thoughts[k / g][k % g] }).collect();
            let adv: Vec<f32> = chunk.iter().map(|&k| batch.advantages[k]).collect();
            let adv = Tensor::new(adv.as_slice(), &self.device)?;
            let forced_end = self.cfg.rollout.grad_on_forced_end;
            let reference = teacher.as_ref().map(|t| thought_logprobs(t, &rows, &self.rollout, forced_end, self.cfg.train.share_prefix)).transpose()?;
            // Surrogate (+ KL) of this micro-batch's log-probs; also returns what is logged.
            let loss_of = |lp: &ThoughtLogprobs| -> Result<(Tensor, SurrogateStats, f64)> {
                let (mut loss, st) = clipped_surrogate(&lp.logp, &lp.logp_old, &lp.mask, &adv, obj.eps_low, obj.eps_high, total_thoughts)?;
                let mut kl_tokens = 0.0;
                if let Some(reference) = &reference {
                    let (kl, mean_kl) = kl_penalty(&lp.logp, &reference.logp, &lp.mask, obj.kl_coef, total_thoughts)?;
                    loss = (loss + kl)?;
                    kl_tokens = mean_kl as f64 * lp.n_tokens as f64;
                }
                Ok((loss, st, kl_tokens))
            };
            let inp = thought_inputs(&policy, &rows, &self.rollout, forced_end, self.cfg.train.share_prefix)?;
            let (loss, grads, lp, st, kl_tokens) = if self.cfg.train.grad_checkpoint {
                let mut logged = None;
                let (loss, grads, lp) = checkpointed_policy_backward(&policy, &inp, &self.rollout, &self.var_tensors(), self.cfg.train.logprob_chunk, |lp| {
                    let (loss, st, kl) = loss_of(lp)?;
                    logged = Some((st, kl));
                    Ok(loss)
                })?;
                let (st, kl) = logged.context("the policy loss was not computed")?;
                (loss, grads, lp, st, kl)
            } else {
                let hidden = policy.forward_hidden(&inp.ids, &inp.layout, None)?;
                let lp = logprobs_from_hidden(&policy, &inp, &hidden, &self.rollout)?;
                let (loss, st, kl) = loss_of(&lp)?;
                let grads = loss.backward()?;
                (loss, grads, lp, st, kl)
            };
            loss_sum += loss.to_scalar::<f32>()? as f64;
            kl_sum += kl_tokens;
            stats.merge(&st);
            entropy_sum += lp.entropy_sum;
            tokens += lp.n_tokens;
            fwd_tokens += lp.forward_tokens;
            acc.add(grads, &self.vars)?;
        }
        let per_token = |x: f64| if tokens > 0 { x / tokens as f64 } else { 0.0 };
        Ok(PolicyGradient { grads: acc.finish()?, loss: loss_sum, stats, entropy: per_token(entropy_sum), forward_tokens: fwd_tokens, kl: per_token(kl_sum) })
    }

    /// Non-finite guard, grad-norm clipping, AdamW and (for rollout objectives) the EMA update.
    /// `bad_batch` is written to the run directory when the run stops on repeated faults.
    /// Under several ranks `grads` and `loss` must already be summed over ranks, so that every
    /// rank takes the same decision and the same update.
    pub(crate) fn apply_update(&mut self, mut grads: GradStore, loss: f64, bad_batch: impl FnOnce() -> Value) -> Result<Update> {
        let t0 = Instant::now();
        let vars = self.var_list();
        let lr = self.schedule.lr_at(self.step);
        super::faults::poison_if_injected(self.step + 1, &mut grads, &vars)?; // robustness: test knob
        let nonfinite = !loss.is_finite() || grads_have_non_finite(&grads, &vars)?;
        if nonfinite {
            self.nonfinite_streak += 1;
            if self.dist.is_root() {
                eprintln!("warning: step {}: non-finite loss or gradient, step skipped ({} in a row)", self.step + 1, self.nonfinite_streak);
            }
            if self.nonfinite_streak > self.cfg.train.max_consecutive_nonfinite {
                // [dist] Each rank saves its own share of the batch.
                let rank = if self.dist.world() > 1 { format!("-rank-{}", self.dist.rank()) } else { String::new() };
                let p = self.run.join(format!("nonfinite-batch-step-{:06}{rank}.json", self.step + 1));
                model::weights::write_json(&p, &bad_batch())?;
                bail!("{} consecutive steps had a non-finite loss or gradient; the run stops here (the last checkpoint is intact) and the offending batch is saved in {}", self.nonfinite_streak, p.display());
            }
            return Ok(Update { lr, grad_norm: None, skipped: true, optim_s: t0.elapsed().as_secs_f64() });
        }
        self.nonfinite_streak = 0;
        let grad_norm = clip_grad_norm(&mut grads, &vars, self.cfg.optim.grad_clip)?;
        self.opt.step(&grads, lr)?;
        if self.ema.is_initialized() {
            self.ema.update(&vars, self.cfg.objective.ema_tau)?;
        }
        Ok(Update { lr, grad_norm: Some(grad_norm), skipped: false, optim_s: t0.elapsed().as_secs_f64() })
    }

    /// Run until `train.steps` optimizer steps are done.
    pub fn run(&mut self) -> Result<()> {
        if self.dist.is_root() {
            println!("{}", self.cfg.batch_arithmetic());
            if self.dist.is_distributed() {
                println!("data parallel: gradients summed by {}", self.dist.gradient_backend());
                let unit = if self.cfg.objective.name == ObjectiveName::Ntp { "packed windows" } else { "contexts" };
                let n = if self.cfg.objective.name == ObjectiveName::Ntp { self.cfg.ntp_windows_per_step() } else { self.cfg.data.contexts_per_step };
                println!("data parallel: {} ranks, each trains about {} of the {n} {unit} per step", self.dist.world(), n / self.dist.world());
            }
            println!("device: {}; compute dtype: {} (master weights, AdamW moments and EMA teacher f32)", self.cfg.train.device, format!("{:?}", self.compute_dtype).to_lowercase());
            if self.device.is_cpu() && self.compute_dtype == DType::BF16 {
                eprintln!("note: train.compute_dtype = \"bf16\" on the CPU is correct but slower than f32 (candle's CPU matmul widens bf16 to f32); it is meant for GPUs");
            }
            println!(
                "objective: {:?}; model: {} ({} params); corpus: {} training docs, {} held out, {} skipped as too short",
                self.cfg.objective.name,
                self.cfg.model.path.display(),
                self.policy.cfg.num_params(),
                self.data.train.len(),
                self.data.heldout.len(),
                self.data.skipped_short
            );
        }
        self.started = Instant::now();
        self.start_step = self.step;
        while self.step < self.cfg.train.steps as u64 {
            match self.cfg.objective.name {
                ObjectiveName::Ntp => self.ntp_step()?,
                ObjectiveName::Rlp | ObjectiveName::Rpt => self.rollout_steps()?,
            }
            // robustness: SIGINT/SIGTERM end the run here; the checkpoint below is written
            if super::signals::stop_requested().is_some() {
                break;
            }
        }
        if self.dist.is_root() && checkpoint::list(&self.run)?.last().map(|(s, _)| *s) != Some(self.step) {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    /// One rollout batch and its `ppo_epochs × minibatches` optimizer steps.
    fn rollout_steps(&mut self) -> Result<()> {
        let total = self.cfg.train.steps as u64;
        let batch = self.rollout_batch()?;
        // [dist] b is the global batch: minibatches split the global contexts, each rank trains
        // its own among them
        let (b, g, mb) = (self.cfg.data.contexts_per_step, self.rollout.g, self.cfg.objective.minibatches);
        let share = Share { thoughts: batch.contexts.len() * g, contexts: batch.contexts.len() };
        let mut first = true;
        let mut last = None;
        'epochs: for _epoch in 0..self.cfg.objective.ppo_epochs {
            for m in 0..mb {
                if self.step >= total {
                    break 'epochs;
                }
                let ctx_range = (m * b / mb)..((m + 1) * b / mb);
                let total_thoughts = ctx_range.len() * g; // the global normaliser
                let idx = dp::minibatch_thoughts(&batch.global_index, ctx_range, g); // [dist] this rank's share
                let t0 = Instant::now();
                let micro = self.cfg.train.micro_batch.unwrap_or(total_thoughts);
                let mut pg = self.policy_gradient(&batch, &idx, total_thoughts, micro)?;
                // [dist] the global gradient and loss statistics, before any clip or update
                dp::all_reduce_policy_gradient(&self.dist, &mut pg, &self.var_list())?;
                let train_s = t0.elapsed().as_secs_f64();
                let mut acc = self.totals_accumulator();
                // As run: per micro-batch, the thoughts of each context branch off its prefix.
                for chunk in idx.chunks(micro.max(1)) {
                    for ctx in chunk.chunk_by(|a, b| a / g == b / g) {
                        let prefix_len = batch.contexts[ctx[0] / g].prefix.len() as u64;
                        let branches: Vec<(u64, u64)> = ctx
                            .iter()
                            .map(|&k| {
                                let t = &batch.thoughts[k / g][k % g];
                                (t.ids.len() as u64 + 1 + t.guess.len() as u64, super::policy::grad_len(t, &self.rollout, self.cfg.rollout.grad_on_forced_end) as u64)
                            })
                            .collect();
                        acc.flops_train += flops::policy_train_flops(&self.shape, prefix_len, &branches, super::policy::prefix_is_shared(&self.policy.cfg, self.cfg.train.share_prefix));
                    }
                }
                self.add_totals(acc)?; // [dist] summed over ranks
                self.totals.trained_tokens += pg.forward_tokens as u64; // already global
                let upd = self.apply_update(pg.grads, pg.loss, || bad_rollout_batch_json(&batch))?;
                self.step += 1;
                let (sample_s, score_s) = if first { (batch.sample_s, batch.score_s) } else { (0.0, 0.0) };
                first = false;
                let mut m = self.rollout_metrics(&batch)?;
                let timing = Timing { sample_s, score_s, train_s, optim_s: upd.optim_s, train_tokens: pg.forward_tokens };
                self.add_step_fields(&mut m, &upd, pg.loss, &timing);
                let st = &pg.stats;
                for (k, v) in [("clip_frac_low", st.clip_frac_low() as f64), ("clip_frac_high", st.clip_frac_high() as f64), ("ratio_mean", st.ratio_mean() as f64), ("entropy", pg.entropy), ("kl", pg.kl)] {
                    m[k] = json!(v);
                }
                reduce_metrics(&self.dist, &mut m, share)?; // [dist]
                self.log_step(&m)?;
                last = Some(m);
            }
        }
        let every = self.cfg.logging.samples_every as u64;
        let per_batch = (self.cfg.objective.ppo_epochs * mb) as u64;
        if every > 0 && (self.step.div_ceil(per_batch) - 1) % every == 0 {
            self.write_samples(&batch)?;
        }
        if let Some(m) = &last {
            self.warn_on_degenerate_rollouts(m);
        }
        self.maybe_checkpoint(per_batch)?;
        Ok(())
    }

    /// From the batch's (global) rollout metrics.
    fn warn_on_degenerate_rollouts(&self, m: &Value) {
        if !self.dist.is_root() {
            return;
        }
        let truncated = m["thought_truncated_frac"].as_f64().unwrap_or(0.0);
        if truncated > 0.9 && self.rollout.budget > 1 {
            eprintln!("warning: step {}: {:.0}% of thoughts hit the {}-token budget; consider a larger rollout.thought_budget", self.step, 100.0 * truncated, self.rollout.budget);
        }
        if m["frac_zero_std_groups"].as_f64() == Some(1.0) {
            eprintln!("warning: step {}: every group has zero reward spread, so every advantage is 0 and nothing is learned", self.step);
        }
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

    fn rollout_metrics(&self, batch: &RolloutBatch) -> Result<Value> {
        let all: Vec<&Thought> = batch.thoughts.iter().flatten().collect();
        let n = all.len().max(1) as f64;
        let mean = |xs: &[f32]| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64;
        let r_mean = mean(&batch.rewards);
        let r_std = (batch.rewards.iter().map(|&r| (r as f64 - r_mean).powi(2)).sum::<f64>() / batch.rewards.len().max(1) as f64).sqrt();
        let s_pred: Vec<f32> = all.iter().map(|t| t.s_pred).collect();
        let drift = if self.ema.is_initialized() { self.ema.drift(&self.var_list())? as f64 } else { 0.0 };
        Ok(json!({
            "reward_mean": r_mean,
            "reward_std": r_std,
            "s_pred_mean": mean(&s_pred),
            "s_ema_mean": mean(&batch.s_ema),
            "adv_abs_mean": batch.advantages.iter().map(|a| a.abs() as f64).sum::<f64>() / n,
            "frac_zero_std_groups": frac_zero_std_groups(&batch.group_std),
            "thought_len_mean": all.iter().map(|t| t.ids.len() as f64).sum::<f64>() / n,
            "thought_truncated_frac": all.iter().filter(|t| !t.closed).count() as f64 / n,
            "ema_drift": drift,
            "generated_tokens_step": all.iter().map(|t| t.ids.len() + 1 + t.guess.len()).sum::<usize>(),
        }))
    }

    /// Fields every objective logs: step, lr, loss, grad norm, timings, throughput, totals.
    pub(crate) fn add_step_fields(&self, m: &mut Value, upd: &Update, loss: f64, t: &Timing) {
        let gen = m.get("generated_tokens_step").and_then(|v| v.as_u64()).unwrap_or(0) as f64;
        let rate = |n: f64, s: f64| if s > 0.0 { n / s } else { 0.0 };
        let fields = json!({
            "step": self.step,
            "lr": upd.lr,
            "loss": loss,
            "grad_norm": upd.grad_norm,
            "skipped": upd.skipped,
            "tokens_per_s_sample": rate(gen, t.sample_s),
            "tokens_per_s_train": rate(t.train_tokens as f64, t.train_s),
            "step_s": t.sample_s + t.score_s + t.train_s + t.optim_s,
            "sample_s": t.sample_s,
            "score_s": t.score_s,
            "train_s": t.train_s,
            "optimizer_s": t.optim_s,
            "input_tokens_total": self.totals.input_tokens,
            "generated_tokens_total": self.totals.generated_tokens,
            "trained_tokens_total": self.totals.trained_tokens,
            "flops_sample_total": self.totals.flops_sample,
            "flops_score_total": self.totals.flops_score,
            "flops_train_total": self.totals.flops_train,
            "flops_total": self.totals.flops_total(),
        });
        for (k, v) in fields.as_object().unwrap() {
            m[k] = v.clone();
        }
    }

    /// `logging.eval_every`: held-out next-token loss and think-then-predict on a small slice
    /// of the held-out documents (at most 8 documents, 8 positions, K = 2 thoughts), as
    /// `eval_*` fields of this step's metrics line.
    fn periodic_eval(&self) -> Result<Option<Value>> {
        let every = self.cfg.logging.eval_every as u64;
        if every == 0 || self.step % every != 0 || self.data.heldout.is_empty() {
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
        Ok(Some(json!({
            "eval_nll": pick(&nll, "nll"),
            "eval_acc_no_think": pick(&think, "acc_no_think"),
            "eval_acc_think": pick(&think, "acc_think"),
            "eval_info_gain": pick(&think, "info_gain"),
        })))
    }

    /// Append to metrics.jsonl (with periodic eval fields) and print the progress line.
    /// Rank 0 alone logs (and evaluates); `m` must already be reduced over ranks.
    pub(crate) fn log_step(&mut self, m: &Value) -> Result<()> {
        if !self.dist.is_root() {
            return Ok(());
        }
        let mut m = m.clone();
        if let Some(e) = self.periodic_eval()? {
            for (k, v) in e.as_object().unwrap() {
                m[k] = v.clone();
            }
        }
        let m = &m;
        self.append_jsonl("metrics.jsonl", m)?;
        #[cfg(feature = "tensorboard")]
        if let Some(tb) = &mut self.tensorboard {
            tb.log_metrics(m)?;
        }
        if self.cfg.logging.progress {
            let total = self.cfg.train.steps as u64;
            let elapsed = self.started.elapsed().as_secs_f64();
            let eta = elapsed / (self.step - self.start_step).max(1) as f64 * (total - self.step) as f64;
            eprintln!("{}", super::progress::progress_line(self.cfg.objective.name, self.step, total, m, eta));
        }
        Ok(())
    }

    pub(crate) fn append_jsonl(&self, name: &str, v: &Value) -> Result<()> {
        let p = self.run.join(name);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))?;
        writeln!(f, "{v}").with_context(|| format!("cannot write {}", p.display()))
    }

    /// Rank 0 alone writes, its own contexts (`context` is the index in the global batch).
    /// Each row is one thought, with the token ids that replay it: the model of checkpoint
    /// `step-{model_step}` on `prefix_ids`, `<think>`, `thought_ids`, `</think>`,
    /// `separator_ids` gives log p(`x_t_id`) = `s_pred` (`rlp score --ids`).
    fn write_samples(&mut self, batch: &RolloutBatch) -> Result<()> {
        if !self.dist.is_root() {
            return Ok(());
        }
        let g = self.rollout.g;
        for (b, (ctx, group)) in batch.contexts.iter().zip(&batch.thoughts).enumerate() {
            let tail = &ctx.prefix[ctx.prefix.len().saturating_sub(32)..];
            for (i, t) in group.iter().enumerate() {
                let mut rec = json!({
                    "step": self.step,
                    "model_step": batch.model_step,
                    "context": batch.global_index[b],
                    "doc": ctx.doc,
                    "pos": ctx.pos,
                    "prefix_tail": self.tok.decode(tail)?,
                    "thought": self.tok.decode(&t.ids)?,
                    "closed": t.closed,
                    "x_t": self.tok.decode(&[ctx.target])?,
                    "s_pred": t.s_pred,
                    "s_ema": batch.s_ema[b],
                    "reward": batch.rewards[b * g + i],
                    "advantage": batch.advantages[b * g + i],
                });
                for (k, v) in sample_replay_fields(ctx, t, &self.rollout).as_object().expect("an object") {
                    rec[k] = v.clone();
                }
                if !t.guess.is_empty() {
                    rec["guess"] = json!(self.tok.decode(&t.guess)?);
                    rec["guess_ids"] = json!(t.guess);
                }
                self.append_jsonl("samples.jsonl", &rec)?;
            }
        }
        #[cfg(feature = "tensorboard")]
        if let Some(tb) = &mut self.tensorboard {
            tb.log_text(self.step, "samples", &samples_markdown(&self.tok, batch, TENSORBOARD_THOUGHTS)?)?;
        }
        Ok(())
    }

    fn state_json(&self) -> Result<Value> {
        Ok(json!({
            "step": self.step,
            "adam_step": self.opt.step_count(),
            "sampler": serde_json::to_value(self.sampler.state())?,
            "packer": serde_json::to_value(self.packer.state())?,
            "nonfinite_streak": self.nonfinite_streak,
            "totals": serde_json::to_value(&self.totals)?,
            "vocab_size": self.policy.cfg.vocab_size,
            "fixed_pool": self.fixed_pool.iter().map(|c| json!({"doc": c.doc, "pos": c.pos, "prefix": c.prefix, "target": c.target})).collect::<Vec<_>>(),
            "fixed_cursor": self.fixed_cursor,
        }))
    }

    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let mut tensors = self.opt.state_tensors();
        tensors.extend(self.ema.state_tensors());
        let dir = checkpoint::save(&self.run, self.step, &self.policy, self.tok.inner(), tensors, &self.state_json()?, self.cfg.checkpoint.keep_last)?;
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
        let step = state["step"].as_u64().with_context(|| format!("{}: trainer_state.json has no step", dir.display()))?;
        self.opt.load_state(&tensors, state["adam_step"].as_u64().unwrap_or(step))?;
        self.ema.load_state(&tensors, &self.var_list())?;
        let sampler: SamplerState = serde_json::from_value(state["sampler"].clone()).with_context(|| format!("{}: bad sampler state", dir.display()))?;
        self.sampler.restore(sampler)?;
        let packer: PackerState = serde_json::from_value(state["packer"].clone()).with_context(|| format!("{}: bad packer state", dir.display()))?;
        self.packer.restore(packer)?;
        self.nonfinite_streak = state["nonfinite_streak"].as_u64().unwrap_or(0) as usize;
        self.totals = serde_json::from_value(state["totals"].clone()).with_context(|| format!("{}: bad totals", dir.display()))?;
        self.fixed_pool = state["fixed_pool"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| -> Option<Context> {
                        Some(Context {
                            doc: c["doc"].as_u64()? as usize,
                            pos: c["pos"].as_u64()? as usize,
                            prefix: c["prefix"].as_array()?.iter().map(|x| x.as_u64().map(|v| v as u32)).collect::<Option<_>>()?,
                            target: c["target"].as_u64()? as u32,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or(Some(Vec::new()))
            .with_context(|| format!("{}: bad fixed_pool in trainer_state.json", dir.display()))?;
        self.fixed_cursor = state["fixed_cursor"].as_u64().unwrap_or(0) as usize;
        self.step = step;
        // Lines logged after the checkpoint belong to steps that will run again.
        if self.dist.is_root() {
            for name in ["metrics.jsonl", "samples.jsonl"] {
                truncate_jsonl_after(&self.run.join(name), step)?;
            }
            eprintln!("resumed from {} at step {step}", dir.display());
        }
        Ok(())
    }

    /// robustness: `--resume` on a run that never completed a checkpoint starts it again from
    /// step 0, dropping the log lines of the lost steps.
    fn restart_without_checkpoint(&mut self) -> Result<()> {
        for name in ["metrics.jsonl", "samples.jsonl"] {
            truncate_jsonl_after(&self.run.join(name), 0)?;
        }
        eprintln!("--resume: {} has no complete checkpoint yet; starting again from step 0", self.run.display());
        Ok(())
    }
}

/// Phase timings of one optimizer step.
pub(crate) struct Timing {
    pub sample_s: f64,
    pub score_s: f64,
    pub train_s: f64,
    pub optim_s: f64,
    pub train_tokens: usize,
}

/// Sums the gradients of several backward passes (micro-batches).
#[derive(Default)]
pub(crate) struct GradAccumulator {
    acc: Option<GradStore>,
}

impl GradAccumulator {
    /// Adds the vars' gradients of one backward pass. Nothing else of the store is kept: its
    /// gradients of constant operands (advantages, masks) are built from tracked tensors and
    /// would hold the micro-batch's whole forward graph alive (see `take_grads`).
    pub fn add(&mut self, mut g: GradStore, vars: &[(String, Var)]) -> Result<()> {
        let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
        if self.acc.is_none() {
            let dev = params.first().context("no trainable weights")?.device();
            self.acc = Some(empty_grad_store(dev)?);
        }
        take_grads(self.acc.as_mut().expect("set above"), &mut g, &params)
    }

    pub fn finish(self) -> Result<GradStore> {
        self.acc.context("no micro-batch was run: nothing to train on")
    }
}

/// Thoughts per rollout batch shown in TensorBoard's text tab.
#[cfg(feature = "tensorboard")]
const TENSORBOARD_THOUGHTS: usize = 4;

/// The first `n` thoughts of a batch as markdown: prefix tail, thought, true next token, S_pred
/// and reward, one paragraph each.
#[cfg(feature = "tensorboard")]
fn samples_markdown(tok: &Tok, batch: &RolloutBatch, n: usize) -> Result<String> {
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

/// The ids of one logged thought and its behaviour log-probs (tempered at
/// `rollout.temperature`, as sampled): `prefix_ids` is the prefix the model saw (already cut to
/// `data.max_context`), `thought_logprobs` has one entry per thought token, `end_think_logprob`
/// is that of a sampled `</think>` (null when it was forced at the budget).
fn sample_replay_fields(ctx: &Context, t: &Thought, p: &RolloutParams) -> Value {
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

fn bad_rollout_batch_json(batch: &RolloutBatch) -> Value {
    json!({
        "contexts": batch.contexts.iter().map(|c| json!({"doc": c.doc, "pos": c.pos, "prefix": c.prefix, "target": c.target})).collect::<Vec<_>>(),
        "thoughts": batch.thoughts.iter().map(|g| g.iter().map(|t| json!({"ids": t.ids, "logp_old": t.logp_old, "s_pred": t.s_pred, "closed": t.closed, "guess": t.guess})).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "rewards": batch.rewards,
        "advantages": batch.advantages,
    })
}

/// Drop the lines of a JSONL log whose `step` is past `step`.
fn truncate_jsonl_after(path: &Path, step: u64) -> Result<()> {
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
