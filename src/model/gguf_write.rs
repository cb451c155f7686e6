//! GGUF out: a model and its Hugging Face tokenizer become one llama.cpp model file
//! (`rlp export --gguf`), written with candle's GGUF writer (`gguf_file::write`).
//!
//! What llama.cpp expects, as its own `convert_hf_to_gguf.py` writes it:
//! - tensor names `token_embd`, `blk.N.attn_q`, …, `output_norm`, `output` (absent when the
//!   embedding is tied); dims fastest-first, which candle's writer does from our [out, in];
//! - for `general.architecture = llama`, the rows of Q and K permuted within each head from
//!   Hugging Face's rotate-half RoPE order to llama.cpp's interleaved one (the inverse of
//!   `gguf::unpermute_qk`, which the reader applies);
//! - 1-D tensors (norms, biases) in F32 whatever the requested type; a matrix whose rows do not
//!   split into 32-element Q8_0 blocks is written F16;
//! - `tokenizer.ggml.model = gpt2` with `tokens`, `token_type`, `merges`, `pre` (the name of the
//!   pre-tokenizer: gpt-2, smollm, llama-bpe or qwen2) and the BOS/EOS ids; the token list is
//!   padded with `[PADn]` (type UNUSED) to the embedding's row count, as llama.cpp checks one
//!   against the other. `<think>`/`</think>` are USER_DEFINED tokens, as in Qwen3's GGUFs, so
//!   llama.cpp matches them in prompts and prints them in output.
//!
//! Left out: Llama 3 RoPE scaling (llama.cpp stores it as a `rope_freqs` tensor, which rlp's
//! reader refuses too), SentencePiece vocabularies, k-quants.

use super::gguf::{LLAMA3_REGEX, QWEN2_REGEX};
use super::{Arch, Model};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value as G};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::path::Path;

/// The tensor type asked for with `rlp export --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportType {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl ExportType {
    fn ggml(self) -> GgmlDType {
        match self {
            ExportType::F32 => GgmlDType::F32,
            ExportType::F16 => GgmlDType::F16,
            ExportType::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0).
    fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::Q8_0 => 7,
        }
    }
}

/// The type a tensor of `dims` ([out, in] for a matrix) is stored in for `requested`.
pub fn stored_type(dims: &[usize], requested: ExportType) -> GgmlDType {
    let want = requested.ggml();
    match dims {
        [_] => GgmlDType::F32,
        [.., cols] if cols % want.block_size() != 0 => GgmlDType::F16,
        _ => want,
    }
}

/// What was written, for the CLI to print.
#[derive(Debug)]
pub struct ExportSummary {
    pub tensors: usize,
    pub bytes: u64,
    /// Matrices written F16 because their rows do not split into the type's blocks.
    pub fell_back_to_f16: Vec<String>,
}

/// Write `model` with `tokenizer` as a GGUF file at `out`, its matrices in `ty`.
pub fn write_gguf(model: &Model, tokenizer: &tokenizers::Tokenizer, out: &Path, ty: ExportType) -> Result<ExportSummary> {
    let c = &model.cfg;
    if c.rope_scaling.is_some() {
        bail!("the model uses Llama 3 RoPE scaling, which rlp cannot write to GGUF (llama.cpp keeps it as a rope_freqs tensor): convert the saved Hugging Face checkpoint with llama.cpp's convert_hf_to_gguf.py instead");
    }
    let mut meta = tokenizer_metadata(tokenizer, c.vocab_size, c.bos_token_id, &c.eos_token_ids)?;
    // an empty merges list goes first, where `mark_empty_merges_as_strings` finds it
    meta.sort_by_key(|(k, v)| !(k == MERGES && matches!(v, G::Array(a) if a.is_empty())));
    let empty_merges = matches!(&meta[0], (k, G::Array(a)) if k == MERGES && a.is_empty());
    meta.extend(model_metadata(model, ty));
    let mut tensors = Vec::new();
    let mut fell_back = Vec::new();
    for (hf, t) in model.named_tensors() {
        let name = gguf_name(&hf)?;
        let mut t = t.detach().to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if c.arch == Arch::Llama {
            if hf.contains("self_attn.q_proj.") {
                t = permute_qk(&t, c.num_attention_heads)?;
            } else if hf.contains("self_attn.k_proj.") {
                t = permute_qk(&t, c.num_key_value_heads)?;
            }
        }
        let dtype = stored_type(t.dims(), ty);
        if dtype != ty.ggml() && t.rank() > 1 {
            fell_back.push(name.clone());
        }
        let q = QTensor::quantize(&t.contiguous()?, dtype).with_context(|| format!("cannot convert {hf} to {dtype:?}"))?;
        tensors.push((name, q));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = out.with_extension("gguf.tmp");
    let written = (|| -> Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?);
        let meta_refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &meta_refs, &tensor_refs).map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
        use std::io::Write;
        f.flush()?;
        if empty_merges {
            mark_empty_merges_as_strings(f.get_mut())?;
        }
        f.get_ref().sync_all()?;
        std::fs::rename(&tmp, out).with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let bytes = std::fs::metadata(out)?.len();
    Ok(ExportSummary { tensors: tensors.len(), bytes, fell_back_to_f16: fell_back })
}

