//! The causal LM: config, weights in and out, the differentiable forward and the KV-cache decode.

pub mod config;
pub mod decode;
pub mod fused;
pub mod gguf;
pub mod grad_store;
pub mod gguf_write;
pub mod init;
pub mod kv_cache;
pub mod layers;
pub mod layout;
pub mod nemotron_h;
pub mod rope;
pub mod ssd;
pub mod ssd_fused;
pub mod transformer;
pub mod weights;

pub use config::{Arch, BlockKind, Config, Hybrid};
pub use kv_cache::KvCache;
pub use layout::AttnLayout;
pub use transformer::{target_logprobs, Model};
