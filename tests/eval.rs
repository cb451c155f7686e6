//! `rlp eval` and `rlp report` on the tiny-rlp fixture: determinism, metric definitions, bad input.

mod common;

use common::write_file;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlp::eval::cli::{load_model, run_eval, EvalArgs};
use rlp::eval::{think_eval, HeldOut};
use rlp::report::cli::{run_report, ReportArgs};
use rlp::rollout::{no_think_scores, Prompt, RolloutParams};
use rlp::sampling::SamplingParams;
use std::path::{Path, PathBuf};

const TINY: &str = "tests/data/tiny-rlp";
const CORPUS: &str = "tests/data/corpus/small";

fn args(task: &str, out: &Path) -> EvalArgs {
    EvalArgs {
        model: Some(PathBuf::from(TINY)),
        task: task.to_string(),
        config: None,
        run: None,
        limit: Some(6),
        samples: Some(3),
        think_budget: Some(4),
        answer_tokens: 6,
        temperature: Some(0.7),
        top_p: Some(1.0),
        out: Some(out.to_path_buf()),
        seed: Some(7),
        data: Some(PathBuf::from(CORPUS)),
        heldout_docs: Some(1),
        text_field: Some("text".into()),
        min_prefix: Some(4),
        max_context: Some(32),
        add_think_tokens: false,
        batch: 4,
        device: "cpu".into(),
    }
}

#[test]
fn same_seed_same_numbers_for_every_task_kind() {
    let dir = tempfile::tempdir().unwrap();
    let set = write_file(dir.path(), "set.jsonl", "{\"question\": \"What is 2 + 3?\", \"answer\": \"5\"}\n{\"question\": \"Pick\", \"answer\": \"B\", \"choices\": [\"x\", \"y\", \"z\"]}\n");
    for task in [
        "think".to_string(),
        "nll".to_string(),
        format!("jsonl:{}", set.display()),
        "gsm8k".to_string(),
    ] {
        let a = run_eval(&args(&task, &dir.path().join("a.json"))).unwrap();
        let b = run_eval(&args(&task, &dir.path().join("b.json"))).unwrap();
        assert_eq!(a.metrics, b.metrics, "{task}");
        assert_eq!(a.examples, b.examples, "{task}");
        assert!(a.metrics.values().all(|v| v.is_finite()), "{task}: {:?}", a.metrics);
    }
    // a different seed samples different thoughts
    let mut other = args("think", &dir.path().join("c.json"));
    other.seed = Some(8);
    let c = run_eval(&other).unwrap();
    let a = run_eval(&args("think", &dir.path().join("a.json"))).unwrap();
    assert_ne!(a.metrics["logp_think"], c.metrics["logp_think"]);
}

#[test]
fn think_metrics_agree_with_their_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_eval(&args("think", &dir.path().join("t.json"))).unwrap();
    let m = &r.metrics;
    for key in ["acc_no_think", "acc_think", "acc_think_best", "thought_closed_frac"] {
        assert!((0.0..=1.0).contains(&m[key]), "{key} = {}", m[key]);
    }
    assert!((m["info_gain"] - (m["logp_think"] - m["logp_no_think"])).abs() < 1e-9);
    assert!(m["logp_think_best"] >= m["logp_think"] - 1e-9);
    assert!(m["acc_think_best"] >= m["acc_think"] - 1e-9);
    assert!(m["thought_len_mean"] >= 1.0 && m["thought_len_max"] <= 4.0);
    assert_eq!((r.n, m["samples"]), (6, 3.0));

    // logp_no_think through an independent path: the rollout module's S_ema scorer
    let (model, tok) = load_model(Path::new(TINY), false, true).unwrap();
    let contexts = vec![HeldOut {
        prefix: tok.encode("The river ran past the old").unwrap(),
        target: tok.encode(" mill").unwrap()[0],
    }];
    let p = RolloutParams {
        g: 2,
        budget: 3,
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
        },
        think_id: tok.think_id,
        end_think_id: tok.end_think_id,
        banned: tok.eos_ids.clone(),
        separator: vec![],
        guess_tokens: 0,
    };
    let m = think_eval(&model, &contexts, &p, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    let s_ema = no_think_scores(
        &model,
        &[Prompt {
            prefix: &contexts[0].prefix,
            target: contexts[0].target,
        }],
    )
    .unwrap();
    assert!(
        (m["logp_no_think"] - s_ema[0] as f64).abs() < 1e-4,
        "{} vs {}",
        m["logp_no_think"],
        s_ema[0]
    );
}

#[test]
fn nll_metrics_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args("nll", &dir.path().join("n.json"));
    a.limit = Some(40);
    let r = run_eval(&a).unwrap();
    let m = &r.metrics;
    assert_eq!(m["tokens"], 40.0);
    assert!((m["ppl"] - m["nll"].exp()).abs() < 1e-6 * m["ppl"]);
    assert!((m["bits_per_byte"] - m["nll"] * m["tokens"] / std::f64::consts::LN_2 / m["bytes"]).abs() < 1e-9);
    // a random 512-row model is near uniform: nll close to ln 512 = 6.24
    assert!(m["nll"] > 4.0 && m["nll"] < 9.0, "{}", m["nll"]);
}

