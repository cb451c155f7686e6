//! NemotronH beyond the golden fixture's numbers (those are in `golden.rs`): the chunked SSD scan
//! against the sequential recurrence and finite differences, packed documents, cached decoding
//! (continuations, duplicated and dropped rows), and the config parser's key spellings and
//! refusals.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{ids, mean_next_token_nll, rel_err, test_data, uniform};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlp::model::layout::Segments;
use rlp::model::ssd::{chunked_scan, sequential_scan};
use rlp::model::{self, AttnLayout, Config, Model};
use serde_json::Value;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    test_data("tiny-nemotron-h")
}

fn fixture() -> (Model, Value) {
    let m = model::weights::load(&fixture_dir()).unwrap().model;
    let g: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("golden.json")).unwrap()).unwrap();
    (m, g)
}

fn fixture_config() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap()).unwrap()
}

/// Random scan inputs in f64: x [B, T, H, P], dt [B, T, H] in (0.01, 0.6), a [H] in (−3, −0.3),
/// B, C [B, T, G, N], init [B, H, P, N].
fn scan_inputs(seed: u64, b: usize, t: usize) -> Vec<Tensor> {
    let (h, p, g, n) = (4, 3, 2, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    vec![
        uniform(&mut rng, &[b, t, h, p], -1.0, 1.0),
        uniform(&mut rng, &[b, t, h], 0.01, 0.6),
        uniform(&mut rng, &[h], -3.0, -0.3),
        uniform(&mut rng, &[b, t, g, n], -1.0, 1.0),
        uniform(&mut rng, &[b, t, g, n], -1.0, 1.0),
        uniform(&mut rng, &[b, h, p, n], -0.5, 0.5),
    ]
}

#[test]
fn chunked_scan_equals_the_sequential_recurrence() {
    // T = 11 with chunks of 4 (a ragged last chunk), of 1, and of 16 (one chunk); with and
    // without an initial state.
    let v = scan_inputs(1, 2, 11);
    for chunk in [1, 4, 16] {
        for init in [None, Some(&v[5])] {
            let (y, s) = chunked_scan(&v[0], &v[1], &v[2], &v[3], &v[4], init, chunk, None).unwrap();
            let (y_ref, s_ref) = sequential_scan(&v[0], &v[1], &v[2], &v[3], &v[4], init).unwrap();
            assert!(rel_err(&y, &y_ref) < 1e-12, "chunk {chunk} init {}: y differs by {:e}", init.is_some(), rel_err(&y, &y_ref));
            assert!(rel_err(&s, &s_ref) < 1e-12, "chunk {chunk} init {}: final state differs by {:e}", init.is_some(), rel_err(&s, &s_ref));
        }
    }
}

/// Row r of every [B, ..] tensor, tokens a..b of the [B, T, ..] ones.
fn doc_slice(v: &[Tensor], r: usize, a: usize, b: usize) -> Vec<Tensor> {
    let row = |t: &Tensor| t.narrow(0, r, 1).unwrap();
    vec![row(&v[0]).narrow(1, a, b - a).unwrap(), row(&v[1]).narrow(1, a, b - a).unwrap(), v[2].clone(), row(&v[3]).narrow(1, a, b - a).unwrap(), row(&v[4]).narrow(1, a, b - a).unwrap()]
}

#[test]
fn packed_documents_are_scanned_as_if_alone() {
    // Row 0: documents 0..5 and 5..11 (the boundary inside a chunk); row 1: 0..4, 4..8, 8..11
    // (boundaries on chunk starts).
    let v = scan_inputs(2, 2, 11);
    let docs: [Vec<(usize, usize)>; 2] = [vec![(0, 5), (5, 11)], vec![(0, 4), (4, 8), (8, 11)]];
    let seg_ids: Vec<Vec<u32>> = docs.iter().map(|d| (0..11).map(|i| d.iter().position(|&(a, b)| a <= i && i < b).unwrap() as u32).collect()).collect();
    let (y, s) = chunked_scan(&v[0], &v[1], &v[2], &v[3], &v[4], None, 4, Some(&Segments { ids: seg_ids })).unwrap();
    for (r, row_docs) in docs.iter().enumerate() {
        for &(a, b) in row_docs {
            let d = doc_slice(&v, r, a, b);
            let (y_ref, s_ref) = sequential_scan(&d[0], &d[1], &d[2], &d[3], &d[4], None).unwrap();
            let got = y.narrow(0, r, 1).unwrap().narrow(1, a, b - a).unwrap();
            assert!(rel_err(&got, &y_ref) < 1e-12, "row {r} document {a}..{b}: y differs by {:e}", rel_err(&got, &y_ref));
            if b == 11 {
                let got = s.narrow(0, r, 1).unwrap();
                assert!(rel_err(&got, &s_ref) < 1e-12, "row {r}: final state is not the last document's");
            }
        }
    }
}

/// Σ y ⊙ w1 + Σ final ⊙ w2 of the chunked scan, for fixed random weights.
fn scan_loss(v: &[Tensor], w: &(Tensor, Tensor), segments: Option<&Segments>) -> Tensor {
    let (y, s) = chunked_scan(&v[0], &v[1], &v[2], &v[3], &v[4], Some(&v[5]), 4, segments).unwrap();
    ((y * &w.0).unwrap().sum_all().unwrap() + (s * &w.1).unwrap().sum_all().unwrap()).unwrap()
}

#[test]
fn chunked_scan_gradients_match_finite_differences() {
    let v = scan_inputs(3, 2, 10);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let w = (uniform(&mut rng, v[0].dims(), -1.0, 1.0), uniform(&mut rng, v[5].dims(), -1.0, 1.0));
    let names = ["x", "dt", "A", "B", "C", "init"];
    let segs = Segments { ids: vec![vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1], vec![0; 10]] };
    for segments in [None, Some(&segs)] {
        let vars: Vec<Var> = v.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tracked: Vec<Tensor> = vars.iter().map(|x| x.as_tensor().clone()).collect();
        let grads = scan_loss(&tracked, &w, segments).backward().unwrap();
        for (k, var) in vars.iter().enumerate() {
            let g: Vec<f64> = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {}", names[k])).flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = v[k].flatten_all().unwrap().to_vec1().unwrap();
            let scale = g.iter().fold(1f64, |m, x| m.max(x.abs()));
            let eps = 1e-6;
            for _ in 0..8 {
                let i = rng.gen_range(0..base.len());
                let loss_at = |delta: f64| -> f64 {
                    let mut p = base.clone();
                    p[i] += delta;
                    let mut vv = v.clone();
                    vv[k] = Tensor::from_vec(p, v[k].dims(), &Device::Cpu).unwrap();
                    scan_loss(&vv, &w, segments).to_scalar::<f64>().unwrap()
                };
                let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
                assert!((fd - g[i]).abs() <= 1e-6 * scale, "{} [{i}] (segments: {}): backward {} vs finite difference {fd}", names[k], segments.is_some(), g[i]);
            }
        }
    }
}

