//! Malformed inputs: every parser (config TOML, safetensors, GGUF, tokenizer.json, corpus) is
//! fed random and mutated bytes and must return an error, never panic or allocate without
//! bound; named faults give errors that name the file, tensor or token and say what to do.

mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::gguf::Dims;
use common::repo;
use proptest::prelude::*;
use rlp::config::TrainConfig;
use rlp::data::corpus::Corpus;
use rlp::model::{gguf::load_gguf, weights};
use rlp::tokenizer::Tok;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Run `f`, failing the test (with the input's description) if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what}: the parser panicked instead of returning an error"))
}

/// A byte-level corruption of `base`: overwrite, delete, insert or truncate, biased towards the
/// first `hot` bytes (where headers live).
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
}

fn mutations(hot: usize) -> impl Strategy<Value = Vec<Mutation>> {
    let pos = prop_oneof![3 => 0..hot.max(1), 1 => 0..usize::MAX / 2];
    let one = prop_oneof![
        (pos.clone(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        (pos.clone(), 1..16usize).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (pos.clone(), prop::collection::vec(any::<u8>(), 1..9)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        pos.prop_map(Mutation::Truncate),
    ];
    prop::collection::vec(one, 1..5)
}

fn apply(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in muts {
        let at = |p: usize, b: &Vec<u8>| p % (b.len() + 1);
        match m {
            Mutation::Set(p, v) if !b.is_empty() => {
                let i = p % b.len();
                b[i] = if b[i] == *v { v.wrapping_add(1) } else { *v };
            }
            Mutation::Delete(p, n) => {
                let i = at(*p, &b);
                let j = (i + n).min(b.len());
                b.drain(i..j);
            }
            Mutation::Insert(p, v) => {
                let i = at(*p, &b);
                b.splice(i..i, v.iter().copied());
            }
            Mutation::Truncate(p) => b.truncate(p % b.len().max(1)),
            _ => {}
        }
    }
    b
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------- config TOML

fn load_config(text: &[u8]) -> anyhow::Result<TrainConfig> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text)?;
    let c = TrainConfig::load(&p, &[])?;
    c.validate()?;
    Ok(c)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_bytes_are_not_a_config(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let r = no_panic("random config", || load_config(&bytes));
        prop_assert!(r.is_err());
    }

    #[test]
    fn mutated_configs_never_panic(muts in mutations(600)) {
        let base = std::fs::read(repo("configs/tiny.toml")).unwrap();
        // a mutation may land in a comment and leave a valid config: only panics are failures
        let _ = no_panic(&format!("{muts:?}"), || load_config(&apply(&base, &muts)));
    }
}

// ---------------------------------------------------------------- safetensors

/// A model directory holding tiny-rlp's config.json and `st` as model.safetensors.
fn load_model_dir(st: &[u8]) -> anyhow::Result<weights::Loaded> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(repo("tests/data/tiny-rlp/config.json"), dir.path().join("config.json"))?;
    std::fs::write(dir.path().join("model.safetensors"), st)?;
    weights::load(dir.path())
}

fn tiny_safetensors() -> Vec<u8> {
    std::fs::read(repo("tests/data/tiny-rlp/model.safetensors")).unwrap()
}

fn header_len(st: &[u8]) -> usize {
    8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn random_bytes_are_not_safetensors(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let r = no_panic("random safetensors", || load_model_dir(&bytes));
        prop_assert!(r.is_err());
    }

    #[test]
    fn mutated_safetensors_never_panic(muts in mutations(1200)) {
        let base = tiny_safetensors();
        // changed weight values still load; anything else must be an error, never a panic
        let _ = no_panic(&format!("{muts:?}"), || load_model_dir(&apply(&base, &muts)).map(|_| ()));
    }
}

fn model_err(st: &[u8]) -> String {
    match load_model_dir(st) {
        Ok(_) => panic!("loaded but should not"),
        Err(e) => format!("{e:#}"),
    }
}

/// Rewrite the JSON header of a safetensors file with `edit`, keeping the data.
fn edit_header(st: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = header_len(st);
    let mut h: serde_json::Value = serde_json::from_slice(&st[8..n]).unwrap();
    edit(&mut h);
    let text = serde_json::to_vec(&h).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&st[n..]);
    out
}

