//! The Mamba-2 selective state-space scan, built from differentiable candle ops.
//!
//! Recurrence, per head h (group g = h / (H/G)) and time t:
//!   S_t = exp(dt_t·A_h)·S_{t-1} + dt_t·x_t ⊗ B_t,   y_t = S_t · C_t
//! `chunked_scan` computes it in the state-space dual (SSD) form: within each chunk of L tokens
//! a masked L×L "attention" matrix (C·Bᵀ weighted by the decays), per chunk the state it adds,
//! and between chunks a (chunks+1)² decay matrix that carries the states forward. Every piece is
//! a matmul or an elementwise op, so gradients reach x, dt, A, B, C and the initial state.
//! `step` is the one-token recurrence used by cached decoding, and `sequential_scan` (steps in a
//! loop) is the naive reference the chunked form is tested against. `scan` is what the model
//! calls: on the CPU the fused op of `ssd_fused.rs` (the same recurrence with a hand-written
//! backward, tested against `chunked_scan`), elsewhere `chunked_scan`.
//!
//! Not here: the D skip, the gate and the projections (the mixer in `nemotron_h.rs`). The scan
//! runs in f32 whatever the compute dtype (its exp/cumsum chains are too lossy in bf16), or in
//! f64 when given f64 inputs (the finite-difference tests).
//!
//! Shapes: B rows, T tokens, H heads, P head dim, G groups, R = H/G heads per group, N state
//! size, L chunk length, C chunks.

use super::layout::Segments;
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};

/// exp(Σ_{j<k≤i} a_k) for i ≥ j, 0 above the diagonal: a [.., n] -> [.., n, n]. The sums are
/// taken as masked cumulative sums (no difference of two long prefix sums, so no cancellation).
fn segsum_exp(a: &Tensor) -> Result<Tensor> {
    let n = a.dim(D::Minus1)?;
    let dev = a.device();
    // strict[i, j] = 1 for j < i: keeps a_i in column j when j < i.
    let strict: Vec<f32> = (0..n * n).map(|e| if e % n < e / n { 1.0 } else { 0.0 }).collect();
    let lower: Vec<f32> = (0..n * n).map(|e| if e % n <= e / n { 1.0 } else { 0.0 }).collect();
    let strict = Tensor::from_vec(strict, (n, n), dev)?.to_dtype(a.dtype())?;
    let lower = Tensor::from_vec(lower, (n, n), dev)?.to_dtype(a.dtype())?;
    // x[.., i, j] = a_i · [j < i]; cumulative sum over i: Σ_{k ≤ i, k > j} a_k, as one 2-D
    // matmul of xᵀ rows [.., j, i] with upper[i, i'] = [i ≤ i'] (candle's CPU matmul takes at
    // most two leading dims, so `cumsum` on these ranks fails).
    let x = a.unsqueeze(D::Minus1)?.broadcast_mul(&strict)?; // [.., n, n]
    let rows = x.elem_count() / n;
    let sums = x.transpose(D::Minus1, D::Minus2)?.contiguous()?.reshape((rows, n))?.matmul(&lower.t()?.contiguous()?)?;
    let sums = sums.reshape(x.shape())?.transpose(D::Minus1, D::Minus2)?; // [.., i, j]
    Ok(sums.exp()?.broadcast_mul(&lower)?)
}

/// The dtype the scan computes in: f64 stays f64, everything else becomes f32.
fn scan_dtype(t: &Tensor) -> Result<Tensor> {
    Ok(if t.dtype() == DType::F64 { t.clone() } else { t.to_dtype(DType::F32)? })
}

/// Cumulative sum over the last dim, any rank: [.., n] -> [.., n].
fn cumsum_last(a: &Tensor) -> Result<Tensor> {
    let n = a.dim(D::Minus1)?;
    let upper: Vec<f32> = (0..n * n).map(|e| if e / n <= e % n { 1.0 } else { 0.0 }).collect();
    let upper = Tensor::from_vec(upper, (n, n), a.device())?.to_dtype(a.dtype())?;
    Ok(a.contiguous()?.reshape((a.elem_count() / n, n))?.matmul(&upper)?.reshape(a.shape())?)
}

