//! The EMA teacher φ (rlp-paper.md §2.3): the no-think baseline that scores S_ema.
//!
//! φ starts uninitialised, is copied from θ on the first batch (`init_from`), and after every
//! optimizer step moves toward θ: `φ ← τ·φ + (1−τ)·θ`, τ = 0.999 by default (so φ keeps 99.9%
//! of itself each step). φ is stored as detached f32 tensors with their own storage, one per
//! parameter in the same order as the model's `Var`s. On the CPU the update is one pass per
//! parameter that writes φ in place, split over the rayon pool, with the same f32 operations as
//! the tensor-op composition the other devices run (so the same bits).
//!
//! Not here: running the teacher forward (the caller builds a model from `params()`).

use super::optim::{is_cpu_contiguous_f32, with_f32_mut, with_f32_slice};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;
use std::collections::HashMap;

/// Elements per task of the threaded update.
const PAR_CHUNK: usize = 1 << 15;

/// EMA copy φ of the policy parameters; `None` until [`init_from`](Self::init_from).
#[derive(Default)]
pub struct EmaTeacher {
    params: Option<Vec<Tensor>>,
}

impl EmaTeacher {
    /// An uninitialised teacher (the paper's φ := None).
    pub fn new() -> Self {
        EmaTeacher { params: None }
    }

    pub fn is_initialized(&self) -> bool {
        self.params.is_some()
    }

    /// φ, one f32 tensor per parameter, or `None` before initialisation.
    pub fn params(&self) -> Option<&[Tensor]> {
        self.params.as_deref()
    }

    /// φ ← θ: a deep copy, so later optimizer steps on θ do not move φ.
    pub fn init_from(&mut self, params: &[Var]) -> Result<()> {
        let phi = params
            .iter()
            .map(|p| p.as_detached_tensor().to_dtype(DType::F32)?.copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.params = Some(phi);
        Ok(())
    }

    /// φ ← τ·φ + (1−τ)·θ for every parameter. Errors if not initialised, or if `params` does
    /// not match φ in count or shapes.
    pub fn update(&mut self, params: &[Var], tau: f64) -> Result<()> {
        ensure!((0.0..=1.0).contains(&tau), "EMA decay tau = {tau} must be in [0, 1]");
        let phi = self.params.as_mut().context("EMA teacher updated before init_from")?;
        check_matches(phi, params)?;
        for (f, p) in phi.iter_mut().zip(params) {
            let theta = p.as_detached_tensor().to_dtype(DType::F32)?;
            if is_cpu_contiguous_f32(f) && is_cpu_contiguous_f32(&theta) {
                ema_fused(f, &theta, tau)?;
            } else {
                *f = ema_tensors(f, &theta, tau)?;
            }
        }
        Ok(())
    }

    /// Relative distance ‖θ − φ‖ / ‖θ‖ over all parameters (global L2 norms); 0 when θ = 0.
    pub fn drift(&self, params: &[Var]) -> Result<f32> {
        let phi = self.params.as_ref().context("EMA drift asked before init_from")?;
        check_matches(phi, params)?;
        let (mut diff_sq, mut theta_sq) = (0f64, 0f64);
        for (f, p) in phi.iter().zip(params) {
            let theta = p.as_detached_tensor().to_dtype(DType::F32)?;
            diff_sq += (&theta - f)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            theta_sq += theta.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(if theta_sq == 0.0 { 0.0 } else { (diff_sq / theta_sq).sqrt() as f32 })
    }

    /// φ named `ema.{i}` for a checkpoint; empty before initialisation. On the CPU they share
    /// storage with φ, which the next `update` overwrites in place: write them out (or `copy`
    /// them) before updating again.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let phi = self.params.iter().flatten();
        phi.enumerate().map(|(i, t)| (format!("ema.{i}"), t.clone())).collect()
    }

    /// Restore φ from `ema.{i}` tensors, checked against the model's parameters. A state with
    /// no `ema.` keys leaves the teacher uninitialised (a checkpoint written before init).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, params: &[Var]) -> Result<()> {
        if !tensors.keys().any(|k| k.starts_with("ema.")) {
            self.params = None;
            return Ok(());
        }
        let mut phi = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let name = format!("ema.{i}");
            let t = tensors
                .get(&name)
                .with_context(|| format!("EMA state has no `{name}`: written for a different model?"))?;
            // Own storage: `update` writes φ in place, and must not write into the caller's tensors.
            phi.push(t.to_dtype(DType::F32)?.to_device(p.device())?.copy()?);
        }
        if tensors.keys().filter(|k| k.starts_with("ema.")).count() != params.len() {
            bail!(
                "EMA state has more tensors than the model's {} parameters: written for a different model?",
                params.len()
            );
        }
        check_matches(&phi, params)?;
        self.params = Some(phi);
        Ok(())
    }
}

/// φ ← τ·φ + (1−τ)·θ for one CPU f32 parameter, in place and in chunks over the rayon pool.
/// The f32 constants are rounded from f64 as candle rounds a scalar operand, so the result is
/// that of [`ema_tensors`].
fn ema_fused(phi: &Tensor, theta: &Tensor, tau: f64) -> Result<()> {
    ensure!(phi.elem_count() == theta.elem_count(), "EMA: {} elements for a parameter of {}", phi.elem_count(), theta.elem_count());
    let (keep, take) = (tau as f32, (1.0 - tau) as f32);
    let apply = |f: &mut [f32], t: &[f32]| {
        for (f, &t) in f.iter_mut().zip(t) {
            *f = *f * keep + t * take;
        }
    };
    with_f32_slice(theta, |t| {
        with_f32_mut(phi, |f| {
            if f.len() <= PAR_CHUNK {
                apply(f, t);
            } else {
                f.par_chunks_mut(PAR_CHUNK).zip(t.par_chunks(PAR_CHUNK)).for_each(|(f, t)| apply(f, t));
            }
        })
    })??;
    Ok(())
}

