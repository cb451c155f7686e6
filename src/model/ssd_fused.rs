//! The Mamba-2 scan as one fused CPU op with its own backward: the same results as
//! `ssd::chunked_scan` (the composed reference, kept for other devices), computed by running the
//! recurrence directly over contiguous slices, one (row, head) pair per rayon task, with f32
//! kernels in AVX2/FMA where the CPU has them.
//!
//! Forward, per row b and head h (group g = h / R), token t, S [P, N]:
//!   S_t = a_t·S_{t-1} + dt_t·x_t ⊗ B_t,   a_t = exp(dt_t·A_h) (0 where a new document starts),
//!   y_t = S_t · C_t,                     S_{-1} = init (zeros when none), final = S_{T-1}.
//! Backward, walking t down from T−1 with G = ∂L/∂S_t (G starts as ∂L/∂final):
//!   G     += gy_t ⊗ C_t                 (y_t reads S_t)
//!   gC_t  += Σ_p gy_t[p]·S_t[p, :]       (summed over the R heads of the group)
//!   u[p]   = Σ_n G[p, n]·B_t[n],  gx_t = dt_t·u,  gB_t += dt_t·Σ_p G[p, :]·x_t[p]
//!   q      = Σ G ⊙ S_{t-1}
//!   gdt_t  = Σ_p x_t[p]·u[p] + A·a_t·q,  gA += dt_t·a_t·q
//!   G     ← a_t·G                       (∂L/∂S_{t-1} before y_{t-1}'s term), ginit = G at the end.
//! The backward needs S_{t-1} and S_t; rather than keeping all T states it stores one state per
//! block of `BLOCK` tokens in a forward pass and recomputes each block's states as it walks back.
//!
//! Interface: the six inputs are flattened and concatenated into one vector (candle's `cat` is
//! differentiable, so each input gets its slice of the packed gradient) and the op returns
//! [y | final] packed the same way. f32 and f64 (the finite-difference tests) are supported; the
//! dt clamp and the D skip stay with the caller, as for the composed scan.
//!
//! Shapes: B rows, T tokens, H heads, P head dim, G groups, R = H/G heads per group, N state size.

use anyhow::{ensure, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::layout::Segments;

/// Tokens per stored state in the backward's forward pass: it keeps T/BLOCK + BLOCK + 1 states
/// of P·N per task instead of T.
const BLOCK: usize = 32;

/// The arithmetic of the kernels, for f32 and f64, and the two per-token kernels over one
/// (row, head) state. The defaults are plain loops; f32 replaces them with AVX2/FMA versions
/// where the CPU has those (the release build targets baseline x86-64, and the compiler does
/// not vectorise the loops' reductions by itself).
trait Real: Copy + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> + std::ops::AddAssign + 'static {
    const ZERO: Self;
    fn exp(self) -> Self;

    /// One token forward: S ← da·S + dt·x ⊗ b, then y = S·c, for S [P, N], x [P], b, c [N], y [P].
    /// Without `y` it only advances S (the backward's recomputation).
    fn token_forward(s: &mut [Self], x: &[Self], b: &[Self], c: &[Self], y: Option<&mut [Self]>, da: Self, dt: Self) {
        scalar::token_forward(s, x, b, c, y, da, dt)
    }

    /// One token backward (the module header's step for token t): G [P, N] holds ∂L/∂S_t less
    /// y_t's term on entry and ∂L/∂S_{t-1} less y_{t-1}'s on exit; adds to gc, gb [N] (gb
    /// without its dt factor), writes gx [P] and returns (Σ_p x[p]·u[p], q).
    #[allow(clippy::too_many_arguments)]
    fn token_backward(g: &mut [Self], gc: &mut [Self], gb: &mut [Self], gx: &mut [Self], s: &[Self], prev: &[Self], x: &[Self], b: &[Self], c: &[Self], gy: &[Self], da: Self, dt: Self) -> (Self, Self) {
        scalar::token_backward(g, gc, gb, gx, s, prev, x, b, c, gy, da, dt)
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    fn exp(self) -> Self {
        f32::exp(self)
    }

    fn token_forward(s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], y: Option<&mut [f32]>, da: f32, dt: f32) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // Safety: the CPU has AVX2 and FMA (checked by `available`); the slices' lengths are
            // the ones `token_forward` documents, which `simd` relies on.
            return unsafe { simd::token_forward(s, x, b, c, y, da, dt) };
        }
        scalar::token_forward(s, x, b, c, y, da, dt)
    }

    fn token_backward(g: &mut [f32], gc: &mut [f32], gb: &mut [f32], gx: &mut [f32], s: &[f32], prev: &[f32], x: &[f32], b: &[f32], c: &[f32], gy: &[f32], da: f32, dt: f32) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // Safety: as in `token_forward`.
            return unsafe { simd::token_backward(g, gc, gb, gx, s, prev, x, b, c, gy, da, dt) };
        }
        scalar::token_backward(g, gc, gb, gx, s, prev, x, b, c, gy, da, dt)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// The kernels as plain loops (f64, and f32 without AVX2/FMA).
