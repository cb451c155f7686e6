//! Time of the Mamba-2 scan forward and forward + backward, composed (`model::ssd::chunked_scan`,
//! candle ops) beside fused (`model::ssd_fused::fused_scan`, the CPU op the model uses), each
//! round timing both in turn (A B A B), with the naive sequential loop and the mixer's in_proj
//! matmul at the same shape for scale. Defaults: the bench NemotronH of BENCHMARKS.md (d 512, 32
//! heads of 32, state 32, 2 groups, chunk 64) on the `bench step` policy batch (16 rows of
//! 64 + 1 + 33 = 98 tokens).
//!
//!     RAYON_NUM_THREADS=1 cargo run --release --example ssd_scan [-- ROWS TOKENS]

use candle_core::{Device, Tensor, Var};
use rlp::model::{ssd, ssd_fused};
use std::time::Instant;

/// Seconds of one call.
fn once(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Median seconds of 5 runs after one warm-up.
fn time(mut f: impl FnMut()) -> f64 {
    median(&mut (0..6).map(|_| once(&mut f)).skip(1).collect::<Vec<_>>())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians of 5 rounds after one warm-up round; each round runs every function once, in order,
/// so that load on a shared machine falls on all of them alike.
fn interleaved(fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut t = vec![Vec::new(); fs.len()];
    for round in 0..6 {
        for (k, f) in fs.iter_mut().enumerate() {
            let s = once(*f);
            if round > 0 {
                t[k].push(s);
            }
        }
    }
    t.iter_mut().map(|v| median(v)).collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("ROWS TOKENS are integers")).collect();
    let (b, t) = (args.first().copied().unwrap_or(16), args.get(1).copied().unwrap_or(98));
    let (d, h, p, n, g, chunk) = (512, 32, 32, 32, 2, 64);
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h, p), &dev)?)?;
    let dt = Var::from_tensor(&(Tensor::rand(0f32, 1.0, (b, t, h), &dev)? * 0.1)?)?;
    let a = Var::from_tensor(&Tensor::rand(-2f32, -0.5, h, &dev)?)?;
    let bm = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, g, n), &dev)?)?;
    let cm = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, g, n), &dev)?)?;
    let w_out = Tensor::randn(0f32, 1.0, (b, t, h, p), &dev)?;
    let composed = || ssd::chunked_scan(&x, &dt, &a, &bm, &cm, None, chunk, None).unwrap();
    let fused = || ssd_fused::fused_scan(&x, &dt, &a, &bm, &cm, None, None).unwrap();
    let fwd_bwd = |(y, _): (Tensor, Tensor)| {
        let loss = (y * &w_out).unwrap().sum_all().unwrap();
        loss.backward().unwrap();
    };
    // The two agree (tests/ssd_fused.rs checks it in value and gradient); here only the time.
    let (yc, yf) = (composed().0, fused().0);
    let diff = (&yc - &yf)?.abs()?.max_all()?.to_scalar::<f32>()? / yc.abs()?.max_all()?.to_scalar::<f32>()?;
    let ms = interleaved(&mut [&mut || drop(composed()), &mut || drop(fused()), &mut || fwd_bwd(composed()), &mut || fwd_bwd(fused())]);
    let seq = time(|| {
        ssd::sequential_scan(x.as_tensor(), dt.as_tensor(), a.as_tensor(), bm.as_tensor(), cm.as_tensor(), None).unwrap();
    });
    // the mixer's in_proj at the same rows: [B·T, d] · [d, I + C + H]ᵀ
    let rows = Tensor::randn(0f32, 1.0, (b * t, d), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (h * p + h * p + 2 * g * n + h, d), &dev)?;
    let in_proj = time(|| {
        rows.matmul(&w.t().unwrap()).unwrap();
    });
    println!("rows {b}, tokens {t}, H {h}, P {p}, N {n}, G {g}, chunk {chunk}, threads {}", candle_core::utils::get_num_threads());
    println!("max |composed − fused| / max |composed| of y: {diff:.1e}");
    println!("composed (chunked) scan forward            {:8.2} ms", ms[0] * 1e3);
    println!("fused scan forward                         {:8.2} ms", ms[1] * 1e3);
    println!("composed (chunked) scan forward + backward {:8.2} ms", ms[2] * 1e3);
    println!("fused scan forward + backward              {:8.2} ms", ms[3] * 1e3);
    println!("sequential scan forward (naive)            {:8.2} ms", seq * 1e3);
    println!("in_proj matmul forward                     {:8.2} ms", in_proj * 1e3);
    Ok(())
}
