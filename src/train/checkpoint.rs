//! Checkpoints: a Hugging Face model directory plus the trainer state, written atomically.
//!
//! Layout of `RUN/checkpoints/step-NNNNNN/`: `config.json`, `model.safetensors`,
//! `generation_config.json`, `tokenizer.json` (what `transformers` loads), then
//! `trainer_state.safetensors` (optimizer moments, EMA teacher) and `trainer_state.json` (step,
//! RNG and data-cursor state, counters). Everything is first written to
//! `checkpoints/.tmp-step-NNNNNN/`, each file fsynced, then the directory is renamed into place
//! and the parent fsynced: a `step-*` directory is therefore always complete, and a crash
//! mid-write leaves only a `.tmp-*` directory that the next run deletes.

use super::accounting::Totals;
use crate::data::packer::PackerState;
use crate::data::sampler::{Context as TrainContext, SamplerState};
use crate::model::{self, Model};
use crate::objective::rlvr::QuestionOrderState;
use crate::run_dir::{checkpoint_name, checkpoints, checkpoints_dir, STATE_JSON};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const STATE_TENSORS: &str = "trainer_state.safetensors";

/// `trainer_state.json`: where the run stands, beside the weights and `trainer_state.safetensors`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// AdamW's own step count (its bias correction); equal to `step` unless steps were skipped.
    pub adam_step: Option<u64>,
    pub sampler: SamplerState,
    pub packer: PackerState,
    #[serde(default)]
    pub nonfinite_streak: usize,
    pub totals: Totals,
    /// The vocabulary of the saved model (with think tokens), for a reader of the checkpoint.
    pub vocab_size: usize,
    /// The entropy-filtered fixed contexts and the next one (`data.fixed_contexts` with a filter).
    #[serde(default)]
    pub fixed_pool: Vec<TrainContext>,
    #[serde(default)]
    pub fixed_cursor: usize,
    /// sft: where the packer over the SFT examples stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft_packer: Option<PackerState>,
    /// rlvr: where the seeded walk over the questions stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlvr_order: Option<QuestionOrderState>,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("cannot fsync {}", dir.display()))
}

fn fsync_files(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        File::open(&p).and_then(|f| f.sync_all()).with_context(|| format!("cannot fsync {}", p.display()))?;
    }
    fsync_dir(dir)
}

/// Write a checkpoint for `step` atomically, then delete all but the newest `keep_last`.
/// On any error the previous checkpoints are untouched and the partial directory removed.
pub fn save(
    run: &Path,
    step: u64,
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    state_tensors: Vec<(String, Tensor)>,
    state: &TrainerState,
    keep_last: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let tmp = root.join(format!(".tmp-{}", checkpoint_name(step)));
    let final_dir = root.join(checkpoint_name(step));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        model::weights::save_dir(model, Some(tokenizer), &tmp, DType::F32)?;
        let st = tmp.join(STATE_TENSORS);
        let tensors: Vec<(String, Tensor)> = state_tensors.into_iter().map(|(n, t)| Ok((n, t.detach().to_device(&Device::Cpu)?.contiguous()?))).collect::<Result<_>>()?;
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, &st).with_context(|| format!("cannot write {}", st.display()))?;
        model::weights::write_json(&tmp.join(STATE_JSON), &serde_json::to_value(state)?)?;
        fsync_files(&tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), final_dir.display()))?;
        fsync_dir(&root)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("checkpoint for step {step} not written; earlier checkpoints in {} are intact", root.display())));
    }
    prune(&root, keep_last)?;
    Ok(final_dir)
}

fn prune(root: &Path, keep_last: usize) -> Result<()> {
    let run = root.parent().unwrap();
    let all = checkpoints(run)?;
    if all.len() > keep_last {
        for (_, p) in &all[..all.len() - keep_last] {
            std::fs::remove_dir_all(p).with_context(|| format!("cannot remove old checkpoint {}", p.display()))?;
        }
    }
    Ok(())
}

/// The trainer state of a checkpoint directory.
pub fn load_state(dir: &Path) -> Result<(HashMap<String, Tensor>, TrainerState)> {
    let st = dir.join(STATE_TENSORS);
    let tensors = if st.exists() {
        candle_core::safetensors::load(&st, &Device::Cpu).with_context(|| format!("cannot read {}", st.display()))?
    } else {
        bail!("{} is missing: not an rlp checkpoint", st.display())
    };
    let sj = dir.join(STATE_JSON);
    let text = std::fs::read_to_string(&sj).with_context(|| format!("cannot read {}", sj.display()))?;
    let state = serde_json::from_str(&text).with_context(|| format!("{} is not a valid trainer state (is it an rlp checkpoint of this version?)", sj.display()))?;
    Ok((tensors, state))
}
