//! Test-only fault injection: poison the gradient of chosen optimizer steps with NaN.
//!
//! `RLP_INJECT_NONFINITE_STEPS=2,3` (1-based optimizer steps, read once per process) makes the
//! gradient of those steps non-finite just before the trainer's non-finite guard looks at it,
//! so tests can check that a faulty step is skipped and logged and that repeated faults stop the
//! run with the batch saved. Unset (the normal case) it does nothing.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::sync::OnceLock;

pub const ENV: &str = "RLP_INJECT_NONFINITE_STEPS";

static STEPS: OnceLock<Vec<u64>> = OnceLock::new();

/// Parse a comma-separated list of step numbers (`""` is empty).
pub fn parse_steps(raw: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u64>() {
            Ok(n) if n > 0 => out.push(n),
            _ => bail!("{ENV}={raw:?}: `{part}` is not a step number (1, 2, ...); give a comma-separated list such as 2,3 or unset it"),
        }
    }
    Ok(out)
}

/// Read and check the environment variable once; later calls return the same list.
pub fn injected_steps() -> Result<&'static [u64]> {
    if let Some(s) = STEPS.get() {
        return Ok(s);
    }
    let steps = match std::env::var(ENV) {
        Ok(raw) => parse_steps(&raw)?,
        Err(_) => Vec::new(),
    };
    Ok(STEPS.get_or_init(|| steps))
}

/// When `step` (1-based) is listed, add NaN to the first variable's gradient.
pub fn poison_if_injected(step: u64, grads: &mut GradStore, vars: &[Var]) -> Result<()> {
    if !injected_steps()?.contains(&step) {
        return Ok(());
    }
    if let Some(g) = vars.iter().find_map(|v| grads.get(v.as_tensor()).map(|g| (v, g.clone()))) {
        let (v, g) = g;
        let poisoned = g.broadcast_add(&Tensor::new(f32::NAN, g.device())?.to_dtype(g.dtype())?)?;
        grads.insert(v.as_tensor(), poisoned);
        eprintln!("{ENV}: injected NaN into the gradient of step {step}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_steps;

    #[test]
    fn parses_lists_and_refuses_garbage() {
        assert_eq!(parse_steps("2,3").unwrap(), vec![2, 3]);
        assert_eq!(parse_steps(" 5 , ").unwrap(), vec![5]);
        assert!(parse_steps("").unwrap().is_empty());
        for bad in ["0", "two", "1;2", "-1"] {
            let e = parse_steps(bad).unwrap_err().to_string();
            assert!(e.contains("RLP_INJECT_NONFINITE_STEPS") && e.contains("not a step number"), "{e}");
        }
    }
}
