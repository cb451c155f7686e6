//! The `rlp` command line: a thin layer over the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use rlp::cli;

#[derive(Parser)]
#[command(name = "rlp", version, about = "RLP: reinforcement learning as a pretraining objective, for causal LMs")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Next-token log-probs of a text or id sequence, as one JSON object.
    Score(cli::ScoreArgs),
    /// Continue a prompt, greedily or by seeded sampling.
    Generate(cli::GenerateArgs),
    /// Time the forward pass, batched decoding, or every phase of one RLP step.
    Bench(rlp::bench::BenchArgs),
    /// Train with RLP (or a baseline objective) from a TOML config.
    Train(cli::TrainArgs),
    /// Train a small byte-level BPE tokenizer on a corpus (for tiny test and demo models).
    TrainTokenizer(cli::TrainTokenizerArgs),
}

fn main() {
    let args = Args::parse();
    let result: Result<()> = match args.command {
        Command::Score(a) => cli::score(&a),
        Command::Generate(a) => cli::generate(&a),
        Command::Bench(a) => rlp::bench::run(&a),
        Command::Train(a) => cli::train(&a),
        Command::TrainTokenizer(a) => cli::train_tokenizer(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
