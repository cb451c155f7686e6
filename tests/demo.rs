//! The demo's foundation: the synthetic corpus (determinism, thoughts only where they belong,
//! correct answers and workings), the digit-splitting tokenizer, and fresh random models
//! (statistics, save/load round trip, a few training steps on the corpus).

use candle_core::{DType, Device, Tensor};
use rlp::demo::data::{train_demo_tokenizer, write_demo_data, DemoSizes};
use rlp::demo::synth::{answer_task, generate_corpus, generate_documents, AnswerItem, CorpusKind, Segment, LABELS, MAX_DIGITS, MIN_DIGITS, NULL_THOUGHT, PRETRAIN_PAUSE_FRACTION, PRETRAIN_WORKED_FRACTION};
use rlp::model::init::{initializer_range, parameter_shapes, random_model, small_config_json, Init, SmallShape};
use rlp::model::{target_logprobs, weights, Arch, Config, Model};
use rlp::tokenizer::Tok;
use rlp::train::optim::{AdamW, AdamWConfig};
use std::path::Path;

const KINDS: [CorpusKind; 3] = [CorpusKind::Pretrain, CorpusKind::Train, CorpusKind::Heldout];

fn demo_tok(n_docs: usize, vocab: usize) -> Tok {
    let texts = generate_corpus(0, n_docs, CorpusKind::Pretrain);
    Tok::from_tokenizer(train_demo_tokenizer(&texts, vocab).unwrap(), false, "demo").unwrap()
}

fn tiny_shape() -> SmallShape {
    SmallShape { layers: 2, hidden: 64, heads: 4, kv_heads: 2, ffn: 128, max_positions: 512, tie_embeddings: true }
}

fn tiny_config(arch: Arch, vocab: usize, tie: bool) -> Config {
    let shape = SmallShape { tie_embeddings: tie, ..tiny_shape() };
    Config::from_json(small_config_json(arch, vocab, &shape, Some(0)).unwrap()).unwrap()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

// ---------------------------------------------------------------- corpus

#[test]
fn corpus_is_deterministic_per_seed() {
    let sizes = DemoSizes { pretrain_docs: 30, train_docs: 20, heldout_docs: 10 };
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let da = write_demo_data(a.path(), 11, sizes).unwrap();
    let db = write_demo_data(b.path(), 11, sizes).unwrap();
    let dc = write_demo_data(c.path(), 12, sizes).unwrap();
    for (x, y, z) in [(&da.pretrain, &db.pretrain, &dc.pretrain), (&da.train, &db.train, &dc.train), (&da.heldout, &db.heldout, &dc.heldout), (&da.answers, &db.answers, &dc.answers)] {
        assert_eq!(read(x), read(y), "{} differs between two runs of seed 11", x.display());
        assert_ne!(read(x), read(z), "{} is the same for seeds 11 and 12", x.display());
    }
    // The splits are different streams of one seed, and a longer corpus extends a shorter one.
    assert_ne!(generate_corpus(11, 5, CorpusKind::Train), generate_corpus(11, 5, CorpusKind::Heldout));
    assert_eq!(generate_corpus(11, 5, CorpusKind::Train)[..], generate_corpus(11, 9, CorpusKind::Train)[..5]);
}

#[test]
fn corpus_files_are_read_by_the_corpus_reader() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_demo_data(dir.path(), 3, DemoSizes { pretrain_docs: 7, train_docs: 5, heldout_docs: 4 }).unwrap();
    for (path, kind, n) in [(&data.pretrain, CorpusKind::Pretrain, 7), (&data.train, CorpusKind::Train, 5), (&data.heldout, CorpusKind::Heldout, 4)] {
        let corpus = rlp::data::corpus::Corpus::open(path, "text").unwrap();
        let texts: Vec<String> = corpus.documents().map(|d| d.unwrap().text).collect();
        assert_eq!(texts, generate_corpus(3, n, kind));
    }
    let items: Vec<AnswerItem> = std::fs::read_to_string(&data.answers).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(items, answer_task(3, 4));
}

