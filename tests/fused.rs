//! The fused ops of `rlp::model::fused` against the compositions they replace: values,
//! gradients (through `backward`), and central finite differences.

mod common;

use candle_core::{Device, Tensor, Var};
use common::max_abs_diff;
use rlp::model::fused::{masked_target_logprobs, rms_norm, rms_norm_reference, tempered_entropy, Exclusions};

fn randn(shape: &[usize], seed: u64) -> Vec<f32> {
    // Small deterministic LCG, roughly N(0, 1) by summing uniforms.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| {
            let mut acc = 0f32;
            for _ in 0..4 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                acc += ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
            }
            acc * 1.7
        })
        .collect()
}

/// The policy's original composition: log_softmax(z/T), gather, minus log(1 − excluded mass).
fn logprob_reference(z: &Tensor, targets: &[u32], excl: &Exclusions, temp: f32) -> Tensor {
    let dev = z.device();
    let lp = candle_nn::ops::log_softmax(&(z / temp as f64).unwrap(), 1).unwrap();
    let t = Tensor::new(targets, dev).unwrap().unsqueeze(1).unwrap();
    let tok = lp.gather(&t, 1).unwrap().squeeze(1).unwrap();
    let removed = lp.index_select(&Tensor::new(excl.banned.as_slice(), dev).unwrap(), 1).unwrap().exp().unwrap().sum(1).unwrap();
    let first: Vec<f32> = excl.first_rows.iter().map(|&f| f as u8 as f32).collect();
    let end = lp.narrow(1, excl.first_banned.unwrap() as usize, 1).unwrap().squeeze(1).unwrap().exp().unwrap();
    let removed = (removed + (end * Tensor::new(first.as_slice(), dev).unwrap()).unwrap()).unwrap();
    (tok - (1.0 - removed).unwrap().log().unwrap()).unwrap()
}

fn setup() -> (Var, Vec<u32>, Exclusions, Tensor) {
    let (m, v) = (5, 37);
    let z = Var::from_vec(randn(&[m, v], 1), (m, v), &Device::Cpu).unwrap();
    let targets = vec![3, 0, 36, 17, 9];
    let excl = Exclusions { banned: vec![1, 30], first_banned: Some(2), first_rows: vec![true, false, false, true, false] };
    let weights = Tensor::new(&[0.7f32, -1.3, 0.4, 2.0, -0.5], &Device::Cpu).unwrap(); // loss = Σ w·lp
    (z, targets, excl, weights)
}

#[test]
fn masked_target_logprobs_match_the_reference_in_value_and_gradient() {
    let (z, targets, excl, w) = setup();
    for temp in [1.0f32, 0.7] {
        let fused = masked_target_logprobs(z.as_tensor(), &targets, &excl, temp).unwrap();
        let reference = logprob_reference(z.as_tensor(), &targets, &excl, temp);
        assert!(max_abs_diff(&fused, &reference) < 1e-5, "value differs by {}", max_abs_diff(&fused, &reference));
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gr) = (gf.get(z.as_tensor()).unwrap(), gr.get(z.as_tensor()).unwrap());
        assert!(max_abs_diff(gf, gr) < 1e-5, "gradient differs by {}", max_abs_diff(gf, gr));
    }
}

#[test]
fn masked_target_logprobs_gradient_matches_finite_differences() {
    let (z, targets, excl, w) = setup();
    let loss = |zt: &Tensor| -> f64 { (masked_target_logprobs(zt, &targets, &excl, 0.8).unwrap() * &w).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64 };
    let g = loss_grad(&z, |t| (masked_target_logprobs(t, &targets, &excl, 0.8).unwrap() * &w).unwrap().sum_all().unwrap());
    check_finite_differences(&z, &g, loss);
}

#[test]
fn tempered_entropy_matches_the_reference() {
    let (z, ..) = setup();
    let lp = candle_nn::ops::log_softmax(&(z.as_tensor() / 0.7).unwrap(), 1).unwrap();
    let reference = (lp.exp().unwrap() * &lp).unwrap().sum(1).unwrap().neg().unwrap();
    let fused = tempered_entropy(z.as_tensor(), 0.7).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-5);
}

