//! Position sampler: which (document, position) pairs become training contexts.
//!
//! The sampler walks the training documents epoch by epoch. Each epoch visits every document once,
//! in an order shuffled by a `ChaCha8Rng` seeded with `seed` on stream `epoch`, so epoch e's order
//! depends only on (seed, e). At each document it draws `positions_per_doc` distinct positions
//! uniformly from `[min_prefix, len − 1]` (all of them when the document has fewer), from one
//! position RNG seeded with `seed` on the last stream (`u64::MAX`). A context's prefix is the
//! document's tokens before the position, left-truncated to the `max_context` nearest ones; its
//! target is the token at the position.
//!
//! With `fixed_contexts = Some(n)` the sampler instead cycles forever over the first `n` contexts
//! the walk above would give: a fixed training set, to check that a run optimises its objective.
//!
//! **Resume.** [`SamplerState`] (epoch, cursor in the epoch, positions drawn but not yet used, the
//! position RNG, the cursor in the fixed set) is the sampler's whole state: a sampler restored from
//! it returns exactly the contexts the original would have.
//!
//! **Data parallel.** Every rank calls [`PositionSampler::next_batch`] with the *global* batch size,
//! so all ranks keep identical sampler state, and then keeps its share with [`shard`]: rank r of
//! W takes contexts r, r + W, r + 2W, …
//!
//! Not here: entropy-filtered positions (RPT) and document packing (NTP).

use std::collections::VecDeque;

use anyhow::{bail, ensure, Result};
use rand::seq::{index, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::corpus::{TokenizedCorpus, TokenizedDocs};

/// One training context: predict `target` from `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Index of the document among the training documents.
    pub doc: usize,
    /// Position of the target within the document (≥ min_prefix).
    pub pos: usize,
    /// The tokens before `pos`, at most `max_context` of them (the nearest ones).
    pub prefix: Vec<u32>,
    /// The token at `pos`.
    pub target: u32,
}

/// Everything that changes as the sampler draws; serialise it into a checkpoint to resume exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Training documents and seed the state belongs to; restoring elsewhere is refused.
    num_docs: usize,
    seed: u64,
    /// Epochs completed.
    epoch: u64,
    /// Index in this epoch's document order of the next document to visit.
    cursor: usize,
    /// (doc, pos) drawn at the last visited document and not yet returned.
    pending: VecDeque<(usize, usize)>,
    /// Draws positions within documents.
    rng: ChaCha8Rng,
    /// Next context of the fixed set, when `fixed_contexts` is set.
    fixed_cursor: usize,
}

/// Draws training contexts; see the module docs.
#[derive(Debug, Clone)]
pub struct PositionSampler {
    positions_per_doc: usize,
    min_prefix: usize,
    max_context: usize,
    fixed_contexts: Option<usize>,
    state: SamplerState,
    /// This epoch's document order, derived from (seed, state.epoch).
    order: Vec<usize>,
    /// The fixed set's (doc, pos), made on first use when `fixed_contexts` is set.
    fixed: Vec<(usize, usize)>,
}

/// The RNG stream of the position draws; streams 0, 1, … shuffle epochs 0, 1, ….
const POSITION_STREAM: u64 = u64::MAX;

impl PositionSampler {
    /// A sampler over `num_docs` training documents, at the start of epoch 0.
    pub fn new(
        num_docs: usize,
        seed: u64,
        positions_per_doc: usize,
        min_prefix: usize,
        max_context: usize,
        fixed_contexts: Option<usize>,
    ) -> Result<PositionSampler> {
        ensure!(
            num_docs >= 1,
            "the position sampler needs at least one training document"
        );
        ensure!(
            positions_per_doc >= 1,
            "data.positions_per_doc must be at least 1"
        );
        ensure!(
            min_prefix < max_context,
            "data.min_prefix ({min_prefix}) must be less than data.max_context ({max_context})"
        );
        ensure!(
            fixed_contexts != Some(0),
            "data.fixed_contexts must be at least 1 when set"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(POSITION_STREAM);
        let state = SamplerState {
            num_docs,
            seed,
            epoch: 0,
            cursor: 0,
            pending: VecDeque::new(),
            rng,
            fixed_cursor: 0,
        };
        Ok(PositionSampler {
            positions_per_doc,
            min_prefix,
            max_context,
            fixed_contexts,
            order: epoch_order(seed, 0, num_docs),
            state,
            fixed: Vec::new(),
        })
    }

    /// The next `n` contexts (the global batch) from the training documents of `docs`, which must
    /// be the corpus the sampler was made for. Fails when a document is too short to hold a
    /// position (build the corpus with `min_len = min_prefix + 1`).
    pub fn next_batch(&mut self, docs: &TokenizedCorpus, n: usize) -> Result<Vec<Context>> {
        let train = &docs.train;
        ensure!(
            train.len() == self.state.num_docs,
            "the position sampler was made for {} training documents but the corpus has {}",
            self.state.num_docs,
            train.len()
        );
        if let Some(size) = self.fixed_contexts {
            if self.fixed.is_empty() {
                self.fixed = self.first_positions(train, size)?;
            }
        }
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let (doc, pos) = self.next_doc_position(train)?;
            batch.push(context_at(train.tokens(doc), doc, pos, self.max_context));
        }
        Ok(batch)
    }

