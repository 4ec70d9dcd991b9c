#!/usr/bin/env bash
# README command 1: install what is missing, then run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" tools/install_deps.py
exec "$PYTHON" tools/demo.py "$@"
