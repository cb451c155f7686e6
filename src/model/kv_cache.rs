//! Preallocated key/value cache for no-grad incremental decoding.
//!
//! Rows are left-aligned to a shared column: row b's real keys live in columns
//! `row_start[b]..len`, earlier columns are padding that the attention mask hides. This lets
//! ragged prompts decode together, and rows can be duplicated (G rollouts of one prefix) or
//! dropped (finished rollouts) with one `index_select` per layer.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

pub struct KvCache {
    k: Vec<Tensor>, // per layer [B, KV, cap, hd]
    v: Vec<Tensor>,
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
        let z = || Tensor::zeros((batch, kv_heads, cap, head_dim), dtype, dev);
        Ok(KvCache {
            k: (0..layers).map(|_| z()).collect::<candle_core::Result<_>>()?,
            v: (0..layers).map(|_| z()).collect::<candle_core::Result<_>>()?,
            len: 0,
            cap,
            row_start: vec![0; batch],
            next_pos: vec![0; batch],
        })
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
        self.k[layer].slice_set(&k.detach(), 2, self.len)?;
        self.v[layer].slice_set(&v.detach(), 2, self.len)?;
        Ok((self.k[layer].narrow(2, 0, self.len + t)?, self.v[layer].narrow(2, 0, self.len + t)?))
    }

    /// Called once per forward, after every layer appended its T columns.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// A new cache holding rows `rows` of this one (repeats allowed: duplicating a prefix for G
    /// rollouts; omissions allowed: dropping finished rows).
    pub fn select_rows(&self, rows: &[u32]) -> Result<KvCache> {
        let idx = Tensor::new(rows, self.k[0].device())?;
        let pick = |ts: &[Tensor]| -> Result<Vec<Tensor>> { ts.iter().map(|t| Ok(t.index_select(&idx, 0)?)).collect() };
        Ok(KvCache {
            k: pick(&self.k)?,
            v: pick(&self.v)?,
            len: self.len,
            cap: self.cap,
            row_start: rows.iter().map(|&r| self.row_start[r as usize]).collect(),
            next_pos: rows.iter().map(|&r| self.next_pos[r as usize]).collect(),
        })
    }

    /// Attention layout for feeding T new tokens to every row (positions continue per row).
    pub fn step_layout(&self, t: usize) -> super::transformer::AttnLayout {
        let b = self.batch();
        let k = self.len + t;
        let mut positions = Vec::with_capacity(b * t);
        let mut mask = vec![super::transformer::MASKED; b * t * k];
        for r in 0..b {
            for i in 0..t {
                positions.push(self.next_pos[r] + i as u32);
                let row = &mut mask[(r * t + i) * k..(r * t + i + 1) * k];
                for m in &mut row[self.row_start[r]..=self.len + i] {
                    *m = 0.0;
                }
            }
        }
        super::transformer::AttnLayout { positions, mask }
    }
}

/// The items at the indices `keep` (each used at most once), in that order: the host-side twin
/// of `KvCache::select_rows` when finished rows leave a decode batch.
pub fn pick_rows<T>(items: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut all: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keep.iter().map(|&r| all[r].take().expect("each row kept at most once")).collect()
}
