#!/usr/bin/env bash
# Python packages the server tests use (tests/server/test_server.py): the real OpenAI client.
# Idempotent. The CI stage that runs the server tests calls it before ctest.
set -euo pipefail
if python3 -c "import openai" 2>/dev/null; then
  echo "install-test-deps: openai $(python3 -c 'import openai; print(openai.__version__)') present"
else
  python3 -m pip install --quiet --disable-pip-version-check "openai>=1.0"
fi
