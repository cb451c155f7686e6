//! Preallocated key/value cache for no-grad incremental decoding, and beside it the recurrent
//! state of NemotronH's Mamba-2 layers (the last K−1 conv inputs and the SSM state per row).
//!
//! Rows are left-aligned to a shared column: row b's real keys live in columns
//! `row_start[b]..len`, earlier columns are padding that the attention mask hides. This lets
//! ragged prompts decode together, and rows can be duplicated (G rollouts of one prefix) or
//! dropped (finished rollouts) with one `index_select` per layer.

use super::config::BlockKind;
use super::layout::AttnLayout;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// What one layer keeps between decode steps.
pub enum LayerState {
    /// Attention: keys and values, [B, KV, cap, hd] each.
    Kv { k: Tensor, v: Tensor },
    /// Mamba-2: conv [B, K−1, conv channels] (the last K−1 inputs of the causal conv, compute
    /// dtype) and ssm [B, H, P, N] (f32). Empty (`None`) until the layer's first forward.
    Ssm(Option<(Tensor, Tensor)>),
    /// A block that keeps nothing (MLP).
    Stateless,
}

pub struct KvCache {
    layers: Vec<LayerState>,
    len: usize,
    cap: usize,
    /// First real key column of each row.
    pub row_start: Vec<usize>,
    /// RoPE position the next token of each row will take.
    pub next_pos: Vec<u32>,
}

impl KvCache {
    /// Zeroed keys and values in `dtype` (the model's compute dtype) on `dev`.
    pub fn new(layers: usize, batch: usize, kv_heads: usize, head_dim: usize, cap: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let kinds = vec![BlockKind::Attention; layers];
        Self::hybrid(&kinds, batch, kv_heads, head_dim, cap, dtype, dev)
    }

    /// A cache for layers of these kinds: KV for attention, an empty recurrent state for Mamba
    /// (filled by the layer's first forward), nothing for MLP blocks.
    pub fn hybrid(kinds: &[BlockKind], batch: usize, kv_heads: usize, head_dim: usize, cap: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let z = || Tensor::zeros((batch, kv_heads, cap, head_dim), dtype, dev);
        let layers = kinds
            .iter()
            .map(|k| {
                Ok(match k {
                    BlockKind::Attention => LayerState::Kv { k: z()?, v: z()? },
                    BlockKind::Mamba => LayerState::Ssm(None),
                    BlockKind::Mlp => LayerState::Stateless,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers, len: 0, cap, row_start: vec![0; batch], next_pos: vec![0; batch] })
    }

    /// The recurrent state of Mamba layer `layer`: None before its first forward.
    pub fn ssm_state(&self, layer: usize) -> Result<Option<&(Tensor, Tensor)>> {
        match &self.layers[layer] {
            LayerState::Ssm(s) => Ok(s.as_ref()),
            _ => bail!("cache layer {layer} holds no recurrent state"),
        }
    }

    /// Store the recurrent state (conv [B, K−1, C], ssm [B, H, P, N]) of Mamba layer `layer`.
    pub fn set_ssm_state(&mut self, layer: usize, conv: Tensor, ssm: Tensor) -> Result<()> {
        match &mut self.layers[layer] {
            LayerState::Ssm(s) => *s = Some((conv.detach().contiguous()?, ssm.detach().contiguous()?)),
            _ => bail!("cache layer {layer} holds no recurrent state"),
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    pub fn batch(&self) -> usize {
        self.row_start.len()
    }

    /// Write this step's k/v [B, KV, T, hd] for `layer` after the cached columns; returns the
    /// keys and values to attend over, [B, KV, len+T, hd].
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if self.len + t > self.cap {
            bail!("KV cache full: {} cached + {t} new tokens exceed its capacity of {}", self.len, self.cap);
        }
        let LayerState::Kv { k: ck, v: cv } = &self.layers[layer] else { bail!("cache layer {layer} holds no keys and values") };
        ck.slice_set(&k.detach(), 2, self.len)?;
        cv.slice_set(&v.detach(), 2, self.len)?;
        Ok((ck.narrow(2, 0, self.len + t)?, cv.narrow(2, 0, self.len + t)?))
    }

    /// Called once per forward, after every layer appended its T columns.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// A new cache holding rows `rows` of this one (repeats allowed: duplicating a prefix for G
    /// rollouts; omissions allowed: dropping finished rows).
    pub fn select_rows(&self, rows: &[u32]) -> Result<KvCache> {
        let dev = self.layers.iter().find_map(|l| match l {
            LayerState::Kv { k, .. } => Some(k.device().clone()),
            LayerState::Ssm(Some((c, _))) => Some(c.device().clone()),
            _ => None,
        });
        let idx = Tensor::new(rows, &dev.unwrap_or(Device::Cpu))?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 0)?) };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(match l {
                    LayerState::Kv { k, v } => LayerState::Kv { k: pick(k)?, v: pick(v)? },
                    LayerState::Ssm(Some((c, s))) => LayerState::Ssm(Some((pick(c)?, pick(s)?))),
                    LayerState::Ssm(None) => LayerState::Ssm(None),
                    LayerState::Stateless => LayerState::Stateless,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            len: self.len,
            cap: self.cap,
            row_start: rows.iter().map(|&r| self.row_start[r as usize]).collect(),
            next_pos: rows.iter().map(|&r| self.next_pos[r as usize]).collect(),
        })
    }

    /// Attention layout for feeding T new tokens to every row (positions continue per row).
    pub fn step_layout(&self, t: usize) -> AttnLayout {
        AttnLayout::cache_step(&self.row_start, &self.next_pos, self.len, t)
    }
}

/// The items at the indices `keep` (each used at most once), in that order: the host-side twin
/// of `KvCache::select_rows` when finished rows leave a decode batch.
pub fn pick_rows<T>(items: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut all: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keep.iter().map(|&r| all[r].take().expect("each row kept at most once")).collect()
}
