//! `rlp demo`: the paper's comparison in miniature, in one command.
//!
//! 1. The base: a 0.63M-parameter Llama pretrained from scratch by rlp (NTP) on the tally world of
//!    `synth.rs`, where half the tallies show their working in a thought. It is shipped in the
//!    binary (`assets/demo-base/`, sha256-checked when written out); `--pretrain-base` makes it
//!    again from scratch (`pretrain_base`, about 15 minutes on our 2-core machine).
//! 2. Per seed: thought-free training and held-out text drawn from the seed, the gate (does a
//!    thought help the base, and can it not already answer without one?), then from the same base
//!    RLP (uniform positions, as in the paper), RPT, and CPT given exactly the FLOPs the RLP run
//!    spent. RLP and RPT run side by side, one process each, when an `rlp` binary is at hand.
//! 3. Every model evaluated on the held-out tallies with and without a thought, greedy (accuracy
//!    with its standard error), and by held-out loss; RLP and CPT also at their intermediate
//!    checkpoints (the accuracy curve). `results.json`, `report.md` and PNG plots.
//!
//! Everything is seeded: the same seed gives the same `results.json`.

use super::data::write_jsonl;
use super::synth::{answer_matches, answer_task, generate_corpus, AnswerItem, CorpusKind};
use crate::config::TrainConfig;
use crate::eval::generate::{think_then_answer, GenSpec};
use crate::eval::nll_eval;
use crate::model::{self, Config, Model};
use crate::report::plot::line_plot;
use crate::tokenizer::Tok;
use crate::train::trainer::Trainer;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Fewer steps and evaluation items (under 2 minutes): a smoke test of the pipeline.
    #[arg(long)]
    pub quick: bool,
    /// Output directory.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Seed of everything after the base: data, held-out items, rollouts, the three runs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run the comparison for this many seeds (seed, seed + 1, …) and report mean ± std.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Pretrain the base from scratch (into OUT/base; about 15 minutes on 2 cores) instead of
    /// using the shipped one. The result is bitwise the shipped base.
    #[arg(long)]
    pub pretrain_base: bool,
    /// Then post-train base, CPT, RLP and RPT identically (SFT, then RLVR) and evaluate them
    /// again: the paper's Table 2 in miniature (`demo::post_train`; see the README for its time).
    #[arg(long)]
    pub post_train: bool,
    /// The rlp binary to run RLP and RPT side by side as child processes; none: one after the
    /// other in this process. The CLI passes itself.
    #[arg(skip)]
    pub rlp_bin: Option<PathBuf>,
}

/// How the shipped base was made (`pretrain_base`): the pretraining world's seed, corpus,
/// tokenizer, shape and NTP schedule.
pub struct BasePlan {
    pub seed: u64,
    pub pretrain_docs: usize,
    pub vocab: usize,
    pub steps: usize,
    pub lr: f64,
}

pub const BASE: BasePlan = BasePlan { seed: 0, pretrain_docs: 60_000, vocab: 320, steps: 3000, lr: 5e-3 };

/// Most thought tokens, in training and in evaluation: a 6-digit tally's working is 12.
const THOUGHT_BUDGET: usize = 16;

/// The demo's sizes after the base.
#[derive(Debug, Clone, serde::Serialize)]
struct Plan {
    train_docs: usize,
    heldout_docs: usize,
    eval_items: usize,
    contexts: usize,
    g: usize,
    budget: usize,
    temperature: f64,
    rl_steps: usize,
    rl_lr: f64,
    /// RLP and CPT checkpoints every this many steps, evaluated on `curve_items` items.
    curve_every: usize,
    curve_items: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan { train_docs: 2000, heldout_docs: 150, eval_items: 300, contexts: 16, g: 8, budget: THOUGHT_BUDGET, temperature: 0.7, rl_steps: 20, rl_lr: 1e-4, curve_every: 10, curve_items: 100 }
        } else {
            Plan { train_docs: 8000, heldout_docs: 500, eval_items: 1000, contexts: 64, g: 8, budget: THOUGHT_BUDGET, temperature: 0.7, rl_steps: 150, rl_lr: 1e-4, curve_every: 30, curve_items: 300 }
        }
    }
}

