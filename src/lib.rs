//! rlp: reinforcement learning as a pretraining objective (RLP, arXiv 2510.01265) for causal
//! language models, with the paper's baselines (continued pretraining, RPT), evaluation and
//! Hugging Face compatible checkpoints.

pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod dist;
pub mod eval;
pub mod flops;
pub mod model;
pub mod objective;
pub mod plan;
pub mod post_train;
pub mod report;
pub mod rollout;
pub mod run_dir;
pub mod sampling;
pub mod tokenizer;
pub mod train;