#[test]
fn rms_norm_matches_the_reference_in_value_and_gradient() {
    let (n, d) = (6, 16);
    let x = Var::from_vec(randn(&[2, 3, d], 2), (2, 3, d), &Device::Cpu).unwrap();
    let w = Var::from_vec(randn(&[d], 3), d, &Device::Cpu).unwrap();
    let up = Tensor::from_vec(randn(&[n, d], 4), (2, 3, d), &Device::Cpu).unwrap(); // loss = Σ up·y
    let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    let reference = rms_norm_reference(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-5);
    let gf = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (reference * &up).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&x, &w] {
        let (a, b) = (gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap());
        assert!(max_abs_diff(a, b) < 1e-4, "gradient differs by {}", max_abs_diff(a, b));
    }
    let gx = loss_grad(&x, |t| (rms_norm(t, w.as_tensor(), 1e-5).unwrap() * &up).unwrap().sum_all().unwrap());
    check_finite_differences(&x, &gx, |t| (rms_norm(t, w.as_tensor(), 1e-5).unwrap() * &up).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64);
    let gw = loss_grad(&w, |t| (rms_norm(x.as_tensor(), t, 1e-5).unwrap() * &up).unwrap().sum_all().unwrap());
    check_finite_differences(&w, &gw, |t| (rms_norm(x.as_tensor(), t, 1e-5).unwrap() * &up).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64);
}

