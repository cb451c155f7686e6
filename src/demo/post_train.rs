//! `rlp demo --post-train`: the paper's second claim in miniature. After the comparison, base,
//! CPT, RLP and RPT each get the same SFT (worked-tally pairs) and then the same RLVR (tally
//! questions graded by exact match), both from `demo::post`'s sets for the seed, none an
//! evaluation tally; then the comparison's evaluation again. The report gets the shape of the
//! paper's Table 2: each model before and after post-training.
//!
//! The two stages are `rlp post-train`'s (`crate::post_train`), with one pair of configs
//! (`OUT/configs/post-sft.toml`, `post-rlvr.toml`) for every model. With an `rlp` binary at
//! hand two models post-train side by side, one child process each.

use crate::post_train::{post_train_model, PostTrainArgs};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The post-training stage's sizes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PostPlan {
    pub sft_pairs: usize,
    pub sft_heldout: usize,
    pub sft_steps: usize,
    pub sft_windows: usize,
    pub sft_lr: f64,
    pub rlvr_items: usize,
    pub rlvr_steps: usize,
    pub rlvr_questions: usize,
    pub rlvr_g: usize,
    pub rlvr_lr: f64,
}

impl PostPlan {
    pub fn new(quick: bool) -> PostPlan {
        if quick {
            PostPlan { sft_pairs: 256, sft_heldout: 32, sft_steps: 6, sft_windows: 8, sft_lr: 3e-4, rlvr_items: 256, rlvr_steps: 4, rlvr_questions: 8, rlvr_g: 8, rlvr_lr: 1e-4 }
        } else {
            PostPlan { sft_pairs: 2000, sft_heldout: 64, sft_steps: 60, sft_windows: 8, sft_lr: 3e-4, rlvr_items: 2000, rlvr_steps: 60, rlvr_questions: 16, rlvr_g: 8, rlvr_lr: 1e-4 }
        }
    }
}

/// The SFT and RLVR configs every model gets (model.path is replaced per model).
pub fn write_configs(dir: &Path, p: &PostPlan, seed: u64, base: &Path, sft: &Path, rlvr: &Path, budget: usize) -> Result<(PathBuf, PathBuf)> {
    let sft_text = format!(
        "[model]\npath = {base:?}\n[data]\npath = {sft:?}\ncontexts_per_step = {w}\nmax_context = 128\nheldout_docs = {h}\n\
         [objective]\nname = \"sft\"\n[optim]\nlr = {lr}\nschedule = \"cosine\"\nwarmup_steps = 2\nmin_lr = {min}\n\
         [train]\nsteps = {steps}\nseed = {seed}\nthreads = 1\n[logging]\neval_every = {steps}\nprogress = true\n[checkpoint]\nkeep_last = 1\n",
        base = base.display().to_string(),
        sft = sft.display().to_string(),
        w = p.sft_windows,
        h = p.sft_heldout,
        lr = p.sft_lr,
        min = p.sft_lr / 10.0,
        steps = p.sft_steps,
    );
    let rlvr_text = format!(
        "[model]\npath = {base:?}\n[data]\npath = {rlvr:?}\ncontexts_per_step = {q}\n\
         [rollout]\ng = {g}\nthought_budget = {budget}\ntemperature = 0.7\n\
         [objective]\nname = \"rlvr\"\nrlvr_prompt = \"raw\"\nrlvr_answer_tokens = 2\n\
         [optim]\nlr = {lr}\nschedule = \"cosine\"\nwarmup_steps = 2\nmin_lr = {min}\n\
         [train]\nsteps = {steps}\nseed = {seed}\nthreads = 1\n[logging]\nprogress = true\n[checkpoint]\nkeep_last = 1\n",
        base = base.display().to_string(),
        rlvr = rlvr.display().to_string(),
        q = p.rlvr_questions,
        g = p.rlvr_g,
        lr = p.rlvr_lr,
        min = p.rlvr_lr / 10.0,
        steps = p.rlvr_steps,
    );
    let cfg_dir = dir.join("configs");
    std::fs::create_dir_all(&cfg_dir)?;
    let (a, b) = (cfg_dir.join("post-sft.toml"), cfg_dir.join("post-rlvr.toml"));
    std::fs::write(&a, sft_text).with_context(|| format!("cannot write {}", a.display()))?;
    std::fs::write(&b, rlvr_text).with_context(|| format!("cannot write {}", b.display()))?;
    Ok((a, b))
}

