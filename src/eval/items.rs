//! Benchmark items: the bundled sets under `data/eval/` and a user's own JSONL file.
//!
//! One item per line: `{"question": str, "answer": str|number, "choices": [str, …] (optional),
//! "id": str (optional)}`. With `choices` (2 to 10 of them) the answer is the letter of the right
//! one (A = first); without, a number or a short string. Blank lines are skipped; anything else
//! that is not such an object is an error naming `file:line`.

use super::answer::{letter_index, parse_number};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One benchmark question.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// `id` from the file, or `file:line`.
    pub id: String,
    pub question: String,
    /// Reference answer: a letter when `choices` is set.
    pub answer: String,
    pub choices: Vec<String>,
}

/// How an item's answer is compared with a generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnswerKind {
    /// Option letter among the choices, gold index given.
    Letter(usize),
    Number(f64),
    /// Trimmed, lower-cased text equality.
    Text,
}

impl Item {
    pub fn kind(&self) -> AnswerKind {
        if !self.choices.is_empty() {
            AnswerKind::Letter(letter_index(&self.answer, self.choices.len()).expect("checked when loaded"))
        } else if let Some(x) = parse_number(&self.answer) {
            AnswerKind::Number(x)
        } else {
            AnswerKind::Text
        }
    }
}

/// Bundled sets: (task name, file under `data/eval/`, group for report averages).
pub const BUNDLED: [(&str, &str, &str); 8] = [
    ("gsm8k", "gsm8k.jsonl", "math"),
    ("bb-arithmetic", "bigbench_arithmetic.jsonl", "math"),
    ("rg-gsm-symbolic", "rg_gsm_symbolic.jsonl", "math"),
    ("rg-basic-arithmetic", "rg_basic_arithmetic.jsonl", "math"),
    ("rg-chain-sum", "rg_chain_sum.jsonl", "math"),
    ("mmlu", "mmlu.jsonl", "science"),
    ("quartz", "quartz.jsonl", "science"),
    ("bb-physics", "bigbench_physics.jsonl", "science"),
];

/// The `data/eval` directory: `$RLP_EVAL_DATA` when set, else the one in this source tree.
pub fn eval_data_dir() -> PathBuf {
    match std::env::var_os("RLP_EVAL_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("data/eval"),
    }
}

/// The file behind a benchmark task name (`gsm8k`, …, or `jsonl:FILE`).
pub fn task_file(task: &str) -> Result<PathBuf> {
    if let Some(file) = task.strip_prefix("jsonl:") {
        return Ok(PathBuf::from(file));
    }
    match BUNDLED.iter().find(|(name, _, _)| *name == task) {
        Some((_, file, _)) => Ok(eval_data_dir().join(file)),
        None => {
            let names: Vec<&str> = BUNDLED.iter().map(|b| b.0).collect();
            bail!(
                "unknown task `{task}`: use nll, think, jsonl:FILE or one of {}",
                names.join(", ")
            )
        }
    }
}

/// Read every item of a JSONL eval file; errors name `file:line`.
pub fn load_items(path: &Path) -> Result<Vec<Item>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read eval file {}: check the path (bundled sets live in data/eval/, or set RLP_EVAL_DATA)",
            path.display()
        )
    })?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        items.push(parse_item(line, &at)?);
    }
    if items.is_empty() {
        bail!(
            "eval file {} holds no items: write one JSON object per line, {{\"question\": …, \"answer\": …}}",
            path.display()
        );
    }
    Ok(items)
}

fn parse_item(line: &str, at: &str) -> Result<Item> {
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON"))?;
    let obj = v
        .as_object()
        .with_context(|| format!("{at}: expected an object {{\"question\": …, \"answer\": …}}"))?;
    let string = |key: &str| -> Result<Option<String>> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) if key != "question" => Ok(Some(n.to_string())),
            Some(other) => bail!("{at}: `{key}` must be a string, got {other}"),
        }
    };
    let question = string("question")?.with_context(|| format!("{at}: missing `question`"))?;
    let answer = string("answer")?.with_context(|| format!("{at}: missing `answer`"))?;
    if question.trim().is_empty() {
        bail!("{at}: `question` is empty");
    }
    if answer.trim().is_empty() {
        bail!(
            "{at}: `answer` is empty: give the reference answer (a number, a letter with `choices`, or a short text)"
        );
    }
    let choices: Vec<String> = match obj.get("choices") {
        None | Some(serde_json::Value::Null) => vec![],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{at}: every entry of `choices` must be a string"))
            })
            .collect::<Result<_>>()?,
        Some(_) => bail!("{at}: `choices` must be an array of strings"),
    };
    if !choices.is_empty() {
        if choices.len() < 2 || choices.len() > 10 {
            bail!("{at}: `choices` has {} entries; give 2 to 10", choices.len());
        }
        if letter_index(&answer, choices.len()).is_none() {
            bail!(
                "{at}: with {} choices `answer` must be a letter A..{}, got {answer:?}",
                choices.len(),
                super::answer::letter(choices.len() - 1)
            );
        }
    }
    let id = string("id")?.unwrap_or_else(|| at.to_string());
    Ok(Item {
        id,
        question,
        answer,
        choices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_set_loads() {
        for (name, _, _) in BUNDLED {
            let items = load_items(&task_file(name).unwrap()).unwrap();
            assert!(items.len() >= 100, "{name}: {} items", items.len());
        }
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let err = |line: &str| parse_item(line, "f.jsonl:3").unwrap_err().to_string();
        assert!(err("{oops").starts_with("f.jsonl:3: not valid JSON"));
        assert!(err(r#"{"answer": "1"}"#).contains("f.jsonl:3: missing `question`"));
        assert!(err(r#"{"question": "q", "answer": " "}"#).contains("f.jsonl:3: `answer` is empty"));
        assert!(err(r#"{"question": "q", "answer": "E", "choices": ["a", "b"]}"#).contains("a letter A..B"));
        assert!(err(r#"{"question": "q", "answer": "A", "choices": ["a"]}"#).contains("give 2 to 10"));
        assert!(err(r#"[1, 2]"#).contains("expected an object"));
    }

    #[test]
    fn numeric_answers_and_kinds() {
        let it = parse_item(r#"{"question": "q", "answer": 1234}"#, "f:1").unwrap();
        assert_eq!(it.kind(), AnswerKind::Number(1234.0));
        let it = parse_item(r#"{"question": "q", "answer": "B", "choices": ["a", "b"]}"#, "f:1").unwrap();
        assert_eq!(it.kind(), AnswerKind::Letter(1));
        let it = parse_item(r#"{"question": "q", "answer": "Yes"}"#, "f:1").unwrap();
        assert_eq!((it.kind(), it.id.as_str()), (AnswerKind::Text, "f:1"));
    }

    #[test]
    fn unknown_task_lists_the_known_ones() {
        let e = task_file("gsm9k").unwrap_err().to_string();
        assert!(e.contains("gsm8k") && e.contains("jsonl:FILE"), "{e}");
    }
}
