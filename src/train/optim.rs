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
//!
//! On the CPU with f32 parameters the update is one fused pass per parameter that reads g and
//! writes θ, m and v in place, split over the rayon pool ([`adamw_fused`]); it computes the same
//! f32 operations in the same order as the tensor-op composition that every other device and
//! dtype runs ([`adamw_tensors`], the reference), so both give the same bits.

use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use rayon::prelude::*;
use std::cell::RefCell;
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
        let k = AdamCoefs::new(&self.cfg, self.step, lr);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let (m, v) = (&self.m[i], &self.v[i]);
            if [var.as_tensor(), m, v].into_iter().all(is_cpu_contiguous_f32) && g.device().is_cpu() {
                // a gradient that arrives strided (a transposed product) is copied once
                adamw_fused(var.as_tensor(), &g.to_dtype(DType::F32)?.contiguous()?, m, v, &k)?;
            } else {
                let (m, v) = adamw_tensors(var, g, m, v, &self.cfg, self.step, lr)?;
                self.m[i] = m;
                self.v[i] = v;
            }
        }
        Ok(())
    }

    /// The moments, named `adam.m.{i}` / `adam.v.{i}` with i the parameter's index in `vars`.
    /// Save them with [`step_count`](Self::step_count) to resume exactly. On the CPU they share
    /// storage with the live state, which the next `step` overwrites in place: write them out
    /// (or `copy` them) before stepping again.
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
                // Own storage: `step` writes the moments in place, and must not write into the
                // caller's tensors.
                out.push(t.to_dtype(DType::F32)?.to_device(var.device())?.copy()?);
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

/// The f32 constants of one AdamW step, each rounded from f64 as candle rounds a scalar operand
/// (`affine(mul, add)` casts both to f32), so that the fused pass matches the tensor ops.
#[derive(Debug, Clone, Copy)]
struct AdamCoefs {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// 1/(1−β1^t) and 1/(1−β2^t): candle divides by a scalar as a multiply by its reciprocal.
    inv_bias1: f32,
    inv_bias2: f32,
    eps: f32,
    /// 1 − lr·wd.
    decay: f32,
    lr: f32,
}

impl AdamCoefs {
    fn new(cfg: &AdamWConfig, step: u64, lr: f64) -> Self {
        let t = step as i32;
        AdamCoefs {
            beta1: cfg.beta1 as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            inv_bias1: (1.0 / (1.0 - cfg.beta1.powi(t))) as f32,
            inv_bias2: (1.0 / (1.0 - cfg.beta2.powi(t))) as f32,
            eps: cfg.eps as f32,
            decay: (1.0 - lr * cfg.weight_decay) as f32,
            lr: lr as f32,
        }
    }

    /// The update of one run of elements: θ, m, v in place from g.
    #[inline]
    fn apply(&self, theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((t, &g), m), v) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * self.beta1 + g * self.one_minus_beta1;
            *v = *v * self.beta2 + g * g * self.one_minus_beta2;
            let update = (*m * self.inv_bias1) / ((*v * self.inv_bias2).sqrt() + self.eps);
            *t = *t * self.decay - update * self.lr;
        }
    }
}

/// Elements per task of the threaded passes: large enough that a task's work dwarfs rayon's
/// scheduling, small enough to split a 576 × 1536 matrix over a few threads.
const PAR_CHUNK: usize = 1 << 15;

/// One AdamW step of one CPU f32 parameter: θ, m, v updated in place in one pass over the four
/// buffers, in chunks over the rayon pool. All four must be contiguous (`is_cpu_contiguous_f32`).
fn adamw_fused(theta: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &AdamCoefs) -> Result<()> {
    let n = theta.elem_count();
    ensure!(g.elem_count() == n && m.elem_count() == n && v.elem_count() == n, "adamw: gradient or moments of {} elements for a parameter of {n}", g.elem_count());
    with_f32_slice(g, |g| {
        with_f32_mut(theta, |theta| {
            with_f32_mut(m, |m| {
                with_f32_mut(v, |v| {
                    if n <= PAR_CHUNK {
                        k.apply(theta, g, m, v);
                    } else {
                        let chunks = theta.par_chunks_mut(PAR_CHUNK).zip(g.par_chunks(PAR_CHUNK));
                        chunks.zip(m.par_chunks_mut(PAR_CHUNK)).zip(v.par_chunks_mut(PAR_CHUNK)).for_each(|(((t, g), m), v)| k.apply(t, g, m, v));
                    }
                })
            })?
        })?
    })??;
    Ok(())
}

