#!/usr/bin/env bash
# Checks vendor/candle-core against the published crate: downloads candle-core 0.11.1 from
# crates.io, checks its sha256, applies vendor/candle-core-0.11.1-backprop.patch and compares
# the result with vendor/candle-core file by file. Exit 0 when they are identical.
#   scripts/check-vendor.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=0.11.1
SHA256=d11c8be87cfbaef9ebb62fb3f850d1fc8e00cc1d11d393fdbe55a4d5c2cdb325
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
URL="https://static.crates.io/crates/candle-core/candle-core-$VERSION.crate"
curl -fsSL --retry 3 -o "$TMP/crate.tar.gz" "$URL" || { echo "error: could not download $URL" >&2; exit 1; }
echo "$SHA256  $TMP/crate.tar.gz" | sha256sum -c --quiet - || { echo "error: candle-core-$VERSION.crate does not have the expected sha256" >&2; exit 1; }
tar -xzf "$TMP/crate.tar.gz" -C "$TMP"
mv "$TMP/candle-core-$VERSION" "$TMP/candle-core"
(cd "$TMP" && patch -s -p1 < "$ROOT/vendor/candle-core-$VERSION-backprop.patch")
if diff -r "$TMP/candle-core" "$ROOT/vendor/candle-core"; then
    echo "vendor/candle-core = candle-core $VERSION (sha256 ok) + vendor/candle-core-$VERSION-backprop.patch"
else
    echo "error: vendor/candle-core differs from candle-core $VERSION + the patch (above)" >&2
    exit 1
fi
