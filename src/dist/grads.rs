//! Summing gradients over ranks: each rank computes the gradient of its share of the batch with
//! the loss already divided by the *global* normaliser, so the sum over ranks is the gradient a
//! single process would compute on the whole batch.
//!
//! Gradients are flattened to `f32`, packed in variable order into buckets of at most
//! [`BUCKET_FLOATS`] (one variable larger than that travels alone), all-reduced, and unpacked.
//! A bucket is packed on the gradients' own device: on a GPU with NCCL it never leaves the GPU;
//! otherwise it goes through host memory and MPI (`Dist::all_reduce_tensor`).

use super::Dist;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// Floats per all-reduce: 8 Mi floats = 32 MiB, large enough to amortise latency, small
/// enough not to double a big model's memory.
pub const BUCKET_FLOATS: usize = 8 << 20;

/// Replace every variable's gradient in `grads` by its sum over all ranks. A variable without
/// a gradient on some ranks counts as zero there; one without a gradient on every rank stays
/// without one. All ranks must pass the same `vars` in the same order.
pub fn all_reduce_grads(dist: &Dist, grads: &mut GradStore, vars: &[Var]) -> Result<()> {
    if !dist.is_distributed() {
        return Ok(());
    }
    let mut present: Vec<f32> = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).is_some() as u8 as f32)
        .collect();
    dist.all_reduce_f32("gradient presence flags", &mut present)?;
    for bucket in buckets(vars, BUCKET_FLOATS) {
        let vars = &vars[bucket];
        let parts: Vec<Tensor> = vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.to_dtype(DType::F32)?.flatten_all()?),
                None => Ok(Tensor::zeros(v.elem_count(), DType::F32, v.device())?),
            })
            .collect::<Result<_>>()?;
        let flat = Tensor::cat(&parts, 0)?; // [Σ n], on the gradients' device
        let summed = dist.all_reduce_tensor("gradients", &flat)?;
        let mut offset = 0;
        for v in vars {
            let n = v.elem_count();
            let g = summed.narrow(0, offset, n)?.reshape(v.dims())?.to_dtype(v.dtype())?;
            offset += n;
            grads.insert(v.as_tensor(), g);
        }
    }
    // Variables no rank had a gradient for stay absent, as in a single process.
    for (v, p) in vars.iter().zip(&present) {
        if *p == 0.0 {
            grads.remove(v.as_tensor());
        }
    }
    Ok(())
}

/// Consecutive ranges of `vars` holding at most `max_floats` elements each (or one variable).
fn buckets(vars: &[Var], max_floats: usize) -> Vec<std::ops::Range<usize>> {
    bucket_ranges(&vars.iter().map(|v| v.elem_count()).collect::<Vec<_>>(), max_floats)
}

fn bucket_ranges(sizes: &[usize], max_floats: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && filled + n > max_floats {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn buckets_cover_every_variable_once_and_respect_the_size() {
        assert_eq!(bucket_ranges(&[3, 3, 3, 10, 1], 6), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(bucket_ranges(&[1, 1, 1], 100), vec![0..3]);
        assert_eq!(bucket_ranges(&[], 4), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn a_single_process_keeps_its_gradients() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let loss = (v.as_tensor() * 3.0).unwrap().sum_all().unwrap();
        let mut g = loss.backward().unwrap();
        all_reduce_grads(&Dist::Single, &mut g, std::slice::from_ref(&v)).unwrap();
        assert_eq!(g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![3.0, 3.0]);
    }
}
