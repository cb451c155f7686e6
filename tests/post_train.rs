//! Post-training building blocks: SFT data (parsing, chat templates, tokens and loss masks,
//! packing) and loss, RLVR rewards, advantages, log-probs, loss and metrics.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{checkpoint_weights, metrics, repo, single_thread_config, test_data, without_timings, write_file};
use rlp::data::corpus::TokenizedDocs;
use rlp::data::packer::Packer;
use rlp::data::sft::{load_sft, sft_batch, tokenize_spans, tokenize_sft, ChatTemplate, Message, SftDocs, SftExample, SftPacker, SftRecord, Span};
use rlp::eval::generate::{GenSpec, Generation};
use rlp::eval::items::Item;
use rlp::model::layout::MASKED;
use rlp::model::{weights, Model};
use rlp::objective::rlp::SurrogateStats;
use rlp::objective::rlvr::{self, AdvantageKind, GenBans, LossParams, PromptLayout, RewardSpec, SampleInputs, SampleRow};
use rlp::objective::sft::sft_loss;
use rlp::sampling::{tempered_logprobs, SamplingParams};
use rlp::tokenizer::Tok;

fn msg(role: &str, content: &str) -> Message {
    Message { role: role.into(), content: content.into() }
}

fn qwen3() -> ChatTemplate {
    ChatTemplate::from_tokenizer_config(&test_data("tokenizers/qwen3/tokenizer_config.json")).unwrap().expect("Qwen3's config has a chat template")
}

/// The tiny-rlp fixture: a random 3-layer Llama with 512 embedding rows and a 400-token BPE
/// (so ids 400..512 are past the tokenizer), `<|endoftext|>`, `<think>`, `</think>` special.
fn tiny() -> (Model, Tok) {
    let loaded = weights::load(&test_data("tiny-rlp")).unwrap();
    let tok = Tok::from_tokenizer(loaded.tokenizer.unwrap(), false, "tiny-rlp").unwrap();
    (loaded.model.detached().unwrap(), tok)
}

// ---------------------------------------------------------------- chat templates

#[test]
fn qwen3_template_renders_thoughts_and_splits_assistant_turns() {
    let t = qwen3();
    let conv = [msg("system", "Be brief."), msg("user", "What is 3+4?"), msg("assistant", "<think>\n3+4=7\n</think>\n\n7")];
    let head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(t.render(&conv, false).unwrap(), format!("{head}<think>\n3+4=7\n</think>\n\n7<|im_end|>\n"));
    assert_eq!(t.render(&conv[..2], true).unwrap(), head);
    let spans = t.spans(&conv).unwrap();
    assert_eq!(spans, vec![Span { text: head.into(), trained: false }, Span { text: "<think>\n3+4=7\n</think>\n\n7<|im_end|>\n".into(), trained: true }]);
    // An answer without a thought gets Qwen3's empty thought block.
    let plain = t.spans(&[msg("user", "Hi"), msg("assistant", "Hello")]).unwrap();
    assert_eq!(plain.last().unwrap().text, "<think>\n\n</think>\n\nHello<|im_end|>\n");
}

#[test]
fn templates_that_rewrite_earlier_turns_are_refused_and_chatml_multi_turn_works() {
    // Qwen3 drops the thoughts of turns before the last user message.
    let conv = [msg("user", "a?"), msg("assistant", "<think>x</think>A"), msg("user", "b?"), msg("assistant", "B")];
    let e = qwen3().spans(&conv).unwrap_err().to_string();
    assert!(e.contains("assistant turn 1") && e.contains("one assistant turn per example"), "{e}");
    // A plain ChatML template renders every turn in place: both assistant turns are trained.
    let chatml = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let t = ChatTemplate::new(chatml, "", "<|im_end|>", "chatml").unwrap();
    let spans = t.spans(&conv).unwrap();
    let trained: Vec<&str> = spans.iter().filter(|s| s.trained).map(|s| s.text.as_str()).collect();
    assert_eq!(trained, vec!["<think>x</think>A<|im_end|>\n", "B<|im_end|>\n"]);
    let all: String = spans.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(all, t.render(&conv, false).unwrap());
}

