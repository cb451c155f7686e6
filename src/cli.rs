//! Implementations of the `rlp` subcommands that inspect a model (score, generate) and train;
//! `rlp bench` lives in `crate::bench`.

use crate::model::{self, target_logprobs, Model};
use crate::sampling::SamplingParams;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use rand::SeedableRng;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct InputArgs {
    /// Model: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to encode with the model's tokenizer.
    #[arg(long, conflicts_with = "ids", alias = "prompt")]
    pub text: Option<String>,
    /// Comma-separated token ids (no tokenizer needed).
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// cpu, or cuda / cuda:N (needs a binary built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// How many of the last position's highest logits to print.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Always take the most likely token (the default unless --temperature is given).
    #[arg(long)]
    pub greedy: bool,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print {"ids": [...], "text": "..."} instead of plain text.
    #[arg(long)]
    pub json: bool,
}

struct Input {
    model: Model,
    tokenizer: Option<tokenizers::Tokenizer>,
    ids: Vec<u32>,
}

fn load_input(a: &InputArgs) -> Result<Input> {
    let dev = crate::device::open(&a.device)?;
    let loaded = model::weights::load(&a.model)?;
    let ids = match (&a.ids, &a.text) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => {
            let tok = loaded.tokenizer.as_ref().with_context(|| format!("{} has no tokenizer.json: pass --ids instead of text", a.model.display()))?;
            tok.encode(text.as_str(), false).map_err(|e| anyhow::anyhow!("cannot encode the text: {e}"))?.get_ids().to_vec()
        }
        (None, None) => bail!("give the input as --text TEXT or --ids 1,2,3"),
    };
    if ids.is_empty() {
        bail!("the input encodes to no tokens");
    }
    Ok(Input { model: loaded.model.detached()?.to_device(&dev)?, tokenizer: loaded.tokenizer, ids })
}

pub fn score(a: &ScoreArgs) -> Result<()> {
    let inp = load_input(&a.input)?;
    let logits = inp.model.forward_logits(&[inp.ids.clone()])?.squeeze(0)?; // [T, V]
    let n = inp.ids.len();
    let logprobs_next: Vec<f32> = if n > 1 {
        let targets = Tensor::new(&inp.ids[1..], inp.model.device())?;
        target_logprobs(&logits.narrow(0, 0, n - 1)?, &targets)?.to_vec1()?
    } else {
        Vec::new()
    };
    let last: Vec<f32> = logits.get(n - 1)?.to_vec1()?;
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&x, &y| last[y].total_cmp(&last[x]));
    let top: Vec<(usize, f32)> = order.into_iter().take(a.top_k).map(|i| (i, last[i])).collect();
    println!("{}", json!({ "ids": inp.ids, "logprobs_next": logprobs_next, "last_topk": top }));
    Ok(())
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let inp = load_input(&a.input)?;
    let params = match (a.greedy, a.temperature) {
        (true, Some(_)) => bail!("--greedy and --temperature exclude each other"),
        (_, Some(t)) if !(t > 0.0) => bail!("--temperature must be positive"),
        (_, Some(t)) => Some(SamplingParams { temperature: t, top_p: a.top_p, top_k: a.top_k }),
        (_, None) => None,
    };
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1]");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let out = inp.model.generate(&[inp.ids.clone()], a.max_new_tokens, params.as_ref(), &mut rng)?.remove(0);
    let text = match &inp.tokenizer {
        Some(t) => Some(t.decode(&out, false).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?),
        None => None,
    };
    if a.json {
        println!("{}", json!({ "ids": out, "text": text }));
    } else {
        match text {
            Some(t) => println!("{t}"),
            None => println!("{}", out.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct TrainArgs {
    /// The run's TOML config (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key, e.g. --set optim.lr=1e-6 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: runs/<config file stem>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the newest complete checkpoint in the run directory.
    #[arg(long)]
    pub resume: bool,
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let cfg = crate::config::TrainConfig::load(&a.config, &a.overrides)?;
    if cfg.train.threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", cfg.train.threads.to_string());
    }
    let out = match &a.out {
        Some(o) => o.clone(),
        None => PathBuf::from("runs").join(a.config.file_stem().unwrap_or_default()),
    };
    crate::train::signals::install()?;
    // One process, or one rank of an `mpirun`/`srun` job.
    let timeout = std::time::Duration::from_secs_f64(cfg.train.collective_timeout_s);
    let dist = std::rc::Rc::new(crate::dist::Dist::from_launcher(timeout)?);
    let result = crate::train::trainer::Trainer::new_distributed(cfg, &out, a.resume, dist.clone()).and_then(|mut t| t.run().map(|_| t.step));
    if let Err(e) = &result {
        dist.abort_job_after_error(e); // ends every rank; returns only in a single process
    }
    let step = result?;
    if dist.is_root() {
        println!("run directory: {}", out.display());
    }
    if let Some(sig) = crate::train::signals::stop_requested() {
        let name = crate::train::signals::name(sig);
        eprintln!("stopped by {name} after step {step}; the checkpoint is written: continue with --resume");
        std::process::exit(128 + sig);
    }
    Ok(())
}

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// Corpus: .txt / .jsonl file or directory.
    #[arg(long)]
    pub corpus: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub vocab_size: usize,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Where to write tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn train_tokenizer(a: &TrainTokenizerArgs) -> Result<()> {
    let corpus = crate::data::corpus::Corpus::open(&a.corpus, &a.text_field)?;
    let texts: Vec<String> = corpus.documents().map(|d| d.map(|d| d.text)).collect::<std::result::Result<_, _>>()?;
    let tok = crate::tokenizer::train_byte_level_bpe(texts.iter(), a.vocab_size, &["<|endoftext|>", "<think>", "</think>"])?;
    tok.save(&a.out, false).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.out.display()))?;
    println!("wrote {} ({} tokens)", a.out.display(), tok.get_vocab_size(true));
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// Model to export: a Hugging Face directory (e.g. a run's checkpoints/step-NNNNNN, with its
    /// tokenizer.json) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// The GGUF file to write (llama.cpp, Ollama, LM Studio).
    #[arg(long)]
    pub gguf: PathBuf,
    /// Tensor type of the matrices; norms and biases stay f32.
    #[arg(long = "type", value_enum, default_value = "f16")]
    pub ty: crate::model::gguf_write::ExportType,
}

pub fn export(a: &ExportArgs) -> Result<()> {
    let loaded = model::weights::load(&a.model)?;
    let tok = loaded.tokenizer.as_ref().with_context(|| {
        format!("{} has no tokenizer.json, and a GGUF file must carry the vocabulary: copy the tokenizer.json the model was trained with next to its weights", a.model.display())
    })?;
    let s = crate::model::gguf_write::write_gguf(&loaded.model, tok, &a.gguf, a.ty)
        .with_context(|| format!("cannot export {} to {}", a.model.display(), a.gguf.display()))?;
    if !s.fell_back_to_f16.is_empty() {
        eprintln!("note: {} matrices have rows that do not split into {:?} blocks and were written f16: {}", s.fell_back_to_f16.len(), a.ty, s.fell_back_to_f16.join(", "));
    }
    println!("wrote {} ({} tensors, {:.1} MB, {} {:?})", a.gguf.display(), s.tensors, s.bytes as f64 / 1e6, loaded.model.cfg.arch.model_type(), a.ty);
    Ok(())
}
