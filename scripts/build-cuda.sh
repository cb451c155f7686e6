#!/usr/bin/env bash
# Build the CUDA binary of rlp (`--features cuda`, sm_90 for H100/H200) on a machine with no GPU
# and no CUDA toolkit, following docs/rust-stack.md's verified recipe:
#   - nvcc, the CUDA headers and libraries come from pinned PyPI `nvidia-*` wheels in a venv
#     under .cache/cuda/venv (about 1.2 GB, downloaded once);
#   - a stub libcuda.so (SONAME libcuda.so.1) exports the cu* symbols cudarc links against; the
#     real driver library is used at run time on the GPU machine;
#   - CARGO_TARGET_DIR=.cache/cuda/target, so the CPU build is never touched.
# Cold: about 18 minutes on 2 cores. Output: .cache/cuda/target/release/rlp (see gpu-check.sh).
#
#   scripts/build-cuda.sh            (run with `nice -n 19` on a shared machine)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/cuda"
VENV="$CACHE/venv"
STUB="$CACHE/stub"
export CARGO_TARGET_DIR="$CACHE/target"
mkdir -p "$CACHE" "$STUB"

WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
        nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.1.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "${WHEELS[@]}"
CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
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

RUSTFLAGS="-L $STUB -L $CU/lib" cargo build --release --features cuda
ls -la "$CARGO_TARGET_DIR/release/rlp"
echo "built $CARGO_TARGET_DIR/release/rlp; on the GPU machine run scripts/gpu-check.sh"