#[test]
fn template_sources_and_template_errors() {
    let dir = tempfile::tempdir().unwrap();
    let none = write_file(dir.path(), "none.json", r#"{"eos_token": "</s>"}"#);
    assert!(ChatTemplate::from_tokenizer_config(&none).unwrap().is_none());
    let list = write_file(dir.path(), "list.json", r#"{"bos_token": {"content": "<s>"}, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}"}]}"#);
    let t = ChatTemplate::from_tokenizer_config(&list).unwrap().unwrap();
    assert_eq!(t.render(&[msg("user", "hi")], false).unwrap(), "<s>hi");
    let bad = ChatTemplate::new("{% for %}", "", "", "bad.json").err().unwrap().to_string();
    assert!(bad.contains("bad.json") && bad.contains("does not compile"), "{bad}");
    let raising = ChatTemplate::new("{{ raise_exception('only user/assistant roles') }}", "", "", "r").unwrap();
    assert!(raising.render(&[], false).unwrap_err().to_string().contains("only user/assistant roles"));
}

// ---------------------------------------------------------------- SFT tokens and masks

#[test]
fn chat_template_tokens_map_thoughts_to_rlps_think_ids_and_mask_the_prompt() {
    // SmolLM2's real tokenizer (ChatML special tokens, no think tokens: rlp adds them).
    let tok = Tok::from_file(&test_data("smollm2/tokenizer.json"), true).unwrap();
    assert!(tok.added_think_tokens);
    let conv = [msg("user", "What is 3+4?"), msg("assistant", "<think>\n3+4=7\n</think>\n\n7")];
    let spans = qwen3().spans(&conv).unwrap();
    let t = tokenize_spans(&tok, &spans).unwrap();
    let head = tok.encode("<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let mut want = head.clone();
    want.push(tok.think_id);
    want.extend(tok.encode("\n3+4=7\n").unwrap());
    want.push(tok.end_think_id);
    want.extend(tok.encode("\n\n7<|im_end|>\n").unwrap());
    assert_eq!(t.ids, want);
    let n_head = head.len();
    assert!(t.loss[..n_head].iter().all(|&l| l == 0) && t.loss[n_head..].iter().all(|&l| l == 1), "{:?}", t.loss);
    assert_eq!(tok.decode(&t.ids[n_head..]).unwrap(), "<think>\n3+4=7\n</think>\n\n7<|im_end|>\n");
    // The ChatML markers are single special tokens of this tokenizer.
    assert_eq!(t.ids[0], tok.token_to_id("<|im_start|>").unwrap());
}

#[test]
fn sft_file_to_docs_pairs_and_plain_chats() {
    let (_, tok) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "sft.jsonl", "{\"prompt\": \"tally a4 b3 is\", \"response\": \"<think> a4 b7</think> 7.\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": \" 4\"}]}\n");
    let recs = load_sft(&f).unwrap();
    assert_eq!((recs.len(), recs[1].source.ends_with("sft.jsonl:3")), (2, true));
    let docs = tokenize_sft(&tok, &recs, None, None).unwrap();
    let prompt = tok.encode("tally a4 b3 is").unwrap();
    let mut resp = vec![tok.think_id];
    resp.extend(tok.encode(" a4 b7").unwrap());
    resp.push(tok.end_think_id);
    resp.extend(tok.encode(" 7.").unwrap());
    assert_eq!(docs.tokens.tokens(0), [prompt.clone(), resp.clone()].concat());
    assert_eq!(docs.loss.tokens(0), [vec![0; prompt.len()], vec![1; resp.len()]].concat());
    // Plain template: "Question: 2+2?\nAnswer:" then " 4\n" trained.
    let q = tok.encode("Question: 2+2?\nAnswer:").unwrap();
    let a = tok.encode(" 4\n").unwrap();
    assert_eq!(docs.tokens.tokens(1), [q.clone(), a.clone()].concat());
    assert_eq!(docs.loss.tokens(1), [vec![0; q.len()], vec![1; a.len()]].concat());
    assert_eq!(docs.trained_tokens, resp.len() + a.len());
    // A cut inside the response keeps the example; one that leaves no response token drops it.
    let cut = tokenize_sft(&tok, &recs[..1], None, Some(prompt.len() + 1)).unwrap();
    assert_eq!((cut.truncated, cut.dropped, cut.loss.tokens(0)), (1, 0, [vec![0; prompt.len()], vec![1]].concat().as_slice()));
    let short = SftRecord { source: "s".into(), example: SftExample::Pair { prompt: "x".into(), response: " y".into() } };
    let fits = tok.encode("x").unwrap().len() + tok.encode(" y").unwrap().len();
    assert!(prompt.len() >= fits, "the test needs the tally prompt to be longer than the short example");
    let cut = tokenize_sft(&tok, &[short, recs[0].clone()], None, Some(fits)).unwrap();
    assert_eq!((cut.truncated, cut.dropped, cut.tokens.len()), (1, 1, 1));
    let e = tokenize_sft(&tok, &recs[..1], None, Some(prompt.len())).unwrap_err().to_string();
    assert!(e.contains("no SFT example has a response token left"), "{e}");
}

#[test]
fn malformed_sft_input_names_file_line_and_fix() {
    let (_, tok) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "bad.jsonl", "{\"prompt\": \"q\", \"response\": \"a\"}\n{\"prompt\": \"q\", \"response\": \"a\"}\n{\"prompt\": \"q\"}\n");
    let e = load_sft(&f).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:3: the example has no `response`") && e.contains("write {\"prompt\": str"), "{e}");
    let f = write_file(dir.path(), "empty.jsonl", "\n\n");
    assert!(load_sft(&f).unwrap_err().to_string().contains("holds no examples"));
    assert!(load_sft(&dir.path().join("missing.jsonl")).unwrap_err().to_string().contains("check the path"));
    // Thought markers must pair up.
    let f = write_file(dir.path(), "think.jsonl", "{\"prompt\": \"q\", \"response\": \"<think> a 7\"}\n{\"prompt\": \"q\", \"response\": \"7</think>\"}\n");
    let recs = load_sft(&f).unwrap();
    let e = format!("{:#}", tokenize_sft(&tok, &recs[..1], None, None).unwrap_err());
    assert!(e.contains("think.jsonl:1: cannot tokenize") && e.contains("never closed"), "{e}");
    let e = format!("{:#}", tokenize_sft(&tok, &recs[1..], None, None).unwrap_err());
    assert!(e.contains("think.jsonl:2") && e.contains("</think> where a thought is not open"), "{e}");
    // A role the plain template has no place for.
    let f = write_file(dir.path(), "tool.jsonl", "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n");
    let e = format!("{:#}", tokenize_sft(&tok, &load_sft(&f).unwrap(), None, None).unwrap_err());
    assert!(e.contains("tool.jsonl:1: cannot render") && e.contains("role `tool`"), "{e}");
}

// ---------------------------------------------------------------- packing

/// Two examples by hand: A = [10, 11, 12] with loss [0, 1, 1], B = [20, 21] with loss [0, 1];
/// EOS = 0; in corpus order, windows of 4 + 1 tokens.
/// - window 1: tokens [10 11 12 0 20], segments [0 0 0 0 1], loss [0 1 1 1 0]
///   → inputs [10 11 12 0], targets [11 12 0 20], mask [1 1 1 0] (20 is B's prompt token)
/// - window 2: tokens [20 21 0 10 11], segments [0 0 0 1 1], loss [0 1 1 0 1]
///   → inputs [20 21 0 10], targets [21 0 10 11], mask [1 1 0 1]; input 3 (A again) sees only itself.
#[test]
fn packing_keeps_the_ntp_stream_and_masks_by_hand() {
    let docs = SftDocs {
        tokens: TokenizedDocs::from_documents([("a".to_string(), vec![10, 11, 12]), ("b".to_string(), vec![20, 21])]),
        loss: TokenizedDocs::from_documents([("a".to_string(), vec![0, 1, 1]), ("b".to_string(), vec![0, 1])]),
        truncated: 0,
        dropped: 0,
        trained_tokens: 3,
    };
    let mut p = SftPacker::in_order(2, 0).unwrap();
    let w1 = p.next_window(&docs, 4).unwrap();
    let w2 = p.next_window(&docs, 4).unwrap();
    assert_eq!((w1.tokens.as_slice(), w1.segments.as_slice(), w1.loss.as_slice()), ([10, 11, 12, 0, 20].as_slice(), [0, 0, 0, 0, 1].as_slice(), [0, 1, 1, 1, 0].as_slice()));
    assert_eq!((w2.tokens.as_slice(), w2.segments.as_slice(), w2.loss.as_slice()), ([20, 21, 0, 10, 11].as_slice(), [0, 0, 0, 1, 1].as_slice(), [0, 1, 1, 0, 1].as_slice()));
    let (ids, targets, mask, layout) = sft_batch(&[w1, w2], true, &Device::Cpu).unwrap();
    assert_eq!(ids.to_vec2::<u32>().unwrap(), vec![vec![10, 11, 12, 0], vec![20, 21, 0, 10]]);
    assert_eq!(targets.to_vec2::<u32>().unwrap(), vec![vec![11, 12, 0, 20], vec![21, 0, 10, 11]]);
    assert_eq!(mask.to_vec2::<f32>().unwrap(), vec![vec![1., 1., 1., 0.], vec![1., 1., 0., 1.]]);
    // Row 2, query 3 (A's first token): keys 0..3 belong to B, masked; position restarts at 0.
    let t = 4;
    let key = |r: usize, i: usize, j: usize| layout.mask[(r * t + i) * t + j];
    assert!((0..3).all(|j| key(1, 3, j) == MASKED) && key(1, 3, 3) == 0.0);
    assert!((0..=3).all(|j| key(0, 3, j) == 0.0), "row 1 is one document");
    assert_eq!(&layout.positions[t..], &[0, 1, 2, 0]);
}

