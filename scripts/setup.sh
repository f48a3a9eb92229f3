#!/usr/bin/env bash
# Create ./.venv and install nrrstore with its test extras. Safe to run again (it only adds what is missing).
# torch is pinned to the CPU build that this machine carries locally; pyproject.toml keeps a range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
