//! Training loop pieces: optimizer, EMA teacher, LR schedule.

pub mod ema;
pub mod optim;
pub mod schedule;