#[test]
fn shuffled_packing_matches_the_ntp_packer_and_resumes() {
    let (_, tok) = tiny();
    let recs: Vec<_> = (0..7)
        .map(|i| SftRecord { source: format!("f:{i}"), example: SftExample::Pair { prompt: format!("tally a{i} is"), response: format!(" {} and more words {i}.", i * 3) } })
        .collect();
    let docs = tokenize_sft(&tok, &recs, None, None).unwrap();
    let eos = tok.eos_ids[0];
    let (mut sft, mut ntp) = (SftPacker::new(7, 5, eos).unwrap(), Packer::new(7, 5, eos).unwrap());
    for _ in 0..6 {
        let a = sft.next_window(&docs, 9).unwrap();
        let b = ntp.next_window(&docs.tokens, 9).unwrap();
        assert_eq!((&a.tokens, &a.segments), (&b.tokens, &b.segments), "the same windows as ntp");
        // The EOS after each example is trained (the per-token flags are checked in order below).
        for (i, (&tk, &l)) in a.tokens.iter().zip(&a.loss).enumerate() {
            if tk == eos {
                assert_eq!(l, 1, "EOS at {i} is trained");
            }
        }
    }
    let saved = serde_json::to_string(sft.state()).unwrap();
    let rest: Vec<_> = (0..4).map(|_| sft.next_window(&docs, 9).unwrap()).collect();
    let mut again = SftPacker::new(7, 5, eos).unwrap();
    again.restore(serde_json::from_str(&saved).unwrap()).unwrap();
    let rest2: Vec<_> = (0..4).map(|_| again.next_window(&docs, 9).unwrap()).collect();
    assert_eq!(rest, rest2);
    // Loss flags per window, recomputed from the documents in the packer's own order: the
    // in-order packer walks docs 0, 1, … so the flag stream is their flags with a 1 per EOS.
    let mut in_order = SftPacker::in_order(7, eos).unwrap();
    let stream: Vec<u32> = (0..7).flat_map(|d| docs.loss.tokens(d).iter().copied().chain([1])).collect();
    let w = in_order.next_window(&docs, 9).unwrap();
    assert_eq!(w.loss, stream[..10]);
    let w = in_order.next_window(&docs, 9).unwrap();
    assert_eq!(w.loss, stream[9..19]);
}

#[test]
fn sft_loss_on_a_model_counts_response_tokens_only() {
    let (model, tok) = tiny();
    let recs = vec![SftRecord { source: "x".into(), example: SftExample::Pair { prompt: "The cat sat".into(), response: " on the mat.".into() } }];
    let docs = tokenize_sft(&tok, &recs, None, None).unwrap();
    let mut p = SftPacker::in_order(1, tok.eos_ids[0]).unwrap();
    let w = p.next_window(&docs, 12).unwrap();
    let (ids, targets, mask, layout) = sft_batch(std::slice::from_ref(&w), true, &Device::Cpu).unwrap();
    let logits = model.logits(&model.forward_hidden(&ids, &layout, None).unwrap()).unwrap(); // [1, T, V]
    let loss = sft_loss(&logits, &targets, &mask).unwrap().to_scalar::<f32>().unwrap() as f64;
    // By hand: −log softmax at each trained target, averaged.
    let rows = logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let (mut sum, mut n) = (0f64, 0);
    for (i, row) in rows.iter().enumerate() {
        if w.loss[i + 1] == 1 {
            sum -= tempered_logprobs(row, 1.0, &[])[w.tokens[i + 1] as usize];
            n += 1;
        }
    }
    assert!(n > 0 && n < rows.len(), "the window must hold both prompt and response targets");
    assert!((loss - sum / n as f64).abs() < 1e-4, "{loss} vs {}", sum / n as f64);
}

// ---------------------------------------------------------------- RLVR

fn item() -> Item {
    Item { id: "q".into(), question: "What is 3 + 4?".into(), answer: "7".into(), choices: vec![] }
}

fn gen(tok: &Tok, thought: &str, closed: bool, answer: &str) -> Generation {
    Generation { thought: tok.encode(thought).unwrap(), closed, answer: tok.encode(answer).unwrap() }
}

/// One question, G = 4 samples: right (" 7"), wrong (" 8"), nothing readable (" none"), right
/// by the boxed rule (" \boxed{7} 9"); the third thought hit the budget (forced `</think>`).
fn group(tok: &Tok) -> Vec<Generation> {
    vec![gen(tok, " 3 4 7", true, " 7"), gen(tok, " 3 4", true, " 8"), gen(tok, " hmm", false, " none"), gen(tok, " 7", true, " \\boxed{7} 9")]
}

