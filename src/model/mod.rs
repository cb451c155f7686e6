//! The causal LM: config, weights in and out, the differentiable forward and the KV-cache decode.

pub mod config;
pub mod gguf;

pub use config::{Arch, Config};
