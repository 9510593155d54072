#!/usr/bin/env bash
# Installs dependencies, builds, fetches the default model and generates with it.
# Extra arguments go to hybridgen-run (default: a greedy chat question).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
model="$("$root/models/fetch-default-model.sh")"
if [ $# -eq 0 ]; then set -- --chat -p "What is the capital of France?" --temp 0 -n 64; fi
"${HYBRIDGEN_BUILD_DIR:-$root/build}/tools/hybridgen-run" -m "$model" "$@"
