//! The embedded demo: a synthetic world where thinking helps (`synth`), its files and tokenizer
//! (`data`), post-training sets drawn from it (`post`), the `rlp demo` pipeline (`run`), its
//! `--post-train` stage (`post_train`) and the `init-model` / `demo-data` subcommands (`cli`).
//! Sizes and measurements: `src/demo/README.md`.

pub mod cli;
pub mod data;
pub mod post;
pub mod post_train;
pub mod run;
pub mod synth;