const MERGES: &str = "tokenizer.ggml.merges";

/// candle's writer gives an empty array the element type U32, and llama.cpp refuses merges that
/// are not a string array. With the empty merges list as the first key/value pair, its element
/// type sits at a fixed offset: header (magic, version, tensor and key counts: 24 bytes), key
/// length (8), key, value type ARRAY (4). Checked before it is overwritten with STRING (8).
fn mark_empty_merges_as_strings(f: &mut std::fs::File) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    const ARRAY: u32 = 9;
    const U32: u32 = 4;
    const STRING: u32 = 8;
    let at = 24 + 8 + MERGES.len() as u64;
    let mut buf = [0u8; 4 + 4 + 8]; // value type, element type, length
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut buf)?;
    let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
    if word(0) != ARRAY || word(4) != U32 || buf[8..] != [0u8; 8] {
        bail!("the GGUF writer did not put the empty {MERGES} where expected; cannot mark it as a string array");
    }
    f.seek(SeekFrom::Start(at + 4))?;
    f.write_all(&STRING.to_le_bytes())?;
    f.flush()?;
    Ok(())
}

/// llama.cpp's Q/K row order for llama-architecture GGUFs: within each head of `hd` rows, new
/// row `2*i + j` takes old row `j*hd/2 + i` (i < hd/2, j < 2), i.e.
/// `w.reshape(n_h, 2, hd/2, in).swapaxes(1, 2)`. The inverse of `gguf::unpermute_qk`.
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let rows = w.dim(0)?;
    if n_head == 0 || rows % (2 * n_head) != 0 {
        bail!("{rows} rows do not split into {n_head} heads of an even head dim");
    }
    let hd = rows / n_head;
    let mut split = vec![n_head, 2, hd / 2];
    split.extend(&w.dims()[1..]); // [H, 2, D/2, in…]
    let t = w.reshape(split)?.transpose(1, 2)?.contiguous()?; // [H, D/2, 2, in…]
    Ok(t.reshape(w.shape())?) // [H*D, in…]
}

/// Hugging Face tensor name → llama.cpp tensor name.
fn gguf_name(hf: &str) -> Result<String> {
    match hf {
        "model.embed_tokens.weight" => return Ok("token_embd.weight".into()),
        "model.norm.weight" => return Ok("output_norm.weight".into()),
        "lm_head.weight" => return Ok("output.weight".into()),
        _ => {}
    }
    let unknown = || anyhow!("tensor {hf} has no llama.cpp name that rlp knows");
    let rest = hf.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (layer, leaf) = rest.split_once('.').ok_or_else(unknown)?;
    let (base, kind) = leaf.rsplit_once('.').ok_or_else(unknown)?;
    let name = match base {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return Err(unknown()),
    };
    Ok(format!("blk.{layer}.{name}.{kind}"))
}

