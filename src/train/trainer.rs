//! `rlp train`: the RLP loop, read top to bottom.
//!
//! ```text
//! contexts ─▶ rollouts (θ, shared prefix KV) ─▶ S_pred per thought, S_ema per context (φ)
//!   ─▶ rewards ─▶ advantages ─▶ clipped surrogate on thought tokens (micro-batched)
//!   ─▶ clip grad norm ─▶ AdamW ─▶ EMA ─▶ metrics, samples, checkpoint
//! ```

use super::checkpoint;
use super::data_parallel as dp; // [dist]
use super::ema::EmaTeacher;
use super::optim::{clip_grad_norm, grads_have_non_finite, AdamW, AdamWConfig};
use super::policy::{thought_logprobs, ThoughtRow};
use super::schedule::{LrSchedule, ScheduleKind};
use crate::config::{Advantage, ObjectiveName, Schedule, TrainConfig};
use crate::data::corpus::{Corpus, TokenizedCorpus};
use crate::data::sampler::{Context, PositionSampler, SamplerState};
use crate::model::{self, Model};
use crate::objective::rlp::{clipped_surrogate, frac_zero_std_groups, group_advantages, group_reward_std, info_gain_rewards, kl_penalty, SurrogateStats};
use crate::dist::metrics::{reduce_metrics, Share}; // [dist]
use crate::dist::{Dist, ReduceOp}; // [dist]
use crate::rollout::{context_rng, no_think_scores, sample_thoughts, Prompt, RolloutParams, Thought};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use anyhow::{bail, Context as _, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

/// Counters that accumulate over the whole run (saved in checkpoints).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub input_tokens: u64,
    pub generated_tokens: u64,
    pub trained_tokens: u64,
    pub flops_sample: f64,
    pub flops_score: f64,
    pub flops_train: f64,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub run: PathBuf,
    pub tok: Tok,
    pub policy: Model,
    pub vars: Vec<(String, Var)>,
    opt: AdamW,
    ema: EmaTeacher,
    schedule: LrSchedule,
    pub data: TokenizedCorpus,
    sampler: PositionSampler,
    rollout: RolloutParams,
    /// [dist] This process's rank and world; rank 0 alone writes files.
    pub dist: Rc<Dist>,
    pub step: u64,
    nonfinite_streak: usize,
    pub totals: Totals,
}

/// The summed gradient of one optimizer step and what to log about it.
pub struct PolicyGradient {
    pub grads: GradStore,
    pub loss: f64,
    pub stats: SurrogateStats,
    /// Mean entropy (nats) of the tempered policy at thought positions.
    pub entropy: f64,
    pub forward_tokens: usize,
    /// Mean k3 KL to the EMA teacher per token (0 when `kl_coef` = 0).
    pub kl: f64,
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
    pub sample_s: f64,
    pub score_s: f64,
}

impl Trainer {
    /// Load the model, tokenizer and corpus, prepare the run directory, and resume from its
    /// newest checkpoint when `resume` is set.
    pub fn new(cfg: TrainConfig, run: &Path, resume: bool) -> Result<Trainer> {
        Trainer::new_distributed(cfg, run, resume, Rc::new(Dist::Single))
    }