/// Batched matmul over any number of leading dims (candle's CPU matmul takes at most two):
/// a [.., m, k] · b [.., k, n] -> [.., m, n], equal leading dims.
fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = a.dims().to_vec();
    let r = dims.len();
    let (m, k, n) = (dims[r - 2], dims[r - 1], b.dim(D::Minus1)?);
    let batch: usize = dims[..r - 2].iter().product();
    let y = a.contiguous()?.reshape((batch, m, k))?.matmul(&b.contiguous()?.reshape((batch, k, n))?)?;
    let mut out = dims;
    out[r - 1] = n;
    Ok(y.reshape(out)?)
}

/// Heads of each group from per-group tensors: [B, T, G, N] -> [B, T, H, N] (head h reads group
/// h / R, the "blocked" assignment).
fn groups_to_heads(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n_t, g, n) = t.dims4()?;
    Ok(t.unsqueeze(3)?.broadcast_as((b, n_t, g, heads / g, n))?.reshape((b, n_t, heads, n))?)
}

/// The scan the model runs: the fused op (`ssd_fused::fused_scan`, its own backward) on the CPU,
/// `chunked_scan` on other devices. Same arguments and results as `chunked_scan`.
pub fn scan(x: &Tensor, dt: &Tensor, a: &Tensor, bm: &Tensor, cm: &Tensor, init: Option<&Tensor>, chunk: usize, segments: Option<&Segments>) -> Result<(Tensor, Tensor)> {
    if x.device().is_cpu() {
        super::ssd_fused::fused_scan(x, dt, a, bm, cm, init, segments)
    } else {
        chunked_scan(x, dt, a, bm, cm, init, chunk, segments)
    }
}

