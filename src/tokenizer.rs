//! The tokenizer as rlp uses it: a Hugging Face `tokenizers::Tokenizer` plus the ids the RLP
//! layout needs (`<think>`, `</think>`, end-of-text ids).
//!
//! Conventions:
//! - `encode` adds no special tokens and no BOS, but special tokens written in the text (e.g.
//!   `<think>`) are recognised and become their ids.
//! - `decode` keeps special tokens visible.
//! - `vocab_size` is 1 + the highest id, added tokens included; the model's embedding may be
//!   larger (Qwen pads to 151936), never smaller.
//! - EOS ids: each of `<|endoftext|>`, `<|im_end|>`, `</s>`, `<|end_of_text|>` and `<|eot_id|>`
//!   that is an added (special) token of the tokenizer, in that order. Plain BPE entries with the
//!   same text do not count (Qwen3's vocabulary has an ordinary `</s>` piece, id 128247).
//! - Think markers are added as special tokens at the end of the vocabulary (ids
//!   `vocab_size`, `vocab_size + 1`) only when the vocabulary lacks them and adding is allowed.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use tokenizers::AddedToken;

/// Read a Hugging Face tokenizer.json. The JSON is parsed first, so a truncated or garbled file
/// is a syntax error with its line; the `tokenizers` crate's deserializer then runs under
/// `catch_unwind`, because version 0.23 panics (instead of erring) on some malformed decoders.
pub fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read tokenizer {}", path.display()))?;
    let bad = |e: String| anyhow!("{} is not a valid tokenizer.json: {e}; use the tokenizer.json saved with the model", path.display());
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    match std::panic::catch_unwind(move || serde_json::from_value::<tokenizers::Tokenizer>(json)) {
        Ok(Ok(tok)) => Ok(tok),
        Ok(Err(e)) => Err(bad(e.to_string())),
        Err(_) => Err(bad("the tokenizers crate could not deserialize it".into())),
    }
}

/// Token strings treated as end of text when present in the vocabulary.
pub const EOS_TOKENS: [&str; 5] = ["<|endoftext|>", "<|im_end|>", "</s>", "<|end_of_text|>", "<|eot_id|>"];
pub const THINK: &str = "<think>";
pub const END_THINK: &str = "</think>";

pub struct Tok {
    inner: tokenizers::Tokenizer,
    /// Where the tokenizer came from, for error messages.
    source: String,
    /// 1 + highest id, added tokens included.
    vocab_size: usize,
    pub think_id: u32,
    pub end_think_id: u32,
    pub eos_ids: Vec<u32>,
    /// True when `<think>`/`</think>` were not in the vocabulary and were added here; the model
    /// must then grow its embedding (and untied lm_head) to `vocab_size()` rows.
    pub added_think_tokens: bool,
}

impl Tok {
    /// Read a tokenizer.json. `allow_add_think` lets the tokenizer add `<think>`/`</think>`
    /// when the vocabulary lacks them (config key `model.add_think_tokens`).
    pub fn from_file(path: &Path, allow_add_think: bool) -> Result<Self> {
        let inner = read_tokenizer_json(path)?;
        Self::from_tokenizer(inner, allow_add_think, &path.display().to_string())
    }

