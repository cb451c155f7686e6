//! The training config: one TOML file (`rlp train --config FILE`), every key overridable on the
//! command line (`--set optim.lr=1e-6`).
//!
//! Loading is three steps: parse the file into a `toml::Value`, apply the `--set` overrides, then
//! deserialise into [`TrainConfig`]. Unknown sections and keys, wrong types and missing required
//! keys are errors that name the key and the file (and the line, when the file alone is at fault).
//! [`TrainConfig::validate`] then refuses impossible combinations, and
//! [`TrainConfig::batch_arithmetic`] says what one optimizer step costs.
//!
//! **Relative paths.** `model.path` and `data.path` written in the file resolve against the
//! directory that holds the config file, so a config works from any working directory. Paths given
//! with `--set` resolve against the working directory, like any other command-line path. Both are
//! stored absolute, so the resolved config written into a run directory ([`TrainConfig::to_toml_string`])
//! loads again from anywhere.
//!
//! Not here: checks that need the model or the corpus (context length against the model's
//! position limit, `heldout_docs` against the number of documents); their owners make them.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

mod load;

/// Everything a training run needs, one struct per TOML section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub rollout: RolloutSection,
    #[serde(default)]
    pub objective: ObjectiveSection,
    #[serde(default)]
    pub optim: OptimSection,
    pub train: TrainSection,
    #[serde(default)]
    pub logging: LoggingSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
}

/// `[model]`: which checkpoint to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Required. A Hugging Face model directory or a `.gguf` file. Relative paths: see module docs.
    pub path: PathBuf,
    /// Add `<think>`/`</think>` as special tokens when the vocabulary lacks them. Default true.
    #[serde(default = "default_true")]
    pub add_think_tokens: bool,
    /// Kept for old configs: must be "f32" (the weights rlp loads and saves). The compute dtype
    /// is `train.compute_dtype`.
    #[serde(default)]
    pub dtype: Dtype,
}

/// `[data]`: the corpus and how contexts are drawn from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Required. A `.txt` file, a `.jsonl` file, or a directory of them (see `data::corpus`).
    pub path: PathBuf,
    /// Required. B: contexts (one prefix and one target token each) per optimizer step.
    pub contexts_per_step: usize,
    /// Positions drawn from each document per visit. Default 1 (as in the paper).
    #[serde(default = "default_one")]
    pub positions_per_doc: usize,
    /// Fewest tokens before a sampled position. Default 8.
    #[serde(default = "default_min_prefix")]
    pub min_prefix: usize,
    /// Longest prefix in tokens; longer prefixes keep their last `max_context` tokens. Default 2048.
    #[serde(default = "default_max_context")]
    pub max_context: usize,
    /// Documents held out for evaluation: the last ones of the corpus. Default 0.
    #[serde(default)]
    pub heldout_docs: usize,
    /// When set, the sampler cycles over this many fixed contexts instead of walking the corpus
    /// (to check that training optimises its objective). Default unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_contexts: Option<usize>,
    /// Field of each JSON line that holds the document text. Default "text".
    #[serde(default = "default_text_field")]
    pub text_field: String,
}

/// `[rollout]`: how thoughts are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSection {
    /// G: thoughts sampled per context (the group). At least 2. Default 4.
    pub g: usize,
    /// Most thought tokens; at the budget `</think>` is forced. Default 32.
    pub thought_budget: usize,
    /// Sampling temperature, > 0. Default 0.7.
    pub temperature: f64,
    /// Nucleus sampling mass in (0, 1]; 1 = off. Default 1.0.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 = off. Default 0.
    pub top_k: usize,
    /// Text between `</think>` and the scored token. Default "" (nothing).
    pub separator: String,
    /// Whether a `</think>` forced at the budget gets a gradient. Default false.
    pub grad_on_forced_end: bool,
}

/// `[objective]`: what the loss is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveSection {
    /// "rlp" (default), "ntp" (next-token prediction, the CPT baseline), "rpt", or the
    /// post-training objectives "sft" (supervised fine-tuning on `{"prompt", "response"}` or
    /// `{"messages"}` JSONL, loss on response tokens; `data.contexts_per_step` packed windows of
    /// `data.max_context` tokens per step, the last `data.heldout_docs` examples held out) and
    /// "rlvr" (RL with verifiable rewards on `{"question", "answer"}` JSONL, the format
    /// `rlp eval --task jsonl:FILE` reads; `data.contexts_per_step` questions per step, `rollout.g`
    /// samples each, thinking first for `rollout.thought_budget` tokens, 0 = answer at once;
    /// `objective.kl_coef` is the KL to the model as loaded).
    pub name: ObjectiveName,
    /// Lower clip range: ratios below 1 − eps_low are clipped. Default 0.2.
    pub eps_low: f64,
    /// Upper clip range: ratios above 1 + eps_high are clipped. Default 0.2.
    pub eps_high: f64,
    /// Group advantage: "rloo" (default, G/(G−1)·(r − mean)) or "grpo" (divided by the std).
    pub advantage: Advantage,
    /// KL penalty against the reference; 0 = off (the paper's setting). Default 0.0.
    pub kl_coef: f64,
    /// EMA teacher decay τ in [0, 1). Default 0.999.
    pub ema_tau: f64,
    /// Passes over each rollout batch. Default 1.
    pub ppo_epochs: usize,
    /// Optimizer steps per pass: the B contexts are split into this many minibatches. Default 1.
    pub minibatches: usize,
    /// rpt: train only positions whose next-token entropy (nats) exceeds this. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpt_entropy_threshold: Option<f64>,
    /// rpt: train only this top fraction of positions by entropy, in (0, 1]. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpt_top_frac: Option<f64>,
    /// rpt: tokens the model writes after `</think>` as its guess of the continuation. Default 1.
    pub rpt_guess_tokens: usize,
    /// ntp: tokens per optimizer step (set it to match RLP's compute). Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntp_tokens_per_step: Option<usize>,
    /// ntp and sft: packed documents (examples) do not attend to each other. Default true.
    pub ntp_no_cross_doc_attention: bool,
    /// rlvr: most answer tokens after the thought; the answer also ends at EOS or at a newline
    /// after visible text, as in `rlp eval`. Default 16.
    pub rlvr_answer_tokens: usize,
    /// rlvr: reward added to a well-formed sample (it closed its own thought and its answer has
    /// something the grader can read), >= 0; 0 = off, as in the paper. Default 0.0.
    pub rlvr_format_weight: f64,
    /// rlvr: the prompt: "bench" (default, `rlp eval`'s `Question: …\nAnswer:`) or "raw" (the
    /// question text as it is, e.g. the demo's tallies), then `<think>` when thinking.
    pub rlvr_prompt: RlvrPrompt,
}

