//! `rlp demo --quick` end to end: every stage writes its files, `results.json` has every field
//! and every number in it is finite, the gate is the base's accuracy on the held-out tallies, and
//! the same seed gives the same results whether the runs go through child `rlp` processes or
//! this process.

use rlp::demo::run::{demo, evaluate_answers, DemoArgs};
use rlp::demo::synth::{answer_task, AnswerItem};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn results(out: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("seconds"); // wall time, the one field that may differ
    v
}

fn finite(v: &Value, key: &str) -> f64 {
    let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"));
    assert!(x.is_finite(), "{key} = {x}");
    x
}

#[test]
fn quick_demo_writes_every_stage_and_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let args = |out: &Path, bin: Option<PathBuf>| DemoArgs { quick: true, out: out.to_path_buf(), seed: 0, seeds: 1, pretrain_base: false, post_train: false, rlp_bin: bin };
    demo(&args(a.path(), Some(PathBuf::from(env!("CARGO_BIN_EXE_rlp"))))).unwrap(); // RLP and RPT side by side
    demo(&args(b.path(), None)).unwrap(); // one after the other, in this process
    let out = a.path();
    for f in ["data/train.jsonl", "data/heldout.jsonl", "data/answers.jsonl", "base/model.safetensors", "base/config.json", "report.md", "results.json", "accuracy.png", "rlp-reward.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    for run in ["rlp", "rpt", "cpt"] {
        let metrics = std::fs::read_to_string(out.join(run).join("metrics.jsonl")).unwrap();
        assert!(!metrics.is_empty(), "{run}: no metrics");
        for line in metrics.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert!(v["loss"].as_f64().is_some_and(f64::is_finite), "{run}: {line}");
        }
        assert!(out.join(run).join("checkpoints").is_dir(), "{run}: no checkpoint");
    }

    let r: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["seed"], 0);
    assert!(finite(&r, "seconds") > 0.0);
    let gate = &r["gate"];
    let (think, no_think) = (finite(gate, "base_acc_think"), finite(gate, "base_acc_no_think"));
    assert!(gate["passed"].is_boolean());
    for m in ["base", "cpt", "rlp", "rpt"] {
        let v = &r["models"][m];
        for k in ["acc_think", "acc_no_think", "acc_best", "acc_best_se"] {
            assert!((0.0..=1.0).contains(&finite(v, k)), "{m}.{k} = {}", v[k]);
        }
        assert_eq!(finite(v, "acc_best"), finite(v, "acc_think").max(finite(v, "acc_no_think")));
        assert!(finite(v, "n") >= 300.0, "{m}: fewer than 300 evaluation items");
        assert!(finite(v, "heldout_nll") > 0.0);
        assert!(finite(v, "flops_total") >= 0.0);
    }
    // CPT got the RLP run's FLOPs (within one step's rounding)
    let (rlp, cpt) = (finite(&r["models"]["rlp"], "flops_total"), finite(&r["models"]["cpt"], "flops_total"));
    assert!(rlp > 0.0 && cpt >= rlp && cpt < rlp * 1.2, "CPT FLOPs {cpt:e} vs RLP {rlp:e}");

    // The gate is the base's accuracy on the held-out tallies of the seed's own stream.
    let items: Vec<AnswerItem> = std::fs::read_to_string(out.join("data/answers.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(items[..], answer_task(0, 150)[..items.len()]);
    let base = evaluate_answers(&out.join("base"), &items, 0).unwrap();
    assert_eq!((base.acc_think, base.acc_no_think), (think, no_think));
    assert_eq!(base.n, items.len());

    assert_eq!(results(a.path()), results(b.path()), "same seed, different results");
}
