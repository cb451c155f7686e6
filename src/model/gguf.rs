//! GGUF in: a llama.cpp model file becomes a Hugging Face style `Config`, f32 tensors keyed by
//! Hugging Face names, and a `tokenizers::Tokenizer` rebuilt from the file's vocabulary.
//!
//! Reading and dequantization are candle's (`gguf_file::Content::read`, `QTensor::dequantize`);
//! this file only renames, checks and un-permutes. Supported: `general.architecture` llama,
//! qwen2, qwen3; tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1; tokenizers with
//! `tokenizer.ggml.model == "gpt2"` (byte-level BPE). Left out on purpose: k-quants (Q4_K, Q6_K,
//! …), SentencePiece (`llama`) vocabularies, and RoPE scaling stored in GGUF (`rope_freqs`), which
//! rlp refuses rather than load a silently different model.
//!
//! Shapes: GGUF lists dims fastest-first (`ne[0]` is the input dim); candle's reader reverses
//! them, so a linear weight arrives as [out, in], which is Hugging Face's layout.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::config::{Arch, Config};

/// A GGUF model, ready for the model code: everything on CPU in f32.
pub struct GgufModel {
    /// Built from a config.json-style object (`config.raw`) derived from the GGUF metadata.
    pub config: Config,
    /// Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, …), HF shapes
    /// ([out, in] for linear weights). `lm_head.weight` is absent when the embedding is tied.
    pub tensors: HashMap<String, Tensor>,
    /// The vocabulary stored in the GGUF, as a Hugging Face tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
}

/// File name of the SmolLM2 GGUF that `scripts/fetch-smollm2.sh` provides.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the SmolLM2 test model is: `$RLP_SMOLLM2_GGUF`, else `.cache/models/<file>`, else
/// `../shared/models/<file>` (both relative to the current directory, which is the crate root
/// under `cargo test`). The error says how to fetch it.
pub fn find_smollm2() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("RLP_SMOLLM2_GGUF") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("RLP_SMOLLM2_GGUF={} is not a file; unset it or run scripts/fetch-smollm2.sh", p.display());
    }
    let candidates = [Path::new(".cache/models").join(SMOLLM2_GGUF), Path::new("../shared/models").join(SMOLLM2_GGUF)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "SmolLM2 GGUF not found (looked at $RLP_SMOLLM2_GGUF, {}, {}); run scripts/fetch-smollm2.sh to download it",
            candidates[0].display(),
            candidates[1].display()
        )
    })
}

/// Tensor types rlp dequantizes. Everything else is refused with the tensor's name.
const SUPPORTED: [GgmlDType; 6] = [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16, GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1];
const SUPPORTED_TEXT: &str = "F32/F16/BF16/Q8_0/Q4_0/Q4_1";
const CONVERT_HINT: &str = "convert it with llama.cpp's `llama-quantize --allow-requantize IN OUT Q8_0` (or use the Hugging Face safetensors checkpoint)";

/// Load a GGUF model file. Every failure (unreadable file, bad magic, truncation, missing
/// tensor, unsupported type or architecture) is an error that names the file.
pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    load_inner(path).with_context(|| format!("cannot load GGUF model {}", path.display()))
}

