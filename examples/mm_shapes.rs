use candle_core::{Device, Tensor};
use std::time::Instant;
fn time(f: impl Fn() -> Tensor) -> f64 {
    f();
    let mut v: Vec<f64> = (0..7).map(|_| { let t = Instant::now(); f(); t.elapsed().as_secs_f64() }).collect();
    v.sort_by(f64::total_cmp); v[3]
}
fn main() {
    let d = Device::Cpu;
    for &(m, k, n) in &[(1usize, 576usize, 1536usize), (16, 576, 1536), (1, 576, 49154), (16, 576, 49154), (16, 1536, 576), (64,576,1536),(256, 576, 1536)] {
        let x = Tensor::randn(0f32, 1., (m, k), &d).unwrap();
        let w = Tensor::randn(0f32, 1., (n, k), &d).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let a = time(|| x.matmul(&w.t().unwrap()).unwrap());
        let b = time(|| x.matmul(&wt).unwrap());
        let c = time(|| w.matmul(&x.t().unwrap()).unwrap().t().unwrap().contiguous().unwrap());
        let g = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
        println!("m{m} k{k} n{n}: x·Wᵀ {:.1} GF/s ({:.3} ms) | x·Wt {:.1} ({:.3}) | (W·xᵀ)ᵀ {:.1} ({:.3})", g(a), a*1e3, g(b), b*1e3, g(c), c*1e3);
    }
}
