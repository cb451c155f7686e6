//! `rlp post-train`: the paper's post-training (§5.4) in one command: SFT, then RLVR from the
//! SFT result, with the same two configs for every model compared.
//!
//! For each `--model [NAME=]PATH`: `OUT/NAME/sft` is `rlp train --config SFT_CONFIG` with
//! `model.path = PATH`, and `OUT/NAME/rlvr` is `rlp train --config RLVR_CONFIG` with
//! `model.path` = the SFT run's last checkpoint. Nothing else differs between models: the
//! configs, their `--set-sft` / `--set-rlvr` overrides and the seeds are the same, so base, CPT
//! and RLP checkpoints get identical post-training. Models run one after the other in this
//! process (or this `mpirun` job: every rank runs every model).
//!
//! Not here: evaluation (`rlp eval` on `OUT/NAME/rlvr/checkpoints/…`, or `rlp demo --post-train`
//! for the miniature, which evaluates before and after).

use crate::config::TrainConfig;
use crate::dist::Dist;
use crate::run_dir;
use crate::train::trainer::Trainer;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Args, Clone)]
pub struct PostTrainArgs {
    /// A model to post-train, `NAME=PATH` or `PATH` (NAME = the directory's name); repeatable.
    /// PATH is a model directory or a checkpoint (`RUN/checkpoints/step-NNNNNN`).
    #[arg(long = "model", value_name = "[NAME=]PATH", required = true)]
    pub models: Vec<String>,
    /// The SFT config (objective.name = "sft"); its model.path is replaced by each model.
    #[arg(long, default_value = "configs/post-sft.toml")]
    pub sft_config: PathBuf,
    /// The RLVR config (objective.name = "rlvr"); its model.path is replaced by each SFT result.
    #[arg(long, default_value = "configs/post-rlvr.toml")]
    pub rlvr_config: PathBuf,
    /// Override an SFT config key for every model, e.g. --set-sft optim.lr=1e-5 (repeatable).
    #[arg(long = "set-sft", value_name = "KEY=VALUE")]
    pub sft_overrides: Vec<String>,
    /// Override an RLVR config key for every model (repeatable).
    #[arg(long = "set-rlvr", value_name = "KEY=VALUE")]
    pub rlvr_overrides: Vec<String>,
    /// Output directory: OUT/NAME/sft and OUT/NAME/rlvr per model.
    #[arg(long, default_value = "runs/post")]
    pub out: PathBuf,
    /// Continue unfinished runs from their newest checkpoint; finished ones are kept.
    #[arg(long)]
    pub resume: bool,
}

/// `NAME=PATH` or `PATH` → (name, path).
pub fn parse_model(spec: &str) -> Result<(String, PathBuf)> {
    let (name, path) = match spec.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let p = PathBuf::from(spec);
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, p)
        }
    };
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        bail!("--model {spec:?}: give it a plain name, as --model NAME=PATH");
    }
    let path = std::path::absolute(&path).with_context(|| format!("cannot resolve {}", path.display()))?;
    if !path.join("config.json").exists() {
        bail!("--model {spec:?}: {} holds no config.json: pass a model directory or a checkpoint (RUN/checkpoints/step-NNNNNN)", path.display());
    }
    Ok((name, path))
}

pub fn post_train(a: &PostTrainArgs) -> Result<()> {
    let models: Vec<(String, PathBuf)> = a.models.iter().map(|m| parse_model(m)).collect::<Result<_>>()?;
    let mut names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two --model entries are named {:?}: name them apart with --model NAME=PATH", w[0]);
    }
    crate::train::signals::install()?;
    let sft = TrainConfig::load(&a.sft_config, &a.sft_overrides)?;
    let timeout = std::time::Duration::from_secs_f64(sft.train.collective_timeout_s);
    let dist = Rc::new(Dist::from_launcher(timeout)?);
    for (name, path) in &models {
        let dir = a.out.join(name);
        let last = post_train_model(a, path, &dir, &dist)?;
        if dist.is_root() {
            println!("{name}: post-trained model {}", last.display());
        }
        if crate::train::signals::stop_requested().is_some() {
            bail!("stopped by a signal; continue with --resume");
        }
    }
    Ok(())
}

/// SFT then RLVR of the model at `model` into `dir/sft` and `dir/rlvr`; returns the final
/// checkpoint of the RLVR run.
pub fn post_train_model(a: &PostTrainArgs, model: &Path, dir: &Path, dist: &Rc<Dist>) -> Result<PathBuf> {
    let sft = run_stage(&a.sft_config, &a.sft_overrides, "sft", model, &dir.join("sft"), a.resume, dist)?;
    run_stage(&a.rlvr_config, &a.rlvr_overrides, "rlvr", &sft, &dir.join("rlvr"), a.resume, dist)
}

/// One stage: the config with `model.path = model`, trained into `run` (kept when it already
/// finished and `resume`); returns the run's last checkpoint.
fn run_stage(config: &Path, overrides: &[String], want: &str, model: &Path, run: &Path, resume: bool, dist: &Rc<Dist>) -> Result<PathBuf> {
    let mut sets = overrides.to_vec();
    sets.push(format!("model.path={}", model.display()));
    let cfg = TrainConfig::load(config, &sets)?;
    let name = format!("{:?}", cfg.objective.name).to_lowercase();
    if name != want {
        bail!("{} has objective.name = \"{name}\": the {want} stage of rlp post-train needs \"{want}\"", config.display());
    }
    let steps = cfg.train.steps as u64;
    let done = run_dir::checkpoints(run)?.last().map(|(s, p)| (*s, p.clone()));
    match done {
        Some((s, p)) if resume && s >= steps => return Ok(p),
        _ => {
            let resume = resume && run.join("config.toml").exists();
            Trainer::new_distributed(cfg, run, resume, dist.clone())?.run()?;
        }
    }
    run_dir::checkpoints(run)?.pop().map(|(_, p)| p).with_context(|| format!("{} wrote no checkpoint", run.display()))
}