/// The scan over T tokens from `init` (zeros when None), chunk length `chunk`.
/// x [B, T, H, P], dt [B, T, H] (already softplus'ed), a [H] (negative), bm, cm [B, T, G, N],
/// init [B, H, P, N]. Returns y [B, T, H, P] (no D skip) and the final state [B, H, P, N], f32.
pub fn chunked_scan(x: &Tensor, dt: &Tensor, a: &Tensor, bm: &Tensor, cm: &Tensor, init: Option<&Tensor>, chunk: usize, segments: Option<&Segments>) -> Result<(Tensor, Tensor)> {
    let (x, dt, a, bm, cm) = (scan_dtype(x)?, scan_dtype(dt)?, scan_dtype(a)?, scan_dtype(bm)?, scan_dtype(cm)?);
    let (b, t, h, p) = x.dims4()?;
    let (_, _, g, n) = bm.dims4()?;
    ensure!(h % g == 0 && dt.dims() == [b, t, h] && a.dims() == [h] && cm.dims() == bm.dims() && bm.dims()[..2] == [b, t], "chunked_scan: inconsistent shapes x {:?} dt {:?} a {:?} B {:?} C {:?}", x.dims(), dt.dims(), a.dims(), bm.dims(), cm.dims());
    let r = h / g;
    let l = chunk.min(t).max(1);
    let nc = t.div_ceil(l);
    let pad = nc * l - t;
    // Zero padding at the end: dt = 0 there, so padded tokens neither decay nor add to the state.
    let pad_t = |v: &Tensor| -> Result<Tensor> { Ok(if pad > 0 { v.pad_with_zeros(1, 0, pad)? } else { v.clone() }) };
    let (x, dt, bm, cm) = (pad_t(&x)?, pad_t(&dt)?, pad_t(&bm)?, pad_t(&cm)?);
    let xdt = x.broadcast_mul(&dt.unsqueeze(3)?)?; // [B, Tp, H, P]
    let adt = dt.broadcast_mul(&a)?; // [B, Tp, H]
    let adt = adt.reshape((b, nc, l, h))?.permute((0, 3, 1, 2))?.contiguous()?; // [B, H, C, L]
    let acs = cumsum_last(&adt)?; // [B, H, C, L]: Σ dt·A from the chunk's start
    let bm = bm.reshape((b, nc, l, g, n))?.permute((0, 3, 1, 2, 4))?.contiguous()?; // [B, G, C, L, N]
    let cm = cm.reshape((b, nc, l, g, n))?.permute((0, 3, 1, 2, 4))?.contiguous()?; // [B, G, C, L, N]
    let xdt = xdt.reshape((b, nc, l, g, r, p))?.permute((0, 3, 4, 1, 2, 5))?.contiguous()?; // [B, G, R, C, L, P]
    let seg = segments.map(|s| SegMasks::new(s, b, t, nc, l, x.device(), x.dtype())).transpose()?;

    // 1. Within chunks: y_diag[l] = Σ_{s ≤ l} (C_l·B_s) exp(Σ_{s<k≤l} dt·A) dt_s x_s.
    let cb = bmm(&cm, &bm.t()?)?; // [B, G, C, L, L]
    let decay = segsum_exp(&adt)?.reshape((b, g, r, nc, l, l))?; // [B, G, R, C, L, L]
    let mut m = decay.broadcast_mul(&cb.unsqueeze(2)?)?;
    if let Some(s) = &seg {
        m = m.broadcast_mul(&s.within)?;
    }
    let y_diag = bmm(&m, &xdt)?; // [B, G, R, C, L, P]

    // 2. The state each chunk adds by its end: Σ_s exp(Σ_{s<k≤end} dt·A) dt_s x_s ⊗ B_s.
    let acs_last = acs.narrow(3, l - 1, 1)?; // [B, H, C, 1]
    let mut to_end = acs_last.broadcast_sub(&acs)?.exp()?.reshape((b, g, r, nc, l, 1))?;
    if let Some(s) = &seg {
        to_end = to_end.broadcast_mul(&s.to_end)?;
    }
    let xw = xdt.broadcast_mul(&to_end)?.permute((0, 1, 3, 2, 5, 4))?.contiguous()?.reshape((b, g, nc, r * p, l))?;
    let states = bmm(&xw, &bm)?; // [B, G, C, R*P, N]
    let states = states.reshape((b, g, nc, r, p * n))?.permute((0, 1, 3, 2, 4))?.reshape((b, h, nc, p * n))?;

    // 3. Between chunks: the state entering chunk c is Σ_{c' ≤ c} decay(c'→c) · states_in[c'],
    // states_in = [init, chunk 0's, chunk 1's, …].
    let init = match init {
        Some(s) => s.to_dtype(x.dtype())?.reshape((b, h, 1, p * n))?,
        None => Tensor::zeros((b, h, 1, p * n), x.dtype(), x.device())?,
    };
    let states_in = Tensor::cat(&[&init, &states], 2)?; // [B, H, C+1, P*N]
    let chunk_sums = acs_last.squeeze(3)?.pad_with_zeros(2, 1, 0)?; // [B, H, C+1], 0 first
    let mut carry = segsum_exp(&chunk_sums)?; // [B, H, C+1, C+1]
    if let Some(s) = &seg {
        carry = carry.broadcast_mul(&s.carry)?;
    }
    let entering = bmm(&carry, &states_in)?; // [B, H, C+1, P*N]
    let final_state = entering.narrow(2, nc, 1)?.reshape((b, h, p, n))?;
    let entering = entering.narrow(2, 0, nc)?.reshape((b, g, r, nc, p, n))?;

    // 4. Each token reads the state entering its chunk, decayed to it: C_l · exp(Σ_{k≤l} dt·A) S.
    let entering = entering.permute((0, 1, 3, 5, 2, 4))?.contiguous()?.reshape((b, g, nc, n, r * p))?;
    let y_off = bmm(&cm, &entering)?.reshape((b, g, nc, l, r, p))?.permute((0, 1, 4, 2, 3, 5))?; // [B, G, R, C, L, P]
    let mut from_start = acs.exp()?.reshape((b, g, r, nc, l, 1))?;
    if let Some(s) = &seg {
        from_start = from_start.broadcast_mul(&s.from_start)?;
    }
    let y = (y_diag + y_off.broadcast_mul(&from_start)?)?; // [B, G, R, C, L, P]
    let y = y.permute((0, 3, 4, 1, 2, 5))?.reshape((b, nc * l, h, p))?.narrow(1, 0, t)?;
    Ok((y, final_state))
}

/// 0/1 masks that keep the scan inside documents, broadcastable against the chunked tensors.
struct SegMasks {
    within: Tensor,     // [B, 1, 1, C, L, L]: same document (token l, token s)
    to_end: Tensor,     // [B, 1, 1, C, L, 1]: token s is in the document of its chunk's last token
    carry: Tensor,      // [B, 1, C+1, C+1]: chunk c' ends in the document chunk c ends in
    from_start: Tensor, // [B, 1, 1, C, L, 1]: token l is in the document of the previous chunk's end
}

