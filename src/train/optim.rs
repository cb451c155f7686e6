//! Our own AdamW, with f32 moments whatever the parameters' dtype, plus the gradient utilities
//! the trainer needs around it: global grad norm, norm clipping, a non-finite check.
//!
//! candle-nn's AdamW keeps its moments in the parameter dtype (bf16 on GPU would lose them) and
//! cannot save or restore its state; this one can, for exact resume.
//!
//! Update for one parameter θ with gradient g at step t (t = 1 on the first step), PyTorch's
//! `torch.optim.AdamW` convention:
//! ```text
//! m ← β1·m + (1−β1)·g          v ← β2·v + (1−β2)·g²
//! m̂ = m/(1−β1^t)               v̂ = v/(1−β2^t)
//! θ ← θ·(1 − lr·wd) − lr·m̂/(√v̂ + eps)      (decoupled decay: wd never enters m or v)
//! ```

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

/// AdamW hyper-parameters other than the learning rate (which the schedule passes per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, multiplied by the step's lr (PyTorch convention).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// β = (0.9, 0.95), eps 1e-8, weight decay 0 (DESIGN.md defaults).
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over a fixed list of parameters; moments are f32 tensors on each parameter's device.
pub struct AdamW {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Number of `step` calls so far; bias correction uses `step` after incrementing.
    step: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<Self> {
        let zeros = |var: &Var| Tensor::zeros(var.shape(), DType::F32, var.device());
        let m = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW { vars, m, v, step: 0, cfg })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Optimizer steps taken so far (0 before the first).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One AdamW step with learning rate `lr`. A parameter with no gradient in `grads` is left
    /// untouched (no decay, moments unchanged). The step count advances once per call, for all
    /// parameters: a parameter skipped on some steps gets the optimizer-wide bias correction
    /// (PyTorch keeps a per-parameter count; the two agree when every parameter has a gradient
    /// on every step, as in our training).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let t = self.step as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2 = 1.0 - beta2.powi(t);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = g.to_dtype(DType::F32)?;
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&m / bias1)?;
            let v_hat = (&v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let theta = var.as_detached_tensor().to_dtype(DType::F32)?;
            let theta = ((theta * (1.0 - lr * weight_decay))? - (update * lr)?)?;
            var.set(&theta.to_dtype(var.dtype())?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments, named `adam.m.{i}` / `adam.v.{i}` with i the parameter's index in `vars`.
    /// Save them with [`step_count`](Self::step_count) to resume exactly.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let m = self.m.iter().enumerate().map(|(i, t)| (format!("adam.m.{i}"), t.clone()));
        let v = self.v.iter().enumerate().map(|(i, t)| (format!("adam.v.{i}"), t.clone()));
        m.chain(v).collect()
    }

    /// Restore moments written by [`state_tensors`](Self::state_tensors) and the step count.
    /// Keys not starting with `adam.` are ignored (a checkpoint file may hold other state).
    /// Errors, changing nothing, if a moment is missing, has the wrong shape, or if the state
    /// names more parameters than this optimizer has.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        let n = self.vars.len();
        let mut m = Vec::with_capacity(n);
        let mut v = Vec::with_capacity(n);
        for (i, var) in self.vars.iter().enumerate() {
            for (kind, out) in [("m", &mut m), ("v", &mut v)] {
                let name = format!("adam.{kind}.{i}");
                let t = tensors.get(&name).with_context(|| {
                    format!("optimizer state has no `{name}`: it was saved for a model with fewer than {n} parameter tensors")
                })?;
                if t.dims() != var.dims() {
                    bail!(
                        "optimizer state `{name}` has shape {:?} but parameter {i} has shape {:?}: was the checkpoint written for a different model?",
                        t.dims(),
                        var.dims()
                    );
                }
                out.push(t.to_dtype(DType::F32)?.to_device(var.device())?);
            }
        }
        let expected: Vec<String> = (0..n).flat_map(|i| [format!("adam.m.{i}"), format!("adam.v.{i}")]).collect();
        if let Some(extra) = tensors.keys().filter(|k| k.starts_with("adam.")).find(|k| !expected.contains(k)) {
            bail!("optimizer state has `{extra}` but this model has only {n} parameter tensors: was the checkpoint written for a different model?");
        }
        self.m = m;
        self.v = v;
        self.step = step;
        Ok(())
    }
}

/// Σ g² over every parameter that has a gradient, accumulated in f64 across tensors.
fn grad_sq_sum(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(total)
}

/// Global L2 norm of all gradients of `vars` (those without a gradient count as zero).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f32> {
    Ok(grad_sq_sum(grads, vars)?.sqrt() as f32)
}

