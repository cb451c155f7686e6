//! `rlp bench ntp`: the wall time of NTP (next-token) training steps of a model directory on a
//! corpus, measured around the trainer's own step (`Trainer::ntp_step`: packing, forward,
//! backward, clipping, AdamW), to set beside `../shared/bench/torch_ntp_step.py` at the same
//! windows × length and threads. Prints one JSON line per step and a summary line with the
//! median warm step (the first two steps are warm-ups, as in the PyTorch script).
//!
//! Also the `rlp bench` command itself: `ntp` is a subcommand of its own, every other bench
//! (`forward`, `decode`, `step`, `parity`) is `crate::bench::BenchArgs`.
//!
//! Not here: a copy of any training code. The run directory is a temporary one, removed at the
//! end; no checkpoint is written.

use super::{matmul_peak_gflops, median, peak_rss_mib, BenchArgs};
use crate::config::TrainConfig;
use crate::train::trainer::Trainer;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// `rlp bench`: `rlp bench ntp …`, or `rlp bench forward|decode|step|parity …`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    ntp: Option<NtpCommand>,
    #[command(flatten)]
    other: Option<BenchArgs>,
}

#[derive(Subcommand)]
enum NtpCommand {
    /// Time NTP training steps (the trainer's own) of a model directory on a corpus.
    Ntp(NtpArgs),
}

impl BenchCommand {
    pub fn run(&self) -> Result<()> {
        match (&self.ntp, &self.other) {
            (Some(NtpCommand::Ntp(a)), _) => run(a),
            (None, Some(a)) => super::run(a),
            (None, None) => bail!("name a bench: forward, decode, step, parity or ntp"),
        }
    }
}

#[derive(Args)]
pub struct NtpArgs {
    /// Model directory (e.g. from `rlp init-model`), with its tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Corpus file or directory (.jsonl / .txt), as `data.path` of `rlp train`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Packed windows per step.
    #[arg(long, default_value_t = 16)]
    pub windows: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    pub len: usize,
    /// Steps to time, warm-ups included.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// CPU threads (`train.threads`).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Steps left out of the median (the first steps fault in fresh memory).
const WARMUP: usize = 2;

pub fn run(a: &NtpArgs) -> Result<()> {
    if a.steps <= WARMUP {
        bail!("--steps must exceed the {WARMUP} warm-up steps");
    }
    std::env::set_var("RAYON_NUM_THREADS", a.threads.max(1).to_string());
    let dir = std::env::temp_dir().join(format!("rlp-bench-ntp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = bench(a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(a: &NtpArgs, dir: &std::path::Path) -> Result<()> {
    let abs = |p: &PathBuf| std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()));
    // The PyTorch reference: plain causal attention inside a window, AdamW (0.9, 0.95), eps 1e-8,
    // no weight decay, clip 1.0, constant lr. Far more steps than timed, so that no end-of-run
    // checkpoint is written.
    let text = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\ncontexts_per_step = {}\nmax_context = {}\nheldout_docs = 0\n\
         [objective]\nname = \"ntp\"\nntp_no_cross_doc_attention = false\n\
         [optim]\nlr = {}\nbetas = [0.9, 0.95]\neps = 1e-8\nweight_decay = 0.0\ngrad_clip = 1.0\nschedule = \"constant\"\n\
         [train]\nsteps = 1000000\nthreads = {}\n[logging]\nprogress = false\nsamples_every = 0\ntensorboard = false\n[checkpoint]\nevery = 0\n",
        abs(&a.model)?.display().to_string(),
        abs(&a.corpus)?.display().to_string(),
        a.windows,
        a.len,
        a.lr,
        a.threads.max(1),
    );
    let cfg_path = dir.join("bench-ntp.toml");
    std::fs::write(&cfg_path, text)?;
    let run_dir = dir.join("run");
    let mut t = Trainer::new(TrainConfig::load(&cfg_path, &[])?, &run_dir, false)?;
    let peak = matmul_peak_gflops(&Device::Cpu)?;
    let (mut step_s, mut train_s, mut optim_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut step_flops = 0.0;
    for i in 0..a.steps {
        let flops_before = t.totals.flops_train;
        let t0 = Instant::now();
        t.ntp_step()?;
        let dt = t0.elapsed().as_secs_f64();
        step_flops = t.totals.flops_train - flops_before;
        let m = last_metrics(&run_dir)?;
        let field = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        println!("{}", json!({ "step": i + 1, "loss": field("loss"), "step_s": dt, "train_s": field("train_s"), "optimizer_s": field("optimizer_s") }));
        step_s.push(dt);
        train_s.push(field("train_s"));
        optim_s.push(field("optimizer_s"));
    }
    let warm = |xs: &[f64]| median(xs[WARMUP..].to_vec());
    let (step, train, optim) = (warm(&step_s), warm(&train_s), warm(&optim_s));
    let tokens = a.windows * a.len;
    let n_params: usize = t.vars.iter().map(|(_, v)| v.elem_count()).sum();
    println!("{:<28} {:>12}", "measurement", "value");
    println!("{:<28} {:>12}", "parameters", n_params);
    println!("{:<28} {:>12.1}", "f32 matmul peak, GFLOP/s", peak);
    println!("{:<28} {:>12.4}", "step s (median warm)", step);
    println!("{:<28} {:>12.4}", "  forward+backward s", train);
    println!("{:<28} {:>12.4}", "  clip+AdamW s", optim);
    println!("{:<28} {:>12.0}", "tokens/s", tokens as f64 / step);
    println!("{:<28} {:>12.2}", "step GFLOP (matmuls)", step_flops / 1e9);
    println!("{:<28} {:>12.4}", "step s at the peak", step_flops / (peak * 1e9));
    println!("{:<28} {:>11.1}%", "MFU", 100.0 * step_flops / step / (peak * 1e9));
    println!(
        "{}",
        json!({
            "bench": "ntp", "summary": true, "threads": a.threads.max(1), "windows": a.windows, "len": a.len, "params": n_params,
            "steps": a.steps, "median_step_s": step, "median_train_s": train, "median_optimizer_s": optim,
            "tokens_per_s": tokens as f64 / step, "step_flops": step_flops, "peak_gflops": peak,
            "step_s_at_peak": step_flops / (peak * 1e9), "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

/// The last line of the run's metrics.jsonl (what `ntp_step` just logged).
fn last_metrics(run: &std::path::Path) -> Result<Value> {
    let p = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let line = text.lines().last().context("metrics.jsonl is empty")?;
    Ok(serde_json::from_str(line)?)
}
