//! SIGINT / SIGTERM: stop after the current optimizer step, with a checkpoint.
//!
//! `rlp train` calls [`install`] once; the trainer's step loop asks [`stop_requested`] after each
//! step (rollout objectives: after each rollout batch, where checkpoints fall) and, when a signal
//! came, writes a checkpoint and returns. A second SIGINT/SIGTERM while that happens ends the
//! process at once (exit status 1); the atomic checkpoint writer leaves no half-written
//! `step-*` directory either way. Library users who never call `install` are unaffected.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

struct Flags {
    /// Set by either signal; a second one then terminates (signal-hook's conditional shutdown).
    any: Arc<AtomicBool>,
    /// The number of the last signal received (0: none).
    which: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Register the SIGINT/SIGTERM handlers (idempotent).
pub fn install() -> Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags { any: Arc::new(AtomicBool::new(false)), which: Arc::new(AtomicUsize::new(0)) };
    for sig in [SIGINT, SIGTERM] {
        // order matters: the shutdown check sees the flag as it was before this signal
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flags.any)).context("cannot install a signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&flags.any)).context("cannot install a signal handler")?;
        signal_hook::flag::register_usize(sig, Arc::clone(&flags.which), sig as usize).context("cannot install a signal handler")?;
    }
    let _ = FLAGS.set(flags);
    Ok(())
}

/// The signal that asked the run to stop, if any.
pub fn stop_requested() -> Option<i32> {
    let f = FLAGS.get()?;
    f.any.load(Ordering::SeqCst).then(|| f.which.load(Ordering::SeqCst) as i32)
}

/// "SIGINT" / "SIGTERM" / "signal N".
pub fn name(sig: i32) -> String {
    match sig {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}
