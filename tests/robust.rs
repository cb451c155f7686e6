//! `rlp train` under faults, run as a child process on the tiny config: SIGKILL at random
//! moments (also mid-checkpoint) and resume, SIGINT/SIGTERM, a full disk and an unwritable run
//! directory, injected non-finite gradients, and a long run's memory.
//!
//! Runs a private copy of the binary (`common::rlp_bin`: other worktrees may rebuild
//! `target/release/rlp` while these tests run), and children run with `RAYON_NUM_THREADS=1`.

mod common;

use common::{checkpoint_dir, metrics_so_far, rlp_bin, send_signal};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `rlp train` on configs/tiny.toml into `run`, with `--set` overrides.
fn train(run: &Path, sets: &[&str], resume: bool) -> Command {
    let mut c = Command::new(rlp_bin());
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("RAYON_NUM_THREADS", "1").env_remove("RLP_INJECT_NONFINITE_STEPS");
    c.args(["train", "--config", "configs/tiny.toml", "--out"]).arg(run);
    for s in ["logging.progress=false"].iter().chain(sets) {
        c.args(["--set", s]);
    }
    if resume {
        c.arg("--resume");
    }
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "rlp train failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every tensor of a safetensors file, as f32 values (exact comparison).
fn tensors(file: &Path) -> HashMap<String, Vec<f32>> {
    let t = candle_core::safetensors::load(file, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    t.into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect()
}

/// Model weights and trainer state (AdamW moments, EMA teacher) of a checkpoint.
fn full_state(dir: &Path) -> (HashMap<String, Vec<f32>>, HashMap<String, Vec<f32>>) {
    (tensors(&dir.join("model.safetensors")), tensors(&dir.join("trainer_state.safetensors")))
}

fn tmp_dirs(run: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(run.join("checkpoints")) else { return vec![] };
    rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp-")).collect()
}

fn wait_until(child: &mut Child, deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        if cond() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

const STEPS: u64 = 24;
/// Kills per test: after this many the run is let finish.
const KILLS: usize = 12;

#[test]
fn sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run() {
    let sets = ["train.steps=24", "checkpoint.every=1", "checkpoint.keep_last=100"];
    let reference = tempfile::tempdir().unwrap();
    run_ok(train(reference.path(), &sets, false));
    let run_dir = tempfile::tempdir().unwrap();
    let run = run_dir.path().join("run");
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (mut kills, mut kills_mid_write, mut attempts) = (0, 0, 0);
    loop {
        attempts += 1;
        assert!(attempts < 60, "the run did not finish after {attempts} restarts");
        let resume = run.join("config.toml").exists();
        let mut child = train(&run, &sets, resume).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // odd attempts: kill as soon as a checkpoint is being written; even: after a random delay
        let killed = if kills >= KILLS {
            false
        } else if attempts % 2 == 1 {
            let hit = wait_until(&mut child, Duration::from_secs(60), || !tmp_dirs(&run).is_empty());
            hit && child.kill().is_ok()
        } else {
            let delay = Duration::from_millis(rng.gen_range(10..400));
            !wait_until(&mut child, delay, || false) && child.kill().is_ok()
        };
        let out = child.wait_with_output().unwrap();
        if !killed || out.status.success() {
            assert!(out.status.success(), "rlp train failed on its own: {}\n{}", out.status, stderr(&out));
            break;
        }
        kills += 1;
        if !tmp_dirs(&run).is_empty() {
            kills_mid_write += 1;
        }
        // whatever is named step-* must be complete and equal to the reference at that step
        for e in std::fs::read_dir(run.join("checkpoints")).into_iter().flatten() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("step-") {
                let step: u64 = n.parse().unwrap();
                assert_eq!(full_state(&p), full_state(&checkpoint_dir(reference.path(), step)), "after kill {kills}: {name} differs from the reference");
                let state: Value = serde_json::from_str(&std::fs::read_to_string(p.join("trainer_state.json")).unwrap()).unwrap();
                assert_eq!(state["step"].as_u64(), Some(step));
            }
        }
    }
    eprintln!("{kills} kills ({kills_mid_write} during a checkpoint write) in {attempts} starts");
    assert!(kills >= KILLS / 2, "only {kills} kills landed: the test did not exercise crashes");
    assert!(kills_mid_write >= 2, "only {kills_mid_write} kills landed during a checkpoint write");
    assert!(tmp_dirs(&run).is_empty(), "a finished run left a .tmp- checkpoint");
    assert_eq!(full_state(&checkpoint_dir(&run, STEPS)), full_state(&checkpoint_dir(reference.path(), STEPS)), "final weights or trainer state differ");
    let steps: Vec<u64> = metrics_so_far(&run).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "metrics.jsonl must hold each step once");
}

#[test]
fn sigint_and_sigterm_finish_the_step_write_a_checkpoint_and_exit() {
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut child = train(&run, &["train.steps=200", "checkpoint.every=0"], false).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        assert!(wait_until(&mut child, Duration::from_secs(60), || metrics_so_far(&run).len() >= 2), "{name}: the run did not start");
        send_signal(child.id(), sig);
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(128 + sig), "{name}: {err}");
        let done = metrics_so_far(&run).len() as u64;
        assert!((2..200).contains(&done), "{name}: {done} steps");
        assert!(err.contains(&format!("stopped by {name} after step {done}")) && err.contains("--resume"), "{err}");
        assert!(checkpoint_dir(&run, done).join("trainer_state.json").exists(), "{name}: no checkpoint at step {done}");
        assert!(tmp_dirs(&run).is_empty());
        // and the run continues from there
        let more = format!("train.steps={}", done + 2);
        let out = run_ok(train(&run, &[&more, "checkpoint.every=0"], true));
        assert!(stderr(&out).contains(&format!("at step {done}")), "{}", stderr(&out));
        let steps: Vec<u64> = metrics_so_far(&run).iter().map(|m| m["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (1..=done + 2).collect::<Vec<_>>());
    }
}

#[test]
fn full_disk_fails_clearly_and_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    run_ok(train(&run, &["train.steps=2", "checkpoint.every=1"], false));
    let before = std::fs::read(checkpoint_dir(&run, 2).join("model.safetensors")).unwrap();
    // A file-size limit below the 0.8 MB model: writing model.safetensors fails with EFBIG,
    // as a full disk fails with ENOSPC. SIGXFSZ is ignored so the write returns the error.
    let mut c = train(&run, &["train.steps=4", "checkpoint.every=1"], true);
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: 256 * 1024, rlim_max: 256 * 1024 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("checkpoint for step 3 not written") && err.contains("intact") && err.contains("File too large"), "{err}");
    assert!(err.contains("model.safetensors"), "the error must name the file: {err}");
    assert_eq!(std::fs::read(checkpoint_dir(&run, 2).join("model.safetensors")).unwrap(), before, "the previous checkpoint changed");
    assert!(tmp_dirs(&run).is_empty(), "a failed write left its .tmp- directory");
    assert!(!checkpoint_dir(&run, 3).exists());
    // with space again, the run resumes from step 2 and finishes
    let out = run_ok(train(&run, &["train.steps=4", "checkpoint.every=1"], true));
    assert!(stderr(&out).contains("at step 2"), "{}", stderr(&out));
    assert!(checkpoint_dir(&run, 4).exists());
}

