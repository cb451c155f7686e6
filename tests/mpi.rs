//! Data parallelism under a real `mpirun` (cargo feature `mpi`; Open MPI from
//! scripts/setup-mpi.sh) and a real `srun`: two ranks train the weights one process trains,
//! resume works across world sizes, and a hung or killed rank ends the job instead of leaving
//! the other waiting.
//!
//! Runs a private copy of the `rlp` binary of this build (or `$RLP_TEST_BIN`), as the target
//! directory may be shared with other builds that replace it; `mpirun` must be on the PATH (the
//! test installs nothing). As root, `--allow-run-as-root`; `--oversubscribe` lets 2 ranks share
//! fewer cores. The `srun` tests need a Slurm cluster of two nodes and `SLURM_CONF` naming it:
//! `scripts/slurm-local.sh start --nodes 2` makes one on this machine (each node its own network
//! namespace and host name, so the ranks talk TCP as on a cluster); scripts/test.sh starts it.
#![cfg(feature = "mpi")]

mod common;

use common::{checkpoint_weights, dir_weights, metrics, rlp_bin, send_signal, test_data};
use rlp::model;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn config() -> String {
    format!("{}/configs/tiny.toml", env!("CARGO_MANIFEST_DIR"))
}

fn train_args(run: &Path, sets: &[&str]) -> Vec<String> {
    let mut a = vec![
        "train".into(),
        "--config".into(),
        config(),
        "--out".into(),
        run.display().to_string(),
    ];
    for s in ["logging.progress=false", "train.threads=1"].iter().chain(sets) {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    a
}

fn mpirun(np: usize, args: &[String]) -> Command {
    mpirun_with(&[], np, args)
}

/// `mpirun` with `options` of its own before the program.
fn mpirun_with(options: &[&str], np: usize, args: &[String]) -> Command {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "mpirun not found: install Open MPI with scripts/setup-mpi.sh"
    );
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe"])
        .args(options)
        .args(["-np", &np.to_string()])
        .arg(rlp_bin())
        .args(args)
        .stdin(Stdio::null());
    c
}

