//! The demo's synthetic world: short documents of plain prose mixed with arithmetic stated in
//! words, where the next token after "so she had" is hard to guess in one step and easy after a
//! few lines of working. Generated from a seed with ChaCha8, so a seed always gives the same
//! bytes on every machine.
//!
//! A problem reads `"Mara had 347 apples and bought 268 more, so she had 615 apples."`. In the
//! pretraining split the worked solution sits in a thought right before the answer, in the
//! token layout RLP uses (`prefix<think> working</think> answer`):
//! `"…so she had<think> 347 + 268: 7+8=15 carry 1, 4+6+1=11 carry 1, 3+2+1=6 → 615</think> 615 apples."`
//! Half the pretraining problems (`PRETRAIN_WORKED_FRACTION`) show their working; the
//! RLP/CPT training split and the held-out split carry no thoughts. Problem kinds: addition,
//! subtraction, multiplication by one digit, hours/weeks conversions, and a two-step bus problem.
//! What this leaves out: natural language variety (a few templates), numbers past four digits.

use super::working::{addition, multiplication, subtraction};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which split a document belongs to; each has its own ChaCha8 stream of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusKind {
    /// Pretraining text for the base model: worked solutions in `<think>…</think>` blocks.
    Pretrain,
    /// The text RLP, RPT and continued pretraining train on: no thoughts.
    Train,
    /// Held-out text for evaluation (loss and the answer task): no thoughts.
    Heldout,
}

impl CorpusKind {
    fn stream(self) -> u64 {
        match self {
            CorpusKind::Pretrain => 1,
            CorpusKind::Train => 2,
            CorpusKind::Heldout => 3,
        }
    }

    pub fn has_thoughts(self) -> bool {
        self == CorpusKind::Pretrain
    }
}

/// One arithmetic statement whose answer is its last number: `lead answer tail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The text before the answer, without the space before it ("…, so she had").
    pub lead: String,
    /// The worked solution, ending in `→ answer`.
    pub working: String,
    pub answer: u64,
    /// The text after the answer (" apples.").
    pub tail: String,
    /// Whether the pretraining split shows this problem's working (drawn for every split, so a
    /// seed's documents are the same in each; only `Pretrain` renders it).
    pub worked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Prose(String),
    Problem(Problem),
}

/// A document: sentences of prose and problems, joined by single spaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub segments: Vec<Segment>,
}

/// One exact-match item: the model sees `prompt` and should continue with " `answer`".
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnswerItem {
    /// The document (without thoughts) up to the answer, ending before the space that precedes it.
    pub prompt: String,
    /// The answer's digits.
    pub answer: String,
}

impl Problem {
    fn render(&self, with_thoughts: bool) -> String {
        if with_thoughts && self.worked {
            format!("{}<think> {}</think> {}{}", self.lead, self.working, self.answer, self.tail)
        } else {
            format!("{} {}{}", self.lead, self.answer, self.tail)
        }
    }
}

impl Document {
    /// The document's text; `with_thoughts` puts each worked problem's working before its answer.
    pub fn render(&self, with_thoughts: bool) -> String {
        let parts: Vec<String> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Prose(p) => p.clone(),
                Segment::Problem(p) => p.render(with_thoughts),
            })
            .collect();
        parts.join(" ")
    }

    /// One answer item per problem: the thought-free text up to that problem's answer.
    pub fn answer_items(&self) -> Vec<AnswerItem> {
        let mut items = Vec::new();
        let mut before: Vec<String> = Vec::new();
        for s in &self.segments {
            match s {
                Segment::Prose(p) => before.push(p.clone()),
                Segment::Problem(p) => {
                    let mut prompt = before.join(" ");
                    if !prompt.is_empty() {
                        prompt.push(' ');
                    }
                    prompt.push_str(&p.lead);
                    items.push(AnswerItem { prompt, answer: p.answer.to_string() });
                    before.push(p.render(false));
                }
            }
        }
        items
    }
}