fn stage(t0: &Instant, what: &str) {
    eprintln!("[demo {:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    // absolute: the configs written below resolve relative paths against their own directory
    let out = &a.out.canonicalize().with_context(|| format!("cannot resolve {}", a.out.display()))?;
    let base = out.join("base");
    if a.pretrain_base {
        stage(&t0, &format!("pretraining the base from scratch ({} NTP steps; about 15 minutes on 2 cores)", BASE.steps));
        pretrain_base(out, &base)?;
    } else {
        write_shipped_base(&base)?;
        stage(&t0, &format!("base: the shipped one ({}), sha256 checked", base.display()));
    }
    let plan = Plan::new(a.quick);
    let mut per_seed = Vec::new();
    for s in a.seed..a.seed + a.seeds as u64 {
        let dir = if a.seeds == 1 { out.clone() } else { out.join(format!("seed-{s}")) };
        per_seed.push(compare(a, &plan, s, &base, &dir, &t0)?);
    }
    if a.seeds > 1 {
        let summary = summarize(&per_seed);
        model::weights::write_json(&out.join("results.json"), &json!({"seeds": per_seed, "summary": summary}))?;
        let md = seeds_markdown(&per_seed, &summary);
        std::fs::write(out.join("report.md"), &md)?;
        println!("{md}");
    }
    stage(&t0, &format!("done: {}", out.join("report.md").display()));
    Ok(())
}

/// One seed's comparison in `dir`; returns its `results.json`.
fn compare(a: &DemoArgs, plan: &Plan, seed: u64, base: &Path, dir: &Path, t0: &Instant) -> Result<Value> {
    let started = Instant::now();
    std::fs::create_dir_all(dir)?;
    stage(t0, &format!("seed {seed}: writing the thought-free training and held-out text"));
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let train = data.join("train.jsonl");
    let heldout = data.join("heldout.jsonl");
    let text_lines = |kind, n| generate_corpus(seed, n, kind).into_iter().map(|text| json!({ "text": text }));
    write_jsonl(&train, text_lines(CorpusKind::Train, plan.train_docs))?;
    write_jsonl(&heldout, text_lines(CorpusKind::Heldout, plan.heldout_docs))?;
    let items: Vec<AnswerItem> = answer_task(seed, plan.heldout_docs).into_iter().take(plan.eval_items).collect();
    if items.len() < plan.eval_items {
        bail!("only {} held-out tallies for {} evaluation items", items.len(), plan.eval_items);
    }
    write_jsonl(&data.join("answers.jsonl"), items.iter())?;

    let base_eval = evaluate(base, &items, &heldout, seed)?;
    let gate = gate(&base_eval);
    stage(
        t0,
        &format!(
            "gate: the base answers {:.1}% with a thought, {:.1}% without (n = {}): {}",
            100.0 * base_eval.acc_think,
            100.0 * base_eval.acc_no_think,
            base_eval.n,
            if gate["passed"] == true { "passed" } else { "NOT passed: the comparison below means little" }
        ),
    );

    let write = |name: &str, text: String| write_config(dir, name, &text);
    let rlp_cfg = write("rlp", rl_config(plan, seed, base, &train, ""))?;
    let rpt_cfg = write("rpt", rl_config(plan, seed, base, &train, "name = \"rpt\"\nadvantage = \"grpo\"\nrpt_entropy_threshold = 1.0\n"))?;
    let (rlp_run, rpt_run, cpt_run) = (dir.join("rlp"), dir.join("rpt"), dir.join("cpt"));
    let base_shape = crate::flops::ModelShape::from_config(&Config::from_file(&base.join("config.json"))?);
    let cpt_after_rlp = |log: &dyn Fn(&str)| -> Result<()> {
        let rlp_flops = last_metric(&rlp_run, "flops_total")?;
        let tokens = crate::flops::flop_matched_cpt_tokens(&base_shape, 128, rlp_flops);
        let per_step = (tokens / plan.rl_steps as f64).ceil() as usize;
        log(&format!("cpt: {tokens:.0} NTP tokens = the RLP run's {rlp_flops:.3e} FLOPs"));
        let cfg = write("cpt", rl_config(plan, seed, base, &train, &format!("name = \"ntp\"\nntp_tokens_per_step = {per_step}\n")))?;
        train_run(a.rlp_bin.as_deref(), &cfg, &cpt_run)
    };
    match &a.rlp_bin {
        Some(bin) => {
            stage(t0, &format!("rlp and rpt side by side, then cpt: {} steps each from the base (logs in {}/NAME.log)", plan.rl_steps, dir.display()));
            std::thread::scope(|sc| -> Result<()> {
                let rpt = sc.spawn(|| train_run(Some(bin), &rpt_cfg, &rpt_run));
                train_run(Some(bin), &rlp_cfg, &rlp_run)?;
                cpt_after_rlp(&|m| stage(t0, m))?;
                rpt.join().map_err(|_| anyhow::anyhow!("the rpt run panicked"))?
            })?;
        }
        None => {
            for (name, cfg, run) in [("rlp", &rlp_cfg, &rlp_run), ("rpt", &rpt_cfg, &rpt_run)] {
                stage(t0, &format!("{name}: {} steps from the base", plan.rl_steps));
                train_run(None, cfg, run)?;
            }
            cpt_after_rlp(&|m| stage(t0, m))?;
        }
    }

    let mut models = serde_json::Map::new();
    models.insert("base".into(), base_eval.to_json(0.0));
    for (name, run) in [("cpt", &cpt_run), ("rlp", &rlp_run), ("rpt", &rpt_run)] {
        stage(t0, &format!("evaluating {name}"));
        let e = evaluate(&last_checkpoint(run)?, &items, &heldout, seed)?;
        models.insert(name.into(), e.to_json(last_metric(run, "flops_total")?));
    }
    stage(t0, "accuracy over steps (RLP and CPT checkpoints)");
    let curve_items = &items[..plan.curve_items.min(items.len())];
    let base_point = json!({"step": 0, "acc_best": evaluate_answers(base, curve_items, seed)?.acc_best()});
    let mut curves = serde_json::Map::new();
    for (name, run) in [("rlp", &rlp_run), ("cpt", &cpt_run)] {
        let mut points = vec![base_point.clone()];
        for (step, ck) in crate::run_dir::checkpoints(run)? {
            points.push(json!({"step": step, "acc_best": evaluate_answers(&ck, curve_items, seed)?.acc_best()}));
        }
        curves.insert(name.into(), Value::Array(points));
    }
    let mut results = json!({
        "seed": seed,
        "seconds": started.elapsed().as_secs_f64(),
        "gate": gate,
        "models": models,
        "curves": curves,
        "plan": plan,
    });
    if a.post_train {
        let finals = [("base", base.to_path_buf()), ("cpt", last_checkpoint(&cpt_run)?), ("rlp", last_checkpoint(&rlp_run)?), ("rpt", last_checkpoint(&rpt_run)?)];
        results["post_train"] = post_train_stage(a, plan.heldout_docs, seed, base, dir, &finals, &items, &heldout, t0)?;
    }
    model::weights::write_json(&dir.join("results.json"), &results)?;
    plots(dir, &rlp_run, &results)?;
    let md = report_markdown(&results, a.quick);
    std::fs::write(dir.join("report.md"), &md)?;
    println!("{md}");
    Ok(results)
}

/// `--post-train`: the same SFT then RLVR for each of `finals` (name, model), then the same
/// evaluation; returns `results.json`'s `post_train` section.
#[allow(clippy::too_many_arguments)]
fn post_train_stage(a: &DemoArgs, heldout_docs: usize, seed: u64, base: &Path, dir: &Path, finals: &[(&str, PathBuf)], items: &[AnswerItem], heldout: &Path, t0: &Instant) -> Result<Value> {
    use super::post_train as pt;
    let started = Instant::now();
    let p = pt::PostPlan::new(a.quick);
    let (sft, rlvr) = super::post::write_post_data(&dir.join("data"), seed, heldout_docs, p.sft_pairs, p.rlvr_items)?;
    let (sft_cfg, rlvr_cfg) = pt::write_configs(dir, &p, seed, base, &sft, &rlvr, THOUGHT_BUDGET)?;
    stage(t0, &format!("post-training base, cpt, rlp, rpt identically: SFT {} steps, then RLVR {} steps (logs in {}/post/NAME.log)", p.sft_steps, p.rlvr_steps, dir.display()));
    let models: Vec<(String, PathBuf)> = finals.iter().map(|(n, m)| (n.to_string(), m.clone())).collect();
    let done = pt::post_train_all(a.rlp_bin.as_deref(), &models, &sft_cfg, &rlvr_cfg, &dir.join("post"))?;
    let mut evals = serde_json::Map::new();
    for ((name, _), ck) in models.iter().zip(&done) {
        stage(t0, &format!("evaluating {name} after post-training"));
        evals.insert(name.clone(), evaluate(ck, items, heldout, seed)?.to_json(0.0));
    }
    Ok(pt::results(&p, started.elapsed().as_secs_f64(), evals))
}

/// The gate: a thought must help the base by more than two combined standard errors, and the
/// base must not already answer most tallies without one.
fn gate(base: &Evaluation) -> Value {
    let se = (base.se(base.acc_think).powi(2) + base.se(base.acc_no_think).powi(2)).sqrt();
    let passed = base.acc_think - base.acc_no_think > 2.0 * se && base.acc_no_think < 0.5;
    json!({"base_acc_think": base.acc_think, "base_acc_no_think": base.acc_no_think, "passed": passed})
}

/// Write the shipped base (embedded in the binary) into `dir` and check it against its sha256.
pub fn write_shipped_base(dir: &Path) -> Result<()> {
    const FILES: [(&str, &[u8]); 4] = [
        ("config.json", include_bytes!("../../assets/demo-base/config.json")),
        ("generation_config.json", include_bytes!("../../assets/demo-base/generation_config.json")),
        ("model.safetensors", include_bytes!("../../assets/demo-base/model.safetensors")),
        ("tokenizer.json", include_bytes!("../../assets/demo-base/tokenizer.json")),
    ];
    let sums = include_str!("../../assets/demo-base/SHA256SUMS");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in FILES {
        use sha2::Digest;
        let got = format!("{:x}", sha2::Sha256::digest(bytes));
        let want = sums.lines().find_map(|l| l.strip_suffix(name).map(str::trim)).with_context(|| format!("assets/demo-base/SHA256SUMS lists no {name}"))?;
        if got != want {
            bail!("the shipped demo base's {name} has sha256 {got}, SHA256SUMS says {want}: the checkout is damaged (a Git LFS pointer?); fetch it again, or run `rlp demo --pretrain-base`");
        }
        std::fs::write(dir.join(name), bytes).with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Pretrain the base from scratch into `base` (cached: a rerun with a complete `base` skips it):
/// the pretraining corpus of `BASE.seed`, its tokenizer, a random 3-layer Llama, NTP. The shipped
/// base is what this writes (`rlp demo --pretrain-base --out DIR`, then DIR/base).
pub fn pretrain_base(out: &Path, base: &Path) -> Result<()> {
    let marker = base.join("demo-base.json");
    let want = json!({"seed": BASE.seed, "docs": BASE.pretrain_docs, "vocab": BASE.vocab, "steps": BASE.steps, "lr": BASE.lr});
    if std::fs::read_to_string(&marker).ok().and_then(|s| serde_json::from_str::<Value>(&s).ok()) == Some(want.clone()) {
        return Ok(());
    }
    let data = out.join("pretrain-data");
    std::fs::create_dir_all(&data)?;
    let texts = generate_corpus(BASE.seed, BASE.pretrain_docs, CorpusKind::Pretrain);
    let corpus = data.join("pretrain.jsonl");
    write_jsonl(&corpus, texts.iter().map(|t| json!({ "text": t })))?;
    let tok_path = data.join("tokenizer.json");
    Tok::from_tokenizer(super::data::train_demo_tokenizer(&texts, BASE.vocab)?, false, "demo tokenizer")?.save(&tok_path)?;
    let tok = Tok::from_file(&tok_path, false)?;
    let shape = crate::model::init::SmallShape { layers: 3, hidden: 128, heads: 4, kv_heads: 2, ffn: 384, max_positions: 256, tie_embeddings: true };
    let cfg = Config::from_json(crate::model::init::small_config_json(crate::model::Arch::Llama, tok.vocab_size(), &shape, tok.eos_ids.first().copied())?)?;
    let init = out.join("init");
    let _ = std::fs::remove_dir_all(&init);
    model::weights::save_dir(&crate::model::init::random_model(&cfg, BASE.seed)?, Some(tok.inner()), &init, candle_core::DType::F32)?;
    let run = out.join("pretrain");
    let _ = std::fs::remove_dir_all(&run);
    let text = format!(
        "[model]\npath = {init:?}\n[data]\npath = {corpus:?}\ncontexts_per_step = 16\nmax_context = 128\n[objective]\nname = \"ntp\"\n\
         [optim]\nlr = {lr}\nwarmup_steps = 100\nschedule = \"cosine\"\nmin_lr = {min}\n[train]\nsteps = {steps}\nseed = {seed}\nthreads = 1\n\
         [logging]\nprogress = true\n[checkpoint]\nkeep_last = 1\nevery = 500\n",
        init = init.display().to_string(),
        corpus = corpus.display().to_string(),
        lr = BASE.lr,
        min = BASE.lr / 10.0,
        steps = BASE.steps,
        seed = BASE.seed,
    );
    let cfg = write_config(out, "pretrain", &text)?;
    Trainer::new(TrainConfig::load(&cfg, &[])?, &run, false)?.run()?;
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base)?;
    let ck = last_checkpoint(&run)?;
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(ck.join(f), base.join(f)).with_context(|| format!("cannot copy {f} into {}", base.display()))?;
    }
    model::weights::write_json(&marker, &want)
}

fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let dir = dir.join("configs");
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

/// Train `cfg` into `run` (replacing it): as a child `rlp train` process writing `run/train.log`,
/// or in this process.
fn train_run(bin: Option<&Path>, cfg: &Path, run: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(run);
    match bin {
        None => Trainer::new(TrainConfig::load(cfg, &[])?, run, false)?.run(),
        Some(bin) => {
            let log_path = run.with_extension("log");
            let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
            let status = std::process::Command::new(bin)
                .args(["train", "--config"])
                .arg(cfg)
                .arg("--out")
                .arg(run)
                .env("RAYON_NUM_THREADS", "1")
                .stdout(log.try_clone()?)
                .stderr(log)
                .status()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            if !status.success() {
                bail!("`rlp train --config {}` failed ({status}); its output is in {}", cfg.display(), log_path.display());
            }
            Ok(())
        }
    }
}

/// RLP / RPT / CPT from the base: same data, contexts, steps and optimizer. RLP draws its
/// positions uniformly, as in the paper; RPT filters them by the base's entropy, as RPT does.
fn rl_config(plan: &Plan, seed: u64, base: &Path, train: &Path, objective: &str) -> String {
    format!(
        "[model]\npath = {base:?}\n[data]\npath = {train:?}\ncontexts_per_step = {b}\nmax_context = 128\n\
         [rollout]\ng = {g}\nthought_budget = {budget}\ntemperature = {temp}\n\
         [objective]\n{objective}\
         [optim]\nlr = {lr}\nwarmup_steps = 5\n[train]\nsteps = {steps}\nseed = {seed}\nthreads = 1\n\
         [logging]\nsamples_every = 10\nprogress = true\n[checkpoint]\nevery = {every}\nkeep_last = {keep}\n",
        base = base.display().to_string(),
        train = train.display().to_string(),
        b = plan.contexts,
        g = plan.g,
        budget = plan.budget,
        temp = plan.temperature,
        lr = plan.rl_lr,
        steps = plan.rl_steps,
        every = plan.curve_every,
        keep = plan.rl_steps / plan.curve_every + 1,
    )
}

pub(super) fn last_checkpoint(run: &Path) -> Result<PathBuf> {
    crate::run_dir::checkpoints(run)?.pop().map(|(_, p)| p).with_context(|| format!("{} has no checkpoint", run.display()))
}

fn last_metric(run: &Path, key: &str) -> Result<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    let last: Value = serde_json::from_str(text.lines().last().context("empty metrics.jsonl")?)?;
    last[key].as_f64().with_context(|| format!("{} has no {key}", run.display()))
}