fn check(what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How the ranks of a job are started.
#[derive(Clone, Copy, Debug)]
enum Launcher {
    Mpirun,
    /// `mpirun -H rlpnode1,rlpnode2`: one rank on each namespace node of scripts/slurm-local.sh,
    /// started through scripts/netns-ssh.sh as `ssh` starts them on a cluster.
    MpirunTwoHosts,
    Srun,
}

/// `srun --mpi=pmix` on the Slurm cluster `SLURM_CONF` names: `np` tasks, one per node.
fn srun(np: usize, args: &[String]) -> Command {
    let start = "start one with `scripts/slurm-local.sh start --nodes 2` and export \
                 SLURM_CONF=/tmp/rlp-slurm/slurm.conf";
    assert!(std::env::var_os("SLURM_CONF").is_some(), "SLURM_CONF is not set: {start}");
    // one line per node: "NAME STATE"; other tests' steps may be running (mix, alloc)
    let sinfo = Command::new("sinfo").args(["-h", "-N", "-o", "%N %t"]).output();
    let Ok(sinfo) = sinfo else {
        panic!("sinfo not found: {start}")
    };
    let nodes = String::from_utf8_lossy(&sinfo.stdout).to_string();
    let up = nodes
        .lines()
        .filter(|l| l.ends_with(" idle") || l.ends_with(" mix") || l.ends_with(" alloc"))
        .count();
    assert!(
        sinfo.status.success() && up >= np,
        "the Slurm cluster should have {np} nodes up, sinfo says:\n{nodes}{}\n{start}",
        String::from_utf8_lossy(&sinfo.stderr).trim()
    );
    let np = np.to_string();
    let mut c = Command::new("srun");
    c.args(["--mpi=pmix", "-N", &np, "-n", &np, "--ntasks-per-node=1"])
        .arg(rlp_bin())
        .args(args)
        .stdin(Stdio::null());
    c
}

fn launch(launcher: Launcher, np: usize, args: &[String]) -> Command {
    match launcher {
        Launcher::Mpirun => mpirun(np, args),
        Launcher::MpirunTwoHosts => {
            assert_eq!(np, 2, "two hosts, one rank each");
            assert!(
                Path::new("/run/netns/rlpnode1").exists() && Path::new("/run/netns/rlpnode2").exists(),
                "no namespace nodes rlpnode1, rlpnode2: start them with `scripts/slurm-local.sh start --nodes 2`"
            );
            let agent = format!("{}/scripts/netns-ssh.sh", env!("CARGO_MANIFEST_DIR"));
            mpirun_with(&["--mca", "plm_rsh_agent", &agent, "-H", "rlpnode1,rlpnode2"], np, args)
        }
        Launcher::Srun => srun(np, args),
    }
}

/// `rlp train` in one process (`np` = 1) or under `mpirun -np np`.
fn train(np: usize, run: &Path, sets: &[&str]) {
    train_on(Launcher::Mpirun, np, run, sets)
}

/// `rlp train` in one process (`np` = 1) or as `np` ranks started by `launcher`.
fn train_on(launcher: Launcher, np: usize, run: &Path, sets: &[&str]) {
    let args = train_args(run, sets);
    let out = if np == 1 {
        Command::new(rlp_bin()).args(&args).output()
    } else {
        launch(launcher, np, &args).output()
    };
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    check(&format!("rlp train on {np} rank(s) ({launcher:?})"), out);
    if np > 1 {
        let banner = format!("data parallel: {np} ranks");
        assert!(
            stdout.contains(&banner),
            "{} did not run as {np} ranks (not an MPI build?):\n{stdout}",
            rlp_bin().display()
        );
    }
}

/// Largest ‖a − b‖ / ‖a‖ over the parameter tensors, and the tensor it is found in.
fn worst_relative_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f64, String) {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let mut worst = (0.0, String::new());
    for ((name, x), (name_b, y)) in a.iter().zip(b) {
        assert_eq!(name, name_b);
        let rel =
            norm(&mut x.iter().zip(y).map(|(p, q)| (p - q) as f64)) / norm(&mut x.iter().map(|&p| p as f64)).max(1e-30);
        if rel >= worst.0 {
            worst = (rel, name.clone());
        }
    }
    worst
}

fn assert_same_weights(what: &str, a: &Path, b: &Path, step: u64) {
    let (rel, name) = worst_relative_difference(&checkpoint_weights(a, step), &checkpoint_weights(b, step));
    eprintln!("{what}: worst relative weight difference {rel:.2e} ({name})");
    assert!(rel <= 1e-6, "{what}: weights differ by {rel:e} relative in {name}");
}

/// Prefixes of equal length (max_context 8, every position at least 7 in): every batched
/// decode kernel sees the same shapes whichever rank samples a context, so the thoughts and
/// their scores are bitwise those of one process. And an AdamW ε well above the float noise of
/// gradient entries that cancel to ~0 (the G thoughts' advantages sum to zero, so gradient
/// through what they share cancels): with the default ε = 1e-8 Adam's step g/(|g|+ε) turns
/// ~1e-10 of summation-order noise in such entries into ~1e-3 of a step. With ε = 1e-3 the
/// update is lr·m/(√v+ε) ≈ m, proportional to the gradient, so a wrong gradient scale or a
/// missing share would show, while summation-order noise stays far below the tolerance.
const STRICT: [&str; 4] = [
    "data.max_context=8",
    "data.min_prefix=7",
    "optim.eps=1e-3",
    "optim.lr=1e-3",
];

/// Train 4 steps on 1 and on 2 ranks (started by `mpirun`); check rank 0's logs; return the
/// worst relative difference of the weights.
fn one_vs_two_ranks(sets: &[&str]) -> f64 {
    one_vs_two_ranks_on(Launcher::Mpirun, sets)
}

fn one_vs_two_ranks_on(launcher: Launcher, sets: &[&str]) -> f64 {
    one_vs_two_ranks_from(launcher, &test_data("tiny-rlp"), sets).0
}

