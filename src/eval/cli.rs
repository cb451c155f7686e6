//! `rlp eval`: load a model, run one task, print a table, write the JSON result.

use super::bench::{bench_eval, BenchOptions};
use super::items::{load_items, task_file};
use super::think::{heldout_contexts, think_eval};
use super::{nll_eval, EvalResult};
use crate::data::corpus::{Corpus, TokenizedCorpus, TokenizedDocs};
use crate::model::{self, Model};
use crate::rollout::RolloutParams;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Model: a Hugging Face directory (e.g. a run's checkpoints/step-NNNNNN) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// nll | think | gsm8k | mmlu | quartz | bb-arithmetic | bb-physics | rg-gsm-symbolic |
    /// rg-basic-arithmetic | rg-chain-sum | jsonl:FILE
    #[arg(long)]
    pub task: String,
    /// Benchmarks: first N items. think: N held-out positions (default 64). nll: at most N tokens.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sampled thoughts per position (think) or generations per item for pass@1 (benchmarks).
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Most thought tokens; `</think>` is forced there. Benchmarks: 0 answers without thinking.
    #[arg(long, default_value_t = 32)]
    pub think_budget: usize,
    /// Most answer tokens after `</think>` (benchmarks).
    #[arg(long, default_value_t = 32)]
    pub answer_tokens: usize,
    /// Sampling temperature for thoughts and sampled answers.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Result file (default: evals/<model name>/<task>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Corpus for nll and think (.txt, .jsonl or a directory); its last --heldout-docs documents
    /// are evaluated.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub heldout_docs: usize,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// think: fewest prefix tokens before a position (as data.min_prefix).
    #[arg(long, default_value_t = 8)]
    pub min_prefix: usize,
    /// Longest prefix (think) or scoring window (nll) in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_context: usize,
    /// Add untrained `<think>`/`</think>` when the tokenizer lacks them (as `rlp train` does).
    #[arg(long)]
    pub add_think_tokens: bool,
    /// Rows decoded together.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// cpu, or cuda / cuda:N (needs a binary built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Load the model and tokenizer; grow the embedding when think tokens were added.
pub fn load_model(path: &Path, add_think_tokens: bool, need_think: bool) -> Result<(Model, Tok)> {
    let loaded = model::weights::load(path)?;
    let raw = loaded.tokenizer.with_context(|| {
        format!(
            "{} has no tokenizer.json; rlp eval needs the model's tokenizer next to its weights",
            path.display()
        )
    })?;
    let src = path.display().to_string();
    let tok = match Tok::from_tokenizer(raw.clone(), add_think_tokens || !need_think, &src) {
        Ok(t) => t,
        Err(_) => bail!(
            "model {src} has no <think>/</think> tokens, so it cannot think: evaluate a checkpoint written by `rlp train` \
             (it carries them), pass --add-think-tokens to add untrained ones (as `rlp train` does before its first step), \
             or use --think-budget 0 to answer benchmarks without thinking"
        ),
    };
    let mut m = loaded.model;
    if tok.vocab_size() > m.cfg.vocab_size {
        m.grow_vocab(tok.vocab_size())?;
    }
    Ok((m.detached()?, tok))
}

/// Held-out documents of the corpus: its last `heldout` documents with ≥ `min_len` tokens.
fn heldout_docs(a: &EvalArgs, tok: &Tok, min_len: usize) -> Result<TokenizedDocs> {
    let path = a.data.as_ref().with_context(|| {
        format!(
            "--task {} needs --data CORPUS (a .txt/.jsonl file or directory)",
            a.task
        )
    })?;
    let corpus = Corpus::open(path, &a.text_field)?;
    // keep at least one document on the training side, as TokenizedCorpus requires
    let docs = TokenizedCorpus::build(&corpus, |t| tok.encode(t), min_len, 0)?.train;
    if a.heldout_docs == 0 || a.heldout_docs > docs.len() {
        bail!(
            "--heldout-docs {} is out of range: corpus {} has {} documents of at least {min_len} tokens",
            a.heldout_docs,
            path.display(),
            docs.len()
        );
    }
    let keep = docs.len() - a.heldout_docs;
    Ok(TokenizedDocs::from_documents(
        (keep..docs.len()).map(|i| (docs.source(i).to_string(), docs.tokens(i).to_vec())),
    ))
}

fn default_out(model: &Path, task: &str) -> PathBuf {
    let name = super::model_name(model);
    let task = task
        .strip_prefix("jsonl:")
        .map(|f| {
            Path::new(f)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        })
        .unwrap_or(task.to_string());
    PathBuf::from("evals").join(name).join(format!("{task}.json"))
}

/// Run one evaluation as the CLI describes; returns the result (also written to disk).
pub fn run_eval(a: &EvalArgs) -> Result<EvalResult> {
    if a.batch == 0 || a.answer_tokens == 0 {
        bail!("--batch and --answer-tokens must be at least 1");
    }
    let dev = crate::device::open(&a.device)?;
    let load_model = |path: &Path, add: bool, need: bool| -> Result<(Model, Tok)> {
        let (m, tok) = load_model(path, add, need)?;
        Ok((m.to_device(&dev)?, tok))
    };
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: 0,
    };
    let round = |x: f32| (x as f64 * 1e6).round() / 1e6; // f32 flags print as 0.699999988 otherwise
    let mut settings = json!({"seed": a.seed, "samples": a.samples, "think_budget": a.think_budget,
        "temperature": round(a.temperature), "top_p": round(a.top_p)});
    let (n, metrics, examples) = match a.task.as_str() {
        "nll" => {
            let (m, tok) = load_model(&a.model, true, false)?;
            let docs = heldout_docs(a, &tok, 2)?;
            let mut budget = a.limit.unwrap_or(usize::MAX);
            let mut cut: Vec<&[u32]> = Vec::new();
            for i in 0..docs.len() {
                let d = docs.tokens(i);
                let take = d.len().min(budget.saturating_add(1));
                if take >= 2 {
                    cut.push(&d[..take]);
                    budget -= take - 1;
                }
            }
            settings =
                json!({"data": a.data, "heldout_docs": a.heldout_docs, "max_context": a.max_context, "limit": a.limit});
            let metrics = nll_eval(&m, &tok, &cut, a.max_context)?;
            (metrics["tokens"] as usize, metrics, vec![])
        }
        "think" => {
            if a.samples == 0 || a.think_budget == 0 {
                bail!("--task think needs --samples ≥ 1 and --think-budget ≥ 1");
            }
            let (m, tok) = load_model(&a.model, a.add_think_tokens, true)?;
            let docs = heldout_docs(a, &tok, a.min_prefix + 1)?;
            let contexts = heldout_contexts(&docs, a.limit.unwrap_or(64), a.seed, a.min_prefix, a.max_context)?;
            let p = RolloutParams::for_tokenizer(&tok, m.cfg.vocab_size, a.samples, a.think_budget, sampling);
            settings["data"] = json!(a.data);
            settings["heldout_docs"] = json!(a.heldout_docs);
            settings["min_prefix"] = json!(a.min_prefix);
            settings["max_context"] = json!(a.max_context);
            (contexts.len(), think_eval(&m, &contexts, &p, &mut rng)?, vec![])
        }
        task => {
            let file = task_file(task)?;
            let mut items = load_items(&file)?;
            items.truncate(a.limit.unwrap_or(usize::MAX));
            let (m, tok) = load_model(&a.model, a.add_think_tokens, a.think_budget > 0)?;
            let o = BenchOptions {
                samples: a.samples,
                think_budget: a.think_budget,
                answer_tokens: a.answer_tokens,
                sampling,
                batch: a.batch,
            };
            settings["answer_tokens"] = json!(a.answer_tokens);
            settings["file"] = json!(file);
            let (metrics, examples) = bench_eval(&m, &tok, &items, &o, &mut rng)?;
            (items.len(), metrics, examples)
        }
    };
    settings["seconds"] = json!(t0.elapsed().as_secs_f64());
    let result = EvalResult {
        task: a.task.clone(),
        model: a.model.display().to_string(),
        n,
        metrics,
        settings,
        examples,
    };
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.model, &a.task));
    result.write(&out)?;
    print!("{}", result.table());
    println!("wrote {} ({:.1} s)", out.display(), t0.elapsed().as_secs_f64());
    Ok(result)
}

/// `rlp eval` entry point.
pub fn eval(a: &EvalArgs) -> Result<()> {
    run_eval(a).map(|_| ())
}
