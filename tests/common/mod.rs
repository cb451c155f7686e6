//! Helpers shared by the integration test binaries (`mod common;` in each): paths, configs,
//! run outputs (metrics, checkpoint weights), tensor comparisons, next-token log-probs and the
//! `rlp` binary as a child process.

// Each test binary compiles this module whole and uses only part of it.
#![allow(dead_code)]

pub mod gguf;

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rlp::config::TrainConfig;
use rlp::model::init::{nemotron_h_config_json, random_model, SmallShape};
use rlp::model::{self, target_logprobs, Config, Model};
use serde_json::Value;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- paths and configs

/// `rel` inside the repository.
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `tests/data/{rel}` in the repository (fixtures, tokenizers, corpora).
pub fn test_data(rel: &str) -> PathBuf {
    repo("tests/data").join(rel)
}

/// Write `text` to `dir/{name}`; returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The model of the fixture directory `tests/data/{name}`.
pub fn fixture_model(name: &str) -> Model {
    model::weights::load(&test_data(name)).unwrap().model
}

/// The path of `configs/{name}` in the repository.
pub fn config_path(name: &str) -> PathBuf {
    repo("configs").join(name)
}

/// `configs/{name}` with `overrides` (`key=value`) and progress bars off.
pub fn config(name: &str, overrides: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = vec!["logging.progress=false".into()];
    o.extend(overrides.iter().map(|s| s.to_string()));
    TrainConfig::load(&config_path(name), &o).unwrap()
}

/// `configs/{name}` with `overrides`, progress bars off and one thread (`train.threads=1`).
pub fn single_thread_config(name: &str, overrides: &[&str]) -> TrainConfig {
    let mut all = vec!["train.threads=1"];
    all.extend(overrides);
    config(name, &all)
}

/// `configs/tiny.toml` with `overrides` and progress bars off.
pub fn tiny_config(overrides: &[&str]) -> TrainConfig {
    config("tiny.toml", overrides)
}

/// A fresh NemotronH (`M*-M-`, hidden 64, untied head, seed 7) written to `dir/model`, with a
/// 300-token BPE tokenizer trained on tests/data/text/sample.txt that has `<|endoftext|>` but
/// no think tokens. Returns the directory and the tokenizer's vocabulary size.
pub fn fresh_nemotron_h(dir: &Path) -> (PathBuf, usize) {
    let text = std::fs::read_to_string(test_data("text/sample.txt")).unwrap();
    let tok = rlp::tokenizer::train_byte_level_bpe(text.lines(), 300, &["<|endoftext|>"]).unwrap();
    let vocab = tok.get_vocab_size(true);
    let eos = tok.token_to_id("<|endoftext|>");
    let shape = SmallShape { hidden: 64, heads: 4, kv_heads: 2, ffn: 128, max_positions: 512, tie_embeddings: false, ..SmallShape::default() };
    let cfg = Config::from_json(nemotron_h_config_json(vocab, &shape, "M*-M-", eos).unwrap()).unwrap();
    let m = random_model(&cfg, 7).unwrap();
    let path = dir.join("model");
    model::weights::save_dir(&m, Some(&tok), &path, DType::F32).unwrap();
    (path, vocab)
}

// ---------------------------------------------------------------- run outputs

/// The rows of a finished run's `metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The rows of a running (or killed) run's `metrics.jsonl` that are complete: none if the file
/// does not exist yet, and not a last line that is still being written.
pub fn metrics_so_far(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The wall-clock fields of a `metrics.jsonl` row (`StepMetrics`): the ones that differ between
/// two runs of the same seed.
pub const TIMING_FIELDS: [&str; 7] = ["step_s", "sample_s", "score_s", "train_s", "optimizer_s", "tokens_per_s_sample", "tokens_per_s_train"];

/// Metrics rows without their wall-clock fields.
pub fn without_timings(m: &[Value]) -> Vec<Value> {
    m.iter()
        .map(|v| {
            let mut v = v.clone();
            for k in TIMING_FIELDS {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// The directory of the checkpoint of step `step` in the run directory `run`.
pub fn checkpoint_dir(run: &Path, step: u64) -> PathBuf {
    run.join(format!("checkpoints/step-{step:06}"))
}

/// Every parameter of `m` by name, flattened to f32 values (exact comparison).
pub fn named_weights(m: &Model) -> Vec<(String, Vec<f32>)> {
    m.named_tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect()
}

/// The weights of the model directory `dir`, as `named_weights`.
pub fn dir_weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    named_weights(&model::weights::load(dir).unwrap().model)
}

/// The weights of the checkpoint of step `step` in the run directory `run`.
pub fn checkpoint_weights(run: &Path, step: u64) -> Vec<(String, Vec<f32>)> {
    dir_weights(&checkpoint_dir(run, step))
}

// ---------------------------------------------------------------- comparisons

/// max |a − b| over two f32 tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// max |a − b| over two f32 slices of one length.
pub fn max_abs_diff_slices(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// max |a − b| / max |b| over two tensors of one shape, in f64.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f64> = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f64> = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let diff = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    let scale = b.iter().fold(0f64, |m, y| m.max(y.abs()));
    assert!(scale > 0.0, "reference is all zeros");
    diff / scale
}

/// An f64 tensor of `shape` with entries uniform in [lo, hi) from `rng`.
pub fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A JSON array of token ids (a golden file's `input_ids`, `greedy_ids`, …).
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

// ---------------------------------------------------------------- next-token log-probs

/// log p(ids[t + 1] | ids[..=t]) for t < T − 1, from the logits [T, V] of one row of `ids`
/// (T = ids.len()): [T − 1].
pub fn next_token_logprobs(logits: &Tensor, ids: &[u32]) -> Tensor {
    let targets = Tensor::new(&ids[1..], logits.device()).unwrap();
    target_logprobs(&logits.narrow(0, 0, ids.len() - 1).unwrap(), &targets).unwrap()
}

/// The mean next-token NLL of one row of `ids` from its logits [T, V]: a scalar, differentiable.
pub fn mean_next_token_nll(logits: &Tensor, ids: &[u32]) -> Tensor {
    next_token_logprobs(logits, ids).mean_all().unwrap().neg().unwrap()
}

// ---------------------------------------------------------------- the rlp binary

/// `$RLP_TEST_BIN`, or a private copy of this build's `rlp` taken at first use: the target
/// directory may be shared with other builds that replace `target/release/rlp` while the tests
/// run. Copies left by earlier test processes that have ended are removed.
pub fn rlp_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(b) = std::env::var("RLP_TEST_BIN") {
            return PathBuf::from(b);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-bin");
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().trim_start_matches("rlp-").to_string();
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let copy = dir.join(format!("rlp-{}", std::process::id()));
        std::fs::copy(env!("CARGO_BIN_EXE_rlp"), &copy).unwrap();
        copy
    })
}

/// Send signal `sig` (`libc::SIGINT`, …) to process `pid`.
pub fn send_signal(pid: u32, sig: i32) {
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill({pid}, {sig}) failed");
}
