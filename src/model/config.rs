//! Model configuration, deserialised from a Hugging Face `config.json`.
//!
//! One struct covers `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM` and
//! `NemotronHForCausalLM`; the architecture decides the few places where they differ (q/k/v
//! bias, q/k RMSNorm; for NemotronH the per-layer block kinds and the Mamba-2 sizes in
//! [`Hybrid`]).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    /// Hybrid Mamba-2 / attention / MLP blocks (`NemotronHForCausalLM`).
    NemotronH,
}

impl Arch {
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::NemotronH => "NemotronHForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::NemotronH => "nemotron_h",
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

/// What one NemotronH layer computes after its RMSNorm (`x + mixer(norm(x))`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Mamba-2 mixer (`linear_attention` / `M`).
    Mamba,
    /// GQA attention without positional encoding (`full_attention` / `*`).
    Attention,
    /// `down(relu(up x)²)` (`mlp` / `-`).
    Mlp,
}

/// NemotronH's per-layer block kinds and Mamba-2 sizes (defaults: transformers' `NemotronHConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hybrid {
    /// One per layer, e.g. `M*-M-*` → [Mamba, Attention, Mlp, Mamba, Mlp, Attention].
    pub blocks: Vec<BlockKind>,
    /// Mamba heads, e.g. 128 (the inner width is mamba_heads · mamba_head_dim; `expand` is unused).
    pub mamba_heads: usize,
    /// Mamba head dim P, e.g. 64.
    pub mamba_head_dim: usize,
    /// SSM state size N, e.g. 128.
    pub ssm_state_size: usize,
    /// B/C groups G, e.g. 8; head h reads group h / (heads / G).
    pub n_groups: usize,
    /// Causal depthwise conv width K, e.g. 4.
    pub conv_kernel: usize,
    /// The conv carries a bias (`use_conv_bias`).
    pub conv_bias: bool,
    /// Chunk length of the SSD scan, e.g. 128 (numerics only).
    pub chunk_size: usize,
    /// dt is clamped below at this in the prompt (chunked) path, e.g. 0.001.
    pub time_step_min: f64,
}

impl Hybrid {
    /// Mamba inner width I = heads · head dim.
    pub fn inner(&self) -> usize {
        self.mamba_heads * self.mamba_head_dim
    }
    /// Channels of the conv: x, B and C, I + 2·G·N.
    pub fn conv_dim(&self) -> usize {
        self.inner() + 2 * self.n_groups * self.ssm_state_size
    }
    /// Rows of `in_proj`: z, xBC and dt, I + conv_dim + heads.
    pub fn in_proj_dim(&self) -> usize {
        self.inner() + self.conv_dim() + self.mamba_heads
    }
    /// Parameters of one Mamba-2 mixer with model width `d`.
    pub fn mamba_params(&self, d: usize) -> usize {
        let conv = self.conv_dim() * self.conv_kernel + if self.conv_bias { self.conv_dim() } else { 0 };
        self.in_proj_dim() * d + conv + 3 * self.mamba_heads + self.inner() + d * self.inner()
    }

    /// The block kinds as a `hybrid_override_pattern` string (`M`, `*`, `-`).
    pub fn pattern(&self) -> String {
        self.blocks.iter().map(|b| match b {
            BlockKind::Mamba => 'M',
            BlockKind::Attention => '*',
            BlockKind::Mlp => '-',
        }).collect()
    }