/// `[optim]`: AdamW and the learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Peak learning rate. Default 1e-6 (the paper's).
    pub lr: f64,
    /// AdamW (β1, β2). Default [0.9, 0.95].
    pub betas: [f64; 2],
    /// Decoupled weight decay. Default 0.0.
    pub weight_decay: f64,
    /// AdamW ε. Default 1e-8.
    pub eps: f64,
    /// Clip the global gradient norm to this. Default 1.0.
    pub grad_clip: f64,
    /// "constant" (default) or "cosine" (decays to `min_lr` at the last step), after warmup.
    pub schedule: Schedule,
    /// Linear warmup from 0 over this many steps. Default 0.
    pub warmup_steps: usize,
    /// Final learning rate of the cosine schedule. Default 0.0.
    pub min_lr: f64,
}

/// `[train]`: the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Required. Optimizer steps to run.
    pub steps: usize,
    /// Sequences per forward/backward pass; gradients accumulate over the rest. Default: all of
    /// a step's sequences at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
    /// Seed for data order, positions and sampling. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// CPU threads; 0 = all cores. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Gradient checkpointing per transformer block for the policy (rlp, rpt) and ntp backward:
    /// only each block's input is kept during the forward, and the block is recomputed in the
    /// backward (`Model::checkpointed_backward`). Much less memory for long thoughts, for one
    /// extra forward. Default false.
    #[serde(default)]
    pub grad_checkpoint: bool,
    /// With `grad_checkpoint`, the policy head (lm_head, log-softmax over the vocabulary) runs
    /// over chunks of this many trained tokens, so at most this many × V logits are alive at
    /// once. Default 1024.
    #[serde(default = "default_logprob_chunk")]
    pub logprob_chunk: usize,
    /// The policy forward runs each context's prefix once and lets its thoughts (those in the
    /// same micro-batch) attend to it, instead of repeating the prefix per thought. Same loss
    /// and gradient (the prefix's gradients add up over its thoughts), fewer FLOPs. Default true.
    #[serde(default = "default_true")]
    pub share_prefix: bool,
    /// Consecutive steps with a non-finite loss or gradient that are skipped before the run stops
    /// with an error; 0 stops at the first. Default 3.
    #[serde(default = "default_max_consecutive_nonfinite")]
    pub max_consecutive_nonfinite: usize,
    /// Seconds any one collective (gradient all-reduce, metric reduction, barrier) may wait for
    /// the other ranks under `mpirun`/`srun` before the whole job is aborted with a message: a
    /// rank that died or hangs must not leave the others waiting forever. Unused by a single
    /// process. Default 300.
    #[serde(default = "default_collective_timeout_s")]
    pub collective_timeout_s: f64,
    /// Where the model trains: "cpu" (default), "cuda" (GPU 0) or "cuda:N". Under
    /// `mpirun`/`srun` with NCCL ("cuda"), each rank takes the GPU of its node-local rank. Weights
    /// are loaded on the CPU and moved there; optimizer moments, the EMA teacher and gradients live
    /// there too; checkpoints are written from CPU copies. "cuda" needs a binary built with
    /// `--features cuda` (scripts/build-cuda.sh).
    #[serde(default = "default_device")]
    pub device: String,
    /// "f32" (default) or "bf16": the dtype of the forward passes. With "bf16" the master weights,
    /// AdamW moments, EMA teacher and gradients stay f32; every weight is cast to bf16 at use
    /// (differentiably, so gradients come back f32), activations are bf16, and attention softmax,
    /// RMSNorm statistics, log-softmax, log-probs and the loss are f32. Rollouts and scoring use a
    /// bf16 copy of the weights made once per rollout batch. Meant for GPUs: candle's CPU backend
    /// runs bf16 matmuls by widening to f32, so on CPU it is correct but slower than f32.
    #[serde(default)]
    pub compute_dtype: Dtype,
}

