//! Time of the composed Mamba-2 scan (`model::ssd::chunked_scan`, candle ops) forward and
//! forward + backward, beside the mixer's in_proj matmul at the same shape, to judge whether a
//! fused CPU scan is worth writing. Defaults: the bench NemotronH of BENCHMARKS.md (d 512, 32
//! heads of 32, state 32, 2 groups, chunk 64) on the `bench step` policy batch (16 rows of
//! 64 + 1 + 33 = 98 tokens).
//!
//!     RAYON_NUM_THREADS=1 cargo run --release --example ssd_scan [-- ROWS TOKENS]

use candle_core::{Device, Tensor, Var};
use rlp::model::ssd;
use std::time::Instant;

/// Median seconds of 5 runs after one warm-up.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[2]
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
    let scan = || ssd::chunked_scan(&x, &dt, &a, &bm, &cm, None, chunk, None).unwrap();
    let fwd = time(|| {
        scan();
    });
    let fwd_bwd = time(|| {
        let (y, _) = scan();
        let loss = (y * &w_out).unwrap().sum_all().unwrap();
        loss.backward().unwrap();
    });
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
    println!("chunked scan forward            {:8.2} ms", fwd * 1e3);
    println!("chunked scan forward + backward {:8.2} ms", fwd_bwd * 1e3);
    println!("sequential scan forward (naive) {:8.2} ms", seq * 1e3);
    println!("in_proj matmul forward          {:8.2} ms", in_proj * 1e3);
    Ok(())
}
