//! The fused CPU scan (`model::ssd_fused`) against the composed chunked scan (`model::ssd`): the
//! outputs, the final states and every input's gradient on random inputs with ragged padding and
//! several documents per row, in f32 (the model's path) and f64; finite differences on a tiny
//! case.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{rel_err, uniform};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlp::model::layout::Segments;
use rlp::model::ssd::chunked_scan;
use rlp::model::ssd_fused::fused_scan;

/// One batch of scan inputs (f64) laid out as the mixer produces them: x [B, T, H, P], dt [B, T, H]
/// in (0.01, 0.6), a [H] in (−3, −0.3), B, C [B, T, G, N], init [B, H, P, N]; x, B and C are zero
/// on padding tokens (dt is not: the mixer's padded dt is softplus(dt_bias)). Row r has `pads[r]`
/// padding tokens, at the start (`left`) or the end, and documents starting at `starts[r]`;
/// the returned ids give the padding its own document.
struct Batch {
    v: Vec<Tensor>,
    ids: Vec<Vec<u32>>,
}

fn batch(
    seed: u64,
    t: usize,
    (h, p, g, n): (usize, usize, usize, usize),
    rows: &[(usize, bool, &[usize])],
) -> Batch {
    let b = rows.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut real = vec![0f64; b * t];
    let mut ids = Vec::new();
    for (r, &(pad, left, starts)) in rows.iter().enumerate() {
        let (lo, hi) = if left { (pad, t) } else { (0, t - pad) };
        let mut row = vec![0u32; t];
        for i in 0..t {
            real[r * t + i] = if (lo..hi).contains(&i) { 1.0 } else { 0.0 };
            row[i] = if !(lo..hi).contains(&i) {
                1000
            } else {
                starts.iter().filter(|&&s| s <= i).count() as u32
            };
        }
        ids.push(row);
    }
    let real = Tensor::from_vec(real, (b, t, 1, 1), &Device::Cpu).unwrap();
    let x = uniform(&mut rng, &[b, t, h, p], -1.0, 1.0)
        .broadcast_mul(&real)
        .unwrap();
    let dt = uniform(&mut rng, &[b, t, h], 0.01, 0.6);
    let a = uniform(&mut rng, &[h], -3.0, -0.3);
    let bm = uniform(&mut rng, &[b, t, g, n], -1.0, 1.0)
        .broadcast_mul(&real)
        .unwrap();
    let cm = uniform(&mut rng, &[b, t, g, n], -1.0, 1.0)
        .broadcast_mul(&real)
        .unwrap();
    let init = uniform(&mut rng, &[b, h, p, n], -0.5, 0.5);
    Batch {
        v: vec![x, dt, a, bm, cm, init],
        ids,
    }
}

const NAMES: [&str; 6] = ["x", "dt", "A", "B", "C", "init"];