fn loss_grad(v: &Var, f: impl Fn(&Tensor) -> Tensor) -> Vec<f32> {
    let grads = f(v.as_tensor()).backward().unwrap();
    grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Central differences in f64 arithmetic over f32 inputs, step 1e-2: loose but honest.
fn check_finite_differences(v: &Var, grad: &[f32], loss: impl Fn(&Tensor) -> f64) {
    let base: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-2f32;
    for i in (0..base.len()).step_by(3) {
        let at = |delta: f32| {
            let mut x = base.clone();
            x[i] += delta;
            loss(&Tensor::from_vec(x, v.as_tensor().shape(), &Device::Cpu).unwrap())
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        assert!((fd - grad[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()), "element {i}: finite difference {fd}, gradient {}", grad[i]);
    }
}

#[test]
fn softmax_matches_the_reference_in_value_and_gradient() {
    let x = Var::from_vec(randn(&[2, 3, 7], 5), (2, 3, 7), &Device::Cpu).unwrap();
    let up = Tensor::from_vec(randn(&[2, 3, 7], 6), (2, 3, 7), &Device::Cpu).unwrap();
    let f = |t: &Tensor| (rlp::model::fused::softmax_last_dim(t).unwrap() * &up).unwrap().sum_all().unwrap();
    let r = |t: &Tensor| (candle_nn::ops::softmax(t, 2).unwrap() * &up).unwrap().sum_all().unwrap();
    assert!((f(x.as_tensor()).to_scalar::<f32>().unwrap() - r(x.as_tensor()).to_scalar::<f32>().unwrap()).abs() < 1e-5);
    let (gf, gr) = (loss_grad(&x, f), loss_grad(&x, r));
    assert!(gf.iter().zip(&gr).all(|(a, b)| (a - b).abs() < 1e-5), "{gf:?} vs {gr:?}");
    check_finite_differences(&x, &gf, |t| f(t).to_scalar::<f32>().unwrap() as f64);
}

#[test]
fn rope_matches_the_reference_in_value_and_gradient() {
    use rlp::model::rope::Rope;
    let (b, h, t, hd) = (2, 3, 4, 8);
    let rope = Rope { inv_freq: (0..hd / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / hd as f64)).collect() };
    let positions: Vec<u32> = vec![0, 1, 2, 3, 5, 6, 7, 9];
    let (cos, sin) = rope.cos_sin(&positions, b, t, &Device::Cpu).unwrap();
    let x = Var::from_vec(randn(&[b, h, t, hd], 7), (b, h, t, hd), &Device::Cpu).unwrap();
    let up = Tensor::from_vec(randn(&[b, h, t, hd], 8), (b, h, t, hd), &Device::Cpu).unwrap();
    let f = |x: &Tensor| (rlp::model::fused::rope(x, &cos, &sin).unwrap() * &up).unwrap().sum_all().unwrap();
    let r = |x: &Tensor| (Rope::apply(x, &(cos.clone(), sin.clone())).unwrap() * &up).unwrap().sum_all().unwrap();
    assert!((f(x.as_tensor()).to_scalar::<f32>().unwrap() - r(x.as_tensor()).to_scalar::<f32>().unwrap()).abs() < 1e-4);
    let (gf, gr) = (loss_grad(&x, f), loss_grad(&x, r));
    assert!(gf.iter().zip(&gr).all(|(a, b)| (a - b).abs() < 1e-5));
    check_finite_differences(&x, &gf, |t| f(t).to_scalar::<f32>().unwrap() as f64);
}

#[test]
fn swiglu_matches_the_reference_in_value_and_gradient() {
    use rlp::model::fused::{swiglu, swiglu_reference};
    let shape = (2, 3, 10);
    let gate = Var::from_vec(randn(&[2, 3, 10], 9), shape, &Device::Cpu).unwrap();
    let up = Var::from_vec(randn(&[2, 3, 10], 10), shape, &Device::Cpu).unwrap();
    let w = Tensor::from_vec(randn(&[2, 3, 10], 11), shape, &Device::Cpu).unwrap(); // loss = Σ w·y
    let fused = swiglu(gate.as_tensor(), up.as_tensor()).unwrap();
    let reference = swiglu_reference(gate.as_tensor(), up.as_tensor()).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-5, "value differs by {}", max_abs_diff(&fused, &reference));
    let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&gate, &up] {
        let (a, b) = (gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap());
        assert!(max_abs_diff(a, b) < 1e-5, "gradient differs by {}", max_abs_diff(a, b));
    }
    let loss = |g: &Tensor, u: &Tensor| (swiglu(g, u).unwrap() * &w).unwrap().sum_all().unwrap();
    let gg = loss_grad(&gate, |t| loss(t, up.as_tensor()));
    check_finite_differences(&gate, &gg, |t| loss(t, up.as_tensor()).to_scalar::<f32>().unwrap() as f64);
    let gu = loss_grad(&up, |t| loss(gate.as_tensor(), t));
    check_finite_differences(&up, &gu, |t| loss(gate.as_tensor(), t).to_scalar::<f32>().unwrap() as f64);
}

/// A gradient built from tracked tensors carries their graph and keeps the forward's activations
/// alive as long as it lives (found as +36 MB per block under gradient checkpointing): every
/// weight gradient of a backward through the model must be a plain tensor.
#[test]
fn weight_gradients_carry_no_graph() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let (m, vars) = common::fixture_model(name).into_vars().unwrap();
        let rows = vec![vec![1u32, 5, 9, 2, 7, 3], vec![4u32, 8, 6]];
        let logits = m.forward_logits(&rows).unwrap();
        let grads = candle_nn::ops::log_softmax(&logits, 2).unwrap().sum_all().unwrap().backward().unwrap();
        for (pname, v) in &vars {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            assert!(!g.track_op(), "{name}: the gradient of {pname} carries a graph");
        }
    }
}

