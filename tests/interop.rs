//! What rlp hands to other tools: `samples.jsonl` rows that replay with `rlp score --ids`.

mod common;

use common::{max_abs_diff_slices, test_data, tiny_config};
use rlp::train::trainer::Trainer;
use serde_json::Value;
use std::path::Path;

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_u64().unwrap()).collect()
}

/// `rlp score --model M --ids …` as the CLI prints it.
fn score_cli(model: &Path, seq: &[u64]) -> Value {
    let list: Vec<String> = seq.iter().map(|i| i.to_string()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rlp"))
        .args(["score", "--model", model.to_str().unwrap(), "--ids", &list.join(","), "--top-k", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "rlp score failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A logged thought, fed to `rlp score --ids` on the checkpoint of the step that sampled it
/// (`model_step`), gives the logged S_pred: log p(x_t | prefix, <think>, thought, </think>).
/// Three steps at lr 1e-3 with a checkpoint after each: the rows of step 3 were sampled by the
/// weights of step 2, which differ from the start, so a wrong `model_step` shows.
#[test]
fn a_logged_sample_replays_with_rlp_score_to_the_same_s_pred() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(&["train.steps=3", "checkpoint.every=1", "checkpoint.keep_last=5", "logging.samples_every=2"]);
    let (budget, base) = (cfg.rollout.thought_budget, cfg.model.path.clone());
    Trainer::new(cfg, dir.path(), false).unwrap().run().unwrap();
    let rows = jsonl(&dir.path().join("samples.jsonl"));
    let steps: Vec<u64> = rows.iter().map(|r| r["model_step"].as_u64().unwrap()).collect();
    assert!(steps.contains(&0) && steps.contains(&2), "model steps logged: {steps:?}");
    for row in &rows {
        let (thought, lps) = (ids(&row["thought_ids"]), row["thought_logprobs"].as_array().unwrap());
        assert_eq!(thought.len(), lps.len(), "one behaviour log-prob per thought token: {row}");
        assert!(lps.iter().all(|x| x.as_f64().unwrap() <= 0.0), "{row}");
        let closed = row["closed"].as_bool().unwrap();
        assert_eq!(row["end_think_logprob"].is_number(), closed, "{row}");
        assert_eq!(closed, thought.len() < budget, "{row}");
        assert!(ids(&row["prefix_ids"]).len() >= 4, "{row}");
    }
    let (sampled_late, sampled_early): (Vec<&Value>, Vec<&Value>) = rows.iter().partition(|r| r["model_step"] == 2);
    for row in [sampled_late[0], sampled_late[sampled_late.len() - 1], sampled_early[0]] {
        let mut seq = ids(&row["prefix_ids"]);
        seq.push(row["think_id"].as_u64().unwrap());
        seq.extend(ids(&row["thought_ids"]));
        seq.push(row["end_think_id"].as_u64().unwrap());
        seq.extend(ids(&row["separator_ids"]));
        seq.push(row["x_t_id"].as_u64().unwrap());
        let ckpt = match row["model_step"].as_u64().unwrap() {
            0 => base.clone(), // the starting weights
            n => dir.path().join(format!("checkpoints/step-{n:06}")),
        };
        let scored = score_cli(&ckpt, &seq);
        let s_pred = scored["logprobs_next"].as_array().unwrap().last().unwrap().as_f64().unwrap();
        let logged = row["s_pred"].as_f64().unwrap();
        assert!((s_pred - logged).abs() < 1e-4, "replayed S_pred {s_pred} vs logged {logged} ({row})");
        if row["model_step"] == 2 {
            // the starting weights give another score: the step the row names matters
            let other = score_cli(&base, &seq)["logprobs_next"].as_array().unwrap().last().unwrap().as_f64().unwrap();
            assert!((other - logged).abs() > 1e-3, "the starting weights score {other}, the same as the logged {logged}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rlp export --gguf

use candle_core::quantized::gguf_file::{self, Value as G};
use candle_core::quantized::{GgmlDType, QTensor};
use rlp::model::gguf_write::{stored_type, write_gguf, ExportType};
use rlp::model::Model;
use std::collections::HashMap;

const TYPES: [ExportType; 3] = [ExportType::F32, ExportType::F16, ExportType::Q8_0];

/// A checkpoint directory of a tiny fixture with tiny-rlp's 400-token vocabulary (think tokens
/// included) as its tokenizer.json.
fn fixture_with_tokenizer(fixture: &str, dir: &Path) -> std::path::PathBuf {
    let out = dir.join(fixture);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(test_data(fixture).join(f), out.join(f)).unwrap();
    }
    std::fs::copy(test_data("tiny-rlp/tokenizer.json"), out.join("tokenizer.json")).unwrap();
    out
}

/// `model` with every tensor rounded through the type it is exported in.
fn rounded(model: &Model, ty: ExportType) -> Model {
    let map: HashMap<String, candle_core::Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let q = QTensor::quantize(&t, stored_type(t.dims(), ty)).unwrap();
            (n, q.dequantize(&candle_core::Device::Cpu).unwrap())
        })
        .collect();
    Model::from_tensors(model.cfg.clone(), map, "rounded").unwrap()
}

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    m.forward_logits(&[ids.to_vec()]).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Each architecture in each type: rlp reads its own export back to the logits of the model
/// whose weights went through the same rounding (exactly the original's for f32), the rounding
/// itself stays small, and the metadata is what llama.cpp reads.
#[test]
fn export_reads_back_with_the_same_logits_for_llama_qwen2_qwen3() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = vec![5, 17, 300, 42, 1, 99, 250, 7, 2, 64];
    for (fixture, arch, tied) in [("tiny-llama", "llama", false), ("tiny-qwen2", "qwen2", false), ("tiny-qwen3", "qwen3", true)] {
        let ckpt = fixture_with_tokenizer(fixture, dir.path());
        let loaded = rlp::model::weights::load(&ckpt).unwrap();
        let tok = loaded.tokenizer.unwrap();
        let want_exact = logits(&loaded.model, &ids);
        for ty in TYPES {
            let out = dir.path().join(format!("{fixture}-{ty:?}.gguf"));
            write_gguf(&loaded.model, &tok, &out, ty).unwrap();
            let back = rlp::model::weights::load(&out).unwrap();
            assert_eq!(back.model.cfg.arch.model_type(), arch);
            let got = logits(&back.model, &ids);
            let want = logits(&rounded(&loaded.model, ty), &ids);
            let d = max_abs_diff_slices(&got, &want);
            assert!(d < 1e-4, "{fixture} {ty:?}: read-back logits differ from the rounded model's by {d}");
            let q = max_abs_diff_slices(&got, &want_exact);
            match ty {
                ExportType::F32 => assert!(q < 1e-5, "{fixture} f32: {q}"),
                _ => assert!(q > 0.0 && q < 0.05, "{fixture} {ty:?}: quantization error {q}"),
            }
            // the vocabulary comes back with the think tokens, encoding text the same way
            let text = "The cat <think>sat</think> on 12 mats.";
            assert_eq!(back.tokenizer.as_ref().unwrap().encode(text, false).unwrap().get_ids(), tok.encode(text, false).unwrap().get_ids());
            let content = gguf_file::Content::read(&mut std::fs::File::open(&out).unwrap()).unwrap();
            let md = &content.metadata;
            let s = |k: &str| md[k].to_string().unwrap().clone();
            assert_eq!(s("general.architecture"), arch);
            assert_eq!(s("tokenizer.ggml.model"), "gpt2");
            assert_eq!(s("tokenizer.ggml.pre"), "gpt-2");
            let tokens = md["tokenizer.ggml.tokens"].to_vec().unwrap();
            let types = md["tokenizer.ggml.token_type"].to_vec().unwrap();
            assert_eq!((tokens.len(), types.len()), (512, 512), "padded to the embedding rows");
            let think = tok.token_to_id("<think>").unwrap() as usize;
            assert_eq!(tokens[think].to_string().unwrap(), "<think>");
            assert!(matches!(types[think], G::I32(4)), "think is USER_DEFINED: {:?}", types[think]);
            assert!(matches!(types[511], G::I32(5)), "padding is UNUSED");
            assert_eq!(md["tokenizer.ggml.eos_token_id"].to_u32().unwrap(), tok.token_to_id("<|endoftext|>").unwrap());
            let tj: Value = serde_json::to_value(&tok).unwrap();
            assert_eq!(md["tokenizer.ggml.merges"].to_vec().unwrap().len(), tj["model"]["merges"].as_array().unwrap().len());
            assert_eq!(content.tensor_infos.contains_key("output.weight"), !tied);
            let q_type = content.tensor_infos["blk.0.attn_q.weight"].ggml_dtype;
            let want_type = match ty {
                ExportType::F32 => GgmlDType::F32,
                ExportType::F16 => GgmlDType::F16,
                ExportType::Q8_0 => GgmlDType::Q8_0,
            };
            assert_eq!(q_type, want_type);
            assert_eq!(content.tensor_infos["blk.0.attn_norm.weight"].ggml_dtype, GgmlDType::F32);
        }
    }
}

/// Without the Q/K permutation a llama export would read back wrong: the reader un-permutes,
/// so the file must hold llama.cpp's order. Checked on the stored rows themselves.
#[test]
fn llama_export_stores_q_and_k_in_llama_cpp_row_order() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = fixture_with_tokenizer("tiny-llama", dir.path());
    let loaded = rlp::model::weights::load(&ckpt).unwrap();
    let out = dir.path().join("l.gguf");
    write_gguf(&loaded.model, loaded.tokenizer.as_ref().unwrap(), &out, ExportType::F32).unwrap();
    let mut f = std::fs::File::open(&out).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let stored = content.tensor(&mut f, "blk.0.attn_k.weight", &candle_core::Device::Cpu).unwrap().dequantize(&candle_core::Device::Cpu).unwrap();
    let hf = loaded.model.named_tensors().into_iter().find(|(n, _)| n == "model.layers.0.self_attn.k_proj.weight").unwrap().1;
    let (stored, hf) = (stored.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    let hd = loaded.model.cfg.head_dim;
    for h in 0..loaded.model.cfg.num_key_value_heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                assert_eq!(stored[h * hd + 2 * i + j], hf[h * hd + j * hd / 2 + i], "head {h} row {i},{j}");
            }
        }
    }
}

