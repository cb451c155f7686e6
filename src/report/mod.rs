//! `rlp report`: collect eval results and run metrics into `report.md` and PNG plots.
//!
//! Inputs are directories: every `*.json` file in them (and one level down) that is an
//! [`EvalResult`] is a table cell; a directory holding `metrics.jsonl` is a training run and gets
//! curve plots. The table has one column per model and, per task, the rows
//! `TASK greedy` and `TASK pass@1[K]` (benchmarks), `think acc_no_think / acc_think / info_gain`,
//! `nll nll / bits_per_byte`. Averages follow the paper's Table 1 layout (rlp-paper.md §6.1) but
//! divide by the number of tasks present (the paper's Table 1 divides five math scores by 6):
//! **Math Avg** = mean pass@1 over math tasks, **Science Avg** = mean greedy over science tasks,
//! **Science Avg@1** = mean pass@1 over science tasks, **Overall** = mean of those three (of the
//! ones a model has). Task groups are listed in `eval::items::BUNDLED`; `jsonl:` tasks are in no
//! group. Benchmark scores are fractions in [0, 1], shown ×100 in the table.

pub mod cli;
pub mod plot;

use crate::eval::items::BUNDLED;
use crate::eval::{model_name, EvalResult};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `rlp report` found in its input directories.
#[derive(Debug, Default)]
pub struct Inputs {
    pub evals: Vec<EvalResult>,
    /// Run directories (holding metrics.jsonl).
    pub runs: Vec<PathBuf>,
}

/// Scan `dirs` for eval results and run directories.
pub fn collect(dirs: &[PathBuf]) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    for d in dirs {
        if !d.is_dir() {
            anyhow::bail!(
                "{} is not a directory: give run directories (with metrics.jsonl) or directories of eval .json files",
                d.display()
            );
        }
        scan(d, 0, &mut inputs)?;
    }
    if inputs.evals.is_empty() && inputs.runs.is_empty() {
        anyhow::bail!(
            "found no eval results (*.json from rlp eval) and no run directory (metrics.jsonl) in {:?}",
            dirs
        );
    }
    Ok(inputs)
}

fn scan(dir: &Path, depth: usize, inputs: &mut Inputs) -> Result<()> {
    if dir.join("metrics.jsonl").is_file() {
        inputs.runs.push(dir.to_path_buf());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && depth < 1 && p.file_name().is_some_and(|n| n != "checkpoints") {
            scan(&p, depth + 1, inputs)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            // other JSON files (configs, trainer state) are not eval results: skip them quietly
            if let Ok(r) = EvalResult::read(&p) {
                inputs.evals.push(r);
            }
        }
    }
    Ok(())
}

/// Group of a task for the averages: "math", "science" or None.
pub fn task_group(task: &str) -> Option<&'static str> {
    BUNDLED.iter().find(|b| b.0 == task).map(|b| b.2)
}

/// One table row: its label and one value per model (None: that model lacks it).
pub type Row = (String, Vec<Option<f64>>);

