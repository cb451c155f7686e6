//! Evaluation: held-out loss (`nll`), think-then-predict on held-out positions (`think`), and
//! benchmarks answered after a thought (`bench`). Each returns [`Metrics`]; [`EvalResult`] is the
//! JSON file `rlp eval` writes and `rlp report` reads.
//!
//! The functions take a loaded model and tokenizer, so the trainer can call them for periodic
//! evaluation; `cli.rs` is the `rlp eval` command around them.

pub mod answer;
pub mod bench;
pub mod cli;
pub mod generate;
pub mod items;
pub mod nll;
pub mod think;

pub use bench::{bench_eval, BenchOptions};
pub use nll::nll_eval;
pub use think::{heldout_contexts, think_eval, HeldOut};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Metric name → value, sorted by name.
pub type Metrics = BTreeMap<String, f64>;

/// One model on one task: the file `rlp eval --out` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub task: String,
    pub model: String,
    /// Items, positions or tokens evaluated.
    pub n: usize,
    pub metrics: Metrics,
    /// The settings that produced the numbers (seed, budgets, sampling).
    #[serde(default)]
    pub settings: serde_json::Value,
    /// A few generations, for reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<serde_json::Value>,
}

impl EvalResult {
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<EvalResult> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not an rlp eval result (expected {{\"task\", \"model\", \"n\", \"metrics\"}})",
                path.display()
            )
        })
    }

    /// A short two-column table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!("task {}  model {}  n {}\n", self.task, self.model, self.n);
        for (k, v) in &self.metrics {
            s.push_str(&format!("  {k:<22} {v:>12.4}\n"));
        }
        s
    }
}

/// A short name for a model path: the file stem, or `RUN-step-N` for a checkpoint
/// `RUN/checkpoints/step-N`. Used for default result paths and report columns.
pub fn model_name(path: &Path) -> String {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    match path.parent().and_then(|p| p.parent()).and_then(|r| r.file_name()) {
        Some(run) if name.starts_with("step-") => format!("{}-{name}", run.to_string_lossy()),
        _ => name,
    }
}
