#!/usr/bin/env bash
# Set up (if needed), lint everything (ruff), type-check nrrstore/ and cli/ (mypy), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Any finding fails the run (configuration in pyproject.toml; mypy reads its files from there).
.venv/bin/ruff check nrrstore cli tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
