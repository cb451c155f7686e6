//! What the post-training objectives read in place of a corpus, loaded once when the trainer
//! starts: the SFT examples (train and held out) and their packer, or the RLVR items, their
//! prompts, the seeded question order and the frozen KL reference. The steps that use them are
//! `Trainer::sft_step` (trainer.rs) and the RLVR pieces of post.rs.
//!
//! - **SFT** (`data::sft`, `objective::sft`): the examples of `data.path`, rendered with the
//!   chat template of `model.path/tokenizer_config.json` when it has one, cut to
//!   `data.max_context` tokens; the last `data.heldout_docs` examples are held out (their
//!   response NLL is logged every `logging.eval_every` steps).
//! - **RLVR** (`objective::rlvr`): the items of `data.path`, each question's prompt encoded once;
//!   every rank walks the same seeded question order and owns questions rank, rank + W, … of
//!   each step. The reference of the KL term is a frozen copy of the model as loaded (before any
//!   resume), so a resumed run penalises against the same model.
//!
//! Legend: N samples in one micro-batch, U trained-token slots per sample, T window (row)
//! length, V vocabulary.

use crate::config::{ObjectiveName, RlvrPrompt, TrainConfig};
use crate::data::corpus::{TokenizedCorpus, TokenizedDocs};
use crate::data::sft::{load_sft, sft_batch, tokenize_sft, ChatTemplate, SftDocs, SftPacker};
use crate::eval::generate::{GenSpec, Generation};
use crate::eval::items::{load_items, Item};
use crate::model::Model;
use crate::objective::rlvr::{self, GenBans, Graded, PromptLayout, QuestionOrder, RewardSpec};
use crate::objective::sft::{masked_nll_sum, trained_count};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tok;
use anyhow::{bail, Context as _, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// What a post-training objective reads instead of a corpus.
pub(crate) enum PostData {
    Sft(SftData),
    Rlvr(RlvrData),
}

pub(crate) struct SftData {
    pub docs: SftDocs,
    /// The last `data.heldout_docs` examples (none: no held-out loss).
    pub heldout: Option<SftDocs>,
    pub packer: SftPacker,
    pub eos: u32,
}

pub(crate) struct RlvrData {
    pub items: Vec<Item>,
    /// Prompt ids of every item (`objective.rlvr_prompt`, `<think>` last when thinking).
    pub prompts: Vec<Vec<u32>>,
    pub order: QuestionOrder,
    /// The frozen model as loaded, in the compute dtype, when `objective.kl_coef` > 0.
    pub reference: Option<Model>,
    pub bans: GenBans,
    pub spec: GenSpec,
    pub reward: RewardSpec,
}

/// The examples or items of a post-training run, and a stand-in corpus of their token ids
/// (the trainer's position sampler and packer are built on it and left unused).
pub(crate) fn load_post_data(cfg: &TrainConfig, tok: &Tok, model_vocab: usize) -> Result<(PostData, TokenizedCorpus)> {
    let eos = tok.eos_ids.first().copied().context("the tokenizer has no end-of-text token (<|endoftext|>, </s>, ...): SFT packing and RLVR answers need one")?;
    match cfg.objective.name {
        ObjectiveName::Sft => {
            let records = load_sft(&cfg.data.path)?;
            let h = cfg.data.heldout_docs;
            if h >= records.len() {
                bail!("data.heldout_docs = {h} leaves no SFT example to train on: {} has {} examples; lower data.heldout_docs", cfg.data.path.display(), records.len());
            }
            let tpl_path = cfg.model.path.join("tokenizer_config.json");
            let template = if cfg.model.path.is_dir() && tpl_path.exists() { ChatTemplate::from_tokenizer_config(&tpl_path)? } else { None };
            let max = Some(cfg.data.max_context);
            let (train, held) = records.split_at(records.len() - h);
            let docs = tokenize_sft(tok, train, template.as_ref(), max)?;
            if docs.tokens.is_empty() {
                bail!("no SFT example of {} has a response token left within data.max_context = {}: raise data.max_context", cfg.data.path.display(), cfg.data.max_context);
            }
            let heldout = if held.is_empty() { None } else { Some(tokenize_sft(tok, held, template.as_ref(), max)?) };
            let corpus = TokenizedCorpus { train: docs.tokens.clone(), heldout: TokenizedDocs::default(), skipped_short: 0 };
            let packer = SftPacker::new(docs.tokens.len(), cfg.train.seed, eos)?;
            Ok((PostData::Sft(SftData { docs, heldout, packer, eos }), corpus))
        }
        ObjectiveName::Rlvr => {
            let items = load_items(&cfg.data.path)?;
            let (o, r) = (&cfg.objective, &cfg.rollout);
            let layout = match o.rlvr_prompt {
                RlvrPrompt::Bench => PromptLayout::Bench,
                RlvrPrompt::Raw => PromptLayout::Raw,
            };
            let thinking = r.thought_budget > 0;
            let prompts: Vec<Vec<u32>> = items.iter().map(|it| rlvr::prompt(tok, it, layout, thinking)).collect::<Result<_>>()?;
            if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
                bail!("RLVR item {} (`{}`) of {} encodes to no token: give it a question", i + 1, items[i].id, cfg.data.path.display());
            }
            let corpus = TokenizedCorpus { train: TokenizedDocs::from_documents(items.iter().zip(&prompts).map(|(it, p)| (it.id.clone(), p.clone()))), heldout: TokenizedDocs::default(), skipped_short: 0 };
            let sp = SamplingParams { temperature: r.temperature as f32, top_p: r.top_p as f32, top_k: r.top_k };
            let spec = GenSpec { think_budget: r.thought_budget, answer_tokens: o.rlvr_answer_tokens, sampling: Some(sp), answer_sampling: Some(sp) };
            let order = QuestionOrder::new(items.len(), cfg.train.seed)?;
            let bans = GenBans::for_tokenizer(tok, model_vocab, sp.temperature);
            let reward = RewardSpec { format_weight: o.rlvr_format_weight as f32 };
            Ok((PostData::Rlvr(RlvrData { items, prompts, order, reference: None, bans, spec, reward }), corpus))
        }
        other => bail!("objective.name = {other:?} is not a post-training objective"),
    }
}

