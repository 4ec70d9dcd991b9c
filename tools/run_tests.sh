#!/usr/bin/env bash
# README command 2: install what is missing, then run the test suite (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" tools/install_deps.py
exec "$PYTHON" -m pytest tests "$@"
