//! The model against Hugging Face transformers: golden outputs computed by
//! `scripts/make_fixtures.py` (torch, float32) for tiny random Llama, Qwen2 and Qwen3 checkpoints,
//! and by transformers 5.24 for a tiny random NemotronH (`M*-M-*`: Mamba-2, attention and MLP
//! blocks; its `golden.json` `meta` documents every field).

mod common;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use common::{ids, mean_next_token_nll, next_token_logprobs, test_data};
use rand::SeedableRng;
use rlp::model::{self, AttnLayout, Model};
use serde_json::Value;

fn fixture(name: &str) -> (Model, Value) {
    let dir = test_data(name);
    let loaded = model::weights::load(&dir).unwrap();
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    (loaded.model, golden)
}

fn floats2(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

/// max |a - b| / max |b| over a whole tensor: the relative error every tolerance here bounds.
fn rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut diff = 0f32;
    let mut scale = 0f32;
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().zip(rb) {
            diff = diff.max((x - y).abs());
            scale = scale.max(y.abs());
        }
    }
    diff / scale
}

fn check_logits(name: &str) {
    let (m, g) = fixture(name);
    for (k, inp) in g["inputs"].as_array().unwrap().iter().enumerate() {
        let ids = ids(inp);
        let logits = m.forward_logits(&[ids.clone()]).unwrap().squeeze(0).unwrap();
        let got = logits.to_vec2::<f32>().unwrap();
        let err = rel_err(&got, &floats2(&g["logits"][k]));
        assert!(err < 1e-4, "{name} input {k}: logits rel err {err}");
        if ids.len() > 1 {
            let lp = next_token_logprobs(&logits, &ids).to_vec1::<f32>().unwrap();
            let want: Vec<f32> = g["logprobs_next"][k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let err = rel_err(&[lp], &[want]);
            assert!(err < 1e-4, "{name} input {k}: logprobs rel err {err}");
        }
    }
}

fn check_greedy(name: &str) {
    let (m, g) = fixture(name);
    let m = m.detached().unwrap();
    let prompts: Vec<Vec<u32>> = g["inputs"].as_array().unwrap().iter().map(ids).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    // one at a time, and all three together as a ragged batch: both must match transformers
    for (k, p) in prompts.iter().enumerate() {
        let out = m.generate(&[p.clone()], 16, None, &mut rng).unwrap();
        assert_eq!(out[0], ids(&g["greedy"][k]), "{name} input {k}: greedy continuation");
    }
    let out = m.generate(&prompts, 16, None, &mut rng).unwrap();
    for k in 0..prompts.len() {
        assert_eq!(out[k], ids(&g["greedy"][k]), "{name} input {k}: greedy continuation in a ragged batch");
    }
}

/// Mean next-token loss of one row and its gradients, by plain backward or by
/// `Model::checkpointed_backward` (gradient checkpointing per block).
fn loss_and_grads(m: &Model, params: &[&Tensor], ids: &[u32], checkpointed: bool) -> (Tensor, GradStore) {
    let loss_of = |hidden: &Tensor| -> anyhow::Result<Tensor> {
        let logits = m.logits(&hidden.squeeze(0)?)?; // [T, V]
        Ok(mean_next_token_nll(&logits, ids))
    };
    let row = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let layout = AttnLayout::right_padded(&[ids.len()], ids.len());
    if checkpointed {
        m.checkpointed_backward(&row, &layout, params, loss_of).unwrap()
    } else {
        let loss = loss_of(&m.forward_hidden(&row, &layout, None).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        (loss, grads)
    }
}

fn check_grads(name: &str, checkpointed: bool) {
    let (m, g) = fixture(name);
    let (m, vars) = m.into_vars().unwrap();
    let k = g["grad"]["input_index"].as_u64().unwrap() as usize;
    let ids = ids(&g["inputs"][k]);
    let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
    let (loss, grads) = loss_and_grads(&m, &params, &ids, checkpointed);
    let want_loss = g["grad"]["loss"].as_f64().unwrap();
    let got_loss = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got_loss - want_loss).abs() / want_loss.abs() < 1e-4, "{name}: loss {got_loss} vs {want_loss}");
    let params = g["grad"]["params"].as_object().unwrap();
    assert_eq!(params.len(), vars.len(), "{name}: parameter count");
    for (pname, var) in &vars {
        let want = &params[pname.as_str()];
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        let l2 = grad.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64;
        let want_l2 = want["grad_l2"].as_f64().unwrap();
        assert!((l2 - want_l2).abs() <= 1e-4 * want_l2.max(1e-8), "{name}: {pname} grad L2 {l2} vs {want_l2}");
        let head: Vec<f32> = grad.flatten_all().unwrap().narrow(0, 0, 8).unwrap().to_vec1().unwrap();
        let want_head: Vec<f32> = want["grad_head"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let absmax = want["grad_absmax"].as_f64().unwrap() as f32;
        for (a, b) in head.iter().zip(&want_head) {
            assert!((a - b).abs() <= 1e-4 * absmax, "{name}: {pname} grad head {head:?} vs {want_head:?}");
        }
    }
}

fn check_padded_batch(name: &str) {
    let (m, g) = fixture(name);
    let b = &g["batch"];
    let rows: Vec<Vec<u32>> = b["input_ids"].as_array().unwrap().iter().zip(b["attention_mask"].as_array().unwrap()).map(|(r, msk)| ids(r).into_iter().zip(ids(msk)).filter(|&(_, m)| m == 1).map(|(t, _)| t).collect()).collect();
    // `short_index` names the input; in the batch the short row is the one with fewer tokens
    let short = if rows[0].len() < rows[1].len() { 0 } else { 1 };
    assert_eq!(rows[short], ids(&g["inputs"][b["short_index"].as_u64().unwrap() as usize]));
    // right padding through the training forward
    let logits = m.forward_logits(&rows).unwrap();
    let n = rows[short].len();
    let got = logits.get(short).unwrap().narrow(0, 0, n).unwrap().to_vec2::<f32>().unwrap();
    let want = floats2(&b["logits_short_real"]);
    let err = rel_err(&got, &want);
    assert!(err < 1e-4, "{name}: right-padded short row rel err {err}");
    // the long row equals its unpadded forward
    let long = 1 - short;
    let alone = m.forward_logits(&[rows[long].clone()]).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let batched = logits.get(long).unwrap().to_vec2::<f32>().unwrap();
    assert!(rel_err(&batched, &alone) < 1e-5, "{name}: long row changed by batching");
    // left padding through the KV-cache prefill: the last logits of each row
    let (last, _) = m.detached().unwrap().prefill(&rows, 64).unwrap();
    let last = last.to_vec2::<f32>().unwrap();
    let want_left = floats2(&b["left"]["logits_short_real"]);
    let err = rel_err(&[last[short].clone()], &[want_left[n - 1].clone()]);
    assert!(err < 1e-4, "{name}: left-padded prefill rel err {err}");
}

/// Gradient checkpointing on a right-padded ragged batch (every input of the fixture, a loss
/// with a different weight per position) gives the plain backward's loss and gradients.
fn check_checkpointed_batch(name: &str) {
    let (m, g) = fixture(name);
    let (m, vars) = m.into_vars().unwrap();
    let rows: Vec<Vec<u32>> = g["inputs"].as_array().unwrap().iter().map(ids).collect();
    assert!(rows.len() >= 2 && rows.iter().any(|r| r.len() != rows[0].len()), "{name}: the fixture's inputs should be ragged");
    let (row_ids, lens, t) = model::transformer::pad_right(&rows, &Device::Cpu).unwrap();
    let layout = AttnLayout::right_padded(&lens, t);
    let v = m.cfg.vocab_size;
    // weights w[b, t, v] = ((b + 2t + 3v) mod 7 - 3) / 10 on real positions, 0 on padding
    let w: Vec<f32> = (0..rows.len() * t * v).map(|i| (i / (t * v), (i / v) % t, i % v)).map(|(b, p, c)| if p < lens[b] { ((b + 2 * p + 3 * c) % 7) as f32 / 10.0 - 0.3 } else { 0.0 }).collect();
    let w = Tensor::from_vec(w, (rows.len(), t, v), &Device::Cpu).unwrap();
    let loss_of = |hidden: &Tensor| -> anyhow::Result<Tensor> { Ok((candle_nn::ops::log_softmax(&m.logits(hidden)?, candle_core::D::Minus1)? * &w)?.sum_all()?) };
    let plain = loss_of(&m.forward_hidden(&row_ids, &layout, None).unwrap()).unwrap();
    let plain_grads = plain.backward().unwrap();
    let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
    let (ckpt, ckpt_grads) = m.checkpointed_backward(&row_ids, &layout, &params, loss_of).unwrap();
    // Only the weights' gradients, as plain tensors: any other entry (candle stores gradients
    // for constant operands too) could hold a block's graph alive for the rest of the step.
    assert!(ckpt_grads.get_ids().count() <= vars.len() + 1, "{name}: the checkpointed gradient store holds more than the weights");
    let (a, b) = (plain.to_scalar::<f32>().unwrap(), ckpt.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() <= 1e-6 * a.abs(), "{name}: loss {a} vs checkpointed {b}");
    for (pname, var) in &vars {
        let x = plain_grads.get(var.as_tensor()).unwrap();
        let y = ckpt_grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no checkpointed gradient for {pname}"));
        assert!(!y.track_op(), "{name}: the checkpointed gradient of {pname} carries a graph");
        let l2 = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let rel = l2(&(x - y).unwrap()) / l2(x).max(1e-30);
        assert!(rel < 1e-5, "{name}: {pname} checkpointed gradient differs by {rel:e} relative");
    }
}

macro_rules! golden_tests {
    ($($m:ident => $name:expr),*) => {$(
        mod $m {
            #[test] fn logits_and_logprobs_match_transformers() { super::check_logits($name) }
            #[test] fn greedy_continuations_match_transformers() { super::check_greedy($name) }
            #[test] fn loss_and_gradients_match_transformers() { super::check_grads($name, false) }
            #[test] fn checkpointed_gradients_match_transformers() { super::check_grads($name, true) }
            #[test] fn checkpointed_gradients_equal_plain_backward_on_a_padded_batch() { super::check_checkpointed_batch($name) }
            #[test] fn padded_batches_match_unpadded() { super::check_padded_batch($name) }
        }
    )*};
}

golden_tests!(qwen3 => "tiny-qwen3", llama => "tiny-llama", qwen2 => "tiny-qwen2", nemotron_h => "tiny-nemotron-h");

fn l2_f64(t: &Tensor) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The residual stream after every NemotronH block (embeddings first, the final-normed states
/// last): L2 over all positions and the first values at the last position.
#[test]
fn nemotron_h_hidden_states_after_every_block_match_transformers() {
    let (m, g) = fixture("tiny-nemotron-h");
    let hs = &g["hidden_states"];
    let ids = ids(&g["inputs"][hs["input_index"].as_u64().unwrap() as usize]);
    let row = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let got = m.hidden_states(&row, &AttnLayout::right_padded(&[ids.len()], ids.len())).unwrap();
    let entries = hs["entries"].as_array().unwrap();
    assert_eq!(got.len(), entries.len(), "one entry per block plus the embeddings");
    for (h, e) in got.iter().zip(entries) {
        let i = e["index"].as_u64().unwrap();
        let (l2, want) = (l2_f64(h), e["l2"].as_f64().unwrap());
        assert!((l2 - want).abs() <= 1e-4 * want, "hidden state {i}: L2 {l2} vs {want}");
        let last: Vec<f32> = h.get(0).unwrap().get(ids.len() - 1).unwrap().narrow(0, 0, 8).unwrap().to_vec1().unwrap();
        let want_head = floats(&e["last_pos_head"]);
        let scale = want_head.iter().fold(0f32, |a, x| a.max(x.abs()));
        for (a, b) in last.iter().zip(&want_head) {
            assert!((a - b).abs() <= 1e-4 * scale.max(1.0), "hidden state {i}: last position {last:?} vs {want_head:?}");
        }
    }
}

/// The SSM state each Mamba layer holds after a cached prefill of the longest input.
#[test]
fn nemotron_h_final_ssm_states_match_transformers() {
    let (m, g) = fixture("tiny-nemotron-h");
    let ids = ids(&g["inputs"][2]);
    let (_, cache) = m.detached().unwrap().prefill(&[ids.clone()], ids.len() + 1).unwrap();
    let states = g["ssm_states"].as_object().unwrap();
    assert_eq!(states.len(), 2, "the fixture has two Mamba layers");
    for (layer, want) in states {
        let (_, ssm) = cache.ssm_state(layer.parse().unwrap()).unwrap().expect("a Mamba layer's state after prefill");
        let ssm = ssm.squeeze(0).unwrap(); // [H, P, N]
        let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(ssm.dims(), shape.as_slice(), "layer {layer}: SSM state shape");
        let (l2, want_l2) = (l2_f64(&ssm), want["l2"].as_f64().unwrap());
        assert!((l2 - want_l2).abs() <= 1e-4 * want_l2, "layer {layer}: SSM state L2 {l2} vs {want_l2}");
        let sum: f64 = ssm.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&x| x as f64).sum();
        let want_sum = want["sum"].as_f64().unwrap();
        assert!((sum - want_sum).abs() <= 1e-4 * want_l2 * (ssm.elem_count() as f64).sqrt(), "layer {layer}: SSM state sum {sum} vs {want_sum}");
        let head: Vec<f32> = ssm.flatten_all().unwrap().narrow(0, 0, 8).unwrap().to_vec1().unwrap();
        let want_head = floats(&want["head"]);
        let absmax = ssm.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        for (a, b) in head.iter().zip(&want_head) {
            assert!((a - b).abs() <= 1e-4 * absmax, "layer {layer}: SSM state head {head:?} vs {want_head:?}");
        }
    }
}