/// True when `completion` (generated after an item's prompt) starts with the answer, leading
/// whitespace ignored, and the number ends there ("615 apples" matches 615, "6150" does not).
pub fn answer_matches(completion: &str, answer: &str) -> bool {
    let rest = completion.trim_start();
    rest.strip_prefix(answer).is_some_and(|after| !after.starts_with(|c: char| c.is_ascii_digit()))
}

/// The share of pretraining problems shown with their working. The rest are stated plainly, so
/// the base model also predicts answers without thinking (badly) and `<think>` is a choice.
pub const PRETRAIN_WORKED_FRACTION: f64 = 0.5;

/// `n_docs` documents of a split. The first k documents do not depend on `n_docs`.
pub fn generate_documents(seed: u64, n_docs: usize, kind: CorpusKind) -> Vec<Document> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(kind.stream());
    (0..n_docs).map(|_| document(&mut rng)).collect()
}

/// The texts of `n_docs` documents of a split (with thoughts only for `Pretrain`).
pub fn generate_corpus(seed: u64, n_docs: usize, kind: CorpusKind) -> Vec<String> {
    generate_documents(seed, n_docs, kind).iter().map(|d| d.render(kind.has_thoughts())).collect()
}

/// The exact-match answer task over the held-out split's first `n_docs` documents.
pub fn answer_task(seed: u64, n_docs: usize) -> Vec<AnswerItem> {
    generate_documents(seed, n_docs, CorpusKind::Heldout).iter().flat_map(Document::answer_items).collect()
}

/// 4 to 7 sentences, each a problem with probability 0.6, at least one problem.
fn document(rng: &mut ChaCha8Rng) -> Document {
    let n = rng.gen_range(4..=7);
    let mut segments: Vec<Segment> =
        (0..n).map(|_| if rng.gen_bool(0.6) { Segment::Problem(problem(rng)) } else { Segment::Prose(prose(rng)) }).collect();
    if !segments.iter().any(|s| matches!(s, Segment::Problem(_))) {
        let i = rng.gen_range(0..n);
        segments[i] = Segment::Problem(problem(rng));
    }
    Document { segments }
}

const PEOPLE: [(&str, &str); 12] = [
    ("Mara", "she"), ("Tom", "he"), ("Ines", "she"), ("Omar", "he"), ("Lena", "she"), ("Ravi", "he"),
    ("Sofia", "she"), ("Jonas", "he"), ("Aiko", "she"), ("Pablo", "he"), ("Nadia", "she"), ("Felix", "he"),
];
const THINGS: [&str; 12] =
    ["apples", "marbles", "stamps", "coins", "books", "shells", "pencils", "cards", "beads", "cookies", "stickers", "buttons"];
const GAINS: [&str; 3] = ["bought", "found", "was given"];
const LOSSES: [&str; 3] = ["sold", "gave away", "lost"];

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    xs.choose(rng).expect("word lists are not empty")
}