#[test]
fn thoughts_sit_where_the_design_says() {
    for kind in KINDS {
        let docs = generate_documents(5, 400, kind);
        let (mut tallies, mut worked, mut segments, mut pauses) = (0, 0, 0, 0);
        for d in &docs {
            let text = d.render(kind.has_thoughts());
            let ps: Vec<_> = d.segments.iter().filter_map(|s| if let Segment::Problem(p) = s { Some(p) } else { None }).collect();
            assert!(!ps.is_empty(), "a document without a tally: {text}");
            if kind != CorpusKind::Pretrain {
                assert!(!text.contains("<think>") && !text.contains("</think>"), "{kind:?} has a thought: {text}");
                continue;
            }
            tallies += ps.len();
            segments += d.segments.len();
            // every thought is either a tally's working right before its answer, or the empty one
            for part in text.split("<think>").skip(1) {
                let (thought, _) = part.split_once("</think>").expect("a thought closes");
                if thought == format!(" {NULL_THOUGHT}") {
                    pauses += 1;
                } else {
                    worked += 1;
                }
            }
            assert_eq!(text.matches("is<think>").count(), ps.iter().filter(|p| p.worked).count(), "{text}");
            assert!(!text.contains(&format!("is<think> {NULL_THOUGHT}</think>")), "an empty thought at an answer: {text}");
        }
        if kind == CorpusKind::Pretrain {
            let share = worked as f64 / tallies as f64;
            assert!((share - PRETRAIN_WORKED_FRACTION).abs() < 0.05, "{worked} of {tallies} tallies worked");
            let share = pauses as f64 / segments as f64;
            assert!((share - PRETRAIN_PAUSE_FRACTION).abs() < 0.05, "{pauses} empty thoughts in {segments} segments");
        }
    }
}

/// The last digit of the sum of a tally's digits, read back from the prompt's text.
fn recompute(prompt: &str) -> u32 {
    let tally = prompt.rsplit("tally ").next().unwrap();
    let words: Vec<&str> = tally.strip_suffix(" is").unwrap().split(' ').collect();
    let mut sum = 0;
    for (w, label) in words.iter().zip(LABELS) {
        let digit = w.strip_prefix(label).unwrap_or_else(|| panic!("{w:?} has not the label {label}"));
        sum += digit.parse::<u32>().unwrap();
    }
    sum % 10
}

#[test]
fn answers_are_correct() {
    let items = answer_task(9, 300);
    assert!(items.len() > 500, "only {} answer items", items.len());
    for item in &items {
        assert_eq!(item.answer, recompute(&item.prompt).to_string(), "wrong answer for {:?}", item.prompt);
        assert!(!item.prompt.contains("<think>"));
        assert!((MIN_DIGITS..=MAX_DIGITS).contains(&item.digits));
    }
    for n in MIN_DIGITS..=MAX_DIGITS {
        assert!(items.iter().any(|i| i.digits == n), "no tally of {n} digits");
    }
}

#[test]
fn every_working_step_is_right_and_ends_in_the_answer() {
    let mut steps = 0;
    for text in generate_corpus(4, 600, CorpusKind::Pretrain) {
        for part in text.split("is<think>").skip(1) {
            let (thought, after) = part.split_once("</think>").unwrap();
            let before = text[..text.find(&format!("is<think>{part}")).unwrap()].replace(&format!("<think> {NULL_THOUGHT}</think>"), "");
            let question = before.rsplit("tally ").next().unwrap();
            let digits: Vec<u32> = question.split_whitespace().map(|w| w[1..].parse().unwrap()).collect();
            let mut sum = 0;
            for ((w, d), label) in thought.split_whitespace().zip(&digits).zip(LABELS) {
                sum = (sum + d) % 10;
                assert_eq!(*w, format!("{label}{sum}"), "wrong step in {thought:?} for {question:?}");
                steps += 1;
            }
            assert_eq!(thought.split_whitespace().count(), digits.len());
            assert!(after.starts_with(&format!(" {sum}.")), "thought {thought:?} then {after:?}");
        }
    }
    assert!(steps > 1000, "only {steps} steps checked");
}

// ---------------------------------------------------------------- tokenizer

