#!/usr/bin/env bash
# README command 2: install what is missing, check lint and format (ruff,
# settings in ruff.toml), then run the test suite (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" tools/install_deps.py
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
exec "$PYTHON" -m pytest tests "$@"
