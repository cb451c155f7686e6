//! `rlp demo --quick` end to end: every stage writes its files, every number is finite, and
//! the same seed gives the same table.

use rlp::demo::run::{demo, DemoArgs};
use std::path::Path;

/// The report's table rows (the header line with the wall time excluded).
fn table(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("report.md")).unwrap().lines().filter(|l| l.starts_with('|')).map(String::from).collect()
}

#[test]
fn quick_demo_writes_every_stage_and_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for out in [a.path(), b.path()] {
        demo(&DemoArgs { quick: true, out: out.to_path_buf(), seed: 0 }).unwrap();
    }
    let out = a.path();
    for f in ["data/pretrain.jsonl", "data/train.jsonl", "data/heldout.jsonl", "data/answers.jsonl", "data/tokenizer.json", "base/model.safetensors", "base/config.json", "report.md", "eval-scores.png", "rlp-rewards.png", "rpt-rewards.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    for run in ["pretrain", "rlp", "rpt", "cpt"] {
        let metrics = std::fs::read_to_string(out.join(run).join("metrics.jsonl")).unwrap();
        assert!(!metrics.is_empty(), "{run}: no metrics");
        for line in metrics.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["loss"].as_f64().is_some_and(f64::is_finite), "{run}: {line}");
        }
        assert!(out.join(run).join("checkpoints").is_dir(), "{run}: no checkpoint");
    }
    for model in ["base", "cpt", "rlp", "rpt"] {
        for task in ["nll", "think", "answers"] {
            let r = rlp::eval::EvalResult::read(&out.join("evals").join(model).join(format!("{task}.json"))).unwrap();
            assert!(!r.metrics.is_empty() && r.metrics.values().all(|v| v.is_finite()), "{model}/{task}: {:?}", r.metrics);
        }
    }
    let (ta, tb) = (table(a.path()), table(b.path()));
    assert!(ta.len() > 5, "table too short: {ta:?}");
    assert_eq!(ta, tb, "same seed, different tables");
    // the CPT run got the RLP run's FLOPs (within one step's rounding)
    let last = |run: &str| -> f64 {
        let text = std::fs::read_to_string(out.join(run).join("metrics.jsonl")).unwrap();
        serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap()).unwrap()["flops_total"].as_f64().unwrap()
    };
    let (rlp, cpt) = (last("rlp"), last("cpt"));
    assert!(cpt >= rlp && cpt < rlp * 1.2, "CPT FLOPs {cpt:e} vs RLP {rlp:e}");
}