/// SFT then RLVR of every `(name, model)` into `out/NAME/{sft,rlvr}`; returns each final
/// checkpoint. Two at a time as child `rlp post-train` processes when `bin` is given (logs in
/// `out/NAME.log`), else one after the other in this process.
pub fn post_train_all(bin: Option<&Path>, models: &[(String, PathBuf)], sft_cfg: &Path, rlvr_cfg: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let args = |name: &str, model: &Path| PostTrainArgs {
        models: vec![format!("{name}={}", model.display())],
        sft_config: sft_cfg.to_path_buf(),
        rlvr_config: rlvr_cfg.to_path_buf(),
        sft_overrides: vec![],
        rlvr_overrides: vec![],
        out: out.to_path_buf(),
        resume: false,
    };
    for (name, _) in models {
        let _ = std::fs::remove_dir_all(out.join(name));
    }
    let Some(bin) = bin else {
        let dist = std::rc::Rc::new(crate::dist::Dist::Single);
        return models.iter().map(|(name, model)| post_train_model(&args(name, model), model, &out.join(name), &dist)).collect();
    };
    std::fs::create_dir_all(out)?;
    let child = |name: &str, model: &Path| -> Result<PathBuf> {
        let a = args(name, model);
        let log_path = out.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let status = std::process::Command::new(bin)
            .args(["post-train", "--model", &a.models[0], "--sft-config"])
            .arg(sft_cfg)
            .arg("--rlvr-config")
            .arg(rlvr_cfg)
            .arg("--out")
            .arg(out)
            .env("RAYON_NUM_THREADS", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        if !status.success() {
            bail!("`rlp post-train --model {}` failed ({status}); its output is in {}", a.models[0], log_path.display());
        }
        crate::run_dir::checkpoints(&out.join(name).join("rlvr"))?.pop().map(|(_, p)| p).with_context(|| format!("{name}: the RLVR run wrote no checkpoint"))
    };
    let mut done = Vec::new();
    for pair in models.chunks(2) {
        let got: Vec<Result<PathBuf>> = std::thread::scope(|sc| {
            let handles: Vec<_> = pair.iter().map(|(n, m)| sc.spawn(move || child(n, m))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a post-training thread panicked")))).collect()
        });
        for r in got {
            done.push(r?);
        }
    }
    Ok(done)
}

/// The Table-2-shaped section of report.md: each model's held-out accuracy (better of think /
/// no think, ± se) before and after the same post-training, and the change.
pub fn table_markdown(results: &Value) -> String {
    let pct = |v: &Value| format!("{:.1}", 100.0 * v.as_f64().unwrap_or(f64::NAN));
    let pt = &results["post_train"];
    let mut md = format!(
        "\n## After identical post-training (SFT {} steps, then RLVR {} steps; {:.0} s)\n\n\
         | model | before: acc best % ± se | after SFT + RLVR: acc best % ± se | change (points) | after: acc think % | after: acc no think % |\n|---|---|---|---|---|---|\n",
        pt["plan"]["sft_steps"],
        pt["plan"]["rlvr_steps"],
        pt["seconds"].as_f64().unwrap_or(0.0)
    );
    for name in ["base", "cpt", "rlp", "rpt"] {
        let (b, a) = (&results["models"][name], &pt["models"][name]);
        let d = a["acc_best"].as_f64().unwrap_or(f64::NAN) - b["acc_best"].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {name} | {} ± {} | {} ± {} | {:+.1} | {} | {} |\n",
            pct(&b["acc_best"]),
            pct(&b["acc_best_se"]),
            pct(&a["acc_best"]),
            pct(&a["acc_best_se"]),
            100.0 * d,
            pct(&a["acc_think"]),
            pct(&a["acc_no_think"])
        ));
    }
    let lead = |m: &Value| m["rlp"]["acc_best"].as_f64().unwrap_or(f64::NAN) - m["cpt"]["acc_best"].as_f64().unwrap_or(f64::NAN);
    md.push_str(&format!("\nRLP − CPT: {:+.1} points before, {:+.1} after post-training.\n", 100.0 * lead(&results["models"]), 100.0 * lead(&pt["models"])));
    md
}

/// `json!` of the plan and timings, with the evaluations filled in by the caller.
pub fn results(plan: &PostPlan, seconds: f64, models: serde_json::Map<String, Value>) -> Value {
    json!({"plan": plan, "seconds": seconds, "models": models})
}