/// `general.*` and `{arch}.*` keys, as llama.cpp reads them.
fn model_metadata(model: &Model, ty: ExportType) -> Vec<(String, G)> {
    let c = &model.cfg;
    let arch = c.arch.model_type();
    let a = |k: &str| format!("{arch}.{k}");
    let u = |x: usize| G::U32(x as u32);
    let name = c.raw.get("_name_or_path").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("rlp-model");
    let mut m = vec![
        ("general.architecture".to_string(), G::String(arch.into())),
        ("general.name".to_string(), G::String(name.into())),
        ("general.file_type".to_string(), G::U32(ty.file_type())),
        ("general.quantization_version".to_string(), G::U32(2)),
        (a("context_length"), u(c.max_position_embeddings)),
        (a("embedding_length"), u(c.hidden_size)),
        (a("block_count"), u(c.num_hidden_layers)),
        (a("feed_forward_length"), u(c.intermediate_size)),
        (a("attention.head_count"), u(c.num_attention_heads)),
        (a("attention.head_count_kv"), u(c.num_key_value_heads)),
        (a("attention.key_length"), u(c.head_dim)),
        (a("attention.value_length"), u(c.head_dim)),
        (a("attention.layer_norm_rms_epsilon"), G::F32(c.rms_norm_eps as f32)),
        (a("rope.freq_base"), G::F32(c.rope_theta as f32)),
        (a("vocab_size"), u(c.vocab_size)),
    ];
    if c.arch == Arch::Llama {
        m.push((a("rope.dimension_count"), u(c.head_dim)));
    }
    m
}

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// `tokenizer.ggml.*` keys for a byte-level BPE tokenizer, its token list padded to `rows`.
fn tokenizer_metadata(tok: &tokenizers::Tokenizer, rows: usize, bos: Option<u32>, eos: &[u32]) -> Result<Vec<(String, G)>> {
    let j = serde_json::to_value(tok).context("cannot serialise the tokenizer")?;
    if j["model"]["type"] != "BPE" || j["decoder"]["type"] != "ByteLevel" {
        bail!("the tokenizer is not byte-level BPE (model {}, decoder {}); rlp writes only GGUF `gpt2` vocabularies", j["model"]["type"], j["decoder"]["type"]);
    }
    let merges: Vec<String> = j["model"]["merges"]
        .as_array()
        .context("the tokenizer's BPE model has no merges list")?
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(p) if p.len() == 2 => Ok(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or(""))),
            other => bail!("unexpected BPE merge entry {other}"),
        })
        .collect::<Result<_>>()?;
    let pre = pre_tokenizer_name(&j, merges.is_empty())?;
    let vocab = tok.get_vocab(true);
    let n_tok = vocab.values().max().map_or(0, |m| *m as usize + 1);
    if n_tok > rows {
        bail!("the tokenizer has {n_tok} ids but the model only {rows} embedding rows: it does not belong to this model");
    }
    let mut tokens: Vec<Option<String>> = vec![None; rows];
    for (t, id) in vocab {
        tokens[id as usize] = Some(t);
    }
    let added = tok.get_added_tokens_decoder();
    let mut types = Vec::with_capacity(rows);
    let mut strings = Vec::with_capacity(rows);
    for (id, t) in tokens.into_iter().enumerate() {
        let (s, ty) = match (t, added.get(&(id as u32))) {
            (None, _) => (format!("[PAD{id}]"), UNUSED),
            (Some(s), Some(a)) if a.special && s != crate::tokenizer::THINK && s != crate::tokenizer::END_THINK => (s, CONTROL),
            (Some(s), Some(_)) => (s, USER_DEFINED),
            (Some(s), None) => (s, NORMAL),
        };
        strings.push(G::String(s));
        types.push(G::I32(ty));
    }
    let is_control = |id: u32| types.get(id as usize).is_some_and(|t| matches!(t, G::I32(CONTROL)));
    // EOS: the tokenizer's own end-of-text token first (configs copied from another model may
    // name an id that is a think marker here), else the config's.
    let eos_names = crate::tokenizer::EOS_TOKENS;
    let eos_id = eos_names
        .iter()
        .filter_map(|n| tok.token_to_id(n))
        .find(|&id| is_control(id))
        .or_else(|| eos.iter().copied().find(|&id| is_control(id)));
    let bos_id = bos.filter(|&id| is_control(id)).or(eos_id);
    let k = |s: &str| format!("tokenizer.ggml.{s}");
    let mut m = vec![
        (k("model"), G::String("gpt2".into())),
        (k("pre"), G::String(pre.into())),
        (k("tokens"), G::Array(strings)),
        (k("token_type"), G::Array(types)),
        (k("merges"), G::Array(merges.into_iter().map(G::String).collect())),
        // rlp encodes without BOS, in training and scoring alike
        (k("add_bos_token"), G::Bool(false)),
    ];
    if let Some(e) = eos_id {
        m.push((k("eos_token_id"), G::U32(e)));
    }
    if let Some(b) = bos_id {
        m.push((k("bos_token_id"), G::U32(b)));
    }
    Ok(m)
}