    /// Parse `layers_block_type` (transformers 5) or `hybrid_override_pattern` (NVIDIA's
    /// remote-code configs), refusing MoE blocks by name.
    fn blocks_of(raw: &Value) -> Result<Vec<BlockKind>> {
        let moe = |i: usize, name: &str| -> anyhow::Error {
            anyhow::anyhow!("layer {i} is a mixture-of-experts block (`{name}`): rlp does not support NemotronH MoE blocks yet; use a dense NemotronH checkpoint (Nemotron-H, Nemotron-Nano-v2)")
        };
        let blocks = if let Some(list) = raw.get("layers_block_type").filter(|v| !v.is_null()) {
            let list = list.as_array().context("`layers_block_type` must be a list of block names")?;
            list.iter().enumerate().map(|(i, b)| match b.as_str() {
                Some("linear_attention" | "mamba") => Ok(BlockKind::Mamba),
                Some("full_attention" | "attention") => Ok(BlockKind::Attention),
                Some("mlp") => Ok(BlockKind::Mlp),
                Some(name @ "moe") => Err(moe(i, name)),
                _ => bail!("layers_block_type[{i}] = {b} is not a NemotronH block (linear_attention, full_attention, mlp, moe)"),
            }).collect::<Result<Vec<_>>>()?
        } else if let Some(p) = raw.get("hybrid_override_pattern").filter(|v| !v.is_null()) {
            let p = p.as_str().context("`hybrid_override_pattern` must be a string such as \"M-M*-\"")?;
            p.chars().enumerate().map(|(i, c)| match c {
                'M' => Ok(BlockKind::Mamba),
                '*' => Ok(BlockKind::Attention),
                '-' => Ok(BlockKind::Mlp),
                'E' => Err(moe(i, "E")),
                _ => bail!("hybrid_override_pattern {p:?}: character {c:?} at {i} is not a NemotronH block (M, *, -, E)"),
            }).collect::<Result<Vec<_>>>()?
        } else {
            bail!("a NemotronH config needs `layers_block_type` (or `hybrid_override_pattern`) to say what each layer is")
        };
        if let Some(n) = raw.get("num_hidden_layers").and_then(Value::as_u64) {
            if n as usize != blocks.len() {
                bail!("num_hidden_layers is {n} but the block list names {} layers", blocks.len());
            }
        }
        if blocks.is_empty() {
            bail!("the NemotronH block list is empty");
        }
        Ok(blocks)
    }
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
    /// NemotronH only: the block kind of every layer and the Mamba-2 sizes.
    pub hybrid: Option<Hybrid>,
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
        if arch == Arch::NemotronH {
            return Self::nemotron_h_from_json(raw);
        }
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
            hybrid: None,
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

