//! The demo's synthetic world: short documents of tallies, copies and plain prose, where the
//! token after "is" is hard to get in one step and easy after a few lines of working.
//! Generated from a seed with ChaCha8, so a seed always gives the same bytes on every machine.
//!
//! A tally reads `"tally a4 b3 c8 d1 is 6."`: the answer is the last digit of the sum of the
//! digits (4+3+8+1 = 16). Its working is the running last digit, one labelled step per digit,
//! `"a4 b7 c5 d6"`: each step needs only the previous step and the digit with the same label in
//! the question (a copy any two-layer transformer can learn: find the label, take the token
//! after it), while the answer straight after "is" needs all digits summed in one forward pass.
//! In the pretraining split half the tallies (`PRETRAIN_WORKED_FRACTION`) show their working in
//! a thought right before the answer, in the token layout RLP uses
//! (`prefix<think> working</think> answer`):
//! `"tally a4 b3 c8 d1 is<think> a4 b7 c5 d6</think> 6."`.
//!
//! Copies, `"copy a4 b3 c8 as a4 b3 c8."`, teach the same label lookup in plain text (they are
//! what makes induction appear early in a tiny model). Plain prose has nothing to work out.
//!
//! Thoughts are in distribution wherever RLP samples a position: besides the worked tallies,
//! the pretraining split puts an empty thought (`<think> -</think>`, `NULL_THOUGHT`) before one
//! random word of most segments, so the base learns that a thought away from a tally's answer is
//! a dash, changes nothing, and costs two tokens. The RLP/CPT/RPT training split and the held-out
//! split carry no thoughts at all.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which split a document belongs to; each has its own ChaCha8 stream of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusKind {
    /// Pretraining text for the base model: worked tallies and empty thoughts.
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

/// The share of pretraining tallies shown with their working. The rest are stated plainly, so
/// the base model also predicts answers without thinking (badly) and `<think>` is a choice.
pub const PRETRAIN_WORKED_FRACTION: f64 = 0.5;

/// The share of pretraining segments with an empty thought before one of their words.
pub const PRETRAIN_PAUSE_FRACTION: f64 = 0.6;

/// The thought the pretraining text puts where there is nothing to work out.
pub const NULL_THOUGHT: &str = "-";

/// Labels of a tally's digits, in order: a tally has at most this many digits.
pub const LABELS: [char; 8] = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];

/// Digits per tally: 2 to `MAX_DIGITS`, uniform.
pub const MIN_DIGITS: usize = 2;
pub const MAX_DIGITS: usize = 6;

/// A tally: `lead answer tail`, where the answer is the last digit of the sum of the digits.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub digits: Vec<u8>,
    /// The text before the answer, without the space before it (`"tally a4 b3 c8 d1 is"`).
    pub lead: String,
    /// The worked solution: the running last digit, labelled (`"a4 b7 c5 d6"`).
    pub working: String,
    pub answer: u8,
    /// The text after the answer (`"."`).
    pub tail: String,
    /// Whether the pretraining split shows this tally's working (drawn for every split, so a
    /// seed's documents are the same in each; only `Pretrain` renders it).
    pub worked: bool,
    /// Byte offset of a space in `lead` before which the pretraining split puts an empty thought.
    pub pause: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Text with no answer to work out (prose or a copy), and where an empty thought goes in
    /// pretraining (byte offset of a space in the text).
    Plain { text: String, pause: Option<usize> },
    Problem(Problem),
}

/// A document: segments joined by single spaces.
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
    /// How many digits the tally sums.
    pub digits: usize,
}

/// `text` with an empty thought inserted before the space at byte `at`.
fn with_pause(text: &str, at: Option<usize>) -> String {
    match at {
        Some(i) => format!("{}<think> {NULL_THOUGHT}</think>{}", &text[..i], &text[i..]),
        None => text.to_string(),
    }
}

impl Problem {
    fn render(&self, with_thoughts: bool) -> String {
        if !with_thoughts {
            return format!("{} {}{}", self.lead, self.answer, self.tail);
        }
        let lead = with_pause(&self.lead, self.pause);
        if self.worked {
            format!("{lead}<think> {}</think> {}{}", self.working, self.answer, self.tail)
        } else {
            format!("{lead} {}{}", self.answer, self.tail)
        }
    }
}

