//! Weights in and out: Hugging Face directories (single or sharded safetensors) and GGUF files;
//! saving as a Hugging Face directory that `transformers` loads with no converter.

use super::config::Config;
use super::transformer::Model;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// A model and, when the checkpoint carries one, its tokenizer.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<tokenizers::Tokenizer>,
}

/// Load a model and its tokenizer for thinking: `<think>`/`</think>` added to the tokenizer
/// when it lacks them and `add_think_tokens` is set, and the embedding (and an untied head)
/// grown to cover them. The one loader of `rlp train`, `eval`, `bench` and `demo`; `purpose`
/// names the command in errors. The model keeps its gradient tracking state as loaded.
pub fn load_for_thinking(path: &Path, add_think_tokens: bool, purpose: &str) -> Result<(Model, crate::tokenizer::Tok)> {
    let loaded = load(path)?;
    let src = path.display().to_string();
    let raw = loaded.tokenizer.with_context(|| format!("{src} has no tokenizer.json; {purpose} needs the model's tokenizer next to its weights"))?;
    let tok = crate::tokenizer::Tok::from_tokenizer(raw, add_think_tokens, &src)?;
    let mut model = loaded.model;
    // only think tokens added here may lie past the model's embedding
    let rows = tok.rows_for_model(model.cfg.vocab_size, &src)?;
    model.grow_vocab(rows)?;
    Ok((model, tok))
}

/// Load an HF model directory or a `.gguf` file.
pub fn load(path: &Path) -> Result<Loaded> {
    if path.is_dir() {
        let cfg = Config::from_file(&path.join("config.json"))?;
        let tensors = load_safetensors_dir(path)?;
        let model = Model::from_tensors(cfg, tensors, &path.display().to_string())?;
        let tok_path = path.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            Some(crate::tokenizer::read_tokenizer_json(&tok_path)?)
        } else {
            None
        };
        Ok(Loaded { model, tokenizer })
    } else if path.extension().is_some_and(|e| e == "gguf") {
        let g = super::gguf::load_gguf(path)?;
        let model = Model::from_tensors(g.config, g.tensors, &path.display().to_string())?;
        Ok(Loaded { model, tokenizer: Some(g.tokenizer) })
    } else if !path.exists() {
        bail!("model path {} does not exist; give a Hugging Face model directory or a .gguf file", path.display())
    } else {
        bail!("{} is neither a model directory nor a .gguf file", path.display())
    }
}

/// Every tensor of `model.safetensors`, or of the shards listed in `model.safetensors.index.json`.
pub fn load_safetensors_dir(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{} has no `weight_map` object", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        bail!("{} holds neither model.safetensors nor model.safetensors.index.json", dir.display())
    };
    let mut out = HashMap::new();
    for f in files {
        let part = candle_core::safetensors::load(&f, &Device::Cpu).with_context(|| format!("cannot read safetensors file {} (missing, truncated or corrupt?)", f.display()))?;
        for (name, t) in part {
            let t = match t.dtype() {
                DType::F32 => t,
                DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                other => bail!("{}: tensor `{name}` has dtype {other:?}; rlp loads f32, f16, bf16 and f64 weights", f.display()),
            };
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// Write `config.json`, `model.safetensors` (f32 or bf16), `generation_config.json` and, when
/// given, `tokenizer.json` into `dir` (created if missing).
pub fn save_dir(model: &Model, tokenizer: Option<&tokenizers::Tokenizer>, dir: &Path, dtype: DType) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cfg = model.cfg.to_json();
    if dtype == DType::BF16 {
        cfg["torch_dtype"] = "bfloat16".into();
    }
    write_json(&dir.join("config.json"), &cfg)?;
    let mut gen = serde_json::json!({ "_from_model_config": true });
    if let Some(b) = model.cfg.bos_token_id {
        gen["bos_token_id"] = b.into();
    }
    match model.cfg.eos_token_ids.as_slice() {
        [] => {}
        [e] => gen["eos_token_id"] = (*e).into(),
        es => gen["eos_token_id"] = es.to_vec().into(),
    }
    write_json(&dir.join("generation_config.json"), &gen)?;
    let tensors: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.detach().to_device(&Device::Cpu)?.to_dtype(dtype)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(tok) = tokenizer {
        let p = dir.join("tokenizer.json");
        tok.save(&p, false).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
