//! The checkpoints of a run directory, as everything that reads a run finds them: the trainer
//! when it resumes, `rlp eval --run`, the demo and `rlp post-train`. Writing them (atomically,
//! with the trainer state) is `train::checkpoint`'s.
//!
//! Layout: `RUN/checkpoints/step-NNNNNN/` per checkpoint, each holding the model directory and
//! `trainer_state.json`; `RUN/checkpoints/.tmp-step-NNNNNN/` while one is being written.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The file of a checkpoint directory that holds where the run stands (`TrainerState`); a
/// `step-*` directory without it is not a checkpoint.
pub const STATE_JSON: &str = "trainer_state.json";

/// `RUN/checkpoints`.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// The directory name of the checkpoint of `step`: `step-000042`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Completed checkpoints, oldest first: (step, directory).
pub fn checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = checkpoints_dir(run);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).with_context(|| format!("cannot read {}", root.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()) {
            if p.join(STATE_JSON).exists() {
                out.push((n, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Remove the `.tmp-*` leftovers of interrupted checkpoint writes.
pub fn remove_partial_checkpoints(run: &Path) -> Result<()> {
    let root = checkpoints_dir(run);
    if root.exists() {
        for e in std::fs::read_dir(&root)? {
            let p = e?.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".tmp-")) {
                std::fs::remove_dir_all(&p).with_context(|| format!("cannot remove partial checkpoint {}", p.display()))?;
            }
        }
    }
    Ok(())
}
