//! Fused CPU kernels with their own backward, each a candle `CustomOp` that replaces a chain of
//! elementwise ops (and the full-size temporaries those ops and their gradients allocate).
//!
//! - `masked_target_logprobs`: log p(target) under softmax(z / T) restricted to the allowed
//!   tokens of each row, for the policy's thought tokens. The reference composition (temperature
//!   divide, log_softmax, gather, exp of banned columns, log(1 − removed)) allocates a dozen
//!   [M, V] tensors forward and backward; this op reads z once forward and writes one [M, V]
//!   gradient backward.
//! - `target_logprobs`: log softmax(z)[target] per row, for next-token losses (NTP, SFT) and
//!   scoring: one pass forward (max, Σ exp) and one backward that writes g·(δ − softmax) into one
//!   [M, V] gradient, where the composition (log_softmax, then gather) allocates four [M, V]
//!   tensors forward and accumulates through as many backward, plus a scatter into zeros.
//! - `tempered_entropy`: −Σ p log p of softmax(z / T) per row, no gradient.
//! - `rms_norm`: x / sqrt(mean(x²) + eps) · w with gradients for x and w.
//! - `softmax_last_dim`: softmax over the last dim with its backward; `masked_softmax`: the
//!   attention softmax with the score scale and the additive mask folded in.
//! - `rope`: rotate-half RoPE with its backward (the inverse rotation).
//! - `swiglu`: silu(gate) · up, the MLP's gating, with gradients for both inputs.
//!
//! On devices other than the CPU every function falls back to the reference composition, so
//! callers stay device-generic. `tests/fused.rs` checks each op against its reference in value
//! and gradient, and against finite differences.
//!
//! Shapes: M rows (positions), V vocabulary, D features.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Which tokens are excluded from each row's softmax: `banned` everywhere, plus `first_banned`
/// in the rows flagged in `first_rows` (`</think>` at a thought's first token).
#[derive(Clone, Debug)]
pub struct Exclusions {
    pub banned: Vec<u32>,
    pub first_banned: Option<u32>,
    pub first_rows: Vec<bool>,
}

impl Exclusions {
    fn of_row(&self, m: usize) -> impl Iterator<Item = usize> + '_ {
        let extra = if self.first_rows.get(m).copied().unwrap_or(false) { self.first_banned } else { None };
        self.banned.iter().copied().chain(extra).map(|t| t as usize)
    }
}

/// log p(targets[m]) under softmax(z[m] / temperature) over the tokens not excluded in row m.
/// z [M, V] f32 -> [M], differentiable with respect to z.
pub fn masked_target_logprobs(z: &Tensor, targets: &[u32], excl: &Exclusions, temperature: f32) -> Result<Tensor> {
    let (m, v) = z.dims2()?;
    anyhow::ensure!(targets.len() == m && excl.first_rows.len() == m, "{} targets / {} first-row flags for {m} rows", targets.len(), excl.first_rows.len());
    let excl = Exclusions { banned: excl.banned.iter().copied().filter(|&t| (t as usize) < v).collect(), ..excl.clone() };
    let op = MaskedTargetLogprob { targets: targets.to_vec(), excl, inv_temp: 1.0 / temperature };
    if z.device().is_cpu() && z.dtype() == DType::F32 {
        Ok(z.contiguous()?.apply_op1(op)?)
    } else {
        op.reference(z)
    }
}

/// Entropy (nats) of softmax(z[m] / temperature) for every row: z [M, V] -> [M], no gradient.
pub fn tempered_entropy(z: &Tensor, temperature: f32) -> Result<Tensor> {
    let z = z.detach();
    if z.device().is_cpu() && z.dtype() == DType::F32 {
        return Ok(z.contiguous()?.apply_op1_no_bwd(&TemperedEntropy { inv_temp: 1.0 / temperature })?);
    }
    let lp = candle_nn::ops::log_softmax(&(z / temperature as f64)?, D::Minus1)?;
    Ok((lp.exp()? * &lp)?.sum(D::Minus1)?.neg()?)
}