#[test]
fn the_demo_tokenizer_encodes_answers_labels_and_thoughts_as_intended() {
    let tok = demo_tok(2000, 320);
    let pieces = |text: &str| -> Vec<String> { tok.encode(text).unwrap().iter().map(|&i| tok.id_to_token(i).unwrap()).collect() };
    // a tally: the answer is one token right after "is"; each labelled digit is a label and a digit
    assert_eq!(pieces("tally a4 b3 c8 is 5."), ["tally", "Ġa", "4", "Ġb", "3", "Ġc", "8", "Ġis", "Ġ5", "."]);
    // the RLP layout: prefix, <think>, working, </think>, the answer token
    assert_eq!(pieces(" is<think> a4 b7</think> 7."), ["Ġis", "<think>", "Ġa", "4", "Ġb", "7", "</think>", "Ġ7", "."]);
    assert_eq!(pieces(" a4<think> -</think> b3"), ["Ġa", "4", "<think>", "Ġ-", "</think>", "Ġb", "3"]);
    // real merges (the words are single tokens), and no token holds more than one digit
    assert_eq!(pieces(" copy a1 as a1."), ["Ġcopy", "Ġa", "1", "Ġas", "Ġa", "1", "."]);
    for id in 0..tok.vocab_size() as u32 {
        let t = tok.id_to_token(id).unwrap();
        assert!(t.chars().filter(|c| c.is_ascii_digit()).count() <= 1, "token {t:?} holds several digits");
        assert!(!t.contains("think") || t.starts_with('<'), "the tokenizer spent a merge on the think markers: {t:?}");
    }
    // Think markers are single special tokens, ids 1 and 2; text round-trips.
    assert_eq!((tok.think_id, tok.end_think_id, tok.eos_ids.clone()), (1, 2, vec![0]));
    let text = &generate_corpus(0, 1, CorpusKind::Pretrain)[0];
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == tok.think_id).count(), text.matches("<think>").count());
    assert_eq!(&tok.decode(&ids).unwrap(), text);
}

#[test]
fn the_shipped_base_is_the_demo_tokenizer_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    rlp::demo::run::write_shipped_base(dir.path()).unwrap();
    let loaded = weights::load(dir.path()).unwrap();
    assert_eq!(loaded.model.cfg.vocab_size, rlp::demo::run::BASE.vocab);
    let tok = Tok::from_tokenizer(loaded.tokenizer.unwrap(), false, "base").unwrap();
    // the shipped tokenizer is the one the pretraining corpus of BASE.seed trains
    let texts = generate_corpus(rlp::demo::run::BASE.seed, rlp::demo::run::BASE.pretrain_docs, CorpusKind::Pretrain);
    let fresh = Tok::from_tokenizer(train_demo_tokenizer(&texts, rlp::demo::run::BASE.vocab).unwrap(), false, "fresh").unwrap();
    for text in generate_corpus(1, 50, CorpusKind::Pretrain) {
        assert_eq!(tok.encode(&text).unwrap(), fresh.encode(&text).unwrap(), "{text}");
    }
}

// ---------------------------------------------------------------- random models

#[test]
fn random_init_has_the_right_shapes_and_statistics() {
    for arch in [Arch::Llama, Arch::Qwen3] {
        let cfg = tiny_config(arch, 300, false);
        let model = random_model(&cfg, 42).unwrap();
        let std = initializer_range(&cfg);
        assert_eq!(std, 0.02);
        let named = model.named_tensors();
        let expected = parameter_shapes(&cfg);
        assert_eq!(named.len(), expected.len());
        for ((name, t), (ename, shape, init)) in named.iter().zip(&expected) {
            assert_eq!((name, t.dims()), (ename, shape.as_slice()));
            let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let n = x.len() as f64;
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
            let sd = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            match init {
                Init::Normal => {
                    // 4096+ samples: the sample std is within a few percent of 0.02.
                    assert!((sd / std - 1.0).abs() < 0.06, "{name}: std {sd}");
                    assert!(mean.abs() < 4.0 * std / n.sqrt(), "{name}: mean {mean}");
                }
                Init::Ones => assert!(x.iter().all(|&v| v == 1.0), "{name} is not all ones"),
                Init::Zeros => assert!(x.iter().all(|&v| v == 0.0), "{name} is not all zeros"),
                other => panic!("{name}: {other:?} is a Mamba-2 initialisation, not one of a Llama/Qwen3 model"),
            }
        }
    }
}