    /// Wrap an existing tokenizer; `source` names it in error messages.
    pub fn from_tokenizer(mut inner: tokenizers::Tokenizer, allow_add_think: bool, source: &str) -> Result<Self> {
        let think = (inner.token_to_id(THINK), inner.token_to_id(END_THINK));
        let (think_id, end_think_id, added_think_tokens) = match think {
            (Some(a), Some(b)) => (a, b, false),
            _ if allow_add_think => {
                let missing: Vec<AddedToken> =
                    [THINK, END_THINK].iter().filter(|t| inner.token_to_id(t).is_none()).map(|t| AddedToken::from(*t, true)).collect();
                inner.add_special_tokens(missing).map_err(|e| anyhow!("tokenizer {source}: cannot add think tokens: {e}"))?;
                let id = |t| inner.token_to_id(t).ok_or_else(|| anyhow!("tokenizer {source}: {t} was not added"));
                (id(THINK)?, id(END_THINK)?, true)
            }
            _ => bail!("tokenizer {source} has no {THINK}/{END_THINK} tokens; set model.add_think_tokens = true to add them"),
        };
        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |m| *m as usize + 1);
        let added = inner.get_added_vocabulary().get_vocab();
        let eos_ids = EOS_TOKENS.iter().filter_map(|t| added.get(*t).copied()).collect();
        Ok(Tok { inner, source: source.to_string(), vocab_size, think_id, end_think_id, eos_ids, added_think_tokens })
    }

    /// Token ids of `text`: no BOS, no template; special tokens in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizer {}: cannot encode: {e}", self.source))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens kept visible.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            bail!("tokenizer {}: id {bad} is outside the vocabulary of {}", self.source, self.vocab_size);
        }
        self.inner.decode(ids, false).map_err(|e| anyhow!("tokenizer {}: cannot decode: {e}", self.source))
    }

    /// Embedding rows a model with `model_rows` rows needs for this tokenizer. Ids past the
    /// model's embedding are allowed only when they are the `<think>`/`</think>` tokens added
    /// here (the model then grows to the returned size); any other such id means the tokenizer
    /// belongs to a different model, which is an error naming the first offending token.
    /// A vocabulary smaller than the embedding is fine: the extra rows are never sampled.
    pub fn rows_for_model(&self, model_rows: usize, model: &str) -> Result<usize> {
        if self.vocab_size <= model_rows {
            return Ok(model_rows);
        }
        let think = |id: u32| self.added_think_tokens && (id == self.think_id || id == self.end_think_id);
        let mut stray: Vec<(String, u32)> = self.inner.get_vocab(true).into_iter().filter(|&(_, id)| id as usize >= model_rows && !think(id)).collect();
        stray.sort_by_key(|&(_, id)| id);
        if let Some((tok, id)) = stray.first() {
            bail!(
                "tokenizer {} has {} ids but model {model} has only {model_rows} embedding rows: token {tok:?} (id {id}) and {} more have no row. The tokenizer does not belong to this model: use the tokenizer.json saved with the model",
                self.source,
                self.vocab_size,
                stray.len() - 1
            );
        }
        Ok(self.vocab_size)
    }

    /// 1 + highest id, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The token's string as stored in the vocabulary (byte-level BPE shows a space as `Ġ`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The raw bytes a token stands for. Byte-level BPE tokens are mapped back through GPT-2's
    /// byte↔char table; added tokens and tokens outside that table are their UTF-8 text.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let tok = self.inner.id_to_token(id)?;
        let special = self.inner.get_added_vocabulary().simple_id_to_token(id).is_some();
        let table = byte_level_inverse();
        match tok.chars().map(|c| table.get(&c).copied()).collect::<Option<Vec<u8>>>() {
            Some(bytes) if !special => Some(bytes),
            _ => Some(tok.into_bytes()),
        }
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Write tokenizer.json (with any added think tokens).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| anyhow!("cannot write tokenizer {}: {e}", path.display()))
    }
}

/// GPT-2's byte-level alphabet: the char that stands for each byte (the index) in a byte-level
/// BPE vocabulary. Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100
/// onwards in byte order.
pub fn byte_level_chars() -> [char; 256] {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    let mut table = ['\0'; 256];
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

/// GPT-2's byte-level alphabet, inverted: char → byte (see `byte_level_chars`).
fn byte_level_inverse() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| byte_level_chars().into_iter().zip(0..=255u8).collect())
}

/// How a trained BPE tokenizer cuts numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigitSplit {
    /// GPT-2's pre-tokenizer: a run of digits is one piece that BPE may merge (`Ġ347`).
    #[default]
    Merged,
    /// Every digit is its own token, the first keeping the space before it (`Ġ3 4 7`), so a
    /// tiny model can learn arithmetic digit by digit and the first digit of an answer is one
    /// token right after the preceding word.
    Individual,
}

/// Train a byte-level BPE tokenizer (GPT-2 style pre-tokenizer and decoder) on `texts`, with
/// `special` added as special tokens first. For tiny test and demo models: real checkpoints
/// bring their own tokenizer.
pub fn train_byte_level_bpe<I, S>(texts: I, vocab_size: usize, special: &[&str]) -> Result<tokenizers::Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    train_byte_level_bpe_with(texts, vocab_size, special, DigitSplit::Merged)
}

/// `train_byte_level_bpe` with a choice of how digits are cut (see `DigitSplit`).
pub fn train_byte_level_bpe_with<I, S>(texts: I, vocab_size: usize, special: &[&str], digits: DigitSplit) -> Result<tokenizers::Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, TokenizerBuilder};
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(special.iter().map(|s| AddedToken::from(*s, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level: PreTokenizerWrapper = ByteLevel::new(false, true, true).into();
    let pre_tokenizer: PreTokenizerWrapper = match digits {
        DigitSplit::Merged => byte_level,
        DigitSplit::Individual => {
            // " 347" -> " 3" "4" "7" before GPT-2's regex, which then leaves each piece whole.
            let one_digit = Split::new(SplitPattern::Regex(r" ?\p{N}".into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| anyhow!("cannot build the digit pre-tokenizer: {e}"))?;
            Sequence::new(vec![one_digit.into(), byte_level]).into()
        }
    };
    let mut tk = TokenizerBuilder::<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
        .with_model(BPE::default().into())
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_decoder(Some(ByteLevel::default().into()))
        .build()
        .map_err(|e| anyhow!("cannot build a BPE tokenizer: {e}"))?;
    let mut wrapped = tokenizers::models::TrainerWrapper::BpeTrainer(trainer);
    tk.train(&mut wrapped, texts).map_err(|e| anyhow!("BPE training failed: {e}"))?;
    let mut tok: tokenizers::Tokenizer = tk.into();
    tok.add_special_tokens(special.iter().map(|s| AddedToken::from(*s, true)).collect::<Vec<_>>())
        .map_err(|e| anyhow!("cannot add special tokens: {e}"))?;
    Ok(tok)
}