mod scalar {
    use super::Real;

    pub(super) fn token_forward<F: Real>(s: &mut [F], x: &[F], b: &[F], c: &[F], mut y: Option<&mut [F]>, da: F, dt: F) {
        for (pi, row) in s.chunks_exact_mut(b.len()).enumerate() {
            let w = dt * x[pi];
            let mut acc = F::ZERO;
            for ((sv, &bv), &cv) in row.iter_mut().zip(b).zip(c) {
                *sv = da * *sv + w * bv;
                acc += *sv * cv;
            }
            if let Some(y) = y.as_deref_mut() {
                y[pi] = acc;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn token_backward<F: Real>(g: &mut [F], gc: &mut [F], gb: &mut [F], gx: &mut [F], s: &[F], prev: &[F], x: &[F], b: &[F], c: &[F], gy: &[F], da: F, dt: F) -> (F, F) {
        let n = b.len();
        let (mut xu, mut q) = (F::ZERO, F::ZERO);
        for pi in 0..x.len() {
            let (gyp, xp) = (gy[pi], x[pi]);
            let rows = (&mut g[pi * n..(pi + 1) * n], &s[pi * n..(pi + 1) * n], &prev[pi * n..(pi + 1) * n]);
            let mut u = F::ZERO;
            for j in 0..n {
                let gv = rows.0[j] + gyp * c[j]; // G[p, j] with y_t's term
                gc[j] += gyp * rows.1[j];
                gb[j] += xp * gv;
                u += gv * b[j];
                q += gv * rows.2[j];
                rows.0[j] = gv * da;
            }
            gx[pi] = dt * u;
            xu += xp * u;
        }
        (xu, q)
    }
}

/// The f32 kernels with AVX2 and FMA: 8 columns of a state row per instruction, then the
/// remaining N mod 8 one by one.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn token_forward(s: &mut [f32], x: &[f32], b: &[f32], c: &[f32], mut y: Option<&mut [f32]>, da: f32, dt: f32) {
        let n = b.len();
        let m = n / 8 * 8;
        let (bp, cp) = (b.as_ptr(), c.as_ptr());
        let vda = _mm256_set1_ps(da);
        for (pi, row) in s.chunks_exact_mut(n).enumerate() {
            let w = dt * x[pi];
            let vw = _mm256_set1_ps(w);
            let sp = row.as_mut_ptr();
            let mut acc = _mm256_setzero_ps();
            let mut j = 0;
            while j < m {
                let v = _mm256_fmadd_ps(vda, _mm256_loadu_ps(sp.add(j)), _mm256_mul_ps(vw, _mm256_loadu_ps(bp.add(j))));
                _mm256_storeu_ps(sp.add(j), v);
                acc = _mm256_fmadd_ps(v, _mm256_loadu_ps(cp.add(j)), acc);
                j += 8;
            }
            let mut tail = 0f32;
            for k in m..n {
                row[k] = da * row[k] + w * b[k];
                tail += row[k] * c[k];
            }
            if let Some(y) = y.as_deref_mut() {
                y[pi] = hsum(acc) + tail;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn token_backward(g: &mut [f32], gc: &mut [f32], gb: &mut [f32], gx: &mut [f32], s: &[f32], prev: &[f32], x: &[f32], b: &[f32], c: &[f32], gy: &[f32], da: f32, dt: f32) -> (f32, f32) {
        let n = b.len();
        let m = n / 8 * 8;
        let (bp, cp, gcp, gbp) = (b.as_ptr(), c.as_ptr(), gc.as_mut_ptr(), gb.as_mut_ptr());
        let vda = _mm256_set1_ps(da);
        let (mut xu, mut q) = (0f32, 0f32);
        for pi in 0..x.len() {
            let (gyp, xp) = (gy[pi], x[pi]);
            let (vgy, vx) = (_mm256_set1_ps(gyp), _mm256_set1_ps(xp));
            let (gp, sp, pp) = (g.as_mut_ptr().add(pi * n), s.as_ptr().add(pi * n), prev.as_ptr().add(pi * n));
            let (mut ua, mut qa) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut j = 0;
            while j < m {
                let gv = _mm256_fmadd_ps(vgy, _mm256_loadu_ps(cp.add(j)), _mm256_loadu_ps(gp.add(j)));
                _mm256_storeu_ps(gcp.add(j), _mm256_fmadd_ps(vgy, _mm256_loadu_ps(sp.add(j)), _mm256_loadu_ps(gcp.add(j))));
                _mm256_storeu_ps(gbp.add(j), _mm256_fmadd_ps(vx, gv, _mm256_loadu_ps(gbp.add(j))));
                ua = _mm256_fmadd_ps(gv, _mm256_loadu_ps(bp.add(j)), ua);
                qa = _mm256_fmadd_ps(gv, _mm256_loadu_ps(pp.add(j)), qa);
                _mm256_storeu_ps(gp.add(j), _mm256_mul_ps(gv, vda));
                j += 8;
            }
            let (mut u, mut qt) = (0f32, 0f32);
            for k in m..n {
                let gv = *gp.add(k) + gyp * c[k];
                gc[k] += gyp * *sp.add(k);
                gb[k] += xp * gv;
                u += gv * b[k];
                qt += gv * *pp.add(k);
                *gp.add(k) = gv * da;
            }
            u += hsum(ua);
            q += qt + hsum(qa);
            gx[pi] = dt * u;
            xu += xp * u;
        }
        (xu, q)
    }
}

/// Sizes of one scan.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    p: usize,
    g: usize,
    n: usize,
}

impl Dims {
    /// Lengths of the packed inputs: x, dt, A, B, C, init.
    fn input_lens(&self, has_init: bool) -> [usize; 6] {
        let Dims { b, t, h, p, g, n } = *self;
        [
            b * t * h * p,
            b * t * h,
            h,
            b * t * g * n,
            b * t * g * n,
            if has_init { b * h * p * n } else { 0 },
        ]
    }
}

/// The inputs of one scan, views into the packed vector.
struct Inputs<'a, F> {
    x: &'a [F],    // [B, T, H, P]
    dt: &'a [F],   // [B, T, H]
    a: &'a [F],    // [H]
    bm: &'a [F],   // [B, T, G, N]
    cm: &'a [F],   // [B, T, G, N]
    init: &'a [F], // [B, H, P, N] or empty
}

impl<'a, F: Real> Inputs<'a, F> {
    fn split(packed: &'a [F], lens: [usize; 6]) -> Self {
        let mut rest = packed;
        let mut take = |k: usize| {
            let (head, tail) = rest.split_at(lens[k]);
            rest = tail;
            head
        };
        Inputs {
            x: take(0),
            dt: take(1),
            a: take(2),
            bm: take(3),
            cm: take(4),
            init: take(5),
        }
    }
}

/// One (row, head) pair's view of the inputs: token t's x [P], dt, B [N], C [N].
struct Lane<'a, F> {
    d: Dims,
    inp: &'a Inputs<'a, F>,
    reset: &'a [bool], // [T]: token t starts a new document (never token 0)
    bi: usize,
    hi: usize,
    gi: usize,
}

impl<'a, F: Real> Lane<'a, F> {
    fn new(d: Dims, inp: &'a Inputs<'a, F>, reset: &'a [bool], bh: usize) -> Self {
        let (bi, hi) = (bh / d.h, bh % d.h);
        Lane {
            d,
            inp,
            reset: &reset[bi * d.t..(bi + 1) * d.t],
            bi,
            hi,
            gi: hi / (d.h / d.g),
        }
    }
    fn x(&self, t: usize) -> &'a [F] {
        let o = ((self.bi * self.d.t + t) * self.d.h + self.hi) * self.d.p;
        &self.inp.x[o..o + self.d.p]
    }
    fn dt(&self, t: usize) -> F {
        self.inp.dt[(self.bi * self.d.t + t) * self.d.h + self.hi]
    }
    fn bc(&self, m: &'a [F], t: usize) -> &'a [F] {
        let o = ((self.bi * self.d.t + t) * self.d.g + self.gi) * self.d.n;
        &m[o..o + self.d.n]
    }
    /// The decay from S_{t-1} to S_t: exp(dt_t·A), or 0 where token t starts a new document.
    fn decay(&self, t: usize) -> F {
        if self.reset[t] {
            F::ZERO
        } else {
            (self.dt(t) * self.inp.a[self.hi]).exp()
        }
    }
    /// The state before token 0 [P, N].
    fn init(&self) -> Vec<F> {
        let pn = self.d.p * self.d.n;
        if self.inp.init.is_empty() {
            vec![F::ZERO; pn]
        } else {
            let o = (self.bi * self.d.h + self.hi) * pn;
            self.inp.init[o..o + pn].to_vec()
        }
    }
    /// S ← a_t·S + dt_t·x_t ⊗ B_t in place, and y_t = S·C_t into `y` [P] when given; s [P, N].
    fn advance(&self, s: &mut [F], t: usize, y: Option<&mut [F]>) {
        F::token_forward(s, self.x(t), self.bc(self.inp.bm, t), self.bc(self.inp.cm, t), y, self.decay(t), self.dt(t));
    }

    /// The forward recurrence: y [T, P] and the final state [P, N].
    fn forward(&self) -> (Vec<F>, Vec<F>) {
        let p = self.d.p;
        let mut s = self.init();
        let mut y = vec![F::ZERO; self.d.t * p];
        for (ti, yt) in y.chunks_exact_mut(p).enumerate() {
            self.advance(&mut s, ti, Some(yt));
        }
        (y, s)
    }

    /// The reverse-time pass for gy [T, P] (this lane's slice gathered) and gfinal [P, N].
    fn backward(&self, gy: &[F], gfinal: &[F]) -> LaneGrads<F> {
        let Dims { t, p, n, .. } = self.d;
        let pn = p * n;
        // States before each block's first token: ckpt[k] = S_{k·BLOCK − 1}.
        let nb = t.div_ceil(BLOCK);
        let mut ckpt = Vec::with_capacity(nb * pn);
        let mut s = self.init();
        for ti in 0..t {
            if ti % BLOCK == 0 {
                ckpt.extend_from_slice(&s);
            }
            self.advance(&mut s, ti, None);
        }
        let mut out = LaneGrads { gx: vec![F::ZERO; t * p], gdt: vec![F::ZERO; t], gb: vec![F::ZERO; t * n], gc: vec![F::ZERO; t * n], ga: F::ZERO, ginit: Vec::new() };
        let a = self.inp.a[self.hi];
        let mut gs = gfinal.to_vec(); // G [P, N]
        let mut buf = vec![F::ZERO; (BLOCK + 1) * pn]; // buf[k] = S_{t0+k−1}
        for blk in (0..nb).rev() {
            let (t0, t1) = (blk * BLOCK, (blk * BLOCK + BLOCK).min(t));
            buf[..pn].copy_from_slice(&ckpt[blk * pn..(blk + 1) * pn]);
            for k in 0..t1 - t0 {
                let (done, next) = buf.split_at_mut((k + 1) * pn);
                next[..pn].copy_from_slice(&done[k * pn..]);
                self.advance(&mut next[..pn], t0 + k, None);
            }
            for ti in (t0..t1).rev() {
                let k = ti - t0;
                let (prev, cur) = (&buf[k * pn..(k + 1) * pn], &buf[(k + 1) * pn..(k + 2) * pn]);
                let (dt, da) = (self.dt(ti), self.decay(ti));
                let (gb, gc, gx) = (&mut out.gb[ti * n..(ti + 1) * n], &mut out.gc[ti * n..(ti + 1) * n], &mut out.gx[ti * p..(ti + 1) * p]);
                let (xu, q) = F::token_backward(&mut gs, gc, gb, gx, cur, prev, self.x(ti), self.bc(self.inp.bm, ti), self.bc(self.inp.cm, ti), &gy[ti * p..(ti + 1) * p], da, dt);
                for v in gb.iter_mut() {
                    *v = *v * dt;
                }
                // a_t = 0 at a document start: then q's terms vanish with it.
                out.gdt[ti] = xu + a * da * q;
                out.ga += dt * da * q;
            }
        }
        out.ginit = gs;
        out
    }
}

/// One lane's gradients: gx [T, P], gdt [T], gB and gC [T, N] (this head's share), gA, ginit [P, N].
struct LaneGrads<F> {
    gx: Vec<F>,
    gdt: Vec<F>,
    gb: Vec<F>,
    gc: Vec<F>,
    ga: F,
    ginit: Vec<F>,
}

/// The op: sizes, whether an initial state is packed, and the document starts.
struct FusedScan {
    d: Dims,
    has_init: bool,
    reset: Vec<bool>, // [B, T]
}

impl FusedScan {
    /// Packed [y [B, T, H, P] | final [B, H, P, N]] from the packed inputs.
    fn forward<F: Real>(&self, packed: &[F]) -> Vec<F> {
        let d = self.d;
        let inp = Inputs::split(packed, d.input_lens(self.has_init));
        let lanes: Vec<(Vec<F>, Vec<F>)> = (0..d.b * d.h)
            .into_par_iter()
            .map(|bh| Lane::new(d, &inp, &self.reset, bh).forward())
            .collect();
        let (ylen, pn) = (d.b * d.t * d.h * d.p, d.p * d.n);
        let mut out = vec![F::ZERO; ylen + d.b * d.h * pn];
        for (bh, (y, s)) in lanes.iter().enumerate() {
            let (bi, hi) = (bh / d.h, bh % d.h);
            for ti in 0..d.t {
                let o = ((bi * d.t + ti) * d.h + hi) * d.p;
                out[o..o + d.p].copy_from_slice(&y[ti * d.p..(ti + 1) * d.p]);
            }
            out[ylen + bh * pn..ylen + (bh + 1) * pn].copy_from_slice(s);
        }
        out
    }