#[test]
fn rlvr_rewards_and_advantages_on_a_hand_built_group() {
    let (_, tok) = tiny();
    let gens = group(&tok);
    let graded = rlvr::grade_groups(&tok, &[item()], &gens, 4, true, &RewardSpec::default()).unwrap();
    let rewards: Vec<f32> = graded.iter().map(|g| g.reward).collect();
    assert_eq!(rewards, vec![1.0, 0.0, 0.0, 1.0]);
    assert_eq!(graded.iter().map(|g| g.extracted).collect::<Vec<_>>(), vec![true, true, false, true]);
    // RLOO: mean 0.5, centred ±0.5, × 4/3 → ±2/3.
    let a = rlvr::advantages(&rewards, 4, AdvantageKind::Rloo).unwrap();
    for (x, want) in a.iter().zip([2.0 / 3.0, -2.0 / 3.0, -2.0 / 3.0, 2.0 / 3.0]) {
        assert!((x - want).abs() < 1e-6, "{a:?}");
    }
    // GRPO: sample std = √(4 · 0.25 / 3) = 0.5773503; A = ±0.5 / 0.5773503 = ±0.8660254.
    let a = rlvr::advantages(&rewards, 4, AdvantageKind::Grpo).unwrap();
    for (x, want) in a.iter().zip([0.866_025_4, -0.866_025_4, -0.866_025_4, 0.866_025_4]) {
        assert!((x - want).abs() < 1e-5, "{a:?}");
    }
    // Format reward 0.5: samples 1, 2, 4 closed their thought and have a readable answer.
    let f = rlvr::grade_groups(&tok, &[item()], &gens, 4, true, &RewardSpec { format_weight: 0.5 }).unwrap();
    assert_eq!(f.iter().map(|g| g.reward).collect::<Vec<_>>(), vec![1.5, 0.5, 0.0, 1.5]);
    assert!(rlvr::grade_groups(&tok, &[item(), item()], &gens, 4, true, &RewardSpec::default()).is_err());
}

#[test]
fn rlvr_prompts_are_the_eval_prompts_with_thinking_first() {
    let (_, tok) = tiny();
    let bench = rlvr::prompt(&tok, &item(), PromptLayout::Bench, true).unwrap();
    let mut want = tok.encode("Question: What is 3 + 4?\nAnswer:").unwrap();
    want.push(tok.think_id);
    assert_eq!(bench, want);
    let raw = rlvr::prompt(&tok, &item(), PromptLayout::Raw, false).unwrap();
    assert_eq!(raw, tok.encode("What is 3 + 4?").unwrap());
}

#[test]
fn rlvr_logprobs_are_the_sampling_distribution_of_each_generated_token() {
    let (model, tok) = tiny();
    let gens = group(&tok);
    let prompt = rlvr::prompt(&tok, &item(), PromptLayout::Bench, true).unwrap();
    let rows: Vec<SampleRow> = gens.iter().map(|g| SampleRow { prompt: &prompt, gen: g }).collect();
    let bans = GenBans::for_tokenizer(&tok, model.cfg.vocab_size, 0.7);
    assert!(bans.thought.contains(&450) && bans.answer.contains(&tok.end_think_id) && !bans.answer.contains(&tok.eos_ids[0]));
    let inp = SampleInputs::new(&rows, true, &bans, &Device::Cpu).unwrap();
    let lp = rlvr::sample_logprobs(&model, &inp, &bans).unwrap().to_vec2::<f32>().unwrap(); // [N, U]
    let mask = inp.mask.to_vec2::<f32>().unwrap();
    for (r, g) in gens.iter().enumerate() {
        // Naive: one forward per full sequence, then each trained token's tempered, banned log-prob.
        let (seq, trained) = naive_trained_tokens(&prompt, g, &bans, &tok);
        let logits = model.forward_logits(&[seq.clone()]).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(inp.lens[r], trained.len());
        for (u, (i, banned)) in trained.iter().enumerate() {
            let want = tempered_logprobs(&logits[i - 1], 0.7, banned)[seq[*i] as usize];
            assert!((lp[r][u] as f64 - want).abs() < 1e-4, "sample {r} token {u}: {} vs {want}", lp[r][u]);
            assert_eq!(mask[r][u], 1.0);
        }
        assert!(mask[r][trained.len()..].iter().all(|&m| m == 0.0));
    }
    // The forced </think> of sample 3 is not trained: its thought (1 token at least) + answer only.
    assert_eq!(inp.lens[2], gens[2].thought.len() + gens[2].answer.len());
    assert_eq!(inp.lens[0], gens[0].thought.len() + 1 + gens[0].answer.len());
}

/// The naive reading of one sample: its full sequence (prompt, thought, `</think>`, answer) and
/// each trained token's position in it with the tokens banned there (the first thought token's
/// bans, the thought's, `</think>` when the model wrote it, the answer's).
fn naive_trained_tokens(prompt: &[u32], g: &Generation, bans: &GenBans, tok: &Tok) -> (Vec<u32>, Vec<(usize, Vec<u32>)>) {
    let mut seq = prompt.to_vec();
    let mut trained: Vec<(usize, Vec<u32>)> = Vec::new();
    for (u, &t) in g.thought.iter().enumerate() {
        trained.push((seq.len(), if u == 0 { bans.first_thought.clone() } else { bans.thought.clone() }));
        seq.push(t);
    }
    if g.closed {
        trained.push((seq.len(), bans.thought.clone()));
    }
    seq.push(tok.end_think_id);
    for &t in &g.answer {
        trained.push((seq.len(), bans.answer.clone()));
        seq.push(t);
    }
    (seq, trained)
}

