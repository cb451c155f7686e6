//! Corpus readers and position samplers.

pub mod corpus;
pub mod packer;
pub mod sampler;
pub mod sft;