/// One model's held-out numbers.
pub struct Evaluation {
    pub acc_think: f64,
    pub acc_no_think: f64,
    pub n: usize,
    pub heldout_nll: f64,
}

impl Evaluation {
    /// Standard error of an accuracy over the n items.
    fn se(&self, acc: f64) -> f64 {
        (acc * (1.0 - acc) / self.n as f64).sqrt()
    }

    fn acc_best(&self) -> f64 {
        self.acc_think.max(self.acc_no_think)
    }

    fn to_json(&self, flops: f64) -> Value {
        let best = self.acc_best();
        json!({"acc_think": self.acc_think, "acc_no_think": self.acc_no_think, "acc_best": best, "acc_best_se": self.se(best),
               "n": self.n, "heldout_nll": self.heldout_nll, "flops_total": flops})
    }
}

fn load(path: &Path) -> Result<(Model, Tok)> {
    let (m, tok) = model::weights::load_for_thinking(path, false, "rlp demo")?;
    Ok((m.detached()?, tok))
}

/// Accuracy with and without a thought on `items`, and held-out loss (nats per token) on `heldout`.
pub(super) fn evaluate(path: &Path, items: &[AnswerItem], heldout: &Path, seed: u64) -> Result<Evaluation> {
    let (m, tok) = load(path)?;
    let mut e = answer_accuracy(&m, &tok, items, seed)?;
    let corpus = crate::data::corpus::Corpus::open(heldout, "text")?;
    let docs = crate::data::corpus::TokenizedCorpus::build(&corpus, |t| tok.encode(t), 2, 0)?.train;
    let doc_refs: Vec<&[u32]> = (0..docs.len()).map(|i| docs.tokens(i)).collect();
    e.heldout_nll = nll_eval(&m, &tok, &doc_refs, 128)?.get("nll").copied().context("nll eval gave no nll")?;
    Ok(e)
}

