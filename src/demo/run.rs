//! `rlp demo`: the paper's comparison in miniature, in one command.
//!
//! 1. Synthetic data and a digit-splitting BPE tokenizer (`data.rs`, `synth.rs`).
//! 2. A small Llama, randomly initialised, pretrained from scratch by rlp itself with the NTP
//!    objective on text where half of the problems show their working in `<think>…</think>`
//!    (cached in `OUT/base/`: a rerun with the same seed and size skips it).
//! 3. From that base, with the same optimizer and steps: RLP, RPT, and CPT (NTP on the same
//!    training split) given exactly the FLOPs the RLP run spent (`flops::flop_matched_cpt_tokens`).
//! 4. Every model (base, CPT, RLP, RPT) evaluated: held-out loss (`nll`), think-then-predict on
//!    held-out positions (`think`), and exact-match answers on held-out problems with and without
//!    a thought (`answers`); then `report.md` and PNG plots.
//!
//! Everything runs on one thread (candle's CPU thread pool costs more than it gives at these
//! sizes) and is seeded: the same seed gives the same table.

use super::data::{train_demo_tokenizer, write_demo_data, DemoSizes};
use super::synth::{answer_matches, answer_task, generate_corpus, AnswerItem, CorpusKind};
use crate::config::TrainConfig;
use crate::eval::generate::{think_then_answer, GenSpec};
use crate::eval::{heldout_contexts, nll_eval, think_eval, EvalResult, Metrics};
use crate::model::init::{random_model, small_config_json, SmallShape};
use crate::model::{self, Arch, Config, Model};
use crate::rollout::RolloutParams;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use crate::train::trainer::Trainer;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::SeedableRng;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct DemoArgs {
    /// A smaller model and fewer steps (under 3 minutes): a smoke test of the pipeline.
    #[arg(long)]
    pub quick: bool,
    /// Output directory.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The demo's sizes.
#[derive(Debug, Clone, serde::Serialize)]
struct Plan {
    sizes: (usize, usize, usize),
    vocab: usize,
    layers: usize,
    hidden: usize,
    ffn: usize,
    pretrain_steps: usize,
    pretrain_lr: f64,
    contexts: usize,
    g: usize,
    budget: usize,
    rl_steps: usize,
    rl_lr: f64,
    eval_contexts: usize,
    eval_k: usize,
    answer_items: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan { sizes: (2000, 400, 40), vocab: 256, layers: 2, hidden: 128, ffn: 384, pretrain_steps: 250, pretrain_lr: 3e-3, contexts: 4, g: 8, budget: 48, rl_steps: 8, rl_lr: 3e-4, eval_contexts: 16, eval_k: 2, answer_items: 24 }
        } else {
            Plan { sizes: (6000, 2000, 150), vocab: 384, layers: 3, hidden: 192, ffn: 512, pretrain_steps: 500, pretrain_lr: 2e-3, contexts: 8, g: 8, budget: 64, rl_steps: 24, rl_lr: 3e-4, eval_contexts: 48, eval_k: 4, answer_items: 100 }
        }
    }
}

