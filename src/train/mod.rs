//! Training: the loop (`trainer.rs`, read it first) and its steps, one file each.
//!
//! `contexts` draws contexts, `rollouts` samples and scores them, `grads` turns a batch into
//! the policy gradient, `data_parallel` sums it over ranks, `optim` / `ema` / `schedule` update,
//! `accounting` counts tokens and FLOPs, `log` writes metrics and samples, `checkpoint` saves
//! and restores; `post_data` holds what the post-training objectives (sft, rlvr) load, `post`
//! the pieces of an RLVR batch. The objectives' rewards and losses live in `crate::objective`;
//! the checkpoints a run directory holds are listed by `crate::run_dir`.

pub mod accounting;
pub mod checkpoint;
pub mod contexts;
pub mod data_parallel;
pub mod ema;
pub mod faults;
pub mod grads;
pub mod log;
pub mod optim;
pub mod policy;
pub mod post;
pub mod post_data;
pub mod progress;
pub mod rollouts;
pub mod schedule;
pub mod signals;
#[cfg(feature = "tensorboard")]
pub mod tensorboard;
pub mod trainer;