    /// The packed inputs' gradient from the packed output's gradient.
    fn backward<F: Real>(&self, packed: &[F], grad: &[F]) -> Vec<F> {
        let d = self.d;
        let lens = d.input_lens(self.has_init);
        let inp = Inputs::split(packed, lens);
        let (ylen, pn) = (d.b * d.t * d.h * d.p, d.p * d.n);
        let lanes: Vec<LaneGrads<F>> = (0..d.b * d.h)
            .into_par_iter()
            .map(|bh| {
                let lane = Lane::new(d, &inp, &self.reset, bh);
                let mut gy = Vec::with_capacity(d.t * d.p);
                for ti in 0..d.t {
                    let o = ((lane.bi * d.t + ti) * d.h + lane.hi) * d.p;
                    gy.extend_from_slice(&grad[o..o + d.p]);
                }
                let gfinal = &grad[ylen + bh * pn..ylen + (bh + 1) * pn];
                lane.backward(&gy, gfinal)
            })
            .collect();
        let offs: Vec<usize> = lens
            .iter()
            .scan(0, |o, &l| Some(std::mem::replace(o, *o + l)))
            .collect();
        let mut out = vec![F::ZERO; lens.iter().sum()];
        for (bh, lg) in lanes.iter().enumerate() {
            let (bi, hi) = (bh / d.h, bh % d.h);
            let gi = hi / (d.h / d.g);
            for ti in 0..d.t {
                let row = bi * d.t + ti;
                let o = offs[0] + (row * d.h + hi) * d.p;
                out[o..o + d.p].copy_from_slice(&lg.gx[ti * d.p..(ti + 1) * d.p]);
                out[offs[1] + row * d.h + hi] = lg.gdt[ti];
                let o = (row * d.g + gi) * d.n;
                for j in 0..d.n {
                    out[offs[3] + o + j] += lg.gb[ti * d.n + j];
                    out[offs[4] + o + j] += lg.gc[ti * d.n + j];
                }
            }
            out[offs[2] + hi] += lg.ga;
            if self.has_init {
                out[offs[5] + bh * pn..offs[5] + (bh + 1) * pn].copy_from_slice(&lg.ginit);
            }
        }
        out
    }
}

/// The contiguous slice of a CPU storage.
fn slice<'a, F: candle_core::WithDType>(v: &'a [F], l: &Layout) -> candle_core::Result<&'a [F]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("fused scan: expected a contiguous input"),
    }
}

