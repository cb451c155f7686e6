//! Fresh models: a small Llama-, Qwen3- or NemotronH-shaped `config.json`, and random weights
//! initialised as transformers initialises a new model (normal with std `initializer_range` for
//! every matrix and the embedding, ones for RMSNorm weights, zeros for biases; for Mamba-2
//! mixers A = 1..=H, D = 1, dt_bias = softplus⁻¹ of a log-uniform dt in [time_step_min,
//! time_step_max], conv weights uniform in ±1/√K as PyTorch's Conv1d), drawn from a seeded
//! ChaCha8 stream so a seed always gives the same weights.

use super::config::{Arch, Config};
use super::transformer::Model;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The shape of a small model (defaults: 4 layers, width 256, 4 heads, 2 KV heads, FFN 768,
/// tied embeddings; about 3.4M parameters with a 1k vocabulary).
#[derive(Debug, Clone, PartialEq)]
pub struct SmallShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub max_positions: usize,
    pub tie_embeddings: bool,
}

impl Default for SmallShape {
    fn default() -> Self {
        SmallShape { layers: 4, hidden: 256, heads: 4, kv_heads: 2, ffn: 768, max_positions: 1024, tie_embeddings: true }
    }
}

/// A Hugging Face `config.json` for a fresh model of `arch` (Llama or Qwen3) with this shape.
/// `eos_id` becomes both BOS and EOS (one `<|endoftext|>` token, GPT-2 style).
pub fn small_config_json(arch: Arch, vocab_size: usize, shape: &SmallShape, eos_id: Option<u32>) -> Result<Value> {
    if shape.heads == 0 || shape.hidden % shape.heads != 0 {
        bail!("--hidden {} must be a multiple of --heads {}", shape.hidden, shape.heads);
    }
    if shape.kv_heads == 0 || shape.heads % shape.kv_heads != 0 {
        bail!("--heads {} must be a multiple of --kv-heads {}", shape.heads, shape.kv_heads);
    }
    let mut cfg = json!({
        "architectures": [arch.hf_class()],
        "model_type": arch.model_type(),
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.hidden / shape.heads,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_positions,
        "initializer_range": 0.02,
        "rope_theta": 10000.0,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "tie_word_embeddings": shape.tie_embeddings,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "use_cache": true,
        "torch_dtype": "float32",
    });
    match arch {
        Arch::Llama => {
            cfg["rms_norm_eps"] = 1e-5.into();
            cfg["mlp_bias"] = false.into();
        }
        Arch::Qwen3 => {
            cfg["rms_norm_eps"] = 1e-6.into();
            cfg["use_sliding_window"] = false.into();
            cfg["max_window_layers"] = shape.layers.into();
        }
        Arch::Qwen2 => bail!("fresh models are Llama or Qwen3 shaped; Qwen2 is not offered"),
        Arch::NemotronH => bail!("fresh NemotronH configs come from `nemotron_h_config_json`, which takes the block pattern"),
    }
    Ok(cfg)
}

