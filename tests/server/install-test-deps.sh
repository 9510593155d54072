#!/usr/bin/env bash
# Python packages the server tests use (tests/server/test_server.py): the real OpenAI client.
# Idempotent. Installed with pip --target into tests/server/.pydeps (git-ignored), which
# test_server.py puts first on sys.path: no virtual environment needed, and Debian's system
# Python (PEP 668: "externally-managed-environment") is left alone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deps="$here/.pydeps"
if PYTHONPATH="$deps" python3 -c "import openai" 2>/dev/null; then
  echo "install-test-deps: openai $(PYTHONPATH="$deps" python3 -c 'import openai; print(openai.__version__)') present"
else
  python3 -m pip install --quiet --disable-pip-version-check --target "$deps" "openai>=1.0"
fi
