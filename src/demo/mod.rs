//! The embedded demo (issue 9): a synthetic world where thinking helps, a fresh tiny model, and
//! the pieces `rlp demo` builds on. `synth` generates the corpora, `working` writes the worked
//! solutions, `data` writes the files and trains the tokenizer, `cli` holds the subcommands.
//! Proposed sizes and measurements: `src/demo/README.md`.

pub mod cli;
pub mod data;
pub mod run;
pub mod synth;
pub mod working;