/// A transformers-5 `config.json` for a fresh NemotronH with this shape and block `pattern`
/// (`M` Mamba-2, `*` attention, `-` MLP; `shape.layers` is ignored). The Mamba-2 mixers have head
/// dim 32, 2·hidden/32 heads (expand 2), 2 groups, state size 32, conv width 4, chunks of 64.
pub fn nemotron_h_config_json(vocab_size: usize, shape: &SmallShape, pattern: &str, eos_id: Option<u32>) -> Result<Value> {
    if shape.heads == 0 || shape.hidden % shape.heads != 0 {
        bail!("--hidden {} must be a multiple of --heads {}", shape.hidden, shape.heads);
    }
    if shape.kv_heads == 0 || shape.heads % shape.kv_heads != 0 {
        bail!("--heads {} must be a multiple of --kv-heads {}", shape.heads, shape.kv_heads);
    }
    if shape.hidden % 32 != 0 {
        bail!("--hidden {} must be a multiple of 32 for NemotronH (Mamba head dim 32, expand 2)", shape.hidden);
    }
    let blocks = pattern
        .chars()
        .map(|c| match c {
            'M' => Ok("linear_attention"),
            '*' => Ok("full_attention"),
            '-' => Ok("mlp"),
            _ => bail!("--pattern {pattern:?}: {c:?} is not M (Mamba-2), * (attention) or - (MLP)"),
        })
        .collect::<Result<Vec<_>>>()?;
    if blocks.is_empty() {
        bail!("--pattern must name at least one block");
    }
    Ok(json!({
        "architectures": ["NemotronHForCausalLM"],
        "model_type": "nemotron_h",
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "layers_block_type": blocks,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.hidden / shape.heads,
        "intermediate_size": shape.ffn,
        "mlp_hidden_act": "relu2",
        "mamba_num_heads": 2 * shape.hidden / 32,
        "mamba_head_dim": 32,
        "ssm_state_size": 32,
        "n_groups": 2,
        "conv_kernel": 4,
        "use_conv_bias": true,
        "use_bias": false,
        "mlp_bias": false,
        "attention_bias": false,
        "mamba_hidden_act": "silu",
        "chunk_size": 64,
        "time_step_min": 0.001,
        "time_step_max": 0.1,
        "time_step_floor": 1e-4,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "max_position_embeddings": shape.max_positions,
        "tie_word_embeddings": shape.tie_embeddings,
        "num_nextn_predict_layers": 0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "use_cache": true,
        "torch_dtype": "float32",
    }))
}

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal(0, initializer_range): embeddings and projection matrices.
    Normal,
    /// All ones: RMSNorm weights.
    Ones,
    /// All zeros: biases.
    Zeros,
    /// Mamba-2 A_log: log(1), log(2), …, log(H).
    ALogRange,
    /// Mamba-2 dt_bias: softplus⁻¹(dt), dt log-uniform in [min, max], floored at `floor`.
    DtBias { min: f64, max: f64, floor: f64 },
    /// Uniform in ±bound (PyTorch's Conv1d default, bound 1/√K).
    Uniform(f64),
}

/// Every parameter of a model with this config: Hugging Face name, shape and initialisation, in
/// `Model::named_tensors` order.
pub fn parameter_shapes(cfg: &Config) -> Vec<(String, Vec<usize>, Init)> {
    if cfg.hybrid.is_some() {
        return nemotron_h_shapes(cfg);
    }
    let (d, f, hd, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d], Init::Normal)];
    for i in 0..cfg.num_hidden_layers {
        let mut push = |n: &str, shape: Vec<usize>, init| out.push((format!("model.layers.{i}.{n}"), shape, init));
        push("self_attn.q_proj.weight", vec![q, d], Init::Normal);
        push("self_attn.k_proj.weight", vec![kv, d], Init::Normal);
        push("self_attn.v_proj.weight", vec![kv, d], Init::Normal);
        push("self_attn.o_proj.weight", vec![d, q], Init::Normal);
        if cfg.qkv_bias {
            push("self_attn.q_proj.bias", vec![q], Init::Zeros);
            push("self_attn.k_proj.bias", vec![kv], Init::Zeros);
            push("self_attn.v_proj.bias", vec![kv], Init::Zeros);
        }
        if cfg.o_bias {
            push("self_attn.o_proj.bias", vec![d], Init::Zeros);
        }
        if cfg.arch == Arch::Qwen3 {
            push("self_attn.q_norm.weight", vec![hd], Init::Ones);
            push("self_attn.k_norm.weight", vec![hd], Init::Ones);
        }
        push("mlp.gate_proj.weight", vec![f, d], Init::Normal);
        push("mlp.up_proj.weight", vec![f, d], Init::Normal);
        push("mlp.down_proj.weight", vec![d, f], Init::Normal);
        push("input_layernorm.weight", vec![d], Init::Ones);
        push("post_attention_layernorm.weight", vec![d], Init::Ones);
    }
    out.push(("model.norm.weight".to_string(), vec![d], Init::Ones));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d], Init::Normal));
    }
    out
}

