#!/usr/bin/env bash
# On a GPU machine (H100/H200), check the CUDA binary from scripts/build-cuda.sh in a few
# minutes: CPU-vs-GPU parity on tiny fixtures and SmolLM2, then decode, forward and one RLP step
# on the GPU, and a short table of the numbers.
#
#   scripts/gpu-check.sh [RLP_BINARY]   (default .cache/cuda/target/release/rlp)
#
# The binary needs libcublas.so.13, libcurand.so.10 and libcudart.so.13: taken from the
# `nvidia` pip packages of the machine's python3 (found below) unless LD_LIBRARY_PATH has them.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/.cache/cuda/target/release/rlp}"
OUT="${OUT:-$ROOT/.cache/gpu-check}"
mkdir -p "$OUT"
NV="$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
for d in "$NV"/cu13/lib "$NV"/*/lib "$ROOT/.cache/cuda/venv/lib/python3"*/site-packages/nvidia/cu13/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
ldd "$BIN" | grep -E "cuda|cublas|curand|not found" || true

G="$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
fail=0
run() { # name, args...
    local name="$1"; shift
    echo "== $name: rlp $*"
    if timeout 300 "$BIN" "$@" > "$OUT/$name.txt" 2>&1; then tail -n +1 "$OUT/$name.txt" | grep -v '^{' ; else echo "FAILED ($name)"; tail -5 "$OUT/$name.txt"; fail=1; fi
}
for m in tiny-llama tiny-qwen2 tiny-qwen3; do
    [ -d "$ROOT/tests/data/$m" ] && run "parity-$m" bench parity --model "$ROOT/tests/data/$m" --device cuda --seq 12 --batch 3
done
if [ -f "$G" ]; then
    run parity-smollm2 bench parity --model "$G" --device cuda --seq 64 --batch 4
    run decode-b1 bench decode --model "$G" --device cuda --batch 1 --steps 32
    run decode-b16 bench decode --model "$G" --device cuda --batch 16 --steps 32
    run forward-b16 bench forward --model "$G" --device cuda --batch 16 --seq 256
    run step bench step --model "$G" --device cuda --contexts 4 --g 4 --prefix 64 --budget 32
else
    echo "no $G: run scripts/fetch-smollm2.sh first (or carry .cache/models)"; fail=1
fi
echo "== summary (JSON lines in $OUT)"
grep -h '^{' "$OUT"/*.txt 2>/dev/null
exit $fail
