//! Model core beyond the golden fixtures: save/reload, finite differences, KV-cache consistency,
//! vocabulary growth and bad input.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture_model, max_abs_diff, mean_next_token_nll, test_data};
use rlp::model::{self, Config, Model};
use std::path::Path;

fn copy_fixture(name: &str, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(test_data(name).join(f), dst.join(f)).unwrap();
    }
}

#[test]
fn save_then_reload_gives_identical_logits() {
    for name in ["tiny-qwen3", "tiny-llama", "tiny-qwen2"] {
        let m = fixture_model(name);
        let dir = tempfile::tempdir().unwrap();
        model::weights::save_dir(&m, None, dir.path(), DType::F32).unwrap();
        for f in ["config.json", "model.safetensors", "generation_config.json"] {
            assert!(dir.path().join(f).exists(), "{name}: {f} not written");
        }
        let back = model::weights::load(dir.path()).unwrap().model;
        let ids = vec![vec![3u32, 17, 99, 4, 250, 7]];
        let a = m.forward_logits(&ids).unwrap();
        let b = back.forward_logits(&ids).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}: reload changed the logits");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], m.cfg.arch.hf_class());
        assert_eq!(cfg["tie_word_embeddings"], m.cfg.tie_word_embeddings);
    }
}

#[test]
fn bf16_save_reloads_close() {
    let m = fixture_model("tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    model::weights::save_dir(&m, None, dir.path(), DType::BF16).unwrap();
    let back = model::weights::load(dir.path()).unwrap().model;
    let (a, b) = (m.forward_logits(&[vec![1, 2, 3]]).unwrap(), back.forward_logits(&[vec![1, 2, 3]]).unwrap());
    let d = max_abs_diff(&a, &b);
    assert!(d > 0.0 && d < 0.05, "bf16 round trip differs by {d}");
}

/// d loss / d w by central differences for a few weights of each kind, against backprop.
#[test]
fn gradient_matches_finite_differences() {
    let m = fixture_model("tiny-qwen3");
    let (m, vars) = m.into_vars().unwrap();
    let ids = vec![5u32, 77, 300, 12, 9, 500, 41];
    let loss_of = |m: &Model| -> Tensor {
        let logits = m.forward_logits(&[ids.clone()]).unwrap().squeeze(0).unwrap(); // [T, V]
        mean_next_token_nll(&logits, &ids)
    };
    let grads = loss_of(&m).backward().unwrap();
    let picks = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_norm.weight", "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight", "model.norm.weight"];
    let h = 1e-2f32;
    for name in picks {
        let var = &vars.iter().find(|(n, _)| n == name).unwrap().1;
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // the largest-gradient coordinate gives a well-conditioned check
        let i = (0..g.len()).max_by(|&a, &b| g[a].abs().partial_cmp(&g[b].abs()).unwrap()).unwrap();
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eval = |delta: f32| -> f64 {
            let mut w = orig.clone();
            w[i] += delta;
            var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap()).unwrap();
            loss_of(&m).to_scalar::<f32>().unwrap() as f64
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
        var.set(&Tensor::from_vec(orig, var.shape(), &Device::Cpu).unwrap()).unwrap();
        let rel = (fd - g[i] as f64).abs() / (g[i].abs() as f64);
        assert!(rel < 2e-2, "{name}[{i}]: backprop {} vs finite difference {fd} (rel {rel})", g[i]);
    }
}

#[test]
fn decode_steps_match_the_full_forward() {
    let m = fixture_model("tiny-llama").detached().unwrap();
    let seq = vec![10u32, 20, 30, 40, 50, 60, 70, 80];
    let full = m.forward_logits(&[seq.clone()]).unwrap().squeeze(0).unwrap();
    let (mut logits, mut cache) = m.prefill(&[seq[..3].to_vec()], 16).unwrap();
    for t in 3..seq.len() {
        let want = full.get(t - 1).unwrap();
        assert!(max_abs_diff(&logits.squeeze(0).unwrap(), &want) < 1e-4, "position {t}");
        logits = m.decode_step(&[seq[t]], &mut cache).unwrap();
    }
}

#[test]
fn duplicated_cache_rows_decode_like_the_original() {
    let m = fixture_model("tiny-qwen2").detached().unwrap();
    let (logits, cache) = m.prefill(&[vec![1, 2, 3], vec![9, 8, 7, 6, 5]], 16).unwrap();
    // row 1 copied three times, row 0 dropped
    let mut dup = cache.select_rows(&[1, 1, 1]).unwrap();
    let next = m.decode_step(&[4, 4, 4], &mut dup).unwrap();
    let alone = m.forward_logits(&[vec![9, 8, 7, 6, 5, 4]]).unwrap().squeeze(0).unwrap().get(5).unwrap();
    for r in 0..3 {
        assert!(max_abs_diff(&next.get(r).unwrap(), &alone) < 1e-4, "row {r}");
    }
    assert_eq!(logits.dims(), &[2, m.cfg.vocab_size]);
}

#[test]
fn grown_vocab_rows_are_the_mean_embedding() {
    for name in ["tiny-qwen3", "tiny-llama"] {
        let mut m = fixture_model(name);
        let mean = m.embed.mean(0).unwrap();
        let before = m.forward_logits(&[vec![1, 2, 3]]).unwrap();
        m.grow_vocab(514).unwrap();
        assert_eq!(m.cfg.vocab_size, 514);
        assert_eq!(m.embed.dims(), &[514, 64]);
        assert!(max_abs_diff(&m.embed.get(513).unwrap(), &mean) < 1e-7);
        if let Some(h) = &m.lm_head {
            assert_eq!(h.dims(), &[514, 64]);
        }
        let after = m.forward_logits(&[vec![1, 2, 3, 513]]).unwrap();
        // old tokens' logits over the old vocabulary are unchanged
        let old = after.narrow(1, 0, 3).unwrap().narrow(2, 0, 512).unwrap();
        assert!(max_abs_diff(&old, &before) < 1e-5, "{name}");
    }
}

fn err_of(dir: &Path) -> String {
    match model::weights::load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_and_truncated_safetensors_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    copy_fixture("tiny-llama", &d);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert!(err_of(&d).contains("neither model.safetensors nor model.safetensors.index.json"));
    let bytes = std::fs::read(test_data("tiny-llama").join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&d);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
    assert!(err_of(&tmp.path().join("nope")).contains("does not exist"));
}

#[test]
fn config_disagreeing_with_tensors_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture("tiny-llama", tmp.path());
    let p = tmp.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["intermediate_size"] = 128.into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = err_of(tmp.path());
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[160, 64]"), "{e}");
}