/// One AdamW step of one parameter with candle tensor ops, on any device and dtype: the
/// reference the fused pass is tested against. Writes θ and returns the new (m, v).
fn adamw_tensors(var: &Var, g: &Tensor, m: &Tensor, v: &Tensor, cfg: &AdamWConfig, step: u64, lr: f64) -> Result<(Tensor, Tensor)> {
    let AdamWConfig { beta1, beta2, eps, weight_decay } = *cfg;
    let t = step as i32;
    let (bias1, bias2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
    let g = g.to_dtype(DType::F32)?;
    let m = ((m * beta1)? + (&g * (1.0 - beta1))?)?;
    let v = ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
    let m_hat = (&m / bias1)?;
    let v_hat = (&v / bias2)?;
    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
    let theta = var.as_detached_tensor().to_dtype(DType::F32)?;
    let theta = ((theta * (1.0 - lr * weight_decay))? - (update * lr)?)?;
    var.set(&theta.to_dtype(var.dtype())?)?;
    Ok((m, v))
}

/// Whether `t` is an f32 CPU tensor whose elements lie contiguously in its storage: what the
/// fused in-place passes of this module and of the EMA update take.
pub(crate) fn is_cpu_contiguous_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.layout().is_contiguous()
}

/// Calls `f` with the elements of a contiguous f32 CPU tensor.
pub(crate) fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        bail!("expected a contiguous f32 CPU tensor, got {:?} on {:?}", t.dtype(), t.device().location());
    };
    Ok(f(&data[start..end]))
}

/// Calls `f` with the elements of a contiguous f32 CPU tensor, writable in place (under the
/// storage's write lock, as `Var::set` writes; every tensor sharing the storage sees the change).
/// Nested calls must name tensors with distinct storages.
pub(crate) fn with_f32_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let op = WithMut { f: RefCell::new(Some(f)), out: RefCell::new(None) };
    t.inplace_op1(&op)?;
    op.out.into_inner().context("the in-place op did not run")
}

/// The in-place op behind [`with_f32_mut`]: runs its closure once on the storage's elements.
struct WithMut<F, R> {
    f: RefCell<Option<F>>,
    out: RefCell<Option<R>>,
}

impl<F: FnOnce(&mut [f32]) -> R, R> InplaceOp1 for WithMut<F, R> {
    fn name(&self) -> &'static str {
        "with-f32-mut"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("with-f32-mut: expected a contiguous f32 tensor")
        };
        let f = self.f.borrow_mut().take().ok_or_else(|| candle_core::Error::Msg("with-f32-mut: ran twice".into()))?;
        *self.out.borrow_mut() = Some(f(&mut data[start..end]));
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

    /// Pseudo-random values of mixed sign and magnitude (1e-6 to 10), with exact zeros.
    fn mixed_values(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|i| if i % 97 == 0 { 0.0 } else { rng.gen_range(-1.0f32..1.0) * 10f32.powi(rng.gen_range(-6..=1)) }).collect()
    }

    /// The fused CPU pass gives exactly the values of the tensor-op reference (the composition
    /// every other device runs) over several steps, with weight decay and a changing lr, for a
    /// parameter below one chunk and one split into several chunks over the pool.
    #[test]
    fn fused_step_equals_tensor_reference() {
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        for n in [7, 3 * PAR_CHUNK + 5] {
            let init = mixed_values(n, 1);
            let (fused, reference) = (var(&init), var(&init));
            let mut opt = AdamW::new(vec![fused.clone()], cfg).unwrap();
            let zeros = Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
            let (mut m, mut v) = (zeros.clone(), zeros);
            for step in 1..=4u64 {
                let lr = 1e-3 / step as f64;
                let g = mixed_values(n, 10 + step);
                opt.step(&grads_for(&[(&fused, &g)]), lr).unwrap();
                let g = Tensor::new(g.as_slice(), &Device::Cpu).unwrap();
                (m, v) = adamw_tensors(&reference, &g, &m, &v, &cfg, step, lr).unwrap();
                assert!(values(&fused) == values(&reference), "θ differs at step {step}, n = {n}");
                assert!(opt.m[0].to_vec1::<f32>().unwrap() == m.to_vec1::<f32>().unwrap(), "m differs at step {step}");
                assert!(opt.v[0].to_vec1::<f32>().unwrap() == v.to_vec1::<f32>().unwrap(), "v differs at step {step}");
            }
            assert_ne!(values(&fused), init, "the steps moved θ");
        }
    }

    /// A strided gradient (the transpose of a contiguous one) gives the reference's values too.
    #[test]
    fn strided_gradient_equals_tensor_reference() {
        let init = mixed_values(6, 2);
        let (fused, reference) = (Var::from_vec(init.clone(), (2, 3), &Device::Cpu).unwrap(), Var::from_vec(init, (2, 3), &Device::Cpu).unwrap());
        let g = Tensor::from_vec(mixed_values(6, 3), (3, 2), &Device::Cpu).unwrap().t().unwrap(); // [2, 3], strided
        assert!(!g.is_contiguous());
        let mut opt = AdamW::new(vec![fused.clone()], AdamWConfig::default()).unwrap();
        let mut grads = grads_for(&[(&fused, &[0.0; 6])]);
        grads.insert(fused.as_tensor(), g.clone());
        opt.step(&grads, 1e-2).unwrap();
        let zeros = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        adamw_tensors(&reference, &g, &zeros, &zeros, &AdamWConfig::default(), 1, 1e-2).unwrap();
        let flat = |v: &Var| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(flat(&fused) == flat(&reference));
        assert_ne!(flat(&fused), mixed_values(6, 2));
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
