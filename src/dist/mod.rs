//! Data parallelism across processes: who am I (rank), how many are we (world), and the few
//! collectives the trainer needs: all-reduce sums of `f32` gradients and `f64` metrics, a
//! max-reduce for timings, broadcast from rank 0, and a barrier.
//!
//! [`Dist::Single`] is one process and needs no MPI at all: every collective is the identity.
//! [`Dist::Mpi`] (cargo feature `mpi`) runs under `mpirun`/`srun` over the system's MPI through
//! the `mpi` crate (rsmpi); every collective is non-blocking and polled against
//! `train.collective_timeout_s`, so a rank that died or hangs makes the others abort with a
//! message instead of waiting forever. With the feature `nccl` and a CUDA device, gradients are
//! summed on the GPUs by NCCL instead ([`nccl`], bootstrapped over MPI); everything small stays
//! on MPI.
//!
//! Gradients are reduced next door ([`grads`], bucketed); the trainer's step metrics in
//! `train::data_parallel`.

pub mod grads;
#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
pub mod nccl;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use std::time::Duration;

/// The process group this process trains in.
pub enum Dist {
    /// One process: rank 0 of 1.
    Single,
    /// One rank of an MPI job started by `mpirun` or `srun`.
    #[cfg(feature = "mpi")]
    Mpi {
        /// The GPU communicator once `use_device` set it up. Declared first: dropped before
        /// `world`, which finalizes MPI.
        #[cfg(feature = "nccl")]
        nccl: std::cell::OnceCell<nccl::NcclComm>,
        world: mpi_world::MpiWorld,
    },
}

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

impl Dist {
    /// `Single` unless a launcher started several ranks; then MPI (or an error that says how to
    /// rebuild with MPI). `timeout` bounds every collective.
    /// `RLP_FORCE_MPI=1` starts MPI (and NCCL) even for a one-rank job, under `mpirun -np 1`
    /// or with no launcher at all (an MPI singleton), so that a single process exercises every
    /// collective: a smoke test of the data-parallel path.
    pub fn from_launcher(timeout: Duration) -> Result<Dist> {
        let forced = std::env::var("RLP_FORCE_MPI").is_ok_and(|v| v == "1");
        let (var, n) = match launcher_world_size() {
            Some(found) => found,
            None if forced => ("RLP_FORCE_MPI", 1),
            None => return Ok(Dist::Single),
        };
        if n <= 1 && !forced {
            return Ok(Dist::Single);
        }
        mpi_dist(var, n, timeout)
    }

    /// Whether collectives run at all (an MPI job, even of one rank); false for `Single`.
    pub fn is_distributed(&self) -> bool {
        !matches!(self, Dist::Single)
    }