impl Segment {
    fn render(&self, with_thoughts: bool) -> String {
        match self {
            Segment::Plain { text, pause } => {
                if with_thoughts {
                    with_pause(text, *pause)
                } else {
                    text.clone()
                }
            }
            Segment::Problem(p) => p.render(with_thoughts),
        }
    }
}

impl Document {
    /// The document's text; `with_thoughts` adds the working of worked tallies and the empty
    /// thoughts (the pretraining split).
    pub fn render(&self, with_thoughts: bool) -> String {
        let parts: Vec<String> = self.segments.iter().map(|s| s.render(with_thoughts)).collect();
        parts.join(" ")
    }

    /// One answer item per tally: the thought-free text up to that tally's answer.
    pub fn answer_items(&self) -> Vec<AnswerItem> {
        let mut items = Vec::new();
        let mut before: Vec<String> = Vec::new();
        for s in &self.segments {
            if let Segment::Problem(p) = s {
                let mut prompt = before.join(" ");
                if !prompt.is_empty() {
                    prompt.push(' ');
                }
                prompt.push_str(&p.lead);
                items.push(AnswerItem { prompt, answer: p.answer.to_string(), digits: p.digits.len() });
            }
            before.push(s.render(false));
        }
        items
    }
}

/// True when `completion` (generated after an item's prompt) starts with the answer, leading
/// whitespace ignored, and the number ends there ("6." matches 6, "61" does not).
pub fn answer_matches(completion: &str, answer: &str) -> bool {
    let rest = completion.trim_start();
    rest.strip_prefix(answer).is_some_and(|after| !after.starts_with(|c: char| c.is_ascii_digit()))
}

/// `n_docs` documents of a split. The first k documents do not depend on `n_docs`.
pub fn generate_documents(seed: u64, n_docs: usize, kind: CorpusKind) -> Vec<Document> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(kind.stream());
    (0..n_docs).map(|_| document(&mut rng, kind)).collect()
}

/// The texts of `n_docs` documents of a split (with thoughts only for `Pretrain`).
pub fn generate_corpus(seed: u64, n_docs: usize, kind: CorpusKind) -> Vec<String> {
    generate_documents(seed, n_docs, kind).iter().map(|d| d.render(kind.has_thoughts())).collect()
}

/// The exact-match answer task over the held-out split's first `n_docs` documents.
pub fn answer_task(seed: u64, n_docs: usize) -> Vec<AnswerItem> {
    generate_documents(seed, n_docs, CorpusKind::Heldout).iter().flat_map(Document::answer_items).collect()
}

/// What a split's segments are made of, out of 20: tallies, copies, and prose the rest.
/// Pretraining is half copies, which make the label lookup appear early (a base pretrained on
/// the RLP split's mix, with copies a quarter of the segments, was still at chance after 6M
/// tokens); the text RLP and CPT train on, and the held-out text, are tallies and prose.
fn mix(kind: CorpusKind) -> (u32, u32) {
    match kind {
        CorpusKind::Pretrain => (9, 10),
        CorpusKind::Train | CorpusKind::Heldout => (16, 0),
    }
}

/// 2 to 4 segments drawn from the split's `mix`; at least one tally.
fn document(rng: &mut ChaCha8Rng, kind: CorpusKind) -> Document {
    let (tallies, copies) = mix(kind);
    let n = rng.gen_range(2..=4);
    let mut segments: Vec<Segment> = (0..n)
        .map(|_| {
            let x = rng.gen_range(0..20);
            if x < tallies {
                Segment::Problem(tally(rng))
            } else {
                let text = if x < tallies + copies { copy(rng) } else { prose(rng) };
                plain(rng, text)
            }
        })
        .collect();
    if !segments.iter().any(|s| matches!(s, Segment::Problem(_))) {
        let i = rng.gen_range(0..n);
        segments[i] = Segment::Problem(tally(rng));
    }
    Document { segments }
}

