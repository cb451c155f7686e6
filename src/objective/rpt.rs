//! The RPT baseline's reward and token filter (rlp-paper.md §9.2–9.3; Dong et al. 2025).
//!
//! RPT asks the model to reason and then name the next token(s) in `\boxed{}`. The reward is
//! binary: 1 iff the guessed bytes are a prefix of the true continuation that ends exactly on a
//! true token boundary. Positions are kept only where a proxy model is uncertain (entropy
//! filter).
//!
//! The trainer calls [`batch_rewards`] for a rollout batch; advantages and the loss are RLP's
//! (`objective::rlp`). Not here: running the proxy model for the filter (`train::contexts`).

use crate::data::corpus::TokenizedDocs;
use crate::data::sampler::Context;
use crate::rollout::Thought;
use crate::tokenizer::Tok;

/// The RPT reward of every rollout of a batch, [B·G]: [`prefix_match_reward`] of its guess
/// against the true continuation of its context in `docs`. The continuation is cut at
/// 4·`guess_tokens` + 4 true tokens, more bytes than any guess of `guess_tokens` tokens spans
/// in practice.
pub fn batch_rewards(tok: &Tok, docs: &TokenizedDocs, contexts: &[Context], thoughts: &[Vec<Thought>], guess_tokens: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for (c, group) in contexts.iter().zip(thoughts) {
        let doc = docs.tokens(c.doc);
        let window = &doc[c.pos..doc.len().min(c.pos + 4 * guess_tokens.max(1) + 4)];
        let pieces: Vec<Vec<u8>> = window.iter().map(|&id| tok.token_bytes(id).unwrap_or_default()).collect();
        let continuation: Vec<u8> = pieces.concat();
        let boundaries = token_end_offsets(&pieces.iter().map(|p| p.len()).collect::<Vec<_>>());
        for t in group {
            let guess: Vec<u8> = t.guess.iter().flat_map(|&id| tok.token_bytes(id).unwrap_or_default()).collect();
            out.push(prefix_match_reward(&guess, &continuation, &boundaries));
        }
    }
    out
}

/// RPT prefix-match reward (§9.2): 1.0 iff `guess` is non-empty, equals the first
/// `guess.len()` bytes of `continuation`, and `guess.len()` is one of `token_boundaries`
/// (byte offsets into `continuation` where a true token ends, i.e. cumulative token byte
/// lengths; see [`token_end_offsets`]); else 0.0.
///
/// The comparison is on raw bytes, so a guess that stops inside a multi-byte UTF-8 character
/// matches only if the true tokens split the character at that very byte.
pub fn prefix_match_reward(guess: &[u8], continuation: &[u8], token_boundaries: &[usize]) -> f32 {
    let l = guess.len();
    let matches = l > 0 && continuation.starts_with(guess) && token_boundaries.contains(&l);
    if matches {
        1.0
    } else {
        0.0
    }
}

/// Byte offsets where each true token ends: the running sums of the tokens' byte lengths,
/// e.g. lengths [3, 1, 4] → [3, 4, 8]. Zero-length tokens repeat the previous offset.
pub fn token_end_offsets(token_byte_lens: &[usize]) -> Vec<usize> {
    token_byte_lens
        .iter()
        .scan(0usize, |end, &len| {
            *end += len;
            Some(*end)
        })
        .collect()
}

/// Shannon entropy (nats) of softmax(`logits`), computed stably in f64:
/// `H = log Z − Σ_i p_i·l_i` with `log Z = m + ln Σ_i exp(l_i − m)`, m = max l.
/// Entries of −inf (masked) contribute nothing. Empty input → 0.
pub fn entropy_from_logits(logits: &[f32]) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if logits.is_empty() || m == f64::NEG_INFINITY {
        return 0.0;
    }
    let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    let log_z = m + z.ln();
    let expected_logit: f64 =
        logits.iter().map(|&l| l as f64).filter(|l| l.is_finite()).map(|l| (l - log_z).exp() * l).sum();
    (log_z - expected_logit).max(0.0) as f32
}

