#!/usr/bin/env bash
# The test suite, with its set-up: fetch what the tests need, then run every test in release
# mode (numerical code is too slow unoptimised).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --tests
cargo test --release "$@"