/// What the trainer scores in practice: real samples of the demo's base on tallies of 2 to 6
/// digits (prompts of different lengths, right-padded into one batch as a step's Q·G samples
/// are), each token's log-prob equal to one unpadded forward of its own sequence under the
/// sampling temperature and bans.
#[test]
fn rlvr_logprobs_of_a_mixed_length_batch_of_demo_samples_match_one_forward_each() {
    let cfg = single_thread_config("post-rlvr.toml", &[]);
    let (model, tok) = weights::load_for_thinking(&cfg.model.path, false, "test").unwrap();
    let model = model.detached().unwrap();
    let items: Vec<Item> = rlp::demo::post::rlvr_items(2, 10, &Default::default()).into_iter().map(|q| Item { id: "v".into(), question: q.question, answer: q.answer, choices: vec![] }).collect();
    let prompts: Vec<Vec<u32>> = items.iter().map(|it| rlvr::prompt(&tok, it, PromptLayout::Raw, true).unwrap()).collect();
    let lens: std::collections::HashSet<usize> = prompts.iter().map(|p| p.len()).collect();
    assert!(lens.len() >= 3, "the prompts should differ in length: {lens:?}");
    let sp = SamplingParams { temperature: 0.7, top_p: 1.0, top_k: 0 };
    let spec = GenSpec { think_budget: 16, answer_tokens: 2, sampling: Some(sp), answer_sampling: Some(sp) };
    let at = rlvr::StepSeed { seed: 0, step: 0, first_question: 0 };
    let gens = rlvr::sample_groups_seeded(&model, &tok, &prompts, 2, &spec, at).unwrap();
    let rows: Vec<SampleRow> = gens.iter().enumerate().map(|(i, g)| SampleRow { prompt: &prompts[i / 2], gen: g }).collect();
    let bans = GenBans::for_tokenizer(&tok, model.cfg.vocab_size, 0.7);
    let inp = SampleInputs::new(&rows, true, &bans, &Device::Cpu).unwrap();
    let lp = rlvr::sample_logprobs(&model, &inp, &bans).unwrap().to_vec2::<f32>().unwrap(); // [N, U]
    let mut checked = 0;
    for (r, g) in gens.iter().enumerate() {
        let (seq, trained) = naive_trained_tokens(&prompts[r / 2], g, &bans, &tok);
        let logits = model.forward_logits(&[seq.clone()]).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(inp.lens[r], trained.len());
        for (u, (i, banned)) in trained.iter().enumerate() {
            let want = tempered_logprobs(&logits[i - 1], 0.7, banned)[seq[*i] as usize];
            assert!((lp[r][u] as f64 - want).abs() < 1e-4, "sample {r} token {u}: {} vs {want}", lp[r][u]);
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} tokens compared");
}

/// First PPO epoch on the hand-built group: logp_old from a second, gradient-free pass of the
/// same policy, so ρ = 1 on every token and the clip does nothing. Then
/// loss = −(1/N) Σ_i A_i = 0 (RLOO advantages sum to 0 in a group), and
/// ∂loss/∂logp_new[i, u] = −A_i / (len_i · N) on trained tokens, 0 on padding.
/// With β = 0.1 and a reference exactly ln 2 below logp_old everywhere:
/// d = −ln 2 per token, k3 = 1/2 + ln 2 − 1 = 0.1931472, loss = 0.1 · 0.1931472.
#[test]
fn rlvr_loss_first_epoch_ratio_is_one_and_hand_values() {
    let (model, tok) = tiny();
    let gens = group(&tok);
    let prompt = rlvr::prompt(&tok, &item(), PromptLayout::Bench, true).unwrap();
    let rows: Vec<SampleRow> = gens.iter().map(|g| SampleRow { prompt: &prompt, gen: g }).collect();
    let bans = GenBans::for_tokenizer(&tok, model.cfg.vocab_size, 0.7);
    let inp = SampleInputs::new(&rows, true, &bans, &Device::Cpu).unwrap();
    let old = rlvr::sample_logprobs(&model, &inp, &bans).unwrap();
    let new = Var::from_tensor(&rlvr::sample_logprobs(&model, &inp, &bans).unwrap()).unwrap();
    let adv_v = rlvr::advantages(&[1.0, 0.0, 0.0, 1.0], 4, AdvantageKind::Rloo).unwrap();
    let adv = Tensor::new(adv_v.as_slice(), &Device::Cpu).unwrap();
    let p = LossParams { eps_low: 0.2, eps_high: 0.2, beta: 0.0 };
    let (loss, stats, kl) = rlvr::rlvr_loss(&new, &old, None, &inp.mask, &adv, &p, 4).unwrap();
    assert_eq!((stats.ratio_mean(), stats.ratio_max, stats.n_clipped_low, stats.n_clipped_high), (1.0, 1.0, 0, 0));
    assert_eq!(stats.n_tokens, inp.n_tokens());
    assert!(kl.is_none());
    assert!(loss.to_scalar::<f32>().unwrap().abs() < 1e-7);
    let grad = loss.backward().unwrap().get(&new).unwrap().to_vec2::<f32>().unwrap();
    for (i, row) in grad.iter().enumerate() {
        let len = inp.lens[i];
        for (u, &g) in row.iter().enumerate() {
            let want = if u < len { -adv_v[i] / (len as f32 * 4.0) } else { 0.0 };
            assert!((g - want).abs() < 1e-7, "sample {i} token {u}: {g} vs {want}");
        }
    }
    // KL to a reference ln 2 below.
    let reference = (&old - std::f64::consts::LN_2).unwrap();
    let p = LossParams { beta: 0.1, ..p };
    let (loss, _, kl) = rlvr::rlvr_loss(&new, &old, Some(&reference), &inp.mask, &adv, &p, 4).unwrap();
    let k3 = 0.5 + std::f32::consts::LN_2 - 1.0;
    assert!((kl.unwrap() - k3).abs() < 1e-6);
    assert!((loss.to_scalar::<f32>().unwrap() - 0.1 * k3).abs() < 1e-6);
}

#[test]
fn rlvr_metrics_on_two_hand_built_groups() {
    let (_, tok) = tiny();
    // Group 1: the hand-built group (rewards 1 0 0 1); group 2: four wrong answers to 12345,
    // the last one cut at the answer cap.
    let mut gens = group(&tok);
    let cap = 1 + gens.iter().map(|g| g.answer.len()).max().unwrap();
    let long = tok.encode(" 9 apples and 8 pears and 7 plums and 6 more words than that").unwrap();
    assert!(long.len() >= cap);
    let answers = [tok.encode(" 1").unwrap(), tok.encode(" 2").unwrap(), tok.encode(" 3").unwrap(), long[..cap].to_vec()];
    for (k, answer) in answers.into_iter().enumerate() {
        gens.push(Generation { thought: tok.encode(" 1 2 3 4 5").unwrap()[..k + 1].to_vec(), closed: true, answer });
    }
    let items = [item(), Item { answer: "12345".into(), ..item() }];
    let graded = rlvr::grade_groups(&tok, &items, &gens, 4, true, &RewardSpec::default()).unwrap();
    let spec = GenSpec { think_budget: 8, answer_tokens: cap, sampling: Some(SamplingParams { temperature: 0.7, top_p: 1.0, top_k: 0 }), answer_sampling: None };
    let stats = SurrogateStats { n_thoughts: 8, n_tokens: 20, n_clipped_low: 1, n_clipped_high: 3, ratio_sum: 20.0, ratio_max: 1.3 };
    let m = rlvr::rlvr_metrics(&gens, &graded, 4, &spec, &stats, Some(0.01)).unwrap();
    assert_eq!((m.samples, m.groups), (8, 2));
    assert!((m.reward_mean - 0.25).abs() < 1e-12 && (m.accuracy - 0.25).abs() < 1e-12);
    // group stds: 0.5773503 and 0 → mean 0.2886751
    assert!((m.reward_std - 0.288_675_1).abs() < 1e-6, "{}", m.reward_std);
    assert_eq!((m.frac_solved_groups, m.frac_unsolved_groups, m.frac_zero_std_groups), (0.0, 0.5, 0.5));
    // Truncated: sample 3's thought (forced) and group 2's last answer (at answer_tokens).
    assert_eq!((m.thought_truncated_frac, m.answer_truncated_frac, m.truncated_frac), (0.125, 0.125, 0.25));
    let lens: Vec<usize> = gens.iter().map(|g| g.thought.len() + 1 + g.answer.len()).collect();
    assert_eq!(m.response_len_max, *lens.iter().max().unwrap());
    assert!((m.response_len_mean - lens.iter().sum::<usize>() as f64 / 8.0).abs() < 1e-12);
    // 1 and 3 of 20 tokens clipped
    assert!((m.clip_frac_low - 0.05).abs() < 1e-7 && (m.clip_frac_high - 0.15).abs() < 1e-7 && m.ratio_mean == 1.0);
    assert_eq!(m.kl, Some(0.01));
    assert_eq!(m.no_answer_frac, 0.125, "only \" none\" has nothing readable");
    let json = serde_json::to_value(&m).unwrap();
    assert!(json.get("frac_unsolved_groups").is_some() && json.get("truncated_frac").is_some());
}

#[test]
fn rlvr_sampling_gives_g_samples_per_prompt() {
    let (model, tok) = tiny();
    let prompts = vec![rlvr::prompt(&tok, &item(), PromptLayout::Bench, true).unwrap(); 2];
    let spec = GenSpec { think_budget: 4, answer_tokens: 3, sampling: Some(SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0 }), answer_sampling: Some(SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0 }) };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let gens = rlvr::sample_groups(&model, &tok, &prompts, 3, &spec, 4, &mut rng).unwrap();
    assert_eq!(gens.len(), 6);
    assert!(gens.iter().all(|g| !g.thought.is_empty() && g.thought.len() <= 4 && g.answer.len() <= 3));
    assert!(rlvr::sample_groups(&model, &tok, &prompts, 1, &spec, 4, &mut rng).unwrap_err().to_string().contains("G >= 2"));
    // The samples score: every row's log-probs are finite.
    let rows: Vec<SampleRow> = gens.iter().enumerate().map(|(i, g)| SampleRow { prompt: &prompts[i / 3], gen: g }).collect();
    let bans = GenBans::for_tokenizer(&tok, model.cfg.vocab_size, 1.0);
    let inp = SampleInputs::new(&rows, true, &bans, &Device::Cpu).unwrap();
    let lp = rlvr::sample_logprobs(&model, &inp, &bans).unwrap();
    let masked = (lp * &inp.mask).unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
    assert!(masked.is_finite() && masked < 0.0);
}

