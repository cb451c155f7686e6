//! `Tok`: conformance with llama.cpp's tokenizer test vectors for GPT-2, Llama 3 and Qwen3
//! tokenizer.json files, think-token handling, EOS ids, save/load and error messages.

use rlp::tokenizer::Tok;
use std::path::{Path, PathBuf};

const CONFORMANCE: &str = "tests/data/tokenizers/conformance";
const GPT2: &str = "tests/data/tokenizers/gpt2/tokenizer.json";

/// A tokenizer.json that `scripts/fetch-tokenizers.sh` provides: `.cache/tokenizers/NAME/`,
/// else `../shared/tokenizers/NAME/`. Missing is a failure with the fix, never a skip.
fn fetched(name: &str) -> PathBuf {
    let candidates = [format!(".cache/tokenizers/{name}/tokenizer.json"), format!("../shared/tokenizers/{name}/tokenizer.json")];
    candidates.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{name} tokenizer.json not found at {candidates:?}; run scripts/fetch-tokenizers.sh")
    })
}

/// llama.cpp's vectors: inputs separated by "\n__ggml_vocab_test__\n" (one after the last too),
/// and one line of space-separated ids per input.
fn vectors(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(format!("{CONFORMANCE}/ggml-vocab-{vocab}.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(format!("{CONFORMANCE}/ggml-vocab-{vocab}.gguf.out")).unwrap();
    let mut inputs: Vec<String> = inp.split("\n__ggml_vocab_test__\n").map(String::from).collect();
    assert_eq!(inputs.pop().as_deref(), Some(""), "{vocab}.inp must end with the separator");
    let outputs: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
    assert_eq!(inputs.len(), 46);
    assert_eq!(outputs.len(), 46);
    inputs.into_iter().zip(outputs).collect()
}

fn conformance(tok: &Tok, vocab: &str) {
    let mut failures = Vec::new();
    for (i, (text, want)) in vectors(vocab).iter().enumerate() {
        let got = tok.encode(text).unwrap();
        if &got != want {
            failures.push(format!("#{i} {text:?}: got {got:?}, want {want:?}"));
        }
        assert_eq!(&tok.decode(&got).unwrap(), text, "#{i} does not decode back");
    }
    assert!(failures.is_empty(), "{vocab}: {} of 46 differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn gpt2_conformance() {
    conformance(&Tok::from_file(Path::new(GPT2), true).unwrap(), "gpt-2");
}

#[test]
fn llama3_conformance() {
    conformance(&Tok::from_file(&fetched("llama3"), true).unwrap(), "llama-bpe");
}

#[test]
fn qwen3_conformance() {
    conformance(&Tok::from_file(&fetched("qwen3"), false).unwrap(), "qwen2");
}

#[test]
fn qwen3_uses_its_own_think_tokens() {
    let tok = Tok::from_file(&fetched("qwen3"), false).unwrap();
    assert_eq!((tok.think_id, tok.end_think_id), (151667, 151668));
    assert!(!tok.added_think_tokens);
    assert_eq!(tok.vocab_size(), 151669);
    assert_eq!(tok.eos_ids, vec![151643, 151645]); // <|endoftext|>, <|im_end|>
    let ids = tok.encode("x<think>y</think>z").unwrap();
    assert!(ids.contains(&151667) && ids.contains(&151668), "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), "x<think>y</think>z");
}

#[test]
fn llama3_eos_ids() {
    let tok = Tok::from_file(&fetched("llama3"), true).unwrap();
    assert_eq!(tok.eos_ids, vec![128001, 128009]); // <|end_of_text|>, <|eot_id|>
    assert!(tok.added_think_tokens);
    assert_eq!((tok.think_id, tok.end_think_id), (128256, 128257));
}

#[test]
fn gpt2_gets_think_tokens_added() {
    let plain = tokenizers::Tokenizer::from_file(GPT2).unwrap();
    let before = plain.get_vocab_size(true);
    assert_eq!(before, 50257);
    let tok = Tok::from_tokenizer(plain, true, "gpt2").unwrap();
    assert!(tok.added_think_tokens);
    assert_eq!(tok.vocab_size(), before + 2);
    assert_eq!((tok.think_id, tok.end_think_id), (50257, 50258));
    assert_eq!(tok.eos_ids, vec![50256]);
    let ids = tok.encode("a<think>b").unwrap();
    assert_eq!(ids, vec![64, 50257, 65]);
    assert_eq!(tok.decode(&ids).unwrap(), "a<think>b");
    assert_eq!(tok.id_to_token(50258).as_deref(), Some("</think>"));

    // The added tokens survive save → load, and are then the vocabulary's own.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let again = Tok::from_file(&path, false).unwrap();
    assert!(!again.added_think_tokens);
    assert_eq!((again.think_id, again.end_think_id, again.vocab_size()), (50257, 50258, 50259));
}

#[test]
fn missing_think_tokens_not_allowed_is_an_error() {
    let e = Tok::from_file(Path::new(GPT2), false).err().expect("must fail");
    let msg = format!("{e:#}");
    assert!(msg.contains("gpt2/tokenizer.json") && msg.contains("<think>") && msg.contains("model.add_think_tokens = true"), "{msg}");
}

#[test]
fn token_bytes_undo_the_byte_level_alphabet() {
    let tok = Tok::from_file(Path::new(GPT2), true).unwrap();
    let hello = tok.encode(" hello").unwrap();
    assert_eq!(hello.len(), 1);
    assert_eq!(tok.token_bytes(hello[0]).unwrap(), b" hello");
    // "é" is two bytes; GPT-2 has single-byte tokens for each half.
    let bytes: Vec<u8> = tok.encode("\n\t€").unwrap().iter().flat_map(|&i| tok.token_bytes(i).unwrap()).collect();
    assert_eq!(bytes, "\n\t€".as_bytes());
    assert_eq!(tok.token_bytes(tok.think_id).unwrap(), b"<think>");
    assert_eq!(tok.token_bytes(50256).unwrap(), b"<|endoftext|>");
    assert!(tok.token_bytes(60000).is_none());
    assert!(tok.decode(&[60000]).is_err());
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let msg = format!("{:#}", Tok::from_file(&missing, true).err().unwrap());
    assert!(msg.contains("nope.json"), "{msg}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let msg = format!("{:#}", Tok::from_file(&bad, true).err().unwrap());
    assert!(msg.contains("bad.json") && msg.contains("not a valid tokenizer.json"), "{msg}");
}
