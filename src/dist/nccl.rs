//! Gradient all-reduce on GPUs with NCCL (cargo feature `nccl` = `cuda` + `mpi`), bootstrapped
//! over MPI: the Horovod pattern. Built by scripts/build-cuda.sh; scripts/gpu-check.sh runs it as
//! one MPI rank with NCCL forced (`RLP_FORCE_MPI=1`); no test here runs two GPUs.
//!
//! # Why this shape
//! MPI stays the launcher and the control plane: `mpirun`/`srun` start one rank per GPU, MPI
//! gives rank and world, and carries the small collectives (metrics, loss statistics, barriers,
//! the config check, gradient-presence flags). Only the large, device-resident gradient buckets
//! go through NCCL, which uses NVLink within a node and InfiniBand/RoCE (or TCP sockets) across
//! nodes. Without NCCL a GPU run under MPI still works: gradients then travel through host
//! memory (`Dist::all_reduce_tensor`).
//!
//! # Bootstrap ([`NcclComm::init`], every rank, collectively)
//! 1. The rank's GPU: `train.device = "cuda"` means GPU `local_rank` (`OMPI_COMM_WORLD_LOCAL_RANK`
//!    / `SLURM_LOCALID`, `train::data_parallel::rank_device`).
//! 2. Rank 0 calls `ncclGetUniqueId` (`Id::new`, 128 bytes); MPI broadcasts the bytes.
//! 3. Every rank joins with `ncclCommInitRank` (`Comm::from_rank`) on candle's own CUDA stream
//!    of its device, so the all-reduce is ordered with the backward that produced the
//!    gradients. `ncclCommInitRank` blocks until every rank has joined; a watchdog thread ends
//!    the process after `train.collective_timeout_s` if it does not return (`mpirun` then ends
//!    the job).
//!
//! # The all-reduce ([`NcclComm::all_reduce_sum`])
//! `dist::grads` packs each bucket of gradients (up to 32 MiB of f32) into one contiguous f32
//! tensor on the GPU; a candle custom op enqueues `ncclAllReduce` (sum) from it into a fresh
//! buffer on the device's stream. Gradients are reduced in f32 whatever the compute dtype
//! (their master weights are f32).
//!
//! # Timeouts
//! NCCL collectives are asynchronous on the stream. After enqueueing, the host records a CUDA
//! event and polls it against `train.collective_timeout_s`; past the deadline it prints which
//! collective timed out, aborts the communicator (`ncclCommAbort`, which also stops its kernels)
//! and calls `MPI_Abort`, which ends every rank: the same behaviour and message as the MPI path.

use super::mpi_world::{MpiWorld, TIMEOUT_EXIT_CODE};
use anyhow::{anyhow, ensure, Result};
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::cell::RefCell;
use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This rank's NCCL communicator over all ranks, on its GPU.
pub struct NcclComm {
    /// None once aborted.
    comm: RefCell<Option<Comm>>,
    rank: usize,
    world: usize,
    device: Device,
    timeout: Duration,
}