struct MaskedTargetLogprob {
    targets: Vec<u32>,
    excl: Exclusions,
    inv_temp: f32,
}

impl MaskedTargetLogprob {
    /// The composition this op replaces (candle ops only, differentiable on any device).
    fn reference(&self, z: &Tensor) -> Result<Tensor> {
        let (m, v) = z.dims2()?;
        let dev = z.device();
        let mut keep = vec![1f32; m * v];
        for r in 0..m {
            for t in self.excl.of_row(r) {
                keep[r * v + t] = 0.0;
            }
        }
        let keep = Tensor::from_vec(keep, (m, v), dev)?;
        let zt = (z * self.inv_temp as f64)?;
        let masked = (zt.broadcast_mul(&keep)? + ((1.0 - &keep)? * -1e30)?)?; // excluded -> -inf-ish
        let lp = candle_nn::ops::log_softmax(&masked, D::Minus1)?;
        let idx = Tensor::new(self.targets.as_slice(), dev)?.unsqueeze(1)?;
        Ok(lp.gather(&idx, 1)?.squeeze(1)?)
    }
}

/// Row statistics of softmax(z·s) over the allowed tokens: (max, log Σ exp(z·s − max)).
/// `excluded` is sorted and unique.
fn allowed_max_lse(row: &[f32], s: f32, excluded: &[usize]) -> (f32, f32) {
    let allowed = || {
        let mut ex = excluded.iter().peekable();
        row.iter().enumerate().filter_map(move |(j, &x)| {
            if ex.peek() == Some(&&j) {
                ex.next();
                None
            } else {
                Some(x * s)
            }
        })
    };
    let mx = allowed().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = allowed().map(|y| (y - mx).exp()).sum();
    (mx, sum.ln())
}

fn cpu_rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (m, v) = layout.shape().dims2()?;
    let data = match storage {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("fused op: expected f32"),
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok((&data[a..b], m, v)),
        None => candle_core::bail!("fused op: expected a contiguous input"),
    }
}

fn sorted_unique(xs: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = xs.collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl CustomOp1 for MaskedTargetLogprob {
    fn name(&self) -> &'static str {
        "masked-target-logprob"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, m, v) = cpu_rows(storage, layout)?;
        let s = self.inv_temp;
        let out: Vec<f32> = (0..m)
            .map(|r| {
                let row = &z[r * v..(r + 1) * v];
                let excluded = sorted_unique(self.excl.of_row(r));
                let (mx, lse) = allowed_max_lse(row, s, &excluded);
                row[self.targets[r] as usize] * s - mx - lse
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }

    /// dz[m, j] = g[m] · s · (δ(j = target) − p'[m, j]), p' the restricted softmax (0 where excluded).
    fn bwd(&self, z: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad_op = MaskedTargetLogprobGrad { targets: self.targets.clone(), excl: self.excl.clone(), inv_temp: self.inv_temp };
        Ok(Some(z.apply_op2_no_bwd(&grad_res.contiguous()?, &grad_op)?))
    }
}

struct MaskedTargetLogprobGrad {
    targets: Vec<u32>,
    excl: Exclusions,
    inv_temp: f32,
}

impl CustomOp2 for MaskedTargetLogprobGrad {
    fn name(&self) -> &'static str {
        "masked-target-logprob-grad"
    }

    fn cpu_fwd(&self, zs: &CpuStorage, zl: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, m, v) = cpu_rows(zs, zl)?;
        let g = match (gs, gl.contiguous_offsets()) {
            (CpuStorage::F32(d), Some((a, b))) => &d[a..b],
            _ => candle_core::bail!("fused op: expected a contiguous f32 gradient"),
        };
        let s = self.inv_temp;
        let mut out = vec![0f32; m * v];
        for r in 0..m {
            let row = &z[r * v..(r + 1) * v];
            let excluded = sorted_unique(self.excl.of_row(r));
            let (mx, lse) = allowed_max_lse(row, s, &excluded);
            let gr = g[r] * s;
            let o = &mut out[r * v..(r + 1) * v];
            for (oj, &x) in o.iter_mut().zip(row) {
                *oj = -gr * (x * s - mx - lse).exp();
            }
            for &j in &excluded {
                o[j] = 0.0;
            }
            o[self.targets[r] as usize] += gr;
        }
        Ok((CpuStorage::F32(out), Shape::from((m, v))))
    }
}