/// `[logging]`: what is printed and written besides metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// Write sampled thoughts every this many steps; 0 = never. Default 10.
    pub samples_every: usize,
    /// Evaluate on held-out documents every this many steps; 0 = off. Default 0.
    pub eval_every: usize,
    /// Print one progress line per step. Default true.
    pub progress: bool,
    /// Write TensorBoard event files in RUN/tb/: every metrics.jsonl scalar and a few sampled
    /// thoughts as text (`tensorboard --logdir RUN/tb`). Default true.
    pub tensorboard: bool,
}

/// `[checkpoint]`: when checkpoints are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps; 0 = only at the end. Default 0.
    pub every: usize,
    /// Checkpoints kept on disk (older ones are deleted), at least 1. Default 3.
    pub keep_last: usize,
}

/// Compute dtype of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
}

/// Which objective turns contexts into a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveName {
    #[default]
    Rlp,
    Ntp,
    Rpt,
    Sft,
    Rlvr,
}

impl ObjectiveName {
    /// sft and rlvr: post-training objectives, which read their own JSONL instead of a corpus.
    pub fn is_post_training(self) -> bool {
        matches!(self, ObjectiveName::Sft | ObjectiveName::Rlvr)
    }
}

/// How an RLVR question is put to the model (`objective::rlvr::PromptLayout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RlvrPrompt {
    #[default]
    Bench,
    Raw,
}

/// How rewards within a group become advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Advantage {
    #[default]
    Rloo,
    Grpo,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Constant,
    Cosine,
}

fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_min_prefix() -> usize {
    8
}
fn default_max_context() -> usize {
    2048
}
fn default_text_field() -> String {
    "text".to_string()
}
fn default_logprob_chunk() -> usize {
    1024
}

fn default_max_consecutive_nonfinite() -> usize {
    3
}
fn default_collective_timeout_s() -> f64 {
    300.0
}
fn default_device() -> String {
    "cpu".to_string()
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            g: 4,
            thought_budget: 32,
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
            separator: String::new(),
            grad_on_forced_end: false,
        }
    }
}

impl Default for ObjectiveSection {
    fn default() -> Self {
        ObjectiveSection {
            name: ObjectiveName::Rlp,
            eps_low: 0.2,
            eps_high: 0.2,
            advantage: Advantage::Rloo,
            kl_coef: 0.0,
            ema_tau: 0.999,
            ppo_epochs: 1,
            minibatches: 1,
            rpt_entropy_threshold: None,
            rpt_top_frac: None,
            rpt_guess_tokens: 1,
            ntp_tokens_per_step: None,
            ntp_no_cross_doc_attention: true,
            rlvr_answer_tokens: 16,
            rlvr_format_weight: 0.0,
            rlvr_prompt: RlvrPrompt::Bench,
        }
    }
}

impl Default for OptimSection {
    fn default() -> Self {
        OptimSection {
            lr: 1e-6,
            betas: [0.9, 0.95],
            weight_decay: 0.0,
            eps: 1e-8,
            grad_clip: 1.0,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            min_lr: 0.0,
        }
    }
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            samples_every: 10,
            eval_every: 0,
            progress: true,
            tensorboard: true,
        }
    }
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every: 0,
            keep_last: 3,
        }
    }
}

