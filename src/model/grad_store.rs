//! Gradient-store plumbing shared by every backward: an empty store, and moving the weights'
//! gradients out of one backward's store into a running sum.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

/// Move the gradients of `params` from `from` into `into`, adding where `into` already holds
/// one (a tied embedding, or several backward passes). Only these are taken: the store also
/// holds the gradient of every variable the backward reached that is not a weight (the detached
/// block inputs of gradient checkpointing). The gradients are detached: candle leaves a leaf's
/// gradient tracked when its last backward step multiplied by a tracked tensor (exp(A_log) for
/// NemotronH's A), which would keep that graph alive.
pub fn take_grads(into: &mut GradStore, from: &mut GradStore, params: &[&Tensor]) -> Result<()> {
    for p in params {
        if let Some(g) = from.remove(p) {
            let sum = match into.remove(p) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            into.insert(p, sum.detach());
        }
    }
    Ok(())
}

/// A gradient store with nothing in it that matters (candle has no public constructor: the
/// backward of an untracked scalar holds only that scalar's own unit gradient).
pub fn empty_grad_store(dev: &Device) -> Result<GradStore> {
    Ok(Tensor::zeros((), DType::F32, dev)?.backward()?)
}
