//! `rlp plan`: the compute an RLP run will spend, and the continued-pretraining (CPT) token
//! budget that matches it — by the paper's formula and by true FLOP parity.
//!
//! Without `--config`, the run is the paper's setting (rlp-paper.md §5, §11): B = 512 contexts
//! per step, G = 16, 2048-token thought budget, 2048-token context, mean prefix 1660 tokens
//! (170M input tokens / (512 · 200) steps), on the shape given by `--shape` or explicit flags.

use crate::config::{ObjectiveName, TrainConfig};
use crate::flops::{self, ModelShape, RlpStepShape};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

/// The paper's RLP run, as a config (model and data are placeholders: plan reads neither).
const PAPER_SETTING: &str = r#"
[model]
path = "paper"
[data]
path = "paper"
contexts_per_step = 512
max_context = 2048
[rollout]
g = 16
thought_budget = 2048
[train]
steps = 200
"#;

/// Mean prefix of the paper's ablation runs: 170M input tokens over 200 steps of 512 contexts.
pub const PAPER_MEAN_PREFIX: u64 = 1660;

#[derive(Args)]
pub struct PlanArgs {
    /// The RLP run's config (default: the paper's setting).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key (repeatable), as in `rlp train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Optimizer steps of the RLP run (default: train.steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Model shape without a model file: `qwen3-1.7b`.
    #[arg(long)]
    pub shape: Option<String>,
    #[arg(long)]
    pub layers: Option<u64>,
    #[arg(long)]
    pub hidden: Option<u64>,
    #[arg(long)]
    pub heads: Option<u64>,
    #[arg(long)]
    pub kv_heads: Option<u64>,
    #[arg(long)]
    pub head_dim: Option<u64>,
    #[arg(long)]
    pub ffn: Option<u64>,
    #[arg(long)]
    pub vocab: Option<u64>,
    #[arg(long)]
    pub untied: bool,
    /// Mean prefix length in tokens (default: the paper's 1660 without --config, else the mean
    /// over the corpus of a uniform position's prefix, capped at data.max_context).
    #[arg(long)]
    pub prefix_len: Option<u64>,
    /// Sequence length of the CPT run for FLOP parity (default: data.max_context).
    #[arg(long)]
    pub cpt_seq_len: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write the compute-matched CPT config (objective.name = "ntp") to this file.
    #[arg(long)]
    pub emit_cpt: Option<PathBuf>,
}

fn shape_from_flags(a: &PlanArgs) -> Result<Option<ModelShape>> {
    let explicit = [a.layers, a.hidden, a.heads, a.ffn, a.vocab];
    match (&a.shape, explicit.iter().any(|x| x.is_some())) {
        (Some(s), false) if s == "qwen3-1.7b" => Ok(Some(ModelShape::qwen3_1_7b())),
        (Some(s), false) => bail!("unknown --shape `{s}`: known shapes are qwen3-1.7b; or give --layers --hidden --heads --ffn --vocab"),
        (Some(_), true) => bail!("give either --shape or explicit --layers/--hidden/... flags, not both"),
        (None, false) => Ok(None),
        (None, true) => {
            let need = |x: Option<u64>, n: &str| x.with_context(|| format!("explicit shapes need --{n}"));
            let (heads, hidden) = (need(a.heads, "heads")?, need(a.hidden, "hidden")?);
            Ok(Some(ModelShape {
                n_layers: need(a.layers, "layers")?,
                d_model: hidden,
                n_heads: heads,
                n_kv_heads: a.kv_heads.unwrap_or(heads),
                head_dim: a.head_dim.unwrap_or(hidden / heads.max(1)),
                ffn_dim: need(a.ffn, "ffn")?,
                vocab: need(a.vocab, "vocab")?,
                tied_embeddings: !a.untied,
                hybrid: None,
            }))
        }
    }
}

/// Mean prefix length of a uniform position in [min_prefix, len − 1], capped at max_context,
/// over the corpus tokenised with the model's tokenizer.
fn corpus_mean_prefix(cfg: &TrainConfig) -> Result<(ModelShape, u64)> {
    let loaded = crate::model::weights::load(&cfg.model.path)?;
    let tok = loaded.tokenizer.with_context(|| format!("{} has no tokenizer; pass --prefix-len", cfg.model.path.display()))?;
    let tok = crate::tokenizer::Tok::from_tokenizer(tok, true, &cfg.model.path.display().to_string())?;
    let corpus = crate::data::corpus::Corpus::open(&cfg.data.path, &cfg.data.text_field)?;
    let data = crate::data::corpus::TokenizedCorpus::build(&corpus, |t| tok.encode(t), cfg.data.min_prefix + 1, cfg.data.heldout_docs)?;
    let (lo, cap) = (cfg.data.min_prefix as f64, cfg.data.max_context as f64);
    let mut sum = 0f64;
    for i in 0..data.train.len() {
        let hi = (data.train.tokens(i).len() - 1) as f64;
        // mean of min(p, cap) for p uniform on the integers lo..=hi
        let n = hi - lo + 1.0;
        let below = (hi.min(cap) - lo + 1.0).max(0.0); // positions p ≤ cap
        let sum_below = below * (lo + (lo + below - 1.0)) / 2.0;
        sum += (sum_below + (n - below) * cap) / n;
    }
    let mut model_cfg = loaded.model.cfg.clone();
    model_cfg.vocab_size = model_cfg.vocab_size.max(tok.vocab_size());
    Ok((ModelShape::from_config(&model_cfg), (sum / data.train.len() as f64).round() as u64))
}