#[test]
fn truncated_safetensors_names_the_file() {
    let st = tiny_safetensors();
    for cut in [4, 100, header_len(&st) + 10, st.len() - 1] {
        let e = model_err(&st[..cut]);
        assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "cut {cut}: {e}");
    }
}

#[test]
fn safetensors_header_lying_about_offsets_is_an_error() {
    let st = tiny_safetensors();
    let lie = edit_header(&st, |h| {
        let t = h.as_object_mut().unwrap().values_mut().find(|v| v.get("data_offsets").is_some()).unwrap();
        t["data_offsets"][1] = serde_json::json!(10_000_000_000u64);
    });
    let e = model_err(&lie);
    assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn integer_tensor_is_refused_by_name_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = candle_core::safetensors::load(repo("tests/data/tiny-rlp/model.safetensors"), &Device::Cpu).unwrap();
    let w = t["model.norm.weight"].clone();
    t.insert("model.norm.weight".into(), w.to_dtype(DType::I64).unwrap());
    let p = dir.path().join("int.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    let e = model_err(&std::fs::read(&p).unwrap());
    assert!(e.contains("model.norm.weight") && e.contains("I64") && e.contains("f32, f16, bf16"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = candle_core::safetensors::load(repo("tests/data/tiny-rlp/model.safetensors"), &Device::Cpu).unwrap();
    t.remove("model.layers.0.mlp.up_proj.weight").unwrap();
    let p = dir.path().join("m.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    let e = model_err(&std::fs::read(&p).unwrap());
    assert!(e.contains("missing tensor `model.layers.0.mlp.up_proj.weight`"), "{e}");
}

// ---------------------------------------------------------------- GGUF

/// A valid 1-layer qwen3 GGUF (hidden 8, 2 heads of 4, vocab 257), F32 and Q8_0 tensors.
fn tiny_gguf() -> Vec<u8> {
    const D: usize = 8;
    let shapes: [(&str, Vec<usize>); 12] = [
        ("token_embd.weight", vec![257, D]),
        ("output_norm.weight", vec![D]),
        ("blk.0.attn_q.weight", vec![D, D]),
        ("blk.0.attn_k.weight", vec![D, D]),
        ("blk.0.attn_v.weight", vec![D, D]),
        ("blk.0.attn_output.weight", vec![D, D]),
        ("blk.0.attn_q_norm.weight", vec![4]),
        ("blk.0.attn_k_norm.weight", vec![4]),
        ("blk.0.attn_norm.weight", vec![D]),
        ("blk.0.ffn_norm.weight", vec![D]),
        ("blk.0.ffn_gate.weight", vec![32, D]),
        ("blk.0.ffn_up.weight", vec![32, D]),
    ];
    let mut qs: Vec<(String, QTensor)> = shapes
        .iter()
        .map(|(n, s)| {
            let t = Tensor::ones(s.clone(), DType::F32, &Device::Cpu).unwrap();
            (n.to_string(), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let down = Tensor::ones((D, 32), DType::F32, &Device::Cpu).unwrap();
    qs.push(("blk.0.ffn_down.weight".into(), QTensor::quantize(&down, GgmlDType::Q8_0).unwrap()));
    let dims = Dims { hidden: D, ffn: 32, heads: 2, kv_heads: 2, head_dim: 4, context: 64 };
    let mut out = std::io::Cursor::new(Vec::new());
    common::gguf::write(&mut out, &common::gguf::metadata("qwen3", &dims, "qwen2"), &qs);
    out.into_inner()
}

fn load_gguf_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, bytes)?;
    load_gguf(&p).map(|_| ())
}

fn gguf_err(bytes: &[u8]) -> String {
    format!("{:#}", load_gguf_bytes(bytes).expect_err("loaded but should not"))
}

/// Offset just past the first occurrence of `needle`.
fn after(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).unwrap() + needle.len()
}

#[test]
fn tiny_gguf_fixture_is_valid() {
    load_gguf_bytes(&tiny_gguf()).unwrap();
}

#[test]
fn gguf_array_claiming_2_pow_60_elements_is_refused_without_allocating() {
    let mut b = tiny_gguf();
    // key, then u32 value type (array), u32 element type (string), u64 length
    let at = after(&b, b"tokenizer.ggml.tokens") + 8;
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = gguf_err(&b);
    assert!(e.contains("m.gguf") && e.contains("array length") && e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn gguf_tensor_dims_whose_product_overflows_are_refused() {
    let mut b = tiny_gguf();
    // the tensor info: name, u32 n_dims (2), u64 dims…; 2^32 · 2^32 wraps to 0 in a plain product
    let at = after(&b, b"token_embd.weight") + 4;
    for k in 0..2 {
        b[at + 8 * k..at + 8 * k + 8].copy_from_slice(&(1u64 << 32).to_le_bytes());
    }
    let e = gguf_err(&b);
    assert!(e.contains("m.gguf") && e.contains("token_embd.weight") && e.contains("does not fit"), "{e}");
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_bytes_are_not_gguf(mut bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(b"GGUF\x03\0\0\0"); // get past the magic check
        }
        let r = no_panic("random gguf", || load_gguf_bytes(&bytes));
        prop_assert!(r.is_err());
    }

    #[test]
    fn mutated_gguf_never_panics(muts in mutations(6000)) {
        let base = tiny_gguf();
        let _ = no_panic(&format!("{muts:?}"), || load_gguf_bytes(&apply(&base, &muts)));
    }
}

// ---------------------------------------------------------------- tokenizer.json

fn load_tok(bytes: &[u8]) -> anyhow::Result<Tok> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, bytes)?;
    let tok = Tok::from_file(&p, true)?;
    tok.encode("hello <think> world")?;
    Ok(tok)
}

/// Replace the JSON node at the path chosen by `picks` with `new`.
fn mutate_json(v: &mut serde_json::Value, picks: &[usize], new: serde_json::Value) {
    let Some((&p, rest)) = picks.split_first() else {
        *v = new;
        return;
    };
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(p % m.len()).unwrap().clone();
            mutate_json(m.get_mut(&k).unwrap(), rest, new)
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            mutate_json(&mut a[p % n], rest, new)
        }
        _ => *v = new,
    }
}

fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (0u32..600).prop_map(serde_json::Value::from),
        "[a-zA-Z<>/|Ġ ]{0,8}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_bytes_are_not_a_tokenizer(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let r = no_panic("random tokenizer.json", || load_tok(&bytes));
        prop_assert!(r.is_err());
    }

    #[test]
    fn mutated_tokenizer_json_never_panics(edits in prop::collection::vec((prop::collection::vec(any::<usize>(), 1..6), json_scalar()), 1..4), muts in mutations(6000), structural in any::<bool>()) {
        let base = std::fs::read(repo("tests/data/tiny-rlp/tokenizer.json")).unwrap();
        let bytes = if structural {
            // valid JSON with wrong values: the deserializer's checks, not the JSON parser's
            let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
            for (picks, new) in &edits {
                mutate_json(&mut v, picks, new.clone());
            }
            serde_json::to_vec(&v).unwrap()
        } else {
            apply(&base, &muts)
        };
        let _ = no_panic(&String::from_utf8_lossy(&bytes), || load_tok(&bytes));
    }
}

