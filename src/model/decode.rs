//! No-grad incremental decoding with a KV cache: ragged prefill, one-token steps, generation.
//!
//! Pass a `Model::detached()` view so no autograd graph is recorded.

use super::kv_cache::{pick_rows, KvCache};
use super::layout::AttnLayout;
use super::transformer::Model;
use crate::sampling::{self, SamplingParams};
use anyhow::{bail, Result};
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

impl Model {
    pub fn new_cache(&self, batch: usize, cap: usize) -> Result<KvCache> {
        let c = &self.cfg;
        match &c.hybrid {
            Some(h) => KvCache::hybrid(&h.blocks, batch, c.num_key_value_heads, c.head_dim, cap, self.dtype(), self.device()),
            None => KvCache::new(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, cap, self.dtype(), self.device()),
        }
    }

    /// Encode ragged prompts, left-padded to a shared column, into a fresh cache with room for
    /// `cap` columns. Returns the logits after each prompt's last token, [B, V], and the cache.
    pub fn prefill(&self, prompts: &[Vec<u32>], cap: usize) -> Result<(Tensor, KvCache)> {
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            bail!("prefill needs at least one non-empty prompt");
        }
        let b = prompts.len();
        let t = prompts.iter().map(|p| p.len()).max().unwrap();
        if t > cap {
            bail!("prompt of {t} tokens does not fit a cache of {cap}");
        }
        let mut cache = self.new_cache(b, cap)?;
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let (layout, starts) = AttnLayout::left_padded(&lens);
        let mut ids = Vec::with_capacity(b * t);
        for (r, p) in prompts.iter().enumerate() {
            cache.row_start[r] = starts[r];
            cache.next_pos[r] = p.len() as u32;
            ids.extend(std::iter::repeat(0u32).take(starts[r]));
            ids.extend_from_slice(p);
        }
        let ids = Tensor::from_vec(ids, (b, t), self.device())?;
        let hidden = self.forward_hidden(&ids, &layout, Some(&mut cache))?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?; // [B, D]
        Ok((self.logits(&last)?, cache))
    }

    /// Feed one token per row; returns the next logits [B, V].
    pub fn decode_step(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let b = cache.batch();
        if tokens.len() != b {
            bail!("decode_step got {} tokens for a cache of {b} rows", tokens.len());
        }
        let layout = cache.step_layout(1);
        let ids = Tensor::from_slice(tokens, (b, 1), self.device())?;
        let hidden = self.forward_hidden(&ids, &layout, Some(cache))?;
        for p in cache.next_pos.iter_mut() {
            *p += 1;
        }
        self.logits(&hidden.squeeze(1)?)
    }

    /// Decode a batch whose rows each end on their own. `next(row, logits)` is called, in row
    /// order, for every row still in the batch with its logits [V] (first those given, after the
    /// prompts, aligned with `cache`'s rows); it returns the token to feed, or `None` when the
    /// row is done, which drops it (and its cache row) from the batch. Returns when no row is
    /// left.
    pub fn decode_rows<R>(
        &self,
        mut cache: KvCache,
        mut logits: Vec<Vec<f32>>,
        mut rows: Vec<R>,
        mut next: impl FnMut(&mut R, &[f32]) -> Result<Option<u32>>,
    ) -> Result<()> {
        if logits.len() != rows.len() || cache.batch() != rows.len() {
            bail!("decode_rows: {} rows, {} logits rows, {} cache rows", rows.len(), logits.len(), cache.batch());
        }
        while !rows.is_empty() {
            let mut feed = Vec::with_capacity(rows.len());
            let mut keep = Vec::with_capacity(rows.len());
            for (r, row) in rows.iter_mut().enumerate() {
                if let Some(token) = next(row, &logits[r])? {
                    feed.push(token);
                    keep.push(r);
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < rows.len() {
                let idx: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
                cache = cache.select_rows(&idx)?;
                rows = pick_rows(rows, &keep);
            }
            logits = self.decode_step(&feed, &mut cache)?.to_vec2::<f32>()?;
        }
        Ok(())
    }

    /// Generate `max_new` tokens after each prompt; greedy when `params` is None.
    pub fn generate(&self, prompts: &[Vec<u32>], max_new: usize, params: Option<&SamplingParams>, rng: &mut ChaCha8Rng) -> Result<Vec<Vec<u32>>> {
        let cap = prompts.iter().map(|p| p.len()).max().unwrap_or(0) + max_new;
        let (mut logits, mut cache) = self.prefill(prompts, cap)?;
        let mut out = vec![Vec::with_capacity(max_new); prompts.len()];
        for step in 0..max_new {
            let rows = logits.to_vec2::<f32>()?;
            let next: Vec<u32> = rows
                .iter()
                .map(|l| match params {
                    None => sampling::argmax(l),
                    Some(p) => sampling::sample(l, p, &[], rng).0,
                })
                .collect();
            for (o, &n) in out.iter_mut().zip(&next) {
                o.push(n);
            }
            if step + 1 < max_new {
                logits = self.decode_step(&next, &mut cache)?;
            }
        }
        Ok(out)
    }
}