fn all_values(m: &Model) -> Vec<f32> {
    m.named_tensors().iter().flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

#[test]
fn random_init_is_deterministic_per_seed() {
    let cfg = tiny_config(Arch::Llama, 300, true);
    let a = all_values(&random_model(&cfg, 7).unwrap());
    assert_eq!(a, all_values(&random_model(&cfg, 7).unwrap()));
    assert_ne!(a, all_values(&random_model(&cfg, 8).unwrap()));
}

#[test]
fn random_models_round_trip_through_save_and_load() {
    let tok = demo_tok(100, 300);
    let ids = tok.encode(&generate_corpus(1, 1, CorpusKind::Train)[0]).unwrap();
    for (arch, tie) in [(Arch::Llama, true), (Arch::Qwen3, true), (Arch::Llama, false)] {
        let model = random_model(&tiny_config(arch, tok.vocab_size(), tie), 5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        weights::save_dir(&model, Some(tok.inner()), dir.path(), DType::F32).unwrap();
        let loaded = weights::load(dir.path()).unwrap();
        assert_eq!(loaded.model.cfg.arch, arch);
        assert_eq!(loaded.model.cfg.tie_word_embeddings, tie);
        assert_eq!(all_values(&loaded.model), all_values(&model));
        let before: Vec<f32> = model.forward_logits(&[ids.clone()]).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let after: Vec<f32> = loaded.model.forward_logits(&[ids.clone()]).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(before, after, "{arch:?} logits changed through save/load");
        let reloaded_tok = Tok::from_tokenizer(loaded.tokenizer.unwrap(), false, "reloaded").unwrap();
        assert_eq!(reloaded_tok.encode(" 347").unwrap(), tok.encode(" 347").unwrap());
    }
}

/// Rows of `len + 1` corpus tokens: inputs are the first `len`, targets the last `len`.
fn token_rows(tok: &Tok, texts: &[String], len: usize) -> Vec<Vec<u32>> {
    let stream: Vec<u32> = texts.iter().flat_map(|t| tok.encode(t).unwrap()).collect();
    stream.chunks_exact(len + 1).map(|c| c.to_vec()).collect()
}

/// Mean next-token loss of `rows` (each `len + 1` tokens), differentiable.
fn next_token_loss(model: &Model, rows: &[Vec<u32>]) -> Tensor {
    let inputs: Vec<Vec<u32>> = rows.iter().map(|r| r[..r.len() - 1].to_vec()).collect();
    let targets: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
    let logits = model.forward_logits(&inputs).unwrap(); // [B, T, V]
    let (b, t, v) = logits.dims3().unwrap();
    let targets = Tensor::from_vec(targets, b * t, &Device::Cpu).unwrap();
    let lp = target_logprobs(&logits.reshape((b * t, v)).unwrap(), &targets).unwrap();
    lp.mean_all().unwrap().neg().unwrap()
}

#[test]
fn a_fresh_model_starts_at_chance_and_learns_the_corpus() {
    let tok = demo_tok(200, 300);
    let texts = generate_corpus(2, 60, CorpusKind::Pretrain);
    let rows = token_rows(&tok, &texts, 64);
    let model = random_model(&tiny_config(Arch::Llama, tok.vocab_size(), true), 1).unwrap();
    let (model, vars) = model.into_vars().unwrap();
    let chance = (tok.vocab_size() as f32).ln();
    let first: f32 = next_token_loss(&model, &rows[..8]).to_scalar().unwrap();
    assert!((first - chance).abs() < 0.1, "initial loss {first}, chance {chance}");
    let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), AdamWConfig::default()).unwrap();
    for step in 0..30 {
        let batch = &rows[(step * 4) % (rows.len() - 4)..][..4];
        let grads = next_token_loss(&model, batch).backward().unwrap();
        opt.step(&grads, 3e-3).unwrap();
    }
    let last: f32 = next_token_loss(&model, &rows[..8]).to_scalar().unwrap();
    assert!(last < first - 1.5, "30 steps took the loss only from {first} to {last}");
}

// ---------------------------------------------------------------- CLI

#[test]
fn init_model_writes_a_loadable_directory_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let tok_path = dir.path().join("tokenizer.json");
    demo_tok(50, 300).save(&tok_path).unwrap();
    let out = dir.path().join("model");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rlp"))
            .args(["init-model", "--arch", "qwen3", "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--seed", "3"])
            .arg("--tokenizer")
            .arg(&tok_path)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let loaded = weights::load(&out).unwrap();
    assert_eq!(loaded.model.cfg.arch, Arch::Qwen3);
    assert_eq!(loaded.model.cfg.num_hidden_layers, 2);
    assert_eq!(all_values(&loaded.model), all_values(&random_model(&loaded.model.cfg, 3).unwrap()));
    let second = run();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already holds a model"));
}