impl TrainConfig {
    /// The config as TOML, with every default filled in: what the run directory keeps.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).context("cannot write the config as TOML")
    }

    /// Refuses impossible combinations, listing every problem found, each naming its key.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        bail!("invalid config:\n  - {}", problems.join("\n  - "))
    }

    /// Every rule the config breaks. Kept one rule per line, like a table.
    #[rustfmt::skip]
    fn problems(&self) -> Vec<String> {
        let (d, r, o) = (&self.data, &self.rollout, &self.objective);
        let (p, t) = (&self.optim, &self.train);
        let unit = |x: f64| (0.0..1.0).contains(&x);
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        let mut out = Problems::default();
        let b = d.contexts_per_step;
        out.require(b >= 1, "data.contexts_per_step", b, "must be at least 1");
        out.require(d.positions_per_doc >= 1, "data.positions_per_doc", d.positions_per_doc, "must be at least 1");
        out.require(d.min_prefix >= 1, "data.min_prefix", d.min_prefix, "must be at least 1");
        let below_max = format!("must be less than data.max_context ({})", d.max_context);
        out.require(d.min_prefix < d.max_context, "data.min_prefix", d.min_prefix, &below_max);
        if let Some(n) = d.fixed_contexts {
            out.require(n >= 1, "data.fixed_contexts", n, "must be at least 1 when set");
        }
        out.require(!d.text_field.is_empty(), "data.text_field", "\"\"", "must name a JSON field");
        let group = "must be at least 2: advantages compare the thoughts of a group";
        out.require(r.g >= 2, "rollout.g", r.g, group);
        // rlvr may answer without a thought (budget 0); the rollout objectives always think
        let budget_ok = r.thought_budget >= 1 || o.name == ObjectiveName::Rlvr;
        out.require(budget_ok, "rollout.thought_budget", r.thought_budget, "must be at least 1 (0, no thought, only for objective.name = \"rlvr\")");
        out.require(positive(r.temperature), "rollout.temperature", r.temperature, "must be > 0");
        let top_p_ok = r.top_p > 0.0 && r.top_p <= 1.0;
        out.require(top_p_ok, "rollout.top_p", r.top_p, "must be in (0, 1]");
        out.require(unit(o.eps_low), "objective.eps_low", o.eps_low, "must be in [0, 1)");
        out.require(non_negative(o.eps_high), "objective.eps_high", o.eps_high, "must be >= 0");
        out.require(non_negative(o.kl_coef), "objective.kl_coef", o.kl_coef, "must be >= 0");
        out.require(unit(o.ema_tau), "objective.ema_tau", o.ema_tau, "must be in [0, 1)");
        out.require(o.ppo_epochs >= 1, "objective.ppo_epochs", o.ppo_epochs, "must be at least 1");
        let divides_b = o.minibatches >= 1 && b % o.minibatches.max(1) == 0;
        let rule = format!("must be at least 1 and divide data.contexts_per_step ({b})");
        out.require(divides_b, "objective.minibatches", o.minibatches, &rule);
        if let (Some(h), Some(f)) = (o.rpt_entropy_threshold, o.rpt_top_frac) {
            let rule = format!("and objective.rpt_top_frac = {f} are alternatives: set one");
            out.require(false, "objective.rpt_entropy_threshold", h, &rule);
        }
        if let Some(h) = o.rpt_entropy_threshold {
            out.require(non_negative(h), "objective.rpt_entropy_threshold", h, "must be >= 0");
        }
        if let Some(f) = o.rpt_top_frac {
            out.require(f > 0.0 && f <= 1.0, "objective.rpt_top_frac", f, "must be in (0, 1]");
        }
        out.require(o.rpt_guess_tokens >= 1, "objective.rpt_guess_tokens", o.rpt_guess_tokens, "must be at least 1");
        out.require(o.rlvr_answer_tokens >= 1, "objective.rlvr_answer_tokens", o.rlvr_answer_tokens, "must be at least 1");
        out.require(non_negative(o.rlvr_format_weight), "objective.rlvr_format_weight", o.rlvr_format_weight, "must be >= 0 (0 turns the format reward off)");
        if o.name == ObjectiveName::Sft {
            let rule = "must be 1 for objective.name = \"sft\": an SFT step is one update over its packed windows";
            out.require(o.ppo_epochs == 1, "objective.ppo_epochs", o.ppo_epochs, rule);
            out.require(o.minibatches == 1, "objective.minibatches", o.minibatches, rule);
        }
        if let Some(n) = o.ntp_tokens_per_step {
            out.require(n >= 1, "objective.ntp_tokens_per_step", n, "must be at least 1 when set");
        }
        out.require(positive(p.lr), "optim.lr", p.lr, "must be > 0");
        let betas = format!("{:?}", p.betas);
        out.require(p.betas.iter().all(|&x| unit(x)), "optim.betas", betas, "must each be in [0, 1)");
        out.require(non_negative(p.weight_decay), "optim.weight_decay", p.weight_decay, "must be >= 0");
        out.require(positive(p.eps), "optim.eps", p.eps, "must be > 0");
        out.require(positive(p.grad_clip), "optim.grad_clip", p.grad_clip, "must be > 0");
        let rule = format!("must be in [0, optim.lr = {}]", p.lr);
        out.require(p.min_lr >= 0.0 && p.min_lr <= p.lr, "optim.min_lr", p.min_lr, &rule);
        out.require(t.steps >= 1, "train.steps", t.steps, "must be at least 1");
        out.require(positive(t.collective_timeout_s), "train.collective_timeout_s", t.collective_timeout_s, "must be > 0 seconds");
        out.require(crate::device::DeviceSpec::parse(&t.device).is_ok(), "train.device", format!("{:?}", t.device), "must be \"cpu\", \"cuda\" or \"cuda:N\"");
        let dtype_rule = "must be \"f32\": set train.compute_dtype = \"bf16\" for bf16 compute (weights stay f32)";
        out.require(self.model.dtype == Dtype::F32, "model.dtype", "\"bf16\"", dtype_rule);
        let rule = format!("must not exceed train.steps ({})", t.steps);
        out.require(p.warmup_steps <= t.steps, "optim.warmup_steps", p.warmup_steps, &rule);
        if let Some(m) = t.micro_batch {
            let n = self.sequences_per_update();
            let rule = format!(
                "must divide the {n} sequences of each optimizer update \
                 (data.contexts_per_step × rollout.g / objective.minibatches; for ntp the packed windows per step)"
            );
            out.require(m >= 1 && m <= n && n % m == 0, "train.micro_batch", m, &rule);
        }
        let keep = self.checkpoint.keep_last;
        out.require(keep >= 1, "checkpoint.keep_last", keep, "must be at least 1");
        out.0
    }

    /// Sequences that go into one optimizer update: B·G / minibatches (context × thought) for
    /// rlp and rpt, the packed windows of a step for ntp.
    fn sequences_per_update(&self) -> usize {
        match self.objective.name {
            ObjectiveName::Ntp => self.ntp_windows_per_step(),
            ObjectiveName::Sft => self.data.contexts_per_step,
            _ => self.data.contexts_per_step * self.rollout.g / self.objective.minibatches.max(1),
        }
    }

    /// ntp: tokens trained per step, `objective.ntp_tokens_per_step` or B × max_context.
    pub fn ntp_tokens_per_step(&self) -> usize {
        self.objective.ntp_tokens_per_step.unwrap_or(self.data.contexts_per_step * self.data.max_context)
    }

    /// ntp: windows of `data.max_context` tokens per step (the last one may be partly used).
    pub fn ntp_windows_per_step(&self) -> usize {
        self.ntp_tokens_per_step().div_ceil(self.data.max_context.max(1))
    }

    /// What one step costs, for printing at start. Meaningful once [`validate`](Self::validate) passed.
    pub fn batch_arithmetic(&self) -> BatchArithmetic {
        let per_update = self.sequences_per_update();
        let micro = self.train.micro_batch.unwrap_or(per_update).max(1);
        let (b, g, budget) = (
            self.data.contexts_per_step,
            self.rollout.g,
            self.rollout.thought_budget,
        );
        let ntp = matches!(self.objective.name, ObjectiveName::Ntp | ObjectiveName::Sft); // packed windows
        BatchArithmetic {
            objective: self.objective.name,
            ntp_tokens_per_step: self.ntp_tokens_per_step(),
            window_tokens: self.data.max_context,
            contexts_per_step: b,
            g,
            sequences_per_step: if ntp { per_update } else { b * g },
            updates_per_step: if ntp { 1 } else { self.objective.minibatches * self.objective.ppo_epochs },
            sequences_per_micro_batch: micro,
            accumulation_steps: per_update / micro,
            thought_budget: budget,
            max_tokens_per_sequence: self.data.max_context
                + 2
                + budget
                + self.rollout.separator.len(),
            max_generated_tokens_per_step: b * g * budget,
        }
    }
}

