//! Model configuration, deserialised from a Hugging Face `config.json`.
//!
//! One struct covers `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM` and
//! `NemotronHForCausalLM`; the architecture decides the few places where they differ (q/k/v
//! bias, q/k RMSNorm; for NemotronH the per-layer block kinds and the Mamba-2 sizes in
//! [`Hybrid`]).
//!
//! Two steps: serde reads the keys rlp uses into `HfKeys` (each optional, typed, named as
//! transformers writes them), then [`Config::from_json`] applies the defaults, resolves the
//! alternative spellings (transformers 4 / 5, NVIDIA's remote-code NemotronH configs) and
//! refuses what rlp cannot run, each error naming the key.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
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
    fn blocks_of(keys: &HfKeys) -> Result<Vec<BlockKind>> {
        let moe = |i: usize, name: &str| -> anyhow::Error {
            anyhow::anyhow!("layer {i} is a mixture-of-experts block (`{name}`): rlp does not support NemotronH MoE blocks yet; use a dense NemotronH checkpoint (Nemotron-H, Nemotron-Nano-v2)")
        };
        let blocks = if let Some(list) = &keys.layers_block_type {
            list.iter().enumerate().map(|(i, b)| match b.as_str() {
                "linear_attention" | "mamba" => Ok(BlockKind::Mamba),
                "full_attention" | "attention" => Ok(BlockKind::Attention),
                "mlp" => Ok(BlockKind::Mlp),
                name @ "moe" => Err(moe(i, name)),
                _ => bail!("layers_block_type[{i}] = {b:?} is not a NemotronH block (linear_attention, full_attention, mlp, moe)"),
            }).collect::<Result<Vec<_>>>()?
        } else if let Some(p) = &keys.hybrid_override_pattern {
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
        if let Some(n) = keys.num_hidden_layers {
            if n != blocks.len() {
                bail!("num_hidden_layers is {n} but the block list names {} layers", blocks.len());
            }
        }
        if blocks.is_empty() {
            bail!("the NemotronH block list is empty");
        }
        Ok(blocks)
    }
}

/// The keys of a `config.json` that rlp reads, named as transformers writes them; an absent or
/// `null` key is `None`. Which are required, their defaults and how alternative spellings
/// combine is [`Config::from_json`]'s. Every other key (`time_step_limit` with its
/// `{"__float__": "Infinity"}`, MoE sizes, `expand`, …) stays in [`Config::raw`], unread.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HfKeys {
    /// `["LlamaForCausalLM"]`: the first names the architecture; else `model_type` does.
    architectures: Option<Vec<String>>,
    /// `llama`, `qwen2`, `qwen3`, `nemotron_h`.
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    /// transformers 4.x; transformers 5 writes it in `rope_parameters`.
    rope_theta: Option<f64>,
    /// transformers 5: RoPE base and scaling together.
    rope_parameters: Option<RopeKeys>,
    /// transformers 4.x RoPE scaling (read when `rope_parameters` is absent).
    rope_scaling: Option<RopeKeys>,
    /// Llama / Qwen3: q/k/v (and Llama's o) projections carry a bias.
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    #[serde(deserialize_with = "token_ids")]
    bos_token_id: Option<Vec<u32>>,
    /// One id or a list of them (Llama 3: `[128001, 128008, 128009]`).
    #[serde(deserialize_with = "token_ids")]
    eos_token_id: Option<Vec<u32>>,
    // NemotronH
    /// transformers 5: one of `linear_attention` (or `mamba`), `full_attention` (or
    /// `attention`), `mlp`, `moe` per layer.
    layers_block_type: Option<Vec<String>>,
    /// NVIDIA's remote-code configs: one of `M`, `*`, `-`, `E` per layer, e.g. `M-M*-`.
    hybrid_override_pattern: Option<String>,
    /// NVIDIA's name for `head_dim`.
    attention_head_dim: Option<usize>,
    /// NVIDIA's name for `rms_norm_eps`.
    layer_norm_epsilon: Option<f64>,
    num_nextn_predict_layers: Option<usize>,
    mlp_hidden_act: Option<String>,
    mamba_hidden_act: Option<String>,
    use_bias: Option<bool>,
    mamba_proj_bias: Option<bool>,
    mamba_num_heads: Option<usize>,
    mamba_head_dim: Option<usize>,
    ssm_state_size: Option<usize>,
    n_groups: Option<usize>,
    conv_kernel: Option<usize>,
    use_conv_bias: Option<bool>,
    chunk_size: Option<usize>,
    time_step_min: Option<f64>,
}

