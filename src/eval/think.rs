//! Think-then-predict evaluation on held-out positions: does thinking help predict x_t?
//!
//! For each context (prefix x_<t, target x_t) and K thoughts c_1..c_K sampled exactly as in
//! training rollouts (`rollout::sample_thoughts`, same masks, budget and forced `</think>`):
//!
//! - `logp_no_think` = mean over positions of log p_θ(x_t | x_<t) (nats);
//!   `acc_no_think`  = fraction of positions where argmax p_θ(· | x_<t) = x_t.
//! - `logp_think` = mean over (position, sample) of log p_θ(x_t | x_<t, <think>, c_k, </think>, sep);
//!   `acc_think`  = fraction of (position, sample) pairs where the argmax after the thought = x_t.
//! - `logp_think_best` = mean over positions of max_k of that log-prob;
//!   `acc_think_best`  = fraction of positions where at least one of the K thoughts gets x_t right.
//! - `info_gain` = logp_think − logp_no_think: the RLP reward with the current model as its own
//!   no-think baseline (φ = θ; the trainer's logged reward uses the EMA teacher instead);
//!   `info_gain_best` = logp_think_best − logp_no_think.
//! - `thought_len_mean`, `thought_len_max`, `thought_closed_frac` (thoughts that ended with a
//!   sampled `</think>`, not a forced one).
//!
//! The log-probs and argmaxes after the thought come from one full forward over
//! `prefix <think> c </think> sep` (not from the decode cache), so argmax and log-prob agree.

use super::Metrics;
use crate::data::corpus::{TokenizedCorpus, TokenizedDocs};
use crate::data::sampler::PositionSampler;
use crate::model::Model;
use crate::rollout::{sample_thoughts, Prompt, RolloutParams};
use crate::sampling::{argmax, tempered_logprobs};
use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;

/// One held-out context.
#[derive(Debug, Clone)]
pub struct HeldOut {
    pub prefix: Vec<u32>,
    pub target: u32,
}

/// Rows per forward when scoring.
const SCORE_BATCH: usize = 16;

/// Log-prob of `target` and whether it is the argmax, after each row's last token.
fn score_last(model: &Model, rows: &[Vec<u32>], targets: &[u32]) -> Result<Vec<(f64, bool)>> {
    let mut out = Vec::with_capacity(rows.len());
    for (chunk, tg) in rows.chunks(SCORE_BATCH).zip(targets.chunks(SCORE_BATCH)) {
        let cap = chunk.iter().map(|r| r.len()).max().unwrap_or(1);
        let (logits, _) = model.prefill(chunk, cap)?; // [b, V], after each row's last token
        for (l, &t) in logits.to_vec2::<f32>()?.iter().zip(tg) {
            out.push((tempered_logprobs(l, 1.0, &[])[t as usize], argmax(l) == t));
        }
    }
    Ok(out)
}