/// φ ← τ·φ + (1−τ)·θ with tensor ops, on any device: the reference of [`ema_fused`].
fn ema_tensors(phi: &Tensor, theta: &Tensor, tau: f64) -> Result<Tensor> {
    Ok(((phi * tau)? + (theta * (1.0 - tau))?)?)
}

fn check_matches(phi: &[Tensor], params: &[Var]) -> Result<()> {
    ensure!(
        phi.len() == params.len(),
        "EMA teacher holds {} tensors but {} parameters were given",
        phi.len(),
        params.len()
    );
    for (i, (f, p)) in phi.iter().zip(params).enumerate() {
        ensure!(
            f.dims() == p.dims(),
            "EMA tensor {i} has shape {:?} but parameter {i} has shape {:?}",
            f.dims(),
            p.dims()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(xs: &[f32]) -> Var {
        Var::new(xs, &Device::Cpu).unwrap()
    }

    fn phi0(ema: &EmaTeacher) -> Vec<f32> {
        ema.params().unwrap()[0].to_vec1::<f32>().unwrap()
    }

    #[test]
    fn lazy_init_copies_instead_of_aliasing() {
        let theta = var(&[1.0, 2.0]);
        let mut ema = EmaTeacher::new();
        assert!(!ema.is_initialized());
        assert!(ema.update(std::slice::from_ref(&theta), 0.9).is_err(), "update before init");
        ema.init_from(std::slice::from_ref(&theta)).unwrap();
        assert_eq!(phi0(&ema), vec![1.0, 2.0]);
        theta.set(&Tensor::new(&[5.0f32, 6.0], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(phi0(&ema), vec![1.0, 2.0], "φ must not follow θ's storage");
    }

    /// φ = 0, θ = 1, τ = 0.9: φ ← 0.9·0 + 0.1·1 = 0.1 (not 0.9: τ weights the old φ).
    /// Second step: 0.9·0.1 + 0.1·1 = 0.19. Drift ‖θ−φ‖/‖θ‖ = (0.81·√2)/√2 = 0.81.
    #[test]
    fn update_direction_is_tau_on_old_phi() {
        let theta = var(&[0.0, 0.0]);
        let mut ema = EmaTeacher::new();
        ema.init_from(std::slice::from_ref(&theta)).unwrap();
        theta.set(&Tensor::new(&[1.0f32, 1.0], &Device::Cpu).unwrap()).unwrap();
        ema.update(std::slice::from_ref(&theta), 0.9).unwrap();
        for x in phi0(&ema) {
            assert!((x - 0.1).abs() < 1e-7, "{x}");
        }
        ema.update(std::slice::from_ref(&theta), 0.9).unwrap();
        for x in phi0(&ema) {
            assert!((x - 0.19).abs() < 1e-7, "{x}");
        }
        assert!((ema.drift(&[theta]).unwrap() - 0.81).abs() < 1e-6);
    }

    /// The fused CPU update gives exactly the values of the tensor-op reference over several
    /// updates, for a parameter below one chunk and one split into several chunks.
    #[test]
    fn fused_update_equals_tensor_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for n in [5, 2 * PAR_CHUNK + 3] {
            let mut random = || (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect::<Vec<f32>>();
            let theta = var(&random());
            let mut ema = EmaTeacher::new();
            ema.init_from(std::slice::from_ref(&theta)).unwrap();
            let mut reference = ema.params().unwrap()[0].copy().unwrap();
            for _ in 0..3 {
                theta.set(&Tensor::new(random().as_slice(), &Device::Cpu).unwrap()).unwrap();
                ema.update(std::slice::from_ref(&theta), 0.999).unwrap();
                reference = ema_tensors(&reference, theta.as_tensor(), 0.999).unwrap();
                assert!(phi0(&ema) == reference.to_vec1::<f32>().unwrap(), "n = {n}");
            }
        }
    }

    #[test]
    fn mismatched_parameters_are_rejected() {
        let mut ema = EmaTeacher::new();
        ema.init_from(&[var(&[1.0, 2.0])]).unwrap();
        assert!(ema.update(&[var(&[1.0, 2.0, 3.0])], 0.9).is_err());
        assert!(ema.update(&[var(&[1.0, 2.0]), var(&[1.0])], 0.9).is_err());
        assert!(ema.update(&[var(&[1.0, 2.0])], 1.5).is_err());
    }

    #[test]
    fn state_round_trips() {
        let theta = var(&[3.0, 4.0]);
        let mut ema = EmaTeacher::new();
        assert!(ema.state_tensors().is_empty());
        ema.init_from(std::slice::from_ref(&theta)).unwrap();
        let state: HashMap<_, _> = ema.state_tensors().into_iter().collect();
        let mut restored = EmaTeacher::new();
        restored.load_state(&state, std::slice::from_ref(&theta)).unwrap();
        assert_eq!(phi0(&restored), vec![3.0, 4.0]);
        assert!(restored.load_state(&state, &[var(&[1.0])]).is_err(), "shape mismatch");
        restored.load_state(&HashMap::new(), &[theta]).unwrap();
        assert!(!restored.is_initialized());
    }
}
