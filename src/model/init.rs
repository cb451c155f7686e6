//! Fresh models: a small Llama- or Qwen3-shaped `config.json`, and random weights initialised as
//! transformers initialises a new `LlamaForCausalLM` / `Qwen3ForCausalLM` (normal with std
//! `initializer_range` for every matrix and the embedding, ones for RMSNorm weights, zeros for
//! biases), drawn from a seeded ChaCha8 stream so a seed always gives the same weights.

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
        Arch::NemotronH => bail!("fresh NemotronH models come from `nemotron_h_config_json`"),
    }
    Ok(cfg)
}

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Normal(0, initializer_range): embeddings and projection matrices.
    Normal,
    /// All ones: RMSNorm weights.
    Ones,
    /// All zeros: biases.
    Zeros,
}

/// Every parameter of a model with this config: Hugging Face name, shape and initialisation, in
/// `Model::named_tensors` order.
pub fn parameter_shapes(cfg: &Config) -> Vec<(String, Vec<usize>, Init)> {
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