impl CustomOp1 for FusedScan {
    fn name(&self) -> &'static str {
        "rlp-ssd-scan"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.forward(slice(v, l)?)),
            CpuStorage::F64(v) => CpuStorage::F64(self.forward(slice(v, l)?)),
            _ => candle_core::bail!("fused scan: expected f32 or f64"),
        };
        let len = match &out {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            _ => unreachable!(),
        };
        Ok((out, Shape::from(len)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // Built from plain vectors: the gradient carries no graph.
        let grad = grad.detach().contiguous()?;
        let g = match arg.dtype() {
            DType::F32 => Tensor::from_vec(
                self.backward(&arg.to_vec1::<f32>()?, &grad.to_vec1::<f32>()?),
                arg.shape(),
                arg.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                self.backward(&arg.to_vec1::<f64>()?, &grad.to_vec1::<f64>()?),
                arg.shape(),
                arg.device(),
            )?,
            dt => candle_core::bail!("fused scan: expected f32 or f64, got {dt:?}"),
        };
        Ok(Some(g))
    }
}

/// The scan of `ssd::chunked_scan` as one fused op on the CPU (no chunk length: it runs the
/// recurrence token by token). x [B, T, H, P], dt [B, T, H] (softplus'ed, clamped), a [H], bm, cm
/// [B, T, G, N], init [B, H, P, N]; f64 inputs stay f64, others compute in f32. Returns y
/// [B, T, H, P] (no D skip) and the final state [B, H, P, N], differentiable in every input.
pub fn fused_scan(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    bm: &Tensor,
    cm: &Tensor,
    init: Option<&Tensor>,
    segments: Option<&Segments>,
) -> Result<(Tensor, Tensor)> {
    let f = if x.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let (b, t, h, p) = x.dims4()?;
    let (_, _, g, n) = bm.dims4()?;
    ensure!(x.device().is_cpu(), "fused_scan runs on the CPU only");
    ensure!(
        h % g == 0
            && dt.dims() == [b, t, h]
            && a.dims() == [h]
            && cm.dims() == bm.dims()
            && bm.dims()[..2] == [b, t],
        "fused_scan: inconsistent shapes x {:?} dt {:?} a {:?} B {:?} C {:?}",
        x.dims(),
        dt.dims(),
        a.dims(),
        bm.dims(),
        cm.dims()
    );
    if let Some(s) = init {
        ensure!(
            s.dims() == [b, h, p, n],
            "fused_scan: init {:?}, expected [{b}, {h}, {p}, {n}]",
            s.dims()
        );
    }
    let mut reset = vec![false; b * t];
    if let Some(s) = segments {
        ensure!(
            s.ids.len() == b && s.ids.iter().all(|r| r.len() == t),
            "segment ids must be [B][T] = [{b}][{t}]"
        );
        for (bi, row) in s.ids.iter().enumerate() {
            for ti in 1..t {
                reset[bi * t + ti] = row[ti] != row[ti - 1];
            }
        }
    }
    let d = Dims { b, t, h, p, g, n };
    let mut parts = vec![x, dt, a, bm, cm];
    parts.extend(init);
    let flat: Vec<Tensor> = parts
        .iter()
        .map(|v| v.to_dtype(f)?.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let packed = Tensor::cat(&flat, 0)?.contiguous()?;
    let out = packed.apply_op1(FusedScan {
        d,
        has_init: init.is_some(),
        reset,
    })?;
    let ylen = b * t * h * p;
    let y = out.narrow(0, 0, ylen)?.reshape((b, t, h, p))?;
    let state = out.narrow(0, ylen, b * h * p * n)?.reshape((b, h, p, n))?;
    Ok((y, state))
}
