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
    /// Model shape without a model file: `qwen3-1.7b` or `nemotron-nano-12b-v2` (hybrid
    /// Mamba-2/attention; its scan and conv FLOPs are counted).
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

/// The shapes `--shape` knows, by name.
const NAMED_SHAPES: [(&str, fn() -> ModelShape); 2] = [("qwen3-1.7b", ModelShape::qwen3_1_7b), ("nemotron-nano-12b-v2", ModelShape::nemotron_nano_12b_v2)];

fn shape_from_flags(a: &PlanArgs) -> Result<Option<ModelShape>> {
    let explicit = [a.layers, a.hidden, a.heads, a.ffn, a.vocab];
    match (&a.shape, explicit.iter().any(|x| x.is_some())) {
        (Some(s), false) => match NAMED_SHAPES.iter().find(|(name, _)| name == s) {
            Some((_, shape)) => Ok(Some(shape())),
            None => {
                let known: Vec<&str> = NAMED_SHAPES.iter().map(|(n, _)| *n).collect();
                bail!("unknown --shape `{s}`: known shapes are {}; or give --layers --hidden --heads --ffn --vocab", known.join(", "))
            }
        },
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
        (None, _, None) => bail!("without --config, give the model shape: --shape qwen3-1.7b (or nemotron-nano-12b-v2) or --layers/--hidden/--heads/--ffn/--vocab"),
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

/// A temporary path for the paper's setting, unique per call (plans may be made concurrently in
/// one process, as the unit tests do).
fn tempfile_path() -> Result<PathBuf> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(std::env::temp_dir().join(format!("rlp-plan-{}-{n}.toml", std::process::id())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        plan: PlanArgs,
    }

    fn plan_of(args: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("plan").chain(args.iter().copied()))?;
        Ok(make_plan(&cli.plan)?.0)
    }

    /// The paper's setting on Nemotron-Nano-12B-v2 (body 10,965,483,520, lm_head 671,088,640,
    /// 6 attention layers of 40·128, 28 Mamba-2 blocks; see `flops::tests`). The EMA teacher's
    /// forward over one 1661-token prefix (1660 + `<think>`), logits at 1:
    /// 2·body·1661 = 36,427,336,253,440; 2·lm_head = 1,342,177,280; attention 122,880 per key ×
    /// 1661·1662/2 = 1,380,291 keys = 169,610,158,080; scan per Mamba block: 13 chunks of 128
    /// (the last padded) × 1,040,187,392 = 13,522,436,096, between chunks 2·1,310,720·14² =
    /// 513,802,240, conv 2·4·12,288·1661 = 163,282,944 → 14,199,521,280, ×28 =
    /// 397,586,595,840. Per context 36,995,875,184,640; ×512 contexts.
    #[test]
    fn nemotron_nano_12b_v2_shape_counts_the_scan_by_hand() {
        let p = plan_of(&["--shape", "nemotron-nano-12b-v2"]).unwrap();
        assert_eq!(p.shape, ModelShape::nemotron_nano_12b_v2());
        assert_eq!(p.shape.flop_params(), 11_636_572_160);
        assert_eq!((p.step.contexts, p.step.rollouts, p.step.prefix_len, p.step.thought_len), (512, 16, 1661, 2049));
        let per_context = p.flops.teacher / 512.0;
        assert!((per_context / 36_995_875_184_640.0 - 1.0).abs() < 1e-12, "{per_context:e}");
        // without the Mamba-2 scans the same forward is 397,586,595,840 FLOPs cheaper
        let dense_part = 36_427_336_253_440.0 + 1_342_177_280.0 + 169_610_158_080.0;
        assert!((per_context - dense_part - 397_586_595_840.0).abs() < 1.0);
    }

    #[test]
    fn an_unknown_shape_names_the_known_ones() {
        let e = plan_of(&["--shape", "nemotron-nano-9b"]).err().unwrap().to_string();
        assert!(e.contains("qwen3-1.7b") && e.contains("nemotron-nano-12b-v2"), "{e}");
        assert_eq!(plan_of(&["--shape", "qwen3-1.7b"]).unwrap().shape, ModelShape::qwen3_1_7b());
    }
}