/// A named curve of (step, value) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Rows (label, values per model) of the report table; values are as displayed.
pub fn table(evals: &[EvalResult]) -> (Vec<String>, Vec<Row>) {
    let mut models: Vec<String> = Vec::new();
    let mut tasks: Vec<String> = Vec::new();
    for e in evals {
        let name = model_name(Path::new(&e.model));
        if !models.contains(&name) {
            models.push(name);
        }
        if !tasks.contains(&e.task) {
            tasks.push(e.task.clone());
        }
    }
    // the last result for each (task, model) wins
    let cell: BTreeMap<(String, String), &EvalResult> = evals
        .iter()
        .map(|e| ((e.task.clone(), model_name(Path::new(&e.model))), e))
        .collect();
    let value = |task: &str, model: &str, metric: &str, scale: f64| {
        cell.get(&(task.to_string(), model.to_string()))
            .and_then(|e| e.metrics.get(metric))
            .map(|v| v * scale)
    };
    let mut rows = Vec::new();
    for t in &tasks {
        let metrics: Vec<(&str, f64)> = match t.as_str() {
            "nll" => vec![("nll", 1.0), ("bits_per_byte", 1.0)],
            "think" => vec![("acc_no_think", 100.0), ("acc_think", 100.0), ("info_gain", 1.0)],
            _ => vec![("greedy", 100.0), ("pass@1", 100.0)],
        };
        for (metric, scale) in metrics {
            let vals: Vec<Option<f64>> = models.iter().map(|m| value(t, m, metric, scale)).collect();
            let label = match metric {
                "pass@1" => {
                    let k = models.iter().find_map(|m| value(t, m, "samples", 1.0)).unwrap_or(0.0);
                    format!("{t} pass@1[{k}]")
                }
                _ if t == "nll" => format!("held-out {metric}"),
                _ => format!("{t} {metric}"),
            };
            if vals.iter().any(Option::is_some) {
                rows.push((label, vals));
            }
        }
    }
    let avg = |group: &str, metric: &str, m: &str| -> Option<f64> {
        let xs: Vec<f64> = tasks
            .iter()
            .filter(|t| task_group(t) == Some(group))
            .filter_map(|t| value(t, m, metric, 100.0))
            .collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let math: Vec<Option<f64>> = models.iter().map(|m| avg("math", "pass@1", m)).collect();
    let sci: Vec<Option<f64>> = models.iter().map(|m| avg("science", "greedy", m)).collect();
    let sci1: Vec<Option<f64>> = models.iter().map(|m| avg("science", "pass@1", m)).collect();
    let overall: Vec<Option<f64>> = (0..models.len())
        .map(|i| {
            let xs: Vec<f64> = [math[i], sci[i], sci1[i]].into_iter().flatten().collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        })
        .collect();
    for (label, vals) in [
        ("Math Avg (pass@1)", math),
        ("Science Avg (greedy)", sci),
        ("Science Avg@1", sci1),
        ("Overall", overall),
    ] {
        if vals.iter().any(Option::is_some) {
            rows.push((label.to_string(), vals));
        }
    }
    (models, rows)
}

/// The markdown table.
pub fn markdown_table(evals: &[EvalResult]) -> String {
    let (models, rows) = table(evals);
    let mut s = format!(
        "| metric | {} |\n|---|{}\n",
        models.join(" | "),
        "---|".repeat(models.len())
    );
    for (label, vals) in rows {
        let cells: Vec<String> = vals
            .iter()
            .map(|v| v.map_or("–".into(), |x| format!("{x:.2}")))
            .collect();
        s.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Metrics;

    fn result(task: &str, model: &str, metrics: &[(&str, f64)]) -> EvalResult {
        let metrics: Metrics = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        EvalResult {
            task: task.into(),
            model: model.into(),
            n: 10,
            metrics,
            settings: serde_json::Value::Null,
            examples: vec![],
        }
    }

    #[test]
    fn averages_follow_the_paper_layout() {
        let evals = vec![
            result("gsm8k", "base", &[("greedy", 0.5), ("pass@1", 0.4), ("samples", 4.0)]),
            result(
                "bb-arithmetic",
                "base",
                &[("greedy", 0.3), ("pass@1", 0.2), ("samples", 4.0)],
            ),
            result("mmlu", "base", &[("greedy", 0.6), ("pass@1", 0.5), ("samples", 4.0)]),
            result("mmlu", "rlp", &[("greedy", 0.7), ("pass@1", 0.6), ("samples", 4.0)]),
        ];
        let (models, rows) = table(&evals);
        assert_eq!(models, vec!["base", "rlp"]);
        let row = |l: &str| {
            rows.iter()
                .find(|r| r.0 == l)
                .unwrap_or_else(|| panic!("no row {l}: {rows:?}"))
                .1
                .clone()
        };
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(close(row("Math Avg (pass@1)")[0], 30.0));
        assert_eq!(row("Math Avg (pass@1)")[1], None);
        assert!(close(row("Science Avg (greedy)")[1], 70.0));
        assert!(close(row("Overall")[0], (30.0 + 60.0 + 50.0) / 3.0));
        assert!(close(row("Overall")[1], (70.0 + 60.0) / 2.0));
        assert!(close(row("gsm8k pass@1[4]")[0], 40.0));
        let md = markdown_table(&evals);
        assert!(md.contains("| mmlu greedy | 60.00 | 70.00 |"), "{md}");
    }
}