    /// Collective: the device this rank trains on. With the feature `nccl`, under MPI, and a
    /// CUDA device, sets up the NCCL communicator that gradients are then summed with;
    /// otherwise changes nothing.
    #[cfg_attr(not(feature = "nccl"), allow(unused_variables))]
    pub fn use_device(&self, device: &Device) -> Result<()> {
        match self {
            #[cfg(feature = "nccl")]
            Dist::Mpi { world, nccl: gpu } if device.is_cuda() && gpu.get().is_none() => {
                let comm = nccl::NcclComm::init(world, device, world.timeout())?;
                let _ = gpu.set(comm);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// How gradients travel between ranks, for the start-up message.
    pub fn gradient_backend(&self) -> &'static str {
        match self {
            Dist::Single => "none (one process)",
            #[cfg(feature = "nccl")]
            Dist::Mpi { nccl, .. } if nccl.get().is_some() => "NCCL, on the GPUs",
            #[cfg(feature = "mpi")]
            Dist::Mpi { .. } => "MPI, through host memory",
        }
    }

    /// Element-wise sum over all ranks of an f32 tensor, as a new tensor on its device: by NCCL
    /// when it is set up for that device, else through host memory and MPI.
    pub fn all_reduce_tensor(&self, what: &str, t: &Tensor) -> Result<Tensor> {
        match self {
            Dist::Single => {
                let _ = what;
                Ok(t.clone())
            }
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, #[cfg(feature = "nccl")] nccl, .. } => {
                #[cfg(feature = "nccl")]
                if let Some(n) = nccl.get().filter(|n| n.device().same_device(t.device())) {
                    return n.all_reduce_sum(what, t, || world.abort(mpi_world::TIMEOUT_EXIT_CODE));
                }
                let mut buf = t.flatten_all()?.to_vec1::<f32>()?;
                world.all_reduce_f32(what, &mut buf)?;
                Ok(Tensor::from_vec(buf, t.dims(), t.device())?)
            }
        }
    }

    /// This process's rank, 0 ≤ rank < world.
    pub fn rank(&self) -> usize {
        match self {
            Dist::Single => 0,
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, .. } => world.rank(),
        }
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        match self {
            Dist::Single => 1,
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, .. } => world.world(),
        }
    }

    /// Rank 0 alone writes files (metrics, samples, checkpoints) and prints progress.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Element-wise sum over all ranks, in place; `what` names the data in a timeout message.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn all_reduce_f32(&self, what: &str, buf: &mut [f32]) -> Result<()> {
        match self {
            Dist::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, .. } => world.all_reduce_f32(what, buf),
        }
    }

    /// Element-wise sum or max over all ranks, in place.
    pub fn all_reduce_f64(&self, what: &str, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        match self {
            Dist::Single => {
                let _ = (what, buf, op);
                Ok(())
            }
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, .. } => match op {
                ReduceOp::Sum => world.all_reduce_sum_f64(what, buf),
                ReduceOp::Max => world.all_reduce_max_f64(what, buf),
            },
        }
    }

    /// Replace `bytes` on every rank with rank 0's (lengths may differ beforehand).
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn broadcast_from_root(&self, what: &str, bytes: &mut Vec<u8>) -> Result<()> {
        match self {
            Dist::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, .. } => world.broadcast_from_root(what, bytes),
        }
    }

    /// Wait until every rank has arrived here.
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    pub fn barrier(&self, what: &str) -> Result<()> {
        match self {
            Dist::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, .. } => world.barrier(what),
        }
    }

    /// Fail on every rank unless `bytes` (a config, a fingerprint) is the same on all of them.
    /// Ranks that disagree would silently train different things.
    pub fn check_same_on_all_ranks(&self, what: &str, bytes: &[u8]) -> Result<()> {
        let mut root = bytes.to_vec();
        self.broadcast_from_root(what, &mut root)?;
        let mut differs = [(root != bytes) as u8 as f64];
        self.all_reduce_f64(what, &mut differs, ReduceOp::Sum)?;
        if differs[0] > 0.0 {
            bail!(
                "{} of {} ranks have a different {what} from rank 0: start every rank with the same \
                 files and arguments",
                differs[0],
                self.world()
            );
        }
        Ok(())
    }

    /// End the whole job now (all ranks) after an error on this one. A single process returns
    /// normally and lets the caller report the error.
    pub fn abort_job_after_error(&self, error: &anyhow::Error) {
        match self {
            Dist::Single => {}
            #[cfg(feature = "mpi")]
            Dist::Mpi { world, .. } => {
                eprintln!("error on rank {} of {}: {error:#}", world.rank(), world.world());
                if world.rank() != 0 {
                    // When every rank fails alike, let rank 0's message be the one printed.
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                eprintln!("aborting all ranks of the job (MPI_Abort)");
                world.abort(1)
            }
        }
        let _ = error;
    }
}

/// The world size a launcher announced through its environment, and the variable that said so:
/// Open MPI's `mpirun`, MPICH/Intel MPI (`PMI_SIZE`) or Slurm's `srun`.
pub fn launcher_world_size() -> Option<(&'static str, usize)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .into_iter()
        .find_map(|var| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map(|n| (var, n))
        })
}

/// This process's rank among the ranks of its node, from the launcher's environment (Open MPI,
/// Slurm, MPICH/Intel MPI); 0 when none says so. Picks the GPU of a rank.
pub fn launcher_local_rank() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[cfg(feature = "mpi")]
fn mpi_dist(var: &str, n: usize, timeout: Duration) -> Result<Dist> {
    let m = mpi_world::MpiWorld::init(timeout)?;
    if m.world() != n {
        bail!("{var} = {n} but MPI reports {} ranks: was rlp started by a different MPI than the one it was built against?", m.world());
    }
    Ok(Dist::Mpi {
        #[cfg(feature = "nccl")]
        nccl: Default::default(),
        world: m,
    })
}

#[cfg(not(feature = "mpi"))]
fn mpi_dist(var: &str, n: usize, _timeout: Duration) -> Result<Dist> {
    bail!(
        "started as one of {n} ranks ({var} = {n}), but this rlp was built without MPI: every rank \
         would train alone and overwrite the same run directory. Install MPI with \
         scripts/setup-mpi.sh and rebuild with `cargo build --release --features mpi`, or start a \
         single process without mpirun/srun"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_is_rank_0_of_1_and_collectives_are_the_identity() {
        let d = Dist::Single;
        assert_eq!((d.rank(), d.world(), d.is_root()), (0, 1, true));
        let mut g = [1.5f32, -2.0];
        d.all_reduce_f32("gradients", &mut g).unwrap();
        assert_eq!(g, [1.5, -2.0]);
        let mut m = [3.0f64];
        d.all_reduce_f64("metrics", &mut m, ReduceOp::Max).unwrap();
        assert_eq!(m, [3.0]);
        let mut b = b"config".to_vec();
        d.broadcast_from_root("config", &mut b).unwrap();
        assert_eq!(b, b"config");
        d.barrier("start").unwrap();
        d.check_same_on_all_ranks("config", b"x").unwrap();
    }
}