/// RoPE keys of `rope_parameters` (transformers 5) or `rope_scaling` (4.x).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RopeKeys {
    rope_theta: Option<f64>,
    /// `default` or `llama3` (rlp's two); older configs write `type`.
    rope_type: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

/// `bos_token_id` / `eos_token_id`: one id or a list of ids.
fn token_ids<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<u32>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(u32),
        Many(Vec<u32>),
    }
    match Option::<Ids>::deserialize(d) {
        Ok(ids) => Ok(ids.map(|ids| match ids {
            Ids::One(id) => vec![id],
            Ids::Many(ids) => ids,
        })),
        Err(_) => Err(serde::de::Error::custom("expected a token id or a list of token ids")),
    }
}

impl HfKeys {
    /// The keys of `raw`, a key of the wrong type named in the error. (serde_json's errors from
    /// a `Value` carry no key: the first key whose value fails alone is the one reported.)
    fn of(raw: &Value) -> Result<HfKeys> {
        let Some(map) = raw.as_object() else { bail!("a model config must be a JSON object, got {raw}") };
        HfKeys::deserialize(raw).or_else(|all| {
            for (k, v) in map {
                let alone = Value::Object([(k.clone(), v.clone())].into_iter().collect());
                if let Err(e) = HfKeys::deserialize(&alone) {
                    // serde names Rust types: say what to write instead
                    let e = [("usize", "a non-negative integer"), ("f64", "a number"), ("a sequence", "a list"), ("struct RopeKeys", "an object (rope_type, rope_theta, factor, …)")]
                        .iter()
                        .fold(e.to_string(), |e, (rust, json)| e.replace(&format!("expected {rust}"), &format!("expected {json}")));
                    bail!("key `{k}`: {e}");
                }
            }
            Err(all.into())
        })
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

/// A key the config must have.
fn required<T: Copy>(v: Option<T>, key: &str) -> Result<T> {
    v.with_context(|| format!("missing key `{key}`"))
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
        let k = HfKeys::of(&raw)?;
        let arch = Self::arch_of(&k)?;
        if arch == Arch::NemotronH {
            return Self::nemotron_h_from_keys(k, raw);
        }
        let hidden_size = required(k.hidden_size, "hidden_size")?;
        let num_attention_heads = required(k.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = k.num_key_value_heads.unwrap_or(num_attention_heads);
        let head_dim = match k.head_dim {
            None => {
                if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                    bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}; set `head_dim`")
                }
                hidden_size / num_attention_heads
            }
            Some(hd) => hd,
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!("num_attention_heads {num_attention_heads} must be a multiple of num_key_value_heads {num_key_value_heads}")
        }
        // transformers 5 keeps rope settings in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`.
        let rope_theta = k.rope_parameters.as_ref().and_then(|p| p.rope_theta).or(k.rope_theta).unwrap_or(10000.0);
        let rope_scaling = match k.rope_parameters.as_ref().or(k.rope_scaling.as_ref()) {
            None => None,
            Some(s) => match s.rope_type.as_deref().or(s.type_.as_deref()).unwrap_or("default") {
                "default" => None,
                "llama3" => Some(Llama3RopeScaling {
                    factor: s.factor.unwrap_or(8.0),
                    low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192.0),
                }),
                other => bail!("unsupported rope type `{other}`: rlp supports the default RoPE and `llama3` scaling"),
            },
        };
        if k.mlp_bias == Some(true) {
            bail!("`mlp_bias: true` is not supported");
        }
        let attention_bias = k.attention_bias.unwrap_or(false);
        let cfg = Config {
            arch,
            vocab_size: required(k.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(k.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(k.num_hidden_layers, "num_hidden_layers")?,
            hybrid: None,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: k.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: k.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            max_position_embeddings: k.max_position_embeddings.unwrap_or(4096),
            bos_token_id: k.bos_token_id.unwrap_or_default().first().copied(),
            eos_token_ids: k.eos_token_id.unwrap_or_default(),
            raw,
        };
        for (k, v) in [("vocab_size", cfg.vocab_size), ("hidden_size", cfg.hidden_size), ("num_hidden_layers", cfg.num_hidden_layers), ("head_dim", cfg.head_dim)] {
            if v == 0 {
                bail!("`{k}` must be positive");
            }
        }
        Ok(cfg)
    }

    /// NemotronH: the block list, GQA attention sizes (no RoPE), the MLP width and the Mamba-2
    /// sizes (defaults: transformers' `NemotronHConfig`).
    fn nemotron_h_from_keys(k: HfKeys, raw: Value) -> Result<Self> {
        let blocks = Hybrid::blocks_of(&k)?;
        if k.num_nextn_predict_layers.unwrap_or(0) > 0 {
            bail!("num_nextn_predict_layers > 0: rlp does not support NemotronH multi-token-prediction (MTP) layers; set it to 0 to load the model without them");
        }
        for (key, act, want) in [("mlp_hidden_act", &k.mlp_hidden_act, "relu2"), ("mamba_hidden_act", &k.mamba_hidden_act, "silu")] {
            if let Some(act) = act.as_deref().filter(|&a| a != want) {
                bail!("`{key}: {act}` is not supported: NemotronH uses {want}");
            }
        }
        for (key, on) in [("use_bias", k.use_bias), ("mamba_proj_bias", k.mamba_proj_bias), ("mlp_bias", k.mlp_bias)] {
            if on == Some(true) {
                bail!("`{key}: true` is not supported for NemotronH (no released checkpoint uses it)");
            }
        }
        let hidden_size = required(k.hidden_size, "hidden_size")?;
        let num_attention_heads = required(k.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = k.num_key_value_heads.unwrap_or(num_attention_heads);
        let head_dim = match k.head_dim.or(k.attention_head_dim) {
            Some(hd) => hd,
            None if num_attention_heads > 0 && hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}; set `head_dim`"),
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!("num_attention_heads {num_attention_heads} must be a multiple of num_key_value_heads {num_key_value_heads}")
        }
        let hybrid = Hybrid {
            mamba_heads: k.mamba_num_heads.unwrap_or(128),
            mamba_head_dim: k.mamba_head_dim.unwrap_or(64),
            ssm_state_size: k.ssm_state_size.unwrap_or(128),
            n_groups: k.n_groups.unwrap_or(8),
            conv_kernel: k.conv_kernel.unwrap_or(4),
            conv_bias: k.use_conv_bias.unwrap_or(true),
            chunk_size: k.chunk_size.unwrap_or(128),
            time_step_min: k.time_step_min.unwrap_or(0.001),
            blocks,
        };
        for (key, v) in [("mamba_num_heads", hybrid.mamba_heads), ("mamba_head_dim", hybrid.mamba_head_dim), ("ssm_state_size", hybrid.ssm_state_size), ("n_groups", hybrid.n_groups), ("conv_kernel", hybrid.conv_kernel), ("chunk_size", hybrid.chunk_size)] {
            if v == 0 {
                bail!("`{key}` must be positive");
            }
        }
        if hybrid.mamba_heads % hybrid.n_groups != 0 {
            bail!("mamba_num_heads {} must be a multiple of n_groups {}", hybrid.mamba_heads, hybrid.n_groups);
        }
        let cfg = Config {
            arch: Arch::NemotronH,
            vocab_size: required(k.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: k.intermediate_size.unwrap_or(0),
            num_hidden_layers: hybrid.blocks.len(),
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: k.layer_norm_epsilon.or(k.rms_norm_eps).unwrap_or(1e-5),
            rope_theta: 10000.0, // unused: NemotronH attention has no positional encoding
            rope_scaling: None,
            tie_word_embeddings: k.tie_word_embeddings.unwrap_or(false),
            qkv_bias: false,
            o_bias: false,
            max_position_embeddings: k.max_position_embeddings.unwrap_or(4096),
            bos_token_id: k.bos_token_id.unwrap_or_default().first().copied(),
            eos_token_ids: k.eos_token_id.unwrap_or_default(),
            hybrid: Some(hybrid),
            raw,
        };
        let h = cfg.hybrid.as_ref().unwrap();
        if h.blocks.contains(&BlockKind::Mlp) && cfg.intermediate_size == 0 {
            bail!("the config has MLP blocks but no positive `intermediate_size`");
        }
        for (key, v) in [("vocab_size", cfg.vocab_size), ("hidden_size", cfg.hidden_size), ("head_dim", cfg.head_dim)] {
            if v == 0 {
                bail!("`{key}` must be positive");
            }
        }
        Ok(cfg)
    }

    fn arch_of(k: &HfKeys) -> Result<Arch> {
        let class = k.architectures.as_ref().and_then(|a| a.first()).map(String::as_str);
        match (class, k.model_type.as_deref()) {
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