/// The CLI on tiny-think (rlp's own pretrained model, think tokens in its vocabulary).
#[test]
fn rlp_export_cli_writes_a_gguf_that_rlp_scores_like_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-think.gguf");
    let model = test_data("tiny-think");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_rlp"))
        .args(["export", "--model", model.to_str().unwrap(), "--gguf", out.to_str().unwrap(), "--type", "f32"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("llama"), "{}", String::from_utf8_lossy(&run.stdout));
    // tiny-think has no BPE merges: the empty list must still be typed as strings for llama.cpp
    // (GGUF: after the 24-byte header, the first key `tokenizer.ggml.merges`, then ARRAY = 9 and
    // its element type STRING = 8)
    let bytes = std::fs::read(&out).unwrap();
    let key = b"tokenizer.ggml.merges";
    assert_eq!(&bytes[32..32 + key.len()], key);
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((word(32 + key.len()), word(36 + key.len())), (9, 8));
    let seq = [3u64, 10, 1, 20, 30, 2, 12];
    let a = score_cli(&model, &seq)["logprobs_next"].clone();
    let b = score_cli(&out, &seq)["logprobs_next"].clone();
    let (a, b): (Vec<f32>, Vec<f32>) = (serde_json::from_value(a).unwrap(), serde_json::from_value(b).unwrap());
    assert!(max_abs_diff_slices(&a, &b) < 1e-5, "{a:?} vs {b:?}");
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_rlp"))
        .args(["export", "--model", test_data("tiny-llama").to_str().unwrap(), "--gguf", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("tokenizer.json"), "{}", String::from_utf8_lossy(&missing.stderr));
}

// ---------------------------------------------------------------------------------------------
// rlp eval --run / --config

use rlp::eval::cli::{run_eval, EvalArgs};

/// `rlp eval --run RUN` takes the held-out split, rollout settings and seed from the run's
/// config and the newest checkpoint as the model: its nll is the run's own periodic `eval_nll`
/// of the last step, its think settings are the run's, and flags still override.
#[test]
fn eval_from_a_run_uses_the_runs_data_split_and_rollout_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let overrides = ["train.steps=2", "logging.eval_every=2", "rollout.g=3", "rollout.temperature=0.9", "rollout.thought_budget=5", "train.seed=5", "data.heldout_docs=2"];
    let cfg = tiny_config(&overrides);
    let corpus = cfg.data.path.clone();
    Trainer::new(cfg, &run, false).unwrap().run().unwrap();
    let last = common::metrics(&run).pop().unwrap();
    let periodic_nll = last["eval_nll"].as_f64().unwrap();

    let out = |name: &str| Some(dir.path().join(name));
    let nll = run_eval(&EvalArgs { task: "nll".into(), run: Some(run.clone()), out: out("nll.json"), batch: 16, answer_tokens: 32, device: "cpu".into(), ..Default::default() }).unwrap();
    assert!((nll.metrics["nll"] - periodic_nll).abs() < 1e-6, "eval --run nll {} vs the run's eval_nll {periodic_nll}", nll.metrics["nll"]);
    assert!(nll.model.ends_with("checkpoints/step-000002"), "{}", nll.model);

    let think_args = EvalArgs { task: "think".into(), run: Some(run.clone()), limit: Some(4), out: out("think.json"), batch: 16, answer_tokens: 32, device: "cpu".into(), ..Default::default() };
    let from_run = run_eval(&think_args).unwrap();
    let s = &from_run.settings;
    assert_eq!((s["samples"].as_u64(), s["think_budget"].as_u64(), s["seed"].as_u64()), (Some(3), Some(5), Some(5)), "{s}");
    assert_eq!((s["temperature"].as_f64(), s["heldout_docs"].as_u64(), s["min_prefix"].as_u64(), s["max_context"].as_u64()), (Some(0.9), Some(2), Some(4), Some(64)), "{s}");
    assert_eq!(s["data"].as_str().map(std::path::PathBuf::from), Some(corpus.clone()));
    // the same evaluation spelled out in flags gives the same numbers
    let spelled = EvalArgs {
        model: Some(run.join("checkpoints/step-000002")),
        run: None,
        samples: Some(3),
        think_budget: Some(5),
        temperature: Some(0.9),
        top_p: Some(1.0),
        seed: Some(5),
        data: Some(corpus),
        heldout_docs: Some(2),
        min_prefix: Some(4),
        max_context: Some(64),
        out: out("spelled.json"),
        ..think_args.clone()
    };
    assert_eq!(run_eval(&spelled).unwrap().metrics, from_run.metrics);
    // a flag still overrides the run
    let overridden = run_eval(&EvalArgs { think_budget: Some(2), out: out("t2.json"), ..think_args.clone() }).unwrap();
    assert_eq!(overridden.settings["think_budget"].as_u64(), Some(2));

    // the CLI: --run, and --config with an explicit model
    let cli = |extra: &[&str]| {
        let mut a = vec!["eval", "--task", "nll"];
        a.extend(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_rlp")).args(&a).output().unwrap()
    };
    let o = dir.path().join("cli.json");
    let r = cli(&["--run", run.to_str().unwrap(), "--out", o.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&o).unwrap()).unwrap();
    assert!((written["metrics"]["nll"].as_f64().unwrap() - periodic_nll).abs() < 1e-6);
    let ckpt = run.join("checkpoints/step-000002");
    let r = cli(&["--config", run.join("config.toml").to_str().unwrap(), "--model", ckpt.to_str().unwrap(), "--out", o.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = cli(&["--run", dir.path().join("no-such-run").to_str().unwrap()]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("config.toml"), "{}", String::from_utf8_lossy(&r.stderr));
}

// ---------------------------------------------------------------------------------------------
// logging.tensorboard

#[cfg(feature = "tensorboard")]
use std::collections::BTreeMap;
#[cfg(feature = "tensorboard")]
use tboard::tensorboard::{event::What, summary::value::Value as TbValue};

#[cfg(feature = "tensorboard")]
/// Every scalar and text summary in `RUN/tb/`, read with tboard's reader: (tag, step) → values.
fn tensorboard_events(run: &Path) -> (BTreeMap<(String, i64), Vec<f32>>, BTreeMap<i64, Vec<String>>, usize) {
    let mut files: Vec<_> = std::fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (mut scalars, mut texts) = (BTreeMap::<(String, i64), Vec<f32>>::new(), BTreeMap::<i64, Vec<String>>::new());
    for f in &files {
        assert!(f.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."), "{}", f.display());
        for e in tboard::SummaryReader::new(std::fs::File::open(f).unwrap()) {
            let e = e.unwrap();
            let Some(What::Summary(s)) = e.what else { continue };
            for v in s.value {
                match v.value {
                    Some(TbValue::SimpleValue(x)) => scalars.entry((v.tag, e.step)).or_default().push(x),
                    Some(TbValue::Tensor(t)) => {
                        assert_eq!(v.metadata.unwrap().plugin_data.unwrap().plugin_name, "text");
                        texts.entry(e.step).or_default().push(String::from_utf8(t.string_val[0].clone()).unwrap());
                    }
                    other => panic!("unexpected summary {other:?}"),
                }
            }
        }
    }
    (scalars, texts, files.len())
}

/// A run stopped after step 3 whose last checkpoint is step 2, resumed to step 4: RUN/tb/ holds
/// every metrics.jsonl scalar (eval ones included) and the sampled thoughts once per step, with
/// the values of metrics.jsonl, and no step twice.
#[cfg(feature = "tensorboard")]
#[test]
fn tensorboard_logs_every_metric_once_across_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let knobs = ["checkpoint.every=2", "logging.eval_every=2", "logging.samples_every=1"];
    let with = |steps: &str| tiny_config(&[knobs.as_slice(), &[steps]].concat());
    Trainer::new(with("train.steps=3"), run, false).unwrap().run().unwrap();
    let (before, _, _) = tensorboard_events(run);
    assert!(before.contains_key(&("loss".to_string(), 3)));
    // the run "died" after logging step 3 and before its checkpoint
    std::fs::remove_dir_all(run.join("checkpoints/step-000003")).unwrap();
    Trainer::new(with("train.steps=4"), run, true).unwrap().run().unwrap();

    let (scalars, texts, files) = tensorboard_events(run);
    assert_eq!(files, 2, "one event file per session");
    let lines = common::metrics(run);
    assert_eq!(lines.iter().map(|m| m["step"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let mut expected = 0;
    for m in &lines {
        let step = m["step"].as_i64().unwrap();
        for (k, v) in m.as_object().unwrap() {
            let Some(x) = v.as_f64().or_else(|| v.as_bool().map(|b| b as u8 as f64)) else { continue };
            if k == "step" {
                continue;
            }
            expected += 1;
            let got = scalars.get(&(k.clone(), step)).unwrap_or_else(|| panic!("{k} at step {step} missing"));
            assert_eq!(got, &vec![x as f32], "{k} at step {step}");
        }
    }
    assert_eq!(scalars.len(), expected, "scalars that are not in metrics.jsonl");
    for step in [2, 4] {
        assert!(scalars.contains_key(&("eval_nll".to_string(), step)) && scalars.contains_key(&("eval_acc_think".to_string(), step)));
    }
    assert_eq!(texts.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    for (step, t) in &texts {
        assert_eq!(t.len(), 1, "step {step}: {t:?}");
        assert!(t[0].contains("&lt;think&gt;") && t[0].contains("S_pred"), "{}", t[0]);
    }
}
