#!/usr/bin/env bash
# The whole test suite: installs dependencies, fetches the default model (its tests compare it
# with transformers' goldens), builds, and runs every test with CTest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/models/fetch-default-model.sh" >/dev/null
"$root/tests/scripts/fetch-reference-tokenizers.sh" >/dev/null
"$root/tests/server/install-test-deps.sh"  # the openai client of the server tests
"$root/scripts/build.sh"
ctest --test-dir "${HYBRIDGEN_BUILD_DIR:-$root/build}" --output-on-failure -j 2