/// A random space of `text` (a word boundary that is also a token boundary), or none, with
/// probability `PRETRAIN_PAUSE_FRACTION` of one.
fn pause_point(rng: &mut ChaCha8Rng, text: &str) -> Option<usize> {
    let spaces: Vec<usize> = text.match_indices(' ').map(|(i, _)| i).collect();
    if spaces.is_empty() || !rng.gen_bool(PRETRAIN_PAUSE_FRACTION) {
        return None;
    }
    spaces.choose(rng).copied()
}

fn plain(rng: &mut ChaCha8Rng, text: String) -> Segment {
    let pause = pause_point(rng, &text);
    Segment::Plain { text, pause }
}

/// `"a4 b3 c8"`: each digit after its label.
pub fn labelled(digits: &[u8]) -> String {
    digits.iter().zip(LABELS).map(|(d, l)| format!("{l}{d}")).collect::<Vec<_>>().join(" ")
}

fn random_digits(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let n = rng.gen_range(MIN_DIGITS..=MAX_DIGITS);
    (0..n).map(|_| rng.gen_range(0..10)).collect()
}

/// The running last digit of the sum: `[4, 3, 8, 1]` → `[4, 7, 5, 6]`.
pub fn running_last_digit(digits: &[u8]) -> Vec<u8> {
    let mut sum = 0u8;
    digits.iter().map(|d| {
        sum = (sum + d) % 10;
        sum
    }).collect()
}

fn tally(rng: &mut ChaCha8Rng) -> Problem {
    let worked = rng.gen_bool(PRETRAIN_WORKED_FRACTION);
    let digits = random_digits(rng);
    let running = running_last_digit(&digits);
    let answer = *running.last().expect("a tally has digits");
    let lead = format!("tally {} is", labelled(&digits));
    let pause = pause_point(rng, &lead);
    Problem { working: labelled(&running), answer, lead, tail: ".".into(), worked, pause, digits }
}

/// `"copy a4 b3 c8 as a4 b3 c8."`
fn copy(rng: &mut ChaCha8Rng) -> String {
    let s = labelled(&random_digits(rng));
    format!("copy {s} as {s}.")
}

const SUBJECTS: [&str; 10] =
    ["The old dog", "A small boat", "The baker", "My neighbour", "The river", "A grey cat", "The boy", "The teacher", "A tall tree", "The wind"];
const VERBS: [&str; 8] = ["rested", "waited", "moved slowly", "was quiet", "sang softly", "looked happy", "stood still", "went home"];
const PLACES: [&str; 7] = ["by the bridge", "near the market", "in the garden", "at the edge of town", "under the clouds", "on the hill", "by the sea"];
const TIMES: [&str; 5] = ["in the morning", "after lunch", "all day", "at night", "before the rain"];

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    xs.choose(rng).expect("word lists are not empty")
}

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
        assert!(answer_matches(" 6.", "6"));
        assert!(answer_matches("6", "6"));
        assert!(!answer_matches(" 61", "6"));
        assert!(!answer_matches(" 5", "6"));
        assert!(!answer_matches("a6", "6"));
    }

    #[test]
    fn running_last_digit_by_hand() {
        assert_eq!(running_last_digit(&[4, 3, 8, 1]), vec![4, 7, 5, 6]);
        assert_eq!(running_last_digit(&[9, 9]), vec![9, 8]);
        assert_eq!(labelled(&[4, 7, 5]), "a4 b7 c5");
    }

    #[test]
    fn answer_items_follow_the_rendered_text() {
        let docs = generate_documents(7, 50, CorpusKind::Heldout);
        for d in &docs {
            let text = d.render(false);
            for item in d.answer_items() {
                let continued = format!("{} {}", item.prompt, item.answer);
                assert!(text.starts_with(&continued), "{continued:?} is not a prefix of {text:?}");
            }
        }
    }

    #[test]
    fn pauses_sit_before_a_space_and_never_at_an_answer() {
        let docs = generate_documents(3, 200, CorpusKind::Pretrain);
        let mut pauses = 0;
        for d in &docs {
            let text = d.render(true);
            pauses += text.matches(&format!("<think> {NULL_THOUGHT}</think> ")).count();
            assert!(!text.contains(&format!("is<think> {NULL_THOUGHT}</think>")), "{text}");
        }
        assert!(pauses > 200, "only {pauses} empty thoughts in 200 documents");
    }
}