/// y, final state and the gradients of Σ y ⊙ w.0 + Σ final ⊙ w.1 for every input, by one scan.
fn run(
    fused: bool,
    v: &[Tensor],
    w: &(Tensor, Tensor),
    with_init: bool,
    seg: Option<&Segments>,
    chunk: usize,
) -> (Tensor, Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = v.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let t: Vec<&Tensor> = vars.iter().map(|x| x.as_tensor()).collect();
    let init = with_init.then_some(t[5]);
    let (y, s) = if fused {
        fused_scan(t[0], t[1], t[2], t[3], t[4], init, seg)
    } else {
        chunked_scan(t[0], t[1], t[2], t[3], t[4], init, chunk, seg)
    }
    .unwrap();
    let dt = v[0].dtype();
    let loss = ((&y * &w.0.to_dtype(dt).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        + (&s * &w.1.to_dtype(dt).unwrap())
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let n = if with_init { 6 } else { 5 };
    let g = (0..n)
        .map(|k| {
            grads
                .get(t[k])
                .unwrap_or_else(|| panic!("no gradient for {}", NAMES[k]))
                .clone()
        })
        .collect();
    (y, s, g)
}

/// Three rows of 45 tokens, heads 6 of 5, 3 groups (2 heads each), state 9 (not a multiple of 8,
/// the kernels' lane width), chunk 8 for the composed scan: row 0 right-padded by 7 with
/// documents starting at 11 and 12 (a one-token document) and 30; row 1 left-padded by 13 with
/// documents at 20 and 24 (on a chunk boundary); row 2 unpadded, one document.
fn ragged() -> Batch {
    batch(
        7,
        45,
        (6, 5, 3, 9),
        &[
            (7, false, &[11, 12, 30]),
            (13, true, &[20, 24]),
            (0, false, &[]),
        ],
    )
}

fn weights(v: &[Tensor], seed: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (
        uniform(&mut rng, v[0].dims(), -1.0, 1.0),
        uniform(&mut rng, v[5].dims(), -1.0, 1.0),
    )
}

fn compare(dtype: DType, tol_out: f64, tol_grad: f64) {
    let bt = ragged();
    let v: Vec<Tensor> = bt.v.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
    let w = weights(&v, 8);
    let seg = Segments {
        ids: bt.ids.clone(),
    };
    for with_init in [false, true] {
        for seg in [None, Some(&seg)] {
            let what = format!("{dtype:?}, init {with_init}, segments {}", seg.is_some());
            let (y, s, g) = run(true, &v, &w, with_init, seg, 8);
            let (y_ref, s_ref, g_ref) = run(false, &v, &w, with_init, seg, 8);
            assert_eq!(y.dtype(), dtype);
            let (ey, es) = (rel_err(&y, &y_ref), rel_err(&s, &s_ref));
            assert!(ey <= tol_out, "{what}: y differs by {ey:e}");
            assert!(es <= tol_out, "{what}: final state differs by {es:e}");
            for k in 0..g.len() {
                let e = rel_err(&g[k], &g_ref[k]);
                assert!(
                    e <= tol_grad,
                    "{what}: gradient of {} differs by {e:e}",
                    NAMES[k]
                );
            }
        }
    }
}

#[test]
fn fused_scan_equals_the_composed_scan_in_f32() {
    compare(DType::F32, 1e-5, 1e-4);
}

#[test]
fn fused_scan_equals_the_composed_scan_in_f64() {
    compare(DType::F64, 1e-11, 1e-11);
}

#[test]
fn fused_scan_resets_the_state_at_each_document() {
    // Row 0 of `ragged`, document 12..30 alone from a zero state, against the same tokens inside
    // the packed row (which has an initial state and earlier documents that must not leak in).
    let bt = ragged();
    let seg = Segments {
        ids: bt.ids.clone(),
    };
    let (y, _) = fused_scan(
        &bt.v[0],
        &bt.v[1],
        &bt.v[2],
        &bt.v[3],
        &bt.v[4],
        Some(&bt.v[5]),
        Some(&seg),
    )
    .unwrap();
    let cut = |t: &Tensor| t.narrow(0, 0, 1).unwrap().narrow(1, 12, 18).unwrap();
    let (y_alone, _) = fused_scan(
        &cut(&bt.v[0]),
        &cut(&bt.v[1]),
        &bt.v[2],
        &cut(&bt.v[3]),
        &cut(&bt.v[4]),
        None,
        None,
    )
    .unwrap();
    let e = rel_err(&cut(&y), &y_alone);
    assert!(
        e < 1e-12,
        "document 12..30 differs from itself alone by {e:e}"
    );
}

#[test]
fn fused_scan_gradients_match_finite_differences() {
    // f64, two rows of 10 tokens (heads 4 of 3, 2 groups, state 5), an initial state, row 0 two
    // documents (the second from token 6), row 1 left-padded by 3.
    let bt = batch(3, 10, (4, 3, 2, 5), &[(0, false, &[6]), (3, true, &[])]);
    let v = bt.v;
    let w = weights(&v, 4);
    let seg = Segments { ids: bt.ids };
    let loss = |v: &[Tensor]| -> f64 {
        let (y, s) =
            fused_scan(&v[0], &v[1], &v[2], &v[3], &v[4], Some(&v[5]), Some(&seg)).unwrap();
        ((y * &w.0).unwrap().sum_all().unwrap() + (s * &w.1).unwrap().sum_all().unwrap())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let (_, _, g) = run(true, &v, &w, true, Some(&seg), 4);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for k in 0..6 {
        let g: Vec<f64> = g[k].flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = v[k].flatten_all().unwrap().to_vec1().unwrap();
        let scale = g.iter().fold(1f64, |m, x| m.max(x.abs()));
        let eps = 1e-6;
        for _ in 0..10 {
            let i = rng.gen_range(0..base.len());
            let at = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                let mut vv = v.clone();
                vv[k] = Tensor::from_vec(p, v[k].dims(), &Device::Cpu).unwrap();
                loss(&vv)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 1e-6 * scale,
                "{} [{i}]: backward {} vs finite difference {fd}",
                NAMES[k],
                g[i]
            );
        }
    }
}

#[test]
fn scan_takes_bf16_inputs_through_the_fused_op() {
    // The model's entry point on the CPU: bf16 inputs are scanned in f32 and match the composed
    // scan of the same (bf16-rounded) values.
    let bt = ragged();
    let v: Vec<Tensor> =
        bt.v.iter()
            .map(|t| t.to_dtype(DType::BF16).unwrap())
            .collect();
    let seg = Segments {
        ids: bt.ids.clone(),
    };
    let (y, s) = rlp::model::ssd::scan(
        &v[0],
        &v[1],
        &v[2],
        &v[3],
        &v[4],
        Some(&v[5]),
        8,
        Some(&seg),
    )
    .unwrap();
    let (y_ref, s_ref) = chunked_scan(
        &v[0],
        &v[1],
        &v[2],
        &v[3],
        &v[4],
        Some(&v[5]),
        8,
        Some(&seg),
    )
    .unwrap();
    assert_eq!((y.dtype(), s.dtype()), (DType::F32, DType::F32));
    assert!(
        rel_err(&y, &y_ref) <= 1e-5 && rel_err(&s, &s_ref) <= 1e-5,
        "bf16 inputs: y {:e}, state {:e}",
        rel_err(&y, &y_ref),
        rel_err(&s, &s_ref)
    );
}