struct TemperedEntropy {
    inv_temp: f32,
}

impl CustomOp1 for TemperedEntropy {
    fn name(&self) -> &'static str {
        "tempered-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, m, v) = cpu_rows(storage, layout)?;
        let s = self.inv_temp;
        let out = (0..m)
            .map(|r| {
                let row = &z[r * v..(r + 1) * v];
                let (mx, lse) = allowed_max_lse(row, s, &[]);
                // H = lse' − Σ p·(z·s − mx), lse' = log Σ exp(z·s − mx)
                let mean: f32 = row.iter().map(|&x| (x * s - mx - lse).exp() * (x * s - mx)).sum();
                lse - mean
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }
}

/// log softmax(z)[target] for each row of z [.., V] and targets [..] (u32), shape [..].
/// Differentiable in z. On the CPU with f32 logits it is [`TargetLogprob`], row-parallel;
/// elsewhere the composition [`target_logprobs_reference`].
pub fn target_logprobs(z: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() && z.dtype() == DType::F32 {
        let dims = z.dims().to_vec();
        let v = *dims.last().ok_or_else(|| anyhow::anyhow!("target_logprobs of a scalar"))?;
        anyhow::ensure!(targets.dims() == &dims[..dims.len() - 1], "targets of shape {:?} for logits of shape {:?}", targets.dims(), dims);
        let t: Vec<u32> = targets.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
            anyhow::bail!("target token id {bad} is outside the vocabulary of {v}: check that the tokenizer and the model belong together");
        }
        let rows = z.contiguous()?.reshape((t.len(), v))?;
        Ok(rows.apply_op1(TargetLogprob { targets: t })?.reshape(&dims[..dims.len() - 1])?)
    } else {
        target_logprobs_reference(z, targets)
    }
}

/// The composition `target_logprobs` replaces: log_softmax over the last dim, then a gather.
pub fn target_logprobs_reference(z: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = candle_nn::ops::log_softmax(z, D::Minus1)?;
    Ok(lp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?)
}

/// log softmax(z)[target] of z [M, V], out [M]: out = (z_t − max) − ln Σ exp(z − max), the
/// composition's operations in its order.
struct TargetLogprob {
    targets: Vec<u32>,
}

impl CustomOp1 for TargetLogprob {
    fn name(&self) -> &'static str {
        "rlp-target-logprob"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, m, v) = cpu_rows(s, l)?;
        let out: Vec<f32> = (0..m)
            .into_par_iter()
            .with_min_len((PAR_ELEMS / v.max(1)).max(1))
            .map(|r| {
                let row = &z[r * v..(r + 1) * v];
                let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|&x| exp_or_zero(x - mx)).sum();
                (row[self.targets[r] as usize] - mx) - sum.ln()
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }

    /// dz[m, j] = g[m] · (δ(j = target) − softmax(z)[m, j]); the row's log-normaliser is
    /// z_t − out, so the backward needs no second reduction.
    fn bwd(&self, z: &Tensor, out: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = TargetLogprobGrad { targets: self.targets.clone() };
        let out_g = Tensor::stack(&[out, &g.contiguous()?], 1)?; // [M, 2]: (out, g) per row
        Ok(Some(z.apply_op2_no_bwd(&out_g, &grad)?))
    }
}

