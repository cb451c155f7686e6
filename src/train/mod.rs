//! Training loop pieces: optimizer, EMA teacher, LR schedule, checkpoints, the loop itself.

pub mod checkpoint;
pub mod faults;
pub mod data_parallel;
pub mod ema;
pub mod optim;
pub mod policy;
pub mod progress;
pub mod ntp;
pub mod schedule;
pub mod signals;
#[cfg(feature = "tensorboard")]
pub mod tensorboard;
pub mod trainer;
