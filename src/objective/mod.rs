//! Objectives: how contexts and rollouts become rewards and a loss.

pub mod rlp;
pub mod rpt;
pub mod rlvr;
pub mod sft;