/// The backward of [`TargetLogprob`]: z [M, V] and (out, g) [M, 2] to dz [M, V].
struct TargetLogprobGrad {
    targets: Vec<u32>,
}

impl CustomOp2 for TargetLogprobGrad {
    fn name(&self) -> &'static str {
        "rlp-target-logprob-grad"
    }

    fn cpu_fwd(&self, zs: &CpuStorage, zl: &Layout, os: &CpuStorage, ol: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, m, v) = cpu_rows(zs, zl)?;
        let (out_g, _, _) = cpu_rows(os, ol)?;
        let mut dz = vec![0f32; m * v];
        par_rows(&mut dz, v, |r, o| {
            let t = self.targets[r] as usize;
            let row = &z[r * v..(r + 1) * v];
            let (lp, g) = (out_g[2 * r], out_g[2 * r + 1]);
            let log_norm = row[t] - lp;
            for (oj, &x) in o.iter_mut().zip(row) {
                *oj = -g * exp_or_zero(x - log_norm);
            }
            o[t] += g;
        });
        Ok((CpuStorage::F32(dz), zl.shape().clone()))
    }
}

/// exp(z), with the 0 it rounds to written directly below [`EXP_UNDERFLOW`].
fn exp_or_zero(z: f32) -> f32 {
    if z < EXP_UNDERFLOW {
        0.0
    } else {
        z.exp()
    }
}

/// RMSNorm over the last dim: x / sqrt(mean(x²) + eps) · w. x [.., D], w [D]. Differentiable
/// in x and w; one pass forward, one backward (CPU f32), the reference composition elsewhere.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })?)
    } else {
        rms_norm_reference(x, w, eps)
    }
}

/// The composition `rms_norm` replaces.
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(y.broadcast_mul(w)?)
}

struct RmsNorm {
    eps: f32,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("fused op: expected contiguous f32"),
    }
}

/// 1 / sqrt(mean(x²) + eps) of one row.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rlp-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(xs, xl)?, f32_slice(ws, wl)?);
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        for (o, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let r = inv_rms(row, self.eps);
            for ((oi, &xi), &wi) in o.iter_mut().zip(row).zip(w) {
                *oi = xi * r * wi;
            }
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    /// With r = 1/rms(x), y = x·r·w:  dw = Σ_rows g·x·r,  dx = r·(g·w) − x·r³·mean(g·w·x).
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Detached: built from the tracked x and w, the gradients would carry a graph that keeps
        // the forward's activations alive for as long as the gradients live.
        let (x, w, g) = (x.detach(), w.detach(), g.detach());
        let d = w.dim(0)?;
        let x2 = x.reshape(((), d))?; // [N, D]
        let g2 = g.contiguous()?.reshape(((), d))?;
        let r = (x2.sqr()?.mean_keepdim(1)? + self.eps as f64)?.sqrt()?.recip()?; // [N, 1]
        let xr = x2.broadcast_mul(&r)?; // [N, D]
        let dw = (&g2 * &xr)?.sum(0)?; // [D]
        let gw = g2.broadcast_mul(&w)?; // [N, D]
        let proj = (&gw * &xr)?.mean_keepdim(1)?; // [N, 1] = r·mean(g·w·x)
        let dx = (gw - xr.broadcast_mul(&proj)?)?.broadcast_mul(&r)?; // r·(gw − x·r·proj)
        Ok((Some(dx.reshape(x.shape())?), Some(dw)))
    }
}

/// Softmax over the last dim, differentiable: one pass forward, one backward
/// (dx = y·(g − Σ g·y)) on CPU f32; candle's composition elsewhere.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1(SoftmaxLastDim)?)
    } else {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    }
}

