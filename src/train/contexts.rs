//! Drawing the B contexts of each rollout batch: a prefix of a training document and its true
//! next token, from the position sampler, optionally through an entropy filter (RPT's position
//! selection, usable with RLP too) and optionally from a fixed set cycled through.
//!
//! With `objective.rpt_entropy_threshold` or `objective.rpt_top_frac` a candidate is kept only
//! when the model's own no-think next-token entropy passes the filter. With
//! `data.fixed_contexts = n` as well, the first n contexts that pass (judged by the starting
//! model) form the fixed set; set and cursor are saved in checkpoints.

use crate::config::TrainConfig;
use crate::data::corpus::TokenizedCorpus;
use crate::data::sampler::{Context, PositionSampler};
use crate::model::Model;
use crate::objective::rpt::{entropy_from_logits, select_by_entropy};
use anyhow::{bail, Result};

/// Candidate batches tried before the filter gives up.
const FILTER_ROUNDS: usize = 64;

/// The context stream of a run and where it stands.
pub struct ContextDraw {
    pub sampler: PositionSampler,
    /// The entropy-filtered fixed contexts (`data.fixed_contexts` with a filter) and the next one.
    pub fixed_pool: Vec<Context>,
    pub fixed_cursor: usize,
}

impl ContextDraw {
    pub fn new(cfg: &TrainConfig, data: &TokenizedCorpus) -> Result<ContextDraw> {
        let d = &cfg.data;
        let sampler = PositionSampler::new(data.train.len(), cfg.train.seed, d.positions_per_doc, d.min_prefix, d.max_context, d.fixed_contexts)?;
        Ok(ContextDraw { sampler, fixed_pool: Vec::new(), fixed_cursor: 0 })
    }

    /// The next B = `data.contexts_per_step` contexts. `model` gives the model that judges
    /// the entropy filter (called only when a filter is set).
    pub fn next_batch(&mut self, cfg: &TrainConfig, data: &TokenizedCorpus, model: impl Fn() -> Result<Model>) -> Result<Vec<Context>> {
        let b = cfg.data.contexts_per_step;
        let o = &cfg.objective;
        if o.rpt_entropy_threshold.is_none() && o.rpt_top_frac.is_none() {
            return self.sampler.next_batch(data, b);
        }
        let Some(n) = cfg.data.fixed_contexts else {
            return filtered_contexts(cfg, data, &model()?, &mut self.sampler, b);
        };
        if self.fixed_pool.is_empty() {
            let d = &cfg.data;
            let mut walk = PositionSampler::new(data.train.len(), cfg.train.seed, d.positions_per_doc, d.min_prefix, d.max_context, None)?;
            self.fixed_pool = filtered_contexts(cfg, data, &model()?, &mut walk, n)?;
        }
        let out = (0..b).map(|i| self.fixed_pool[(self.fixed_cursor + i) % n].clone()).collect();
        self.fixed_cursor = (self.fixed_cursor + b) % n;
        Ok(out)
    }
}

/// The next `n` contexts of `sampler` whose no-think entropy under `model` passes the filter.
/// `objective.rpt_top_frac` is per document: candidates are grouped by document first.
fn filtered_contexts(cfg: &TrainConfig, data: &TokenizedCorpus, model: &Model, sampler: &mut PositionSampler, n: usize) -> Result<Vec<Context>> {
    let o = &cfg.objective;
    let (threshold, top_frac) = (o.rpt_entropy_threshold.map(|x| x as f32), o.rpt_top_frac.map(|x| x as f32));
    let batch = cfg.data.contexts_per_step.max(n);
    let mut kept = Vec::with_capacity(n);
    for _round in 0..FILTER_ROUNDS {
        let candidates = sampler.next_batch(data, batch)?;
        let seqs: Vec<Vec<u32>> = candidates.iter().map(|c| c.prefix.clone()).collect();
        let cap = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
        let (logits, _) = model.prefill(&seqs, cap)?; // [batch, V] at each prefix's last token
        let entropy: Vec<f32> = logits.to_vec2::<f32>()?.iter().map(|l| entropy_from_logits(l)).collect();
        let mut by_doc: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            match by_doc.iter_mut().find(|(d, _)| *d == c.doc) {
                Some((_, v)) => v.push(i),
                None => by_doc.push((c.doc, vec![i])),
            }
        }
        for (_, members) in by_doc {
            let ent: Vec<f32> = members.iter().map(|&i| entropy[i]).collect();
            for j in select_by_entropy(&ent, threshold, top_frac) {
                if kept.len() < n {
                    kept.push(candidates[members[j]].clone());
                }
            }
        }
        if kept.len() == n {
            return Ok(kept);
        }
    }
    bail!("the entropy filter kept only {} of {n} contexts after {FILTER_ROUNDS} rounds of candidates: lower objective.rpt_entropy_threshold or raise objective.rpt_top_frac", kept.len())
}
