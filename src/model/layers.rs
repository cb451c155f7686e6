//! What both kinds of residual block are built from: the linear map, RMSNorm, grouped-query
//! attention over an additive mask (through the KV cache when decoding), and `BlockInputs`, what
//! every block of one forward reads besides its input. The decoder layer is `transformer.rs`'s,
//! NemotronH's blocks are `nemotron_h.rs`'s.
//!
//! Shapes: B batch rows, T query tokens, K key tokens (past + T), H query heads, KV key/value
//! heads, R = H / KV heads per group, hd head dim.

use super::fused;
use super::kv_cache::KvCache;
use super::layout::Segments;
use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// What every block of one forward reads besides its input.
pub struct BlockInputs {
    /// RoPE (cos, sin) tables; None for NemotronH (no positional encoding).
    pub cos_sin: Option<(Tensor, Tensor)>,
    /// [B, 1, T, K] additive attention mask.
    pub mask: Tensor,
    /// NemotronH: [B, T, 1] 1 for real tokens, 0 for padding (compute dtype).
    pub real: Option<Tensor>,
    /// NemotronH: the documents of rows that pack several (None: one per row).
    pub segments: Option<Segments>,
}

/// Up to this many rows, `linear` multiplies as (w · xᵀ)ᵀ.
const SKINNY_ROWS: usize = 32;

pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    // x [..., in] · w[out, in]ᵀ (+ b[out]) -> [..., out]
    let dims = x.dims().to_vec();
    let n_in = *dims.last().unwrap();
    let rows = x.elem_count() / n_in;
    let x2 = x.reshape((rows, n_in))?;
    // Few rows (batched decode): (w · xᵀ)ᵀ runs 1.7–1.9× faster than x · wᵀ in candle's CPU
    // gemm at 16 rows × 576/1536 features (examples/mm_shapes.rs, BENCHMARKS.md); same math.
    // Only without gradient: with w as the matmul's left operand, candle would build w's
    // gradient from the tracked activations and keep them alive through it.
    let skinny = rows <= SKINNY_ROWS && x.device().is_cpu() && !w.track_op();
    let y = if skinny { w.matmul(&x2.t()?)?.t()? } else { x2.matmul(&w.t()?)? };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = w.dim(0)?;
    Ok(y.reshape(out_dims)?)
}

/// RMSNorm over the last dim: x / sqrt(mean(x²) + eps) · w. The normalisation runs in f32
/// whatever x's dtype (bf16 compute), then returns to x's dtype before the scale, as
/// transformers does.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return fused::rms_norm(x, w, eps); // one fused pass on CPU
    }
    let dt = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dt)?;
    Ok(y.broadcast_mul(w)?)
}

/// Scaled dot-product attention with grouped KV heads: q [B, H, T, hd], k, v [B, KV, T, hd]
/// (appended to the cache's layer first when given), mask [B, 1, T, K]. Returns [B, T, H*hd].
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let kv = k.dim(1)?;
    let (k, v) = match cache {
        Some((c, layer)) => c.append(layer, k, v)?, // [B, KV, K, hd]
        None => (k.clone(), v.clone()),
    };
    let kl = k.dim(2)?;
    let r = h / kv;
    // Group the R query heads of each KV head so K/V need no repeat: [B, KV, R*T, hd].
    let qg = q.reshape((b, kv, r * t, hd))?;
    let scores = qg.matmul(&k.t()?)?.reshape((b, h, t, kl))?; // [B, KV, R*T, K] = [B, H, T, K]
    // scale, mask and softmax in one op; mask and softmax in f32 whatever the compute dtype
    let probs = fused::masked_softmax(&scores, mask, 1.0 / (hd as f64).sqrt())?.to_dtype(q.dtype())?;
    let ctx = probs.reshape((b, kv, r * t, kl))?.matmul(&v)?; // [B, KV, R*T, hd]
    Ok(ctx.reshape((b, h, t, hd))?.transpose(1, 2)?.reshape((b, t, h * hd))?)
}