fn stage(t0: &Instant, what: &str) {
    eprintln!("[demo {:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let t0 = Instant::now();
    let plan = Plan::new(a.quick);
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    // absolute: the configs written below resolve relative paths against their own directory
    let out = &a.out.canonicalize().with_context(|| format!("cannot resolve {}", a.out.display()))?;

    stage(&t0, "writing the synthetic corpora and training the tokenizer");
    let data_dir = out.join("data");
    let (p, t, h) = plan.sizes;
    let data = write_demo_data(&data_dir, a.seed, DemoSizes { pretrain_docs: p, train_docs: t, heldout_docs: h })?;
    let tok_path = data_dir.join("tokenizer.json");
    let tokenizer = train_demo_tokenizer(&generate_corpus(a.seed, p, CorpusKind::Pretrain), plan.vocab)?;
    Tok::from_tokenizer(tokenizer, false, "demo tokenizer")?.save(&tok_path)?;

    let base = out.join("base");
    let marker = base.join("demo-base.json");
    let want = json!({"seed": a.seed, "plan": plan});
    let cached = std::fs::read_to_string(&marker).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()) == Some(want.clone());
    if cached {
        stage(&t0, &format!("base model: cached in {}", base.display()));
    } else {
        stage(&t0, &format!("pretraining the base model from scratch ({} NTP steps)", plan.pretrain_steps));
        pretrain_base(out, &plan, a.seed, &tok_path, &data.pretrain, &base)?;
        model::weights::write_json(&marker, &want)?;
    }

    let rl = |name: &str, extra: &str| -> Result<PathBuf> {
        let run = out.join(name);
        let _ = std::fs::remove_dir_all(&run);
        let cfg = write_config(out, name, &rl_config(&plan, a.seed, &base, &data.train, extra))?;
        stage(&t0, &format!("{name}: {} steps from the base", plan.rl_steps));
        Trainer::new(TrainConfig::load(&cfg, &[])?, &run, false)?.run()?;
        Ok(run)
    };
    let rlp_run = rl("rlp", "")?;
    let rlp_flops = last_metric(&rlp_run, "flops_total")?;
    let rpt_run = rl("rpt", "name = \"rpt\"\nadvantage = \"grpo\"\n")?;
    let base_cfg = Config::from_file(&base.join("config.json"))?;
    let shape = crate::flops::ModelShape::from_config(&base_cfg);
    let cpt_tokens = crate::flops::flop_matched_cpt_tokens(&shape, 128, rlp_flops);
    let per_step = (cpt_tokens / plan.rl_steps as f64).ceil() as usize;
    stage(&t0, &format!("cpt: {:.0} NTP tokens = the RLP run's {:.3e} FLOPs", cpt_tokens, rlp_flops));
    let cpt_run = out.join("cpt");
    let _ = std::fs::remove_dir_all(&cpt_run);
    let cfg = write_config(out, "cpt", &rl_config(&plan, a.seed, &base, &data.train, &format!("name = \"ntp\"\nntp_tokens_per_step = {per_step}\n")))?;
    Trainer::new(TrainConfig::load(&cfg, &[])?, &cpt_run, false)?.run()?;

    let evals = out.join("evals");
    let _ = std::fs::remove_dir_all(&evals);
    let models = [("base", base.clone()), ("cpt", last_checkpoint(&cpt_run)?), ("rlp", last_checkpoint(&rlp_run)?), ("rpt", last_checkpoint(&rpt_run)?)];
    for (name, path) in &models {
        stage(&t0, &format!("evaluating {name}"));
        evaluate(name, path, &plan, a.seed, &data.heldout, &evals)?;
    }
    stage(&t0, "writing the report");
    let report = crate::report::cli::run_report(&crate::report::cli::ReportArgs { dirs: vec![evals.clone(), rlp_run, rpt_run, cpt_run], out: out.clone() })?;
    let mut md = std::fs::read_to_string(&report)?;
    md.insert_str(
        md.find('\n').map(|i| i + 1).unwrap_or(0),
        &format!(
            "\n`rlp demo{}` (seed {}): a {:.2}M-parameter Llama pretrained from scratch on synthetic arithmetic text, then {} steps of RLP, RPT and compute-matched CPT ({:.3e} FLOPs each) from that base. Total {:.0} s.\n",
            if a.quick { " --quick" } else { "" },
            a.seed,
            base_cfg.num_params() as f64 / 1e6,
            plan.rl_steps,
            rlp_flops,
            t0.elapsed().as_secs_f64()
        ),
    );
    std::fs::write(&report, md)?;
    println!("{}", std::fs::read_to_string(&report)?);
    stage(&t0, &format!("done: {}", report.display()));
    Ok(())
}

fn write_config(out: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let dir = out.join("configs");
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

fn pretrain_base(out: &Path, plan: &Plan, seed: u64, tok_path: &Path, corpus: &Path, base: &Path) -> Result<()> {
    let tok = Tok::from_file(tok_path, false)?;
    let shape = SmallShape { layers: plan.layers, hidden: plan.hidden, heads: 4, kv_heads: 2, ffn: plan.ffn, max_positions: 1024, tie_embeddings: true };
    let cfg = Config::from_json(small_config_json(Arch::Llama, tok.vocab_size(), &shape, tok.eos_ids.first().copied())?)?;
    let init = out.join("init");
    let _ = std::fs::remove_dir_all(&init);
    model::weights::save_dir(&random_model(&cfg, seed)?, Some(tok.inner()), &init, candle_core::DType::F32)?;
    let run = out.join("pretrain");
    let _ = std::fs::remove_dir_all(&run);
    let text = format!(
        "[model]\npath = {init:?}\n[data]\npath = {corpus:?}\ncontexts_per_step = 8\nmax_context = 128\n[objective]\nname = \"ntp\"\n\
         [optim]\nlr = {lr}\nwarmup_steps = {w}\nschedule = \"cosine\"\nmin_lr = {min}\n[train]\nsteps = {steps}\nseed = {seed}\nthreads = 1\n\
         [logging]\nprogress = true\n[checkpoint]\nkeep_last = 1\n",
        init = init.display().to_string(),
        corpus = corpus.display().to_string(),
        lr = plan.pretrain_lr,
        w = plan.pretrain_steps / 12,
        min = plan.pretrain_lr / 10.0,
        steps = plan.pretrain_steps,
    );
    let cfg = write_config(out, "pretrain", &text)?;
    Trainer::new(TrainConfig::load(&cfg, &[])?, &run, false)?.run()?;
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base)?;
    let ck = last_checkpoint(&run)?;
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(ck.join(f), base.join(f)).with_context(|| format!("cannot copy {f} into {}", base.display()))?;
    }
    Ok(())
}