/// Exact-match accuracy (fraction) on the tallies: greedy answer straight after the prompt
/// (`acc_no_think`), and greedy thought then greedy answer (`acc_think`).
pub fn evaluate_answers(path: &Path, items: &[AnswerItem], seed: u64) -> Result<Evaluation> {
    let (m, tok) = load(path)?;
    answer_accuracy(&m, &tok, items, seed)
}

/// `evaluate_answers` on a loaded model.
fn answer_accuracy(m: &Model, tok: &Tok, items: &[AnswerItem], seed: u64) -> Result<Evaluation> {
    if items.is_empty() {
        bail!("the demo's answer task has no items");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed); // unused by greedy decoding
    let mut acc = [0.0; 2];
    for (slot, think) in [false, true].into_iter().enumerate() {
        let spec = GenSpec { think_budget: if think { THOUGHT_BUDGET } else { 0 }, answer_tokens: 2, sampling: None, answer_sampling: None };
        let mut right = 0usize;
        for chunk in items.chunks(64) {
            let prompts: Vec<Vec<u32>> = chunk
                .iter()
                .map(|it| {
                    let mut ids = tok.encode(&it.prompt)?;
                    if think {
                        ids.push(tok.think_id);
                    }
                    Ok(ids)
                })
                .collect::<Result<_>>()?;
            for (g, it) in think_then_answer(m, tok, &prompts, &spec, &mut rng)?.iter().zip(chunk) {
                right += usize::from(answer_matches(&tok.decode(&g.answer)?, &it.answer));
            }
        }
        acc[slot] = right as f64 / items.len() as f64;
    }
    Ok(Evaluation { acc_no_think: acc[0], acc_think: acc[1], n: items.len(), heldout_nll: f64::NAN })
}