fn load_inner(path: &Path) -> Result<GgufModel> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    let mut reader = BufReader::new(file);
    // candle's reader checks every length against the file size and returns errors on bad magic
    // or truncation (tested in tests/gguf.rs), so no catch_unwind is needed here.
    let content = Content::read(&mut reader).map_err(|e| {
        let msg = plain(&e);
        if msg.contains("unknown dtype") {
            anyhow!("{msg}: this file holds a tensor type candle does not know; rlp loads {SUPPORTED_TEXT} GGUF tensors: {CONVERT_HINT}")
        } else if msg.contains("magic") {
            anyhow!("not a GGUF file ({msg}; a GGUF file starts with the bytes `GGUF`)")
        } else {
            anyhow!("cannot read the GGUF header ({msg}); the file may be truncated or corrupt: download it again")
        }
    })?;
    let meta = Meta(&content.metadata);
    let arch = match meta.str("general.architecture")? {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        other => bail!("general.architecture is `{other}`; rlp loads llama, qwen2 and qwen3 GGUFs"),
    };
    let tokenizer = tokenizer_from_gguf(&meta)?;
    let hp = Hparams::read(&meta, arch.model_type())?;

    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort(); // a deterministic order, so the same bad file always reports the same tensor
    for name in names {
        let info = &content.tensor_infos[name];
        let hf = hf_name(name)?;
        if !SUPPORTED.contains(&info.ggml_dtype) {
            bail!("tensor {name} has type {:?}; rlp loads {SUPPORTED_TEXT} GGUF tensors: {CONVERT_HINT}", info.ggml_dtype);
        }
        check_extent(name, info, content.tensor_data_offset, file_len)?;
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| anyhow!("cannot read tensor {name} ({}); the file may be truncated or corrupt: download it again", plain(&e)))?;
        let mut t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        if arch == Arch::Llama {
            if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
                t = unpermute_qk(&t, hp.n_head).with_context(|| format!("cannot un-permute {name}"))?;
            } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
                t = unpermute_qk(&t, hp.n_head_kv).with_context(|| format!("cannot un-permute {name}"))?;
            }
        }
        tensors.insert(hf, t);
    }

    let emb = tensors.get("model.embed_tokens.weight").ok_or_else(|| anyhow!("missing tensor token_embd.weight"))?;
    let (vocab_size, d) = emb.dims2().context("token_embd.weight must be 2-D [vocab, hidden]")?;
    let n_tokens = tokenizer.get_vocab_size(true);
    if d != hp.hidden || n_tokens > vocab_size {
        bail!("token_embd.weight is [{vocab_size}, {d}] but the metadata says hidden size {} and {n_tokens} tokens", hp.hidden);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    let attention_bias = tensors.contains_key("model.layers.0.self_attn.q_proj.bias");
    let raw = config_json(arch, &hp, &meta, vocab_size, tied, attention_bias);
    let config = Config::from_json(raw).context("the GGUF metadata does not make a valid model config")?;
    check_tensors(&config, &tensors)?;
    Ok(GgufModel { config, tensors, tokenizer })
}

/// A tensor's declared bytes, computed without overflow, must lie inside the file. candle checks
/// the byte count too, but computes the element count with a plain product that wraps in
/// release builds, so a header declaring dims such as [2^32, 2^32] would pass as 0 bytes.
fn check_extent(name: &str, info: &candle_core::quantized::gguf_file::TensorInfo, data_offset: u64, file_len: u64) -> Result<()> {
    let (block, size) = (info.ggml_dtype.block_size() as u64, info.ggml_dtype.type_size() as u64);
    let elems = info.shape.dims().iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let bytes = elems.and_then(|n| (n / block).checked_mul(size));
    let end = bytes.and_then(|b| data_offset.checked_add(info.offset)?.checked_add(b));
    match end {
        Some(end) if end <= file_len => Ok(()),
        _ => bail!(
            "tensor {name}: shape {:?} of type {:?} at data offset {} does not fit in the {file_len}-byte file; the file is truncated or corrupt: download it again",
            info.shape.dims(),
            info.ggml_dtype,
            info.offset
        ),
    }
}

/// A candle error's message without the backtrace candle attaches when RUST_BACKTRACE is set.
fn plain(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain(inner),
        other => other.to_string(),
    }
}

/// Undo llama.cpp's Q/K row permutation for llama-architecture GGUFs, so that Hugging Face's
/// rotate-half RoPE applies. Within each head of `hd` rows, new row `j*hd/2 + i` takes old row
/// `2*i + j` (i < hd/2, j < 2); that is `w.reshape(n_h, hd/2, 2, in).swapaxes(1, 2)`.
/// Works on a weight [n_h*hd, in] and on a bias [n_h*hd].
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let rows = w.dim(0)?;
    if n_head == 0 || rows % (2 * n_head) != 0 {
        bail!("{rows} rows do not split into {n_head} heads of an even head dim");
    }
    let hd = rows / n_head;
    let rest: Vec<usize> = w.dims()[1..].to_vec();
    let mut split = vec![n_head, hd / 2, 2];
    split.extend(&rest); // [H, D/2, 2, in…]
    let t = w.reshape(split)?.transpose(1, 2)?.contiguous()?; // [H, 2, D/2, in…]
    Ok(t.reshape(w.shape())?) // [H*D, in…]
}