#[test]
fn bundled_rlvr_set_loads_and_shares_no_item_with_the_evaluation() {
    let post = rlp::eval::items::load_items(&repo("data/post/rlvr_quartz.jsonl")).unwrap();
    let eval = rlp::eval::items::load_items(&repo("data/eval/quartz.jsonl")).unwrap();
    assert!(post.len() >= 900, "{} items", post.len());
    let seen: std::collections::HashSet<(String, Vec<String>)> = eval.iter().map(|i| (i.question.clone(), i.choices.clone())).collect();
    assert!(post.iter().all(|i| !seen.contains(&(i.question.clone(), i.choices.clone()))));
    let ids: std::collections::HashSet<&str> = eval.iter().map(|i| i.id.as_str()).collect();
    assert!(post.iter().all(|i| !ids.contains(i.id.as_str()) && i.choices.len() == 2));
}

#[test]
fn rlvr_question_order_covers_each_epoch_once_and_resumes() {
    let mut o = rlvr::QuestionOrder::new(5, 3).unwrap();
    let first: Vec<usize> = o.next_batch(3).into_iter().chain(o.next_batch(2)).collect();
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3, 4], "one epoch visits every question once");
    assert_eq!(o.epoch(), 0);
    let saved = serde_json::to_string(o.state()).unwrap();
    let next: Vec<usize> = o.next_batch(7);
    assert_eq!(o.epoch(), 2);
    let mut again = rlvr::QuestionOrder::new(5, 3).unwrap();
    again.restore(serde_json::from_str(&saved).unwrap()).unwrap();
    assert_eq!(again.next_batch(7), next);
    let e = rlvr::QuestionOrder::new(6, 3).unwrap().restore(serde_json::from_str(&saved).unwrap()).unwrap_err().to_string();
    assert!(e.contains("saved for 5 questions"), "{e}");
    assert!(rlvr::QuestionOrder::new(0, 3).is_err());
}

#[test]
fn seeded_sampling_does_not_depend_on_how_questions_are_split() {
    let (model, tok) = tiny();
    let q2 = Item { question: "What is 5 + 1?".into(), ..item() };
    let prompts: Vec<Vec<u32>> = [item(), q2].iter().map(|it| rlvr::prompt(&tok, it, PromptLayout::Bench, true).unwrap()).collect();
    let sp = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0 };
    let at = |first_question, step| rlvr::StepSeed { seed: 7, step, first_question };
    let spec = GenSpec { think_budget: 4, answer_tokens: 3, sampling: Some(sp), answer_sampling: Some(sp) };
    let both = rlvr::sample_groups_seeded(&model, &tok, &prompts, 3, &spec, at(10, 2)).unwrap();
    let one = rlvr::sample_groups_seeded(&model, &tok, &prompts[..1], 3, &spec, at(10, 2)).unwrap();
    let two = rlvr::sample_groups_seeded(&model, &tok, &prompts[1..], 3, &spec, at(11, 2)).unwrap();
    assert_eq!(both, [one, two].concat());
    let other_step = rlvr::sample_groups_seeded(&model, &tok, &prompts, 3, &spec, at(10, 3)).unwrap();
    assert_ne!(both, other_step, "another step draws other samples");
    assert!(both[..3].iter().any(|g| g != &both[0]), "the G samples of a question differ");
}

