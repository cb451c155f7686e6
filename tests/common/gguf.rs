//! Synthetic GGUF files: metadata of a 1-layer model with a byte-level vocabulary, and the
//! writer.

use candle_core::quantized::gguf_file::{self, Value as G};
use candle_core::quantized::QTensor;
use rlp::tokenizer::byte_level_chars;

/// The hyper-parameters a synthetic 1-layer model's metadata states.
pub struct Dims {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
}

/// Metadata of a 1-layer `arch` model of `dims` (RMS-norm ε 1e-6, RoPE base 1e6), with a
/// byte-level BPE tokenizer of pre-tokenizer `pre`: GPT-2's 256 byte tokens, then
/// `<|endoftext|>` as id 256 and EOS, and no merges.
pub fn metadata(arch: &str, dims: &Dims, pre: &str) -> Vec<(String, G)> {
    let tokens: Vec<G> = byte_level_chars().iter().map(|c| c.to_string()).chain(["<|endoftext|>".to_string()]).map(G::String).collect();
    let mut types = vec![G::I32(1); 256];
    types.push(G::I32(3));
    let a = |k: &str| format!("{arch}.{k}");
    vec![
        ("general.architecture".into(), G::String(arch.into())),
        (a("block_count"), G::U32(1)),
        (a("embedding_length"), G::U32(dims.hidden as u32)),
        (a("feed_forward_length"), G::U32(dims.ffn as u32)),
        (a("attention.head_count"), G::U32(dims.heads as u32)),
        (a("attention.head_count_kv"), G::U32(dims.kv_heads as u32)),
        (a("attention.key_length"), G::U32(dims.head_dim as u32)),
        (a("attention.layer_norm_rms_epsilon"), G::F32(1e-6)),
        (a("rope.freq_base"), G::F32(1e6)),
        (a("context_length"), G::U32(dims.context as u32)),
        ("tokenizer.ggml.model".into(), G::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), G::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), G::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), G::Array(types)),
        ("tokenizer.ggml.merges".into(), G::Array(vec![])),
        ("tokenizer.ggml.eos_token_id".into(), G::U32(256)),
    ]
}

/// Write a GGUF file of `meta` and `tensors` (in their order) to `w`.
pub fn write(w: &mut (impl std::io::Write + std::io::Seek), meta: &[(String, G)], tensors: &[(String, QTensor)]) {
    let meta_refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(w, &meta_refs, &q_refs).unwrap();
}
