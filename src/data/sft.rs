//! Supervised fine-tuning data: JSONL examples → token ids with a loss mask → packed windows.
//!
//! One example per line, either
//! - `{"prompt": str, "response": str}`: the text is `prompt + response`, no template, no
//!   separator added (write the layout you want into the strings, e.g. the `rlp eval` layout
//!   `"Question: …\nAnswer:"` + `"<think> …</think> 42"`); or
//! - `{"messages": [{"role": str, "content": str}, …]}`: rendered with the tokenizer's chat
//!   template when there is one ([`ChatTemplate`]), else with [`plain_chat`].
//!
//! Blank lines are skipped; anything else that is not such an object is an error naming
//! `file:line` and what to write instead. Other keys (`id`, a message's `reasoning_content`, …) are
//! ignored: write thoughts inline in the content as `<think>…</think>`.
//!
//! Choices, and why:
//! - **Loss.** On response tokens only: the `response` of a pair, every assistant turn of a chat.
//!   The EOS the packer appends after each example is trained too (the model learns to stop).
//! - **Tokenization.** Each span (prompt / response / text between turns) is encoded on its own
//!   and the ids concatenated, as `rlp eval` encodes its prompt and appends `<think>`. So a token
//!   never straddles the prompt/response boundary and the mask is exact.
//! - **Thoughts.** `<think>` and `</think>` written in the text always become rlp's own think
//!   ids (`Tok::think_id`, `Tok::end_think_id`, the ones the trainer uses or adds), whatever the
//!   tokenizer's vocabulary does with that text: spans are split at the markers, the pieces
//!   encoded and the ids put in between. Markers must pair up (`<think>` … `</think>`, not
//!   nested) over the whole rendered example; a prompt may end with `<think>` and its response
//!   hold the thought's rest, as in `rlp eval`'s layout.
//! - **Chat templates.** Rendered with minijinja the way Hugging Face does: `trim_blocks`,
//!   `lstrip_blocks`, loop controls, Python string methods, `raise_exception`, and the variables
//!   `messages`, `add_generation_prompt`, `bos_token`, `eos_token`. Assistant turn i is the text
//!   between `render(messages[..i], add_generation_prompt = true)` and
//!   `render(messages[..=i])`; both must be prefixes of the whole conversation's rendering.
//!   Templates that rewrite earlier turns (Qwen3 drops the thoughts of turns before the last
//!   user message) fail that check for multi-turn examples, with an error saying to split the
//!   conversation; single-turn examples work with every template we know. A template that
//!   appends the generation prompt even when not asked (Llama 3 base's) trains that header too.
//! - **Plain template** (no chat template): system `"{content}\n\n"`, user
//!   `"Question: {content}\nAnswer:"` (content trimmed, as `rlp eval` prompts), assistant
//!   `"{content}\n"` (trained, the newline included: `rlp eval` stops answers at a newline).
//!   Other roles are an error.
//! - **Length.** `max_tokens` cuts an example's tail (EOS not counted); one with no trained token
//!   left is dropped, and both are counted in [`SftDocs`].
//! - **Packing.** The `ntp` packer's stream of windows (seeded shuffle, EOS after each example,
//!   `len + 1` tokens sharing one with the next window, a segment id per token for the
//!   no-cross-document mask), run twice in lockstep: once over the ids and once over the loss
//!   flags (its "EOS" being 1). An example can be split between two consecutive windows; its
//!   second part is then trained without seeing its first, as in `ntp`.

use super::corpus::TokenizedDocs;
use super::packer::{Packer, PackerState};
use crate::model::AttnLayout;
use crate::tokenizer::{Tok, END_THINK, THINK};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One SFT example as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum SftExample {
    Pair { prompt: String, response: String },
    Chat { messages: Vec<Message> },
}

/// An example and where it came from (`file:line`).
#[derive(Debug, Clone, PartialEq)]
pub struct SftRecord {
    pub source: String,
    pub example: SftExample,
}

/// A piece of an example's text and whether its tokens carry the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub text: String,
    pub trained: bool,
}

impl Span {
    fn new(text: impl Into<String>, trained: bool) -> Span {
        Span { text: text.into(), trained }
    }
}