pub struct Plan {
    pub steps: u64,
    pub shape: ModelShape,
    pub step: RlpStepShape,
    pub flops: flops::RlpStepFlops,
    pub input_tokens: u64,
    pub cpt_tokens_paper_formula: f64,
    pub cpt_tokens_flop_parity: f64,
    pub cpt_seq_len: u64,
}

pub fn make_plan(a: &PlanArgs) -> Result<(Plan, TrainConfig)> {
    let cfg = match &a.config {
        Some(p) => TrainConfig::load(p, &a.overrides)?,
        None => {
            let dir = tempfile_path()?;
            std::fs::write(&dir, PAPER_SETTING)?;
            let c = TrainConfig::load(&dir, &a.overrides);
            let _ = std::fs::remove_file(&dir);
            c?
        }
    };
    if cfg.objective.name != ObjectiveName::Rlp {
        bail!("rlp plan plans an RLP run; this config has objective.name = {:?}", cfg.objective.name);
    }
    let steps = a.steps.unwrap_or(cfg.train.steps as u64);
    let (shape, prefix) = match (shape_from_flags(a)?, a.prefix_len, &a.config) {
        (Some(s), Some(p), _) => (s, p),
        (Some(s), None, None) => (s, PAPER_MEAN_PREFIX),
        (Some(s), None, Some(_)) => (s, corpus_mean_prefix(&cfg)?.1),
        (None, p, Some(_)) => {
            let (s, mean) = corpus_mean_prefix(&cfg)?;
            (s, p.unwrap_or(mean))
        }
        (None, _, None) => bail!("without --config, give the model shape: --shape qwen3-1.7b or --layers/--hidden/--heads/--ffn/--vocab"),
    };
    let (b, g, budget) = (cfg.data.contexts_per_step as u64, cfg.rollout.g as u64, cfg.rollout.thought_budget as u64);
    // thought incl. </think>; prefix incl. <think>
    let step = RlpStepShape { contexts: b, rollouts: g, prefix_len: prefix + 1, thought_len: budget + 1 };
    let per_step = flops::rlp_step_flops(&shape, &step);
    let input_tokens = steps * b * (prefix + 1);
    let cpt_seq_len = a.cpt_seq_len.unwrap_or(cfg.data.max_context as u64);
    let total = per_step.total() * steps as f64;
    let plan = Plan {
        steps,
        shape,
        step,
        flops: per_step,
        input_tokens,
        cpt_tokens_paper_formula: flops::paper_cpt_token_budget(g, prefix + budget, b, steps, input_tokens),
        cpt_tokens_flop_parity: flops::flop_matched_cpt_tokens(&shape, cpt_seq_len, total),
        cpt_seq_len,
    };
    Ok((plan, cfg))
}

fn tempfile_path() -> Result<PathBuf> {
    Ok(std::env::temp_dir().join(format!("rlp-plan-{}.toml", std::process::id())))
}

pub fn plan(a: &PlanArgs) -> Result<()> {
    let (p, cfg) = make_plan(a)?;
    let total = p.flops.total() * p.steps as f64;
    let s = p.steps as f64;
    let out = json!({
        "steps": p.steps,
        "contexts_per_step": p.step.contexts,
        "g": p.step.rollouts,
        "prefix_len_mean": p.step.prefix_len - 1,
        "thought_budget": p.step.thought_len - 1,
        "params_flop": p.shape.flop_params(),
        "flops_total": total,
        "flops_sample": p.flops.sample * s,
        "flops_score": (p.flops.score + p.flops.teacher) * s,
        "flops_train": p.flops.train * s,
        "input_tokens": p.input_tokens,
        "generated_tokens_max": p.steps * p.step.contexts * p.step.rollouts * p.step.thought_len,
        "cpt_seq_len": p.cpt_seq_len,
        "cpt_tokens_paper_formula": p.cpt_tokens_paper_formula,
        "cpt_tokens_flop_parity": p.cpt_tokens_flop_parity,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("RLP run: {} steps × {} contexts × G = {}, mean prefix {} tokens, thought budget {} tokens (an upper bound: every thought at its budget)", p.steps, p.step.contexts, p.step.rollouts, p.step.prefix_len - 1, p.step.thought_len - 1);
        println!("  model FLOP parameters N      {:>12.3e}", p.shape.flop_params() as f64);
        println!("  sampling FLOPs               {:>12.3e}", p.flops.sample * s);
        println!("  scoring FLOPs (S_pred+S_ema) {:>12.3e}", (p.flops.score + p.flops.teacher) * s);
        println!("  training FLOPs               {:>12.3e}", p.flops.train * s);
        println!("  total FLOPs                  {:>12.3e}", total);
        println!("  input tokens                 {:>12.3e}", p.input_tokens as f64);
        println!("CPT budget that matches it:");
        println!("  paper's formula n·l_seq·bs·iters + T_inp   {:>12.3e} tokens", p.cpt_tokens_paper_formula);
        println!("  true FLOP parity at {:>5}-token sequences  {:>12.3e} tokens", p.cpt_seq_len, p.cpt_tokens_flop_parity);
    }
    if let Some(path) = &a.emit_cpt {
        let mut cpt = cfg.clone();
        cpt.objective.name = ObjectiveName::Ntp;
        cpt.train.steps = p.steps as usize;
        cpt.objective.ntp_tokens_per_step = Some((p.cpt_tokens_flop_parity / s).ceil() as usize);
        cpt.data.max_context = p.cpt_seq_len as usize;
        cpt.train.micro_batch = None;
        let text = format!(
            "# Compute-matched CPT for an RLP run of {} steps: {:.3e} FLOPs = {:.3e} NTP tokens at {}-token sequences (rlp plan).\n{}",
            p.steps,
            total,
            p.cpt_tokens_flop_parity,
            p.cpt_seq_len,
            cpt.to_toml_string()?
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if !a.json {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