/// The same, starting from the model in `init` (the config's `model.path` must name it); also
/// returns the one-process run's trained weights.
fn one_vs_two_ranks_from(launcher: Launcher, init: &Path, sets: &[&str]) -> (f64, Vec<(String, Vec<f32>)>) {
    let sets = [&["train.steps=4"][..], sets].concat();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(1, one.path(), &sets);
    train_on(launcher, 2, two.path(), &sets);
    let (m1, m2) = (metrics(one.path()), metrics(two.path()));
    assert_eq!(m1.len(), 4);
    assert_eq!(m2.len(), 4, "rank 0 alone writes metrics: one line per step");
    for (x, y) in m1.iter().zip(&m2) {
        // the same thoughts were sampled: same token counts, same rewards
        assert_eq!(x["generated_tokens_total"], y["generated_tokens_total"], "{sets:?}");
        assert_eq!(x["input_tokens_total"], y["input_tokens_total"]);
        for k in [
            "reward_mean",
            "reward_std",
            "s_pred_mean",
            "s_ema_mean",
            "thought_len_mean",
            "entropy",
            "grad_norm",
        ] {
            let (p, q) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-4 * p.abs().max(1.0),
                "{sets:?} step {}: {k} = {p} in one process, {q} on two ranks",
                x["step"]
            );
        }
    }
    let samples = std::fs::read_to_string(two.path().join("samples.jsonl")).unwrap();
    let contexts: Vec<u64> = samples
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["context"].as_u64().unwrap())
        .collect();
    assert!(
        !contexts.is_empty() && contexts.iter().all(|c| c % 2 == 0),
        "rank 0 writes its own contexts (0, 2): {contexts:?}"
    );
    let (rel, name) = worst_relative_difference(&checkpoint_weights(one.path(), 4), &checkpoint_weights(two.path(), 4));
    let (moved, _) = worst_relative_difference(&dir_weights(init), &checkpoint_weights(one.path(), 4));
    eprintln!("{sets:?}: worst relative weight difference {rel:.2e} ({name}); weights moved up to {moved:.2e}");
    assert!(
        moved > 1e-3,
        "{sets:?}: training hardly moved the weights ({moved:e}): the comparison would prove nothing"
    );
    (rel, checkpoint_weights(one.path(), 4))
}

/// The weights of tests/data/tiny-rlp, where the tiny config starts.
fn initial_weights() -> Vec<(String, Vec<f32>)> {
    dir_weights(&test_data("tiny-rlp"))
}