/// Read every example of an SFT JSONL file; errors name `file:line`.
pub fn load_sft(path: &Path) -> Result<Vec<SftRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read SFT file {}: check the path", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        out.push(SftRecord { example: parse_sft_line(line, &at)?, source: at });
    }
    ensure!(
        !out.is_empty(),
        "SFT file {} holds no examples: write one JSON object per line, {{\"prompt\": …, \"response\": …}} or {{\"messages\": [{{\"role\": …, \"content\": …}}, …]}}",
        path.display()
    );
    Ok(out)
}

/// Parse one line; `at` (`file:line`) prefixes every error.
pub fn parse_sft_line(line: &str, at: &str) -> Result<SftExample> {
    const FORMS: &str = "{\"prompt\": str, \"response\": str} or {\"messages\": [{\"role\": str, \"content\": str}, …]}";
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON; write one object per line, {FORMS}"))?;
    let obj = v.as_object().with_context(|| format!("{at}: expected an object, {FORMS}"))?;
    let string = |o: &serde_json::Map<String, serde_json::Value>, key: &str, what: &str| -> Result<String> {
        match o.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            None | Some(serde_json::Value::Null) => bail!("{at}: {what} has no `{key}`; write {FORMS}"),
            Some(other) => bail!("{at}: `{key}` of {what} must be a string, got {other}"),
        }
    };
    match (obj.contains_key("messages"), obj.contains_key("prompt") || obj.contains_key("response")) {
        (true, true) => bail!("{at}: has both `messages` and `prompt`/`response`; keep one of the two forms"),
        (false, false) => bail!("{at}: has neither `prompt`/`response` nor `messages`; write {FORMS}"),
        (false, true) => {
            let prompt = string(obj, "prompt", "the example")?;
            let response = string(obj, "response", "the example")?;
            ensure!(!response.trim().is_empty(), "{at}: `response` is empty: give the text the model should learn to write");
            Ok(SftExample::Pair { prompt, response })
        }
        (true, false) => {
            let arr = obj["messages"].as_array().with_context(|| format!("{at}: `messages` must be an array of {{\"role\", \"content\"}} objects"))?;
            let mut messages = Vec::with_capacity(arr.len());
            for (j, m) in arr.iter().enumerate() {
                let what = format!("message {j}");
                let o = m.as_object().with_context(|| format!("{at}: {what} must be an object {{\"role\": str, \"content\": str}}"))?;
                messages.push(Message { role: string(o, "role", &what)?, content: string(o, "content", &what)? });
            }
            ensure!(
                messages.iter().any(|m| m.role == "assistant" && !m.content.trim().is_empty()),
                "{at}: no non-empty assistant message: the loss is on assistant turns, give at least one"
            );
            Ok(SftExample::Chat { messages })
        }
    }
}

/// A Hugging Face chat template (Jinja), rendered with minijinja as transformers renders it.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Where the template came from, for errors.
    pub source: String,
}

/// `bos_token`/`eos_token` in tokenizer_config.json: a string or `{"content": str, …}`.
fn special_token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or("").to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Compile `template`; `source` names it in errors.
    pub fn new(template: &str, bos_token: &str, eos_token: &str, source: &str) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| anyhow::anyhow!("chat template of {source} does not compile: {e:#}; fix the template or remove it to use the plain one"))?;
        Ok(ChatTemplate { env, bos_token: bos_token.into(), eos_token: eos_token.into(), source: source.into() })
    }

    /// The chat template of a tokenizer_config.json, None when it has none. A list of named
    /// templates (`[{"name", "template"}]`) gives the one named `default`, else the first.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<ChatTemplate>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let template = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => {
                let named = |n: &str| list.iter().find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n));
                named("default")
                    .or(list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .with_context(|| format!("{}: `chat_template` is a list without a usable {{\"name\", \"template\"}} entry", path.display()))?
                    .to_string()
            }
            Some(_) => bail!("{}: `chat_template` must be a string", path.display()),
        };
        let (bos, eos) = (special_token_text(cfg.get("bos_token")), special_token_text(cfg.get("eos_token")));
        Ok(Some(ChatTemplate::new(&template, &bos, &eos, &path.display().to_string())?))
    }

    /// The template's text for `messages`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").expect("added in new");
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        t.render(ctx).map_err(|e| anyhow::anyhow!("chat template of {} failed: {e:#}", self.source))
    }

    /// The conversation as spans: assistant turns trained, the rest not (module docs).
    pub fn spans(&self, messages: &[Message]) -> Result<Vec<Span>> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        let mut at = 0usize;
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..i], true)?;
            let end_text = self.render(&messages[..=i], false)?;
            let start = prompt.len();
            let stable = full.starts_with(&end_text) && end_text.starts_with(&prompt) && start >= at;
            ensure!(
                stable,
                "the chat template of {} does not render assistant turn {i} as a prefix of the whole conversation (it rewrites earlier turns); give one assistant turn per example, or use {{\"prompt\", \"response\"}}",
                self.source
            );
            spans.push(Span::new(&full[at..start], false));
            spans.push(Span::new(&full[start..end_text.len()], true));
            at = end_text.len();
        }
        spans.push(Span::new(&full[at..], false));
        Ok(spans.into_iter().filter(|s| !s.text.is_empty()).collect())
    }
}

