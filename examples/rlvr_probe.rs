//! Greedy (and optionally sampled) think-then-answer accuracy of model directories on tally
//! items, split by the number of digits: how configs/post-rlvr.toml was chosen on validation
//! streams (see `rlvr_raises_exact_match_accuracy_on_held_out_tallies` in tests/post_train.rs).
//!
//! ```text
//! cargo run --release --example rlvr_probe -- SEED N TRAIN_JSONL SAMPLES MODEL_DIR...
//! ```
//! - SEED: the items are the first N tallies of `demo::post::rlvr_items(SEED, …)` whose question
//!   is not in TRAIN_JSONL; SEED = `train` takes the first N items of TRAIN_JSONL itself.
//! - SAMPLES: also report accuracy at T = 0.7 (thought and answer), averaged over SAMPLES
//!   draws per item; 0 = greedy only.
//! - VERBOSE=1 prints each greedy miss with its thought.
//!
//! Greedy uses the demo's evaluation rule (the raw tally then `<think>`, budget 16, 2 answer
//! tokens), as the test does.
use rlp::eval::generate::{think_then_answer, GenSpec};
use rlp::eval::items::{load_items, Item};
use rlp::model::weights;
use rlp::objective::rlvr::{self, PromptLayout, RewardSpec};
use rlp::sampling::SamplingParams;
use std::collections::HashSet;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(a.len() >= 6, "usage: rlvr_probe SEED|train N TRAIN_JSONL SAMPLES MODEL_DIR...");
    let n: usize = a[2].parse()?;
    let train = load_items(Path::new(&a[3]))?;
    let samples: usize = a[4].parse()?;
    let items: Vec<Item> = if a[1] == "train" {
        train.iter().take(n).cloned().collect()
    } else {
        let seen: HashSet<&str> = train.iter().map(|t| t.question.as_str()).collect();
        rlp::demo::post::rlvr_items(a[1].parse()?, 20 * n, &Default::default())
            .into_iter()
            .filter(|q| !seen.contains(q.question.as_str()))
            .take(n)
            .enumerate()
            .map(|(i, q)| Item { id: format!("h{i}"), question: q.question, answer: q.answer, choices: vec![] })
            .collect()
    };
    let verbose = std::env::var("VERBOSE").is_ok();
    let digits = |it: &Item| it.question.split(' ').count() - 2; // "tally a4 b3 is"
    for dir in &a[5..] {
        let (m, tok) = weights::load_for_thinking(Path::new(dir), false, "rlvr_probe")?;
        let m = m.detached()?;
        let prompts: Vec<Vec<u32>> = items.iter().map(|it| rlvr::prompt(&tok, it, PromptLayout::Raw, true)).collect::<anyhow::Result<_>>()?;
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        // (accuracy, right/total per digit count)
        let mut score = |spec: &GenSpec, show: bool| -> anyhow::Result<(f64, Vec<(usize, usize)>)> {
            let gens = think_then_answer(&m, &tok, &prompts, spec, &mut rng)?;
            let mut by = vec![(0usize, 0usize); 8];
            let mut right = 0;
            for (g, it) in gens.iter().zip(&items) {
                let ans = tok.decode(&g.answer)?;
                let ok = rlvr::grade_sample(it, &ans, g.closed, true, &RewardSpec::default()).correct;
                right += usize::from(ok);
                let d = digits(it).min(7);
                by[d].0 += usize::from(ok);
                by[d].1 += 1;
                if show && !ok {
                    println!("  miss: {} (answer {}) thought {:?} closed {} answer {ans:?}", it.question, it.answer, tok.decode(&g.thought)?, g.closed);
                }
            }
            Ok((right as f64 / items.len() as f64, by))
        };
        let greedy = GenSpec { think_budget: 16, answer_tokens: 2, sampling: None, answer_sampling: None };
        let (acc, by) = score(&greedy, verbose)?;
        let se = (acc * (1.0 - acc) / items.len() as f64).sqrt();
        let by: Vec<String> = by.iter().enumerate().filter(|(_, b)| b.1 > 0).map(|(d, b)| format!("{d}:{}/{}", b.0, b.1)).collect();
        let mut line = format!("{dir}: n={} greedy={acc:.4} (se {se:.4}) digits [{}]", items.len(), by.join(" "));
        if samples > 0 {
            let sp = SamplingParams { temperature: 0.7, top_p: 1.0, top_k: 0 };
            let spec = GenSpec { think_budget: 16, answer_tokens: 2, sampling: Some(sp), answer_sampling: Some(sp) };
            let mut total = 0.0;
            for _ in 0..samples {
                total += score(&spec, false)?.0;
            }
            line += &format!(" sampled@0.7={:.4}", total / samples as f64);
        }
        println!("{line}");
    }
    Ok(())
}
