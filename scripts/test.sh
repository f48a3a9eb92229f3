#!/usr/bin/env bash
# Set up (if needed), lint everything (ruff), type-check nrrstore/ and cli/ (mypy), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Any finding fails the run (configuration in pyproject.toml; mypy reads its files from there).
.venv/bin/ruff check nrrstore cli tests benchmarks
.venv/bin/mypy
# Two workers (tests marked xdist_group share a worker): most tests run one single-threaded process at a time,
# so two keep both cores of the development machine busy. `-n 0` after it runs them in this process.
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