/// `rlp-reward.png` (RLP's reward over steps) and `accuracy.png` (held-out acc_best over steps,
/// RLP and CPT).
fn plots(dir: &Path, rlp_run: &Path, results: &Value) -> Result<()> {
    let reward = crate::report::cli::run_series(rlp_run, &["reward_mean"])?;
    let smooth: Vec<(f64, f64)> = reward[0].1.windows(10).map(|w| (w[9].0, w.iter().map(|p| p.1).sum::<f64>() / 10.0)).collect();
    let answers = answer_position_rewards(rlp_run)?;
    line_plot(
        &dir.join("rlp-reward.png"),
        "RLP reward S_pred − S_ema (nats)",
        "nats",
        &[("all positions, per step".into(), reward[0].1.clone()), ("all positions, mean of 10 steps".into(), smooth), ("tally answers (logged steps)".into(), answers)],
    )?;
    let curve = |name: &str| -> Vec<(f64, f64)> {
        results["curves"][name].as_array().map(|a| a.iter().map(|p| (p["step"].as_f64().unwrap_or(0.0), 100.0 * p["acc_best"].as_f64().unwrap_or(0.0))).collect()).unwrap_or_default()
    };
    line_plot(&dir.join("accuracy.png"), "Held-out tally accuracy (better of think / no think)", "% correct", &[("RLP".into(), curve("rlp")), ("CPT (same FLOPs)".into(), curve("cpt"))])
}

