//! The CPT baseline: continued pretraining with the next-token loss on packed documents, with
//! the same optimizer, schedule, checkpoints, metrics and resume as RLP.

use super::data_parallel as dp; // [dist]
use super::trainer::{GradAccumulator, Timing, Trainer};
use crate::data::corpus::TokenizedDocs;
use crate::data::packer::{Packer, Window};
use crate::dist::metrics::{reduce_metrics, Share}; // [dist]
use crate::flops;
use crate::model::{target_logprobs, AttnLayout, Model};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde_json::json;
use std::time::Instant;

/// Inputs, targets and attention layout of a batch of packed windows.
fn window_batch(windows: &[Window], no_cross_doc: bool, dev: &Device) -> Result<(Tensor, Tensor, AttnLayout)> {
    let t = windows[0].tokens.len() - 1;
    let inputs: Vec<u32> = windows.iter().flat_map(|w| w.tokens[..t].iter().copied()).collect();
    let targets: Vec<u32> = windows.iter().flat_map(|w| w.tokens[1..].iter().copied()).collect();
    let layout = if no_cross_doc {
        AttnLayout::segmented(&windows.iter().map(|w| w.segments[..t].to_vec()).collect::<Vec<_>>(), t)
    } else {
        AttnLayout::right_padded(&vec![t; windows.len()], t)
    };
    let b = windows.len();
    Ok((Tensor::from_vec(inputs, (b, t), dev)?, Tensor::from_vec(targets, (b, t), dev)?, layout))
}

/// Σ log p(target) of a batch of windows from their final hidden states [B, T, D],
/// differentiable: the next-token loss of both training and held-out evaluation.
fn target_logprob_sum(model: &Model, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = model.logits(hidden)?; // [B, T, V]
    Ok(target_logprobs(&logits, targets)?.sum_all()?)
}

/// Σ log p(target) over a batch of windows, differentiable. Returns (sum, number of targets).
fn window_logprob_sum(model: &Model, windows: &[Window], no_cross_doc: bool) -> Result<(Tensor, usize)> {
    let (ids, targets, layout) = window_batch(windows, no_cross_doc, model.embed.device())?;
    let hidden = model.forward_hidden(&ids, &layout, None)?;
    Ok((target_logprob_sum(model, &hidden, &targets)?, targets.elem_count()))
}

/// Mean next-token loss (nats per token) of `model` on `docs`, packed in corpus order into
/// windows of `len` tokens with attention kept inside documents; at most `max_windows` windows.
pub fn heldout_nll(model: &Model, docs: &TokenizedDocs, len: usize, eos: u32, max_windows: usize) -> Result<(f64, usize)> {
    let model = model.detached()?;
    let mut packer = Packer::in_order(docs.len(), eos)?;
    let windows_per_epoch = (docs.total_tokens() + docs.len()).div_ceil(len).max(1);
    let (mut sum, mut n) = (0f64, 0usize);
    for _ in 0..windows_per_epoch.min(max_windows) {
        let w = packer.next_window(docs, len)?;
        let (lp, k) = window_logprob_sum(&model, &[w], true)?;
        sum -= lp.to_scalar::<f32>()? as f64;
        n += k;
    }
    Ok((sum / n.max(1) as f64, n))
}

impl Trainer {
    /// One NTP optimizer step over `ntp_windows_per_step` packed windows.
    ///
    /// [dist] Every rank packs the same global windows in the same order (same packer state)
    /// and trains windows rank, rank + W, …; the loss is divided by the global target count and
    /// the gradient and loss summed over ranks before the shared update.
    pub(crate) fn ntp_step(&mut self) -> Result<()> {
        let len = self.cfg.data.max_context;
        let n_windows = self.cfg.ntp_windows_per_step();
        let all: Vec<Window> = (0..n_windows).map(|_| self.packer.next_window(&self.data.train, len)).collect::<Result<_>>()?;
        let windows = if self.dist.world() > 1 { dp::local_items(all, &self.dist) } else { all };
        let total_targets = (n_windows * len) as f64;
        let micro = self.cfg.train.micro_batch.unwrap_or(n_windows).clamp(1, n_windows);
        let no_cross = self.cfg.objective.ntp_no_cross_doc_attention;
        let t0 = Instant::now();
        let mut acc = GradAccumulator::default();
        let mut loss = 0f64;
        let policy = self.train_model()?; // f32 vars, or their differentiable bf16 cast
        for chunk in windows.chunks(micro) {
            let (ids, targets, layout) = window_batch(chunk, no_cross, policy.embed.device())?;
            let loss_of = |hidden: &Tensor| -> Result<Tensor> { Ok((target_logprob_sum(&policy, hidden, &targets)?.neg()? / total_targets)?) };
            let (l, grads) = if self.cfg.train.grad_checkpoint {
                policy.checkpointed_backward(&ids, &layout, &self.var_tensors(), loss_of)?
            } else {
                let l = loss_of(&policy.forward_hidden(&ids, &layout, None)?)?;
                let grads = l.backward()?;
                (l, grads)
            };
            loss += l.to_scalar::<f32>()? as f64;
            acc.add(grads, &self.vars)?;
        }
        let mut grads = acc.finish()?;
        dp::all_reduce_loss_and_grads(&self.dist, &mut grads, &mut loss, &self.var_list())?; // [dist]
        let train_s = t0.elapsed().as_secs_f64();
        let tokens = n_windows * len; // global: every rank counts the whole step
        self.totals.input_tokens += tokens as u64;
        self.totals.trained_tokens += tokens as u64;
        self.totals.flops_train += flops::train_flops(&self.shape, len as u64, tokens as u64);
        let bad = || json!({"windows": windows.iter().map(|w| &w.tokens).collect::<Vec<_>>()});
        let upd = self.apply_update(grads, loss, bad)?;
        self.step += 1;
        let mut m = json!({});
        self.add_step_fields(&mut m, &upd, loss, &Timing { sample_s: 0.0, score_s: 0.0, train_s, optim_s: upd.optim_s, train_tokens: tokens });
        reduce_metrics(&self.dist, &mut m, Share { thoughts: 0, contexts: 0 })?; // [dist] no per-sample means
        self.log_step(&m)?;
        self.maybe_checkpoint(1)
    }
}