/// llama.cpp tensor name → Hugging Face tensor name.
pub(crate) fn hf_name(name: &str) -> Result<String> {
    let top = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => bail!("tensor rope_freqs.weight: GGUF RoPE frequency scaling is not supported; use the Hugging Face checkpoint"),
        _ => None,
    };
    if let Some(t) = top {
        return Ok(t.to_string());
    }
    let unknown = || anyhow!("tensor {name} has no Hugging Face equivalent that rlp knows (expected token_embd, output_norm, output or blk.N.*)");
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, leaf) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let (base, kind) = leaf.rsplit_once('.').ok_or_else(unknown)?;
    let hf = match base {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return Err(unknown()),
    };
    if kind != "weight" && kind != "bias" {
        return Err(unknown());
    }
    Ok(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Every tensor the config implies is present with its Hugging Face shape.
fn check_tensors(c: &Config, t: &HashMap<String, Tensor>) -> Result<()> {
    let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut want: Vec<(String, Vec<usize>)> = vec![("model.norm.weight".into(), vec![d])];
    if !c.tie_word_embeddings {
        want.push(("lm_head.weight".into(), vec![c.vocab_size, d]));
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        want.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
        want.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
        want.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
        want.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
        want.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        want.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        want.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
        want.push((format!("{p}.input_layernorm.weight"), vec![d]));
        want.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        if c.qkv_bias {
            for (n, len) in [("q", q), ("k", kv), ("v", kv)] {
                want.push((format!("{p}.self_attn.{n}_proj.bias"), vec![len]));
            }
        }
        if c.o_bias {
            want.push((format!("{p}.self_attn.o_proj.bias"), vec![d]));
        }
        if c.arch == Arch::Qwen3 {
            want.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            want.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
    }
    for (name, shape) in want {
        let got = t.get(&name).ok_or_else(|| anyhow!("missing tensor {} (Hugging Face name {name})", gguf_name_hint(&name)))?;
        if got.dims() != shape.as_slice() {
            bail!("tensor {name} has shape {:?}, expected {shape:?} from the metadata", got.dims());
        }
    }
    Ok(())
}

/// Best-effort llama.cpp name for an HF name, for error messages only.
fn gguf_name_hint(hf: &str) -> String {
    let pairs = [
        ("model.norm.", "output_norm."), ("lm_head.", "output."), ("model.layers.", "blk."), ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm"), ("post_attention_layernorm", "ffn_norm"),
        ("input_layernorm", "attn_norm"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
    ];
    pairs.iter().fold(hf.to_string(), |s, (a, b)| s.replace(a, b))
}

// ---------------------------------------------------------------------------------------------
// Metadata and config

/// Typed access to GGUF metadata with errors that name the key.
struct Meta<'a>(&'a HashMap<String, GgufValue>);

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&GgufValue> {
        self.0.get(key).ok_or_else(|| anyhow!("missing metadata key `{key}`"))
    }
    fn str(&self, key: &str) -> Result<&str> {
        Ok(self.get(key)?.to_string().map_err(|e| anyhow!("metadata `{key}`: {}", plain(&e)))?.as_str())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            GgufValue::I32(x) if *x >= 0 => *x as u64,
            GgufValue::I64(x) if *x >= 0 => *x as u64,
            v => v.to_u64().map_err(|e| anyhow!("metadata `{key}` must be a non-negative integer: {}", plain(&e)))?,
        };
        Ok(n as usize)
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.0.contains_key(key) { self.usize(key).map(Some) } else { Ok(None) }
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(GgufValue::F32(x)) => Ok(Some(*x as f64)),
            Some(GgufValue::F64(x)) => Ok(Some(*x)),
            Some(v) => bail!("metadata `{key}` must be a float, got {v:?}"),
        }
    }
    fn array(&self, key: &str) -> Result<&Vec<GgufValue>> {
        self.get(key)?.to_vec().map_err(|e| anyhow!("metadata `{key}` must be an array: {}", plain(&e)))
    }
}

/// Hyper-parameters under `{arch}.*`.
struct Hparams {
    layers: usize,
    hidden: usize,
    ffn: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    rms_eps: f64,
    rope_theta: f64,
    context: usize,
}

