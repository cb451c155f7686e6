//! Benchmarks: prompt, think, answer, extract, score.
//!
//! Prompt (raw text, no chat template, the same layout RLP trains on):
//!
//! ```text
//! Question: {question}
//! A. {choice 1}            (multiple choice only)
//! B. {choice 2}
//! Answer:<think>
//! ```
//!
//! `<think>` is the think token itself (left out when the thought budget is 0). The model writes a
//! thought, `</think>` (forced at the budget), then its answer; only the text after `</think>` is
//! scored (see `answer.rs` for the extraction rules).
//!
//! Metrics: `greedy` = fraction of items answered right with greedy thought and answer;
//! `pass@1` = mean over items of (right samples / K) with K sampled generations (temperature 0.7
//! by default); `no_answer_frac` = fraction of all generations with nothing extractable;
//! `thought_len_mean`, `thought_closed_frac` (the model wrote `</think>` before the budget),
//! `answer_len_mean` (tokens).

use super::answer::{extract_letter, extract_number, numbers_match};
use super::generate::{think_then_answer, GenSpec, Generation};
use super::items::{AnswerKind, Item};
use super::Metrics;
use crate::model::Model;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use anyhow::Result;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// K sampled generations per item for pass@1 (0: greedy only).
    pub samples: usize,
    pub think_budget: usize,
    pub answer_tokens: usize,
    pub sampling: SamplingParams,
    /// Rows decoded together.
    pub batch: usize,
}

/// The prompt text before the think token.
pub fn prompt_text(item: &Item) -> String {
    let mut s = format!("Question: {}\n", item.question.trim());
    for (i, c) in item.choices.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", super::answer::letter(i), c.trim()));
    }
    s.push_str("Answer:");
    s
}

/// Prompt ids: the text, then `<think>` when thinking.
pub fn prompt_ids(tok: &Tok, item: &Item, think: bool) -> Result<Vec<u32>> {
    let mut ids = tok.encode(&prompt_text(item))?;
    if think {
        ids.push(tok.think_id);
    }
    Ok(ids)
}

/// Outcome of one answer: Some(correct) when something was extracted, None when nothing was.
pub fn grade(item: &Item, answer: &str) -> Option<bool> {
    match item.kind() {
        AnswerKind::Letter(gold) => extract_letter(answer, &item.choices).map(|i| i == gold),
        AnswerKind::Number(gold) => extract_number(answer).map(|x| numbers_match(x, gold)),
        AnswerKind::Text => {
            let a = answer.trim().trim_end_matches('.').trim().to_lowercase();
            (!a.is_empty()).then(|| a == item.answer.trim().to_lowercase())
        }
    }
}

/// Run a benchmark; returns the metrics and a few example generations (JSON) for the report.
pub fn bench_eval(
    model: &Model,
    tok: &Tok,
    items: &[Item],
    o: &BenchOptions,
    rng: &mut ChaCha8Rng,
) -> Result<(Metrics, Vec<Value>)> {
    let think = o.think_budget > 0;
    let prompts: Vec<Vec<u32>> = items
        .iter()
        .map(|it| prompt_ids(tok, it, think))
        .collect::<Result<_>>()?;
    let greedy_spec = GenSpec {
        think_budget: o.think_budget,
        answer_tokens: o.answer_tokens,
        sampling: None,
        answer_sampling: None,
    };
    let greedy = generate_batched(model, tok, &prompts, &greedy_spec, o.batch, rng)?;
    let sampled_prompts: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), o.samples))
        .collect();
    let sample_spec = GenSpec {
        sampling: Some(o.sampling),
        answer_sampling: Some(o.sampling),
        ..greedy_spec
    };
    let sampled = generate_batched(model, tok, &sampled_prompts, &sample_spec, o.batch, rng)?;

    let mut m = Metrics::new();
    let graded = |gens: &[Generation], item_of: &dyn Fn(usize) -> usize| -> Result<Vec<Option<bool>>> {
        gens.iter()
            .enumerate()
            .map(|(i, g)| Ok(grade(&items[item_of(i)], &tok.decode(&g.answer)?)))
            .collect()
    };
    let greedy_grades = graded(&greedy, &|i| i)?;
    let k = o.samples.max(1);
    let sample_grades = graded(&sampled, &|i| i / k)?;
    let right = |g: &Option<bool>| if *g == Some(true) { 1.0 } else { 0.0 };
    m.insert(
        "greedy".into(),
        greedy_grades.iter().map(right).sum::<f64>() / items.len() as f64,
    );
    if o.samples > 0 {
        m.insert(
            "pass@1".into(),
            sample_grades.iter().map(right).sum::<f64>() / sampled.len() as f64,
        );
        m.insert("samples".into(), o.samples as f64);
    }
    let all: Vec<&Generation> = greedy.iter().chain(&sampled).collect();
    let grades: Vec<&Option<bool>> = greedy_grades.iter().chain(&sample_grades).collect();
    let n = all.len() as f64;
    m.insert(
        "no_answer_frac".into(),
        grades.iter().filter(|g| g.is_none()).count() as f64 / n,
    );
    m.insert(
        "answer_len_mean".into(),
        all.iter().map(|g| g.answer.len() as f64).sum::<f64>() / n,
    );
    if think {
        m.insert(
            "thought_len_mean".into(),
            all.iter().map(|g| g.thought.len() as f64).sum::<f64>() / n,
        );
        m.insert(
            "thought_closed_frac".into(),
            all.iter().filter(|g| g.closed).count() as f64 / n,
        );
    }
    let examples = items
        .iter()
        .zip(&greedy)
        .zip(&greedy_grades)
        .take(5)
        .map(|((it, g), ok)| {
            Ok(json!({"id": it.id, "gold": it.answer, "thought": tok.decode(&g.thought)?, "answer": tok.decode(&g.answer)?, "correct": ok}))
        })
        .collect::<Result<_>>()?;
    Ok((m, examples))
}

fn generate_batched(
    model: &Model,
    tok: &Tok,
    prompts: &[Vec<u32>],
    spec: &GenSpec,
    batch: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Generation>> {
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch.max(1)) {
        out.extend(think_then_answer(model, tok, chunk, spec, rng)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(answer: &str, choices: &[&str]) -> Item {
        Item {
            id: "t".into(),
            question: "Q?".into(),
            answer: answer.into(),
            choices: choices.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn prompt_layout() {
        assert_eq!(
            prompt_text(&item("B", &["x", "y"])),
            "Question: Q?\nA. x\nB. y\nAnswer:"
        );
        assert_eq!(prompt_text(&item("3", &[])), "Question: Q?\nAnswer:");
    }

    #[test]
    fn grading_numbers_letters_text_and_empty() {
        assert_eq!(grade(&item("1,200", &[]), " $1200.00 in total"), Some(true));
        assert_eq!(grade(&item("12", &[]), " 13"), Some(false));
        assert_eq!(grade(&item("12", &[]), "   "), None);
        assert_eq!(grade(&item("B", &["x", "y"]), " The answer is (B)"), Some(true));
        assert_eq!(grade(&item("Yes", &[]), " yes."), Some(true));
        assert_eq!(grade(&item("Yes", &[]), ""), None);
    }
}
