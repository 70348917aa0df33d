#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch and hmer (with the web and test extras).
# On this project's machines `torch==2.13.0` resolves to a CPU wheel that lies on disk; a bare
# `pip install torch` would pull a multi-GB CUDA build instead. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[serve,dev]"