    /// The state to save for an exact resume.
    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Continues from a saved state. Refuses a state made for another corpus size or seed.
    pub fn restore(&mut self, state: SamplerState) -> Result<()> {
        let ours = &self.state;
        ensure!(
            state.num_docs == ours.num_docs && state.seed == ours.seed,
            "cannot resume the data sampler: the checkpoint's was made for {} training documents and \
             seed {}, this run has {} documents and seed {}; resume with the same corpus, \
             data.heldout_docs and train.seed",
            state.num_docs,
            state.seed,
            ours.num_docs,
            ours.seed
        );
        let fixed_ok = self
            .fixed_contexts
            .is_none_or(|size| state.fixed_cursor < size);
        if state.cursor > state.num_docs || !fixed_ok {
            bail!("cannot resume the data sampler: its saved state is inconsistent (cursor past the end)");
        }
        self.order = epoch_order(state.seed, state.epoch, state.num_docs);
        self.state = state;
        Ok(())
    }

    /// Epochs completed over the training documents: 0 until every document has been used, and
    /// so on. Stays 0 with `fixed_contexts`, which does not walk the corpus.
    pub fn epoch(&self) -> u64 {
        let s = &self.state;
        let epoch_used_up = s.cursor == s.num_docs && s.pending.is_empty();
        s.epoch + u64::from(epoch_used_up)
    }

    fn next_doc_position(&mut self, train: &TokenizedDocs) -> Result<(usize, usize)> {
        if self.fixed_contexts.is_some() {
            let next = self.fixed[self.state.fixed_cursor];
            self.state.fixed_cursor = (self.state.fixed_cursor + 1) % self.fixed.len();
            return Ok(next);
        }
        self.next_walk_position(train)
    }

    /// The next (doc, pos) of the epoch walk.
    fn next_walk_position(&mut self, train: &TokenizedDocs) -> Result<(usize, usize)> {
        loop {
            if let Some(next) = self.state.pending.pop_front() {
                return Ok(next);
            }
            if self.state.cursor == self.state.num_docs {
                self.state.epoch += 1;
                self.state.cursor = 0;
                self.order = epoch_order(self.state.seed, self.state.epoch, self.state.num_docs);
            }
            let doc = self.order[self.state.cursor];
            self.state.cursor += 1;
            let len = train.tokens(doc).len();
            if len <= self.min_prefix {
                bail!(
                    "document {} has {len} tokens, too few for a position after data.min_prefix = {} \
                     tokens; build the corpus with min_len = min_prefix + 1",
                    train.source(doc),
                    self.min_prefix
                );
            }
            let valid = len - self.min_prefix;
            let count = self.positions_per_doc.min(valid);
            for offset in index::sample(&mut self.state.rng, valid, count) {
                self.state
                    .pending
                    .push_back((doc, self.min_prefix + offset));
            }
        }
    }

    /// The first `size` positions a fresh walk with these settings would give.
    fn first_positions(&self, train: &TokenizedDocs, size: usize) -> Result<Vec<(usize, usize)>> {
        let s = &self.state;
        let (k, min_prefix, max_context) =
            (self.positions_per_doc, self.min_prefix, self.max_context);
        let mut walk = PositionSampler::new(s.num_docs, s.seed, k, min_prefix, max_context, None)?;
        (0..size).map(|_| walk.next_walk_position(train)).collect()
    }
}

/// Documents 0..num_docs in the shuffled order of `epoch`.
fn epoch_order(seed: u64, epoch: u64, num_docs: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..num_docs).collect();
    order.shuffle(&mut rng);
    order
}