/// The plain template (no chat template; module docs): system `"{c}\n\n"`, user
/// `"Question: {c}\nAnswer:"`, assistant `"{c}\n"` (trained).
pub fn plain_chat(messages: &[Message]) -> Result<Vec<Span>> {
    messages
        .iter()
        .map(|m| match m.role.as_str() {
            "system" => Ok(Span::new(format!("{}\n\n", m.content.trim()), false)),
            "user" => Ok(Span::new(format!("Question: {}\nAnswer:", m.content.trim()), false)),
            "assistant" => Ok(Span::new(format!("{}\n", m.content), true)),
            other => bail!("role `{other}` has no place in the plain template (system, user, assistant); use a tokenizer with a chat template"),
        })
        .collect()
}

/// An example as spans: a pair is `prompt` (not trained) then `response` (trained); a chat goes
/// through `template`, or [`plain_chat`] without one.
pub fn example_spans(ex: &SftExample, template: Option<&ChatTemplate>) -> Result<Vec<Span>> {
    match ex {
        SftExample::Pair { prompt, response } => Ok([Span::new(prompt, false), Span::new(response, true)].into_iter().filter(|s| !s.text.is_empty()).collect()),
        SftExample::Chat { messages } => match template {
            Some(t) => t.spans(messages),
            None => plain_chat(messages),
        },
    }
}

/// An example's token ids and, per token, 1 when it is trained as a target.
#[derive(Debug, Clone, PartialEq)]
pub struct SftTokens {
    pub ids: Vec<u32>,
    pub loss: Vec<u32>,
}

/// Encode `text`, with every `<think>`/`</think>` written in it as rlp's think ids. `open`
/// tracks whether a thought is open across spans; unpaired markers are an error.
fn encode_with_thoughts(tok: &Tok, text: &str, open: &mut bool, ids: &mut Vec<u32>) -> Result<()> {
    let mut rest = text;
    loop {
        let next = [(THINK, tok.think_id, false), (END_THINK, tok.end_think_id, true)]
            .into_iter()
            .filter_map(|(m, id, closes)| rest.find(m).map(|p| (p, m, id, closes)))
            .min_by_key(|x| x.0);
        let Some((p, marker, id, closes)) = next else {
            if !rest.is_empty() {
                ids.extend(tok.encode(rest)?);
            }
            return Ok(());
        };
        if p > 0 {
            ids.extend(tok.encode(&rest[..p])?);
        }
        ensure!(
            *open == closes,
            "{marker} where a thought is {}: write each thought as {THINK}…{END_THINK}, not nested",
            if *open { "already open" } else { "not open" }
        );
        *open = !closes;
        ids.push(id);
        rest = &rest[p + marker.len()..];
    }
}