/// Scale all gradients of `vars` in place by `max_norm / total_norm` when the global norm
/// exceeds `max_norm` (no eps in the divisor, unlike PyTorch's `+1e-6`: the clipped norm is
/// exactly `max_norm`). Returns the norm before clipping. A non-finite norm is returned
/// without scaling: check [`grads_have_non_finite`] and skip the step instead.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f32> {
    let total = grad_sq_sum(grads, vars)?.sqrt();
    if total.is_finite() && total > max_norm {
        let scale = max_norm / total;
        for var in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(total as f32)
}

/// Whether any gradient of `vars` holds a NaN or ±Inf. Exact: `0·g` is 0 for every finite
/// element and NaN otherwise, so its sum is NaN iff some element is not finite (a sum of g²
/// could overflow on large finite values).
pub fn grads_have_non_finite(grads: &GradStore, vars: &[Var]) -> Result<bool> {
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            let probe = g.affine(0.0, 0.0)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            if probe.is_nan() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(xs: &[f32]) -> Var {
        Var::new(xs, &Device::Cpu).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    /// A GradStore holding exactly the given gradients (built from a dummy backward, then
    /// overwritten, since GradStore has no public constructor).
    fn grads_for(pairs: &[(&Var, &[f32])]) -> GradStore {
        let mut grads = pairs[0].0.as_tensor().sum_all().unwrap().backward().unwrap();
        grads.remove(pairs[0].0.as_tensor());
        for (v, g) in pairs {
            grads.insert(v.as_tensor(), Tensor::new(*g, &Device::Cpu).unwrap());
        }
        grads
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    /// θ = [1, −2], β = (0.9, 0.95), eps 1e-8, lr 0.1, wd 0.
    /// Step 1, g = [0.5, −0.1]: m = 0.1·g = [0.05, −0.01], v = 0.05·g² = [0.0125, 0.0005];
    ///   m̂ = m/0.1 = g, v̂ = v/0.05 = g² → update = g/|g| = [1, −1] (bias correction makes the
    ///   first step ±lr; uncorrected it would be 0.05/√0.0125 = 0.447); θ = [0.9, −1.9].
    /// Step 2, g = [0.2, 0.3]: m = 0.9·m + 0.1·g = [0.065, 0.021];
    ///   v = 0.95·v + 0.05·g² = [0.011875 + 0.002, 0.000475 + 0.0045] = [0.013875, 0.004975];
    ///   1−β1² = 0.19, 1−β2² = 0.0975; m̂ = [0.3421053, 0.1105263]; v̂ = [0.1423077, 0.0510256];
    ///   √v̂ = [0.3772369, 0.2258885]; update = [0.9068711, 0.4892957];
    ///   θ = [0.9 − 0.0906871, −1.9 − 0.0489296] = [0.8093129, −1.9489296].
    #[test]
    fn two_steps_match_hand_computation_with_bias_correction() {
        let theta = var(&[1.0, -2.0]);
        let mut opt = AdamW::new(vec![theta.clone()], AdamWConfig::default()).unwrap();
        opt.step(&grads_for(&[(&theta, &[0.5, -0.1])]), 0.1).unwrap();
        close(&values(&theta), &[0.9, -1.9], 1e-6);
        opt.step(&grads_for(&[(&theta, &[0.2, 0.3])]), 0.1).unwrap();
        close(&values(&theta), &[0.809_312_9, -1.948_929_6], 1e-6);
        assert_eq!(opt.step_count(), 2);
    }

    /// θ = [2, 1], g = [0, 0.5], lr 0.1, wd 0.1: decay factor 1 − 0.1·0.1 = 0.99.
    /// Element 0: no gradient signal → m = v = 0, update 0 → θ = 2·0.99 = 1.98 (coupled L2
    /// decay would have fed g = 0.2 into Adam and moved it by a full lr: 1.9).
    /// Element 1: 1·0.99 − 0.1·1 = 0.89.
    #[test]
    fn weight_decay_is_decoupled() {
        let theta = var(&[2.0, 1.0]);
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![theta.clone()], cfg).unwrap();
        opt.step(&grads_for(&[(&theta, &[0.0, 0.5])]), 0.1).unwrap();
        close(&values(&theta), &[1.98, 0.89], 1e-6);
    }

    #[test]
    fn vars_without_gradient_are_untouched() {
        let (a, b) = (var(&[1.0]), var(&[5.0]));
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![a.clone(), b.clone()], cfg).unwrap();
        opt.step(&grads_for(&[(&a, &[1.0])]), 0.1).unwrap();
        assert_eq!(values(&b), vec![5.0]);
        assert_ne!(values(&a), vec![1.0]);
    }

    /// Gradients [3] and [4] on two parameters: global norm √(9+16) = 5. Clipping to 1 scales
    /// by 1/5 → [0.6], [0.8]; clipping to 10 leaves them.
    #[test]
    fn clip_grad_norm_scales_to_max_norm() {
        let (a, b) = (var(&[0.0]), var(&[0.0]));
        let vars = [a.clone(), b.clone()];
        let mut grads = grads_for(&[(&a, &[3.0]), (&b, &[4.0])]);
        assert_eq!(grad_norm(&grads, &vars).unwrap(), 5.0);
        assert_eq!(clip_grad_norm(&mut grads, &vars, 10.0).unwrap(), 5.0);
        assert_eq!(grad_norm(&grads, &vars).unwrap(), 5.0);
        assert_eq!(clip_grad_norm(&mut grads, &vars, 1.0).unwrap(), 5.0);
        close(&grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), &[0.6], 1e-7);
        close(&grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), &[0.8], 1e-7);
        assert!((grad_norm(&grads, &vars).unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn non_finite_gradients_are_detected() {
        let a = var(&[0.0, 0.0]);
        let vars = [a.clone()];
        assert!(!grads_have_non_finite(&grads_for(&[(&a, &[1e30, -2.0])]), &vars).unwrap());
        assert!(grads_have_non_finite(&grads_for(&[(&a, &[f32::NAN, 1.0])]), &vars).unwrap());
        assert!(grads_have_non_finite(&grads_for(&[(&a, &[1.0, f32::NEG_INFINITY])]), &vars).unwrap());
    }

    /// Gradient of f(θ) = Σ (θ − c)², by backward.
    fn quadratic_grads(theta: &Var, c: &[f32]) -> GradStore {
        let c = Tensor::new(c, &Device::Cpu).unwrap();
        (theta.as_tensor() - c).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap()
    }

    #[test]
    fn quadratic_converges() {
        let c = [1.0, -2.0, 3.0];
        let theta = var(&[0.0, 0.0, 0.0]);
        let mut opt = AdamW::new(vec![theta.clone()], AdamWConfig::default()).unwrap();
        for step in 0..600 {
            let lr = if step < 400 { 0.05 } else { 0.005 };
            opt.step(&quadratic_grads(&theta, &c), lr).unwrap();
        }
        close(&values(&theta), &c, 1e-2);
    }

    #[test]
    fn save_load_continue_equals_uninterrupted() {
        let c = [0.5, -1.5];
        let cfg = AdamWConfig { weight_decay: 0.01, ..Default::default() };
        let theta = var(&[2.0, 2.0]);
        let mut opt = AdamW::new(vec![theta.clone()], cfg).unwrap();
        for _ in 0..3 {
            opt.step(&quadratic_grads(&theta, &c), 0.1).unwrap();
        }
        // "Checkpoint": parameter values, moments, step count.
        let saved: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
        let resumed_theta = var(&values(&theta));
        let mut resumed = AdamW::new(vec![resumed_theta.clone()], cfg).unwrap();
        resumed.load_state(&saved, opt.step_count()).unwrap();
        for _ in 0..2 {
            opt.step(&quadratic_grads(&theta, &c), 0.1).unwrap();
            resumed.step(&quadratic_grads(&resumed_theta, &c), 0.1).unwrap();
        }
        assert_eq!(values(&theta), values(&resumed_theta));
        // Without the moments the continuation differs (so the equality above is not vacuous).
        let fresh_theta = var(&[2.0, 2.0]);
        let mut fresh = AdamW::new(vec![fresh_theta.clone()], cfg).unwrap();
        for _ in 0..3 {
            fresh.step(&quadratic_grads(&fresh_theta, &c), 0.1).unwrap();
        }
        let mut no_moments = AdamW::new(vec![fresh_theta.clone()], cfg).unwrap();
        no_moments.step(&quadratic_grads(&fresh_theta, &c), 0.1).unwrap();
        no_moments.step(&quadratic_grads(&fresh_theta, &c), 0.1).unwrap();
        assert_ne!(values(&fresh_theta), values(&theta));
    }

    #[test]
    fn load_state_rejects_wrong_shapes_and_counts() {
        let theta = var(&[1.0, 2.0]);
        let mut opt = AdamW::new(vec![theta], AdamWConfig::default()).unwrap();
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let state =
            |pairs: &[(&str, usize)]| pairs.iter().map(|(k, n)| (k.to_string(), t(*n))).collect::<HashMap<_, _>>();

        let err = opt.load_state(&state(&[("adam.m.0", 3), ("adam.v.0", 3)]), 1).unwrap_err();
        assert!(err.to_string().contains("shape [3]"), "{err}");
        let err = opt.load_state(&state(&[("adam.m.0", 2)]), 1).unwrap_err();
        assert!(err.to_string().contains("adam.v.0"), "{err}");
        let err = opt.load_state(&state(&[("adam.m.0", 2), ("adam.v.0", 2), ("adam.m.1", 2)]), 1).unwrap_err();
        assert!(err.to_string().contains("adam.m.1"), "{err}");
        assert_eq!(opt.step_count(), 0, "a failed load changes nothing");
        opt.load_state(&state(&[("adam.m.0", 2), ("adam.v.0", 2), ("ema.0", 7)]), 5).unwrap();
        assert_eq!(opt.step_count(), 5);
    }
}