/// Logits [T, V] of one unpadded row.
fn logits_alone(m: &Model, row: &[u32]) -> Tensor {
    m.forward_logits(&[row.to_vec()]).unwrap().squeeze(0).unwrap()
}

#[test]
fn packed_documents_through_the_model_equal_each_document_alone() {
    let (m, g) = fixture();
    let long = ids(&g["inputs"][2]); // 33 tokens
    let (a, b) = (long[..13].to_vec(), long[13..].to_vec());
    let segs: Vec<u32> = (0..long.len()).map(|i| if i < 13 { 0 } else { 1 }).collect();
    let row = Tensor::new(long.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let packed = m.logits(&m.forward_hidden(&row, &AttnLayout::segmented(&[segs], long.len()), None).unwrap()).unwrap().squeeze(0).unwrap();
    let err_a = rel_err(&packed.narrow(0, 0, 13).unwrap(), &logits_alone(&m, &a));
    let err_b = rel_err(&packed.narrow(0, 13, long.len() - 13).unwrap(), &logits_alone(&m, &b));
    assert!(err_a < 1e-5 && err_b < 1e-5, "packed documents differ from alone: {err_a:e}, {err_b:e}");
    // and packing matters: the second document read as a continuation of the first differs
    let joined = logits_alone(&m, &long).narrow(0, 13, long.len() - 13).unwrap();
    assert!(rel_err(&joined, &logits_alone(&m, &b)) > 1e-2, "the fixture should be sensitive to the state carried over");
}

#[test]
fn cached_decoding_equals_the_full_forward() {
    let (m, g) = fixture();
    let m = m.detached().unwrap();
    let seq = ids(&g["inputs"][2]);
    let full = logits_alone(&m, &seq); // [33, V]
    // prefill 25 tokens, then one token at a time (the single-step recurrence)
    let (mut logits, mut cache) = m.prefill(&[seq[..25].to_vec()], seq.len()).unwrap();
    for t in 25..seq.len() {
        let err = rel_err(&logits.squeeze(0).unwrap(), &full.get(t - 1).unwrap());
        assert!(err < 1e-5, "position {t}: cached logits differ by {err:e}");
        logits = m.decode_step(&[seq[t]], &mut cache).unwrap();
    }
    // prefill 9 tokens, then 24 at once (the chunked scan from a cached state and conv window)
    let (_, mut cache) = m.prefill(&[seq[..9].to_vec()], seq.len()).unwrap();
    let rest = Tensor::new(&seq[9..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let hidden = m.forward_hidden(&rest, &cache.step_layout(seq.len() - 9), Some(&mut cache)).unwrap();
    let err = rel_err(&m.logits(&hidden).unwrap().squeeze(0).unwrap(), &full.narrow(0, 9, seq.len() - 9).unwrap());
    assert!(err < 1e-5, "a 24-token continuation of a cache differs by {err:e}");
}

#[test]
fn duplicated_and_dropped_cache_rows_decode_like_single_rows() {
    let (m, g) = fixture();
    let m = m.detached().unwrap();
    let (short, long) = (ids(&g["inputs"][1]), ids(&g["inputs"][2])[..20].to_vec());
    let feed = [5u32, 77, 300, 12];
    // reference: each prompt alone, the same tokens fed
    let alone = |p: &[u32]| -> Vec<Tensor> {
        let (_, mut c) = m.prefill(&[p.to_vec()], 32).unwrap();
        feed.iter().map(|&t| m.decode_step(&[t], &mut c).unwrap().squeeze(0).unwrap()).collect()
    };
    let (ref_short, ref_long) = (alone(&short), alone(&long));
    // ragged (left-padded) prefill, rows duplicated into rollouts [long, short, long, long]
    let (_, cache) = m.prefill(&[short.clone(), long.clone()], 32).unwrap();
    let mut cache = cache.select_rows(&[1, 0, 1, 1]).unwrap();
    let mut which = vec![1usize, 0, 1, 1];
    for (step, &t) in feed.iter().enumerate() {
        let out = m.decode_step(&vec![t; which.len()], &mut cache).unwrap();
        for (r, &w) in which.iter().enumerate() {
            let want = if w == 0 { &ref_short[step] } else { &ref_long[step] };
            let err = rel_err(&out.get(r).unwrap(), want);
            assert!(err < 1e-5, "step {step}, row {r}: {err:e} from the prompt decoded alone");
        }
        if step == 1 {
            // rows 0 and 2 finish: the batch continues with rows 1 and 3
            cache = cache.select_rows(&[1, 3]).unwrap();
            which = vec![0, 1];
        }
    }
}

#[test]
fn hybrid_override_pattern_and_old_key_names_parse_like_layers_block_type() {
    let new = Config::from_json(fixture_config()).unwrap();
    let mut old = fixture_config();
    let o = old.as_object_mut().unwrap();
    o.remove("layers_block_type");
    o.insert("hybrid_override_pattern".into(), "M*-M-*".into());
    o.insert("num_hidden_layers".into(), 6.into());
    let hd = o.remove("head_dim").unwrap();
    o.insert("attention_head_dim".into(), hd);
    let eps = o.remove("layer_norm_epsilon").unwrap();
    o.insert("rms_norm_eps".into(), eps);
    let old = Config::from_json(old).unwrap();
    assert_eq!(old.hybrid, new.hybrid);
    assert_eq!((old.head_dim, old.rms_norm_eps, old.num_hidden_layers), (new.head_dim, new.rms_norm_eps, new.num_hidden_layers));
    assert_eq!(new.hybrid.as_ref().unwrap().pattern(), "M*-M-*");
    assert_eq!(new.rms_norm_eps, 1e-5);
    // the fixture's own config carries time_step_limit [0.0, {"__float__": "Infinity"}]
    assert!(fixture_config()["time_step_limit"][1].is_object());
    assert_eq!(new.num_params(), model::init::parameter_shapes(&new).iter().map(|(_, s, _)| s.iter().product::<usize>()).sum::<usize>());
}

fn config_error(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut c = fixture_config();
    edit(c.as_object_mut().unwrap());
    format!("{:#}", Config::from_json(c).unwrap_err())
}

#[test]
fn moe_blocks_mtp_layers_and_inconsistent_lists_are_refused_by_name() {
    let e = config_error(|o| {
        o["layers_block_type"][2] = "moe".into();
    });
    assert!(e.contains("layer 2") && e.contains("mixture-of-experts") && e.contains("`moe`"), "{e}");
    let e = config_error(|o| {
        o.remove("layers_block_type");
        o.insert("hybrid_override_pattern".into(), "M*EM-*".into());
    });
    assert!(e.contains("layer 2") && e.contains("mixture-of-experts") && e.contains("`E`"), "{e}");
    let e = config_error(|o| {
        o.insert("num_nextn_predict_layers".into(), 1.into());
    });
    assert!(e.contains("multi-token-prediction"), "{e}");
    let e = config_error(|o| {
        o.insert("num_hidden_layers".into(), 5.into());
    });
    assert!(e.contains("num_hidden_layers is 5") && e.contains("6 layers"), "{e}");
    let e = config_error(|o| {
        o["layers_block_type"][0] = "ssm".into();
    });
    assert!(e.contains("layers_block_type[0]"), "{e}");
}

/// bf16 compute with f32 master weights (the GPU recipe, here on the CPU): logits close to the
/// f32 ones, and f32 gradients reach every weight through the cast, close to the f32 gradients.
#[test]
fn bf16_compute_is_close_to_f32_and_differentiable() {
    let (m, g) = fixture();
    let seq = ids(&g["inputs"][2]);
    let (m, vars) = m.into_vars().unwrap();
    let bf = m.to_dtype(DType::BF16).unwrap();
    let err = rel_err(&logits_alone(&bf, &seq), &logits_alone(&m, &seq));
    assert!(err < 5e-2, "bf16 logits differ by {err:e}");
    let loss = |model: &Model| -> Tensor {
        mean_next_token_nll(&logits_alone(model, &seq), &seq)
    };
    let (g32, g16) = (loss(&m).backward().unwrap(), loss(&bf).backward().unwrap());
    let l2 = |t: &Tensor| t.to_dtype(DType::F32).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    for (name, v) in &vars {
        let a = g32.get(v.as_tensor()).unwrap();
        let b = g16.get(v.as_tensor()).unwrap_or_else(|| panic!("no bf16 gradient for {name}"));
        assert_eq!(b.dtype(), DType::F32, "{name}: the master gradient should be f32");
        let rel = l2(&(a - b).unwrap()) / l2(a).max(1e-12);
        assert!(rel < 0.1, "{name}: bf16 gradient differs by {rel:e} relative");
    }
}
