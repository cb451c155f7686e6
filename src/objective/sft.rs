//! The SFT objective: mean negative log-likelihood over response tokens only.
//!
//! Legend: B windows, T positions per window, V vocabulary.
//!
//! Choices, and why:
//! - The mean is over trained tokens, not over examples (a long response weighs more), as in
//!   TRL's `SFTTrainer` with packing and nanochat's SFT.
//! - For micro-batches and ranks, [`masked_nll_sum`] divided by the global count of trained
//!   tokens of the optimizer step (as `ntp` divides by its global target count) gives the same
//!   loss and gradient whatever the split; [`sft_loss`] is that with one batch.
//! - Positions with mask 0 contribute exactly 0 and get exactly zero gradient, whatever their
//!   logits hold (the sum uses `where_cond`, not a multiplication, so a −inf or NaN log-prob
//!   outside the mask does not leak in).

use crate::model::target_logprobs;
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

/// Σ −log p(target) over positions with mask > 0, differentiable.
/// `logits` [B, T, V] (f32), `targets` [B, T] (u32), `mask` [B, T] (f32, 1 trained, 0 not).
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, t, _v) = logits.dims3()?;
    ensure!(targets.dims() == [b, t], "targets shape {:?}, expected [{b}, {t}] as the logits", targets.dims());
    ensure!(mask.dims() == [b, t], "loss mask shape {:?}, expected [{b}, {t}] as the logits", mask.dims());
    let lp = target_logprobs(logits, targets)?; // [B, T]
    let active = mask.gt(0.0)?; // [B, T] u8
    let lp = active.where_cond(&lp, &lp.zeros_like()?)?; // [B, T], 0 off the mask
    Ok(lp.sum_all()?.neg()?)
}

/// Number of trained positions (mask > 0).
pub fn trained_count(mask: &Tensor) -> Result<usize> {
    Ok(mask.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize)
}

/// `masked_nll_sum / total_trained`: the loss of one micro-batch when the optimizer step trains
/// `total_trained` response tokens in all (every micro-batch, every rank). Summed over the
/// step's micro-batches it is the step's mean response NLL.
pub fn sft_loss_of_step(logits: &Tensor, targets: &Tensor, mask: &Tensor, total_trained: usize) -> Result<Tensor> {
    ensure!(total_trained > 0, "the SFT step trains no response token: every window was prompt only; use longer windows or shorter prompts");
    Ok((masked_nll_sum(logits, targets, mask)? / total_trained as f64)?)
}

/// Mean NLL (nats) over the response tokens of one batch. Errors when none is trained.
pub fn sft_loss(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    sft_loss_of_step(logits, targets, mask, trained_count(mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// One window, T = 3, V = 3. Logits per position (log-softmax by hand):
    /// - t0: [0, 0, 0]           → p = 1/3 each;           target 1, mask 1: −log p = ln 3
    /// - t1: [ln 1, ln 2, ln 1]  → p = [1/4, 1/2, 1/4];    target 0, mask 1: −log p = ln 4
    /// - t2: [9, −9, 0]          → masked out (prompt)
    ///
    /// loss = (ln 3 + ln 4) / 2 = ln 12 / 2 = 1.2424533.
    /// Gradient w.r.t. the logits: (softmax − onehot) / 2 on trained positions, 0 at t2:
    /// t0: [1/6, −1/3, 1/6]; t1: [(1/4 − 1)/2, 1/4, 1/8] = [−0.375, 0.25, 0.125].
    #[test]
    fn loss_is_mean_nll_over_response_tokens_only() {
        let dev = Device::Cpu;
        let ln2 = std::f32::consts::LN_2;
        let logits = Var::from_tensor(&Tensor::from_vec(vec![0f32, 0., 0., 0., ln2, 0., 9., -9., 0.], (1, 3, 3), &dev).unwrap()).unwrap();
        let targets = Tensor::from_vec(vec![1u32, 0, 2], (1, 3), &dev).unwrap();
        let mask = Tensor::from_vec(vec![1f32, 1., 0.], (1, 3), &dev).unwrap();
        let loss = sft_loss(&logits, &targets, &mask).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 12f32.ln() / 2.0).abs() < 1e-6);
        let g = loss.backward().unwrap().get(&logits).unwrap().to_vec3::<f32>().unwrap();
        let want = [[1.0 / 6.0, -1.0 / 3.0, 1.0 / 6.0], [-0.375, 0.25, 0.125], [0.0, 0.0, 0.0]];
        for (row, w) in g[0].iter().zip(want) {
            for (a, b) in row.iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "{g:?}");
            }
        }
        // The masked position's target changes nothing.
        let other = Tensor::from_vec(vec![1u32, 0, 1], (1, 3), &dev).unwrap();
        assert_eq!(sft_loss(&logits, &other, &mask).unwrap().to_scalar::<f32>().unwrap(), loss.to_scalar::<f32>().unwrap());
    }

    #[test]
    fn micro_batches_sum_to_the_step_loss_and_errors_say_why() {
        let dev = Device::Cpu;
        // Two windows of T = 2 over V = 2; logits [0, 0] everywhere so each trained token costs ln 2.
        let logits = Tensor::zeros((2, 2, 2), DType::F32, &dev).unwrap();
        let targets = Tensor::zeros((2, 2), DType::U32, &dev).unwrap();
        let mask = Tensor::from_vec(vec![1f32, 0., 1., 1.], (2, 2), &dev).unwrap();
        let full = sft_loss(&logits, &targets, &mask).unwrap().to_scalar::<f32>().unwrap();
        let part = |i: usize| sft_loss_of_step(&logits.narrow(0, i, 1).unwrap(), &targets.narrow(0, i, 1).unwrap(), &mask.narrow(0, i, 1).unwrap(), 3).unwrap().to_scalar::<f32>().unwrap();
        assert!((full - std::f32::consts::LN_2).abs() < 1e-6);
        assert!((part(0) + part(1) - full).abs() < 1e-6);
        assert!((part(0) - std::f32::consts::LN_2 / 3.0).abs() < 1e-6, "one of three tokens");
        let none = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
        assert!(sft_loss(&logits, &targets, &none).unwrap_err().to_string().contains("no response token"));
        assert!(masked_nll_sum(&logits, &targets, &none.narrow(0, 0, 1).unwrap()).is_err());
    }
}
