//! The `rlp init-model` and `rlp demo-data` subcommands: a fresh random model directory, and the
//! demo's synthetic corpora with their tokenizer.

use super::data::{train_demo_tokenizer, write_demo_data, DemoSizes};
use super::synth::{generate_corpus, CorpusKind};
use crate::model::init::{nemotron_h_config_json, random_model, small_config_json, SmallShape};
use crate::model::{weights, Arch, Config};
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use candle_core::DType;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum ArchArg {
    Llama,
    Qwen3,
    /// Hybrid Mamba-2 / attention / MLP blocks, as given by --pattern.
    NemotronH,
}

#[derive(Args)]
pub struct InitModelArgs {
    /// Architecture of the fresh model.
    #[arg(long, value_enum, default_value = "llama")]
    pub arch: ArchArg,
    /// Layers (Llama, Qwen3; NemotronH takes its layers from --pattern).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// NemotronH blocks, one character per layer: M Mamba-2, * attention, - MLP.
    #[arg(long, default_value = "M*-M-")]
    pub pattern: String,
    /// Hidden width (a multiple of --heads).
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Key/value heads (divides --heads).
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    /// FFN (MLP) width.
    #[arg(long, default_value_t = 768)]
    pub ffn: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_positions: usize,
    /// Give the model its own lm_head instead of tying it to the embedding.
    #[arg(long)]
    pub untied: bool,
    /// tokenizer.json: sets the vocabulary size and is saved with the model (think tokens are
    /// added when it lacks them).
    #[arg(long)]
    pub tokenizer: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output model directory (must not hold a model yet).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn init_model(a: &InitModelArgs) -> Result<()> {
    if a.out.join("model.safetensors").exists() {
        bail!("{} already holds a model; remove it or choose another --out", a.out.display());
    }
    let tok = Tok::from_file(&a.tokenizer, true)?;
    let arch = match a.arch {
        ArchArg::Llama => Arch::Llama,
        ArchArg::Qwen3 => Arch::Qwen3,
        ArchArg::NemotronH => Arch::NemotronH,
    };
    let shape = SmallShape {
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ffn: a.ffn,
        max_positions: a.max_positions,
        tie_embeddings: !a.untied,
    };
    let eos = tok.eos_ids.first().copied();
    let json = match arch {
        Arch::NemotronH => nemotron_h_config_json(tok.vocab_size(), &shape, &a.pattern, eos)?,
        _ => small_config_json(arch, tok.vocab_size(), &shape, eos)?,
    };
    let cfg = Config::from_json(json)?;
    let model = random_model(&cfg, a.seed)?;
    weights::save_dir(&model, Some(tok.inner()), &a.out, DType::F32)?;
    println!(
        "wrote {}: {} with {:.2}M parameters, vocabulary {}, seed {}",
        a.out.display(),
        arch.hf_class(),
        cfg.num_params() as f64 / 1e6,
        cfg.vocab_size,
        a.seed
    );
    Ok(())
}

#[derive(Args)]
pub struct DemoDataArgs {
    /// Directory for pretrain.jsonl, train.jsonl, heldout.jsonl, answers.jsonl, tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 4000)]
    pub pretrain_docs: usize,
    #[arg(long, default_value_t = 2000)]
    pub train_docs: usize,
    #[arg(long, default_value_t = 200)]
    pub heldout_docs: usize,
    /// Vocabulary size of the BPE tokenizer trained on the pretraining split.
    #[arg(long, default_value_t = 512)]
    pub vocab_size: usize,
    /// Also write this many SFT pairs with worked tallies to sft.jsonl (`demo::post`), none a
    /// tally of the first --heldout-docs held-out documents.
    #[arg(long, default_value_t = 0)]
    pub sft_pairs: usize,
    /// Also write this many RLVR question/answer items to rlvr.jsonl, as --sft-pairs.
    #[arg(long, default_value_t = 0)]
    pub rlvr_items: usize,
}

pub fn demo_data(a: &DemoDataArgs) -> Result<()> {
    let sizes = DemoSizes { pretrain_docs: a.pretrain_docs, train_docs: a.train_docs, heldout_docs: a.heldout_docs };
    let data = write_demo_data(&a.out, a.seed, sizes)?;
    let pretrain = generate_corpus(a.seed, a.pretrain_docs, CorpusKind::Pretrain);
    let tokenizer = train_demo_tokenizer(&pretrain, a.vocab_size)?;
    let tok_path = a.out.join("tokenizer.json");
    let tok = Tok::from_tokenizer(tokenizer, false, "demo tokenizer")?;
    tok.save(&tok_path)?;
    for (kind, n, path) in [
        (CorpusKind::Pretrain, a.pretrain_docs, &data.pretrain),
        (CorpusKind::Train, a.train_docs, &data.train),
        (CorpusKind::Heldout, a.heldout_docs, &data.heldout),
    ] {
        let tokens: usize = generate_corpus(a.seed, n, kind).iter().map(|t| tok.encode(t).map(|ids| ids.len())).sum::<Result<_>>()?;
        println!("{:<40} {n:>7} documents {tokens:>10} tokens", path.display());
    }
    println!("{:<40} {:>7} answer items", data.answers.display(), super::synth::answer_task(a.seed, a.heldout_docs).len());
    println!("{:<40} {:>7} tokens", tok_path.display(), tok.vocab_size());
    if a.sft_pairs > 0 || a.rlvr_items > 0 {
        let (sft, rlvr) = super::post::write_post_data(&a.out, a.seed, a.heldout_docs, a.sft_pairs, a.rlvr_items)?;
        println!("{:<40} {:>7} SFT pairs", sft.display(), a.sft_pairs);
        println!("{:<40} {:>7} RLVR items", rlvr.display(), a.rlvr_items);
    }
    Ok(())
}
