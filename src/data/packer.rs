//! Packed next-token windows for continued pretraining (the CPT baseline, `objective.name =
//! "ntp"`).
//!
//! Documents are visited in a seeded shuffled order (reshuffled each epoch), each followed by
//! an EOS token, and the stream is cut into windows of `len + 1` tokens: inputs `w[..len]`,
//! targets `w[1..]`. Consecutive windows share one token, so every token of the stream is a
//! target exactly once. Each token carries a segment id (its document; the EOS belongs to the
//! document it ends) so attention can be kept inside documents.

use super::corpus::TokenizedDocs;
use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Where the packer is in the stream; serialise it into a checkpoint to resume exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackerState {
    num_docs: usize,
    seed: u64,
    epoch: u64,
    /// Index into this epoch's order of the current document.
    cursor: usize,
    /// Next token of the current document (== its length: the EOS is next).
    offset: usize,
}

pub struct Packer {
    state: PackerState,
    order: Vec<usize>,
    eos: u32,
    /// Corpus order every epoch instead of a shuffle.
    in_order: bool,
}

/// One window: `tokens` has len + 1 entries, `segments` the document id of each.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub tokens: Vec<u32>,
    pub segments: Vec<u32>,
}

fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e74_705f_7061_636b); // "ntp_pack"
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

impl Packer {
    pub fn new(num_docs: usize, seed: u64, eos: u32) -> Result<Packer> {
        ensure!(num_docs > 0, "the packer needs at least one document");
        Ok(Packer { state: PackerState { num_docs, seed, epoch: 0, cursor: 0, offset: 0 }, order: epoch_order(seed, 0, num_docs), eos, in_order: false })
    }

    /// A packer that walks the documents in corpus order (for evaluation).
    pub fn in_order(num_docs: usize, eos: u32) -> Result<Packer> {
        let mut p = Packer::new(num_docs, 0, eos)?;
        p.order = (0..num_docs).collect();
        p.in_order = true;
        Ok(p)
    }

    pub fn state(&self) -> &PackerState {
        &self.state
    }

    pub fn restore(&mut self, state: PackerState) -> Result<()> {
        ensure!(
            state.num_docs == self.state.num_docs && state.seed == self.state.seed && state.cursor < state.num_docs,
            "cannot resume the packer: its state was saved for {} documents and seed {}, this run has {} and {}",
            state.num_docs,
            state.seed,
            self.state.num_docs,
            self.state.seed
        );
        self.order = self.order_of(state.epoch);
        self.state = state;
        Ok(())
    }

    fn order_of(&self, epoch: u64) -> Vec<usize> {
        if self.in_order {
            (0..self.state.num_docs).collect()
        } else {
            epoch_order(self.state.seed, epoch, self.state.num_docs)
        }
    }

    /// The next window of `len + 1` tokens.
    pub fn next_window(&mut self, docs: &TokenizedDocs, len: usize) -> Result<Window> {
        ensure!(docs.len() == self.state.num_docs, "the packer was made for {} documents, the corpus has {}", self.state.num_docs, docs.len());
        let mut tokens = Vec::with_capacity(len + 1);
        let mut segments = Vec::with_capacity(len + 1);
        let mut seg = 0u32;
        while tokens.len() < len + 1 {
            let doc = docs.tokens(self.order[self.state.cursor]);
            let s = &mut self.state;
            if s.offset < doc.len() {
                let take = (doc.len() - s.offset).min(len + 1 - tokens.len());
                tokens.extend_from_slice(&doc[s.offset..s.offset + take]);
                segments.extend(std::iter::repeat(seg).take(take));
                s.offset += take;
            } else {
                tokens.push(self.eos);
                segments.push(seg);
                seg += 1;
                s.offset = 0;
                s.cursor += 1;
                if s.cursor == s.num_docs {
                    s.cursor = 0;
                    s.epoch += 1;
                    let epoch = s.epoch;
                    self.order = self.order_of(epoch);
                }
            }
        }
        // The last token becomes the first of the next window.
        let s = &mut self.state;
        if s.offset > 0 {
            s.offset -= 1;
        } else {
            // the window ended on an EOS: step back before it
            if s.cursor == 0 {
                s.epoch -= 1;
                s.cursor = s.num_docs - 1;
                let epoch = s.epoch;
                self.order = self.order_of(epoch);
            } else {
                s.cursor -= 1;
            }
            let cursor = self.state.cursor;
            self.state.offset = docs.tokens(self.order[cursor]).len();
        }
        Ok(Window { tokens, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> TokenizedDocs {
        TokenizedDocs::from_documents([("a".to_string(), vec![1, 2, 3]), ("b".to_string(), vec![4, 5]), ("c".to_string(), vec![6, 7, 8, 9])])
    }

    #[test]
    fn windows_cover_the_stream_once_and_share_one_token() {
        let d = docs();
        let mut p = Packer::new(3, 7, 0).unwrap();
        let order = p.order.clone();
        let mut stream = Vec::new();
        for i in order {
            stream.extend_from_slice(d.tokens(i));
            stream.push(0);
        }
        // 12 tokens per epoch; windows of 4+1 tokens advance by 4
        let w1 = p.next_window(&d, 4).unwrap();
        let w2 = p.next_window(&d, 4).unwrap();
        let w3 = p.next_window(&d, 4).unwrap();
        assert_eq!(w1.tokens, stream[0..5]);
        assert_eq!(w2.tokens, stream[4..9]);
        assert_eq!(w3.tokens[..4], stream[8..12]);
        // segment ids increase after each EOS
        for w in [&w1, &w2] {
            for i in 1..w.tokens.len() {
                let after_eos = w.tokens[i - 1] == 0;
                assert_eq!(w.segments[i], w.segments[i - 1] + u32::from(after_eos));
            }
        }
    }

    #[test]
    fn resume_continues_the_same_stream() {
        let d = docs();
        let mut a = Packer::new(3, 1, 0).unwrap();
        for _ in 0..5 {
            a.next_window(&d, 3).unwrap();
        }
        let saved = serde_json::to_string(a.state()).unwrap();
        let rest_a: Vec<Window> = (0..7).map(|_| a.next_window(&d, 3).unwrap()).collect();
        let mut b = Packer::new(3, 1, 0).unwrap();
        b.restore(serde_json::from_str(&saved).unwrap()).unwrap();
        let rest_b: Vec<Window> = (0..7).map(|_| b.next_window(&d, 3).unwrap()).collect();
        assert_eq!(rest_a, rest_b);
        assert!(Packer::new(4, 1, 0).unwrap().restore(serde_json::from_str(&saved).unwrap()).is_err());
    }
}