/// Config problems found by `validate`, each message starting with its key and value.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// Records `key = value: rule` unless `ok`.
    fn require(&mut self, ok: bool, key: &str, value: impl fmt::Display, rule: &str) {
        if !ok {
            self.0.push(format!("{key} = {value}: {rule}"));
        }
    }
}

/// The batch arithmetic of one optimizer step, printed at start. Shown per objective: rlp and
/// rpt count contexts, thoughts and rollout tokens; ntp counts tokens and packed windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchArithmetic {
    pub objective: ObjectiveName,
    /// ntp: tokens trained per step (`objective.ntp_tokens_per_step` or B × max_context).
    pub ntp_tokens_per_step: usize,
    /// ntp: tokens per packed window (`data.max_context`).
    pub window_tokens: usize,
    /// B: contexts per step.
    pub contexts_per_step: usize,
    /// G: thoughts per context.
    pub g: usize,
    /// B·G: sequences (context + thought) per step; ntp: packed windows per step.
    pub sequences_per_step: usize,
    /// Optimizer updates per step: minibatches × PPO epochs (1 by default).
    pub updates_per_step: usize,
    /// Sequences per forward/backward pass.
    pub sequences_per_micro_batch: usize,
    /// Micro-batches whose gradients are summed into one update.
    pub accumulation_steps: usize,
    /// Most thought tokens per sequence.
    pub thought_budget: usize,
    /// Upper bound on one sequence's length: prefix + `<think>` + thought + `</think>` + separator
    /// (counted as one token per byte, the most any byte-level tokenizer makes of it).
    pub max_tokens_per_sequence: usize,
    /// Upper bound on tokens sampled per step: B·G·budget.
    pub max_generated_tokens_per_step: usize,
}