/// The attention softmax with scale and mask folded in equals scale, mask and softmax as
/// separate ops (candle's autodiff), in value (exactly: the same f32 operations) and in gradient,
/// with causal rows
/// (the masked half of each row) and a fully masked padding row.
#[test]
fn masked_softmax_matches_the_composition() {
    use rlp::model::fused::{masked_softmax, masked_softmax_reference};
    use rlp::model::layout::MASKED;
    let (b, h, t, k) = (2, 3, 4, 4);
    let x = Var::from_vec(randn(&[b, h, t, k], 8), (b, h, t, k), &Device::Cpu).unwrap();
    let mut mask = vec![0f32; b * t * k];
    for r in 0..b {
        for i in 0..t {
            for j in 0..k {
                if j > i || (r == 1 && i == t - 1) {
                    mask[(r * t + i) * k + j] = MASKED;
                }
            }
        }
    }
    let mask = Tensor::from_vec(mask, (b, 1, t, k), &Device::Cpu).unwrap();
    let up = Tensor::from_vec(randn(&[b, h, t, k], 9), (b, h, t, k), &Device::Cpu).unwrap();
    let scale = 1.0 / 8f64.sqrt();
    let fused = masked_softmax(x.as_tensor(), &mask, scale).unwrap();
    let reference = masked_softmax_reference(x.as_tensor(), &mask, scale).unwrap();
    assert_eq!(fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(), reference.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let f = |t: &Tensor| (masked_softmax(t, &mask, scale).unwrap() * &up).unwrap().sum_all().unwrap();
    let r = |t: &Tensor| (masked_softmax_reference(t, &mask, scale).unwrap() * &up).unwrap().sum_all().unwrap();
    let (gf, gr) = (loss_grad(&x, f), loss_grad(&x, r));
    assert!(gf.iter().zip(&gr).all(|(a, b)| (a - b).abs() < 1e-6), "{gf:?} vs {gr:?}");
    assert!(gf.iter().any(|&g| g != 0.0));
}

#[test]
fn target_logprobs_match_the_composition_and_finite_differences() {
    use rlp::model::fused::{target_logprobs, target_logprobs_reference};
    let (b, t, v) = (2, 3, 11);
    let mut init = randn(&[b, t, v], 9);
    init[v + 4] = 60.0; // a peaked row
    init[2 * v + 1] = -200.0; // an element whose exp underflows
    let z = Var::from_vec(init, (b, t, v), &Device::Cpu).unwrap();
    let targets = Tensor::new(&[[0u32, 4, 10], [7, 1, 5]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]], &Device::Cpu).unwrap(); // loss = Σ w·lp
    let f = |z: &Tensor| (target_logprobs(z, &targets).unwrap() * &w).unwrap().sum_all().unwrap();
    let r = |z: &Tensor| (target_logprobs_reference(z, &targets).unwrap() * &w).unwrap().sum_all().unwrap();
    let (fused, reference) = (target_logprobs(z.as_tensor(), &targets).unwrap(), target_logprobs_reference(z.as_tensor(), &targets).unwrap());
    assert_eq!(fused.dims(), &[b, t]);
    assert!(max_abs_diff(&fused, &reference) < 1e-5, "value differs by {}", max_abs_diff(&fused, &reference));
    let (gf, gr) = (loss_grad(&z, f), loss_grad(&z, r));
    assert!(gf.iter().zip(&gr).all(|(a, b)| (a - b).abs() < 1e-6), "{gf:?} vs {gr:?}");
    check_finite_differences(&z, &gf, |t| f(t).to_scalar::<f32>().unwrap() as f64);
}

#[test]
fn target_logprobs_by_hand() {
    // z = [0, ln 3]: softmax = [1/4, 3/4]; log p(1) = ln(3/4); d log p(1)/dz = δ − p = [−1/4, 1/4].
    let z = Var::from_vec(vec![0.0f32, 3f32.ln()], (1, 2), &Device::Cpu).unwrap();
    let targets = Tensor::new(&[1u32], &Device::Cpu).unwrap();
    let lp = rlp::model::fused::target_logprobs(z.as_tensor(), &targets).unwrap();
    let got: Vec<f32> = lp.to_vec1().unwrap();
    assert!((got[0] - 0.75f32.ln()).abs() < 1e-6, "{got:?}");
    let g: Vec<f32> = lp.sum_all().unwrap().backward().unwrap().get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!((g[0] + 0.25).abs() < 1e-6 && (g[1] - 0.25).abs() < 1e-6, "{g:?}");
    let err = rlp::model::fused::target_logprobs(z.as_tensor(), &Tensor::new(&[2u32], &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary of 2"), "{err}");
}
