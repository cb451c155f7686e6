//! Post-training data for the miniature: SFT pairs with worked solutions and RLVR
//! question/answer items, both from the tally world of `synth.rs`.
//!
//! - SFT pair: prompt `"tally a4 b3 c8 d1 is"`, response `"<think> a4 b7 c5 d6</think> 6."`, so
//!   prompt + response is exactly how the pretraining split writes a worked tally
//!   (`data::sft` reads `{"prompt", "response"}` lines).
//! - RLVR item: `{"question": "tally a4 b3 c8 d1 is", "answer": "6"}`, the format
//!   `rlp eval --task jsonl:FILE` reads; the RLVR objective prompts it with
//!   `PromptLayout::Raw` (the question then `<think>`), the layout the demo's base was
//!   pretrained on and the demo's evaluation uses.
//!
//! Choices, and why:
//! - Each set has its own ChaCha8 stream of the seed (`SFT_STREAM`, `RLVR_STREAM`, after the
//!   corpus splits' 1–3), so neither shifts when the other or a corpus split changes size.
//! - One tally per example, no surrounding prose; digits per tally as in the corpus (2 to
//!   `MAX_DIGITS`, uniform).
//! - No overlap with the evaluation: a tally whose digits (in order) appear anywhere in the
//!   held-out split the demo evaluates for that seed (`evaluation_tallies`) is skipped and drawn
//!   again. Most 2-digit tallies are in a 500-document held-out split, so the post-training sets
//!   lean towards longer tallies. SFT and RLVR sets may share tallies with each other and with
//!   the training splits (those are not evaluated).

use super::data::write_jsonl;
use super::synth::{generate_documents, labelled, running_last_digit, CorpusKind, Segment, MAX_DIGITS, MIN_DIGITS};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The ChaCha8 stream of the seed the SFT pairs are drawn from.
pub const SFT_STREAM: u64 = 4;
/// The ChaCha8 stream of the seed the RLVR items are drawn from.
pub const RLVR_STREAM: u64 = 5;

/// One SFT line, `{"prompt", "response"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SftPair {
    pub prompt: String,
    pub response: String,
}

/// One RLVR line, `{"question", "answer"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QaItem {
    pub question: String,
    pub answer: String,
}

/// Every tally (its digits) of the first `heldout_docs` held-out documents of `seed`: what the
/// demo evaluates on for that seed.
pub fn evaluation_tallies(seed: u64, heldout_docs: usize) -> HashSet<Vec<u8>> {
    generate_documents(seed, heldout_docs, CorpusKind::Heldout)
        .iter()
        .flat_map(|d| d.segments.iter())
        .filter_map(|s| match s {
            Segment::Problem(p) => Some(p.digits.clone()),
            Segment::Plain { .. } => None,
        })
        .collect()
}

/// `n` tallies' digits from `stream` of `seed`, none in `exclude`.
fn tallies(seed: u64, stream: u64, n: usize, exclude: &HashSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = rng.gen_range(MIN_DIGITS..=MAX_DIGITS);
        let digits: Vec<u8> = (0..len).map(|_| rng.gen_range(0..10)).collect();
        if !exclude.contains(&digits) {
            out.push(digits);
        }
    }
    out
}

fn lead(digits: &[u8]) -> String {
    format!("tally {} is", labelled(digits))
}

fn answer(digits: &[u8]) -> u8 {
    *running_last_digit(digits).last().expect("a tally has digits")
}

/// The SFT pair of one tally: its lead, then its working in a thought and the answer.
pub fn sft_pair(digits: &[u8]) -> SftPair {
    SftPair { prompt: lead(digits), response: format!("<think> {}</think> {}.", labelled(&running_last_digit(digits)), answer(digits)) }
}

/// `n` SFT pairs with worked solutions, none of whose tallies is in `exclude`.
pub fn sft_pairs(seed: u64, n: usize, exclude: &HashSet<Vec<u8>>) -> Vec<SftPair> {
    tallies(seed, SFT_STREAM, n, exclude).iter().map(|d| sft_pair(d)).collect()
}

