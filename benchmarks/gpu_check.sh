#!/usr/bin/env bash
# GPU check (issue 9): relabel and the loader at 224 px with a ResNet-18 teacher on CUDA, against the
# bare teacher-forward floor of the same run; a CUDA relabel compared with itself byte for byte; the
# render and CE gap between the CPU and the GPU. Self-contained (makes its own data and a random-init
# teacher); a few minutes on one GPU. Extra arguments go to benchmarks/gpu_check.py, e.g. --amp bf16.
#
#   bash benchmarks/gpu_check.sh                 # fp32, then bf16
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --images 256
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this check needs a GPU'; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
"$PY" -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py  # the CUDA paths against the CPU (skipped here)
"$PY" benchmarks/gpu_check.py --device cuda "$@"
"$PY" benchmarks/gpu_check.py --device cuda --amp bf16 --epochs 1 "$@"