#[test]
fn unwritable_run_directory_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    // the run directory is a file
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = train(&file, &[], false).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot create run directory") && err.contains("not-a-dir"), "{err}");
    // its checkpoints directory is a file
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("checkpoints"), "x").unwrap();
    let out = train(&run, &[], false).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("checkpoints") && err.contains("Not a directory"), "{err}");
    assert!(!run.join("metrics.jsonl").exists(), "nothing may be trained or logged");
}

#[test]
fn injected_nonfinite_gradient_is_skipped_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut c = train(&run, &["train.steps=4", "checkpoint.every=1", "checkpoint.keep_last=10"], false);
    c.env("RLP_INJECT_NONFINITE_STEPS", "2");
    let out = run_ok(c);
    assert!(stderr(&out).contains("step 2: non-finite loss or gradient, step skipped (1 in a row)"), "{}", stderr(&out));
    let m = metrics_so_far(&run);
    let skipped: Vec<bool> = m.iter().map(|v| v["skipped"].as_bool().unwrap()).collect();
    assert_eq!(skipped, [false, true, false, false]);
    assert!(m[1]["grad_norm"].is_null() && m[2]["grad_norm"].is_number());
    let w = |s| full_state(&checkpoint_dir(&run, s));
    assert_eq!(w(2), w(1), "a skipped step changed the weights, moments or EMA");
    assert_ne!(w(3).0, w(2).0, "the step after the fault did not train");
}

#[test]
fn repeated_nonfinite_gradients_stop_the_run_with_the_batch_saved() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut c = train(&run, &["train.steps=8", "checkpoint.every=1", "train.max_consecutive_nonfinite=2"], false);
    c.env("RLP_INJECT_NONFINITE_STEPS", "2,3,4");
    let out = c.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("3 consecutive steps had a non-finite loss or gradient"), "{err}");
    let saved = run.join("nonfinite-batch-step-000004.json");
    assert!(err.contains(&saved.display().to_string()), "{err}");
    let batch: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(batch["contexts"].as_array().unwrap().len(), 4, "{batch}");
    assert_eq!(batch["thoughts"].as_array().unwrap().len(), 4);
    assert_eq!(metrics_so_far(&run).len(), 3, "steps 1-3 are logged, the stopping step is not");
    assert!(checkpoint_dir(&run, 3).exists() && tmp_dirs(&run).is_empty());
    // a malformed knob is refused before anything runs
    let mut c = train(&dir.path().join("other"), &[], false);
    c.env("RLP_INJECT_NONFINITE_STEPS", "two");
    let out = c.output().unwrap();
    assert!(stderr(&out).contains("RLP_INJECT_NONFINITE_STEPS") && !out.status.success(), "{}", stderr(&out));
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 600 steps; resident memory may grow by at most `RSS_TOLERANCE_KIB` (allocator noise)
/// between step 50 and step 590, so no more than ~7 KiB can accumulate per step.
const RSS_TOLERANCE_KIB: u64 = 4 * 1024;

#[test]
fn long_run_memory_does_not_grow() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let sets = ["train.steps=600", "checkpoint.every=100", "rollout.g=2", "data.contexts_per_step=2", "rollout.thought_budget=4", "data.max_context=32", "logging.samples_every=10"];
    let t0 = Instant::now();
    let mut child = train(&run, &sets, false).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut rss = Vec::new();
    for at in [50, 590] {
        assert!(wait_until(&mut child, Duration::from_secs(120), || metrics_so_far(&run).len() >= at), "the run stopped before step {at}");
        rss.push(vm_rss_kib(child.id()));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("RSS at step 50: {} KiB, at step 590: {} KiB; 600 steps in {secs:.1} s", rss[0], rss[1]);
    assert!(rss[1] <= rss[0] + RSS_TOLERANCE_KIB, "resident memory grew from {} KiB to {} KiB over 540 steps", rss[0], rss[1]);
    assert_eq!(metrics_so_far(&run).len(), 600);
}