impl Hparams {
    fn read(m: &Meta, a: &str) -> Result<Self> {
        let hidden = m.usize(&format!("{a}.embedding_length"))?;
        let n_head = m.usize(&format!("{a}.attention.head_count"))?;
        if n_head == 0 || hidden == 0 {
            bail!("`{a}.attention.head_count` and `{a}.embedding_length` must be positive");
        }
        let head_dim = m.opt_usize(&format!("{a}.attention.key_length"))?.unwrap_or(hidden / n_head);
        Ok(Hparams {
            layers: m.usize(&format!("{a}.block_count"))?,
            hidden,
            ffn: m.usize(&format!("{a}.feed_forward_length"))?,
            n_head,
            n_head_kv: m.opt_usize(&format!("{a}.attention.head_count_kv"))?.unwrap_or(n_head),
            head_dim,
            rms_eps: m.opt_f64(&format!("{a}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            // llama.cpp's own default when the key is absent.
            rope_theta: m.opt_f64(&format!("{a}.rope.freq_base"))?.unwrap_or(10000.0),
            context: m.opt_usize(&format!("{a}.context_length"))?.unwrap_or(4096),
        })
    }
}

/// A config.json that transformers would accept for this model. `vocab_size` is the number of
/// embedding rows (equal to the token list in llama.cpp's GGUFs; the list may not be longer).
fn config_json(arch: Arch, hp: &Hparams, m: &Meta, vocab_size: usize, tied: bool, attention_bias: bool) -> Value {
    let id = |k: &str| m.opt_usize(&format!("tokenizer.ggml.{k}_token_id")).ok().flatten();
    let mut c = json!({
        "architectures": [arch.hf_class()],
        "model_type": arch.model_type(),
        "vocab_size": vocab_size,
        "hidden_size": hp.hidden,
        "intermediate_size": hp.ffn,
        "num_hidden_layers": hp.layers,
        "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_head_kv,
        "head_dim": hp.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_theta,
        "max_position_embeddings": hp.context,
        "tie_word_embeddings": tied,
        "attention_bias": attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    for (key, ggml) in [("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")] {
        if let Some(v) = id(ggml) {
            c[key] = v.into();
        }
    }
    if let Some(name) = m.0.get("general.name").and_then(|v| v.to_string().ok()) {
        c["_name_or_path"] = name.clone().into();
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// Pre-tokenizer regexes, as llama.cpp's `llama-vocab.cpp` uses them per `tokenizer.ggml.pre`,
/// written the way the matching Hugging Face tokenizer.json does.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Build a Hugging Face tokenizer from `tokenizer.ggml.*` metadata (byte-level BPE only).
///
/// - pre-tokenizer by `tokenizer.ggml.pre`: `gpt-2` → GPT-2 regex; `smollm` (also starcoder,
///   refact, codeshell) → single digits split off first, then the GPT-2 regex; `llama-bpe` /
///   `llama3` → Llama 3 regex and `ignore_merges`; `qwen2` → Qwen2 regex with NFC normalization.
///   Other values are refused.
/// - token_type 3 (control) → special added token; 4 (user-defined) → non-special added token
///   matched verbatim in text (llama.cpp matches both in text too).
pub fn tokenizer_from_gguf_metadata(metadata: &HashMap<String, GgufValue>) -> Result<tokenizers::Tokenizer> {
    tokenizer_from_gguf(&Meta(metadata))
}

fn tokenizer_from_gguf(m: &Meta) -> Result<tokenizers::Tokenizer> {
    let model = m.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!("tokenizer.ggml.model is `{model}`; rlp rebuilds only byte-level BPE (`gpt2`) GGUF tokenizers: use the model's tokenizer.json");
    }
    let tokens: Vec<&str> = m
        .array("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().map(|s| s.as_str()))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| anyhow!("tokenizer.ggml.tokens must hold strings: {}", plain(&e)))?;
    let merges: Vec<&str> = m
        .array("tokenizer.ggml.merges")?
        .iter()
        .map(|v| v.to_string().map(|s| s.as_str()))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| anyhow!("tokenizer.ggml.merges must hold strings: {}", plain(&e)))?;
    let types: Vec<i64> = match m.0.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .to_vec()
            .map_err(|e| anyhow!("tokenizer.ggml.token_type: {}", plain(&e)))?
            .iter()
            .map(|t| match t {
                GgufValue::I32(x) => Ok(*x as i64),
                t => t.to_i64().map_err(|e| anyhow!("tokenizer.ggml.token_type must hold integers: {}", plain(&e))),
            })
            .collect::<Result<_>>()?,
    };
    if types.len() != tokens.len() {
        bail!("tokenizer.ggml.token_type has {} entries for {} tokens", types.len(), tokens.len());
    }
    // A missing `pre` is llama.cpp's "default" (a different, legacy regex): refused, like any
    // pre-tokenizer rlp cannot reproduce exactly.
    let pre = m.0.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(|s| s.as_str()).unwrap_or("default");
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
    let (normalizer, pre_tokenizer, ignore_merges) = match pre {
        "gpt-2" => (Value::Null, byte_level(true), false),
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "llama-bpe" | "llama3" => (Value::Null, json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}), true),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        other => bail!("tokenizer.ggml.pre is `{other}`; rlp rebuilds gpt-2, smollm, llama-bpe and qwen2 pre-tokenizers: use the model's tokenizer.json"),
    };
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i.into())).collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == 3 || **ty == 4)
        .map(|(id, (t, ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty == 3})
        })
        .collect();
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    });
    serde_json::from_value(tj).map_err(|e| anyhow!("cannot build a tokenizer from the GGUF vocabulary: {e}"))
}