#[test]
fn tokenizer_with_ids_past_the_embedding_is_refused_unless_they_are_added_think_tokens() {
    let path = repo("tests/data/tokenizers/gpt2/tokenizer.json");
    let tok = Tok::from_file(&path, true).unwrap();
    assert!(tok.added_think_tokens);
    assert_eq!(tok.vocab_size(), 50259);
    // GPT-2's 50257 rows: grown by exactly the two think tokens
    assert_eq!(tok.rows_for_model(50257, "gpt2").unwrap(), 50259);
    // an embedding larger than the vocabulary (Qwen's padding) stays as it is
    assert_eq!(tok.rows_for_model(50304, "gpt2").unwrap(), 50304);
    // a smaller embedding: real tokens would have no row
    let e = tok.rows_for_model(50000, "small-model").unwrap_err().to_string();
    assert!(e.contains("small-model") && e.contains("50000 embedding rows") && e.contains("(id 50000)") && e.contains("256 more") && e.contains("does not belong"), "{e}");
    // a tokenizer that already has think tokens never grows the model
    let own = Tok::from_file(&repo("tests/data/tiny-rlp/tokenizer.json"), false).unwrap();
    assert!(!own.added_think_tokens);
    let e = own.rows_for_model(own.vocab_size() - 1, "tiny").unwrap_err().to_string();
    assert!(e.contains("have no row"), "{e}");
}