/// Entropy (nats) of the distribution renormalised over the `k` largest logits: RPT's proxy
/// entropy "over the top-16 next-token candidates" (§9.3). `k` ≥ `logits.len()` is the full
/// entropy.
pub fn top_k_entropy_from_logits(logits: &[f32], k: usize) -> f32 {
    if k >= logits.len() {
        return entropy_from_logits(logits);
    }
    let mut top = logits.to_vec();
    top.select_nth_unstable_by(k, |a, b| b.total_cmp(a));
    top.truncate(k);
    entropy_from_logits(&top)
}

/// Positions to train on, by proxy entropy. Returns indices into `entropies`, ascending.
///
/// - `threshold = Some(h)`: keep only positions with entropy strictly above h (RPT drops
///   "easy" low-entropy tokens; its difficulty splits use `entropy > 0.5/1.0/1.5`).
/// - `top_frac = Some(f)`: keep at most ⌈f·n⌉ positions (n = `entropies.len()`), the ones with
///   the highest entropy; ties go to the earlier position. f is clamped to [0, 1]; ⌈·⌉ is taken
///   with a 1e-4 slack so that f32 rounding (0.3·10 = 3.0000001) does not add a position.
/// - Both: the threshold first, then the top ⌈f·n⌉ of the survivors. Neither: every position.
///
/// NaN entropies are never selected.
pub fn select_by_entropy(entropies: &[f32], threshold: Option<f32>, top_frac: Option<f32>) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..entropies.len())
        .filter(|&i| !entropies[i].is_nan())
        .filter(|&i| threshold.is_none_or(|h| entropies[i] > h))
        .collect();
    if let Some(f) = top_frac {
        let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) as f64 };
        let k = (f * entropies.len() as f64 - 1e-4).ceil().max(0.0) as usize;
        // Stable sort by descending entropy keeps earlier positions first among ties.
        kept.sort_by(|&a, &b| entropies[b].total_cmp(&entropies[a]));
        kept.truncate(k);
        kept.sort_unstable();
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Continuation " the cat sat" tokenised as [" the", " cat", " sat"] → ends [4, 8, 12].
    const CONT: &[u8] = b" the cat sat";
    const ENDS: [usize; 3] = [4, 8, 12];

    #[test]
    fn token_end_offsets_are_running_sums() {
        assert_eq!(token_end_offsets(&[4, 4, 4]), ENDS.to_vec());
        assert_eq!(token_end_offsets(&[3, 1, 4]), vec![3, 4, 8]);
        assert!(token_end_offsets(&[]).is_empty());
    }

    #[test]
    fn single_and_multi_token_guesses_on_boundaries_score_one() {
        assert_eq!(prefix_match_reward(b" the", CONT, &ENDS), 1.0);
        assert_eq!(prefix_match_reward(b" the cat", CONT, &ENDS), 1.0);
        assert_eq!(prefix_match_reward(b" the cat sat", CONT, &ENDS), 1.0);
    }

    #[test]
    fn guess_ending_mid_token_scores_zero() {
        // " th" (3 bytes) and " the c" (6 bytes) are true prefixes but 3, 6 ∉ {4, 8, 12}.
        assert_eq!(prefix_match_reward(b" th", CONT, &ENDS), 0.0);
        assert_eq!(prefix_match_reward(b" the c", CONT, &ENDS), 0.0);
    }

    #[test]
    fn wrong_bytes_empty_and_overlong_guesses_score_zero() {
        assert_eq!(prefix_match_reward(b"the", CONT, &ENDS), 0.0, "missing leading space");
        assert_eq!(prefix_match_reward(b" dog", CONT, &ENDS), 0.0);
        assert_eq!(prefix_match_reward(b" the dog", CONT, &ENDS), 0.0, "second token wrong");
        assert_eq!(prefix_match_reward(b"", CONT, &ENDS), 0.0);
        assert_eq!(prefix_match_reward(b" the cat sat!", CONT, &ENDS), 0.0, "longer than the text");
        assert_eq!(prefix_match_reward(b" the cat sat!", CONT, &[4, 8, 12, 13]), 0.0, "boundary past the end");
    }

    #[test]
    fn unicode_character_split_across_tokens() {
        // "éa" = [0xC3 0xA9 0x61]; a byte-level BPE splits it as [0xC3] [0xA9 0x61] → ends [1, 3].
        let cont = "éa".as_bytes();
        let ends = token_end_offsets(&[1, 2]);
        assert_eq!(ends, vec![1, 3]);
        assert_eq!(prefix_match_reward("é".as_bytes(), cont, &ends), 0.0, "ends at byte 2, inside token 2");
        assert_eq!(prefix_match_reward("éa".as_bytes(), cont, &ends), 1.0);
        assert_eq!(prefix_match_reward(&[0xC3], cont, &ends), 1.0, "the first token's raw byte");
        // The same text tokenised as ["é", "a"] → ends [2, 3]: now "é" scores.
        assert_eq!(prefix_match_reward("é".as_bytes(), cont, &[2, 3]), 1.0);
    }

    #[test]
    fn entropy_of_uniform_is_ln_v_and_of_one_hot_is_zero() {
        // V = 1000 equal logits (any value): H = ln 1000 = 6.9077553.
        assert!((entropy_from_logits(&[3.5; 1000]) - 6.907_755_3).abs() < 1e-5);
        // One-hot in the limit: logits [0, −1000, −1000]: p ≈ [1, e^−1000, …], H ≈ 0.
        assert!(entropy_from_logits(&[0.0, -1000.0, -1000.0]).abs() < 1e-6);
        // Huge logits must not overflow: [1e4, 1e4] is uniform over 2, H = ln 2.
        assert!((entropy_from_logits(&[1e4, 1e4]) - std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn entropy_hand_value_and_masked_entries() {
        // logits [ln 3, 0] → p = [3/4, 1/4]; H = −(0.75 ln 0.75 + 0.25 ln 0.25)
        //   = 0.75·0.2876821 + 0.25·1.3862944 = 0.2157616 + 0.3465736 = 0.5623351.
        let l = [3f32.ln(), 0.0];
        assert!((entropy_from_logits(&l) - 0.562_335_1).abs() < 1e-6);
        // A −inf (masked) logit changes nothing.
        assert!((entropy_from_logits(&[3f32.ln(), f32::NEG_INFINITY, 0.0]) - 0.562_335_1).abs() < 1e-6);
        assert_eq!(entropy_from_logits(&[]), 0.0);
    }

    #[test]
    fn top_k_entropy_renormalises_over_the_largest_logits() {
        // Top 2 of [0, 5, ln 3 + 5, −2] are [5 + ln 3, 5]: same shape as [ln 3, 0] → 0.5623351.
        let l = [0.0, 5.0, 3f32.ln() + 5.0, -2.0];
        assert!((top_k_entropy_from_logits(&l, 2) - 0.562_335_1).abs() < 1e-5);
        assert_eq!(top_k_entropy_from_logits(&l, 10), entropy_from_logits(&l));
    }

    #[test]
    fn entropy_filter_threshold_top_frac_and_both() {
        let h = [0.2, 1.4, 0.9, f32::NAN, 1.4, 0.6];
        assert_eq!(select_by_entropy(&h, None, None), vec![0, 1, 2, 4, 5]);
        assert_eq!(select_by_entropy(&h, Some(0.6), None), vec![1, 2, 4], "strictly above");
        // ⌈0.5·6⌉ = 3 highest: 1.4 (1), 1.4 (4), 0.9 (2).
        assert_eq!(select_by_entropy(&h, None, Some(0.5)), vec![1, 2, 4]);
        // ⌈0.25·6⌉ = ⌈1.5⌉ = 2; the 1.4 tie keeps both.
        assert_eq!(select_by_entropy(&h, None, Some(0.25)), vec![1, 4]);
        // ⌈0.2·6⌉ = ⌈1.2⌉ = 2 as well; ⌈0.1·6⌉ = 1 → the earlier of the tie.
        assert_eq!(select_by_entropy(&h, None, Some(0.1)), vec![1]);
        // Threshold 1.0 leaves {1, 4}; ⌈0.5·6⌉ = 3 more than enough.
        assert_eq!(select_by_entropy(&h, Some(1.0), Some(0.5)), vec![1, 4]);
        assert!(select_by_entropy(&h, None, Some(0.0)).is_empty());
        // f32 rounding: 0.3·10 = 3.0000001 must give 3, not 4.
        let ten: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert_eq!(select_by_entropy(&ten, None, Some(0.3)), vec![7, 8, 9]);
    }
}
