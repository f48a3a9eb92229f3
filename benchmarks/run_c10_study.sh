#!/usr/bin/env bash
# Issue 14's CIFAR-10 study at one IPC, on the validation part: two interleaved halves of the cell list on
# one thread each (2 cores), resumable (finished cells are JSON files under $WORK/cells). Usage:
#   nohup bash benchmarks/run_c10_study.sh TEACHER.pt C10_DIR IPC WORK "VARIANTS" "ONEHOT_VARIANTS" > log 2>&1 &
# C10_DIR holds train/ and val/ made as README's CIFAR-10 recipe says.
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=$1 data=$2 ipc=$3 work=$4 variants=$5 onehot=${6:-}
run() {
  .venv/bin/python benchmarks/study.py --teacher "$teacher" --train "$data/train" --val "$data/val" --ipc "$ipc" \
      --seeds 2 --labels dbr --variants $variants --also-onehot $onehot --work "$work" --threads 1 --part "$1/2"
}
run 0 & a=$!
run 1 & b=$!
wait $a; wait $b
.venv/bin/python benchmarks/study.py --teacher "$teacher" --train "$data/train" --val "$data/val" --ipc "$ipc" \
    --work "$work" --report