#[test]
fn tokenizer_without_think_tokens_is_refused_when_adding_is_off() {
    let e = Tok::from_file(&repo("tests/data/tokenizers/gpt2/tokenizer.json"), false).err().unwrap().to_string();
    assert!(e.contains("gpt2/tokenizer.json") && e.contains("<think>") && e.contains("model.add_think_tokens = true"), "{e}");
}

#[test]
fn missing_tokenizer_file_is_named() {
    let e = format!("{:#}", Tok::from_file(Path::new("/nonexistent/tokenizer.json"), true).err().unwrap());
    assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
}

// ---------------------------------------------------------------- corpus

fn read_corpus(name: &str, bytes: &[u8]) -> Result<usize, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let corpus = Corpus::open(&p, "text").map_err(|e| e.to_string())?;
    let mut n = 0;
    for d in corpus.documents() {
        d.map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_corpus_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), jsonl in any::<bool>()) {
        let name = if jsonl { "c.jsonl" } else { "c.txt" };
        let r = no_panic("random corpus", || read_corpus(name, &bytes));
        // a NUL byte is refused as binary; otherwise only valid UTF-8 (and, for .jsonl, valid
        // JSON objects with a string `text`) may be read
        if bytes.contains(&0) || std::str::from_utf8(&bytes).is_err() {
            prop_assert!(r.is_err(), "{:?} was accepted", r);
        }
    }

    #[test]
    fn corpus_lines_with_bad_json_name_the_line(lines in prop::collection::vec("[ -~]{0,20}", 1..6)) {
        let mut text = String::from("{\"text\": \"a good first document\"}\n");
        text.push_str(&lines.join("\n"));
        let r = no_panic("jsonl lines", || read_corpus("c.jsonl", text.as_bytes()));
        if let Err(e) = r {
            prop_assert!(e.contains("c.jsonl:"), "{e}");
        }
    }
}

/// tokenizers 0.23 panics (`expect("Helper")`) on a decoder it cannot read; rlp turns that
/// into an error (found by `mutated_tokenizer_json_never_panics`).
#[test]
fn tokenizer_with_an_unreadable_decoder_is_an_error() {
    let base = std::fs::read(repo("tests/data/tiny-rlp/tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
    for bad in [serde_json::json!(5), serde_json::json!({"type": 7})] {
        v["decoder"] = bad;
        let bytes = serde_json::to_vec(&v).unwrap();
        let e = format!("{:#}", no_panic("bad decoder", || load_tok(&bytes)).err().unwrap());
        assert!(e.contains("tokenizer.json is not a valid tokenizer.json"), "{e}");
    }
    let cut = &base[..base.len() / 2];
    let e = format!("{:#}", load_tok(cut).err().unwrap());
    assert!(e.contains("not a valid tokenizer.json") && e.contains("line"), "{e}");
}
