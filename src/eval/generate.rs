//! Batched "think, then answer" generation for benchmarks.
//!
//! Each row starts from its prompt (which ends with `<think>` when thinking is on). In the thought
//! phase the masks are the training rollouts' (EOS, pad, `<think>` and rows past the tokenizer
//! never sampled; `</think>` not as the first thought token; `</think>` forced at the budget). After
//! `</think>` the answer phase writes at most `answer_tokens` tokens with `<think>`/`</think>`
//! banned, and stops at EOS, or at a newline once the answer holds visible text. Finished rows
//! leave the batch (their KV-cache rows are dropped).

use crate::model::Model;
use crate::sampling::{argmax, sample, tempered_logprobs, SamplingParams};
use crate::tokenizer::Tok;
use anyhow::Result;
use rand_chacha::ChaCha8Rng;

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    /// Most thought tokens; 0 = no thought (the prompt must not end with `<think>`).
    pub think_budget: usize,
    pub answer_tokens: usize,
    /// How thought tokens are drawn; None = greedy.
    pub sampling: Option<SamplingParams>,
    /// How answer tokens are drawn; None = greedy.
    pub answer_sampling: Option<SamplingParams>,
}

/// One finished generation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generation {
    pub thought: Vec<u32>,
    /// The model wrote `</think>` itself (false: forced at the budget, or no thought).
    pub closed: bool,
    pub answer: Vec<u32>,
}

enum Phase {
    Thought,
    Answer,
}

struct Row {
    slot: usize,
    phase: Phase,
    gen: Generation,
}

/// Generate for every prompt (rows are independent; `rng` is consumed in row order each step).
pub fn think_then_answer(
    model: &Model,
    tok: &Tok,
    prompts: &[Vec<u32>],
    spec: &GenSpec,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let (logits, cache) = model.prefill(prompts, longest + spec.think_budget + 1 + spec.answer_tokens)?;
    let logits: Vec<Vec<f32>> = logits.to_vec2::<f32>()?;
    let out_of_vocab = tok.vocab_size() as u32..model.cfg.vocab_size as u32;
    let mut thought_ban: Vec<u32> = tok.eos_ids.clone();
    thought_ban.push(tok.think_id);
    thought_ban.extend(out_of_vocab.clone());
    let mut answer_ban = vec![tok.think_id, tok.end_think_id];
    answer_ban.extend(out_of_vocab);
    let first_phase = || {
        if spec.think_budget > 0 {
            Phase::Thought
        } else {
            Phase::Answer
        }
    };
    let rows: Vec<Row> = (0..prompts.len())
        .map(|slot| Row {
            slot,
            phase: first_phase(),
            gen: Generation {
                thought: vec![],
                closed: false,
                answer: vec![],
            },
        })
        .collect();
    let mut done: Vec<Option<Generation>> = vec![None; prompts.len()];
    let pick = |l: &[f32], how: &Option<SamplingParams>, banned: &[u32], rng: &mut ChaCha8Rng| match how {
        Some(p) => sample(l, p, banned, rng).0,
        None => {
            let lp = tempered_logprobs(l, 1.0, banned);
            argmax(&lp.iter().map(|&x| x as f32).collect::<Vec<_>>())
        }
    };
    model.decode_rows(cache, logits, rows, |row, logits| {
        let next = match row.phase {
            Phase::Thought => {
                let u = row.gen.thought.len();
                if u == spec.think_budget {
                    tok.end_think_id
                } else {
                    let mut banned = thought_ban.clone();
                    if u == 0 {
                        banned.push(tok.end_think_id);
                    }
                    let t = pick(logits, &spec.sampling, &banned, rng);
                    if t == tok.end_think_id {
                        row.gen.closed = true;
                    }
                    t
                }
            }
            Phase::Answer => pick(logits, &spec.answer_sampling, &answer_ban, rng),
        };
        let finished = match row.phase {
            Phase::Thought => {
                if next == tok.end_think_id {
                    row.phase = Phase::Answer;
                } else {
                    row.gen.thought.push(next);
                }
                false
            }
            Phase::Answer => {
                if tok.eos_ids.contains(&next) {
                    true
                } else {
                    let has_text = !tok.decode(&row.gen.answer)?.trim().is_empty();
                    if has_text && tok.decode(&[next])?.contains('\n') {
                        true
                    } else {
                        row.gen.answer.push(next);
                        row.gen.answer.len() >= spec.answer_tokens
                    }
                }
            }
        };
        if finished {
            done[row.slot] = Some(std::mem::take(&mut row.gen));
            return Ok(None);
        }
        Ok(Some(next))
    })?;
    Ok(done.into_iter().map(|g| g.expect("every row finishes")).collect())
}