/// The attention probabilities softmax(scores · scale + mask) over the last dim, differentiable
/// in the scores: scores [B, H, T, K] (any float dtype), mask [B, 1, T, K] f32 additive (0 or
/// `MASKED`), broadcast over the heads; returns f32. On the CPU with f32 scores it is one pass
/// forward and one backward with the scale and mask folded in, so neither the scaled nor the
/// masked scores (nor their gradients, nor a gradient for the mask) are materialised, and the
/// values are those of the composition; elsewhere the composition
/// ([`masked_softmax_reference`]).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t, k) = scores.dims4()?;
    if scores.device().is_cpu() && scores.dtype() == DType::F32 && mask.dtype() == DType::F32 {
        anyhow::ensure!(mask.dims() == [b, 1, t, k], "attention mask of shape {:?} for scores of shape {:?}", mask.dims(), scores.dims());
        Ok(scores.contiguous()?.apply_op2(&mask.contiguous()?, MaskedSoftmax { scale: scale as f32, heads: h, t })?)
    } else {
        masked_softmax_reference(scores, mask, scale)
    }
}

/// The composition `masked_softmax` replaces: scale in the scores' dtype, then mask and softmax
/// in f32.
pub fn masked_softmax_reference(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    softmax_last_dim(&(scores * scale)?.to_dtype(DType::F32)?.broadcast_add(mask)?)
}

/// Below this, exp(z) rounds to 0 in f32 (e^−104 is under half the smallest subnormal, 2^−150),
/// so the kernels write the 0 instead of calling exp, whose underflow path (errno) is slow: the
/// masked half of every causal attention row lands there.
const EXP_UNDERFLOW: f32 = -104.0;

/// Elements per task of the row-parallel kernels.
const PAR_ELEMS: usize = 1 << 14;

/// Runs `f(row index, row)` over the rows of `out` (each `d` long), in chunks over the rayon pool.
fn par_rows(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows_per_task = (PAR_ELEMS / d.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * d).enumerate().for_each(|(c, chunk)| {
        for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
            f(c * rows_per_task + i, row);
        }
    });
}

/// Softmax of one row in place.
fn softmax_in_place(row: &mut [f32]) {
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = exp_or_zero(*x - mx);
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "rlp-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let d = l.shape().dims().last().copied().unwrap_or(1);
        let mut out = x.to_vec();
        par_rows(&mut out, d, |_, row| softmax_in_place(row));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad { scale: None })?))
    }
}

/// softmax(x · scale + mask) for x [B, H, T, K] and mask [B, 1, T, K] (see `masked_softmax`).
struct MaskedSoftmax {
    scale: f32,
    heads: usize,
    t: usize,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "rlp-masked-softmax"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ms: &CpuStorage, ml: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, mask) = (f32_slice(xs, xl)?, f32_slice(ms, ml)?);
        let k = xl.shape().dims().last().copied().unwrap_or(1);
        let (h, t) = (self.heads, self.t);
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, k, |r, row| {
            let m = ((r / (h * t)) * t + r % t) * k; // row (b, h, i) reads mask row (b, i)
            for ((o, &xi), &mi) in row.iter_mut().zip(&x[r * k..(r + 1) * k]).zip(&mask[m..m + k]) {
                *o = xi * self.scale + mi;
            }
            softmax_in_place(row);
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _mask: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad { scale: Some(self.scale) })?;
        Ok((Some(dx), None)) // the mask is a constant
    }
}

/// dx = y·(g − Σ g·y) of a softmax over the last dim, times `scale` when the softmax's input was
/// scaled (the same rounding as the composition's separate multiply).
struct SoftmaxGrad {
    scale: Option<f32>,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "rlp-softmax-grad"
    }

    fn cpu_fwd(&self, ys: &CpuStorage, yl: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (f32_slice(ys, yl)?, f32_slice(gs, gl)?);
        let d = yl.shape().dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; y.len()];
        par_rows(&mut out, d, |r, o| {
            let (yr, gr) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((oi, &yi), &gi) in o.iter_mut().zip(yr).zip(gr) {
                *oi = yi * (gi - dot);
            }
            if let Some(s) = self.scale {
                o.iter_mut().for_each(|oi| *oi *= s);
            }
        });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// Rotary embedding in the "rotate half" layout, differentiable in x: x [B, H, T, hd] with
