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

/// `rlp eval` flags. Those left unset (`None`) come from the training run's config when
/// `--config`/`--run` is given, else from the documented defaults ([`EvalArgs::resolve`]).
#[derive(Args, Debug, Clone, Default)]
pub struct EvalArgs {
    /// Model: a Hugging Face directory (e.g. a run's checkpoints/step-NNNNNN) or a .gguf file.
    /// With --run, default: the run's newest checkpoint.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// nll | think | gsm8k | mmlu | quartz | bb-arithmetic | bb-physics | rg-gsm-symbolic |
    /// rg-basic-arithmetic | rg-chain-sum | jsonl:FILE
    #[arg(long)]
    pub task: String,
    /// Take the corpus, held-out split, thought budget, sampling, separator and seed from a
    /// training run's config (RUN/config.toml); flags given here still override.
    #[arg(long, conflicts_with = "run")]
    pub config: Option<PathBuf>,
    /// A training run directory: --config RUN/config.toml, and the newest checkpoint as --model.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Benchmarks: first N items. think: N held-out positions (default 64). nll: at most N tokens.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sampled thoughts per position (think) or generations per item for pass@1 (benchmarks).
    /// Default 4 (from a run: rollout.g).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Most thought tokens; `</think>` is forced there. Benchmarks: 0 answers without thinking.
    /// Default 32 (from a run: rollout.thought_budget).
    #[arg(long)]
    pub think_budget: Option<usize>,
    /// Most answer tokens after `</think>` (benchmarks).
    #[arg(long, default_value_t = 32)]
    pub answer_tokens: usize,
    /// Sampling temperature for thoughts and sampled answers. Default 0.7 (from a run:
    /// rollout.temperature).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Default 1.0 (from a run: rollout.top_p).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Result file (default: evals/<model name>/<task>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Default 0 (from a run: train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Corpus for nll and think (.txt, .jsonl or a directory); its last --heldout-docs documents
    /// are evaluated. From a run: data.path.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Default 1 (from a run: data.heldout_docs, the documents the run held out).
    #[arg(long)]
    pub heldout_docs: Option<usize>,
    /// Default "text" (from a run: data.text_field).
    #[arg(long)]
    pub text_field: Option<String>,
    /// think: fewest prefix tokens before a position (as data.min_prefix). Default 8.
    #[arg(long)]
    pub min_prefix: Option<usize>,
    /// Longest prefix (think) or scoring window (nll) in tokens. Default 256 (from a run:
    /// data.max_context).
    #[arg(long)]
    pub max_context: Option<usize>,
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

/// Every `rlp eval` setting, flags first, then the run's config, then the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSettings {
    pub model: PathBuf,
    pub samples: usize,
    pub think_budget: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
    pub data: Option<PathBuf>,
    pub heldout_docs: usize,
    pub text_field: String,
    pub min_prefix: usize,
    pub max_context: usize,
    /// Text between `</think>` and the scored token (rollout.separator; none without a run).
    pub separator: String,
    pub add_think_tokens: bool,
    /// Documents shorter than this are dropped before the held-out split is taken: as in
    /// training (data.min_prefix + 1) when the split comes from a run.
    pub min_doc_tokens: Option<usize>,
    /// The config the settings came from, if any.
    pub config: Option<PathBuf>,
}

impl EvalArgs {
    /// Resolve every setting: a flag given here, else the run's config (`--config`/`--run`),
    /// else the default.
    pub fn resolve(&self) -> Result<EvalSettings> {
        let config_path = match (&self.config, &self.run) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(r)) => Some(r.join("config.toml")),
            (None, None) => None,
        };
        let cfg = match &config_path {
            Some(p) if !p.is_file() => bail!("{} does not exist: --run takes a training run directory (one holding config.toml), --config its config.toml", p.display()),
            Some(p) => Some(crate::config::TrainConfig::load(p, &[]).with_context(|| format!("cannot read the run's config {}", p.display()))?),
            None => None,
        };
        let model = match (&self.model, &self.run) {
            (Some(m), _) => m.clone(),
            (None, Some(run)) => crate::run_dir::checkpoints(run)?
                .pop()
                .map(|(_, dir)| dir)
                .with_context(|| format!("run {} has no complete checkpoint yet: pass --model", run.display()))?,
            (None, None) => bail!("give the model to evaluate: --model PATH, or --run RUN for the run's newest checkpoint"),
        };
        let c = cfg.as_ref();
        Ok(EvalSettings {
            model,
            samples: self.samples.or(c.map(|c| c.rollout.g)).unwrap_or(4),
            think_budget: self.think_budget.or(c.map(|c| c.rollout.thought_budget)).unwrap_or(32),
            temperature: self.temperature.or(c.map(|c| c.rollout.temperature as f32)).unwrap_or(0.7),
            top_p: self.top_p.or(c.map(|c| c.rollout.top_p as f32)).unwrap_or(1.0),
            top_k: c.map_or(0, |c| c.rollout.top_k),
            seed: self.seed.or(c.map(|c| c.train.seed)).unwrap_or(0),
            data: self.data.clone().or(c.map(|c| c.data.path.clone())),
            heldout_docs: self.heldout_docs.or(c.map(|c| c.data.heldout_docs)).unwrap_or(1),
            text_field: self.text_field.clone().or(c.map(|c| c.data.text_field.clone())).unwrap_or_else(|| "text".into()),
            min_prefix: self.min_prefix.or(c.map(|c| c.data.min_prefix)).unwrap_or(8),
            max_context: self.max_context.or(c.map(|c| c.data.max_context)).unwrap_or(256),
            separator: c.map(|c| c.rollout.separator.clone()).unwrap_or_default(),
            add_think_tokens: self.add_think_tokens || c.is_some_and(|c| c.model.add_think_tokens),
            min_doc_tokens: c.map(|c| c.data.min_prefix + 1),
            config: config_path,
        })
    }
}