/// `n unit` with the unit singular for 1 ("1 hour", "3 hours").
fn count(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// A two- or three-digit number.
fn number(rng: &mut ChaCha8Rng) -> u64 {
    if rng.gen_bool(0.3) {
        rng.gen_range(10..100)
    } else {
        rng.gen_range(100..1000)
    }
}

fn problem(rng: &mut ChaCha8Rng) -> Problem {
    let worked = rng.gen_bool(PRETRAIN_WORKED_FRACTION);
    Problem { worked, ..unworked_problem(rng) }
}

fn unworked_problem(rng: &mut ChaCha8Rng) -> Problem {
    let (name, pronoun) = *pick(rng, &PEOPLE);
    let thing = *pick(rng, &THINGS);
    match rng.gen_range(0..6) {
        0 => {
            let (a, b) = (number(rng), number(rng));
            let gain = pick(rng, &GAINS);
            let lead = format!("{name} had {a} {thing} and {gain} {b} more, so {pronoun} had");
            Problem { lead, working: addition(a, b), answer: a + b, tail: format!(" {thing}."), worked: false }
        }
        1 => {
            let a = rng.gen_range(100..1000);
            let b = rng.gen_range(10..a);
            let loss = pick(rng, &LOSSES);
            let lead = format!("{name} had {a} {thing} and {loss} {b}, so {pronoun} had");
            Problem { lead, working: subtraction(a, b), answer: a - b, tail: format!(" {thing} left."), worked: false }
        }
        2 => {
            let (a, k) = (rng.gen_range(12..100), rng.gen_range(3..10));
            let lead = format!("{name} filled {a} boxes with {k} {thing} each, so {pronoun} had");
            Problem { lead, working: multiplication(a, k), answer: a * k, tail: format!(" {thing} in all."), worked: false }
        }
        3 => {
            let (h, m) = (rng.gen_range(1..10), rng.gen_range(1..60));
            let lead = format!("{} and {} is", count(h, "hour"), count(m, "minute"));
            let working = format!("{h}*60={}, {}", h * 60, addition(h * 60, m));
            Problem { lead, working, answer: h * 60 + m, tail: " minutes.".into(), worked: false }
        }
        4 => {
            let (w, d) = (rng.gen_range(2..30), rng.gen_range(1..7));
            let lead = format!("{} and {} is", count(w, "week"), count(d, "day"));
            let working = format!("{}, {}", multiplication(w, 7), addition(w * 7, d));
            Problem { lead, working, answer: w * 7 + d, tail: " days.".into(), worked: false }
        }
        _ => {
            let a = rng.gen_range(20..200);
            let (off, on) = (rng.gen_range(1..a), rng.gen_range(1..100));
            let lead = format!(
                "A bus left the station with {a} passengers. At the first stop {off} got off and {on} got on, so the bus then carried"
            );
            let working = format!("{}, {}", subtraction(a, off), addition(a - off, on));
            Problem { lead, working, answer: a - off + on, tail: " passengers.".into(), worked: false }
        }
    }
}

const SUBJECTS: [&str; 10] =
    ["The old dog", "A small boat", "The baker", "My neighbour", "The river", "A grey cat", "The children", "The teacher", "A tall tree", "The wind"];
const VERBS: [&str; 8] = ["rested", "waited", "moved slowly", "was quiet", "sang softly", "looked happy", "stood still", "went home"];
const PLACES: [&str; 7] = ["by the bridge", "near the market", "in the garden", "at the edge of town", "under the clouds", "on the hill", "by the sea"];
const TIMES: [&str; 5] = ["in the morning", "after lunch", "all day", "at night", "before the rain"];

/// A plain sentence with nothing to compute: "The baker waited near the market after lunch."
fn prose(rng: &mut ChaCha8Rng) -> String {
    let (s, v, p) = (pick(rng, &SUBJECTS), pick(rng, &VERBS), pick(rng, &PLACES));
    if rng.gen_bool(0.5) {
        format!("{s} {v} {p} {}.", pick(rng, &TIMES))
    } else {
        format!("{s} {v} {p}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_matching_needs_the_whole_number() {
        assert!(answer_matches(" 615 apples.", "615"));
        assert!(answer_matches("615", "615"));
        assert!(!answer_matches(" 6150", "615"));
        assert!(!answer_matches(" 61", "615"));
        assert!(!answer_matches("apples 615", "615"));
    }

    #[test]
    fn answer_items_follow_the_rendered_text() {
        let docs = generate_documents(7, 20, CorpusKind::Heldout);
        for d in &docs {
            let text = d.render(false);
            for item in d.answer_items() {
                let continued = format!("{} {}", item.prompt, item.answer);
                assert!(text.starts_with(&continued), "{continued:?} is not a prefix of {text:?}");
            }
        }
    }

    #[test]
    fn singular_units() {
        assert_eq!(count(1, "hour"), "1 hour");
        assert_eq!(count(3, "day"), "3 days");
    }
}
