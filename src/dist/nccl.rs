//! Design only (not built, not run: the machines this was written on have no GPU): gradient
//! all-reduce on GPUs with NCCL, bootstrapped over MPI, the Horovod pattern.
//!
//! # Why this shape
//! MPI stays the launcher and the control plane: `mpirun`/`srun` start one rank per GPU, MPI
//! gives rank, world and the node-local rank, and carries the small collectives (metrics,
//! barriers, the config check). Only the large, device-resident gradient buffers go through
//! NCCL, which uses NVLink within a node and InfiniBand/RoCE (or TCP sockets) across nodes.
//!
//! # Bootstrap
//! 1. `Dist::Mpi` as today (every rank, `--features mpi,nccl`).
//! 2. Device: `local_rank` from `OMPI_COMM_WORLD_LOCAL_RANK` / `SLURM_LOCALID` (or an MPI
//!    split by shared memory, `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`);
//!    `candle_core::Device::new_cuda(local_rank)`.
//! 3. Rank 0 calls `cudarc::nccl::Id::new()` (`ncclGetUniqueId`, 128 bytes), and
//!    [`super::Dist::broadcast_from_root`] ships its bytes (`Id::internal()`) to every rank,
//!    which rebuilds it with `Id::uninit(bytes)`.
//! 4. Each rank: `cudarc::nccl::Comm::from_rank(cuda_stream, rank, world, id)`
//!    (`ncclCommInitRank`). candle exposes cudarc's NCCL through `candle-core/nccl`.
//!
//! # The all-reduce
//! [`super::grads::all_reduce_grads`] keeps its shape: for each bucket of variables, get each
//! gradient's `CudaStorage` slice (`Tensor::storage_and_layout`, contiguous) and call
//! `comm.all_reduce_in_place(slice, &ReduceOp::Sum)` (`ncclAllReduce`), grouping a bucket's
//! calls in `ncclGroupStart/End` instead of copying into one flat buffer. bf16 gradients can be
//! reduced as bf16 (half the traffic) or upcast to f32 first (exact sums; the default).
//!
//! # Timeouts
//! NCCL collectives are asynchronous on a CUDA stream. After enqueueing, the host polls
//! `cuStreamQuery` (or an event) against `train.collective_timeout_s`, and also
//! `ncclCommGetAsyncError`; on timeout it prints the same message as the MPI path, calls
//! `ncclCommAbort`, then `MPI_Abort`. `NCCL_ASYNC_ERROR_HANDLING`-style watchdogs are what
//! PyTorch does; this is the same idea on the host thread.
//!
//! # What a run looks like
//! One node, 8 GPUs: `mpirun -np 8 rlp train --config C`. Two nodes of 8:
//! `mpirun -np 16 -H a:8,b:8 rlp train --config C` or `srun -N2 --ntasks-per-node=8 --gpus-per-task=1
//! --mpi=pmix rlp train --config C`, with `NCCL_SOCKET_IFNAME`/`NCCL_IB_HCA` set as the cluster
//! requires. The run directory must be on a filesystem every node sees (only rank 0 writes, but
//! every rank reads the checkpoint on `--resume`).