#[test]
fn unknown_architecture_and_rope_type_are_rejected() {
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(test_data("tiny-llama").join("config.json")).unwrap()).unwrap();
    let mut c = base.clone();
    c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    let e = format!("{:#}", Config::from_json(c).unwrap_err());
    assert!(e.contains("GPTNeoXForCausalLM") && e.contains("LlamaForCausalLM"), "{e}");
    let mut c = base.clone();
    c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0});
    let e = format!("{:#}", Config::from_json(c).unwrap_err());
    assert!(e.contains("yarn"), "{e}");
    let mut c = base;
    c["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let cfg = Config::from_json(c).unwrap();
    assert!(cfg.rope_scaling.is_some());
}

/// A key of the wrong type is named in the error with the type it should have; a missing
/// required key is named.
#[test]
fn config_keys_of_the_wrong_type_or_missing_are_named() {
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(test_data("tiny-llama").join("config.json")).unwrap()).unwrap();
    for (key, bad, want) in [
        ("hidden_size", serde_json::json!("64"), "expected a non-negative integer"),
        ("rms_norm_eps", serde_json::json!("small"), "expected a number"),
        ("tie_word_embeddings", serde_json::json!(1), "expected a boolean"),
        ("eos_token_id", serde_json::json!("</s>"), "token id"),
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": "eight"}), "expected a number"),
    ] {
        let mut c = base.clone();
        c[key] = bad;
        let e = format!("{:#}", Config::from_json(c).unwrap_err());
        assert!(e.contains(&format!("key `{key}`")) && e.contains(want), "{key}: {e}");
    }
    let mut c = base;
    c.as_object_mut().unwrap().remove("intermediate_size");
    let e = format!("{:#}", Config::from_json(c).unwrap_err());
    assert!(e.contains("missing key `intermediate_size`"), "{e}");
}

#[test]
fn token_ids_outside_the_vocabulary_are_an_error() {
    let m = fixture_model("tiny-llama");
    let e = format!("{:#}", m.forward_logits(&[vec![1, 512]]).unwrap_err());
    assert!(e.contains("512") && e.contains("vocabulary"), "{e}");
}

#[test]
fn sharded_safetensors_load_like_a_single_file() {
    let m = fixture_model("tiny-qwen2");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(test_data("tiny-qwen2").join("config.json"), tmp.path().join("config.json")).unwrap();
    // two shards and the index transformers writes
    let tensors = m.named_tensors();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (name, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        safetensors::serialize_to_file(part.iter().map(|(n, t)| (n.as_str(), t)), None, &tmp.path().join(name)).unwrap();
        for (n, _) in part {
            weight_map.insert(n.clone(), name.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let back = model::weights::load(tmp.path()).unwrap().model;
    let ids = vec![vec![4u32, 8, 15, 16, 23, 42]];
    assert_eq!(max_abs_diff(&m.forward_logits(&ids).unwrap(), &back.forward_logits(&ids).unwrap()), 0.0);
    // a shard named in the index but missing is an error naming it
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = err_of(tmp.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}