/// `RLP_FORCE_MPI=1` under `mpirun -np 1`, and as an MPI singleton: every collective runs (the path a one-rank NCCL smoke
/// test takes on a GPU), and with one rank the sums are identities, so the weights are bitwise
/// those of a plain single process.
#[test]
fn one_forced_mpi_rank_trains_exactly_the_single_process_weights() {
    let sets = ["train.steps=2"];
    let (plain, forced) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(1, plain.path(), &sets);
    let out = mpirun(1, &train_args(forced.path(), &sets)).env("RLP_FORCE_MPI", "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    check("rlp train on 1 forced MPI rank", out);
    assert!(stdout.contains("data parallel: gradients summed by MPI"), "the collectives did not run:\n{stdout}");
    assert_eq!(checkpoint_weights(plain.path(), 2), checkpoint_weights(forced.path(), 2), "one MPI rank must train the single-process weights");
    // the same as an MPI singleton, with no mpirun at all (how gpu-check.sh runs on a machine without one)
    let singleton = tempfile::tempdir().unwrap();
    let out = Command::new(rlp_bin()).args(train_args(singleton.path(), &sets)).env("RLP_FORCE_MPI", "1").env("OMPI_MCA_ess_singleton_isolated", "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    check("rlp train as a forced MPI singleton", out);
    assert!(stdout.contains("data parallel: gradients summed by MPI"), "the collectives did not run:\n{stdout}");
    assert_eq!(checkpoint_weights(plain.path(), 2), checkpoint_weights(singleton.path(), 2), "an MPI singleton must train the single-process weights");
    let (moved, _) = worst_relative_difference(&initial_weights(), &checkpoint_weights(plain.path(), 2));
    assert!(moved > 1e-4, "training hardly moved the weights ({moved:e}): the comparison would prove nothing");
}

#[test]
fn two_ranks_train_the_weights_one_process_trains() {
    // B = 4 contexts, G = 4, 2 per rank; then 2 minibatches per rollout batch (1 context per
    // rank per update).
    for extra in [&[][..], &["objective.minibatches=2"][..]] {
        let rel = one_vs_two_ranks(&[&STRICT[..], extra].concat());
        assert!(rel <= 1e-6, "{extra:?}: weights differ by {rel:e} relative");
    }
}

/// A fresh tiny NemotronH (`M*-M-`: Mamba-2, attention and MLP blocks, untied head) with
/// tiny-rlp's tokenizer, written to `dir`.
fn tiny_nemotron_h(dir: &Path) {
    use rlp::model::init::{nemotron_h_config_json, random_model, SmallShape};
    let tok = tokenizers::Tokenizer::from_file(test_data("tiny-rlp/tokenizer.json")).unwrap();
    let eos = tok.token_to_id("<|endoftext|>");
    let shape = SmallShape { hidden: 64, heads: 4, kv_heads: 2, ffn: 128, max_positions: 512, tie_embeddings: false, ..SmallShape::default() };
    let json = nemotron_h_config_json(tok.get_vocab_size(true), &shape, "M*-M-", eos).unwrap();
    let m = random_model(&model::Config::from_json(json).unwrap(), 11).unwrap();
    model::weights::save_dir(&m, Some(&tok), dir, candle_core::DType::F32).unwrap();
}

/// Data parallelism on the hybrid model: the conv and SSM state are per row, so two ranks of
/// two contexts each must train the weights one process trains on all four, also with two
/// minibatches per rollout batch. The thoughts and their scores are the same (checked in the
/// helper); the weights agree to float rounding, not bitwise. The likely cause (not isolated
/// further): a rank's policy batch pads its rows to its own longest thought, and the scan's
/// chunk length is min(chunk_size, row length), so matmuls of other sizes sum in other orders.
/// Measured 2026-12-02: 1.4e-6 relative (1.2e-6 with 2 minibatches), in
/// `layers.0.mixer.conv1d.bias`, a tensor that starts at zero and so has a small norm after 4
/// steps. A rank's gradient left out of the sum or counted twice moves every weight by far more.
/// Coverage: every matrix, the Mamba-2 ones included, moves by more than 1e-4 relative in the 4
/// steps. `A_log` and `dt_bias` hardly move (measured: up to 4e-7 relative, one `dt_bias` not at
/// all): their gradients on this short random model are so small that with STRICT's AdamW
/// ε = 1e-3 the step lr·g/ε is below an f32 ulp, so this comparison does not check them.
#[test]
fn two_ranks_train_the_nemotron_h_weights_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("model");
    tiny_nemotron_h(&init);
    let start = dir_weights(&init);
    let model_key = format!("model.path={:?}", init.display().to_string());
    for extra in [&[][..], &["objective.minibatches=2"][..]] {
        let sets = [&STRICT[..], &[model_key.as_str()], extra].concat();
        let (rel, trained) = one_vs_two_ranks_from(Launcher::Mpirun, &init, &sets);
        assert!(rel <= 1e-5, "NemotronH {extra:?}: weights differ by {rel:e} relative");
        for ((name, t), (_, s)) in trained.iter().zip(&start).filter(|((n, _), _)| n.ends_with("proj.weight") || n.ends_with("conv1d.weight")) {
            let d: f64 = t.iter().zip(s).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = t.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            assert!(d > 1e-4 * norm, "NemotronH {extra:?}: {name} moved only {:.1e} relative: the comparison would not cover it", d / norm);
        }
    }
}

/// `srun -N 2 --mpi=pmix` on two nodes, and `mpirun -H` on the same two hosts: the same weights
/// as one process, through TCP between the nodes instead of shared memory.
#[test]
fn two_ranks_on_two_nodes_train_the_weights_one_process_trains() {
    for launcher in [Launcher::Srun, Launcher::MpirunTwoHosts] {
        let rel = one_vs_two_ranks_on(launcher, &STRICT);
        assert!(rel <= 1e-6, "{launcher:?}: weights differ by {rel:e} relative");
    }
}

#[test]
fn two_ranks_match_one_process_to_float_rounding_on_ragged_contexts() {
    // With prefixes of different lengths the batched decode pads to a batch-dependent width,
    // and S_pred may move by one float ulp (~5e-7) with the batch a context is sampled in.
    // The advantage is a small difference of such scores (~1e-2), so its relative error is
    // ~1e-4, and AdamW's normalised step carries that into the weights: measured 3.5e-5 after
    // 4 steps on this config. The thoughts themselves are the same (checked in the helper).
    let rel = one_vs_two_ranks(&[]);
    assert!(rel <= 1e-3, "weights differ by {rel:e} relative");
}

#[test]
fn entropy_filtered_contexts_on_two_ranks_match_one_process() {
    // Every rank draws the same global batch through the entropy filter (it depends only on the
    // model, identical on every rank; the trainer checks the ranks agree), sampled and fixed.
    // 4 positions per document visit, so that keeping the top half per document drops some.
    let filter = ["objective.rpt_top_frac=0.5", "data.positions_per_doc=4"];
    for extra in [&filter[..], &[&filter[..], &["data.fixed_contexts=6"]].concat()] {
        let rel = one_vs_two_ranks(&[&STRICT[..], extra].concat());
        assert!(rel <= 1e-6, "{extra:?}: weights differ by {rel:e} relative");
    }
}

#[test]
fn ntp_on_two_ranks_trains_the_weights_one_process_trains() {
    // 4 packed windows per step; each rank trains 2, the loss divided by all 4 windows' targets.
    let sets = ["objective.name=ntp", "train.steps=3", "optim.eps=1e-3", "optim.lr=1e-3"];
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(1, one.path(), &sets);
    train(2, two.path(), &sets);
    let (m1, m2) = (metrics(one.path()), metrics(two.path()));
    assert_eq!((m1.len(), m2.len()), (3, 3));
    for (x, y) in m1.iter().zip(&m2) {
        for k in ["input_tokens_total", "trained_tokens_total", "flops_train_total"] {
            assert_eq!(x[k], y[k], "{k}");
        }
        for k in ["loss", "grad_norm"] {
            let (p, q) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-5 * p.abs().max(1.0),
                "step {}: {k} = {p} in one process, {q} on two ranks",
                x["step"]
            );
        }
    }
    let (moved, _) = worst_relative_difference(&initial_weights(), &checkpoint_weights(one.path(), 3));
    assert!(moved > 1e-3, "training hardly moved the weights ({moved:e})");
    assert_same_weights("ntp, 1 vs 2 ranks", one.path(), two.path(), 3);
}