impl NcclComm {
    /// Create the communicator on `device` (collective: every rank must call it).
    pub fn init(mpi: &MpiWorld, device: &Device, timeout: Duration) -> Result<NcclComm> {
        let (rank, world) = (mpi.rank(), mpi.world());
        let cuda = device.as_cuda_device()?;
        let mut bytes = if rank == 0 { id_to_bytes(&Id::new().map_err(|e| anyhow!("ncclGetUniqueId failed on rank 0: {e:?}"))?) } else { Vec::new() };
        mpi.broadcast_from_root("NCCL unique id", &mut bytes)?;
        let id = id_from_bytes(&bytes)?;
        let joined = Arc::new(AtomicBool::new(false));
        watchdog(joined.clone(), rank, world, timeout);
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id)
            .map_err(|e| anyhow!("ncclCommInitRank failed on rank {rank} of {world}: {e:?}. Is every rank on its own GPU, and can the nodes reach each other (NCCL_SOCKET_IFNAME, NCCL_IB_HCA; NCCL_DEBUG=INFO says more)?"))?;
        joined.store(true, Ordering::SeqCst);
        Ok(NcclComm { comm: RefCell::new(Some(comm)), rank, world, device: device.clone(), timeout })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Element-wise sum over all ranks of `t` (f32, on this rank's GPU), as a new tensor. `what`
    /// names the data in a timeout message; `abort` ends the job (MPI_Abort) after a timeout.
    pub fn all_reduce_sum(&self, what: &str, t: &Tensor, abort: impl FnOnce()) -> Result<Tensor> {
        ensure!(t.dtype() == DType::F32, "NCCL all-reduce of {what}: expected f32, got {:?}", t.dtype());
        ensure!(t.device().same_device(&self.device), "NCCL all-reduce of {what}: the tensor is not on this rank's GPU");
        let out = {
            let guard = self.comm.borrow();
            let comm = guard.as_ref().ok_or_else(|| anyhow!("NCCL communicator used after it was aborted"))?;
            t.contiguous()?.apply_op1_no_bwd(&AllReduceSum(comm))?
        };
        self.wait(&format!("NCCL all-reduce (sum) of {what}, {} floats", t.elem_count()), abort)?;
        Ok(out)
    }

    /// Poll the stream until the enqueued collective is done; past the timeout, abort.
    fn wait(&self, what: &str, abort: impl FnOnce()) -> Result<()> {
        let event = {
            let guard = self.comm.borrow();
            let comm = guard.as_ref().ok_or_else(|| anyhow!("NCCL communicator used after it was aborted"))?;
            comm.stream().record_event(None).map_err(|e| anyhow!("cannot record a CUDA event after {what}: {e:?}"))?
        };
        let start = Instant::now();
        let mut nap = Duration::from_micros(5);
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(anyhow!("CUDA error while waiting for {what}: {e:?}")),
            }
            if start.elapsed() > self.timeout {
                self.timed_out(what, abort)
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    fn timed_out(&self, what: &str, abort: impl FnOnce()) -> ! {
        eprintln!(
            "error: rank {} of {}: collective timed out: {what} did not complete within \
             train.collective_timeout_s = {} s. Another rank has died, hangs, or is much slower. \
             Aborting the NCCL communicator (ncclCommAbort) and all ranks (MPI_Abort). If the \
             ranks are merely slow, raise train.collective_timeout_s.",
            self.rank,
            self.world,
            self.timeout.as_secs_f64()
        );
        drop(self.comm.borrow_mut().take()); // cudarc's Comm calls ncclCommAbort on drop
        abort();
        std::process::exit(TIMEOUT_EXIT_CODE)
    }
}

/// Ends the process if `ncclCommInitRank` has not returned within `timeout` (it blocks until
/// every rank joins, with no timeout of its own). A non-zero exit makes `mpirun` end the job.
fn watchdog(joined: Arc<AtomicBool>, rank: usize, world: usize, timeout: Duration) {
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if joined.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !joined.load(Ordering::SeqCst) {
            eprintln!(
                "error: rank {rank} of {world}: collective timed out: NCCL communicator set-up (ncclCommInitRank) did not \
                 complete within train.collective_timeout_s = {} s: some rank never joined. Ending this rank.",
                timeout.as_secs_f64()
            );
            std::process::exit(TIMEOUT_EXIT_CODE);
        }
    });
}

fn id_to_bytes(id: &Id) -> Vec<u8> {
    id.internal().iter().map(|&c| c as u8).collect()
}

fn id_from_bytes(bytes: &[u8]) -> Result<Id> {
    let mut internal = [0 as c_char; 128];
    ensure!(bytes.len() == internal.len(), "the NCCL unique id from rank 0 has {} bytes, expected {}", bytes.len(), internal.len());
    for (d, &s) in internal.iter_mut().zip(bytes) {
        *d = s as c_char;
    }
    Ok(Id::uninit(internal))
}

/// `ncclAllReduce` (sum) of a contiguous f32 CUDA tensor into a new buffer, enqueued on the
/// communicator's stream (candle's stream of the device). Not differentiable.
struct AllReduceSum<'a>(&'a Comm);

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce needs a tensor on a CUDA device")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("NCCL all-reduce: the tensor is not contiguous"))?;
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        // SAFETY: every element of `dst` is written by the all-reduce before anything reads it.
        let mut dst = unsafe { s.device.alloc::<f32>(end - start)? };
        self.0.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(|e| candle_core::Error::msg(format!("ncclAllReduce failed: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, s.device.clone()), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_id_survives_the_byte_round_trip() {
        let mut raw = [0 as c_char; 128];
        for (i, c) in raw.iter_mut().enumerate() {
            *c = (i as i32 * 37 - 100) as i8 as c_char;
        }
        let back = id_from_bytes(&id_to_bytes(&Id::uninit(raw))).unwrap();
        assert_eq!(back.internal(), &raw);
        assert!(id_from_bytes(&[1, 2, 3]).is_err());
    }
}
