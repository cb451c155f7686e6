#!/usr/bin/env bash
# The test suite, with its set-up: fetch what the tests need, then run every test in release
# mode (numerical code is too slow unoptimised), then the data-parallel tests under a real
# `mpirun` (cargo feature `mpi`; Open MPI and libclang from scripts/setup-mpi.sh, idempotent)
# and a real `srun` (Slurm and MUNGE installed and started by scripts/slurm-local.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --tests
# One CPU thread per process: the tests run in parallel already, and candle's spin-waiting
# thread pool only costs time at these model sizes.
export RAYON_NUM_THREADS=1
bash scripts/setup-mpi.sh
cargo test --release --features tensorboard "$@"
# The srun tests run on a throwaway two-node Slurm cluster on this machine (network namespaces;
# root only), stopped again when the tests end.
bash scripts/slurm-local.sh start --nodes 2
trap 'bash scripts/slurm-local.sh stop' EXIT
export SLURM_CONF=/tmp/rlp-slurm/slurm.conf
cargo test --release --features mpi --test mpi
