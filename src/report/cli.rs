//! `rlp report RUN_OR_EVAL_DIRS... --out DIR`: report.md plus PNG plots.

use super::plot::{grouped_bars, line_plot};
use super::{collect, markdown_table, table, Series};
use anyhow::{Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Run directories (with metrics.jsonl) and/or directories of `rlp eval` result files.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write report.md and the plots.
    #[arg(long)]
    pub out: PathBuf,
}

/// Series `(step, value)` of each key in a run's metrics.jsonl (lines without the key skipped).
pub fn run_series(run: &Path, keys: &[&str]) -> Result<Vec<Series>> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out: Vec<(String, Vec<(f64, f64)>)> = keys.iter().map(|k| (k.to_string(), vec![])).collect();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        for (k, series) in keys.iter().zip(out.iter_mut()) {
            if let Some(y) = v.get(*k).and_then(|y| y.as_f64()) {
                series.1.push((step, y));
            }
        }
    }
    Ok(out)
}

fn run_name(run: &Path) -> String {
    run.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into())
}

/// Write report.md and the plots; returns the report's path.
pub fn run_report(a: &ReportArgs) -> Result<PathBuf> {
    let inputs = collect(&a.dirs)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut md = String::from("# rlp report\n\n");
    if !inputs.evals.is_empty() {
        md.push_str("## Evaluation\n\nBenchmark and accuracy rows are percentages; `info_gain` and `nll` are nats, `bits_per_byte` bits. ");
        md.push_str("Averages: Math = mean pass@1 over math tasks, Science = mean greedy (and pass@1) over science tasks, Overall = mean of the averages present.\n\n");
        md.push_str(&markdown_table(&inputs.evals));
        let (models, rows) = table(&inputs.evals);
        let shown: Vec<&(String, Vec<Option<f64>>)> = rows
            .iter()
            .filter(|r| {
                !r.0.contains("Avg")
                    && !r.0.starts_with("Overall")
                    && (r.0.contains("pass@1") || r.0.contains("greedy") || r.0.contains("acc_"))
            })
            .collect();
        if !shown.is_empty() {
            let labels: Vec<String> = shown.iter().map(|r| r.0.clone()).collect();
            let values: Vec<Vec<Option<f64>>> = (0..models.len())
                .map(|m| shown.iter().map(|r| r.1[m]).collect())
                .collect();
            let png = a.out.join("eval-scores.png");
            grouped_bars(&png, "eval scores (%)", &labels, &models, &values)?;
            md.push_str("\n![eval scores](eval-scores.png)\n");
        }
        md.push_str("\nModels:\n\n");
        for e in &inputs.evals {
            let _ = writeln!(
                md,
                "- `{}` on `{}`: n = {}, settings `{}`",
                e.model, e.task, e.n, e.settings
            );
        }
    }
    for run in &inputs.runs {
        let name = run_name(run);
        let _ = writeln!(md, "\n## Run `{}`\n", run.display());
        let rewards = run_series(run, &["reward_mean", "s_pred_mean", "s_ema_mean"])?;
        let lens = run_series(run, &["thought_len_mean"])?;
        for (file, title, y, series) in [
            (format!("{name}-rewards.png"), "reward, S_pred, S_ema", "nats", rewards),
            (format!("{name}-thought-len.png"), "thought length", "tokens", lens),
        ] {
            if series.iter().any(|s| !s.1.is_empty()) {
                line_plot(&a.out.join(&file), &format!("{name}: {title}"), y, &series)?;
                let _ = writeln!(md, "![{title}]({file})");
            } else {
                let _ = writeln!(md, "(no {title} in metrics.jsonl)");
            }
        }
    }
    let path = a.out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(path)
}

/// `rlp report` entry point.
pub fn report(a: &ReportArgs) -> Result<()> {
    run_report(a).map(|_| ())
}