    /// NemotronH: the block list, GQA attention sizes (no RoPE), the MLP width and the Mamba-2
    /// sizes. Keys transformers writes but the model never reads (`time_step_limit` with its
    /// `{"__float__": "Infinity"}`, MoE sizes, `expand`, …) are kept in `raw` and not parsed.
    fn nemotron_h_from_json(raw: Value) -> Result<Self> {
        let blocks = Hybrid::blocks_of(&raw)?;
        let usize_or = |key: &str, default: usize| -> Result<usize> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(_) => get_usize(&raw, key),
            }
        };
        if usize_or("num_nextn_predict_layers", 0)? > 0 {
            bail!("num_nextn_predict_layers > 0: rlp does not support NemotronH multi-token-prediction (MTP) layers; set it to 0 to load the model without them");
        }
        for (key, want) in [("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")] {
            if let Some(act) = raw.get(key).and_then(Value::as_str) {
                if act != want {
                    bail!("`{key}: {act}` is not supported: NemotronH uses {want}");
                }
            }
        }
        for key in ["use_bias", "mamba_proj_bias", "mlp_bias"] {
            if get_bool_or(&raw, key, false)? {
                bail!("`{key}: true` is not supported for NemotronH (no released checkpoint uses it)");
            }
        }
        let hidden_size = get_usize(&raw, "hidden_size")?;
        let num_attention_heads = get_usize(&raw, "num_attention_heads")?;
        let num_key_value_heads = usize_or("num_key_value_heads", num_attention_heads)?;
        let head_dim = match (raw.get("head_dim").filter(|v| !v.is_null()), raw.get("attention_head_dim").filter(|v| !v.is_null())) {
            (Some(_), _) => get_usize(&raw, "head_dim")?,
            (None, Some(_)) => get_usize(&raw, "attention_head_dim")?,
            (None, None) if num_attention_heads > 0 && hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            _ => bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}; set `head_dim`"),
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!("num_attention_heads {num_attention_heads} must be a multiple of num_key_value_heads {num_key_value_heads}")
        }
        let eps = match raw.get("layer_norm_epsilon").filter(|v| !v.is_null()) {
            Some(_) => get_f64_or(&raw, "layer_norm_epsilon", 1e-5)?,
            None => get_f64_or(&raw, "rms_norm_eps", 1e-5)?,
        };
        let hybrid = Hybrid {
            mamba_heads: usize_or("mamba_num_heads", 128)?,
            mamba_head_dim: usize_or("mamba_head_dim", 64)?,
            ssm_state_size: usize_or("ssm_state_size", 128)?,
            n_groups: usize_or("n_groups", 8)?,
            conv_kernel: usize_or("conv_kernel", 4)?,
            conv_bias: get_bool_or(&raw, "use_conv_bias", true)?,
            chunk_size: usize_or("chunk_size", 128)?,
            time_step_min: get_f64_or(&raw, "time_step_min", 0.001)?,
            blocks,
        };
        for (k, v) in [("mamba_num_heads", hybrid.mamba_heads), ("mamba_head_dim", hybrid.mamba_head_dim), ("ssm_state_size", hybrid.ssm_state_size), ("n_groups", hybrid.n_groups), ("conv_kernel", hybrid.conv_kernel), ("chunk_size", hybrid.chunk_size)] {
            if v == 0 {
                bail!("`{k}` must be positive");
            }
        }
        if hybrid.mamba_heads % hybrid.n_groups != 0 {
            bail!("mamba_num_heads {} must be a multiple of n_groups {}", hybrid.mamba_heads, hybrid.n_groups);
        }
        let cfg = Config {
            arch: Arch::NemotronH,
            vocab_size: get_usize(&raw, "vocab_size")?,
            hidden_size,
            intermediate_size: usize_or("intermediate_size", 0)?,
            num_hidden_layers: hybrid.blocks.len(),
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: eps,
            rope_theta: 10000.0, // unused: NemotronH attention has no positional encoding
            rope_scaling: None,
            tie_word_embeddings: get_bool_or(&raw, "tie_word_embeddings", false)?,
            qkv_bias: false,
            o_bias: false,
            max_position_embeddings: raw.get("max_position_embeddings").and_then(|v| v.as_u64()).unwrap_or(4096) as usize,
            bos_token_id: token_ids(raw.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(raw.get("eos_token_id")),
            hybrid: Some(hybrid),
            raw,
        };
        let h = cfg.hybrid.as_ref().unwrap();
        if h.blocks.contains(&BlockKind::Mlp) && cfg.intermediate_size == 0 {
            bail!("the config has MLP blocks but no positive `intermediate_size`");
        }
        for (k, v) in [("vocab_size", cfg.vocab_size), ("hidden_size", cfg.hidden_size), ("head_dim", cfg.head_dim)] {
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
            (Some("NemotronHForCausalLM"), _) | (None, Some("nemotron_h")) => Ok(Arch::NemotronH),
            (c, m) => bail!(
                "unknown architecture (architectures[0] = {c:?}, model_type = {m:?}); rlp supports LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and NemotronHForCausalLM"
            ),
        }
    }

    /// Parameters in the model (embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (h, kv) = (self.num_attention_heads, self.num_key_value_heads);
        let emb = self.vocab_size * d;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        if let Some(hy) = &self.hybrid {
            let attn = d * h * hd + 2 * d * kv * hd + h * hd * d;
            let blocks: usize = hy.blocks.iter().map(|b| d + match b {
                BlockKind::Mamba => hy.mamba_params(d),
                BlockKind::Attention => attn,
                BlockKind::Mlp => 2 * d * f,
            }).sum();
            return blocks + emb + head + d;
        }
        let mut attn = d * h * hd + 2 * d * kv * hd + h * hd * d;
        if self.qkv_bias {
            attn += h * hd + 2 * kv * hd;
        }
        if self.arch == Arch::Qwen3 {
            attn += 2 * hd;
        }
        let layer = attn + 3 * d * f + 2 * d;
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