/// The blocks compose into SFT that learns: a few AdamW steps on the miniature's worked-tally
/// pairs lower the mean response NLL of held-out pairs (other tallies, same stream, later).
#[test]
fn sft_steps_lower_the_response_loss_of_held_out_pairs() {
    use candle_nn::Optimizer;
    use rlp::demo::post::sft_pairs;
    let loaded = weights::load(&test_data("tiny-think")).unwrap();
    let tok = Tok::from_tokenizer(loaded.tokenizer.unwrap(), false, "tiny-think").unwrap();
    let (model, vars) = loaded.model.into_vars().unwrap();
    let pairs = sft_pairs(0, 96, &Default::default());
    let recs: Vec<SftRecord> = pairs.iter().enumerate().map(|(i, p)| SftRecord { source: format!("pair {i}"), example: SftExample::Pair { prompt: p.prompt.clone(), response: p.response.clone() } }).collect();
    let train = tokenize_sft(&tok, &recs[..64], None, None).unwrap();
    let heldout = tokenize_sft(&tok, &recs[64..], None, None).unwrap();
    let eos = tok.eos_ids[0];
    let heldout_loss = |m: &Model| -> f32 {
        let mut p = SftPacker::in_order(heldout.tokens.len(), eos).unwrap();
        let windows: Vec<_> = (0..4).map(|_| p.next_window(&heldout, 64).unwrap()).collect();
        let (ids, targets, mask, layout) = sft_batch(&windows, true, &Device::Cpu).unwrap();
        let logits = m.logits(&m.forward_hidden(&ids, &layout, None).unwrap()).unwrap();
        sft_loss(&logits, &targets, &mask).unwrap().to_scalar::<f32>().unwrap()
    };
    let before = heldout_loss(&model.detached().unwrap());
    let mut opt = candle_nn::AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), candle_nn::ParamsAdamW { lr: 3e-3, weight_decay: 0.0, ..Default::default() }).unwrap();
    let mut packer = SftPacker::new(train.tokens.len(), 1, eos).unwrap();
    for _ in 0..12 {
        let windows: Vec<_> = (0..4).map(|_| packer.next_window(&train, 64).unwrap()).collect();
        let (ids, targets, mask, layout) = sft_batch(&windows, true, &Device::Cpu).unwrap();
        let logits = model.logits(&model.forward_hidden(&ids, &layout, None).unwrap()).unwrap();
        opt.backward_step(&sft_loss(&logits, &targets, &mask).unwrap()).unwrap();
    }
    let after = heldout_loss(&model.detached().unwrap());
    assert!(after < 0.5 * before, "held-out response NLL {before:.3} -> {after:.3}");
}

// ---------------------------------------------------------------- sft and rlvr through the trainer