/// Token ids and loss flags of `spans` (each span encoded on its own, thoughts as think ids).
pub fn tokenize_spans(tok: &Tok, spans: &[Span]) -> Result<SftTokens> {
    let (mut ids, mut loss) = (Vec::new(), Vec::new());
    let mut open = false;
    for s in spans {
        let before = ids.len();
        encode_with_thoughts(tok, &s.text, &mut open, &mut ids)?;
        loss.extend(std::iter::repeat_n(u32::from(s.trained), ids.len() - before));
    }
    ensure!(!open, "a {THINK} is never closed: end the thought with {END_THINK} before the answer");
    Ok(SftTokens { ids, loss })
}

/// Tokenized SFT examples: ids and loss flags in two `TokenizedDocs` of equal document lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct SftDocs {
    pub tokens: TokenizedDocs,
    pub loss: TokenizedDocs,
    /// Examples whose tail `max_tokens` cut off.
    pub truncated: usize,
    /// Examples dropped for having no trained token (after the cut).
    pub dropped: usize,
    /// Trained tokens over all kept examples (EOS not counted).
    pub trained_tokens: usize,
}

/// Tokenize every record (errors name its `file:line`); `max_tokens` cuts each example.
pub fn tokenize_sft(tok: &Tok, records: &[SftRecord], template: Option<&ChatTemplate>, max_tokens: Option<usize>) -> Result<SftDocs> {
    let (mut toks, mut losses) = (Vec::new(), Vec::new());
    let (mut truncated, mut dropped, mut trained_tokens) = (0, 0, 0);
    for r in records {
        let spans = example_spans(&r.example, template).with_context(|| format!("{}: cannot render the example", r.source))?;
        let mut t = tokenize_spans(tok, &spans).with_context(|| format!("{}: cannot tokenize the example", r.source))?;
        if let Some(max) = max_tokens.filter(|&m| t.ids.len() > m) {
            t.ids.truncate(max);
            t.loss.truncate(max);
            truncated += 1;
        }
        let n: usize = t.loss.iter().map(|&l| l as usize).sum();
        if n == 0 {
            dropped += 1;
            continue;
        }
        trained_tokens += n;
        toks.push((r.source.clone(), t.ids));
        losses.push((r.source.clone(), t.loss));
    }
    ensure!(!toks.is_empty(), "no SFT example has a response token left: raise the length limit ({max_tokens:?} tokens) or shorten the prompts");
    Ok(SftDocs { tokens: TokenizedDocs::from_documents(toks), loss: TokenizedDocs::from_documents(losses), truncated, dropped, trained_tokens })
}

/// One packed SFT window: `tokens`, `segments` and `loss` have `len + 1` entries; `loss[i]` is 1
/// when `tokens[i]` is trained as a target (so `loss[0]` is never used).
#[derive(Debug, Clone, PartialEq)]
pub struct SftWindow {
    pub tokens: Vec<u32>,
    pub segments: Vec<u32>,
    pub loss: Vec<u32>,
}

/// The `ntp` packer over ids, and the same packer over loss flags, in lockstep (module docs).
pub struct SftPacker {
    tokens: Packer,
    loss: Packer,
}

impl SftPacker {
    /// Shuffled, reshuffled each epoch (seeded), EOS `eos` after each example.
    pub fn new(num_docs: usize, seed: u64, eos: u32) -> Result<SftPacker> {
        Ok(SftPacker { tokens: Packer::new(num_docs, seed, eos)?, loss: Packer::new(num_docs, seed, 1)? })
    }

    /// In corpus order (held-out evaluation).
    pub fn in_order(num_docs: usize, eos: u32) -> Result<SftPacker> {
        Ok(SftPacker { tokens: Packer::in_order(num_docs, eos)?, loss: Packer::in_order(num_docs, 1)? })
    }

    /// Serialise into a checkpoint to resume exactly (both packers share it).
    pub fn state(&self) -> &PackerState {
        self.tokens.state()
    }

    pub fn restore(&mut self, state: PackerState) -> Result<()> {
        self.tokens.restore(state.clone())?;
        self.loss.restore(state)
    }

    /// The next window of `len + 1` tokens.
    pub fn next_window(&mut self, docs: &SftDocs, len: usize) -> Result<SftWindow> {
        let w = self.tokens.next_window(&docs.tokens, len)?;
        let l = self.loss.next_window(&docs.loss, len)?;
        debug_assert_eq!(w.segments, l.segments, "the packers walk the same lengths");
        Ok(SftWindow { tokens: w.tokens, segments: w.segments, loss: l.tokens })
    }
}

