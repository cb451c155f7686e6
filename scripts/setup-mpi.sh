#!/usr/bin/env bash
# Install what `cargo build --release --features mpi` needs on Debian/Ubuntu: Open MPI (library,
# headers, mpirun) and libclang (rsmpi generates its bindings with bindgen at build time).
# Idempotent: when everything is there it only checks and returns (no apt-get update).
#   scripts/setup-mpi.sh          install if missing (needs root or sudo)
#   scripts/setup-mpi.sh --check  only report; exit 1 if something is missing
set -euo pipefail
PACKAGES=(libopenmpi-dev openmpi-bin libclang-dev clang)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-mpi: $(mpirun --version 2>/dev/null | head -n1), libclang present"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "setup-mpi: missing Debian packages: ${missing[*]} (run scripts/setup-mpi.sh)" >&2
    exit 1
fi
command -v apt-get >/dev/null || {
    echo "error: setup-mpi: no apt-get here; install Open MPI (or MPICH) with its headers and libclang by hand: ${missing[*]}" >&2
    exit 1
}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: setup-mpi: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
echo "setup-mpi: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup-mpi: $(mpirun --version | head -n1)"