/// The context predicting `tokens[pos]` from at most `max_context` tokens before it.
fn context_at(tokens: &[u32], doc: usize, pos: usize, max_context: usize) -> Context {
    let start = pos.saturating_sub(max_context);
    Context {
        doc,
        pos,
        prefix: tokens[start..pos].to_vec(),
        target: tokens[pos],
    }
}

/// This rank's share of a global batch: items rank, rank + world, rank + 2·world, …
pub fn shard<T: Clone>(items: &[T], rank: usize, world: usize) -> Result<Vec<T>> {
    ensure!(
        rank < world,
        "rank {rank} is out of range for world size {world}"
    );
    Ok(items.iter().skip(rank).step_by(world).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Documents whose tokens are `doc * 1000 + position`, so a token says where it came from.
    fn corpus(lengths: &[usize]) -> TokenizedCorpus {
        let docs = lengths.iter().enumerate().map(|(d, &len)| {
            (
                format!("doc{d}.txt"),
                (0..len).map(|p| (d * 1000 + p) as u32).collect(),
            )
        });
        TokenizedCorpus {
            train: TokenizedDocs::from_documents(docs),
            heldout: TokenizedDocs::default(),
            skipped_short: 0,
        }
    }

    fn doc_positions(batch: &[Context]) -> Vec<(usize, usize)> {
        batch.iter().map(|c| (c.doc, c.pos)).collect()
    }

    #[test]
    fn contexts_lie_within_bounds_and_match_the_document() {
        let docs = corpus(&[5, 9, 40, 100, 6]);
        let (min_prefix, max_context) = (4, 16);
        let mut sampler = PositionSampler::new(5, 7, 3, min_prefix, max_context, None).unwrap();
        for _ in 0..20 {
            for c in sampler.next_batch(&docs, 7).unwrap() {
                let tokens = docs.train.tokens(c.doc);
                assert!(c.pos >= min_prefix && c.pos < tokens.len(), "{c:?}");
                assert_eq!(c.target, tokens[c.pos]);
                assert_eq!(c.prefix, tokens[c.pos.saturating_sub(max_context)..c.pos]);
            }
        }
    }

    #[test]
    fn truncation_keeps_the_nearest_tokens() {
        let docs = corpus(&[200]);
        let mut sampler = PositionSampler::new(1, 0, 50, 1, 10, None).unwrap();
        let batch = sampler.next_batch(&docs, 50).unwrap();
        let long = batch
            .iter()
            .find(|c| c.pos > 10)
            .expect("some position past max_context");
        let expected: Vec<u32> = (long.pos - 10..long.pos).map(|p| p as u32).collect();
        assert_eq!(long.prefix, expected);
        let short = batch
            .iter()
            .find(|c| c.pos <= 10)
            .expect("some position within max_context");
        assert_eq!(short.prefix.len(), short.pos);
    }

    #[test]
    fn every_document_is_visited_once_per_epoch_in_a_new_order() {
        let docs = corpus(&[20; 12]);
        let mut sampler = PositionSampler::new(12, 3, 1, 2, 64, None).unwrap();
        let mut orders = Vec::new();
        for epoch in 0..3 {
            assert_eq!(sampler.epoch(), epoch);
            let batch = sampler.next_batch(&docs, 12).unwrap();
            let order: Vec<usize> = batch.iter().map(|c| c.doc).collect();
            assert_eq!(
                order.iter().copied().collect::<BTreeSet<_>>().len(),
                12,
                "{order:?}"
            );
            orders.push(order);
        }
        assert!(
            orders[0] != orders[1] && orders[1] != orders[2],
            "{orders:?}"
        );
    }

    #[test]
    fn positions_per_doc_are_distinct_and_capped_by_the_document() {
        let docs = corpus(&[30, 6]);
        let mut sampler = PositionSampler::new(2, 0, 4, 3, 64, None).unwrap();
        let batch = sampler.next_batch(&docs, 7).unwrap();
        for doc in 0..2 {
            let positions: BTreeSet<usize> = batch
                .iter()
                .filter(|c| c.doc == doc)
                .map(|c| c.pos)
                .collect();
            let expected = if doc == 0 { 4 } else { 3 };
            assert_eq!(positions.len(), expected, "doc {doc}: {batch:?}");
        }
        assert_eq!(sampler.epoch(), 1, "4 + 3 positions use up the epoch");
    }

    #[test]
    fn same_seed_same_contexts_other_seed_other_contexts() {
        let docs = corpus(&[50; 8]);
        let draw = |seed| {
            let mut sampler = PositionSampler::new(8, seed, 2, 4, 32, None).unwrap();
            doc_positions(&sampler.next_batch(&docs, 24).unwrap())
        };
        assert_eq!(draw(11), draw(11));
        assert_ne!(draw(11), draw(12));
    }

    #[test]
    fn restored_state_continues_exactly() {
        let docs = corpus(&[17, 33, 9, 64, 25]);
        let mut original = PositionSampler::new(5, 42, 2, 3, 8, None).unwrap();
        for _ in 0..3 {
            original.next_batch(&docs, 3).unwrap();
        }
        let saved = serde_json::to_string(original.state()).unwrap();
        let continued: Vec<Vec<Context>> = (0..3)
            .map(|_| original.next_batch(&docs, 3).unwrap())
            .collect();

        let mut resumed = PositionSampler::new(5, 42, 2, 3, 8, None).unwrap();
        resumed
            .restore(serde_json::from_str(&saved).unwrap())
            .unwrap();
        let replayed: Vec<Vec<Context>> = (0..3)
            .map(|_| resumed.next_batch(&docs, 3).unwrap())
            .collect();
        assert_eq!(continued, replayed);
        assert_eq!(original.state(), resumed.state());
    }

    #[test]
    fn restore_refuses_a_state_from_another_corpus_or_seed() {
        let other = PositionSampler::new(4, 1, 1, 2, 8, None).unwrap();
        let mut sampler = PositionSampler::new(5, 1, 1, 2, 8, None).unwrap();
        let err = sampler
            .restore(other.state().clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4 training documents") && err.contains("this run has 5"),
            "{err}"
        );
        let other = PositionSampler::new(5, 2, 1, 2, 8, None).unwrap();
        assert!(sampler.restore(other.state().clone()).is_err());
    }

    #[test]
    fn fixed_contexts_cycle_over_the_first_contexts_of_the_walk() {
        let docs = corpus(&[40; 6]);
        let mut walk = PositionSampler::new(6, 5, 1, 4, 16, None).unwrap();
        let first_three = walk.next_batch(&docs, 3).unwrap();
        let mut fixed = PositionSampler::new(6, 5, 1, 4, 16, Some(3)).unwrap();
        let drawn: Vec<Context> = (0..4)
            .flat_map(|_| fixed.next_batch(&docs, 2).unwrap())
            .collect();
        let expected: Vec<Context> = first_three.iter().cycle().take(8).cloned().collect();
        assert_eq!(drawn, expected);

        let mut resumed = PositionSampler::new(6, 5, 1, 4, 16, Some(3)).unwrap();
        resumed.restore(fixed.state().clone()).unwrap();
        assert_eq!(
            resumed.next_batch(&docs, 2).unwrap(),
            fixed.next_batch(&docs, 2).unwrap()
        );
    }

    #[test]
    fn too_short_documents_and_wrong_corpus_are_errors() {
        let docs = corpus(&[20, 4]);
        let mut sampler = PositionSampler::new(2, 0, 1, 4, 16, None).unwrap();
        let err = sampler.next_batch(&docs, 2).unwrap_err().to_string();
        assert!(err.contains("doc1.txt has 4 tokens"), "{err}");
        let mut sampler = PositionSampler::new(3, 0, 1, 4, 16, None).unwrap();
        let err = sampler.next_batch(&docs, 1).unwrap_err().to_string();
        assert!(
            err.contains("made for 3 training documents but the corpus has 2"),
            "{err}"
        );
    }

    #[test]
    fn new_refuses_impossible_settings() {
        assert!(PositionSampler::new(0, 0, 1, 4, 16, None).is_err());
        assert!(PositionSampler::new(3, 0, 0, 4, 16, None).is_err());
        assert!(PositionSampler::new(3, 0, 1, 16, 16, None).is_err());
        assert!(PositionSampler::new(3, 0, 1, 4, 16, Some(0)).is_err());
    }

    #[test]
    fn shards_interleave_and_cover_the_batch() {
        let items: Vec<usize> = (0..10).collect();
        assert_eq!(shard(&items, 0, 3).unwrap(), [0, 3, 6, 9]);
        assert_eq!(shard(&items, 2, 3).unwrap(), [2, 5, 8]);
        let mut all: Vec<usize> = (0..3).flat_map(|r| shard(&items, r, 3).unwrap()).collect();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(shard(&items, 0, 1).unwrap(), items);
        assert!(shard(&items, 3, 3).is_err());
    }
}