#[test]
fn resume_works_on_the_same_and_on_another_world_size() {
    let (four, two) = (
        [&["train.steps=4"][..], &STRICT].concat(),
        [&["train.steps=2"][..], &STRICT].concat(),
    );
    let straight = tempfile::tempdir().unwrap();
    train(1, straight.path(), &four);
    for resumed_on in [2, 1] {
        let split = tempfile::tempdir().unwrap();
        train(2, split.path(), &two);
        let args = [train_args(split.path(), &four), vec!["--resume".into()]].concat();
        let out = if resumed_on == 1 {
            Command::new(rlp_bin()).args(&args).output()
        } else {
            mpirun(2, &args).output()
        };
        check("resume", out.unwrap());
        assert_same_weights(
            &format!("2 ranks, then resumed on {resumed_on}"),
            straight.path(),
            split.path(),
            4,
        );
        assert_eq!(metrics(split.path()).len(), 4);
    }
}

/// Start a long 2-rank run and wait until rank 0 has logged 2 steps.
fn start_long_run_on(launcher: Launcher, run: &Path, timeout_s: u32, log: &Path) -> Child {
    let timeout = format!("train.collective_timeout_s={timeout_s}");
    let args = train_args(run, &["train.steps=100000", &timeout]);
    let log = std::fs::File::create(log).unwrap();
    let child = launch(launcher, 2, &args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 2 {
        assert!(Instant::now() < deadline, "the 2-rank run logged no steps within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The pid of rank `rank` of the job writing to `run`, found through /proc (Open MPI sets
/// OMPI_COMM_WORLD_RANK in each rank's environment, Slurm SLURM_PROCID).
fn rank_pid(run: &Path, rank: usize) -> u32 {
    let want_env = [format!("OMPI_COMM_WORLD_RANK={rank}"), format!("SLURM_PROCID={rank}")];
    let want_arg = run.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmd), Ok(env)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read(entry.path().join("environ")),
        ) else {
            continue;
        };
        let has = |blob: &[u8], s: &str| blob.split(|&b| b == 0).any(|x| x == s.as_bytes());
        let launcher = has(&cmd, "--allow-run-as-root") || has(&cmd, "--mpi=pmix");
        if has(&cmd, &want_arg) && want_env.iter().any(|e| has(&env, e)) && !launcher {
            return pid;
        }
    }
    panic!("no process of rank {rank} for {want_arg}");
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_hung_rank_makes_the_other_abort_with_the_timeout_message() {
    hung_rank_aborts_the_job(Launcher::Mpirun);
}

/// The same under `srun` on two nodes (network namespaces of scripts/slurm-local.sh): rank 1 is
/// on the other node, so rank 0 waits on the network, and Slurm must end the step.
#[test]
fn a_hung_srun_task_on_another_node_makes_the_job_abort_with_the_timeout_message() {
    hung_rank_aborts_the_job(Launcher::Srun);
}

/// Start a long 2-rank run with a `timeout_s` collective timeout, send rank 1 signal `sig`,
/// and wait up to `timeout_s` + 30 s for the job to end. Returns its exit status, its stderr and
/// the time from the signal to the end. Under `srun`, first checks that the two ranks are on
/// different nodes (network and UTS namespaces).
fn disturb_rank_1(launcher: Launcher, timeout_s: u32, sig: i32) -> (ExitStatus, String, Duration) {
    let (run, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = logs.path().join("stderr.txt");
    let mut job = start_long_run_on(launcher, run.path(), timeout_s, &log);
    let rank1 = rank_pid(run.path(), 1);
    if let Launcher::Srun = launcher {
        let ns = |pid: u32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
        let rank0 = rank_pid(run.path(), 0);
        for kind in ["net", "uts"] {
            assert_ne!(ns(rank0, kind), ns(rank1, kind), "the two tasks should run on two nodes ({kind} namespaces)");
        }
    }
    send_signal(rank1, sig);
    let sent = Instant::now();
    let status = wait_with_deadline(&mut job, Duration::from_secs(timeout_s as u64 + 30));
    let waited = sent.elapsed();
    unsafe { libc::kill(rank1 as i32, libc::SIGKILL) }; // a stopped rank 1; it may have ended already
    let stderr = std::fs::read_to_string(&log).unwrap();
    let status = status.unwrap_or_else(|| {
        panic!("the job did not end within {timeout_s} + 30 s of rank 1 getting signal {sig}:\n{stderr}")
    });
    (status, stderr, waited)
}

fn hung_rank_aborts_the_job(launcher: Launcher) {
    let timeout_s = 3;
    // SIGSTOP hangs rank 1: alive, but it never reaches the next collective
    let (status, stderr, waited) = disturb_rank_1(launcher, timeout_s, libc::SIGSTOP);
    assert!(!status.success());
    assert!(
        stderr.contains("collective timed out") && stderr.contains("train.collective_timeout_s = 3 s"),
        "no timeout message:\n{stderr}"
    );
    assert!(
        stderr.contains("rank 0 of 2"),
        "the message should name the waiting rank:\n{stderr}"
    );
    assert!(
        waited >= Duration::from_secs(timeout_s as u64 - 1),
        "aborted after {waited:?}, before the timeout"
    );
    eprintln!("hung rank ({launcher:?}): job ended {waited:.1?} after rank 1 stopped (timeout {timeout_s} s)");
}

#[test]
fn a_killed_rank_ends_the_job_within_the_timeout() {
    killed_rank_ends_the_job(Launcher::Mpirun);
}

#[test]
fn a_killed_srun_task_on_another_node_ends_the_job_within_the_timeout() {
    killed_rank_ends_the_job(Launcher::Srun);
}

fn killed_rank_ends_the_job(launcher: Launcher) {
    let timeout_s = 5;
    let (status, stderr, waited) = disturb_rank_1(launcher, timeout_s, libc::SIGKILL);
    assert!(!status.success(), "the job must fail when a rank dies:\n{stderr}");
    // Either the launcher notices the dead rank and ends the job (mpirun does), or rank 0's
    // collective times out (under srun, which lets the step run on): within the timeout, plus
    // slack for the abort to travel.
    let by_timeout = stderr.contains("collective timed out");
    assert!(
        waited <= Duration::from_secs(timeout_s as u64 + 10),
        "the job ended {waited:?} after rank 1 died: later than the {timeout_s} s timeout + 10 s"
    );
    if let Launcher::Srun = launcher {
        assert!(
            by_timeout && stderr.contains("rank 0 of 2"),
            "under srun, rank 0 should end the job with the timeout message:\n{stderr}"
        );
    }
    eprintln!(
        "killed rank ({launcher:?}): job ended {waited:.1?} later, by {}",
        if by_timeout {
            "rank 0's collective timeout".to_string()
        } else {
            format!("{launcher:?}")
        }
    );
}

/// `rlp train --config configs/NAME` arguments (the post-training configs).
fn post_train_args(name: &str, run: &Path, sets: &[&str]) -> Vec<String> {
    let mut a = train_args(run, sets);
    a[2] = format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    a
}

/// SFT and RLVR on 2 ranks: the windows / questions of each step split between the ranks, the
/// losses divided by the global response-token / sample counts, the same weights as one
/// process (the RLVR samples of a question come from its own RNG, whichever rank draws them).
#[test]
fn sft_and_rlvr_on_two_ranks_train_the_weights_one_process_trains() {
    let cases: [(&str, &[&str], &[&str]); 2] = [
        ("post-sft.toml", &["data.contexts_per_step=4", "train.steps=3", "optim.eps=1e-3", "optim.lr=1e-3"], &["loss", "grad_norm", "response_tokens_step"]),
        (
            "post-rlvr.toml",
            &["data.contexts_per_step=4", "rollout.g=4", "train.steps=3", "objective.kl_coef=0.05", "optim.eps=1e-3", "optim.lr=1e-3"],
            &["loss", "grad_norm", "reward_mean", "reward_std", "accuracy", "response_len_mean", "frac_solved_groups", "clip_frac_low", "kl"],
        ),
    ];
    for (name, sets, keys) in cases {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let out = Command::new(rlp_bin()).args(post_train_args(name, one.path(), sets)).output().unwrap();
        check(&format!("{name} in one process"), out);
        let out = mpirun(2, &post_train_args(name, two.path(), sets)).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        check(&format!("{name} on 2 ranks"), out);
        assert!(stdout.contains("data parallel: 2 ranks"), "{name}: not run as 2 ranks:\n{stdout}");
        let (m1, m2) = (metrics(one.path()), metrics(two.path()));
        assert_eq!((m1.len(), m2.len()), (3, 3), "{name}: rank 0 alone writes one line per step");
        for (x, y) in m1.iter().zip(&m2) {
            for k in ["input_tokens_total", "generated_tokens_total", "trained_tokens_total"] {
                assert_eq!(x[k], y[k], "{name}: {k}");
            }
            for &k in keys {
                let (p, q) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{name} step {}: {k} = {p} in one process, {q} on two ranks", x["step"]);
            }
        }
        let (rel, tensor) = worst_relative_difference(&checkpoint_weights(one.path(), 3), &checkpoint_weights(two.path(), 3));
        eprintln!("{name}: worst relative weight difference {rel:.2e} ({tensor})");
        assert!(rel <= 1e-5, "{name}: weights differ by {rel:e} relative in {tensor}");
    }
}