    /// [`Trainer::new`] as one rank of a data-parallel job (`mpirun`/`srun`).
    pub fn new_distributed(cfg: TrainConfig, run: &Path, resume: bool, dist: Rc<Dist>) -> Result<Trainer> {
        cfg.validate()?;
        dp::check_batch_fits_world(&cfg, dist.world())?; // [dist]
        if cfg.objective.name != ObjectiveName::Rlp {
            bail!("objective.name = {:?} is not implemented yet; use \"rlp\"", cfg.objective.name);
        }
        let existing = checkpoint::list(run)?;
        if !resume && (!existing.is_empty() || run.join("metrics.jsonl").exists()) {
            bail!("run directory {} already holds a run: pass --resume to continue it, or choose another --out", run.display());
        }
        let loaded = model::weights::load(&cfg.model.path)?;
        let raw_tok = loaded.tokenizer.with_context(|| format!("{} has no tokenizer.json; rlp train needs one", cfg.model.path.display()))?;
        let tok = Tok::from_tokenizer(raw_tok, cfg.model.add_think_tokens, &cfg.model.path.display().to_string())?;
        let mut policy = loaded.model;
        if tok.vocab_size() > policy.cfg.vocab_size {
            policy.grow_vocab(tok.vocab_size())?;
        }
        let corpus = Corpus::open(&cfg.data.path, &cfg.data.text_field)?;
        let data = TokenizedCorpus::build(&corpus, |t| tok.encode(t), cfg.data.min_prefix + 1, cfg.data.heldout_docs)?;
        let sampler = PositionSampler::new(data.train.len(), cfg.train.seed, cfg.data.positions_per_doc, cfg.data.min_prefix, cfg.data.max_context, cfg.data.fixed_contexts)?;
        let (policy, vars) = policy.into_vars()?;
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
        // EOS, `<think>`, and embedding rows the tokenizer has no token for (Qwen pads its
        // embedding past the vocabulary): none may appear inside a thought.
        let mut banned = tok.eos_ids.clone();
        banned.push(tok.think_id);
        banned.extend(tok.vocab_size() as u32..policy.cfg.vocab_size as u32);
        let rollout = RolloutParams {
            g: r.g,
            budget: r.thought_budget,
            sampling: SamplingParams { temperature: r.temperature as f32, top_p: r.top_p as f32, top_k: r.top_k },
            think_id: tok.think_id,
            end_think_id: tok.end_think_id,
            banned,
            separator: if r.separator.is_empty() { vec![] } else { tok.encode(&r.separator)? },
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
            rollout,
            dist,
            step: 0,
            nonfinite_streak: 0,
            totals: Totals::default(),
        };
        if t.dist.is_root() {
            std::fs::create_dir_all(run).with_context(|| format!("cannot create run directory {}", run.display()))?;
            checkpoint::remove_partial(run)?;
        }
        if resume {
            match existing.last() {
                Some((_, dir)) => t.restore(dir)?,
                None => bail!("--resume: {} has no complete checkpoint to resume from", run.display()),
            }
        }
        let resolved = t.cfg.to_toml_string()?;
        t.dist.check_same_on_all_ranks("resolved config", resolved.as_bytes())?; // [dist]
        if t.dist.is_root() {
            std::fs::write(run.join("config.toml"), resolved).with_context(|| format!("cannot write {}", run.join("config.toml").display()))?;
        }
        Ok(t)
    }

