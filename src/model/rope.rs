//! Rotary position embeddings, Hugging Face "rotate half" layout, differentiable.

use super::config::Config;
use anyhow::Result;
use candle_core::{Device, Tensor, D};

pub struct Rope {
    /// [hd/2] inverse frequencies (after llama3 scaling when configured).
    pub inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(cfg: &Config) -> Self {
        let hd = cfg.head_dim;
        let mut inv_freq: Vec<f64> = (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64)).collect();
        if let Some(s) = cfg.rope_scaling {
            // transformers' `_compute_llama3_parameters`.
            let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        Rope { inv_freq }
    }

    /// cos and sin tables for B*T positions, each [B, 1, T, hd] (halves duplicated).
    pub fn cos_sin(&self, positions: &[u32], b: usize, t: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let hd = 2 * half;
        let mut cos = Vec::with_capacity(b * t * hd);
        let mut sin = Vec::with_capacity(b * t * hd);
        for &p in positions {
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    // f32 product, as transformers computes it
                    let angle = (p as f32 * f as f32) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        Ok((Tensor::from_vec(cos, (b, 1, t, hd), dev)?, Tensor::from_vec(sin, (b, 1, t, hd), dev)?))
    }

    /// x [B, H, T, hd] -> x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1].
    pub fn apply(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
    }

    /// Same as [`apply`](Self::apply) with candle's fused kernel (no gradient): x [B, H, T, hd]
    /// contiguous, tables as returned by [`cos_sin`](Self::cos_sin).
    pub fn apply_inference(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let table = |c: &Tensor| -> Result<Tensor> { Ok(c.narrow(D::Minus1, 0, half)?.squeeze(1)?.contiguous()?) }; // [B, T, hd/2]
        Ok(candle_nn::rotary_emb::rope(x, &table(cos)?, &table(sin)?)?)
    }
}