impl SegMasks {
    fn new(s: &Segments, b: usize, t: usize, nc: usize, l: usize, dev: &candle_core::Device, dtype: DType) -> Result<Self> {
        ensure!(s.ids.len() == b && s.ids.iter().all(|r| r.len() == t), "segment ids must be [B][T] = [{b}][{t}]");
        // Padded tokens (beyond t) continue the last document; they carry dt = 0 anyway.
        let id = |row: usize, i: usize| s.ids[row][i.min(t - 1)];
        // The document of the state entering chunk k (k = 0: the initial state, which belongs
        // to the first document; k ≥ 1: the state after chunk k−1, its last token's document).
        // It is also the document of states_in[k] in the carry between chunks.
        let doc = |row: usize, k: usize| if k == 0 { id(row, 0) } else { id(row, k * l - 1) };
        let (mut within, mut to_end, mut carry, mut from_start) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let one = |c: bool| if c { 1f32 } else { 0.0 };
        for row in 0..b {
            for c in 0..nc {
                let end = c * l + l - 1;
                for i in 0..l {
                    for j in 0..l {
                        within.push(one(id(row, c * l + i) == id(row, c * l + j)));
                    }
                    to_end.push(one(id(row, c * l + i) == id(row, end)));
                    from_start.push(one(id(row, c * l + i) == doc(row, c)));
                }
            }
            for z in 0..=nc {
                for c in 0..=nc {
                    carry.push(one(doc(row, z) == doc(row, c)));
                }
            }
        }
        Ok(SegMasks {
            within: Tensor::from_vec(within, (b, 1, 1, nc, l, l), dev)?.to_dtype(dtype)?,
            to_end: Tensor::from_vec(to_end, (b, 1, 1, nc, l, 1), dev)?.to_dtype(dtype)?,
            carry: Tensor::from_vec(carry, (b, 1, nc + 1, nc + 1), dev)?.to_dtype(dtype)?,
            from_start: Tensor::from_vec(from_start, (b, 1, 1, nc, l, 1), dev)?.to_dtype(dtype)?,
        })
    }
}

/// One token of the recurrence (no dt clamp, as transformers' cached path). x [B, H, P],
/// dt [B, H], a [H], bm, cm [B, G, N], state [B, H, P, N] f32. Returns y [B, H, P] and the new
/// state, f32.
pub fn step(x: &Tensor, dt: &Tensor, a: &Tensor, bm: &Tensor, cm: &Tensor, state: &Tensor) -> Result<(Tensor, Tensor)> {
    let (x, dt, a, bm, cm) = (scan_dtype(x)?, scan_dtype(dt)?, scan_dtype(a)?, scan_dtype(bm)?, scan_dtype(cm)?);
    let (b, h, _p) = x.dims3()?;
    let bh = groups_to_heads(&bm.unsqueeze(1)?, h)?.squeeze(1)?; // [B, H, N]
    let ch = groups_to_heads(&cm.unsqueeze(1)?, h)?.squeeze(1)?; // [B, H, N]
    let da = dt.broadcast_mul(&a)?.exp()?.reshape((b, h, 1, 1))?; // [B, H, 1, 1]
    let xdt = x.broadcast_mul(&dt.unsqueeze(2)?)?; // [B, H, P]
    let state = (state.to_dtype(x.dtype())?.broadcast_mul(&da)? + xdt.unsqueeze(3)?.broadcast_mul(&bh.unsqueeze(2)?)?)?; // [B, H, P, N]
    let y = bmm(&state, &ch.unsqueeze(3)?)?.squeeze(3)?; // [B, H, P]
    Ok((y, state))
}

/// The naive reference: `step` over every token in order. Same arguments and results as
/// `chunked_scan` (without segments).
pub fn sequential_scan(x: &Tensor, dt: &Tensor, a: &Tensor, bm: &Tensor, cm: &Tensor, init: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let (b, t, h, p) = x.dims4()?;
    let n = bm.dim(3)?;
    let mut state = match init {
        Some(s) => s.clone(),
        None => Tensor::zeros((b, h, p, n), scan_dtype(x)?.dtype(), x.device())?,
    };
    let mut ys = Vec::with_capacity(t);
    for i in 0..t {
        let at = |v: &Tensor| v.narrow(1, i, 1).and_then(|v| v.squeeze(1));
        let (y, s) = step(&at(x)?, &at(dt)?, a, &at(bm)?, &at(cm)?, &state)?;
        ys.push(y);
        state = s;
    }
    Ok((Tensor::stack(&ys, 1)?, state))
}
