#!/usr/bin/env bash
# Issue 14's CIFAR-10 study on the validation part, as it was run (benchmarks/RESULTS.md, "Issue 14"): two chains
# of benchmarks/study.py, one thread each (2 cores), resumable (finished cells are JSON files under WORK/cells;
# killed students resume from their per-epoch checkpoints). Usage:
#   nohup bash benchmarks/run_c10_study.sh C10_DIR WORK > study.log 2>&1 &
# C10_DIR holds train/ and val/ made as README's CIFAR-10 recipe says.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 work=$2
S="benchmarks/study.py --teacher data/teachers/convnet3bn-cifar10.pt --train $data/train --val $data/val --threads 1"
chain() {
  .venv/bin/python $S --ipc 10 --seeds 1 --labels dbr --work "$work" --part "$1/2" --variants random rded nrr \
      c-paper-f1 c-paper-f2 c-f2 c-noref c-rded-nrr c-random-nrr c-rded-f2 c-bn.01 c-eps.3 c-sgd c-lr.003 \
      c-rded-nrr-lr.002 c-rded-nrr-it50 c-rded-nrr-bn.01 --also-onehot random rded nrr
  .venv/bin/python $S --ipc 10 --seeds 2 --labels dbr --work "$work" --part "$1/2" \
      --variants random rded nrr c-noref c-bn.01 c-rded-nrr-lr.002 --also-onehot random rded nrr
  .venv/bin/python $S --ipc 10 --seeds 1 --labels dbr --work "$work" --part "$1/2" \
      --variants random-adbr0.3 rded-adbr0.3 rded-adbr3 rded-adbr0.1 rded-l1
  .venv/bin/python $S --ipc 10 --seeds 2 --labels dbr --work "$work" --part "$1/2" --variants rded-adbr0.3
  .venv/bin/python $S --ipc 10 --seeds 1 --labels kd --work "$work" --part "$1/2" --variants random rded nrr
  .venv/bin/python $S --ipc 1 --seeds 2 --labels dbr --work "$work" --part "$1/2" \
      --variants random rded nrr c-rded-nrr c-noref c-paper-f2 --also-onehot random rded nrr
}
chain 0 & a=$!
chain 1 & b=$!
wait $a; wait $b
for ipc in 10 1; do .venv/bin/python $S --ipc "$ipc" --work "$work" --report; done
