//! Helpers shared by the integration test binaries (`mod common;` in each).

// Each test binary compiles this module whole and uses only part of it.
#![allow(dead_code)]

pub mod gguf;

use rlp::config::TrainConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The path of `configs/{name}` in the repository.
pub fn config_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs").join(name)
}

/// `configs/{name}` with `overrides` (`key=value`) and progress bars off.
pub fn config(name: &str, overrides: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = vec!["logging.progress=false".into()];
    o.extend(overrides.iter().map(|s| s.to_string()));
    TrainConfig::load(&config_path(name), &o).unwrap()
}

/// `configs/tiny.toml` with `overrides` and progress bars off.
pub fn tiny_config(overrides: &[&str]) -> TrainConfig {
    config("tiny.toml", overrides)
}

/// The rows of a finished run's `metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
