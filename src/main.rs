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
    /// Time the forward pass, batched decoding, every phase of one RLP step, or NTP training steps.
    Bench(rlp::bench::ntp::BenchCommand),
    /// The paper's comparison in miniature: base vs compute-matched CPT vs RLP vs RPT, from scratch.
    Demo(rlp::demo::run::DemoArgs),
    /// Train with RLP (or a baseline objective) from a TOML config.
    Train(cli::TrainArgs),
    /// Post-train models identically: SFT, then RLVR from the SFT result (one run directory each).
    PostTrain(rlp::post_train::PostTrainArgs),
    /// Projected FLOPs of an RLP run and the compute-matched CPT token budget.
    Plan(rlp::plan::PlanArgs),
    /// Train a small byte-level BPE tokenizer on a corpus (for tiny test and demo models).
    TrainTokenizer(cli::TrainTokenizerArgs),
    /// Write a fresh, randomly initialised small Llama or Qwen3 model directory.
    InitModel(rlp::demo::cli::InitModelArgs),
    /// Write the demo's synthetic corpora, answer task and tokenizer.
    DemoData(rlp::demo::cli::DemoDataArgs),
    /// Evaluate a model: held-out loss, think-then-predict, or a benchmark answered after thinking.
    Eval(rlp::eval::cli::EvalArgs),
    /// Write a checkpoint as a GGUF file for llama.cpp, Ollama and LM Studio.
    Export(cli::ExportArgs),
    /// Collect eval results and training runs into report.md and PNG plots.
    Report(rlp::report::cli::ReportArgs),
}

fn main() {
    let args = Args::parse();
    let result: Result<()> = match args.command {
        Command::Score(a) => cli::score(&a),
        Command::Generate(a) => cli::generate(&a),
        Command::Bench(a) => a.run(),
        Command::Demo(a) => rlp::demo::run::demo(&rlp::demo::run::DemoArgs { rlp_bin: std::env::current_exe().ok(), ..a }),
        Command::Train(a) => cli::train(&a),
        Command::PostTrain(a) => rlp::post_train::post_train(&a),
        Command::Plan(a) => rlp::plan::plan(&a),
        Command::TrainTokenizer(a) => cli::train_tokenizer(&a),
        Command::InitModel(a) => rlp::demo::cli::init_model(&a),
        Command::DemoData(a) => rlp::demo::cli::demo_data(&a),
        Command::Eval(a) => rlp::eval::cli::eval(&a),
        Command::Export(a) => cli::export(&a),
        Command::Report(a) => rlp::report::cli::report(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
