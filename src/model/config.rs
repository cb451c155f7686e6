//! Model configuration, deserialised from a Hugging Face `config.json`.
//!
//! One struct covers `LlamaForCausalLM`, `Qwen2ForCausalLM` and `Qwen3ForCausalLM`; the
//! architecture decides the few places where they differ (q/k/v bias, q/k RMSNorm).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// Llama 3 style frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for Qwen2, `attention_bias` for Llama/Qwen3).
    pub qkv_bias: bool,
    /// The attention output projection carries a bias (Llama `attention_bias`).
    pub o_bias: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The JSON this config came from, kept so that a saved checkpoint round-trips every key
    /// we do not interpret.
    pub raw: Value,
}

fn get_usize(v: &Value, key: &str) -> Result<usize> {
    let x = v.get(key).with_context(|| format!("missing key `{key}`"))?;
    x.as_u64()
        .map(|n| n as usize)
        .with_context(|| format!("key `{key}` must be a non-negative integer, got {x}"))
}

fn get_f64_or(v: &Value, key: &str, default: f64) -> Result<f64> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_f64().with_context(|| format!("key `{key}` must be a number, got {x}")),
    }
}

fn get_bool_or(v: &Value, key: &str, default: bool) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_bool().with_context(|| format!("key `{key}` must be true or false, got {x}")),
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let raw: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(raw).with_context(|| format!("bad model config {}", path.display()))
    }

    pub fn from_json(raw: Value) -> Result<Self> {
        let arch = Self::arch_of(&raw)?;
        let hidden_size = get_usize(&raw, "hidden_size")?;
        let num_attention_heads = get_usize(&raw, "num_attention_heads")?;
        let num_key_value_heads = match raw.get("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            Some(_) => get_usize(&raw, "num_key_value_heads")?,
        };
        let head_dim = match raw.get("head_dim") {
            None | Some(Value::Null) => {
                if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                    bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}; set `head_dim`")
                }
                hidden_size / num_attention_heads
            }
            Some(_) => get_usize(&raw, "head_dim")?,
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!("num_attention_heads {num_attention_heads} must be a multiple of num_key_value_heads {num_key_value_heads}")
        }
        // transformers 5 keeps rope settings in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`.
        let rope_params = raw.get("rope_parameters").filter(|v| v.is_object());
        let rope_theta = match rope_params {
            Some(p) if p.get("rope_theta").is_some() => get_f64_or(p, "rope_theta", 10000.0)?,
            _ => get_f64_or(&raw, "rope_theta", 10000.0)?,
        };
        let scaling = rope_params.or(raw.get("rope_scaling").filter(|v| v.is_object()));
        let rope_scaling = match scaling {
            None => None,
            Some(s) => {
                let ty = s.get("rope_type").or(s.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
                match ty {
                    "default" => None,
                    "llama3" => Some(Llama3RopeScaling {
                        factor: get_f64_or(s, "factor", 8.0)?,
                        low_freq_factor: get_f64_or(s, "low_freq_factor", 1.0)?,
                        high_freq_factor: get_f64_or(s, "high_freq_factor", 4.0)?,
                        original_max_position_embeddings: get_f64_or(s, "original_max_position_embeddings", 8192.0)?,
                    }),
                    other => bail!("unsupported rope type `{other}`: rlp supports the default RoPE and `llama3` scaling"),
                }
            }
        };
        let attention_bias = get_bool_or(&raw, "attention_bias", false)?;
        let cfg = Config {
            arch,
            vocab_size: get_usize(&raw, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(&raw, "intermediate_size")?,
            num_hidden_layers: get_usize(&raw, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64_or(&raw, "rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: get_bool_or(&raw, "tie_word_embeddings", false)?,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            max_position_embeddings: raw.get("max_position_embeddings").and_then(|v| v.as_u64()).unwrap_or(4096) as usize,
            bos_token_id: token_ids(raw.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(raw.get("eos_token_id")),
            raw,
        };
        if get_bool_or(&cfg.raw, "mlp_bias", false)? {
            bail!("`mlp_bias: true` is not supported");
        }
        for (k, v) in [("vocab_size", cfg.vocab_size), ("hidden_size", cfg.hidden_size), ("num_hidden_layers", cfg.num_hidden_layers), ("head_dim", cfg.head_dim)] {
            if v == 0 {
                bail!("`{k}` must be positive");
            }
        }
        Ok(cfg)
    }

    fn arch_of(raw: &Value) -> Result<Arch> {
        let class = raw.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str());
        let model_type = raw.get("model_type").and_then(|m| m.as_str());
        match (class, model_type) {
            (Some("LlamaForCausalLM"), _) | (None, Some("llama")) => Ok(Arch::Llama),
            (Some("Qwen2ForCausalLM"), _) | (None, Some("qwen2")) => Ok(Arch::Qwen2),
            (Some("Qwen3ForCausalLM"), _) | (None, Some("qwen3")) => Ok(Arch::Qwen3),
            (c, m) => bail!(
                "unknown architecture (architectures[0] = {c:?}, model_type = {m:?}); rlp supports LlamaForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM"
            ),
        }
    }

    /// Parameters in the model (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (h, kv) = (self.num_attention_heads, self.num_key_value_heads);
        let mut attn = d * h * hd + 2 * d * kv * hd + h * hd * d;
        if self.qkv_bias {
            attn += h * hd + 2 * kv * hd;
        }
        if self.arch == Arch::Qwen3 {
            attn += 2 * hd;
        }
        let layer = attn + 3 * d * f + 2 * d;
        let emb = self.vocab_size * d;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        self.num_hidden_layers * layer + emb + head + d
    }

    /// The config as `config.json`, with the current vocabulary size.
    pub fn to_json(&self) -> Value {
        let mut v = self.raw.clone();
        if let Value::Object(m) = &mut v {
            m.insert("vocab_size".into(), self.vocab_size.into());
            m.insert("tie_word_embeddings".into(), self.tie_word_embeddings.into());
            m.insert("architectures".into(), Value::Array(vec![self.arch.hf_class().into()]));
            m.insert("model_type".into(), self.arch.model_type().into());
            m.insert("torch_dtype".into(), "float32".into());
        }
        v
    }
}