/// A batch of B windows of T = len tokens: ids [B, T], targets [B, T] (u32), loss mask [B, T]
/// (f32, 1 on trained targets) and the attention layout (`ntp`'s: segments kept apart when
/// `no_cross_doc`, else plain causal).
pub fn sft_batch(windows: &[SftWindow], no_cross_doc: bool, dev: &Device) -> Result<(Tensor, Tensor, Tensor, AttnLayout)> {
    ensure!(!windows.is_empty(), "an SFT batch needs at least one window");
    let t = windows[0].tokens.len() - 1;
    ensure!(windows.iter().all(|w| w.tokens.len() == t + 1 && w.loss.len() == t + 1), "SFT windows of one batch must have the same length");
    let b = windows.len();
    let inputs: Vec<u32> = windows.iter().flat_map(|w| w.tokens[..t].iter().copied()).collect();
    let targets: Vec<u32> = windows.iter().flat_map(|w| w.tokens[1..].iter().copied()).collect();
    let mask: Vec<f32> = windows.iter().flat_map(|w| w.loss[1..].iter().map(|&l| l as f32)).collect();
    let layout = if no_cross_doc {
        AttnLayout::segmented(&windows.iter().map(|w| w.segments[..t].to_vec()).collect::<Vec<_>>(), t)
    } else {
        AttnLayout::right_padded(&vec![t; b], t)
    };
    Ok((Tensor::from_vec(inputs, (b, t), dev)?, Tensor::from_vec(targets, (b, t), dev)?, Tensor::from_vec(mask, (b, t), dev)?, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse() {
        let p = parse_sft_line(r#"{"prompt": "2+2=", "response": " 4"}"#, "f:1").unwrap();
        assert_eq!(p, SftExample::Pair { prompt: "2+2=".into(), response: " 4".into() });
        let c = parse_sft_line(r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#, "f:2").unwrap();
        let SftExample::Chat { messages } = c else { panic!("not a chat") };
        assert_eq!((messages.len(), messages[1].role.as_str()), (2, "assistant"));
    }

    #[test]
    fn malformed_lines_name_file_line_and_the_fix() {
        let err = |line: &str| parse_sft_line(line, "sft.jsonl:7").unwrap_err().to_string();
        assert!(err("{oops").starts_with("sft.jsonl:7: not valid JSON"), "{}", err("{oops"));
        assert!(err(r#"{"prompt": "q"}"#).contains("sft.jsonl:7: the example has no `response`"));
        assert!(err(r#"{"prompt": "q", "response": "  "}"#).contains("`response` is empty"));
        assert!(err(r#"{"prompt": 3, "response": "a"}"#).contains("`prompt` of the example must be a string"));
        assert!(err(r#"{"text": "a"}"#).contains("neither `prompt`/`response` nor `messages`"));
        assert!(err(r#"{"prompt": "q", "response": "a", "messages": []}"#).contains("keep one of the two forms"));
        assert!(err(r#"{"messages": "hi"}"#).contains("`messages` must be an array"));
        assert!(err(r#"{"messages": [{"role": "user"}]}"#).contains("message 0 has no `content`"));
        assert!(err(r#"{"messages": [{"role": "user", "content": "q"}]}"#).contains("no non-empty assistant message"));
        assert!(err("[1]").contains("expected an object"));
    }

    #[test]
    fn plain_template_layout() {
        let m = |r: &str, c: &str| Message { role: r.into(), content: c.into() };
        let spans = plain_chat(&[m("system", "Be brief."), m("user", " 2+2? "), m("assistant", "<think> 2 2</think> 4")]).unwrap();
        let text: Vec<(&str, bool)> = spans.iter().map(|s| (s.text.as_str(), s.trained)).collect();
        assert_eq!(text, vec![("Be brief.\n\n", false), ("Question: 2+2?\nAnswer:", false), ("<think> 2 2</think> 4\n", true)]);
        assert!(plain_chat(&[m("tool", "x")]).unwrap_err().to_string().contains("role `tool`"));
    }
}
