//! The next-token objective: the CPT baseline (continued pretraining on packed documents) and
//! what the trainer calls to build its batches and loss.
//!
//! Legend: W packed windows in one micro-batch, T tokens per window minus one (inputs and
//! targets are the window shifted by one), V vocabulary.

use crate::data::packer::Window;
use crate::model::{target_logprobs, AttnLayout, Model};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Inputs [W, T], targets [W, T] and attention layout of a batch of packed windows. With
/// `no_cross_doc` a token attends only to earlier tokens of its own document.
pub fn window_batch(windows: &[Window], no_cross_doc: bool, dev: &Device) -> Result<(Tensor, Tensor, AttnLayout)> {
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

/// The next-token loss of one micro-batch from its final hidden states [W, T, D]:
/// −Σ log p(target) / `total_targets` (the step's target count over every micro-batch and
/// rank, so that summing the micro-batches' gradients gives the step's mean). Differentiable.
pub fn window_loss(model: &Model, hidden: &Tensor, targets: &Tensor, total_targets: f64) -> Result<Tensor> {
    let logits = model.logits(hidden)?; // [W, T, V]
    Ok((target_logprobs(&logits, targets)?.sum_all()?.neg()? / total_targets)?)
}