/// Load the model and tokenizer; grow the embedding when think tokens were added. Without
/// `need_think` the think tokens are added when missing (nothing then samples them).
pub fn load_model(path: &Path, add_think_tokens: bool, need_think: bool) -> Result<(Model, Tok)> {
    match model::weights::load_for_thinking(path, add_think_tokens || !need_think, "rlp eval") {
        Ok((m, tok)) => Ok((m.detached()?, tok)),
        Err(e) if e.to_string().contains("has no <think>") => bail!(
            "model {} has no <think>/</think> tokens, so it cannot think: evaluate a checkpoint written by `rlp train` \
             (it carries them), pass --add-think-tokens to add untrained ones (as `rlp train` does before its first step), \
             or use --think-budget 0 to answer benchmarks without thinking",
            path.display()
        ),
        Err(e) => Err(e),
    }
}

/// Held-out documents of the corpus: its last `heldout` documents with ≥ `min_len` tokens
/// (with a run's config, ≥ data.min_prefix + 1 tokens: the documents the run held out).
fn heldout_docs(a: &EvalSettings, task: &str, tok: &Tok, min_len: usize) -> Result<TokenizedDocs> {
    let min_len = a.min_doc_tokens.unwrap_or(min_len);
    let path = a.data.as_ref().with_context(|| {
        format!(
            "--task {task} needs --data CORPUS (a .txt/.jsonl file or directory), or --run RUN to take the run's"
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
pub fn run_eval(args: &EvalArgs) -> Result<EvalResult> {
    if args.batch == 0 || args.answer_tokens == 0 {
        bail!("--batch and --answer-tokens must be at least 1");
    }
    let a = args.resolve()?;
    let task = args.task.as_str();
    let dev = crate::device::open(&args.device)?;
    let load_model = |path: &Path, add: bool, need: bool| -> Result<(Model, Tok)> {
        let (m, tok) = load_model(path, add, need)?;
        Ok((m.to_device(&dev)?, tok))
    };
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
    };
    let round = |x: f32| (x as f64 * 1e6).round() / 1e6; // f32 flags print as 0.699999988 otherwise
    let mut settings = json!({"seed": a.seed, "samples": a.samples, "think_budget": a.think_budget,
        "temperature": round(a.temperature), "top_p": round(a.top_p)});
    let (n, metrics, examples) = match task {
        "nll" => {
            let (m, tok) = load_model(&a.model, true, false)?;
            let docs = heldout_docs(&a, task, &tok, 2)?;
            let mut budget = args.limit.unwrap_or(usize::MAX);
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
                json!({"data": a.data, "heldout_docs": a.heldout_docs, "max_context": a.max_context, "limit": args.limit});
            let metrics = nll_eval(&m, &tok, &cut, a.max_context)?;
            (metrics["tokens"] as usize, metrics, vec![])
        }
        "think" => {
            if a.samples == 0 || a.think_budget == 0 {
                bail!("--task think needs --samples ≥ 1 and --think-budget ≥ 1");
            }
            let (m, tok) = load_model(&a.model, a.add_think_tokens, true)?;
            let docs = heldout_docs(&a, task, &tok, a.min_prefix + 1)?;
            let contexts = heldout_contexts(&docs, args.limit.unwrap_or(64), a.seed, a.min_prefix, a.max_context)?;
            let p = RolloutParams {
                separator: if a.separator.is_empty() { vec![] } else { tok.encode(&a.separator)? },
                ..RolloutParams::for_tokenizer(&tok, m.cfg.vocab_size, a.samples, a.think_budget, sampling)
            };
            settings["data"] = json!(a.data);
            settings["heldout_docs"] = json!(a.heldout_docs);
            settings["min_prefix"] = json!(a.min_prefix);
            settings["max_context"] = json!(a.max_context);
            if !a.separator.is_empty() {
                settings["separator"] = json!(a.separator);
            }
            (contexts.len(), think_eval(&m, &contexts, &p, &mut rng)?, vec![])
        }
        task => {
            let file = task_file(task)?;
            let mut items = load_items(&file)?;
            items.truncate(args.limit.unwrap_or(usize::MAX));
            let (m, tok) = load_model(&a.model, a.add_think_tokens, a.think_budget > 0)?;
            let o = BenchOptions {
                samples: a.samples,
                think_budget: a.think_budget,
                answer_tokens: args.answer_tokens,
                sampling,
                batch: args.batch,
            };
            settings["answer_tokens"] = json!(args.answer_tokens);
            settings["file"] = json!(file);
            let (metrics, examples) = bench_eval(&m, &tok, &items, &o, &mut rng)?;
            (items.len(), metrics, examples)
        }
    };
    if let Some(c) = &a.config {
        settings["config"] = json!(c);
    }
    settings["seconds"] = json!(t0.elapsed().as_secs_f64());
    let result = EvalResult {
        task: args.task.clone(),
        model: a.model.display().to_string(),
        n,
        metrics,
        settings,
        examples,
    };
    let out = args.out.clone().unwrap_or_else(|| default_out(&a.model, task));
    result.write(&out)?;
    print!("{}", result.table());
    println!("wrote {} ({:.1} s)", out.display(), t0.elapsed().as_secs_f64());
    Ok(result)
}

/// `rlp eval` entry point.
pub fn eval(a: &EvalArgs) -> Result<()> {
    run_eval(a).map(|_| ())
}