/// Step 1's logged loss is the mean NLL of the response tokens of the windows it packed, as
/// the library computes it from the initial model, and not the mean over all tokens.
#[test]
fn sft_trainer_loss_is_the_response_nll_of_its_windows() {
    use rlp::train::trainer::Trainer;
    let cfg = single_thread_config("post-sft.toml", &["train.steps=1", "optim.warmup_steps=0", "data.contexts_per_step=4"]);
    let (model, tok) = weights::load_for_thinking(&cfg.model.path, cfg.model.add_think_tokens, "test").unwrap();
    let recs = load_sft(&cfg.data.path).unwrap();
    let train = &recs[..recs.len() - cfg.data.heldout_docs];
    let docs = tokenize_sft(&tok, train, None, Some(cfg.data.max_context)).unwrap();
    let mut packer = SftPacker::new(docs.tokens.len(), cfg.train.seed, tok.eos_ids[0]).unwrap();
    let windows: Vec<_> = (0..4).map(|_| packer.next_window(&docs, cfg.data.max_context).unwrap()).collect();
    let (ids, targets, mask, layout) = sft_batch(&windows, true, &Device::Cpu).unwrap();
    let logits = model.logits(&model.forward_hidden(&ids, &layout, None).unwrap()).unwrap();
    let want = sft_loss(&logits, &targets, &mask).unwrap().to_scalar::<f32>().unwrap() as f64;
    let all_tokens = sft_loss(&logits, &targets, &mask.ones_like().unwrap()).unwrap().to_scalar::<f32>().unwrap() as f64;
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(cfg, dir.path(), false).unwrap().run().unwrap();
    let m = &metrics(dir.path())[0];
    let got = m["loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "trainer loss {got}, response NLL {want}");
    assert!((all_tokens - want).abs() > 1e-2, "the prompt tokens would change the loss ({all_tokens} vs {want}): the test could not tell");
    let trained = rlp::objective::sft::trained_count(&mask).unwrap() as u64;
    assert_eq!(m["response_tokens_step"].as_u64().unwrap(), trained);
    assert!(trained < 4 * 128, "some targets are prompt tokens");
}

fn assert_resume_exact(config: &str, sets: &[&str]) {
    use rlp::train::trainer::Trainer;
    // a constant rate: a run of 2 steps and one of 4 share their schedule only then
    let with = |extra: &[&str]| single_thread_config(config, &[sets, &["checkpoint.every=2", "checkpoint.keep_last=3", "optim.schedule=constant", "optim.warmup_steps=0"], extra].concat());
    let straight = tempfile::tempdir().unwrap();
    Trainer::new(with(&["train.steps=4"]), straight.path(), false).unwrap().run().unwrap();
    let split = tempfile::tempdir().unwrap();
    Trainer::new(with(&["train.steps=2"]), split.path(), false).unwrap().run().unwrap();
    Trainer::new(with(&["train.steps=4"]), split.path(), true).unwrap().run().unwrap();
    assert_eq!(without_timings(&metrics(straight.path())), without_timings(&metrics(split.path())), "{config}");
    let (a, b) = (checkpoint_weights(straight.path(), 4), checkpoint_weights(split.path(), 4));
    assert_eq!(a, b, "{config}: resumed weights differ");
    let (first, _) = (checkpoint_weights(straight.path(), 2), ());
    assert_ne!(first, a, "{config}: steps 3 and 4 changed nothing, the comparison proves little");
}

#[test]
fn sft_resumes_exactly() {
    assert_resume_exact("post-sft.toml", &["data.contexts_per_step=4"]);
}

#[test]
fn rlvr_resumes_exactly() {
    // with a KL term: the reference must be the model as loaded, not the checkpoint resumed from
    assert_resume_exact("post-rlvr.toml", &["data.contexts_per_step=4", "rollout.g=4", "objective.kl_coef=0.05", "objective.minibatches=2"]);
}

/// The trainer's SFT lowers the response NLL of held-out pairs (the config's last 32).
#[test]
fn sft_trainer_lowers_held_out_response_loss() {
    use rlp::train::trainer::Trainer;
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(single_thread_config("post-sft.toml", &[]), dir.path(), false).unwrap();
    let before = t.sft_heldout_nll().unwrap().unwrap();
    t.run().unwrap();
    let m = metrics(dir.path());
    let after = m.last().unwrap()["heldout_response_nll"].as_f64().unwrap();
    eprintln!("held-out response NLL {before:.4} -> {after:.4}");
    assert!(after < 0.8 * before, "held-out response NLL {before:.4} -> {after:.4}");
}

/// Greedy think-then-answer accuracy on `items` (the demo's evaluation rule: 2 answer tokens).
fn greedy_accuracy(model: &Model, tok: &Tok, items: &[Item]) -> f64 {
    let spec = GenSpec { think_budget: 16, answer_tokens: 2, sampling: None, answer_sampling: None };
    let prompts: Vec<Vec<u32>> = items.iter().map(|it| rlvr::prompt(tok, it, PromptLayout::Raw, true).unwrap()).collect();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let gens = rlp::eval::generate::think_then_answer(model, tok, &prompts, &spec, &mut rng).unwrap();
    let right = gens.iter().zip(items).filter(|(g, it)| rlvr::grade_sample(it, &tok.decode(&g.answer).unwrap(), g.closed, true, &RewardSpec::default()).correct).count();
    right as f64 / items.len() as f64
}

/// RLVR on the demo's shipped base and the tally items raises greedy exact-match accuracy on
/// 300 other tallies (seed 1's stream, none a training item) by more than two standard errors
/// of the difference (√(se_before² + se_after²), stricter than two of `before` alone); its
/// sampled training reward rises too. Measured 2026-12-02: 0.560 -> 0.767 (se of the difference
/// 0.038), training reward 0.478 -> 0.737; 147 s in release beside other builds.
///
/// How configs/post-rlvr.toml was chosen, on *validation* streams only (`examples/rlvr_probe.rs`,
/// greedy accuracy on the first 400 tallies of seeds 2 and 3 that are not training items):
/// - The old settings, 512 items, 40 steps of 16 questions, LR 1e-4 cosine: seed 2
///   0.543 -> 0.575, seed 3 0.585 -> 0.630 (the held-out seed 1 had reached 0.601 -> 0.653 at
///   best, under the 0.659 bar of two standard errors).
/// - More updates on the same 512 (32 questions, LR 4e-4 constant, 100 steps = 6.25 epochs)
///   memorise them: greedy on the training items 0.494 -> 0.760, on seed 2 only 0.588, seed 3
///   0.638. The cause of the small gains was this: too few items for the updates, and too few
///   updates on them.
/// - The same settings on 4,096 items (3,200 questions, under one epoch as in the paper's RLVR),
///   the config now: seed 2 0.543 -> 0.750, seed 3 0.585 -> 0.798.
/// - Alternatives, 100 steps on an 8,192-item file, seed 2 (base 0.525 on its 400): the chosen
///   settings 0.743; GRPO advantages 0.745; cosine to 4e-5 0.698; LR 2e-4 0.688; kl_coef 0.1
///   0.613; G 16 × 16 questions 0.708; T 1.0 0.738; 200 steps of 16 questions at LR 1e-4 0.660.
///   LR 1e-3 (16 questions, 512 items) fell to 0.478 at step 50 before recovering.
///
/// Seed 1, asserted on here, was not looked at while choosing. Known: the trained policy
/// solves 3-5-digit tallies almost always but 6-digit ones less often than the base (seed 2:
/// 20/104 -> 11/104, its working usually goes wrong at the third digit): their groups end all
/// wrong, so no gradient holds them up; a KL term keeps them (22/110 at kl_coef 0.1) but gains
/// less overall.
#[test]
fn rlvr_raises_exact_match_accuracy_on_held_out_tallies() {
    use rlp::train::trainer::Trainer;
    let cfg = single_thread_config("post-rlvr.toml", &[]);
    let train = rlp::eval::items::load_items(&cfg.data.path).unwrap();
    let seen: std::collections::HashSet<&str> = train.iter().map(|t| t.question.as_str()).collect();
    let heldout: Vec<Item> = rlp::demo::post::rlvr_items(1, 3000, &Default::default())
        .into_iter()
        .filter(|q| !seen.contains(q.question.as_str()))
        .take(300)
        .enumerate()
        .map(|(i, q)| Item { id: format!("h{i}"), question: q.question, answer: q.answer, choices: vec![] })
        .collect();
    assert_eq!(heldout.len(), 300, "too few held-out tallies are not training items");
    let (base, tok) = weights::load_for_thinking(&cfg.model.path, false, "test").unwrap();
    let before = greedy_accuracy(&base, &tok, &heldout);
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(cfg, dir.path(), false).unwrap().run().unwrap();
    let (after_model, _) = weights::load_for_thinking(&rlp::run_dir::checkpoints(dir.path()).unwrap().pop().unwrap().1, false, "test").unwrap();
    let after = greedy_accuracy(&after_model.detached().unwrap(), &tok, &heldout);
    let m = metrics(dir.path());
    let reward = |r: &[serde_json::Value]| r.iter().map(|v| v["reward_mean"].as_f64().unwrap()).sum::<f64>() / r.len() as f64;
    let (first, last) = (reward(&m[..10]), reward(&m[m.len() - 10..]));
    let n = heldout.len() as f64;
    let se = ((before * (1.0 - before) + after * (1.0 - after)) / n).sqrt();
    eprintln!("greedy held-out accuracy {before:.3} -> {after:.3} (se of the difference {se:.3}); sampled training reward {first:.3} (first 10 steps) -> {last:.3} (last 10)");
    assert!(before > 0.1 && before < 0.9, "the base should get some items right and some wrong: {before}");
    assert!(last > first, "the sampled training reward did not rise: {first:.3} -> {last:.3}");
    assert!(after > before + 2.0 * se, "greedy held-out accuracy {before:.3} -> {after:.3} (se of the difference {se:.3})");
}