/// `n` RLVR items, none of whose tallies is in `exclude`.
pub fn rlvr_items(seed: u64, n: usize, exclude: &HashSet<Vec<u8>>) -> Vec<QaItem> {
    tallies(seed, RLVR_STREAM, n, exclude).iter().map(|d| QaItem { question: lead(d), answer: answer(d).to_string() }).collect()
}

/// Write `sft.jsonl` and `rlvr.jsonl` into `dir` for `seed`, avoiding the tallies of its first
/// `heldout_docs` held-out documents. Returns their paths.
pub fn write_post_data(dir: &Path, seed: u64, heldout_docs: usize, n_sft: usize, n_rlvr: usize) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let exclude = evaluation_tallies(seed, heldout_docs);
    let (sft, rlvr) = (dir.join("sft.jsonl"), dir.join("rlvr.jsonl"));
    write_jsonl(&sft, sft_pairs(seed, n_sft, &exclude).into_iter())?;
    write_jsonl(&rlvr, rlvr_items(seed, n_rlvr, &exclude).into_iter())?;
    Ok((sft, rlvr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::synth::{answer_task, Problem};

    /// The tally at the end of an evaluation prompt (`"… tally a4 b3 is"`).
    fn prompt_tally(prompt: &str) -> Vec<u8> {
        let lead = &prompt[prompt.rfind("tally ").expect("a tally prompt")..];
        lead.split(' ').filter(|w| w.len() == 2 && w.as_bytes()[1].is_ascii_digit()).map(|w| w.as_bytes()[1] - b'0').collect()
    }

    #[test]
    fn no_post_training_tally_is_an_evaluation_item() {
        let (seed, heldout) = (0, 500);
        let eval: HashSet<Vec<u8>> = answer_task(seed, heldout).iter().map(|it| prompt_tally(&it.prompt)).collect();
        assert!(eval.len() > 500, "the evaluation should hold many tallies, got {}", eval.len());
        let exclude = evaluation_tallies(seed, heldout);
        assert!(eval.is_subset(&exclude));
        let sft = sft_pairs(seed, 2000, &exclude);
        let rlvr = rlvr_items(seed, 2000, &exclude);
        for p in &sft {
            assert!(!eval.contains(&prompt_tally(&p.prompt)), "{p:?} is an evaluation item");
        }
        for q in &rlvr {
            assert!(!eval.contains(&prompt_tally(&q.question)), "{q:?} is an evaluation item");
        }
        // Without the exclusion the same streams would hit evaluation tallies: the check bites.
        let raw = sft_pairs(seed, 2000, &HashSet::new());
        assert!(raw.iter().any(|p| eval.contains(&prompt_tally(&p.prompt))));
    }

    #[test]
    fn pairs_are_worked_tallies_as_pretraining_writes_them() {
        let pairs = sft_pairs(3, 50, &HashSet::new());
        assert_eq!(pairs[0], sft_pairs(3, 1, &HashSet::new())[0], "prefix-stable");
        let pretrain = generate_documents(11, 300, CorpusKind::Pretrain);
        let worked: Vec<&Problem> = pretrain
            .iter()
            .flat_map(|d| &d.segments)
            .filter_map(|s| match s {
                Segment::Problem(p) if p.worked => Some(p),
                _ => None,
            })
            .collect();
        assert!(!worked.is_empty());
        for p in worked.iter().take(20) {
            let pair = sft_pair(&p.digits);
            let text = format!("{}<think> {}</think> {}{}", p.lead, p.working, p.answer, p.tail);
            assert_eq!(format!("{}{}", pair.prompt, pair.response), text);
        }
        // 4 3 8 1 → running 4 7 5 6
        let one = sft_pair(&[4, 3, 8, 1]);
        assert_eq!((one.prompt.as_str(), one.response.as_str()), ("tally a4 b3 c8 d1 is", "<think> a4 b7 c5 d6</think> 6."));
        let items = rlvr_items(3, 30, &HashSet::new());
        // the answer is the last digit of the digit sum
        assert!(items.iter().all(|q| q.answer == (prompt_tally(&q.question).iter().map(|&d| u32::from(d)).sum::<u32>() % 10).to_string()));
        assert_ne!(items[0].question, pairs[0].prompt, "separate streams");
    }
}