fn nemotron_h_shapes(cfg: &Config) -> Vec<(String, Vec<usize>, Init)> {
    let hy = cfg.hybrid.as_ref().expect("a NemotronH config");
    let (d, v) = (cfg.hidden_size, cfg.vocab_size);
    let f64_or = |k: &str, dflt: f64| cfg.raw.get(k).and_then(Value::as_f64).unwrap_or(dflt);
    let dt = Init::DtBias { min: hy.time_step_min, max: f64_or("time_step_max", 0.1), floor: f64_or("time_step_floor", 1e-4) };
    let mut out = vec![("backbone.embeddings.weight".to_string(), vec![v, d], Init::Normal)];
    for (i, &kind) in hy.blocks.iter().enumerate() {
        for (name, shape) in super::nemotron_h::layer_shapes(cfg, kind).expect("a NemotronH config") {
            let init = match name {
                "norm.weight" | "mixer.norm.weight" | "mixer.D" => Init::Ones,
                "mixer.A_log" => Init::ALogRange,
                "mixer.dt_bias" => dt,
                "mixer.conv1d.weight" => Init::Uniform(1.0 / (hy.conv_kernel as f64).sqrt()),
                "mixer.conv1d.bias" => Init::Zeros,
                _ => Init::Normal,
            };
            out.push((format!("backbone.layers.{i}.{name}"), shape, init));
        }
    }
    out.push(("backbone.norm_f.weight".to_string(), vec![d], Init::Ones));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d], Init::Normal));
    }
    out
}

/// The config's `initializer_range` (transformers' default 0.02 when absent).
pub fn initializer_range(cfg: &Config) -> f64 {
    cfg.raw.get("initializer_range").and_then(Value::as_f64).unwrap_or(0.02)
}

/// A model with fresh random weights; the same `(cfg, seed)` always gives the same weights.
/// Parameters are drawn in `parameter_shapes` order from one ChaCha8 stream.
pub fn random_model(cfg: &Config, seed: u64) -> Result<Model> {
    let std = initializer_range(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    for (name, shape, init) in parameter_shapes(cfg) {
        let n: usize = shape.iter().product();
        let values = match init {
            Init::Normal => normal_samples(&mut rng, n, std),
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
            Init::ALogRange => (1..=n).map(|a| (a as f32).ln()).collect(),
            Init::DtBias { min, max, floor } => (0..n)
                .map(|_| {
                    let dt = (rng.gen::<f64>() * (max.ln() - min.ln()) + min.ln()).exp().max(floor);
                    (dt + (-(-dt).exp_m1()).ln()) as f32 // softplus⁻¹(dt) = dt + log(1 − e^−dt)
                })
                .collect(),
            Init::Uniform(bound) => (0..n).map(|_| ((rng.gen::<f64>() * 2.0 - 1.0) * bound) as f32).collect(),
        };
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Model::from_tensors(cfg.clone(), tensors, "random init")
}

/// `n` samples of Normal(0, std) by the Box–Muller transform (rand 0.8 has no normal
/// distribution without another crate).
fn normal_samples(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln stays finite
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_samples_have_the_asked_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = normal_samples(&mut rng, 200_001, 0.5);
        assert_eq!(x.len(), 200_001);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.005, "std {}", var.sqrt());
    }

    #[test]
    fn shapes_count_every_parameter() {
        for arch in [Arch::Llama, Arch::Qwen3] {
            for tie in [true, false] {
                let shape = SmallShape { tie_embeddings: tie, ..SmallShape::default() };
                let cfg = Config::from_json(small_config_json(arch, 1000, &shape, Some(0)).unwrap()).unwrap();
                let total: usize = parameter_shapes(&cfg).iter().map(|(_, s, _)| s.iter().product::<usize>()).sum();
                assert_eq!(total, cfg.num_params(), "{arch:?} tied={tie}");
            }
        }
    }

    #[test]
    fn bad_head_counts_are_refused_with_the_flag_names() {
        let shape = SmallShape { heads: 3, ..SmallShape::default() };
        let err = small_config_json(Arch::Llama, 100, &shape, None).unwrap_err().to_string();
        assert!(err.contains("--heads 3"), "{err}");
        let shape = SmallShape { kv_heads: 3, ..SmallShape::default() };
        let err = small_config_json(Arch::Llama, 100, &shape, None).unwrap_err().to_string();
        assert!(err.contains("--kv-heads 3"), "{err}");
    }
}