/// Mean reward of the logged thoughts (samples.jsonl) at tally answers (prefix ending in " is"),
/// per logged step: the positions where a thought can help.
fn answer_position_rewards(run: &Path) -> Result<Vec<(f64, f64)>> {
    let path = run.join("samples.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut by_step: std::collections::BTreeMap<u64, (f64, usize)> = Default::default();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", path.display()))?;
        if v["prefix_tail"].as_str().is_some_and(|p| p.ends_with(" is")) {
            let e = by_step.entry(v["step"].as_u64().unwrap_or(0)).or_default();
            e.0 += v["reward"].as_f64().unwrap_or(0.0);
            e.1 += 1;
        }
    }
    Ok(by_step.into_iter().map(|(s, (sum, n))| (s as f64, sum / n as f64)).collect())
}

fn report_markdown(r: &Value, quick: bool) -> String {
    let g = &r["gate"];
    let pct = |v: &Value| format!("{:.1}", 100.0 * v.as_f64().unwrap_or(f64::NAN));
    let mut md = format!(
        "# rlp demo{}, seed {}\n\n{:.0} s. Base: the shipped 0.63M-parameter Llama. Gate: the base answers {}% of held-out tallies with a thought and {}% without: **{}**.\n\n",
        if quick { " --quick" } else { "" },
        r["seed"],
        r["seconds"].as_f64().unwrap_or(0.0),
        pct(&g["base_acc_think"]),
        pct(&g["base_acc_no_think"]),
        if g["passed"] == true { "passed" } else { "not passed" }
    );
    md.push_str("| model | acc think % | acc no think % | acc best % ± se | held-out nll | FLOPs |\n|---|---|---|---|---|---|\n");
    for name in ["base", "cpt", "rlp", "rpt"] {
        let m = &r["models"][name];
        md.push_str(&format!(
            "| {name} | {} | {} | {} ± {} | {:.4} | {:.3e} |\n",
            pct(&m["acc_think"]),
            pct(&m["acc_no_think"]),
            pct(&m["acc_best"]),
            pct(&m["acc_best_se"]),
            m["heldout_nll"].as_f64().unwrap_or(f64::NAN),
            m["flops_total"].as_f64().unwrap_or(0.0)
        ));
    }
    md.push_str(&format!("\nn = {} held-out tallies per model. Plots: `rlp-reward.png`, `accuracy.png`.\n", r["models"]["base"]["n"]));
    if r.get("post_train").is_some() {
        md.push_str(&super::post_train::table_markdown(r));
    }
    md
}