/// Think-then-predict metrics (see the module docs) over `contexts`, K = `p.g` thoughts each.
pub fn think_eval(model: &Model, contexts: &[HeldOut], p: &RolloutParams, rng: &mut ChaCha8Rng) -> Result<Metrics> {
    if contexts.is_empty() {
        bail!("think eval got no held-out contexts: use a corpus with more (or longer) held-out documents");
    }
    let targets: Vec<u32> = contexts.iter().map(|c| c.target).collect();
    let prefixes: Vec<Vec<u32>> = contexts.iter().map(|c| c.prefix.clone()).collect();
    let base = score_last(model, &prefixes, &targets)?;

    let mut rows = Vec::new();
    let mut row_targets = Vec::new();
    let mut lens = Vec::new();
    let mut closed = 0usize;
    for chunk in contexts.chunks(SCORE_BATCH.div_ceil(p.g).max(1)) {
        let prompts: Vec<Prompt> = chunk
            .iter()
            .map(|c| Prompt {
                prefix: &c.prefix,
                target: c.target,
            })
            .collect();
        // one RNG stream per context, drawn from the caller's seeded RNG
        let mut rngs: Vec<ChaCha8Rng> = chunk.iter().map(|_| <ChaCha8Rng as rand::SeedableRng>::from_rng(&mut *rng)).collect::<Result<_, _>>()?;
        for (c, thoughts) in chunk.iter().zip(sample_thoughts(model, &prompts, p, &mut rngs)?) {
            for t in thoughts {
                rows.push(
                    [
                        c.prefix.as_slice(),
                        &[p.think_id],
                        &t.ids,
                        &[p.end_think_id],
                        &p.separator,
                    ]
                    .concat(),
                );
                row_targets.push(c.target);
                lens.push(t.ids.len());
                closed += t.closed as usize;
            }
        }
    }
    let after = score_last(model, &rows, &row_targets)?;

    let n = contexts.len() as f64;
    let nk = after.len() as f64;
    let mean = |xs: &mut dyn Iterator<Item = f64>, d: f64| xs.sum::<f64>() / d;
    let mut m = Metrics::new();
    m.insert("positions".into(), n);
    m.insert("samples".into(), p.g as f64);
    let logp_no = mean(&mut base.iter().map(|b| b.0), n);
    let logp_think = mean(&mut after.iter().map(|a| a.0), nk);
    let best: Vec<(f64, bool)> = after
        .chunks(p.g)
        .map(|g| {
            (
                g.iter().map(|a| a.0).fold(f64::NEG_INFINITY, f64::max),
                g.iter().any(|a| a.1),
            )
        })
        .collect();
    let logp_best = mean(&mut best.iter().map(|b| b.0), n);
    m.insert("logp_no_think".into(), logp_no);
    m.insert(
        "acc_no_think".into(),
        mean(&mut base.iter().map(|b| b.1 as u8 as f64), n),
    );
    m.insert("logp_think".into(), logp_think);
    m.insert(
        "acc_think".into(),
        mean(&mut after.iter().map(|a| a.1 as u8 as f64), nk),
    );
    m.insert("logp_think_best".into(), logp_best);
    m.insert(
        "acc_think_best".into(),
        mean(&mut best.iter().map(|b| b.1 as u8 as f64), n),
    );
    m.insert("info_gain".into(), logp_think - logp_no);
    m.insert("info_gain_best".into(), logp_best - logp_no);
    m.insert("thought_len_mean".into(), lens.iter().sum::<usize>() as f64 / nk);
    m.insert("thought_len_max".into(), *lens.iter().max().unwrap_or(&0) as f64);
    m.insert("thought_closed_frac".into(), closed as f64 / nk);
    Ok(m)
}

/// `n` held-out contexts drawn from `docs` by the training `PositionSampler` (seeded by `seed`,
/// ⌈n / docs⌉ distinct positions per document, prefixes of `min_prefix`..`max_context` tokens).
/// The trainer can pass its `TokenizedCorpus::heldout` here for periodic evaluation.
pub fn heldout_contexts(
    docs: &TokenizedDocs,
    n: usize,
    seed: u64,
    min_prefix: usize,
    max_context: usize,
) -> Result<Vec<HeldOut>> {
    if docs.is_empty() {
        bail!("no held-out documents to draw positions from: set data.heldout_docs (or --heldout-docs) to at least 1");
    }
    let per_doc = n.div_ceil(docs.len()).max(1);
    let corpus = TokenizedCorpus {
        train: docs.clone(),
        heldout: TokenizedDocs::default(),
        skipped_short: 0,
    };
    let mut sampler = PositionSampler::new(docs.len(), seed, per_doc, min_prefix, max_context, None)?;
    Ok(sampler
        .next_batch(&corpus, n)?
        .into_iter()
        .map(|c| HeldOut {
            prefix: c.prefix,
            target: c.target,
        })
        .collect())
}
