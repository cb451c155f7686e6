//! NemotronH's blocks (`NemotronHForCausalLM`): every layer is `x + mixer(RMSNorm(x))` with one
//! mixer, a Mamba-2 mixer, GQA attention without positional encoding, or a relu² MLP. Weights
//! are the Hugging Face names under `backbone.layers.{i}`. The embedding, final norm, head and
//! the residual skeleton are the shared ones in `transformer.rs`.
//!
//! Not supported (refused by the config parser): MoE blocks, MTP layers, in/out_proj biases.
//!
//! Shapes: B rows, T tokens, D hidden, F MLP width, I = H·P Mamba inner width, H Mamba heads,
//! P Mamba head dim, G groups, N state size, C = I + 2·G·N conv channels, K conv width.

use super::config::{BlockKind, Config, Hybrid};
use super::kv_cache::KvCache;
use super::layers::{attend, linear, rms_norm, BlockInputs};
use super::layout::Segments;
use super::ssd;
use anyhow::{Context, Result};
use candle_core::{DType, Tensor, D};

pub struct Mamba2 {
    pub in_proj: Tensor,        // [I + C + H, D]: z, xBC, dt
    pub conv_w: Tensor,         // [C, 1, K]
    pub conv_b: Option<Tensor>, // [C]
    pub dt_bias: Tensor,        // [H]
    pub a_log: Tensor,          // [H]; A = −exp(A_log)
    pub d: Tensor,              // [H] skip
    pub norm: Tensor,           // [I] gated RMSNorm weight
    pub out_proj: Tensor,       // [D, I]
}

pub struct Attention {
    pub q_proj: Tensor, // [H*hd, D]
    pub k_proj: Tensor, // [KV*hd, D]
    pub v_proj: Tensor, // [KV*hd, D]
    pub o_proj: Tensor, // [D, H*hd]
}

pub struct Mlp {
    pub up_proj: Tensor,   // [F, D]
    pub down_proj: Tensor, // [D, F]
}

pub enum Mixer {
    Mamba(Mamba2),
    Attention(Attention),
    Mlp(Mlp),
}

pub struct HybridBlock {
    pub norm: Tensor, // [D]
    pub mixer: Mixer,
}

fn hybrid(cfg: &Config) -> Result<&Hybrid> {
    cfg.hybrid.as_ref().context("a NemotronH block needs the config's block list (`hybrid`)")
}

/// Every parameter of layer `i` (name relative to `backbone.layers.{i}.`, shape), in
/// transformers' `named_parameters()` order.
pub fn layer_shapes(cfg: &Config, kind: BlockKind) -> Result<Vec<(&'static str, Vec<usize>)>> {
    let hy = hybrid(cfg)?;
    let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let (h, c) = (hy.mamba_heads, hy.conv_dim());
    let mut out = vec![("norm.weight", vec![d])];
    match kind {
        BlockKind::Mamba => {
            out.extend([("mixer.dt_bias", vec![h]), ("mixer.A_log", vec![h]), ("mixer.D", vec![h]), ("mixer.conv1d.weight", vec![c, 1, hy.conv_kernel])]);
            if hy.conv_bias {
                out.push(("mixer.conv1d.bias", vec![c]));
            }
            out.extend([("mixer.in_proj.weight", vec![hy.in_proj_dim(), d]), ("mixer.norm.weight", vec![hy.inner()]), ("mixer.out_proj.weight", vec![d, hy.inner()])]);
        }
        BlockKind::Attention => out.extend([("mixer.q_proj.weight", vec![q, d]), ("mixer.k_proj.weight", vec![kv, d]), ("mixer.v_proj.weight", vec![kv, d]), ("mixer.o_proj.weight", vec![d, q])]),
        BlockKind::Mlp => out.extend([("mixer.up_proj.weight", vec![f, d]), ("mixer.down_proj.weight", vec![d, f])]),
    }
    Ok(out)
}