    fn var_list(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The EMA teacher as a model (detached), initialised from θ if needed.
    fn teacher(&mut self) -> Result<Model> {
        if !self.ema.is_initialized() {
            self.ema.init_from(&self.var_list())?;
        }
        let phi = self.ema.params().unwrap();
        let map: HashMap<String, Tensor> = self.vars.iter().map(|(n, _)| n.clone()).zip(phi.iter().cloned()).collect();
        Model::from_tensors(self.policy.cfg.clone(), map, "EMA teacher")
    }

    /// Sample and score one rollout batch of B contexts (this rank's share of them).
    pub fn rollout_batch(&mut self) -> Result<RolloutBatch> {
        let all = self.sampler.next_batch(&self.data, self.cfg.data.contexts_per_step)?;
        let global_index = dp::local_contexts(all.len(), &self.dist)?; // [dist]
        let contexts: Vec<Context> = global_index.iter().map(|&i| all[i].clone()).collect();
        let b = contexts.len();
        let prompts: Vec<Prompt> = contexts.iter().map(|c| Prompt { prefix: &c.prefix, target: c.target }).collect();
        // [dist] keyed by the context's index in the global batch, not in this rank's share
        let mut rngs: Vec<_> = global_index.iter().map(|&i| context_rng(self.cfg.train.seed, self.step, i as u64)).collect();
        let t0 = Instant::now();
        let sampler_model = self.policy.detached()?;
        let thoughts = sample_thoughts(&sampler_model, &prompts, &self.rollout, &mut rngs)?;
        let sample_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let teacher = self.teacher()?;
        let s_ema = no_think_scores(&teacher, &prompts)?;
        let score_s = t1.elapsed().as_secs_f64();
        let g = self.rollout.g;
        let mut rewards = Vec::with_capacity(b * g);
        for (group, &se) in thoughts.iter().zip(&s_ema) {
            let s_pred: Vec<f32> = group.iter().map(|t| t.s_pred).collect();
            rewards.extend(info_gain_rewards(&s_pred, se));
        }
        let advantages = group_advantages(&rewards, g, self.cfg.objective.advantage == Advantage::Grpo)?;
        let group_std = group_reward_std(&rewards, g)?;
        let mut counts = [contexts.iter().map(|c| c.prefix.len() as f64 + 1.0).sum::<f64>(), thoughts.iter().flatten().map(|t| t.ids.len() as f64 + 1.0).sum::<f64>()];
        self.dist.all_reduce_f64("rollout token counts", &mut counts, ReduceOp::Sum)?; // [dist]
        self.totals.input_tokens += counts[0] as u64;
        self.totals.generated_tokens += counts[1] as u64;
        Ok(RolloutBatch { contexts, global_index, thoughts, s_ema, rewards, advantages, group_std, sample_s, score_s })
    }

    /// Gradient of the clipped surrogate over the thoughts `idx` (flat b*G+i indices) of `batch`,
    /// normalised by `total_thoughts`, accumulated over micro-batches of `micro` thoughts.
    pub fn policy_gradient(&self, batch: &RolloutBatch, idx: &[usize], total_thoughts: usize, micro: usize) -> Result<PolicyGradient> {
        let g = self.rollout.g;
        let micro = micro.max(1);
        let obj = &self.cfg.objective;
        let teacher = if obj.kl_coef > 0.0 { Some(self.ema_model()?) } else { None };
        let mut grads: Option<GradStore> = None;
        let (mut loss_sum, mut entropy_sum, mut tokens, mut fwd_tokens, mut kl_sum) = (0f64, 0f64, 0usize, 0usize, 0f64);
        let mut stats = SurrogateStats::default();
        for chunk in idx.chunks(micro) {
            let rows: Vec<ThoughtRow> = chunk.iter().map(|&k| ThoughtRow { prefix: &batch.contexts[k / g].prefix, thought: &batch.thoughts[k / g][k % g] }).collect();
            let lp = thought_logprobs(&self.policy, &rows, &self.rollout, self.cfg.rollout.grad_on_forced_end)?;
            let adv: Vec<f32> = chunk.iter().map(|&k| batch.advantages[k]).collect();
            let adv = Tensor::new(adv.as_slice(), &Device::Cpu)?;
            let (mut loss, st) = clipped_surrogate(&lp.logp, &lp.logp_old, &lp.mask, &adv, obj.eps_low, obj.eps_high, total_thoughts)?;
            if let Some(teacher) = &teacher {
                let reference = thought_logprobs(teacher, &rows, &self.rollout, self.cfg.rollout.grad_on_forced_end)?;
                let (kl, mean_kl) = kl_penalty(&lp.logp, &reference.logp, &lp.mask, obj.kl_coef, total_thoughts)?;
                loss = (loss + kl)?;
                kl_sum += mean_kl as f64 * lp.n_tokens as f64;
            }
            loss_sum += loss.to_scalar::<f32>()? as f64;
            stats.merge(&st);
            entropy_sum += lp.entropy_sum;
            tokens += lp.n_tokens;
            fwd_tokens += lp.forward_tokens;
            let g_new = loss.backward()?;
            grads = Some(match grads {
                None => g_new,
                Some(mut acc) => {
                    for (_, v) in &self.vars {
                        if let Some(x) = g_new.get(v.as_tensor()) {
                            let sum = match acc.get(v.as_tensor()) {
                                Some(a) => (a + x)?,
                                None => x.clone(),
                            };
                            acc.insert(v.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
        }
        let entropy = if tokens > 0 { entropy_sum / tokens as f64 } else { 0.0 };
        let kl = if tokens > 0 { kl_sum / tokens as f64 } else { 0.0 };
        Ok(PolicyGradient { grads: grads.context("no thoughts to train on")?, loss: loss_sum, stats, entropy, forward_tokens: fwd_tokens, kl })
    }

    fn ema_model(&self) -> Result<Model> {
        let phi = self.ema.params().context("EMA teacher not initialised")?;
        let map: HashMap<String, Tensor> = self.vars.iter().map(|(n, _)| n.clone()).zip(phi.iter().cloned()).collect();
        Model::from_tensors(self.policy.cfg.clone(), map, "EMA teacher")
    }

    /// Run until `train.steps` optimizer steps are done.
    pub fn run(&mut self) -> Result<()> {
        if !self.dist.is_root() {
            return self.run_steps();
        }
        println!("{}", self.cfg.batch_arithmetic());
        if self.dist.world() > 1 {
            println!("data parallel: {} ranks, each samples and trains about {} of the {} contexts per step", self.dist.world(), self.cfg.data.contexts_per_step / self.dist.world(), self.cfg.data.contexts_per_step);
        }
        println!(
            "model: {} ({} params), corpus: {} training docs, {} held out, {} skipped as too short",
            self.cfg.model.path.display(),
            self.policy.cfg.num_params(),
            self.data.train.len(),
            self.data.heldout.len(),
            self.data.skipped_short
        );
        self.run_steps()
    }

    fn run_steps(&mut self) -> Result<()> {
        let total = self.cfg.train.steps as u64;
        let run_start = Instant::now();
        let start_step = self.step;
        let per_batch = (self.cfg.objective.ppo_epochs * self.cfg.objective.minibatches) as u64;
        while self.step < total {
            let batch = self.rollout_batch()?;
            let b = self.cfg.data.contexts_per_step; // global: minibatches split the global batch
            let g = self.rollout.g;
            let mb = self.cfg.objective.minibatches;
            let mut done_in_batch = 0;
            'epochs: for _epoch in 0..self.cfg.objective.ppo_epochs {
                for m in 0..mb {
                    if self.step >= total {
                        break 'epochs;
                    }
                    let ctx_range = (m * b / mb)..((m + 1) * b / mb);
                    let total_thoughts = ctx_range.len() * g; // global normaliser
                    let idx = dp::minibatch_thoughts(&batch.global_index, ctx_range, g); // [dist] this rank's share
                    let t0 = Instant::now();
                    let micro = self.cfg.train.micro_batch.unwrap_or(total_thoughts);
                    let mut pg = self.policy_gradient(&batch, &idx, total_thoughts, micro)?;
                    dp::all_reduce_policy_gradient(&self.dist, &mut pg, &self.var_list())?; // [dist]
                    let PolicyGradient { mut grads, loss, stats, entropy, forward_tokens: fwd_tokens, kl } = pg;
                    let train_s = t0.elapsed().as_secs_f64();
                    let t1 = Instant::now();
                    let vars = self.var_list();
                    let nonfinite = !loss.is_finite() || grads_have_non_finite(&grads, &vars)?;
                    let lr = self.schedule.lr_at(self.step);
                    let grad_norm;
                    if nonfinite {
                        self.nonfinite_streak += 1;
                        grad_norm = f32::NAN;
                        eprintln!("warning: step {}: non-finite loss or gradient, step skipped ({} in a row)", self.step + 1, self.nonfinite_streak);
                        if self.nonfinite_streak > self.cfg.train.max_consecutive_nonfinite {
                            let p = self.save_bad_batch(&batch)?;
                            bail!("{} consecutive steps had a non-finite loss or gradient; the last batch is saved in {}", self.nonfinite_streak, p.display());
                        }
                    } else {
                        self.nonfinite_streak = 0;
                        grad_norm = clip_grad_norm(&mut grads, &vars, self.cfg.optim.grad_clip)?;
                        self.opt.step(&grads, lr)?;
                        self.ema.update(&vars, self.cfg.objective.ema_tau)?;
                    }
                    let optim_s = t1.elapsed().as_secs_f64();
                    self.step += 1;
                    done_in_batch += 1;
                    self.totals.trained_tokens += fwd_tokens as u64;
                    let (sample_s, score_s) = if done_in_batch == 1 { (batch.sample_s, batch.score_s) } else { (0.0, 0.0) };
                    let mut metrics = self.metrics(&batch, lr, loss, &stats, entropy, kl, grad_norm, nonfinite, fwd_tokens, sample_s, score_s, train_s, optim_s)?;
                    let share = Share { thoughts: batch.contexts.len() * g, contexts: batch.contexts.len() };
                    reduce_metrics(&self.dist, &mut metrics, share)?; // [dist]
                    if !self.dist.is_root() {
                        continue;
                    }
                    self.append_jsonl("metrics.jsonl", &metrics)?;
                    if self.cfg.logging.progress {
                        let elapsed = run_start.elapsed().as_secs_f64();
                        let eta = elapsed / (self.step - start_step) as f64 * (total - self.step) as f64;
                        eprintln!(
                            "step {}/{} | reward {:+.4} | s_pred {:.3} | loss {:+.4} | sample {:.0} tok/s | train {:.0} tok/s | {:.2}s | eta {:.0}s",
                            self.step, total, metrics["reward_mean"].as_f64().unwrap_or(0.0), metrics["s_pred_mean"].as_f64().unwrap_or(0.0), loss,
                            metrics["tokens_per_s_sample"].as_f64().unwrap_or(0.0), metrics["tokens_per_s_train"].as_f64().unwrap_or(0.0),
                            metrics["step_s"].as_f64().unwrap_or(0.0), eta
                        );
                    }
                }
            }
            let every = self.cfg.logging.samples_every as u64;
            if self.dist.is_root() && (every > 0 && (self.step / per_batch.max(1)) % every.max(1) == 0 || self.step == per_batch.min(total)) {
                self.write_samples(&batch)?;
            }
            let ck = self.cfg.checkpoint.every as u64;
            if self.dist.is_root() && (self.step >= total || (ck > 0 && self.step % ck < per_batch && self.step >= ck)) {
                self.save_checkpoint()?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn metrics(&self, batch: &RolloutBatch, lr: f64, loss: f64, st: &SurrogateStats, entropy: f64, kl: f64, grad_norm: f32, skipped: bool, fwd_tokens: usize, sample_s: f64, score_s: f64, train_s: f64, optim_s: f64) -> Result<Value> {
        let all: Vec<&Thought> = batch.thoughts.iter().flatten().collect();
        let n = all.len().max(1) as f64;
        let mean = |xs: &[f32]| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64;
        let r_mean = mean(&batch.rewards);
        let r_std = (batch.rewards.iter().map(|&r| (r as f64 - r_mean).powi(2)).sum::<f64>() / batch.rewards.len().max(1) as f64).sqrt();
        let s_pred: Vec<f32> = all.iter().map(|t| t.s_pred).collect();
        let gen_tokens: usize = all.iter().map(|t| t.ids.len() + 1).sum();
        let drift = if self.ema.is_initialized() { self.ema.drift(&self.var_list())? as f64 } else { 0.0 };
        let step_s = sample_s + score_s + train_s + optim_s;
        Ok(json!({
            "step": self.step,
            "lr": lr,
            "reward_mean": r_mean,
            "reward_std": r_std,
            "s_pred_mean": mean(&s_pred),
            "s_ema_mean": mean(&batch.s_ema),
            "adv_abs_mean": batch.advantages.iter().map(|a| a.abs() as f64).sum::<f64>() / n,
            "frac_zero_std_groups": frac_zero_std_groups(&batch.group_std),
            "thought_len_mean": all.iter().map(|t| t.ids.len() as f64).sum::<f64>() / n,
            "thought_truncated_frac": all.iter().filter(|t| !t.closed).count() as f64 / n,
            "clip_frac_low": st.clip_frac_low(),
            "clip_frac_high": st.clip_frac_high(),
            "ratio_mean": st.ratio_mean(),
            "entropy": entropy,
            "kl": kl,
            "loss": loss,
            "grad_norm": if grad_norm.is_finite() { json!(grad_norm) } else { Value::Null },
            "skipped": skipped,
            "ema_drift": drift,
            "tokens_per_s_sample": if sample_s > 0.0 { gen_tokens as f64 / sample_s } else { 0.0 },
            "tokens_per_s_train": if train_s > 0.0 { fwd_tokens as f64 / train_s } else { 0.0 },
            "step_s": step_s,
            "sample_s": sample_s,
            "score_s": score_s,
            "train_s": train_s,
            "optimizer_s": optim_s,
            "input_tokens_total": self.totals.input_tokens,
            "generated_tokens_total": self.totals.generated_tokens,
        }))
    }

    fn append_jsonl(&self, name: &str, v: &Value) -> Result<()> {
        let p = self.run.join(name);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))?;
        writeln!(f, "{v}").with_context(|| format!("cannot write {}", p.display()))
    }

    fn write_samples(&self, batch: &RolloutBatch) -> Result<()> {
        let g = self.rollout.g;
        for (b, (ctx, group)) in batch.contexts.iter().zip(&batch.thoughts).enumerate() {
            let tail = &ctx.prefix[ctx.prefix.len().saturating_sub(32)..];
            for (i, t) in group.iter().enumerate() {
                let rec = json!({
                    "step": self.step,
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
                self.append_jsonl("samples.jsonl", &rec)?;
            }
        }
        Ok(())
    }

    fn save_bad_batch(&self, batch: &RolloutBatch) -> Result<PathBuf> {
        // [dist] Each rank saves its own share of the batch.
        let rank = if self.dist.world() > 1 { format!("-rank-{}", self.dist.rank()) } else { String::new() };
        let p = self.run.join(format!("nonfinite-batch-step-{:06}{rank}.json", self.step + 1));
        let v = json!({
            "contexts": batch.contexts.iter().map(|c| json!({"doc": c.doc, "pos": c.pos, "prefix": c.prefix, "target": c.target})).collect::<Vec<_>>(),
            "thoughts": batch.thoughts.iter().map(|g| g.iter().map(|t| json!({"ids": t.ids, "logp_old": t.logp_old, "s_pred": t.s_pred, "closed": t.closed})).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "rewards": batch.rewards,
        });
        model::weights::write_json(&p, &v)?;
        Ok(p)
    }

    fn state_json(&self) -> Result<Value> {
        Ok(json!({
            "step": self.step,
            "adam_step": self.opt.step_count(),
            "sampler": serde_json::to_value(self.sampler.state())?,
            "nonfinite_streak": self.nonfinite_streak,
            "totals": serde_json::to_value(&self.totals)?,
            "vocab_size": self.policy.cfg.vocab_size,
        }))
    }

    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let mut tensors = self.opt.state_tensors();
        tensors.extend(self.ema.state_tensors());
        let dir = checkpoint::save(&self.run, self.step, &self.policy, self.tok.inner(), tensors, &self.state_json()?, self.cfg.checkpoint.keep_last)?;
        eprintln!("checkpoint: {}", dir.display());
        Ok(dir)
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        let weights = model::weights::load_safetensors_dir(dir)?;
        for (name, var) in &self.vars {
            let t = weights.get(name).with_context(|| format!("checkpoint {} has no tensor `{name}`", dir.display()))?;
            if t.dims() != var.dims() {
                bail!("checkpoint {}: tensor `{name}` has shape {:?}, the model has {:?}", dir.display(), t.dims(), var.dims());
            }
            var.set(t)?;
        }
        let (tensors, state) = checkpoint::load_state(dir)?;
        let step = state["step"].as_u64().context("trainer_state.json has no step")?;
        self.opt.load_state(&tensors, state["adam_step"].as_u64().unwrap_or(step))?;
        self.ema.load_state(&tensors, &self.var_list())?;
        let sampler: SamplerState = serde_json::from_value(state["sampler"].clone()).context("trainer_state.json: bad sampler state")?;
        self.sampler.restore(sampler)?;
        self.nonfinite_streak = state["nonfinite_streak"].as_u64().unwrap_or(0) as usize;
        self.totals = serde_json::from_value(state["totals"].clone()).unwrap_or_default();
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
