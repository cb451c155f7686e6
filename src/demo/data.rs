//! The demo's files on disk: the three splits as JSONL corpora (`{"text": …}` per line, read by
//! `data::corpus::Corpus`), the held-out answer task, and the demo tokenizer.

use super::synth::{answer_task, generate_corpus, CorpusKind};
use crate::tokenizer::{train_byte_level_bpe_with, DigitSplit};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The demo tokenizer's special tokens, in id order (0, 1, 2).
pub const DEMO_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<think>", "</think>"];

/// How many documents each split gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSizes {
    pub pretrain_docs: usize,
    pub train_docs: usize,
    pub heldout_docs: usize,
}

/// Where `write_demo_data` put each file.
#[derive(Debug, Clone)]
pub struct DemoData {
    /// Pretraining corpus, with worked solutions in thoughts.
    pub pretrain: PathBuf,
    /// RLP / RPT / CPT training corpus, no thoughts.
    pub train: PathBuf,
    /// Held-out corpus, no thoughts.
    pub heldout: PathBuf,
    /// Exact-match items `{"prompt", "answer"}` over the held-out documents.
    pub answers: PathBuf,
}

/// Write `pretrain.jsonl`, `train.jsonl`, `heldout.jsonl` and `answers.jsonl` into `dir`.
pub fn write_demo_data(dir: &Path, seed: u64, sizes: DemoSizes) -> Result<DemoData> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the demo data directory {}", dir.display()))?;
    let data = DemoData {
        pretrain: dir.join("pretrain.jsonl"),
        train: dir.join("train.jsonl"),
        heldout: dir.join("heldout.jsonl"),
        answers: dir.join("answers.jsonl"),
    };
    let text_lines = |kind, n| generate_corpus(seed, n, kind).into_iter().map(|text| serde_json::json!({ "text": text }));
    write_jsonl(&data.pretrain, text_lines(CorpusKind::Pretrain, sizes.pretrain_docs))?;
    write_jsonl(&data.train, text_lines(CorpusKind::Train, sizes.train_docs))?;
    write_jsonl(&data.heldout, text_lines(CorpusKind::Heldout, sizes.heldout_docs))?;
    write_jsonl(&data.answers, answer_task(seed, sizes.heldout_docs).into_iter())?;
    Ok(data)
}

pub fn write_jsonl<T: Serialize>(path: &Path, rows: impl Iterator<Item = T>) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    for row in rows {
        serde_json::to_writer(&mut w, &row)?;
        w.write_all(b"\n")?;
    }
    w.flush().with_context(|| format!("cannot write {}", path.display()))
}

/// A byte-level BPE tokenizer for the demo, trained on `texts` (the pretraining split): digits
/// are single tokens (`Ġ3 4 7`), the special tokens are `DEMO_SPECIAL_TOKENS`.
pub fn train_demo_tokenizer(texts: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    // The trainer would read "<think>" as text and spend merges on it ("thin", "-</"): it learns
    // from the words only, the special tokens being added whole.
    let words = texts.iter().map(|t| DEMO_SPECIAL_TOKENS.iter().fold(t.clone(), |t, s| t.replace(s, " ")));
    train_byte_level_bpe_with(words, vocab_size, &DEMO_SPECIAL_TOKENS, DigitSplit::Individual)
}