/// Build every block from tensors taken by full name and checked shape.
pub fn take_blocks(cfg: &Config, take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<Vec<HybridBlock>> {
    let hy = hybrid(cfg)?;
    let mut blocks = Vec::with_capacity(hy.blocks.len());
    for (i, &kind) in hy.blocks.iter().enumerate() {
        let mut get = |name: &str| -> Result<Tensor> {
            let shape = layer_shapes(cfg, kind)?.into_iter().find(|(n, _)| *n == name).map(|(_, s)| s).expect("a known parameter name");
            take(&format!("backbone.layers.{i}.{name}"), &shape)
        };
        let norm = get("norm.weight")?;
        let mixer = match kind {
            BlockKind::Mamba => Mixer::Mamba(Mamba2 {
                in_proj: get("mixer.in_proj.weight")?,
                conv_w: get("mixer.conv1d.weight")?,
                conv_b: if hy.conv_bias { Some(get("mixer.conv1d.bias")?) } else { None },
                dt_bias: get("mixer.dt_bias")?,
                a_log: get("mixer.A_log")?,
                d: get("mixer.D")?,
                norm: get("mixer.norm.weight")?,
                out_proj: get("mixer.out_proj.weight")?,
            }),
            BlockKind::Attention => Mixer::Attention(Attention { q_proj: get("mixer.q_proj.weight")?, k_proj: get("mixer.k_proj.weight")?, v_proj: get("mixer.v_proj.weight")?, o_proj: get("mixer.o_proj.weight")? }),
            BlockKind::Mlp => Mixer::Mlp(Mlp { up_proj: get("mixer.up_proj.weight")?, down_proj: get("mixer.down_proj.weight")? }),
        };
        blocks.push(HybridBlock { norm, mixer });
    }
    Ok(blocks)
}

impl HybridBlock {
    /// This block's parameters with their Hugging Face names, in `layer_shapes` order.
    pub fn named_tensors(&self, i: usize) -> Vec<(String, Tensor)> {
        let mut out = vec![("norm.weight", self.norm.clone())];
        match &self.mixer {
            Mixer::Mamba(m) => {
                out.extend([("mixer.dt_bias", m.dt_bias.clone()), ("mixer.A_log", m.a_log.clone()), ("mixer.D", m.d.clone()), ("mixer.conv1d.weight", m.conv_w.clone())]);
                if let Some(b) = &m.conv_b {
                    out.push(("mixer.conv1d.bias", b.clone()));
                }
                out.extend([("mixer.in_proj.weight", m.in_proj.clone()), ("mixer.norm.weight", m.norm.clone()), ("mixer.out_proj.weight", m.out_proj.clone())]);
            }
            Mixer::Attention(a) => out.extend([("mixer.q_proj.weight", a.q_proj.clone()), ("mixer.k_proj.weight", a.k_proj.clone()), ("mixer.v_proj.weight", a.v_proj.clone()), ("mixer.o_proj.weight", a.o_proj.clone())]),
            Mixer::Mlp(m) => out.extend([("mixer.up_proj.weight", m.up_proj.clone()), ("mixer.down_proj.weight", m.down_proj.clone())]),
        }
        out.into_iter().map(|(n, t)| (format!("backbone.layers.{i}.{n}"), t)).collect()
    }

    /// x [B, T, D] -> x + mixer(RMSNorm(x)), [B, T, D]. `cache` is (cache, this layer's index).
    pub fn forward(&self, cfg: &Config, x: &Tensor, inp: &BlockInputs, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let xn = rms_norm(x, &self.norm, cfg.rms_norm_eps)?;
        let y = match &self.mixer {
            Mixer::Mamba(m) => m.forward(cfg, &xn, inp, cache)?,
            Mixer::Attention(a) => a.forward(cfg, &xn, &inp.mask, cache)?,
            Mixer::Mlp(m) => m.forward(&xn)?,
        };
        Ok((x + y)?)
    }
}

impl Mlp {
    /// down(relu(up x)²): [B, T, D] -> [B, T, D].
    fn forward(&self, xn: &Tensor) -> Result<Tensor> {
        let u = linear(xn, &self.up_proj, None)?.relu()?.sqr()?; // [B, T, F]
        linear(&u, &self.down_proj, None)
    }
}

impl Attention {
    /// GQA without RoPE: [B, T, D] -> [B, T, D]; mask [B, 1, T, K].
    fn forward(&self, cfg: &Config, xn: &Tensor, mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let (b, t, _) = xn.dims3()?;
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let q = linear(xn, &self.q_proj, None)?.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?; // [B, H, T, hd]
        let k = linear(xn, &self.k_proj, None)?.reshape((b, t, kv, hd))?.transpose(1, 2)?.contiguous()?; // [B, KV, T, hd]
        let v = linear(xn, &self.v_proj, None)?.reshape((b, t, kv, hd))?.transpose(1, 2)?.contiguous()?; // [B, KV, T, hd]
        let ctx = attend(&q, &k, &v, mask, cache)?; // [B, T, H*hd]
        linear(&ctx, &self.o_proj, None)
    }
}

/// softplus(x) = log(1 + eˣ), computed as max(x, 0) + log(1 + e^−|x|) (no overflow).
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// Causal depthwise conv over time: xbc [B, T, C], w [C, 1, K], bias [C], `prev` the K−1 inputs
/// before these (zeros when None), [B, K−1, C]. out[t] = Σ_k w[k]·in[t−(K−1)+k] (+ bias); with
/// `segments`, taps reaching into an earlier document read 0. Returns (out [B, T, C], the last
/// K−1 inputs [B, K−1, C] for the next call).
fn causal_conv(xbc: &Tensor, w: &Tensor, bias: Option<&Tensor>, prev: Option<&Tensor>, segments: Option<&Segments>) -> Result<(Tensor, Tensor)> {
    let (b, t, c) = xbc.dims3()?;
    let k = w.dim(2)?;
    let prev = match prev {
        Some(p) => p.to_dtype(xbc.dtype())?,
        None => Tensor::zeros((b, k - 1, c), xbc.dtype(), xbc.device())?,
    };
    let ext = Tensor::cat(&[&prev, xbc], 1)?; // [B, T+K−1, C]
    let taps = w.squeeze(1)?.t()?.contiguous()?; // [K, C]
    let mut out: Option<Tensor> = None;
    for j in 0..k {
        let mut term = ext.narrow(1, j, t)?.broadcast_mul(&taps.get(j)?)?; // [B, T, C]
        if let Some(s) = segments {
            let back = k - 1 - j; // this tap reads token t − back
            if back > 0 {
                let keep: Vec<f32> = s.ids.iter().flat_map(|row| (0..t).map(move |i| if i >= back && row[i - back] != row[i] { 0.0 } else { 1.0 })).collect();
                term = term.broadcast_mul(&Tensor::from_vec(keep, (b, t, 1), xbc.device())?.to_dtype(xbc.dtype())?)?;
            }
        }
        out = Some(match out {
            None => term,
            Some(o) => (o + term)?,
        });
    }
    let mut out = out.context("conv_kernel must be positive")?;
    if let Some(bias) = bias {
        out = out.broadcast_add(bias)?;
    }
    Ok((out, ext.narrow(1, t, k - 1)?))
}

impl Mamba2 {
    /// The Mamba-2 mixer: [B, T, D] -> [B, T, D]. Padding tokens (`inp.real` = 0) are zeroed
    /// before `in_proj` and after the conv, so they add nothing to the conv window or the state
    /// (left padding is exact). With a cache: the conv and SSM state continue from it and are
    /// stored back; one new token takes the single-step recurrence, more `ssd::scan` (fused on the
    /// CPU, the chunked scan elsewhere).
    fn forward(&self, cfg: &Config, xn: &Tensor, inp: &BlockInputs, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let hy = hybrid(cfg)?;
        let (b, t, _) = xn.dims3()?;
        let (i_w, h, p, g, n, c) = (hy.inner(), hy.mamba_heads, hy.mamba_head_dim, hy.n_groups, hy.ssm_state_size, hy.conv_dim());
        let real = inp.real.as_ref().context("the Mamba mixer needs the padding mask")?; // [B, T, 1]
        let proj = linear(&xn.broadcast_mul(real)?, &self.in_proj, None)?; // [B, T, I + C + H]
        let z = proj.narrow(2, 0, i_w)?; // [B, T, I]
        let xbc = proj.narrow(2, i_w, c)?; // [B, T, C]
        let dt_raw = proj.narrow(2, i_w + c, h)?; // [B, T, H]
        let (mut cache, layer) = match cache {
            Some((c, l)) => (Some(c), l),
            None => (None, 0),
        };
        let prev = match &cache {
            Some(c) => c.ssm_state(layer)?.cloned(),
            None => None,
        };
        let (conv, tail) = causal_conv(&xbc, &self.conv_w, self.conv_b.as_ref(), prev.as_ref().map(|s| &s.0), inp.segments.as_ref())?;
        let xbc = conv.silu()?.broadcast_mul(real)?; // [B, T, C]
        let x = xbc.narrow(2, 0, i_w)?.reshape((b, t, h, p))?;
        let bm = xbc.narrow(2, i_w, g * n)?.reshape((b, t, g, n))?;
        let cm = xbc.narrow(2, i_w + g * n, g * n)?.reshape((b, t, g, n))?;
        let a = self.a_log.to_dtype(DType::F32)?.exp()?.neg()?; // [H]
        let dt = softplus(&dt_raw.to_dtype(DType::F32)?.broadcast_add(&self.dt_bias.to_dtype(DType::F32)?)?)?; // [B, T, H]
        let (y, state) = match &prev {
            // transformers' cached single-token path: the plain recurrence, dt not clamped
            Some((_, s)) if t == 1 => {
                let (y, s) = ssd::step(&x.squeeze(1)?, &dt.squeeze(1)?, &a, &bm.squeeze(1)?, &cm.squeeze(1)?, s)?;
                (y.unsqueeze(1)?, s)
            }
            _ => {
                let dt = dt.maximum(hy.time_step_min)?;
                ssd::scan(&x, &dt, &a, &bm, &cm, prev.as_ref().map(|s| &s.1), hy.chunk_size, inp.segments.as_ref())?
            }
        };
        if let Some(c) = cache.as_deref_mut() {
            c.set_ssm_state(layer, tail, state)?;
        }
        // D skip, then the gated RMSNorm per group: normalise y·silu(z) over each group's I/G.
        let y = (y + x.to_dtype(DType::F32)?.broadcast_mul(&self.d.to_dtype(DType::F32)?.reshape((1, 1, h, 1))?)?)?; // [B, T, H, P]
        let gated = (y.reshape((b, t, i_w))? * z.to_dtype(DType::F32)?.silu()?)?.reshape((b, t, g, i_w / g))?;
        let ms = gated.sqr()?.mean_keepdim(D::Minus1)?; // [B, T, G, 1]
        let normed = gated.broadcast_div(&(ms + cfg.rms_norm_eps)?.sqrt()?)?.reshape((b, t, i_w))?.to_dtype(xn.dtype())?;
        linear(&normed.broadcast_mul(&self.norm)?, &self.out_proj, None)
    }
}