/// Mean and (sample) standard deviation of each model's acc_best over seeds, and of RLP − CPT.
fn summarize(per_seed: &[Value]) -> Value {
    let stats = |xs: Vec<f64>| {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = if xs.len() > 1 { (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        json!({"mean": mean, "std": std})
    };
    let best = |r: &Value, m: &str| r["models"][m]["acc_best"].as_f64().unwrap_or(f64::NAN);
    let mut s = serde_json::Map::new();
    for m in ["base", "cpt", "rlp", "rpt"] {
        s.insert(m.into(), stats(per_seed.iter().map(|r| best(r, m)).collect()));
    }
    s.insert("rlp_minus_cpt".into(), stats(per_seed.iter().map(|r| best(r, "rlp") - best(r, "cpt")).collect()));
    s.insert("gates_passed".into(), json!(per_seed.iter().filter(|r| r["gate"]["passed"] == true).count()));
    Value::Object(s)
}

fn seeds_markdown(per_seed: &[Value], summary: &Value) -> String {
    let pct = |v: &Value| format!("{:.1}", 100.0 * v.as_f64().unwrap_or(f64::NAN));
    let mut md = String::from("# rlp demo over seeds: acc best % (± se)\n\n| seed | gate | base | cpt | rlp | rpt | rlp − cpt |\n|---|---|---|---|---|---|---|\n");
    for r in per_seed {
        let cell = |m: &str| format!("{} ± {}", pct(&r["models"][m]["acc_best"]), pct(&r["models"][m]["acc_best_se"]));
        let diff = r["models"]["rlp"]["acc_best"].as_f64().unwrap_or(f64::NAN) - r["models"]["cpt"]["acc_best"].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!("| {} | {} | {} | {} | {} | {} | {:+.1} |\n", r["seed"], if r["gate"]["passed"] == true { "passed" } else { "no" }, cell("base"), cell("cpt"), cell("rlp"), cell("rpt"), 100.0 * diff));
    }
    let ms = |m: &str| format!("{} ± {}", pct(&summary[m]["mean"]), pct(&summary[m]["std"]));
    md.push_str(&format!("| mean ± std | {}/{} | {} | {} | {} | {} | {} |\n", summary["gates_passed"], per_seed.len(), ms("base"), ms("cpt"), ms("rlp"), ms("rpt"), ms("rlp_minus_cpt")));
    md
}