/// llama.cpp's name (`tokenizer.ggml.pre`) for the tokenizer's normalizer and pre-tokenizer,
/// from the four rlp's reader rebuilds. Without merges every token is one byte and any split
/// gives the same ids, so such a vocabulary is `gpt-2` whatever its pre-tokenizer.
fn pre_tokenizer_name(j: &Value, no_merges: bool) -> Result<&'static str> {
    if no_merges {
        return Ok("gpt-2");
    }
    let (norm, pre) = (&j["normalizer"], &j["pre_tokenizer"]);
    let byte_level = |v: &Value, regex: bool| v["type"] == "ByteLevel" && v["use_regex"] == regex;
    let split = |v: &Value, re: &str| v["type"] == "Split" && v["pattern"]["Regex"] == re;
    let seq: &[Value] = pre["pretokenizers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let name = match (norm["type"].as_str(), seq) {
        (None, []) if byte_level(pre, true) => "gpt-2",
        (None, [d, b]) if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) => "smollm",
        (None, [s, b]) if split(s, LLAMA3_REGEX) && byte_level(b, false) => "llama-bpe",
        (Some("NFC"), [s, b]) if split(s, QWEN2_REGEX) && byte_level(b, false) => "qwen2",
        _ => bail!(
            "the tokenizer's pre-tokenizer ({pre}, normalizer {norm}) matches none of llama.cpp's gpt-2, smollm, llama-bpe and qwen2, \
             so llama.cpp would split text differently: export a model whose tokenizer.json uses one of them"
        ),
    };
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::unpermute_qk;

    #[test]
    fn permute_is_the_inverse_of_unpermute() {
        let w = Tensor::arange(0f32, 4.0 * 8.0 * 3.0, &Device::Cpu).unwrap().reshape((4 * 8, 3)).unwrap();
        let p = permute_qk(&w, 4).unwrap();
        assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_eq!(unpermute_qk(&p, 4).unwrap().to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // within head 0 (hd 8): new row 2*i + j <- old row j*4 + i
        let rows = p.to_vec2::<f32>().unwrap();
        for i in 0..4 {
            for j in 0..2 {
                assert_eq!(rows[2 * i + j][0], ((j * 4 + i) * 3) as f32);
            }
        }
    }

    #[test]
    fn vectors_stay_f32_and_unblockable_rows_fall_back_to_f16() {
        assert_eq!(stored_type(&[64], ExportType::Q8_0), GgmlDType::F32);
        assert_eq!(stored_type(&[64, 64], ExportType::Q8_0), GgmlDType::Q8_0);
        assert_eq!(stored_type(&[64, 40], ExportType::Q8_0), GgmlDType::F16);
        assert_eq!(stored_type(&[64, 40], ExportType::F32), GgmlDType::F32);
        assert_eq!(stored_type(&[64, 40], ExportType::F16), GgmlDType::F16);
    }

    #[test]
    fn names_map_both_ways() {
        for hf in ["model.embed_tokens.weight", "model.layers.3.self_attn.k_proj.bias", "model.layers.0.self_attn.q_norm.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"] {
            let g = gguf_name(hf).unwrap();
            assert_eq!(crate::model::gguf::hf_name(&g).unwrap(), hf);
        }
        assert!(gguf_name("model.layers.0.mystery.weight").is_err());
    }
}