/// tables cos, sin [B, 1, T, hd] (halves duplicated, as `Rope::cos_sin` returns). The backward
/// is the inverse rotation (sin negated). CPU f32; `Rope::apply`'s composition elsewhere.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return super::rope::Rope::apply(x, &(cos.clone(), sin.clone()));
    }
    let (b, _, t, hd) = x.dims4()?;
    let table = |c: &Tensor| -> Result<Vec<f32>> { Ok(c.narrow(D::Minus1, 0, hd / 2)?.flatten_all()?.to_vec1::<f32>()?) }; // [B*T*hd/2]
    let op = RopeOp { cos: table(cos)?, sin: table(sin)?, b, t, sign: 1.0 };
    Ok(x.contiguous()?.apply_op1(op)?)
}

struct RopeOp {
    cos: Vec<f32>, // [B, T, hd/2]
    sin: Vec<f32>,
    b: usize,
    t: usize,
    /// +1 forward rotation, −1 its inverse (the backward).
    sign: f32,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rlp-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (b, h, t, hd) = l.shape().dims4()?;
        if b != self.b || t != self.t {
            candle_core::bail!("rope: input [{b}, {h}, {t}, {hd}] does not match tables for B={} T={}", self.b, self.t);
        }
        let half = hd / 2;
        let mut out = vec![0f32; x.len()];
        for (i, (o, row)) in out.chunks_exact_mut(hd).zip(x.chunks_exact(hd)).enumerate() {
            let (bi, ti) = (i / (h * t), i % t);
            let base = (bi * t + ti) * half;
            for j in 0..half {
                let (c, s) = (self.cos[base + j], self.sign * self.sin[base + j]);
                let (x1, x2) = (row[j], row[j + half]);
                o[j] = x1 * c - x2 * s;
                o[j + half] = x2 * c + x1 * s;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inverse = RopeOp { cos: self.cos.clone(), sin: self.sin.clone(), b: self.b, t: self.t, sign: -self.sign };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// SwiGLU's gating, silu(gate) · up, differentiable in both: one pass forward, one per input
/// backward (CPU f32); candle's composition elsewhere. gate, up [.., F].
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == DType::F32 && up.dtype() == DType::F32 {
        Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)?)
    } else {
        swiglu_reference(gate, up)
    }
}

/// The composition `swiglu` replaces.
pub fn swiglu_reference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "rlp-swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(gs, gl)?, f32_slice(us, ul)?);
        if gl.shape() != ul.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ in shape", gl.shape(), ul.shape());
        }
        let out: Vec<f32> = g.iter().zip(u).map(|(&g, &u)| g * sigmoid(g) * u).collect();
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    /// With s = σ(g): ∂/∂up = g·s, ∂/∂gate = up · s · (1 + g·(1 − s)).
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &grad, &SwigluGrad { wrt_gate: true })?;
        let d_up = gate.apply_op3_no_bwd(up, &grad, &SwigluGrad { wrt_gate: false })?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// One input's gradient of `Swiglu` from (gate, up, incoming gradient).
struct SwigluGrad {
    wrt_gate: bool,
}

impl candle_core::CustomOp3 for SwigluGrad {
    fn name(&self) -> &'static str {
        "rlp-swiglu-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout, ds: &CpuStorage, dl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u, d) = (f32_slice(gs, gl)?, f32_slice(us, ul)?, f32_slice(ds, dl)?);
        let out: Vec<f32> = if self.wrt_gate {
            g.iter().zip(u).zip(d).map(|((&g, &u), &d)| {
                let s = sigmoid(g);
                d * u * s * (1.0 + g * (1.0 - s))
            }).collect()
        } else {
            g.iter().zip(d).map(|(&g, &d)| d * g * sigmoid(g)).collect()
        };
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}