impl fmt::Display for BatchArithmetic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = format!("{:?}", self.objective).to_lowercase();
        writeln!(f, "batch arithmetic ({name}):")?;
        let rows: Vec<(&str, String)> = match self.objective {
            ObjectiveName::Ntp => vec![
                ("tokens per step", self.ntp_tokens_per_step.to_string()),
                ("tokens per packed window", self.window_tokens.to_string()),
                ("packed windows per step", self.sequences_per_step.to_string()),
                ("windows per micro-batch", self.sequences_per_micro_batch.to_string()),
                ("accumulation steps", self.accumulation_steps.to_string()),
            ],
            ObjectiveName::Sft => vec![
                ("packed windows per step", self.sequences_per_step.to_string()),
                ("tokens per packed window", self.window_tokens.to_string()),
                ("windows per micro-batch", self.sequences_per_micro_batch.to_string()),
                ("accumulation steps", self.accumulation_steps.to_string()),
            ],
            ObjectiveName::Rlvr => vec![
                ("questions per step (Q)", self.contexts_per_step.to_string()),
                ("samples per question (G)", self.g.to_string()),
                ("samples per step (Q·G)", self.sequences_per_step.to_string()),
                ("optimizer updates per step", self.updates_per_step.to_string()),
                ("samples per micro-batch", self.sequences_per_micro_batch.to_string()),
                ("accumulation steps", self.accumulation_steps.to_string()),
                ("thought budget", format!("{} tokens", self.thought_budget)),
            ],
            ObjectiveName::Rlp | ObjectiveName::Rpt => vec![
                ("contexts per step (B)", self.contexts_per_step.to_string()),
                ("thoughts per context (G)", self.g.to_string()),
                ("sequences per step (B·G)", self.sequences_per_step.to_string()),
                ("optimizer updates per step", self.updates_per_step.to_string()),
                ("sequences per micro-batch", self.sequences_per_micro_batch.to_string()),
                ("accumulation steps", self.accumulation_steps.to_string()),
                ("thought budget", format!("{} tokens", self.thought_budget)),
                ("max tokens per sequence", self.max_tokens_per_sequence.to_string()),
                ("max generated tokens per step", self.max_generated_tokens_per_step.to_string()),
            ],
        };
        let lines: Vec<String> = rows.iter().map(|(k, v)| format!("  {k:<31}{v}")).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::load::{fields_of, section_fields};
    use super::*;
    use std::collections::BTreeSet;
    use std::io::Write;

    const MINIMAL: &str = "[model]\npath = \"m\"\n[data]\npath = \"corpus.txt\"\ncontexts_per_step = 4\n[train]\nsteps = 10\n";

    fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    fn load(text: &str, overrides: &[&str]) -> Result<TrainConfig> {
        let (_dir, path) = write_config(text);
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(&path, &overrides)
    }

    fn load_err(text: &str, overrides: &[&str]) -> String {
        format!("{:#}", load(text, overrides).unwrap_err())
    }

    fn validate_err(overrides: &[&str]) -> String {
        let config = load(MINIMAL, overrides).unwrap();
        format!("{:#}", config.validate().unwrap_err())
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        c.validate().unwrap();
        assert!(c.model.add_think_tokens);
        assert_eq!(c.model.dtype, Dtype::F32);
        assert_eq!(
            (
                c.data.positions_per_doc,
                c.data.min_prefix,
                c.data.max_context
            ),
            (1, 8, 2048)
        );
        assert_eq!(
            (
                c.data.heldout_docs,
                c.data.fixed_contexts,
                c.data.text_field.as_str()
            ),
            (0, None, "text")
        );
        assert_eq!(c.rollout, RolloutSection::default());
        assert_eq!(
            (c.rollout.g, c.rollout.thought_budget, c.rollout.temperature),
            (4, 32, 0.7)
        );
        assert_eq!(c.objective.name, ObjectiveName::Rlp);
        assert_eq!(c.objective.advantage, Advantage::Rloo);
        assert_eq!(c.optim.lr, 1e-6);
        assert_eq!(c.optim.betas, [0.9, 0.95]);
        assert_eq!(c.optim.schedule, Schedule::Constant);
        assert_eq!(
            (
                c.train.micro_batch,
                c.train.seed,
                c.train.max_consecutive_nonfinite
            ),
            (None, 0, 3)
        );
        assert_eq!(c.train.collective_timeout_s, 300.0);
        assert_eq!((c.train.device.as_str(), c.train.compute_dtype), ("cpu", Dtype::F32));
        assert_eq!((c.logging.samples_every, c.checkpoint.keep_last), (10, 3));
        assert!(c.logging.tensorboard);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let (dir, path) = write_config(MINIMAL);
        let c = TrainConfig::load(&path, &[]).unwrap();
        let dir = std::path::absolute(dir.path()).unwrap();
        assert_eq!(c.model.path, dir.join("m"));
        assert_eq!(c.data.path, dir.join("corpus.txt"));
    }

    #[test]
    fn path_overrides_resolve_against_the_working_directory() {
        let c = load(
            MINIMAL,
            &["model.path=models/x.gguf", "data.path=/abs/corpus"],
        )
        .unwrap();
        assert_eq!(
            c.model.path,
            std::env::current_dir().unwrap().join("models/x.gguf")
        );
        assert_eq!(c.data.path, PathBuf::from("/abs/corpus"));
    }

    #[test]
    fn overrides_set_numbers_bools_strings_arrays_and_missing_sections() {
        let c = load(
            MINIMAL,
            &[
                "optim.lr=3e-5",
                "rollout.g=8",
                "model.add_think_tokens=false",
                "rollout.separator=\"\\n\"",
                "data.text_field=content",
                "optim.betas=[0.8, 0.99]",
                "objective.name=ntp",
                "train.micro_batch=4",
                "data.fixed_contexts=2",
            ],
        )
        .unwrap();
        assert_eq!(c.optim.lr, 3e-5);
        assert_eq!(c.rollout.g, 8);
        assert!(!c.model.add_think_tokens);
        assert_eq!(c.rollout.separator, "\n");
        assert_eq!(c.data.text_field, "content");
        assert_eq!(c.optim.betas, [0.8, 0.99]);
        assert_eq!(c.objective.name, ObjectiveName::Ntp);
        assert_eq!(c.train.micro_batch, Some(4));
        assert_eq!(c.data.fixed_contexts, Some(2));
    }

    #[test]
    fn override_of_a_string_key_with_a_number_suggests_quoting() {
        let err = load_err(MINIMAL, &["data.text_field=123"]);
        assert!(err.contains("--set 'data.text_field=\"123\"'"), "{err}");
    }

    #[test]
    fn later_overrides_win() {
        let c = load(MINIMAL, &["train.steps=5", "train.steps=7"]).unwrap();
        assert_eq!(c.train.steps, 7);
    }

    #[test]
    fn unknown_override_key_lists_the_valid_keys() {
        let err = load_err(MINIMAL, &["optim.lrr=1"]);
        assert!(err.contains("unknown key `lrr` in [optim]"), "{err}");
        assert!(err.contains("lr, betas, weight_decay"), "{err}");
        let err = load_err(MINIMAL, &["optimizer.lr=1"]);
        assert!(
            err.contains("unknown section `optimizer`") && err.contains("model, data, rollout"),
            "{err}"
        );
        let err = load_err(MINIMAL, &["lr=1"]);
        assert!(err.contains("expected section.key=value"), "{err}");
    }

    #[test]
    fn override_of_wrong_type_names_the_override() {
        let err = load_err(MINIMAL, &["rollout.g=many"]);
        assert!(
            err.contains("--set rollout.g=many") && err.contains("rollout.g"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_in_file_names_key_file_and_line() {
        let err = load_err(&format!("{MINIMAL}[optim]\nlearning_rate = 1e-6\n"), &[]);
        assert!(
            err.contains("run.toml") && err.contains("learning_rate") && err.contains("line 9"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_in_file_names_key_and_file() {
        let err = load_err(&format!("{MINIMAL}[rollout]\ntemperature = \"hot\"\n"), &[]);
        assert!(
            err.contains("run.toml") && err.contains("rollout.temperature"),
            "{err}"
        );
        let err = load_err(
            &format!("{MINIMAL}[optim]\nbetas = [0.9, 0.95, 0.99]\n"),
            &[],
        );
        assert!(err.contains("optim.betas"), "{err}");
        let err = load_err(&format!("{MINIMAL}[objective]\nname = \"ppo\"\n"), &[]);
        assert!(
            err.contains("objective.name") && err.contains("rlp"),
            "{err}"
        );
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = load_err(
            "[model]\npath = \"m\"\n[data]\npath = \"c\"\n[train]\nsteps = 1\n",
            &[],
        );
        assert!(
            err.contains("contexts_per_step") && err.contains("data"),
            "{err}"
        );
        let err = load_err(
            "[model]\npath = \"m\"\n[data]\npath = \"c\"\ncontexts_per_step = 1\n",
            &[],
        );
        assert!(err.contains("missing field `train`"), "{err}");
    }

    #[test]
    fn overrides_can_supply_a_missing_required_key() {
        let text = "[model]\npath = \"m\"\n[data]\npath = \"c\"\ncontexts_per_step = 2\n";
        assert_eq!(load(text, &["train.steps=3"]).unwrap().train.steps, 3);
    }

    #[test]
    fn invalid_toml_and_missing_file_name_the_file() {
        let err = load_err("[model\n", &[]);
        assert!(
            err.contains("run.toml is not valid TOML") && err.contains("line 1"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            TrainConfig::load(Path::new("/no/such/config.toml"), &[]).unwrap_err()
        );
        assert!(err.contains("/no/such/config.toml"), "{err}");
    }

    #[test]
    fn each_impossible_setting_is_refused_naming_its_key() {
        let cases: &[(&[&str], &str)] = &[
            (&["rollout.g=1"], "rollout.g"),
            (&["rollout.temperature=0"], "rollout.temperature"),
            (&["rollout.top_p=1.5"], "rollout.top_p"),
            (&["rollout.top_p=0"], "rollout.top_p"),
            (&["rollout.thought_budget=0"], "rollout.thought_budget"),
            (&["objective.eps_low=1.0"], "objective.eps_low"),
            (&["objective.eps_high=-0.1"], "objective.eps_high"),
            (&["objective.ema_tau=1.0"], "objective.ema_tau"),
            (&["objective.kl_coef=-1"], "objective.kl_coef"),
            (&["objective.ppo_epochs=0"], "objective.ppo_epochs"),
            (&["objective.minibatches=3"], "objective.minibatches"),
            (&["objective.rpt_top_frac=0"], "objective.rpt_top_frac"),
            (
                &[
                    "objective.rpt_top_frac=0.5",
                    "objective.rpt_entropy_threshold=1",
                ],
                "alternatives",
            ),
            (&["train.micro_batch=5"], "train.micro_batch"),
            (&["train.micro_batch=32"], "train.micro_batch"),
            (&["train.micro_batch=0"], "train.micro_batch"),
            (&["train.steps=0"], "train.steps"),
            (&["data.min_prefix=2048"], "data.min_prefix"),
            (&["data.min_prefix=0"], "data.min_prefix"),
            (&["data.contexts_per_step=0"], "data.contexts_per_step"),
            (&["data.positions_per_doc=0"], "data.positions_per_doc"),
            (&["data.fixed_contexts=0"], "data.fixed_contexts"),
            (&["optim.lr=0"], "optim.lr"),
            (&["optim.betas=[0.9, 1.0]"], "optim.betas"),
            (&["optim.eps=0"], "optim.eps"),
            (&["optim.grad_clip=0"], "optim.grad_clip"),
            (&["optim.min_lr=1"], "optim.min_lr"),
            (&["optim.warmup_steps=11"], "optim.warmup_steps"),
            (&["checkpoint.keep_last=0"], "checkpoint.keep_last"),
            (&["train.collective_timeout_s=0"], "train.collective_timeout_s"),
            (&["train.collective_timeout_s=-5"], "train.collective_timeout_s"),
            (&["train.device=\"gpu\""], "train.device"),
            (&["train.device=\"cuda:x\""], "train.device"),
            (&["model.dtype=\"bf16\""], "train.compute_dtype"),
        ];
        for (overrides, key) in cases {
            let err = validate_err(overrides);
            assert!(err.contains(key), "{overrides:?}: {err}");
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = validate_err(&["rollout.g=1", "optim.lr=0"]);
        assert!(
            err.contains("rollout.g") && err.contains("optim.lr"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_through_to_toml_string() {
        let c = load(
            MINIMAL,
            &[
                "train.micro_batch=8",
                "objective.rpt_top_frac=0.25",
                "rollout.separator=\"\\n\"",
            ],
        )
        .unwrap();
        let (_dir, path) = write_config(&c.to_toml_string().unwrap());
        assert_eq!(TrainConfig::load(&path, &[]).unwrap(), c);
    }

    #[test]
    fn batch_arithmetic_counts_sequences_and_accumulation() {
        let c = load(
            MINIMAL,
            &[
                "train.micro_batch=4",
                "rollout.thought_budget=16",
                "data.max_context=100",
            ],
        )
        .unwrap();
        c.validate().unwrap();
        let a = c.batch_arithmetic();
        assert_eq!((a.contexts_per_step, a.g, a.sequences_per_step), (4, 4, 16));
        assert_eq!(
            (
                a.sequences_per_micro_batch,
                a.accumulation_steps,
                a.updates_per_step
            ),
            (4, 4, 1)
        );
        assert_eq!(a.max_tokens_per_sequence, 100 + 2 + 16);
        assert_eq!(a.max_generated_tokens_per_step, 4 * 4 * 16);
        let shown = a.to_string();
        assert!(
            shown.contains("sequences per step (B·G)       16"),
            "{shown}"
        );
        let a = load(MINIMAL, &["objective.minibatches=2"])
            .unwrap()
            .batch_arithmetic();
        assert_eq!(
            (
                a.sequences_per_micro_batch,
                a.accumulation_steps,
                a.updates_per_step
            ),
            (8, 1, 2)
        );
    }

    #[test]
    fn batch_arithmetic_shows_only_what_the_objective_uses() {
        let rlp = load(MINIMAL, &["data.max_context=100"]).unwrap().batch_arithmetic().to_string();
        for line in ["batch arithmetic (rlp):", "thoughts per context (G)       4", "sequences per step (B·G)       16", "thought budget                 32 tokens", "max generated tokens per step  512"] {
            assert!(rlp.contains(line), "{line:?} missing from\n{rlp}");
        }
        assert!(!rlp.contains("window"), "{rlp}");
        let c = load(MINIMAL, &["objective.name=ntp", "data.max_context=100", "objective.ntp_tokens_per_step=1000", "train.micro_batch=5"]).unwrap();
        c.validate().unwrap();
        let ntp = c.batch_arithmetic().to_string();
        for line in ["batch arithmetic (ntp):", "tokens per step                1000", "tokens per packed window       100", "packed windows per step        10", "windows per micro-batch        5", "accumulation steps             2"] {
            assert!(ntp.contains(line), "{line:?} missing from\n{ntp}");
        }
        for word in ["thought", "(G)", "contexts", "generated", "updates"] {
            assert!(!ntp.contains(word), "ntp arithmetic mentions {word:?}:\n{ntp}");
        }
    }

    #[test]
    fn every_section_has_its_keys_listed() {
        let sections = fields_of::<TrainConfig>();
        assert_eq!(sections.len(), 8);
        let mut seen = BTreeSet::new();
        for section in sections {
            let fields =
                section_fields(section).unwrap_or_else(|| panic!("no key list for [{section}]"));
            assert!(!fields.is_empty(), "[{section}]");
            assert!(seen.insert(*section));
        }
    }

    #[test]
    fn shipped_configs_load_and_validate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in ["configs/tiny.toml", "configs/smollm2-cpu.toml", "configs/post-sft.toml", "configs/post-rlvr.toml"] {
            let c = TrainConfig::load(&root.join(name), &[])
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            c.validate().unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(
                c.data.path.exists(),
                "{name}: corpus {} missing",
                c.data.path.display()
            );
        }
    }

    #[test]
    fn post_training_keys_are_checked_naming_the_key() {
        let e = validate_err(&["objective.name=\"rlvr\"", "objective.rlvr_answer_tokens=0", "objective.rlvr_format_weight=-1.0"]);
        assert!(e.contains("objective.rlvr_answer_tokens = 0: must be at least 1"), "{e}");
        assert!(e.contains("objective.rlvr_format_weight = -1: must be >= 0"), "{e}");
        let e = validate_err(&["objective.name=\"sft\"", "objective.minibatches=2", "data.contexts_per_step=4"]);
        assert!(e.contains("objective.minibatches = 2: must be 1 for objective.name = \"sft\""), "{e}");
        // a thought budget of 0 (answer at once) is for rlvr only
        assert!(validate_err(&["rollout.thought_budget=0"]).contains("rollout.thought_budget = 0"));
        let c = load(MINIMAL, &["objective.name=\"rlvr\"", "rollout.thought_budget=0", "objective.rlvr_prompt=\"raw\""]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.objective.rlvr_prompt, RlvrPrompt::Raw);
        let e = load_err(MINIMAL, &["objective.rlvr_prompt=\"chat\""]);
        assert!(e.contains("rlvr_prompt"), "{e}");
    }
}
