//! Held-out next-token loss, perplexity and bits per byte.
//!
//! Each document is cut into windows of `max_context + 1` tokens that overlap by one token, so
//! every token but the document's first is predicted exactly once, from at most `max_context`
//! tokens of the same document (the context restarts at each window). Then:
//!
//! - `nll` = total −log p(token) / predicted tokens (nats per token);
//! - `ppl` = exp(nll);
//! - `bits_per_byte` = total −log₂ p(token) / total bytes of the predicted tokens (the raw bytes
//!   each token stands for, `Tok::token_bytes`), comparable across tokenizers;
//! - `tokens`, `bytes`: how much was scored.

use super::Metrics;
use crate::model::{target_logprobs, Model};
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use candle_core::Tensor;

/// Windows scored per forward.
const WINDOW_BATCH: usize = 4;

/// The windows of one document (see the module docs).
pub fn windows(doc: &[u32], max_context: usize) -> Vec<&[u32]> {
    if doc.len() < 2 || max_context == 0 {
        return vec![];
    }
    (0..doc.len() - 1)
        .step_by(max_context)
        .map(|s| &doc[s..(s + max_context + 1).min(doc.len())])
        .collect()
}

/// Loss metrics over `docs` (token ids); see the module docs.
pub fn nll_eval(model: &Model, tok: &Tok, docs: &[&[u32]], max_context: usize) -> Result<Metrics> {
    let all: Vec<&[u32]> = docs.iter().flat_map(|d| windows(d, max_context)).collect();
    if all.is_empty() {
        bail!("nll eval got no document with two or more tokens: give a corpus with longer held-out documents");
    }
    let (mut nll, mut tokens, mut bytes) = (0f64, 0usize, 0usize);
    for batch in all.chunks(WINDOW_BATCH) {
        let inputs: Vec<Vec<u32>> = batch.iter().map(|w| w[..w.len() - 1].to_vec()).collect();
        let t = inputs.iter().map(|r| r.len()).max().unwrap_or(1);
        let mut targets = Vec::with_capacity(batch.len() * t);
        for w in batch {
            targets.extend_from_slice(&w[1..]);
            targets.extend(std::iter::repeat_n(0u32, t - (w.len() - 1)));
        }
        let logits = model.forward_logits(&inputs)?; // [B, T, V]
        let targets_t = Tensor::from_vec(targets.clone(), (batch.len(), t), model.device())?;
        let lp = target_logprobs(&logits, &targets_t)?.to_vec2::<f32>()?; // [B, T]
        for (row, w) in lp.iter().zip(batch) {
            for (i, &id) in w[1..].iter().enumerate() {
                nll -= row[i] as f64;
                bytes += tok.token_bytes(id).map_or(0, |b| b.len());
            }
            tokens += w.len() - 1;
        }
    }
    let mut m = Metrics::new();
    m.insert("nll".into(), nll / tokens as f64);
    m.insert("ppl".into(), (nll / tokens as f64).exp());
    m.insert(
        "bits_per_byte".into(),
        nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
    );
    m.insert("tokens".into(), tokens as f64);
    m.insert("bytes".into(), bytes as f64);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_predict_every_token_but_the_first_once() {
        let doc: Vec<u32> = (0..10).collect();
        let w = windows(&doc, 4);
        assert_eq!(w, vec![&doc[0..5], &doc[4..9], &doc[8..10]]);
        let predicted: usize = w.iter().map(|w| w.len() - 1).sum();
        assert_eq!(predicted, 9);
        assert!(windows(&doc[..1], 4).is_empty());
    }
}