#[test]
fn benchmark_result_file_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mmlu.json");
    let r = run_eval(&args("mmlu", &out)).unwrap();
    assert_eq!(r.n, 6);
    for key in [
        "greedy",
        "pass@1",
        "no_answer_frac",
        "thought_len_mean",
        "thought_closed_frac",
        "answer_len_mean",
    ] {
        assert!(r.metrics.contains_key(key), "missing {key}: {:?}", r.metrics);
    }
    let back = rlp::eval::EvalResult::read(&out).unwrap();
    assert_eq!(back.metrics, r.metrics);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in ["task", "model", "n", "metrics"] {
        assert!(json.get(key).is_some(), "{key}");
    }
    // without thinking: no thought metrics
    let mut a = args("mmlu", &out);
    a.think_budget = Some(0);
    let r = run_eval(&a).unwrap();
    assert!(!r.metrics.contains_key("thought_len_mean"));
}

#[test]
fn bad_eval_files_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = |file: &Path| {
        format!(
            "{:#}",
            run_eval(&args(&format!("jsonl:{}", file.display()), &dir.path().join("x.json"))).unwrap_err()
        )
    };
    let missing = dir.path().join("nope.jsonl");
    assert!(err(&missing).contains("cannot read eval file") && err(&missing).contains("nope.jsonl"));
    let bad = write_file(
        dir.path(),
        "bad.jsonl",
        "{\"question\": \"q\", \"answer\": \"1\"}\n\n{\"question\": \"q\", \"answer\": \n",
    );
    assert!(err(&bad).contains("bad.jsonl:3: not valid JSON"), "{}", err(&bad));
    let empty = write_file(dir.path(), "empty.jsonl", "{\"question\": \"q\", \"answer\": \"\"}\n");
    assert!(
        err(&empty).contains("empty.jsonl:1: `answer` is empty"),
        "{}",
        err(&empty)
    );
    let nothing = write_file(dir.path(), "nothing.jsonl", "\n\n");
    assert!(err(&nothing).contains("holds no items"), "{}", err(&nothing));
    let e = format!(
        "{:#}",
        run_eval(&args("gsm9k", &dir.path().join("x.json"))).unwrap_err()
    );
    assert!(e.contains("unknown task `gsm9k`"), "{e}");
    let mut a = args("think", &dir.path().join("x.json"));
    a.data = None;
    assert!(format!("{:#}", run_eval(&a).unwrap_err()).contains("needs --data"));
}

#[test]
fn a_model_without_think_tokens_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(TINY).join(f), dir.path().join(f)).unwrap();
    }
    let texts = [
        "the river ran past the mill and the lamp",
        "a lamp by the river, a mill by the lamp",
    ];
    let tok = rlp::tokenizer::train_byte_level_bpe(texts.iter(), 300, &["<|endoftext|>"]).unwrap();
    tok.save(dir.path().join("tokenizer.json"), false).unwrap();
    let mut a = args("gsm8k", &dir.path().join("x.json"));
    a.model = Some(dir.path().to_path_buf());
    let e = format!("{:#}", run_eval(&a).unwrap_err());
    assert!(
        e.contains("has no <think>/</think> tokens")
            && e.contains("--add-think-tokens")
            && e.contains("--think-budget 0"),
        "{e}"
    );
    // the two ways out both work
    a.think_budget = Some(0);
    run_eval(&a).unwrap();
    a.think_budget = Some(2);
    a.add_think_tokens = true;
    run_eval(&a).unwrap();
}

#[test]
fn report_writes_table_and_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let evals = dir.path().join("evals");
    run_eval(&args("quartz", &evals.join("quartz.json"))).unwrap();
    run_eval(&args("think", &evals.join("think.json"))).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let lines: String = (1..=5).map(|s| format!("{{\"step\": {s}, \"reward_mean\": {}, \"s_pred_mean\": -3.0, \"s_ema_mean\": -2.5, \"thought_len_mean\": {}}}\n", -0.5 + 0.1 * s as f64, 8 + s)).collect();
    write_file(&run, "metrics.jsonl", &lines);
    let out = dir.path().join("report");
    let md = run_report(&ReportArgs {
        dirs: vec![evals, run],
        out: out.clone(),
    })
    .unwrap();
    let text = std::fs::read_to_string(md).unwrap();
    assert!(
        text.contains("| quartz greedy |")
            && text.contains("| think acc_think |")
            && text.contains("| Science Avg (greedy) |"),
        "{text}"
    );
    for png in ["eval-scores.png", "run-rewards.png", "run-thought-len.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
        assert!(bytes.len() > 5_000, "{png}: {} bytes", bytes.len());
        assert!(text.contains(png), "{png} not linked");
    }
    let e = format!(
        "{:#}",
        run_report(&ReportArgs {
            dirs: vec![dir.path().join("missing")],
            out
        })
        .unwrap_err()
    );
    assert!(e.contains("is not a directory"), "{e}");
}