/// RLP / RPT / CPT from the base: same data, contexts, steps and optimizer. Positions are
/// entropy-filtered (no-think entropy > 1 nat) for RLP and RPT alike.
fn rl_config(plan: &Plan, seed: u64, base: &Path, train: &Path, objective: &str) -> String {
    format!(
        "[model]\npath = {base:?}\n[data]\npath = {train:?}\ncontexts_per_step = {b}\nmax_context = 128\n\
         [rollout]\ng = {g}\nthought_budget = {budget}\ntemperature = 1.0\n\
         [objective]\nrpt_entropy_threshold = 1.0\n{objective}\
         [optim]\nlr = {lr}\n[train]\nsteps = {steps}\nseed = {seed}\nthreads = 1\n[logging]\nsamples_every = 5\n[checkpoint]\nkeep_last = 1\n",
        base = base.display().to_string(),
        train = train.display().to_string(),
        b = plan.contexts,
        g = plan.g,
        budget = plan.budget,
        lr = plan.rl_lr,
        steps = plan.rl_steps,
    )
}

fn last_checkpoint(run: &Path) -> Result<PathBuf> {
    crate::train::checkpoint::list(run)?.pop().map(|(_, p)| p).with_context(|| format!("{} has no checkpoint", run.display()))
}

fn last_metric(run: &Path, key: &str) -> Result<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last().context("empty metrics.jsonl")?)?;
    last[key].as_f64().with_context(|| format!("{} has no {key}", run.display()))
}

/// nll, think and answers for one model; results in `evals/NAME/{nll,think,answers}.json`.
fn evaluate(name: &str, path: &Path, plan: &Plan, seed: u64, heldout: &Path, evals: &Path) -> Result<()> {
    let loaded = model::weights::load(path)?;
    let tok = Tok::from_tokenizer(loaded.tokenizer.context("model without tokenizer")?, false, &path.display().to_string())?;
    let m = loaded.model.detached()?;
    let corpus = crate::data::corpus::Corpus::open(heldout, "text")?;
    let docs = crate::data::corpus::TokenizedCorpus::build(&corpus, |t| tok.encode(t), 9, 0)?.train;
    let doc_refs: Vec<&[u32]> = (0..docs.len()).map(|i| docs.tokens(i)).collect();
    let dir = evals.join(name);
    let result = |task: &str, n: usize, metrics: Metrics| EvalResult { task: task.into(), model: name.into(), n, metrics, settings: json!({"seed": seed}), examples: vec![] };

    result("nll", docs.total_tokens(), nll_eval(&m, &tok, &doc_refs, 128)?).write(&dir.join("nll.json"))?;

    let contexts = heldout_contexts(&docs, plan.eval_contexts, seed, 8, 128)?;
    let sampling = SamplingParams { temperature: 0.7, top_p: 1.0, top_k: 0 };
    let p = RolloutParams::for_tokenizer(&tok, m.cfg.vocab_size, plan.eval_k, plan.budget, sampling);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    result("think", contexts.len(), think_eval(&m, &contexts, &p, &mut rng)?).write(&dir.join("think.json"))?;

    let items: Vec<AnswerItem> = answer_task(seed, plan.sizes.2).into_iter().take(plan.answer_items).collect();
    result("answers", items.len(), answer_accuracy(&m, &tok, &items, plan.budget, &mut rng)?).write(&dir.join("answers.json"))?;
    Ok(())
}

/// Exact-match accuracy (fraction) on held-out problems: greedy answer straight after the prompt
/// (`acc_no_think`), and greedy thought then answer (`acc_think`).
fn answer_accuracy(m: &Model, tok: &Tok, items: &[AnswerItem], budget: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Result<Metrics> {
    if items.is_empty() {
        bail!("the demo's answer task has no items");
    }
    let mut metrics = Metrics::new();
    for (key, think) in [("acc_no_think", false), ("acc_think", true)] {
        let prompts: Vec<Vec<u32>> = items
            .iter()
            .map(|it| {
                let mut ids = tok.encode(&it.prompt)?;
                if think {
                    ids.push(tok.think_id);
                }
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        let spec = GenSpec { think_budget: if think { budget } else { 0 }, answer_tokens: 8, sampling: None };
        let mut right = 0usize;
        for (chunk, its) in prompts.chunks(16).zip(items.chunks(16)) {
            for (g, it) in think_then_answer(m, tok, chunk, &spec, rng)?.iter().zip(its) {
                right += usize::from(answer_matches(&tok.decode(&g.answer)?, &it.answer));
            }
        }
        metrics.insert(key.into(), right as f64 / items.len() as f64);
    }
    Ok(metrics)
}