/// A copy of the weights that no update reaches (the optimizer writes into the `Var`s'
/// storage, which a detached view would share), as a model in `dtype`.
pub(crate) fn frozen_copy(cfg: &crate::model::Config, vars: &[(String, Var)], dtype: candle_core::DType) -> Result<Model> {
    let map: HashMap<String, Tensor> = vars.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?))).collect::<Result<_>>()?;
    Model::from_tensors(cfg.clone(), map, "RLVR reference")?.to_dtype(dtype)
}

/// Mean NLL (nats) of the response tokens of `docs`, packed in corpus order into windows of
/// `len` tokens that cover every example once (the last window may run on into the first
/// example again, which is then counted twice).
pub fn heldout_response_nll(model: &Model, docs: &SftDocs, len: usize, eos: u32, no_cross_doc: bool) -> Result<f64> {
    let n = docs.tokens.len();
    let total: usize = (0..n).map(|i| docs.tokens.tokens(i).len() + 1).sum();
    let mut packer = SftPacker::in_order(n, eos)?;
    let windows = (0..total.div_ceil(len)).map(|_| packer.next_window(docs, len)).collect::<Result<Vec<_>>>()?;
    let (mut nll, mut count) = (0f64, 0usize);
    for chunk in windows.chunks(8) {
        let (ids, targets, mask, layout) = sft_batch(chunk, no_cross_doc, model.embed.device())?;
        let logits = model.logits(&model.forward_hidden(&ids, &layout, None)?)?; // [B, T, V]
        nll += masked_nll_sum(&logits, &targets, &mask)?.to_scalar::<f32>()? as f64;
        count += trained_count(&mask)?;
    }
    Ok(nll / count.max(1) as f64)
}

/// One RLVR batch: this rank's questions, their G samples each, grades and advantages, and the
/// pre-update log-probs of every micro-batch the updates will train.
pub struct RlvrBatch {
    /// Position (0..Q) in the step's questions of each question this rank owns.
    pub global_index: Vec<usize>,
    /// Item index of each question this rank owns.
    pub items: Vec<usize>,
    /// G per owned question, adjacent.
    pub gens: Vec<Generation>,
    pub graded: Vec<Graded>,
    pub advantages: Vec<f32>,
    /// [minibatch][micro-batch] → [N, U] log-probs under the policy that sampled.
    pub logp_old: Vec<Vec<Tensor>>,
    pub sample_s: f64,
    pub score_s: f64,
}
